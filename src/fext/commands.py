"""The handlers of the ``fext`` subcommands: each maps parsed arguments to a function of the Python API.

:mod:`fext.cli` builds the parser and binds each subcommand to one of these ``cmd_*(ctx, args)``
functions; they return the exit status. The configuration enters here, once: :class:`CommandContext`
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
from typing import Any

from fext._allocator import keep_freed_memory
from fext.config import Config, load_config, with_overrides
from fext.environment import first_process
from fext.errors import FeXTError
from fext.workspace import Workspace, require_workspace

log = logging.getLogger("fext")


@dataclass
class CommandContext:
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


def name_the_device(ctx: CommandContext) -> None:
    """Say first which device the run's model uses (device.DEVICE "auto" picks one); later selections say nothing.

    For the commands that always run the model, before anything else they log (a checkpoint chosen, ...).
    """
    from fext.distributed import device_for

    device_for(ctx.config.device.DEVICE, ctx.config.device.DEVICE_ID)


def cmd_init(ctx: CommandContext, args: argparse.Namespace) -> int:
    from fext.workspace import init_workspace

    written = init_workspace(ctx.workspace, overwrite=args.force)
    print(f"Workspace ready at {ctx.workspace.root}")
    for path in written:
        print(f"  wrote {path.relative_to(ctx.workspace.root)}")
    if not written:
        print(f"  {ctx.workspace.config_file.relative_to(ctx.workspace.root)} already exists (--force rewrites it)")
    print(f"Put training images in {ctx.workspace.dataset} and run `fext train`.")
    return 0


def cmd_config(ctx: CommandContext, args: argparse.Namespace) -> int:
    from fext.config import config_to_dict

    print_json(config_to_dict(ctx.config))
    log.info("From %s%s", ctx.workspace.config_file, f" with {len(ctx.overrides)} --set override(s)" if ctx.overrides else "")
    return 0


def cmd_analyze(ctx: CommandContext, args: argparse.Namespace) -> int:
    from fext.analysis import analyze

    keep_freed_memory()  # full-resolution images are not re-mapped for every image; the (forked) workers inherit it
    analyze(ctx.config, ctx.workspace, dataset=args.dataset, progress=ctx.progress)
    return 0


def cmd_train(ctx: CommandContext, args: argparse.Namespace) -> int:
    if args.nproc:
        from fext.distributed import launch_torchrun

        return launch_torchrun(args.nproc, sys.argv[1:])
    from fext.checkpoint_catalog import resolve_checkpoint
    from fext.training import TrainingInterrupted, train

    resume = None
    if args.resume is not None:
        resume = resolve_checkpoint(ctx.workspace, args.resume or None, interactive=ctx.interactive)
    cfg = ctx.config
    if args.minutes is not None:
        cfg = with_overrides(cfg, {"training.TIME_BUDGET_MINUTES": args.minutes})
    try:
        folder = train(cfg, ctx.workspace, resume=resume, dataset=args.dataset, progress=ctx.progress)
    except TrainingInterrupted as e:
        print(e, file=sys.stderr)
        return e.exit_code
    if first_process():
        print(f"Checkpoint: {folder}")
    return 0


def cmd_checkpoints(ctx: CommandContext, args: argparse.Namespace) -> int:
    from fext.checkpoint_catalog import checkpoints_table, list_checkpoints

    if args.json:
        print_json([checkpoint_record(info) for info in list_checkpoints(ctx.workspace)])
        return 0
    print(checkpoints_table(ctx.workspace))
    return 0


def checkpoint_record(info: Any) -> dict[str, Any]:
    """One row of `fext checkpoints --json`: the table's columns, with numbers left as numbers."""
    record: dict[str, Any] = {"name": info.name, "path": str(info.path), "error": info.error}
    c = info.checkpoint
    if c is not None:
        d = c.description
        record.update(preset=d.architecture.preset, img_size=d.architecture.img_size, epochs=len(c.epochs),
                      train_images=d.dataset.train if d.dataset else None,
                      validation_images=d.dataset.validation if d.dataset else None,
                      train_loss=c.last("train"), validation_loss=c.last("validation"), created=d.created)
    return record


