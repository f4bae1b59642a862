"""The feature scorecard on constructed cases with known answers, and the training recipes' objectives."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fext.config import Config, with_overrides
from fext.data.augment import augment_batch, mask_patches, random_view
from fext.evaluation import scorecard as S
from fext.model import FeXTAutoEncoder
from fext.training import objectives


def photos(n: int = 12, size: int = 48, seed: int = 0) -> np.ndarray:
    """``n`` distinct uint8 (size, size, 3) images: smooth gradients of random colours plus texture."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    out = []
    for _ in range(n):
        base = np.stack([xx, yy, xx * yy], -1) * rng.uniform(0.2, 1.0, 3) + rng.uniform(0, 0.3, 3)
        blobs = np.sin(xx * rng.uniform(3, 12) + rng.uniform(0, 6)) * np.cos(yy * rng.uniform(3, 12))
        out.append(np.clip((base + 0.3 * blobs[..., None]) * 255, 0, 255).astype(np.uint8))
    return np.stack(out)


def groups_of(n: int, copies: int = S.COPIES) -> np.ndarray:
    return np.concatenate([np.arange(n), np.repeat(np.arange(n), copies)])


def test_copies_are_seeded_transformed_and_the_right_shape():
    images = photos(4)
    a, b = S.make_copies(images, 3, seed=1), S.make_copies(images, 3, seed=1)
    assert a.shape == (12, 48, 48, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b)
    assert not np.array_equal(a, S.make_copies(images, 3, seed=2))
    # Every copy differs from its source, but stays closer to it than to the other images.
    for i in range(4):
        for c in a[3 * i: 3 * i + 3]:
            d = [np.abs(c.astype(float) - images[j]).mean() for j in range(4)]
            assert d[i] > 0.5 and int(np.argmin(d)) == i


def test_identical_vectors_score_at_chance_and_warn_of_collapse():
    n = 40
    card = S.scorecard(photos(n, 32), lambda x: np.ones((len(x), 16)), lambda x: x.reshape(len(x), -1)[:, :16])
    chance, got = card["retrieval"]["chance"], card["retrieval"]["features"]
    assert got["recall@1"] == pytest.approx(chance["recall@1"], abs=0.03)
    assert got["recall@10"] == pytest.approx(chance["recall@10"], abs=0.06)
    assert got["map"] == pytest.approx(chance["map"], abs=0.02)
    assert card["effective_rank"] == 0.0
    assert card["collapse_warning"] and "Collapse" in card["collapse_warning"]
    assert "collapsed" in card["verdict"]


def test_chance_scores_match_a_random_ranking():
    n, rng = 100, np.random.default_rng(3)
    measured = [S.retrieval_scores(rng.normal(size=(4 * n, 32)), groups_of(n), seed=s) for s in range(3)]
    chance = S.chance_scores(n)
    for key in chance:
        assert np.mean([m[key] for m in measured]) == pytest.approx(chance[key], rel=0.25, abs=0.005)


def test_vectors_that_depend_only_on_the_source_image_find_every_copy():
    n = 30
    sources = np.random.default_rng(0).normal(size=(n, 8))
    scores = S.retrieval_scores(sources[groups_of(n)], groups_of(n))
    assert scores == {"recall@1": 1.0, "recall@10": 1.0, "map": 1.0}


def test_raw_pixels_find_copies_far_above_chance_on_real_transformations():
    n = 20
    images = photos(n, 64)
    def centred_pixels(x: np.ndarray) -> np.ndarray:  # features come centred (FeXTAutoEncoder.features)
        v = S.pixel_vectors(x).astype(np.float64)
        return v - v.mean(0)

    card = S.scorecard(images, centred_pixels, S.pixel_vectors)
    assert card["retrieval"]["pixels"]["map"] > 3 * card["retrieval"]["chance"]["map"]
    for task in ("retrieval", "retrieval_crops"):  # the same vectors, the same figures (to float rounding)
        assert card[task]["features"] == pytest.approx(card[task]["pixels"], abs=0.01)
    assert card["collapse_warning"] is None and card["effective_rank"] > 3


