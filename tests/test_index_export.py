"""`fext index`, indexed and batch `fext search`, `fext export` and `fext export-embeddings`: real files, real libraries."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import blob_image, make_checkpoint, make_image_tree, tiny_config
from PIL import Image

from fext.cli import main
from fext.encoding import encode_folder
from fext.encoding.files import write_failed, write_metadata, write_rows_csv
from fext.encoding.records import CheckpointRecord, EncodingMetadata
from fext.errors import FeXTError
from fext.index import INDEX_FILE, INDEX_JSON, build_index, open_index, plan_index
from fext.search import search
from fext.vectors import exact_top_k, normalized
from fext.similarity import BANDS

CPU = tiny_config()


def synthetic_folder(folder: Path, n: int, d: int, seed: int = 0) -> np.ndarray:
    """An encoding folder (written by the format owner) of ``n`` clustered vectors; returns them."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(max(2, n // 50), d))
    x = (centres[rng.integers(0, len(centres), n)] + 0.3 * rng.normal(size=(n, d))).astype(np.float32)
    folder.mkdir(parents=True)
    np.save(folder / "embeddings.npy", x)
    write_rows_csv(folder, [f"img{i:05d}.png" for i in range(n)], np.full((n, 2), 64))
    write_failed(folder, [])
    write_metadata(folder, EncodingMetadata(checkpoint=CheckpointRecord("synthetic", "-", "-"), embedding_dim=d,
                                            images=n, input="-", img_size=64))
    return x


def measured_recall(folder: Path, x: np.ndarray, queries: int = 100) -> float:
    index = open_index(folder)
    q = normalized(x[np.random.default_rng(5).choice(len(x), queries, replace=False)] + 0.05)
    truth, _ = exact_top_k(x, q, 10)
    found, _ = index.search(q, 10)
    return float(np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found.tolist(), truth.tolist())]))


@pytest.mark.parametrize("kind,memory,factory", [("ivf", None, "Flat"), ("ivf", 1, "PQ"), ("hnsw", None, "HNSW")])
def test_approximate_indexes_reach_the_recall_they_report(tmp_path, kind, memory, factory):
    x = synthetic_folder(tmp_path / "emb", 10_000, 64)  # 2.4 MB of raw vectors: a 1 MB budget forces PQ
    info = build_index(tmp_path / "emb", kind, memory)
    assert factory in info["factory"] and info["recall_at_10"] >= 0.95
    assert json.loads((tmp_path / "emb" / INDEX_JSON).read_text())["recall_at_10"] == info["recall_at_10"]
    assert measured_recall(tmp_path / "emb", x) >= 0.9  # other queries than the ones it was tuned on


def test_plan_is_exact_when_small_and_quantises_only_what_does_not_fit():
    assert plan_index(50_000, 512, "auto", 10_000)["kind"] == "flat"
    ivf = plan_index(1_000_000, 512, "auto", 4_000)
    assert ivf["factory"] == "IVF1000,Flat" and ivf["estimated_mb"] <= 4_000
    pq = plan_index(1_000_000, 512, "auto", 500)
    assert pq["factory"] == "IVF1000,PQ64" and pq["rerank"] and pq["estimated_mb"] <= 500
    with pytest.raises(FeXTError, match="HNSW.*--kind ivf"):
        plan_index(1_000_000, 512, "hnsw", 500)


@pytest.fixture(scope="module")
def encoded(tmp_path_factory) -> tuple[Path, Path, Path]:
    """(checkpoint, encoded folder of 12 images, folder of 2 query images)."""
    root = tmp_path_factory.mktemp("indexed")
    ckpt = make_checkpoint(root / "FeXT_20240101T000000", CPU)
    make_image_tree(root / "images", 12, seed=7)
    queries = root / "queries"
    queries.mkdir()
    rng = np.random.default_rng(11)
    for name in ("q1.png", "q2.jpg"):
        Image.fromarray(blob_image(rng)).save(queries / name)
    (queries / "notes.txt").write_text("not an image: not a query")
    return ckpt, encode_folder(ckpt, root / "images", root / "out", config=CPU, progress=False), queries


def test_search_with_an_exact_index_agrees_with_the_scan_and_a_stale_index_is_not_used(encoded, tmp_path, caplog):
    _, out, queries = encoded
    folder = tmp_path / "out"
    shutil.copytree(out, folder)
    scan = search(folder, "img002.png", k=5, config=CPU)
    assert build_index(folder, "flat")["recall_at_10"] == 1.0
    caplog.clear()  # what the scan and the build said (the build's recall is measured "against exact search")
    with caplog.at_level(logging.INFO, logger="fext"):
        indexed = search(folder, "img002.png", k=5, config=CPU)
    assert "exact search" not in caplog.text
    assert [r[2] for r in indexed] == [r[2] for r in scan]
    np.testing.assert_allclose([r[1] for r in indexed], [r[1] for r in scan], atol=1e-5)

    metadata = json.loads((folder / "metadata.json").read_text())
    (folder / "metadata.json").write_text(json.dumps({**metadata, "created": "later"}))  # as if encoded again
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="fext"):
        assert search(folder, "img002.png", k=5, config=CPU) == scan
    assert "stale" in caplog.text and "exact search instead" in caplog.text


