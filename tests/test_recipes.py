"""The training recipes: their objectives, views and masks, the seed recipe bit for bit, the views recipe's
projector, and its one-view-at-a-time step against the one-pass gradients."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from conftest import photos
from fext.config import Config, with_overrides
from fext.data.augment import augment_batch, mask_patches, random_view
from fext.model import FeXTAutoEncoder
from fext.training import objectives


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
    from fext.training.loop import Step, compute_gradients

    torch.manual_seed(0)
    arch = dataclasses.replace(preset_architecture("small", images.shape[-1]), dropout=dropout)
    model = FeXTAutoEncoder(arch).train()
    projector = objectives.recipe_projector(cfg, arch.feature_dim)
    if hook is not None:  # on the compression stack's dropout
        next(m for m in model.compress.modules() if isinstance(m, torch.nn.Dropout)).register_forward_hook(hook)
    inputs, target = (t.to(dtype) for t in objectives.training_inputs(images, cfg, torch.Generator().manual_seed(0)))
    model.to(dtype)  # the projector stays float32, as the loss is computed in float32
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    loss, terms, reconstruction = compute_gradients(Step(model, model, cfg, torch.device("cpu"), scaler, projector),
                                                    inputs, target)
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