def test_effective_rank_counts_the_directions_used():
    rng = np.random.default_rng(0)
    assert S.effective_rank(rng.normal(size=(2000, 8)) @ np.eye(8, 64)) == pytest.approx(8, rel=0.05)
    assert S.effective_rank(np.outer(rng.normal(size=500), rng.normal(size=32))) == pytest.approx(1.0, abs=1e-6)
    assert S.collapse_warning(1.0, 512, 1000) is not None
    assert S.collapse_warning(100.0, 512, 1000) is None


def test_knn_accuracy_with_labels():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), 10)
    centres = rng.normal(size=(3, 16)) * 10
    clustered = centres[labels] + rng.normal(size=(30, 16))
    assert S.knn_accuracy(clustered, labels) == 1.0
    assert S.knn_accuracy(rng.normal(size=(30, 16)), labels) < 0.7
    card = S.scorecard(photos(12, 32), S.pixel_vectors, S.pixel_vectors, labels=np.arange(12) % 2)
    assert set(card["knn_accuracy"]) == {"features", "pca", "pixels"}


def test_verdict_in_plain_words():
    def card(f, p, r):
        return {"features": {"map": f}, "pca": {"map": p}, "pixels": {"map": r}}

    assert "beat both baselines" in S.verdict(card(0.9, 0.5, 0.6), None)
    assert "do not beat" in S.verdict(card(0.4, 0.5, 0.6), None)
    assert "beat PCA but not raw pixels" in S.verdict(card(0.55, 0.5, 0.6), None)


def test_invariance_loss_is_zero_for_identical_views_and_positive_otherwise():
    z = torch.randn(8, 32)
    assert objectives.invariance_loss(z, z.clone()).item() == 0.0
    assert objectives.invariance_loss(z, z + 0.1 * torch.randn(8, 32)).item() > 0
    # Variance hinge: zero for a spread of 1 or more, the largest for a constant latent.
    assert objectives.variance_loss(3 * torch.randn(256, 16)).item() == 0.0
    assert objectives.variance_loss(torch.ones(256, 16)).item() == pytest.approx(1.0, abs=0.02)
    assert objectives.covariance_loss(torch.randn(4096, 4)).item() < 0.01
    assert objectives.covariance_loss(torch.randn(256, 1).repeat(1, 4)).item() > 1


def test_views_are_per_image_seeded_and_masking_greys_patches():
    x = torch.from_numpy(photos(6, 64)).permute(0, 3, 1, 2).float() / 255
    a = random_view(x, torch.Generator().manual_seed(0))
    b = random_view(x, torch.Generator().manual_seed(0))
    assert a.shape == x.shape and torch.equal(a, b) and 0 <= a.min() and a.max() <= 1
    assert not torch.equal(a, random_view(x, torch.Generator().manual_seed(1)))
    # Each image gets its own crop: one image's view is not the others' transform (no shared draw).
    same = x[:1].repeat(6, 1, 1, 1)
    views = random_view(same, torch.Generator().manual_seed(0))
    assert len({round(float(v.sum()), 3) for v in views}) == 6
    # Blur halves the resolution: less pixel-to-pixel change than the same view without it.
    noise = torch.rand(4, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    sharp, soft = (random_view(noise, torch.Generator().manual_seed(0), blur=p) for p in (0.0, 1.0))
    assert (soft.diff(dim=3).abs().mean() < 0.8 * sharp.diff(dim=3).abs().mean()).item()
    masked = mask_patches(x, 0.5, torch.Generator().manual_seed(0))
    grey = (masked == 0.5).all(1).float().mean().item()
    assert 0.3 < grey < 0.7 and torch.equal(mask_patches(x, 0.0), x)


def _steps(cfg: Config, images: torch.Tensor, steps: int, seed: int = 0) -> FeXTAutoEncoder:
    """``steps`` Adam updates of a fresh small model on ``images`` with the recipe of ``cfg``."""
    torch.manual_seed(seed)
    model = FeXTAutoEncoder.from_preset("small", images.shape[-1])
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.training.LR_SCHEDULER.INITIAL_LR)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        inputs, target = objectives.training_inputs(images, cfg, generator)
        loss, _ = objectives.training_loss(model(inputs), target, cfg)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return model