def cmd_evaluate(ctx: CommandContext, args: argparse.Namespace) -> int:
    from fext.checkpoint_catalog import list_checkpoints, resolve_checkpoint
    from fext.evaluation import evaluate_checkpoints

    keep_freed_memory()  # the model's batch activations are not re-mapped for every batch (fext._allocator)
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


def cmd_encode(ctx: CommandContext, args: argparse.Namespace) -> int:
    from fext.checkpoint_catalog import resolve_checkpoint
    from fext.encoding import encode_folder

    keep_freed_memory()  # the model's batch activations are not re-mapped for every batch (fext._allocator)
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


def print_json(document: Any) -> None:
    """The one JSON document of a ``--json`` command on stdout (logs go to stderr); NumPy values as plain ones."""
    import json

    def plain(value: Any) -> Any:
        if hasattr(value, "tolist"):  # NumPy scalars and arrays
            return value.tolist()
        return str(value)

    print(json.dumps(document, indent=2, default=plain))


def embeddings_dir(ctx: CommandContext, name_or_path: str | os.PathLike | None) -> Path:
    """The encoded folder a command reads: a path, a folder name under resources/extraction, or (omitted)
    the only encoded folder there (a choice on a terminal). The same choice in every command, explore's."""
    from fext.explore.run import resolve_embeddings

    return resolve_embeddings(ctx.workspace.extraction, name_or_path, ctx.interactive)


def moved_checkpoint(ctx: CommandContext, name_or_path: str | None) -> Path | None:
    """``--checkpoint``: where the checkpoint that wrote some embeddings is now, by name or path; None: as recorded."""
    from fext.checkpoint_catalog import resolve_checkpoint

    return resolve_checkpoint(ctx.workspace, name_or_path) if name_or_path else None


def cmd_search(ctx: CommandContext, args: argparse.Namespace) -> int:
    from fext.encoding.calibration import read_bands
    from fext.search import print_results, search, search_folder, write_results_csv
    from fext.similarity import band_of

    keep_freed_memory()  # the model's batch activations are not re-mapped for every batch (fext._allocator)
    embeddings = embeddings_dir(ctx, args.embeddings)
    checkpoint = moved_checkpoint(ctx, args.checkpoint)
    bands = read_bands(embeddings)
    if args.queries is not None:
        results = search_folder(embeddings, args.queries, k=args.k, config=ctx.config, checkpoint=checkpoint,
                                use_index=not args.exact)
        if args.json:
            print_json({"embeddings": str(embeddings), "results": [
                {"query": q, "rank": rank, "score": score, "meaning": band_of(score, bands), "path": path}
                for q, rank, score, path in results]})
            return 0
        write_results_csv(results, args.output, bands)
        if args.output is not None:
            print(f"Results: {args.output} ({len({r[0] for r in results})} queries)")
        return 0
    results = search(embeddings, args.query, k=args.k, sheet=args.sheet, config=ctx.config, checkpoint=checkpoint,
                     use_index=not args.exact)
    if args.json:
        print_json({"embeddings": str(embeddings), "query": args.query, "sheet": args.sheet, "results": [
            {"rank": rank, "score": score, "meaning": band_of(score, bands), "path": path}
            for rank, score, path in results]})
        return 0
    print_results(results, bands)
    return 0


def cmd_index(ctx: CommandContext, args: argparse.Namespace) -> int:
    from fext.index import build_index

    info = build_index(embeddings_dir(ctx, args.embeddings), args.kind, args.memory, progress=ctx.progress)
    if args.json:
        print_json(info)
        return 0
    effort = f", {'nprobe' if info['kind'] == 'ivf' else 'efSearch'} {info['effort']}" if info["effort"] else ""
    print(f"Index: {info['factory']} over {info['vectors']} vectors{effort}, about {info['estimated_mb']:.0f} MB, "
          f"built in {info['build_seconds']:.1f} s; recall@10 {info['recall_at_10']:.3f} "
          f"against exact search on {info['recall_queries']} queries")
    return 0


def cmd_export(ctx: CommandContext, args: argparse.Namespace) -> int:
    from fext.checkpoint_catalog import resolve_checkpoint
    from fext.export import export_encoder

    ckpt = resolve_checkpoint(ctx.workspace, args.checkpoint, interactive=ctx.interactive)
    path, max_diff = export_encoder(ckpt, args.format, args.output, dynamic_batch=args.batch == "dynamic")
    print(f"Exported the encoder to {path}; max abs difference against PyTorch {max_diff:.2e}")
    return 0


