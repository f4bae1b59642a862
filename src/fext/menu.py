"""The navigation menu of the seed (§5.1): ``fext`` alone on a terminal, or ``fext menu``.

Every entry runs the same command handler as the command line (the entry's ``fext`` arguments
are parsed by the CLI's own parser, which the CLI hands over: the menu imports nothing of it), so
the menu and the commands cannot drift apart. An action
that fails prints its message and the menu carries on; Ctrl-C during an action returns to the
menu; end of input or Ctrl-C at a prompt leaves with status 0.
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Callable
from typing import Protocol, Union

from fext.errors import FeXTError
from fext.prompts import ask_count, ask_folder, ask_number, ask_yes_no, choose
from fext.workspace import Workspace


class MenuContext(Protocol):
    """What the menu needs of the CLI's context (:class:`fext.commands.CommandContext`)."""

    workspace: Workspace
    interactive: bool

    def reload_config(self) -> None: ...


NewParser = Callable[[], argparse.ArgumentParser]
"""Builds the CLI's parser, whose subcommands carry their handler as ``func(ctx, args)``."""

log = logging.getLogger(__name__)

TITLE = "FeXT AutoEncoder: Extraction of Images Features"

# A menu entry is (label, action): the ``fext`` arguments it runs, a sub-menu, or None (Back/Exit).
# The placeholders in the arguments are replaced by the user's answers before the command runs:
# CHECKPOINT by the checkpoint the user picks (the only one is used and said), so that a repeated
# run (see OFFERED_FLAGS) does not ask again; COUNT, STRATEGY and NEW_IMAGES by what they ask for.
CHECKPOINT = "<checkpoint>"
COUNT = "<count>"
STRATEGY = "<strategy>"
NEW_IMAGES = "<new images>"
STRATEGIES = [("diverse", "diverse: one pick per region of the collection, tight or wide (for labelling)"),
              ("farthest", "farthest: every image as close as possible to a pick (plain k-center)"),
              ("typical", "typical: the most typical image of each region, the largest region first")]
Entry = tuple[str, Union[list[str], "Menu", None]]
Menu = tuple[str, list[Entry]]

TRAINING_MENU: Menu = ("Model training and evaluation", [
    ("Train from scratch", ["train"]),
    ("Train from checkpoint", ["train", "--resume", CHECKPOINT]),
    ("Model evaluation", ["evaluate", CHECKPOINT]),
    ("Back", None),
])

SETUP_MENU: Menu = ("Setup and Maintenance", [
    ("Install project in editable mode", ["setup", "install"]),
    ("Update project", ["setup", "update"]),
    ("Remove logs", ["setup", "clean-logs"]),
    ("Back", None),
])

ATLAS_LABEL = "From the dataset folder to the atlas in one go (analyze, train within a time budget, evaluate, encode, explore)"
"""An entry after the seed's five, so that theirs keep the seed's numbers (Exit stays 5)."""

MAIN_MENU: Menu = (TITLE, [
    ("Analyze image dataset", ["analyze"]),
    ("Model training and evaluation", TRAINING_MENU),
    ("Encode images", ["encode", CHECKPOINT]),
    ("Setup and Maintenance", SETUP_MENU),
    ("Exit", None),
    (ATLAS_LABEL, ["atlas"]),
    ("Select a subset of encoded images, to label or to keep", ["select", "--count", COUNT, "--strategy", STRATEGY]),
    ("Score new images by how unlike an encoded collection they are", ["score", NEW_IMAGES]),
])


# A command whose error message suggests one of its flags: the menu offers to run it again with it,
# since a menu user cannot type flags (e.g. encode refuses to mix checkpoints without --overwrite).
OFFERED_FLAGS = {"encode": ("--overwrite", "Encode all the images again, replacing the earlier results?")}


def _format_seconds(seconds: float) -> str:
    return f"{seconds:.1f} s" if seconds < 60 else f"{int(seconds // 60)} min {int(seconds % 60)} s"