def test_seed_recipe_is_the_seed_training_step_bit_for_bit():
    """The seed recipe through objectives == the loop's code before recipes existed (augment, MAE)."""
    images = torch.from_numpy(photos(6, 64)).permute(0, 3, 1, 2).float() / 255
    cfg = with_overrides(Config(), {"training.RECIPE": "seed", "training.LR_SCHEDULER.INITIAL_LR": 1e-3})
    new = _steps(cfg, images, 3)
    torch.manual_seed(0)
    old = FeXTAutoEncoder.from_preset("small", 64)
    optimizer = torch.optim.Adam(old.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(0)
    for _ in range(3):
        x = augment_batch(images, generator)
        loss = F.l1_loss(old(x)["reconstruction"].float(), x.float())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    assert all(torch.equal(a, b) for a, b in zip(new.state_dict().values(), old.state_dict().values()))


def test_variance_term_keeps_the_latent_from_collapsing():
    """Invariance alone is won by a constant latent; the variance term keeps every image's vector apart."""
    torch.set_num_threads(1)
    images = torch.from_numpy(photos(16, 64)).permute(0, 3, 1, 2).float() / 255
    base = {"training.LR_SCHEDULER.INITIAL_LR": 3e-3, "training.VIEWS.RECONSTRUCTION_WEIGHT": 0.0,
            "training.VIEWS.COVARIANCE_WEIGHT": 0.0, "training.VIEWS.INVARIANCE_WEIGHT": 1.0}

    def spread(variance: float) -> float:
        model = _steps(with_overrides(Config(), {**base, "training.VIEWS.VARIANCE_WEIGHT": variance}), images, 25).eval()
        with torch.no_grad():
            return float(model.encode(images).std(0).mean())

    collapsed, kept = spread(0.0), spread(1.0)
    assert kept > 0.5, kept
    assert collapsed < 0.2 * kept, (collapsed, kept)


def test_evaluate_writes_the_scorecard_with_baselines_on_the_right_split(tmp_path):
    import csv
    import json

    from conftest import make_checkpoint, make_images, tiny_config
    from fext.errors import FeXTError
    from fext.evaluation import evaluate_checkpoints
    from fext.workspace import Workspace

    ws = Workspace(tmp_path / "ws").ensure()
    for i, name in enumerate(("cats", "dogs")):
        make_images(ws.dataset / name, n=10, seed=i)
    cfg = tiny_config(**{"dataset.VALIDATION_SIZE": 0.4})
    ckpt = make_checkpoint(ws.checkpoints / "FeXT_20240101T000000", cfg, ws.dataset, epochs=1)
    out = evaluate_checkpoints([ckpt], cfg, ws, images=2, progress=False, labels_from_folders=True)[0]
    metrics = json.loads((out / "metrics.json").read_text())
    card, splits = metrics["scorecard"], metrics["splits"]
    # Scored on the validation images, with PCA fitted on the training images only.
    assert card["images"] == splits["validation"]["evaluated"] > 1
    assert metrics["baseline_pca"]["fitted_on"] == splits["train"]["evaluated"]
    assert metrics["baseline_pca"]["evaluated_on"] == "validation"
    assert set(card["retrieval"]) == {"features", "pca", "pixels", "chance"}
    assert card["dim"] == metrics["latent_dim"] and card["effective_rank"] >= 0
    assert set(card["knn_accuracy"]) == {"features", "pca", "pixels"}
    report = (out / "report.html").read_text()
    assert "Feature scorecard" in report and card["verdict"].split(" (")[0] in report
    with open(ws.validation_checkpoints / "checkpoints_summary.csv", newline="") as f:
        row = next(csv.DictReader(f))
    assert float(row["features_map"]) == pytest.approx(card["retrieval"]["features"]["map"], rel=1e-5)
    assert row["recipe"] == "views"
    flat = tmp_path / "flat"
    make_images(flat, n=6)
    with pytest.raises(FeXTError, match="class folder"):
        evaluate_checkpoints([ckpt], cfg, ws, dataset=flat, progress=False, labels_from_folders=True)


def test_a_checkpoint_from_before_recipes_keeps_the_seed_recipe(tmp_path):
    import json

    from conftest import make_checkpoint, make_images, tiny_config
    from fext.model import load_checkpoint

    make_images(tmp_path / "images", n=4)
    ckpt = make_checkpoint(tmp_path / "FeXT_20240101T000000", tiny_config(), tmp_path / "images")
    config = json.loads((ckpt / "config.json").read_text())
    assert config["configuration"]["training"].pop("RECIPE") == "views"
    (ckpt / "config.json").write_text(json.dumps(config))
    assert load_checkpoint(ckpt)[1].description.configuration.training.RECIPE == "reconstruction"  # "seed" then
    # A views checkpoint from before SHARED_FLIP and PROJECTOR_DIM was trained without either.
    config["configuration"]["training"]["RECIPE"] = "views"
    for key in ("SHARED_FLIP", "PROJECTOR_DIM"):
        del config["configuration"]["training"]["VIEWS"][key]
    (ckpt / "config.json").write_text(json.dumps(config))
    views = load_checkpoint(ckpt)[1].description.configuration.training.VIEWS
    assert (views.SHARED_FLIP, views.PROJECTOR_DIM) == (False, 0)


def test_shared_flip_gives_both_views_of_an_image_one_orientation():
    # Dark left half, bright right half: a view's orientation is which half is brighter (crops keep >= 86 % of the width).
    x = torch.zeros(64, 3, 32, 32)
    x[..., 16:] = 1.0
    flat = {"training.VIEWS.CROP_MIN_AREA": 1.0, "training.VIEWS.COLOR_JITTER": 0.0, "training.VIEWS.BLUR": 0.0}

    def orientations(shared: bool) -> torch.Tensor:
        cfg = with_overrides(Config(), {**flat, "training.VIEWS.SHARED_FLIP": shared})
        _, views = objectives.training_inputs(x, cfg, torch.Generator().manual_seed(0))
        return (views[..., 16:].mean((1, 2, 3)) > views[..., :16].mean((1, 2, 3))).view(2, 64)

    shared, independent = orientations(True), orientations(False)
    assert torch.equal(shared[0], shared[1]) and 0 < shared[0].sum() < 64  # flipped or not, the same for both views
    assert not torch.equal(independent[0], independent[1])


def test_the_projector_trains_with_the_model_and_is_kept_only_in_the_trainer_state(tmp_path):
    from conftest import make_images, tiny_config
    from fext.checkpoints import load_trainer_state, load_weights_file
    from fext.training import train
    from fext.workspace import Workspace

    ws = Workspace(tmp_path / "ws").ensure()
    make_images(ws.dataset, n=8)
    cfg = tiny_config(**{"training.EPOCHS": 1, "training.VIEWS.PROJECTOR_DIM": 32})
    ckpt = train(cfg, ws, progress=False)
    state = load_trainer_state(ckpt)
    fresh = objectives.recipe_projector(cfg, FeXTAutoEncoder.from_preset("small", 64).arch.feature_dim)
    assert state["projector"].keys() == fresh.state_dict().keys() and state["projector"]["3.weight"].shape == (32, 32)
    assert not torch.equal(state["projector"]["0.weight"], fresh.state_dict()["0.weight"])  # it was trained
    assert not any(k.startswith(("projector", "0.", "3.")) for k in load_weights_file(ckpt / "model.safetensors"))
    assert objectives.recipe_projector(with_overrides(cfg, {"training.RECIPE": "seed"}), 128) is None
    assert objectives.recipe_projector(with_overrides(cfg, {"training.VIEWS.PROJECTOR_DIM": 0}), 128) is None


def _gradients(
    cfg: Config, images: torch.Tensor, dropout: float, hook=None, dtype: torch.dtype = torch.float32
) -> tuple[float, dict, dict[str, torch.Tensor]]:
    """(loss, terms, every parameter's gradient) of one views step of a fresh small model (and projector),
    the model in ``dtype``."""
    from fext.architecture import preset_architecture
    from fext.training.loop import compute_gradients

    torch.manual_seed(0)
    arch = dataclasses.replace(preset_architecture("small", images.shape[-1]), dropout=dropout)
    model = FeXTAutoEncoder(arch).train()
    projector = objectives.recipe_projector(cfg, arch.feature_dim)
    if hook is not None:  # on the compression stack's dropout
        next(m for m in model.compress.modules() if isinstance(m, torch.nn.Dropout)).register_forward_hook(hook)
    inputs, target = (t.to(dtype) for t in objectives.training_inputs(images, cfg, torch.Generator().manual_seed(0)))
    model.to(dtype)  # the projector stays float32, as the loss is computed in float32
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    loss, terms, reconstruction = compute_gradients(model, model, inputs, target, cfg, torch.device("cpu"), scaler,
                                                    projector)
    assert reconstruction.shape == target.shape and not reconstruction.requires_grad
    named = dict(model.named_parameters())
    if projector is not None:
        named |= {f"projector.{k}": v for k, v in projector.named_parameters()}
    return loss, terms, {k: v.grad for k, v in named.items()}


def test_one_view_at_a_time_gives_the_gradients_of_both_views_in_one_pass():
    """The memory-saving views step (two backward passes, view B's latent found first without a graph) adds up
    to the gradient of the one-pass loss: every parameter's, the projector's too, and the same loss and terms.
    The model runs in float64 so the comparison is exact but for float64 rounding."""
    torch.set_num_threads(1)
    images = torch.from_numpy(photos(6, 64)).permute(0, 3, 1, 2).float() / 255
    split, joint = (with_overrides(Config(), {"training.VIEWS.ONE_VIEW_AT_A_TIME": flag,
                                              "training.VIEWS.PROJECTOR_DIM": 64}) for flag in (True, False))
    loss_s, terms_s, grads_s = _gradients(split, images, dropout=0.0, dtype=torch.float64)
    loss_j, terms_j, grads_j = _gradients(joint, images, dropout=0.0, dtype=torch.float64)
    assert loss_s == pytest.approx(loss_j, rel=1e-6)
    assert terms_s.keys() == terms_j.keys() and all(torch.allclose(terms_s[k], terms_j[k], rtol=1e-6) for k in terms_s)
    assert grads_s.keys() == grads_j.keys() and any(k.startswith("projector.") for k in grads_s)
    for name, g in grads_s.items():
        assert g is not None and (g - grads_j[name]).abs().max() <= 1e-9 * grads_j[name].abs().max(), name


def test_one_view_at_a_time_replays_the_dropout_of_view_b():
    """With dropout on, view B's second (gradient) pass draws the same dropout masks as its first pass, so the
    latent whose gradient was found is the latent backpropagated; view A draws its own."""
    cfg = with_overrides(Config(), {"training.VIEWS.PROJECTOR_DIM": 0})
    images = torch.from_numpy(photos(4, 64)).permute(0, 3, 1, 2).float() / 255
    passes = []  # (non-zero inputs, zeroed outputs) of the compression stack's dropout: B without a graph, A, B again
    _gradients(cfg, images, dropout=0.5, hook=lambda module, args, out: passes.append((args[0] != 0, out == 0)))
    (live, first_b), (_, a), (_, second_b) = passes
    assert 0.4 < (first_b & live).sum() / live.sum() < 0.6  # dropout is at work
    assert torch.equal(first_b, second_b)
    assert not torch.equal(first_b, a)  # A's pass drew masks of its own
