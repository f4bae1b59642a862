"""`fext search`: exact cosine ranking, queries from the index or from files, the contact sheet."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import blob_image, make_checkpoint, tiny_config
from PIL import Image

from fext.encoding import encode_folder
from fext.errors import FeXTError
from fext.search import search
from fext.vectors import top_k_cosine

SHIFT = 8  # pixels, of 64
CPU = tiny_config()


@pytest.fixture(scope="module")
def encoded(tmp_path_factory) -> tuple[Path, Path, Path]:
    """(checkpoint, encoded folder, a shifted copy of images/a.png kept outside the folder).

    The folder holds eight unrelated smooth pictures plus ``a_shifted.png``: ``a.png``'s scene
    moved 8 px to the left. The model is untrained: a random convolutional encoder with pooling
    already maps a small shift of a smooth picture near the original (checked to hold for 300 of
    300 random pictures and initialisations), which is what lets this test the whole path from
    files to ranking honestly without training.
    """
    root = tmp_path_factory.mktemp("search")
    ckpt = make_checkpoint(root / "FeXT_20240101T000000", CPU)
    rng = np.random.default_rng(0)
    images = root / "images"
    images.mkdir()
    for i in range(9):
        wide = blob_image(rng, 64, 64 + SHIFT)
        name = "a" if i == 0 else f"other{i}"
        Image.fromarray(wide[:, :64]).save(images / f"{name}.png")
        if i == 0:
            Image.fromarray(wide[:, SHIFT:]).save(images / "a_shifted.png")
            Image.fromarray(wide[:, SHIFT // 2:64 + SHIFT // 2]).save(root / "a_half_shifted.png")
    out = encode_folder(ckpt, images, root / "out", config=CPU, batch_size=4, progress=False)
    return ckpt, out, root / "a_half_shifted.png"


def test_a_query_from_the_index_finds_itself_then_its_shifted_copy(encoded):
    _, out, _ = encoded
    results = search(out, "a.png", k=4, config=CPU)
    assert [r[0] for r in results] == [1, 2, 3, 4]
    assert results[0][2] == "a.png" and results[0][1] == pytest.approx(1.0, abs=1e-5)
    assert results[1][2] == "a_shifted.png"
    assert results[1][1] > results[2][1] >= results[3][1]


def test_an_image_file_is_encoded_with_the_recorded_checkpoint(encoded):
    _, out, outside = encoded
    results = search(out, str(outside), k=9, config=CPU)
    assert {r[2] for r in results[:2]} == {"a.png", "a_shifted.png"}
    assert len(results) == 9 and all(r[2].startswith("other") for r in results[2:])


def test_cli_prints_ranks_and_writes_a_contact_sheet(encoded, tmp_path, capsys, ws):
    from fext.cli import main

    _, out, _ = encoded
    sheet = tmp_path / "sheet.png"
    code = main(["--workspace", str(ws.root), "--set", "device.DEVICE=CPU", "search", str(out),
                 "--query", "a.png", "-k", "3", "--sheet", str(sheet)])
    assert code == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["rank", "score", "meaning", "path"]
    assert lines[1].split() == ["1", "1.0000", "duplicate", "a.png"] and lines[2].split()[3] == "a_shifted.png"
    assert len(lines) == 4
    with Image.open(sheet) as im:
        assert im.format == "PNG" and im.width > 3 * im.height > 0  # one row of four: the query and three results


def test_a_moved_checkpoint_is_a_clear_error_unless_the_query_is_in_the_index(encoded, tmp_path):
    ckpt, out, outside = encoded
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    metadata = json.loads((copy / "metadata.json").read_text())
    metadata["checkpoint"]["path"] = str(tmp_path / "gone")  # as if the checkpoint had been moved away
    (copy / "metadata.json").write_text(json.dumps(metadata))
    with pytest.raises(FeXTError, match="is not at .*gone any more.*--checkpoint"):
        search(copy, outside, config=CPU)
    assert search(copy, "a.png", k=1, config=CPU)[0][2] == "a.png"
    assert search(copy, outside, k=1, config=CPU, checkpoint=ckpt)[0][2] in {"a.png", "a_shifted.png"}
    with pytest.raises(FeXTError, match="neither an image file nor a path"):
        search(copy, "missing.png", config=CPU)
    other = make_checkpoint(tmp_path / "other", CPU, seed=1)
    with pytest.raises(FeXTError, match="not the checkpoint that wrote"):
        search(copy, outside, config=CPU, checkpoint=other)


def test_blockwise_top_k_equals_brute_force(monkeypatch):
    import fext.vectors

    monkeypatch.setattr(fext.vectors, "BLOCK_BYTES", 7 * 16 * 4)  # blocks of 7 rows
    rng = np.random.default_rng(0)
    matrix = rng.normal(size=(50, 16)).astype(np.float32)
    matrix[3] = 0  # an all-zero vector scores 0, not NaN
    query = rng.normal(size=16).astype(np.float32)
    rows, scores = top_k_cosine(matrix, query, 5)
    norms = np.linalg.norm(matrix, axis=1)
    expected = matrix @ query / np.where(norms > 0, norms, 1) / np.linalg.norm(query)
    assert rows.tolist() == np.argsort(-expected)[:5].tolist()
    np.testing.assert_allclose(scores, expected[rows], rtol=1e-5)
    assert len(top_k_cosine(matrix, query, 500)[0]) == 50
