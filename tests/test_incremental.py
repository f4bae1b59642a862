"""Incremental `fext encode`: add, change, remove and rename give a fresh run's files; an interrupted update resumes."""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import blob_image, make_checkpoint, make_image_tree, tiny_config
from PIL import Image

from fext.data import SKIPPED
from fext.encoding import EMBEDDINGS, FAILED, METADATA, ROWS_CSV, STATE, encode_folder
from fext.encoding.files import SOURCES, TODO
from fext.errors import FeXTError

CPU = tiny_config()


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "FeXT_20240101T000000", CPU)


def assert_same_as_fresh(out: Path, fresh: Path) -> None:
    """Same rows in the same order, same failures, vectors equal up to float rounding."""
    for name in (ROWS_CSV, FAILED):
        assert (out / name).read_text() == (fresh / name).read_text(), name
    np.testing.assert_allclose(np.load(out / EMBEDDINGS), np.load(fresh / EMBEDDINGS), rtol=1e-5, atol=1e-6)
    theirs, ours = (json.loads((d / METADATA).read_text()) for d in (fresh, out))
    assert {k: ours[k] for k in ("images", "failed", "files", "listing")} == \
        {k: theirs[k] for k in ("images", "failed", "files", "listing")}
    assert [line.split(",")[0] for line in (out / SOURCES).read_text().splitlines()] == \
        [line.split(",")[0] for line in (fresh / SOURCES).read_text().splitlines()]


def grow_and_edit(images: Path) -> None:
    """Two images added, one changed, one removed, one renamed (same bytes under a new name), one broken file added."""
    rng = np.random.default_rng(42)
    Image.fromarray(blob_image(rng, 50, 60)).save(images / "added_a.png")
    Image.fromarray(blob_image(rng, 70, 40)).save(images / "sub" / "added_b.png")
    Image.fromarray(blob_image(rng, 41, 69)).save(images / "img001.jpg")  # new content, same name
    (images / "img002.png").unlink()
    os.rename(images / "img004.jpg", images / "renamed.jpg")
    (images / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")


def test_add_change_remove_rename_equal_a_fresh_run_and_reuse_the_rest(tmp_path, ckpt, monkeypatch, caplog):
    import fext.encoding.inference

    images, out = tmp_path / "images", tmp_path / "out"
    make_image_tree(images, 9)
    (images / "unreadable.jpg").write_bytes(b"not a jpeg")
    encode_folder(ckpt, images, out, config=CPU, batch_size=4, progress=False)
    grow_and_edit(images)

    encoded = []
    real_embed = fext.encoding.inference.embed
    monkeypatch.setattr(fext.encoding.inference, "embed", lambda m, x, *a, **k: encoded.append(len(x)) or real_embed(m, x, *a, **k))
    with caplog.at_level(logging.INFO, logger="fext"):
        encode_folder(ckpt, images, out, config=CPU, batch_size=4, progress=False)
    assert sum(encoded) == 3  # the two added images and the changed one: nothing else is decoded or encoded
    counts = json.loads((out / METADATA).read_text())["update"]
    # 9 images + 1 unreadable before; 7 kept (one changed), renamed one reused, broken file new but unreadable.
    assert counts == {"reused": 8, "added": 3, "changed": 1, "removed": 2, "renamed": 1}
    assert "8 reused (1 renamed), 3 added, 1 changed, 2 removed" in caplog.text
    assert sorted(p.name for p in out.iterdir()) == sorted([EMBEDDINGS, ROWS_CSV, FAILED, SKIPPED, METADATA, SOURCES])

    monkeypatch.undo()
    fresh = encode_folder(ckpt, images, tmp_path / "fresh", config=CPU, batch_size=4, progress=False)
    assert_same_as_fresh(out, fresh)
    assert "broken.png" in (out / FAILED).read_text() and "unreadable.jpg" in (out / FAILED).read_text()


def test_a_touched_file_with_the_same_bytes_is_reused(tmp_path, ckpt):
    images, out = tmp_path / "images", tmp_path / "out"
    make_image_tree(images, 3, seed=1)
    encode_folder(ckpt, images, out, config=CPU, progress=False)
    before = np.load(out / EMBEDDINGS)
    os.utime(images / "img001.jpg", ns=(1, 1))
    encode_folder(ckpt, images, out, config=CPU, progress=False)
    assert json.loads((out / METADATA).read_text())["update"]["reused"] == 3
    np.testing.assert_array_equal(np.load(out / EMBEDDINGS), before)


def test_an_interrupted_update_resumes_where_it_stopped(tmp_path, ckpt, monkeypatch):
    import fext.encoding.inference

    images, out = tmp_path / "images", tmp_path / "out"
    make_image_tree(images, 6, seed=2)
    encode_folder(ckpt, images, out, config=CPU, batch_size=2, progress=False)
    grow_and_edit(images)
    real_embed, calls = fext.encoding.inference.embed, []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # Ctrl-C during the update's second batch
        return real_embed(*args, **kwargs)

    monkeypatch.setattr(fext.encoding.inference, "embed", interrupted)
    with pytest.raises(KeyboardInterrupt):
        encode_folder(ckpt, images, out, config=CPU, batch_size=1, progress=False)
    state = json.loads((out / STATE).read_text())
    assert state["incremental"] and state["done"] == 2 and state["todo"] == 4 and (out / TODO).exists()  # added_a, broken
    assert (out / METADATA).exists()  # the previous encoding stays readable until the update finishes

    other = make_checkpoint(tmp_path / "other", CPU, seed=1)
    with pytest.raises(FeXTError, match="never mixed"):
        encode_folder(other, images, out, config=CPU, batch_size=1, progress=False)
    encode_folder(ckpt, images, out, config=CPU, batch_size=1, progress=False)
    assert len(calls) == 2 + 2  # img001 and sub/added_b: the update was not planned again
    monkeypatch.undo()
    fresh = encode_folder(ckpt, images, tmp_path / "fresh", config=CPU, batch_size=2, progress=False)
    assert_same_as_fresh(out, fresh)


def test_a_folder_encoded_before_sources_csv_is_encoded_again_once(tmp_path, ckpt):
    images, out = tmp_path / "images", tmp_path / "out"
    make_image_tree(images, 4, seed=3)
    encode_folder(ckpt, images, out, config=CPU, progress=False)
    (out / SOURCES).unlink()  # as written by an earlier FeXT
    shutil.copy(images / "img000.png" if (images / "img000.png").exists() else next(images.rglob("*.png")),
                images / "copy.png")
    encode_folder(ckpt, images, out, config=CPU, progress=False)
    counts = json.loads((out / METADATA).read_text())["update"]
    assert counts["added"] == 5 and counts["reused"] == 0 and (out / SOURCES).exists()
    assert_same_as_fresh(out, encode_folder(ckpt, images, tmp_path / "fresh", config=CPU, progress=False))
