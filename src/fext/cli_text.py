"""What each ``fext`` subcommand's ``--help`` says around its options: what it reads and writes, and an example.

Kept apart from :mod:`fext.cli` so the parser reads as a list of options. Every subcommand has an
entry (a test checks it): the description opens with "Reads" and says what is written, the example
is a command line that runs in a workspace as the README builds it.
"""

from __future__ import annotations

MOVED_CHECKPOINT_HELP = ("the checkpoint that wrote the embeddings, by name or path, when it is no longer where "
                         "metadata.json says (default: the one recorded there)")
"""One meaning for ``--checkpoint`` in every command that reads embeddings (search, explore, score)."""

EMBEDDINGS_HELP = ("a folder written by `fext encode`, or its name under resources/extraction "
                   "(omitted: the only one there, or a choice on a terminal)")
"""EMBEDDINGS_DIR is optional everywhere, with the same automatic choice."""

CHECKPOINT_HELP = "checkpoint name or path (omitted: the only one, or a choice on a terminal)"

HELP: dict[str, tuple[str, str]] = {
    "init": (
        "Reads nothing. Writes the workspace folders (resources/...) and settings/configurations.json with the\n"
        "defaults, in the current directory, --workspace or $FEXT_WORKSPACE.",
        "fext init"),
    "config": (
        "Reads settings/configurations.json and the --set overrides. Writes nothing: prints the configuration a\n"
        "run would use, as JSON on stdout.",
        "fext config --set training.EPOCHS=5"),
    "analyze": (
        "Reads the images of --dataset (default resources/dataset). Writes statistics, a histogram, the problems\n"
        "found (broken files, duplicates, dark or blurry images) and a report to resources/validation/dataset.",
        "fext analyze --dataset ~/Pictures"),
    "train": (
        "Reads the images of --dataset (default resources/dataset), or with --resume a checkpoint. Writes a\n"
        "checkpoint folder resources/checkpoints/FeXT_<time>/ (weights, configuration, history, plots).",
        "fext train --dataset ~/Pictures --minutes 30"),
    "checkpoints": (
        "Reads resources/checkpoints. Writes nothing: prints a table of the checkpoints (--json: a JSON list).",
        "fext checkpoints --json"),
    "evaluate": (
        "Reads checkpoints and their images (or --dataset). Writes metrics, reconstruction figures, the\n"
        "scorecard (retrieval of edited copies against PCA and thumbnails) and report.html to\n"
        "resources/validation/checkpoints/<name>/.",
        "fext evaluate FeXT_20250101T120000"),
    "encode": (
        "Reads the images of --input (default resources/extraction/images) and a checkpoint. Writes\n"
        "embeddings.npy, embeddings_index.csv, metadata.json (and failed.csv, skipped.csv when needed) to\n"
        "--output (default resources/extraction/<checkpoint>). A second run encodes only new or changed images.",
        "fext encode --input ~/Pictures"),
    "search": (
        "Reads an encoded folder (EMBEDDINGS_DIR) and a query image, or a folder of them with --queries. Writes\n"
        "nothing by default: prints the most similar images; --sheet draws them to a PNG, --queries --output\n"
        "writes a CSV (query, rank, score, path), --json prints one JSON document.",
        "fext search --query resources/extraction/images/cat.jpg -k 5"),
    "index": (
        "Reads an encoded folder. Writes a faiss index (index.faiss, index.json) beside its embeddings, so\n"
        "search stays fast at millions of vectors; prints the index's measured recall.",
        "fext index --kind flat"),
    "export": (
        "Reads a checkpoint. Writes its encoder as ONNX (encoder.onnx) or TorchScript (encoder.pt), checked\n"
        "against PyTorch on the same input.",
        "fext export --format torchscript"),
    "export-embeddings": (
        "Reads an encoded folder. Writes its vectors as Parquet (path, width, height, vector), by default\n"
        "EMBEDDINGS_DIR/embeddings.parquet.",
        "fext export-embeddings"),
    "explore": (
        "Reads an encoded folder, its images and (unless --no-reconstruction) its checkpoint. Writes one offline\n"
        "page, atlas.html (map, clusters, outliers, near-duplicates, neighbours), and CSVs to --output\n"
        "(default EMBEDDINGS_DIR/explore).",
        "fext explore --neighbors 8"),
    "select": (
        "Reads an encoded folder. Writes selection.csv (path, rank, distance): a diverse, farthest-point or\n"
        "typical subset of --count images.",
        "fext select --count 3"),
    "score": (
        "Reads a folder of new images and a reference encoded folder (--reference). Writes scores.csv,\n"
        "calibration.json and most_novel.png to --output (default EMBEDDINGS_DIR/scores/<NEW_DIR name>).\n"
        "Exit status: 0 when no image is novel, 3 when at least one is (1 or 2: an error).",
        "fext score resources/extraction/images --false-alarm-rate 0.05"),
    "atlas": (
        "Reads a folder of images (default resources/dataset). Runs analyze, train within a time budget,\n"
        "evaluate, encode, index (large collections) and explore, and prints where the atlas is. Writes what\n"
        "those commands write, in the workspace. Run it again to continue after an interruption, or after\n"
        "adding images (only new images are encoded).",
        "fext atlas ~/Pictures --minutes 20 --open"),
    "setup": (
        "Reads FeXT's source checkout (install, update) or resources/logs (clean-logs). Writes an editable\n"
        "install, a git pull, or removes the log files.",
        "fext setup clean-logs"),
    "menu": (
        "Reads and writes what the chosen entries do: the numbered navigation menu (also `fext` alone on a\n"
        "terminal).",
        "fext menu"),
}
"""Subcommand -> (description: what it reads and writes, example command line)."""


def epilog(command: str) -> str:
    """The end of a subcommand's help: its example."""
    return f"example:\n  {HELP[command][1]}"
