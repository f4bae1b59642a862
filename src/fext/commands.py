"""The handlers of the ``fext`` subcommands: each maps parsed arguments to a function of the Python API.

:mod:`fext.cli` builds the parser and binds each subcommand to one of these ``cmd_*(ctx, args)``
functions; they return the exit status. The configuration enters here, once: :class:`Context`
loads the file with its ``--set`` overrides and every handler passes ``ctx.config`` down.
Heavy modules (torch among them) are imported inside the handlers, so ``fext --help`` stays fast.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from fext.config import Config, load_config
from fext.errors import FeXTError
from fext.workspace import Workspace, require_workspace

log = logging.getLogger("fext")


@dataclass
class Context:
    """What every command needs: the workspace, the configuration, and how to talk to the user."""

    workspace: Workspace
    overrides: list[str] = field(default_factory=list)
    quiet: bool = False
    interactive: bool = False
    _config: Config | None = None

    @property
    def config(self) -> Config:
        """The configuration file merged with ``--set`` overrides (loaded once, on first use)."""
        if self._config is None:
            require_workspace(self.workspace)
            self._config = load_config(self.workspace.config_file, self.overrides)
        return self._config

    def reload_config(self) -> None:
        """Read the configuration file again at the next use (the menu does before each action)."""
        self._config = None

    @property
    def progress(self) -> bool:
        """Progress bars are shown on a terminal unless --quiet."""
        return not self.quiet and sys.stdout.isatty()


def first_process() -> bool:
    """True except in the ranks other than 0 of a torchrun launch (which say things once, through rank 0)."""
    return os.environ.get("RANK", "0") == "0"


def name_the_device(ctx: Context) -> None:
    """Say first which device the run's model uses (device.DEVICE "auto" picks one); later selections say nothing.

    For the commands that always run the model, before anything else they log (a checkpoint chosen, ...).
    """
    from fext.distributed import device_for

    device_for(ctx.config.device.DEVICE, ctx.config.device.DEVICE_ID)


def cmd_init(ctx: Context, args: argparse.Namespace) -> int:
    from fext.workspace import init_workspace

    written = init_workspace(ctx.workspace, overwrite=args.force)
    print(f"Workspace ready at {ctx.workspace.root}")
    for path in written:
        print(f"  wrote {path.relative_to(ctx.workspace.root)}")
    if not written:
        print(f"  {ctx.workspace.config_file.relative_to(ctx.workspace.root)} already exists (--force rewrites it)")
    print(f"Put training images in {ctx.workspace.dataset} and run `fext train`.")
    return 0


def cmd_config(ctx: Context, args: argparse.Namespace) -> int:
    import json

    from fext.config import config_to_dict

    print(json.dumps(config_to_dict(ctx.config), indent=4))
    log.info("From %s%s", ctx.workspace.config_file, f" with {len(ctx.overrides)} --set override(s)" if ctx.overrides else "")
    return 0


def cmd_analyze(ctx: Context, args: argparse.Namespace) -> int:
    from fext.analysis import analyze

    analyze(ctx.config, ctx.workspace, dataset=args.dataset, progress=ctx.progress)
    return 0


def cmd_train(ctx: Context, args: argparse.Namespace) -> int:
    if args.nproc:
        from fext.distributed import launch_torchrun

        return launch_torchrun(args.nproc, sys.argv[1:])
    from fext.checkpoints import resolve_checkpoint
    from fext.training import TrainingInterrupted, train

    resume = None
    if args.resume is not None:
        resume = resolve_checkpoint(ctx.workspace, args.resume or None, interactive=ctx.interactive)
    try:
        folder = train(ctx.config, ctx.workspace, resume=resume, dataset=args.dataset, progress=ctx.progress)
    except TrainingInterrupted as e:
        print(e, file=sys.stderr)
        return e.exit_code
    if first_process():
        print(f"Checkpoint: {folder}")
    return 0


def cmd_checkpoints(ctx: Context, args: argparse.Namespace) -> int:
    from fext.checkpoints import checkpoints_table

    print(checkpoints_table(ctx.workspace))
    return 0


def cmd_evaluate(ctx: Context, args: argparse.Namespace) -> int:
    from fext.checkpoints import list_checkpoints, resolve_checkpoint
    from fext.evaluation import evaluate_checkpoints

    name_the_device(ctx)
    if args.all:
        ckpts = [c.path for c in list_checkpoints(ctx.workspace) if c.ok]
        if not ckpts:
            raise FeXTError(f"No checkpoint in {ctx.workspace.checkpoints}; train one with `fext train`")
    elif args.checkpoints:
        ckpts = [resolve_checkpoint(ctx.workspace, c, interactive=False) for c in args.checkpoints]
    else:
        ckpts = [resolve_checkpoint(ctx.workspace, None, interactive=ctx.interactive)]
    for out in evaluate_checkpoints(ckpts, ctx.config, ctx.workspace, dataset=args.dataset, images=args.images,
                                    progress=ctx.progress, labels_from_folders=args.labels_from_folders):
        print(f"Report: {out / 'report.html'}")
    return 0


def cmd_encode(ctx: Context, args: argparse.Namespace) -> int:
    from fext.checkpoints import resolve_checkpoint
    from fext.encoding import encode_folder

    name_the_device(ctx)
    ckpt = resolve_checkpoint(ctx.workspace, args.checkpoint, interactive=ctx.interactive)
    out = encode_folder(
        ckpt,
        args.input or ctx.workspace.extraction_images,
        args.output,
        config=ctx.config,
        workspace=ctx.workspace,
        batch_size=args.batch_size,
        per_image=args.per_image,
        overwrite=args.overwrite,
        progress=ctx.progress,
    )
    if first_process():
        print(f"Embeddings: {out}")
    return 0


def embeddings_dir(ctx: Context, folder: Path) -> Path:
    """An embeddings folder, or a checkpoint name standing for its default output folder."""
    if not folder.exists() and (ctx.workspace.extraction / folder).is_dir():
        return ctx.workspace.extraction / folder
    return folder


def cmd_search(ctx: Context, args: argparse.Namespace) -> int:
    from fext.search import print_results, search, search_folder, write_results_csv

    embeddings = embeddings_dir(ctx, args.embeddings)
    if args.queries is not None:
        results = search_folder(embeddings, args.queries, k=args.k, config=ctx.config, checkpoint=args.checkpoint,
                                use_index=not args.exact)
        write_results_csv(results, args.output)
        if args.output is not None:
            print(f"Results: {args.output} ({len({r[0] for r in results})} queries)")
        return 0
    results = search(embeddings, args.query, k=args.k, sheet=args.sheet, config=ctx.config, checkpoint=args.checkpoint,
                     use_index=not args.exact)
    print_results(results)
    return 0


def cmd_index(ctx: Context, args: argparse.Namespace) -> int:
    from fext.index import build_index

    info = build_index(embeddings_dir(ctx, args.embeddings), args.kind, args.memory, progress=ctx.progress)
    effort = f", {'nprobe' if info['kind'] == 'ivf' else 'efSearch'} {info['effort']}" if info["effort"] else ""
    print(f"Index: {info['factory']} over {info['vectors']} vectors{effort}, about {info['estimated_mb']:.0f} MB, "
          f"built in {info['build_seconds']:.1f} s; recall@10 {info['recall_at_10']:.3f} "
          f"against exact search on {info['recall_queries']} queries")
    return 0


def cmd_export(ctx: Context, args: argparse.Namespace) -> int:
    from fext.checkpoints import resolve_checkpoint
    from fext.export import export_encoder

    ckpt = resolve_checkpoint(ctx.workspace, args.checkpoint, interactive=ctx.interactive)
    path, max_diff = export_encoder(ckpt, args.format, args.output, dynamic_batch=args.batch == "dynamic")
    print(f"Exported the encoder to {path}; max abs difference against PyTorch {max_diff:.2e}")
    return 0


def cmd_export_embeddings(ctx: Context, args: argparse.Namespace) -> int:
    from fext.export import export_embeddings

    path, rows = export_embeddings(embeddings_dir(ctx, args.embeddings), args.format, args.output)
    print(f"Wrote {rows} rows to {path}")
    return 0


def cmd_explore(ctx: Context, args: argparse.Namespace) -> int:
    from fext.explore.run import explore, resolve_embeddings

    folder = resolve_embeddings(ctx.workspace.extraction, args.embeddings, ctx.interactive)
    result = explore(folder, args.output, clusters=args.clusters, neighbours=args.neighbours, config=ctx.config,
                     checkpoint=args.checkpoint, duplicate_threshold=args.duplicate_threshold,
                     reconstruction=not args.no_reconstruction, progress=ctx.progress, selection=args.selection)
    print(result.summary())
    return 0


def cmd_select(ctx: Context, args: argparse.Namespace) -> int:
    from fext.select import select

    embeddings = embeddings_dir(ctx, args.embeddings)
    result = select(embeddings, args.count, args.strategy, args.output or embeddings / "selection.csv",
                    skip_duplicates=args.skip_duplicates, duplicate_threshold=args.duplicate_threshold,
                    seed=ctx.config.SEED)
    print(result.summary())
    return 0


def cmd_score(ctx: Context, args: argparse.Namespace) -> int:
    from fext.score import NOVEL_EXIT, score

    result = score(args.new, embeddings_dir(ctx, args.reference), args.output, config=ctx.config,
                   checkpoint=args.checkpoint, false_alarm_rate=args.false_alarm_rate,
                   reconstruction=not args.no_reconstruction, progress=ctx.progress)
    print(result.summary())
    return NOVEL_EXIT if result.novel.any() else 0


def cmd_setup(ctx: Context, args: argparse.Namespace) -> int:
    from fext import setup_commands

    action = {"install": setup_commands.install_editable, "update": setup_commands.update_project,
              "clean-logs": setup_commands.clean_logs}[args.action]
    print(action(ctx.workspace))
    return 0
