"""``fext export`` and ``fext export-embeddings``: results other tools read without FeXT.

- :func:`export_encoder` writes a checkpoint's encoder as ONNX (``torch.onnx.export`` through
  ``torch.export``, the exporter PyTorch maintains; it needs the onnxscript package) or as
  TorchScript (``torch.jit.trace``). Input: float32 RGB in [0, 1], shape (N, 3, S, S); output:
  (N, D) feature vectors. The graph is the model's plain forward (fast inference off: its
  in-place buffer reuse is a PyTorch-on-CPU optimisation that exporters need not follow). The
  image size and the preprocessing are recorded in the file (ONNX ``metadata_props``, a
  ``fext.json`` extra file in TorchScript). The file is verified before it appears: run (with
  onnxruntime for ONNX) on a test batch and compared with PyTorch, largest difference at most
  :data:`TOLERANCE`.
- :func:`export_embeddings` writes an encoding folder as Parquet: one row per image with
  ``path``, ``width``, ``height`` and ``vector`` (a fixed-size list of D float32, the layout
  LanceDB and DuckDB take as a vector), streamed a block of rows at a time.
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

import fext
from fext._io import atomic_path
from fext.errors import FeXTError

log = logging.getLogger(__name__)

FORMATS = {"onnx": "encoder.onnx", "torchscript": "encoder.pt"}
TOLERANCE = 1e-4
"""Largest absolute difference from PyTorch an exported encoder may show on the test batch."""
PARQUET_ROWS = 65536
PREPROCESSING = (
    "decode with Pillow, apply the EXIF orientation, convert to RGB, resize to S x S with an antialiased "
    "bilinear filter (aspect ratio not kept), scale to float32 in [0, 1], channels first: (N, 3, S, S)"
)


def export_encoder(
    ckpt: str | os.PathLike, fmt: str, output: str | os.PathLike | None = None, dynamic_batch: bool = True,
) -> tuple[Path, float]:
    """Export the encoder of checkpoint ``ckpt`` as ``fmt`` ("onnx" or "torchscript"); return (file, max abs diff).

    ``output`` defaults to ``encoder.onnx`` / ``encoder.pt`` in the checkpoint folder. With
    ``dynamic_batch`` the file takes any batch size, else exactly one image.
    """
    from fext.model import load_checkpoint

    if fmt not in FORMATS:
        raise FeXTError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    model, checkpoint = load_checkpoint(ckpt)
    model.eval().disable_fast_inference()
    encoder = _Encoder(model).eval()
    arch = model.arch
    output = Path(output) if output is not None else checkpoint.path / FORMATS[fmt]
    metadata = {
        "producer": "fext", "fext_version": fext.__version__, "checkpoint": checkpoint.name, "preset": arch.preset,
        "img_size": arch.img_size, "embedding_dim": arch.feature_dim,
        "input": f"float32 (N, 3, {arch.img_size}, {arch.img_size}) RGB in [0, 1]" + ("" if dynamic_batch else ", N = 1"),
        "output": f"float32 (N, {arch.feature_dim}) feature vectors, as `fext encode` writes them",
        "preprocessing": PREPROCESSING,
    }
    generator = torch.Generator().manual_seed(0)
    example = torch.rand(2 if dynamic_batch else 1, 3, arch.img_size, arch.img_size, generator=generator)
    test = torch.rand(3 if dynamic_batch else 1, 3, arch.img_size, arch.img_size, generator=generator)  # another N
    with torch.inference_mode():
        expected = encoder(test).numpy()
    with atomic_path(output) as tmp:
        if fmt == "onnx":
            _write_onnx(encoder, example, tmp, metadata, dynamic_batch)
            got = _run_onnx(tmp, test.numpy())
        else:
            _write_torchscript(encoder, example, tmp, metadata)
            with torch.inference_mode(), warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                got = torch.jit.load(str(tmp)).eval()(test).numpy()
        diff = float(np.abs(got - expected).max())
        if not diff <= TOLERANCE:
            raise FeXTError(f"The exported {fmt} encoder differs from PyTorch by up to {diff:.2e} (over {TOLERANCE}); "
                            "nothing was written. Try the other --format, and report this with your torch version.")
    log.info("Exported the encoder of %s to %s; max abs difference against PyTorch on a test batch: %.2e",
             checkpoint.name, output, diff)
    return output, diff


class _Encoder(torch.nn.Module):
    """images (N, 3, S, S) in [0, 1] -> feature vectors (N, D): the model's ``features``, as the exported graph."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.features(images)  # the feature vectors fext encode writes


def _write_onnx(encoder: Any, example: Any, path: Path, metadata: dict[str, Any], dynamic_batch: bool) -> None:
    import onnx

    try:
        import onnxscript  # noqa: F401 - torch's ONNX exporter needs it
    except ImportError as e:
        raise FeXTError("ONNX export needs the onnxscript package: pip install onnxscript") from e
    shapes = ({0: torch.export.Dim("batch", min=1)},) if dynamic_batch else None
    program = torch.onnx.export(encoder, (example,), dynamo=True, input_names=["images"], output_names=["features"],
                                dynamic_shapes=shapes, verbose=False)
    model = program.model_proto
    onnx.helper.set_model_props(model, {key: str(value) for key, value in metadata.items()})
    onnx.save_model(model, str(path))


def _run_onnx(path: Path, images: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: images})[0]


def _write_torchscript(encoder: Any, example: Any, path: Path, metadata: dict[str, Any]) -> None:
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit's deprecation notices and the input-shape check the trace records
        traced = torch.jit.trace(encoder, (example,), check_trace=False)
        torch.jit.save(traced, str(path), _extra_files={"fext.json": json.dumps(metadata)})


def export_embeddings(folder: str | os.PathLike, fmt: str = "parquet",
                      output: str | os.PathLike | None = None) -> tuple[Path, int]:
    """Write the embeddings of an encoding folder as Parquet; return (file, rows)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from fext.encoding.files import open_encoding

    if fmt != "parquet":
        raise FeXTError(f"--format must be parquet, got {fmt!r}")
    encoding = open_encoding(folder)
    n, d = encoding.vectors.shape
    output = Path(output) if output is not None else encoding.folder / "embeddings.parquet"
    schema = pa.schema(
        [("path", pa.string()), ("width", pa.int32()), ("height", pa.int32()), ("vector", pa.list_(pa.float32(), d))],
        metadata={"fext": json.dumps({"checkpoint": encoding.metadata.checkpoint.to_json(),
                                      "embedding_dim": encoding.metadata.embedding_dim,
                                      "img_size": encoding.metadata.img_size})},
    )
    vectors_file = encoding.rows
    rows = encoding.read_rows_csv()
    if len(rows) != n:
        raise FeXTError(f"{encoding.folder}: the index has {len(rows)} rows for {n} vectors; encode the images again")
    with atomic_path(output) as tmp, pq.ParquetWriter(str(tmp), schema) as writer:
        for lo in range(0, n, PARQUET_ROWS):
            part, vectors = rows[lo:lo + PARQUET_ROWS], np.ascontiguousarray(vectors_file[lo:lo + PARQUET_ROWS])
            flat = pa.array(vectors.reshape(-1), type=pa.float32())
            writer.write_batch(pa.record_batch([
                pa.array([r["path"] for r in part], pa.string()),
                pa.array([r["width"] for r in part], pa.int32()),
                pa.array([r["height"] for r in part], pa.int32()),
                pa.FixedSizeListArray.from_arrays(flat, d),
            ], schema=schema))
    log.info("Wrote %d rows (path, width, height, vector of %d float32) to %s", n, d, output)
    return output, n