def cmd_export_embeddings(ctx: CommandContext, args: argparse.Namespace) -> int:
    from fext.export import export_embeddings

    path, rows = export_embeddings(embeddings_dir(ctx, args.embeddings), args.format, args.output)
    print(f"Wrote {rows} rows to {path}")
    return 0


def cmd_explore(ctx: CommandContext, args: argparse.Namespace) -> int:
    from fext.explore.run import explore

    keep_freed_memory()  # the model's batch activations are not re-mapped for every batch (fext._allocator)
    folder = embeddings_dir(ctx, args.embeddings)
    result = explore(folder, args.output, clusters=args.clusters, neighbours=args.neighbours, config=ctx.config,
                     checkpoint=moved_checkpoint(ctx, args.checkpoint), duplicate_threshold=args.duplicate_threshold,
                     reconstruction=not args.no_reconstruction, progress=ctx.progress, selection=args.selection)
    if args.json:
        print_json(exploration_record(result))
        return 0
    print(result.summary())
    return 0


def exploration_record(result: Any, top: int = 20) -> dict[str, Any]:
    """`fext explore --json`: where the atlas and CSVs are, and what the summary says, as numbers and lists."""
    ranking = list(result.outliers.ranking()[:top])
    return {
        "atlas": str(result.output / "atlas.html"), "atlas_url": (result.output / "atlas.html").resolve().as_uri(),
        "output": str(result.output), "images": len(result.paths), "thumbnails": result.thumbnails,
        "clusters": result.clusters.k, "silhouette": result.clusters.silhouette,
        "most_unusual": [{"path": result.paths[r], "score": float(result.outliers.score[r]),
                          "reason": result.outliers.why(r)} for r in ranking],
        "duplicate_threshold": float(result.threshold.value), "duplicate_threshold_note": result.threshold.describe(),
        "duplicate_groups": [{"kind": kind, "paths": [result.paths[r] for r in group]}
                             for group, kind in zip(result.duplicates.groups, result.duplicates.kinds)],
        "seconds": result.seconds,
    }


def cmd_select(ctx: CommandContext, args: argparse.Namespace) -> int:
    from fext.select import select

    embeddings = embeddings_dir(ctx, args.embeddings)
    result = select(embeddings, args.count, args.strategy, args.output or embeddings / "selection.csv",
                    skip_duplicates=args.skip_duplicates, duplicate_threshold=args.duplicate_threshold,
                    seed=ctx.config.SEED)
    print(result.summary())
    return 0


def cmd_score(ctx: CommandContext, args: argparse.Namespace) -> int:
    from fext.score import NOVEL_EXIT, score

    keep_freed_memory()  # the model's batch activations are not re-mapped for every batch (fext._allocator)
    result = score(args.new, embeddings_dir(ctx, args.reference), args.output, config=ctx.config,
                   checkpoint=moved_checkpoint(ctx, args.checkpoint), false_alarm_rate=args.false_alarm_rate,
                   reconstruction=not args.no_reconstruction, progress=ctx.progress)
    print(result.summary())
    return NOVEL_EXIT if result.novel.any() else 0


def cmd_atlas(ctx: CommandContext, args: argparse.Namespace) -> int:
    from fext.atlas import make_atlas
    from fext.training import TrainingInterrupted

    keep_freed_memory()  # as `fext analyze` and CPU training do (the analysis workers inherit it)
    try:
        atlas = make_atlas(ctx.config, ctx.workspace, args.folder, minutes=args.minutes, progress=ctx.progress)
    except TrainingInterrupted as e:
        print(f"{e}\nRun the same `fext atlas` command again to continue.", file=sys.stderr)
        return e.exit_code
    print(atlas.summary())
    if args.open:
        import webbrowser

        if not webbrowser.open(atlas.url):
            log.warning("No web browser to open here; open %s yourself.", atlas.url)
    return 0


def cmd_setup(ctx: CommandContext, args: argparse.Namespace) -> int:
    from fext import maintenance

    action = {"install": maintenance.install_editable, "update": maintenance.update_project,
              "clean-logs": maintenance.clean_logs}[args.action]
    print(action(ctx.workspace))
    return 0
