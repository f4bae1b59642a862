"""The ``fext`` command line: the parser and ``main``; the subcommand handlers are in :mod:`fext.commands`.

``main(argv)`` returns the exit status, so tests call the CLI in-process. Expected mistakes
(:class:`~fext.errors.FeXTError`) are printed as one message, without a traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import fext
from fext import commands, environment
from fext.cli_text import CHECKPOINT_HELP, EMBEDDINGS_HELP, HELP, MOVED_CHECKPOINT_HELP, epilog
from fext.commands import CommandContext
from fext.errors import FeXTError
from fext.logs import setup_logging
from fext.workspace import Workspace, read_env_file, require_workspace

log = logging.getLogger("fext")


def _cmd_menu(ctx: CommandContext, args: argparse.Namespace) -> int:
    """``fext menu``: here rather than in :mod:`fext.commands`, because the menu is handed this module's parser."""
    from fext.menu import run_menu

    return run_menu(ctx, build_parser)


def _global_options(after_command: bool) -> argparse.ArgumentParser:
    """The options every command takes, accepted before the subcommand and after it.

    One definition for both places. After the subcommand the defaults are SUPPRESS, so an option
    given only before the subcommand is not reset by the subparser's default; ``--set`` after the
    subcommand collects into its own list, which ``main`` appends to the one given before.
    """
    unset = argparse.SUPPRESS if after_command else None
    options = argparse.ArgumentParser(add_help=False)
    group = options.add_argument_group("global options (before or after the command)")
    group.add_argument("--workspace", type=Path, default=unset, metavar="DIR",
                       help="workspace folder (default: $FEXT_WORKSPACE or the current directory)")
    group.add_argument("--set", dest="overrides_after" if after_command else "overrides", action="append",
                       default=unset if after_command else [], metavar="KEY.PATH=VALUE",
                       help="override a configuration value for this run, e.g. --set training.EPOCHS=5 (repeatable)")
    group.add_argument("--quiet", "-q", action="store_true", default=unset if after_command else False,
                       help="no progress bars, warnings and errors only")
    group.add_argument("--log-level", default=unset, metavar="LEVEL", help="DEBUG, INFO, WARNING or ERROR (default: $FEXT_LOG_LEVEL or INFO)")
    return options


class _CommandParser(argparse.ArgumentParser):
    """A subcommand's parser: it accepts the global options too (``fext train --set ...``)."""

    def __init__(self, *args, parents: list[argparse.ArgumentParser] = (), **kwargs) -> None:
        super().__init__(*args, parents=[*parents, _global_options(after_command=True)], **kwargs)


def _command(sub: argparse._SubParsersAction, name: str, summary: str) -> argparse.ArgumentParser:
    """A subcommand whose help opens with what it reads and writes (``cli_text.HELP``) and ends with an example."""
    description, _ = HELP[name]
    return sub.add_parser(name, help=summary, description=description, epilog=epilog(name),
                          formatter_class=argparse.RawDescriptionHelpFormatter)


def _embeddings_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("embeddings", nargs="?", metavar="EMBEDDINGS_DIR", help=EMBEDDINGS_HELP)