def run_action(ctx: MenuContext, label: str, argv: list[str], new_parser: NewParser) -> bool:
    """Run the command ``fext ARGV`` inside the menu; True when it succeeded.

    Errors are shown and swallowed so the menu carries on; EOFError (input ended at a prompt
    inside the action, e.g. the checkpoint choice) propagates so the menu can leave.
    """
    # Re-read configurations.json at each action: the user may edit it while the menu is open.
    ctx.reload_config()
    print(f"\n--- {label} (fext {' '.join(a for a in argv if a not in ASKED)}) ---", flush=True)
    started = time.monotonic()
    try:
        argv = [str(ASKED[a](ctx)) if a in ASKED else a for a in argv]
        args = new_parser().parse_args(argv)
        status = args.func(ctx, args)
    except FeXTError as e:
        log.debug("%s failed", label, exc_info=True)
        print(f"error: {e}", flush=True)
        flag, question = OFFERED_FLAGS.get(argv[0], (None, None))
        if flag and flag in str(e) and flag not in argv and ask_yes_no(question):
            return run_action(ctx, label, [*argv, flag], new_parser)
        return False
    except KeyboardInterrupt:
        print(f"\n{label} interrupted; back to the menu.", flush=True)
        return False
    except EOFError:
        raise
    except Exception as e:  # noqa: BLE001 - the menu must survive any bug in an action
        log.error("%s failed unexpectedly: %s: %s (the traceback is in the log file in %s)",
                  label, type(e).__name__, e, ctx.workspace.logs)
        log.debug("Traceback of the failed menu action %r", label, exc_info=True)
        return False
    if status == 130:  # the handler caught Ctrl-C itself (training saves a resumable checkpoint first)
        print(f"{label} interrupted; back to the menu.", flush=True)
        return False
    if status and not _is_result(argv[0], status):
        print(f"{label} stopped with status {status}.", flush=True)
        return False
    print(f"{label}: done in {_format_seconds(time.monotonic() - started)}.", flush=True)
    return True


def _is_result(command: str, status: int) -> bool:
    """Whether exit ``status`` of ``command`` is a result, not a failure: `fext score` found novel images."""
    if command != "score":
        return False
    from fext.score import NOVEL_EXIT  # already imported by the command that just ran

    return status == NOVEL_EXIT


def _checkpoint(ctx: MenuContext) -> str:
    from fext.checkpoint_catalog import resolve_checkpoint

    return str(resolve_checkpoint(ctx.workspace, None, interactive=ctx.interactive))


ASKED: dict[str, Callable[[MenuContext], str | int]] = {
    CHECKPOINT: _checkpoint,
    COUNT: lambda ctx: ask_count("How many images to pick"),
    STRATEGY: lambda ctx: STRATEGIES[choose([text for _, text in STRATEGIES], "Strategy")][0],
    NEW_IMAGES: lambda ctx: ask_folder("Folder of the new images to score"),
}
"""What each placeholder asks the user, in the order of the arguments."""


def _show(menu: Menu, workspace: str | None = None) -> None:
    title, entries = menu
    print(f"\n{'=' * len(title)}\n{title}\n{'=' * len(title)}")
    if workspace:
        print(f"Workspace: {workspace}")
    for i, (label, _) in enumerate(entries, 1):
        print(f"{i}) {label}")
    print(flush=True)


def _run_menu(ctx: MenuContext, menu: Menu, top: bool, new_parser: NewParser) -> None:
    """Show ``menu`` until Back (sub-menu) or Exit (main menu) is chosen."""
    entries = menu[1]
    while True:
        _show(menu, str(ctx.workspace.root) if top else None)
        label, action = entries[ask_number("Select an option", len(entries)) - 1]
        if action is None:
            return
        if isinstance(action, tuple):
            _run_menu(ctx, action, top=False, new_parser=new_parser)
        else:
            run_action(ctx, label, action, new_parser)


def run_menu(ctx: MenuContext, new_parser: NewParser) -> int:
    """Run the navigation menu until Exit, end of input or Ctrl-C at a prompt; return 0.

    ``new_parser``: the CLI's parser factory; each action parses its arguments with a new parser.
    """
    try:
        _run_menu(ctx, MAIN_MENU, top=True, new_parser=new_parser)
    except (EOFError, KeyboardInterrupt):
        print(flush=True)
    print("Goodbye.", flush=True)
    return 0