def test_many_queries_at_once_write_one_csv_and_skip_non_images(encoded, tmp_path, capsys, ws):
    _, out, queries = encoded
    csv_file = tmp_path / "results.csv"
    code = main(["--workspace", str(tmp_path / "ws"), "--set", "device.DEVICE=CPU", "search", str(out),
                 "--queries", str(queries), "-k", "3", "--output", str(csv_file)])
    assert code == 0
    lines = csv_file.read_text().splitlines()
    assert lines[0] == "query,rank,score,meaning,path" and len(lines) == 1 + 2 * 3
    assert [line.split(",")[:2] for line in lines[1:4]] == [["q1.png", "1"], ["q1.png", "2"], ["q1.png", "3"]]
    assert all(line.split(",")[3] in BANDS for line in lines[1:])  # the folder recorded its bands when encoded
    single = search(out, str(queries / "q2.jpg"), k=3, config=CPU)
    assert [line.split(",")[4] for line in lines[4:]] == [r[2] for r in single]


def test_an_incremental_encode_refreshes_the_index(encoded, tmp_path):
    ckpt, _, _ = encoded
    images = tmp_path / "images"
    make_image_tree(images, 5, seed=8)
    out = encode_folder(ckpt, images, tmp_path / "out", config=CPU, progress=False)
    build_index(out, "flat")
    Image.fromarray(blob_image(np.random.default_rng(3))).save(images / "new.png")
    encode_folder(ckpt, images, out, config=CPU, progress=False)
    index = open_index(out)
    assert index is not None and index.faiss_index.ntotal == 6
    assert search(out, "new.png", k=1, config=CPU)[0][2] == "new.png"


def test_exported_onnx_and_torchscript_encoders_match_pytorch(encoded, tmp_path):
    import onnx
    import onnxruntime as ort
    import torch

    from fext.export import export_encoder
    from fext.model import FeXTAutoEncoder

    ckpt, _, _ = encoded
    x = torch.rand(5, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        expected = FeXTAutoEncoder.from_pretrained(ckpt).eval().encode(x).numpy()

    path, diff = export_encoder(ckpt, "onnx", tmp_path / "enc.onnx")
    assert diff <= 1e-4
    props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert props["img_size"] == "64" and "[0, 1]" in props["input"] and "bilinear" in props["preprocessing"]
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {"images": x.numpy()})[0]  # another batch size than the export's
    assert got.shape == (5, 128) and np.abs(got - expected).max() <= 1e-4

    path, diff = export_encoder(ckpt, "torchscript", tmp_path / "enc.pt")
    extra = {"fext.json": ""}
    scripted = torch.jit.load(str(path), _extra_files=extra)
    assert json.loads(extra["fext.json"])["embedding_dim"] == 128 and diff <= 1e-4
    with torch.inference_mode():
        assert np.abs(scripted(x).numpy() - expected).max() <= 1e-4


def test_parquet_round_trips_with_pyarrow(encoded, tmp_path, ws):
    import pyarrow.parquet as pq

    _, out, _ = encoded
    code = main(["--workspace", str(tmp_path / "ws"), "export-embeddings", str(out), "--output", str(tmp_path / "e.parquet")])
    assert code == 0
    table = pq.read_table(tmp_path / "e.parquet")
    assert table.schema.field("vector").type.list_size == 128
    index = [line.split(",") for line in (out / "embeddings_index.csv").read_text().splitlines()[1:]]
    assert table.column("path").to_pylist() == [r[1] for r in index]
    assert table.column("width").to_pylist() == [int(r[2]) for r in index]
    vectors = np.asarray(table.column("vector").combine_chunks().flatten()).reshape(-1, 128)
    np.testing.assert_array_equal(vectors, np.load(out / "embeddings.npy"))


def test_bad_input_gets_one_message_and_changes_nothing(encoded, tmp_path, capsys, ws):
    ckpt, out, queries = encoded
    ws = ["--workspace", str(tmp_path / "ws")]
    not_encoding = tmp_path / "plain"
    not_encoding.mkdir()
    (not_encoding / "photo.png").write_bytes(b"x")
    assert main([*ws, "index", str(not_encoding)]) == 1
    assert "not a folder written by `fext encode`" in capsys.readouterr().err
    assert [p.name for p in not_encoding.iterdir()] == ["photo.png"]

    no_weights = tmp_path / "no_weights"
    shutil.copytree(ckpt, no_weights)
    (no_weights / "model.safetensors").unlink()
    before = sorted(p.name for p in no_weights.iterdir())
    assert main([*ws, "export", str(no_weights), "--format", "onnx"]) != 0
    err = capsys.readouterr().err
    assert "model.safetensors" in err and "Traceback" not in err
    assert sorted(p.name for p in no_weights.iterdir()) == before

    listing = sorted(p.name for p in out.iterdir())
    with pytest.raises(FeXTError, match="Cannot read the query image .*notes.txt"):
        search(out, str(queries / "notes.txt"), config=CPU)
    assert sorted(p.name for p in out.iterdir()) == listing and not (out / INDEX_FILE).exists()