def _json_option(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--json", action="store_true", help=f"print {what} as one JSON document on stdout (logs go to stderr)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fext",
        description="FeXT: train a convolutional autoencoder on your images and turn images into feature vectors.",
        epilog="Run `fext` alone on a terminal for the navigation menu; `fext COMMAND --help` for a command. "
               "From a folder of photos to an atlas: fext atlas ~/Pictures --open",
        parents=[_global_options(after_command=False)],
    )
    parser.add_argument("--version", action="version", version=f"fext {fext.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_CommandParser)

    p = _command(sub, "init", "create the workspace folders and the default configuration")
    p.add_argument("--force", action="store_true", help="rewrite settings/configurations.json with the defaults")
    p.set_defaults(func=commands.cmd_init)

    p = _command(sub, "config", "print the resolved configuration (file + --set overrides)")
    _json_option(p, "the configuration (the default: it is always JSON)")
    p.set_defaults(func=commands.cmd_config)

    p = _command(sub, "analyze", "1) analyze the image dataset: statistics, histogram, problems")
    p.add_argument("--dataset", type=Path, metavar="DIR", help="image folder (default: resources/dataset)")
    p.set_defaults(func=commands.cmd_analyze)

    p = _command(sub, "train", "2) train from scratch, or from a checkpoint with --resume")
    p.add_argument("--resume", nargs="?", const="", default=None, metavar="CKPT",
                   help=f"continue a checkpoint for training.ADDITIONAL_EPOCHS ({CHECKPOINT_HELP})")
    p.add_argument("--dataset", type=Path, metavar="DIR", help="image folder (default: resources/dataset)")
    p.add_argument("--minutes", type=float, metavar="M",
                   help="train for about M minutes instead of training.EPOCHS epochs (training.TIME_BUDGET_MINUTES): "
                        "the learning rate decays over the budget, the epoch that crosses it is the last")
    p.add_argument("--nproc", type=int, default=0, metavar="N", help="train on N processes of this machine with torchrun")
    p.set_defaults(func=commands.cmd_train)

    p = _command(sub, "checkpoints", "list the checkpoints")
    _json_option(p, "the checkpoints")
    p.set_defaults(func=commands.cmd_checkpoints)

    p = _command(sub, "evaluate", "2) evaluate checkpoints: metrics, pictures, PCA baseline, report")
    p.add_argument("checkpoints", nargs="*", metavar="CKPT", help=CHECKPOINT_HELP + "; several may be given")
    p.add_argument("--all", action="store_true", help="evaluate every checkpoint")
    p.add_argument("--dataset", type=Path, metavar="DIR",
                   help="evaluate on this image folder instead of the checkpoint's training images")
    p.add_argument("--images", type=int, default=6, metavar="N", help="images per reconstruction figure (default 6)")
    p.add_argument("--labels-from-folders", action="store_true",
                   help="each image's first folder under the dataset is its class: adds k-NN accuracy to the scorecard")
    p.set_defaults(func=commands.cmd_evaluate)

    p = _command(sub, "encode", "3) encode a folder of images into feature vectors (.npy)")
    p.add_argument("checkpoint", nargs="?", metavar="CKPT", help=CHECKPOINT_HELP)
    p.add_argument("--input", type=Path, metavar="DIR", help="image folder (default: resources/extraction/images)")
    p.add_argument("--output", type=Path, metavar="DIR", help="output folder (default: resources/extraction/<checkpoint>)")
    p.add_argument("--batch-size", type=int, default=64, metavar="N", help="images per batch (default 64)")
    p.add_argument("--per-image", action="store_true", help="also write one .npy per image, mirroring the input tree")
    p.add_argument("--overwrite", action="store_true", help="start again instead of resuming")
    p.set_defaults(func=commands.cmd_encode)

    p = _command(sub, "search", "find the stored images most similar to a query image (or to each of a folder)")
    _embeddings_argument(p)
    query = p.add_mutually_exclusive_group(required=True)
    query.add_argument("--query", metavar="FILE", help="an image file, or a path already in the index")
    query.add_argument("--queries", type=Path, metavar="DIR", help="every image of this folder as a query: CSV out")
    p.add_argument("-k", "--top-k", dest="k", type=int, default=10, metavar="N", help="number of results (default 10)")
    p.add_argument("--sheet", type=Path, metavar="FILE", help="with --query: draw the query and its results into this PNG")
    p.add_argument("--output", type=Path, metavar="FILE",
                   help="with --queries: write the CSV (query, rank, score, path) here instead of to stdout")
    p.add_argument("--exact", action="store_true", help="scan every vector even where an index is present")
    p.add_argument("--checkpoint", metavar="CKPT", help=MOVED_CHECKPOINT_HELP)
    _json_option(p, "the results")
    p.set_defaults(func=commands.cmd_search)

    p = _command(sub, "index", "build a faiss index beside the embeddings, so search stays fast at scale")
    _embeddings_argument(p)
    p.add_argument("--kind", choices=["auto", "flat", "ivf", "hnsw"], default="auto",
                   help="auto (default): exact up to 100,000 vectors, else ivf; flat: exact; ivf: inverted file, "
                        "quantised when the vectors do not fit --memory; hnsw: graph")
    p.add_argument("--memory", type=int, metavar="MB", help="memory budget of the index (default: half the RAM)")
    _json_option(p, "the index's description (index.json)")
    p.set_defaults(func=commands.cmd_index)

    p = _command(sub, "export", "export a checkpoint's encoder to ONNX or TorchScript, verified against PyTorch")
    p.add_argument("checkpoint", nargs="?", metavar="CKPT", help=CHECKPOINT_HELP)
    p.add_argument("--format", choices=["onnx", "torchscript"], required=True, help="onnx (.onnx) or torchscript (.pt)")
    p.add_argument("--output", type=Path, metavar="FILE", help="file to write (default: encoder.onnx / encoder.pt in CKPT)")
    p.add_argument("--batch", choices=["dynamic", "1"], default="dynamic",
                   help="dynamic (default): any batch size; 1: a fixed batch of one image")
    p.set_defaults(func=commands.cmd_export)

    p = _command(sub, "export-embeddings", "write the embeddings as Parquet: path, width, height, vector")
    _embeddings_argument(p)
    p.add_argument("--format", choices=["parquet"], default="parquet", help="parquet (the default and only format)")
    p.add_argument("--output", type=Path, metavar="FILE", help="file to write (default: EMBEDDINGS_DIR/embeddings.parquet)")
    p.set_defaults(func=commands.cmd_export_embeddings)

    p = _command(sub, "explore", "map, clusters, outliers and near-duplicates of encoded images: atlas.html + CSVs")
    _embeddings_argument(p)
    p.add_argument("--output", type=Path, metavar="DIR", help="output folder (default: EMBEDDINGS_DIR/explore)")
    p.add_argument("--clusters", type=int, metavar="K", help="number of clusters (default: chosen by the silhouette)")
    p.add_argument("--neighbors", "--neighbours", dest="neighbours", type=int, default=10, metavar="N",
                   help="neighbours shown for a clicked image (default 10)")
    p.add_argument("--duplicate-threshold", type=float, metavar="SIM",
                   help="cosine similarity that makes near-duplicates (default: measured on edited copies of your images)")
    p.add_argument("--no-reconstruction", action="store_true",
                   help="leave the model's reconstruction error out of the outlier score (saves a pass over the images)")
    p.add_argument("--checkpoint", metavar="CKPT", help=MOVED_CHECKPOINT_HELP)
    p.add_argument("--selection", type=Path, metavar="FILE",
                   help="mark the images of this CSV (`fext select --output`, or any CSV with a path column) in the atlas")
    _json_option(p, "what was found and where it was written")
    p.set_defaults(func=commands.cmd_explore)

    p = _command(sub, "select", "pick a diverse or typical subset of encoded images (to label, or to keep)")
    _embeddings_argument(p)
    p.add_argument("--count", type=int, required=True, metavar="N", help="how many images to pick")
    p.add_argument("--strategy", choices=["diverse", "farthest", "typical"], default="diverse",
                   help="diverse (default): greedy k-center on distances relative to each image's neighbourhood, "
                        "each pick the image farthest from the earlier ones, starting from the most central image: "
                        "one pick per region, tight or wide; farthest: the same on plain cosine distances (the "
                        "smallest worst-case distance to a pick, more picks on wide regions and outliers); "
                        "typical: the most typical image (highest local density) of each of the regions around "
                        "the diverse picks, the largest region first")
    p.add_argument("--skip-duplicates", action="store_true",
                   help="never pick two images of one near-duplicate group (the groups of `fext explore`)")
    p.add_argument("--duplicate-threshold", type=float, metavar="SIM",
                   help="with --skip-duplicates: group images at this cosine similarity instead of using explore's groups")
    p.add_argument("--output", type=Path, metavar="FILE",
                   help="CSV of the picks: path, rank, distance (default: EMBEDDINGS_DIR/selection.csv)")
    p.set_defaults(func=commands.cmd_select)

    p = _command(sub, "score", "score new images by how unlike a reference collection they are, at a calibrated threshold")
    p.add_argument("new", type=Path, metavar="NEW_DIR",
                   help="a folder of new images (or a folder written by `fext encode` with the reference's checkpoint)")
    p.add_argument("--reference", metavar="EMBEDDINGS_DIR", help="the reference collection: " + EMBEDDINGS_HELP)
    p.add_argument("--false-alarm-rate", type=float, default=0.01, metavar="RATE",
                   help="share of images like the reference allowed to score as novel; sets the threshold (default 0.01)")
    p.add_argument("--output", type=Path, metavar="DIR",
                   help="folder for scores.csv, calibration.json and most_novel.png "
                        "(default: EMBEDDINGS_DIR/scores/<NEW_DIR name>)")
    p.add_argument("--no-reconstruction", action="store_true",
                   help="leave the model's reconstruction error out of the score (saves a pass over the images)")
    p.add_argument("--checkpoint", metavar="CKPT", help=MOVED_CHECKPOINT_HELP)
    p.set_defaults(func=commands.cmd_score)

    p = _command(sub, "atlas", "from a folder of images to an atlas in one command (analyze, train, evaluate, encode, explore)")
    p.add_argument("folder", nargs="?", type=Path, metavar="DIR", help="the images (default: resources/dataset)")
    p.add_argument("--minutes", type=float, metavar="M",
                   help="training time budget (default: training.TIME_BUDGET_MINUTES, or chosen for this machine "
                        "and the number of images, and said); larger than before: the model trains on")
    p.add_argument("--open", action="store_true", help="open the atlas in the web browser at the end")
    p.set_defaults(func=commands.cmd_atlas)

    p = _command(sub, "setup", "4) setup and maintenance")
    p.add_argument("action", choices=["install", "update", "clean-logs"],
                   help="install: pip install -e the source checkout; update: git pull it; clean-logs: remove log files")
    p.set_defaults(func=commands.cmd_setup)

    p = _command(sub, "menu", "open the navigation menu")
    p.set_defaults(func=_cmd_menu)
    return parser


CONFLICTS: dict[str, list[tuple[str, str, str]]] = {
    "search": [("--output", "--query", "--output writes the CSV of --queries; a --query's results are printed "
                                       "(--json) or drawn (--sheet)"),
               ("--sheet", "--queries", "--sheet draws the results of one --query"),
               ("--json", "--output", "--json prints the results on stdout, --output writes them to a CSV file")],
    "evaluate": [("--all", "CKPT", "--all evaluates every checkpoint")],
    "select": [("--duplicate-threshold", "--skip-duplicates", None)],
}
"""Per command: (option, other, why) pairs that do not go together; ``why`` None means the first needs the other."""


def _given(args: argparse.Namespace, option: str) -> bool:
    dest = {"CKPT": "checkpoints"}.get(option, option.lstrip("-").replace("-", "_"))
    return getattr(args, dest, None) not in (None, False, [])


def check_combinations(args: argparse.Namespace) -> str | None:
    """The error for options given together that do not apply together (argparse alone would ignore one)."""
    for option, other, why in CONFLICTS.get(args.command, []):
        if why is None and _given(args, option) and not _given(args, other):
            return f"{option} applies only with {other}; add {other} or leave {option} out"
        if why is not None and _given(args, option) and _given(args, other):
            return f"{option} and {other} do not go together: {why}"
    return None


def _needs_workspace(args: argparse.Namespace) -> bool:
    """Every command works in a workspace except the ones that make one or act on FeXT's own install."""
    return not (args.command == "init" or (args.command == "setup" and args.action in ("install", "update")))


def main(argv: list[str] | None = None) -> int:
    """Run the ``fext`` command line; return the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    args.overrides = [*args.overrides, *getattr(args, "overrides_after", [])]
    conflict = check_combinations(args)
    if conflict:
        print(f"fext {args.command}: error: {conflict}", file=sys.stderr)
        return 2
    ws = Workspace.resolve(args.workspace)
    environment.set_missing(read_env_file(ws.env_file))  # for FeXT and for PyTorch (CUDA_VISIBLE_DEVICES, ...)
    if args.workspace is None and environment.workspace():
        ws = Workspace.resolve(None)  # the .env file may name the workspace
        environment.set_missing(read_env_file(ws.env_file))
    # Under torchrun (WORLD_SIZE > 1) no process may prompt: they would all ask at once.
    interactive = sys.stdin.isatty() and sys.stdout.isatty() and not environment.launched()
    if args.command is None:
        if not interactive:
            parser.print_help()
            return 0
        args.func = _cmd_menu
    level = (args.log_level or environment.log_level() or "INFO").strip().upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        print(f"error: log level {level!r} (--log-level or FEXT_LOG_LEVEL) is not one of DEBUG, INFO, WARNING, ERROR",
              file=sys.stderr)
        return 2
    try:
        timeout = environment.dist_timeout()  # how long a process of a torchrun launch waits for the others
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if timeout is not None:
        from fext.distributed import set_timeout

        set_timeout(timeout)
    try:
        if _needs_workspace(args):
            require_workspace(ws)
    except FeXTError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    setup_logging(ws, level, quiet=args.quiet)
    ctx = CommandContext(workspace=ws, overrides=args.overrides, quiet=args.quiet, interactive=interactive)
    try:
        return args.func(ctx, args)
    except FeXTError as e:
        log.debug("error", exc_info=True)
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("Interrupted.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
