"""One set of conventions on the command line: --version, help that says what a command reads and writes,
the same names for the same things (checkpoints, embeddings folders, -k/--top-k), errors for options that
do not go together, and --json for scripts (one document on stdout, logs on stderr)."""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import make_checkpoint, make_images, run_fext, tiny_config

import fext
from fext.cli import build_parser, main
from fext.cli_text import HELP
from fext.config import config_to_dict
from fext.workspace import Workspace


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    return next(a for a in build_parser()._actions if a.dest == "command").choices


def test_version_is_printed_in_process_and_by_the_installed_command(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.strip() == f"fext {fext.__version__}"
    proc = run_fext("--version")
    assert proc.returncode == 0 and proc.stdout.strip() == f"fext {fext.__version__}"


@pytest.mark.parametrize("name", sorted(_subparsers()))
def test_every_help_opens_with_what_it_reads_and_writes_and_ends_with_an_example(name):
    text = _subparsers()[name].format_help()
    description = text.split("\n\n")[1]
    assert description.startswith("Reads") and ("Writes" in description or "writes" in description), description
    last = text.rstrip().splitlines()
    assert last[-2] == "example:" and last[-1].strip().startswith(f"fext {name}"), last[-2:]
    assert HELP[name][1] in text


def test_paths_are_named_dir_or_file_and_checkpoints_ckpt():
    seen = set()
    for name, parser in _subparsers().items():
        for action in parser._actions:
            if action.type is Path or action.dest in ("checkpoint", "checkpoints", "resume", "embeddings", "reference"):
                assert action.metavar in {"DIR", "FILE", "CKPT", "EMBEDDINGS_DIR", "NEW_DIR"}, (name, action.dest)
                seen.add(action.metavar)
    assert seen == {"DIR", "FILE", "CKPT", "EMBEDDINGS_DIR", "NEW_DIR"}


def test_long_forms_and_both_spellings_reach_the_same_option():
    parser = build_parser()
    assert parser.parse_args(["search", "--query", "a.jpg", "--top-k", "3"]).k == 3
    assert parser.parse_args(["search", "--query", "a.jpg", "-k", "4"]).k == 4
    assert parser.parse_args(["explore", "--neighbors", "5"]).neighbours == 5
    assert parser.parse_args(["explore", "--neighbours", "6"]).neighbours == 6


@pytest.mark.parametrize("argv,message", [
    (["search", "--query", "a.jpg", "--output", "out.csv"], "--output and --query do not go together"),
    (["search", "--queries", "photos", "--sheet", "s.png"], "--sheet and --queries do not go together"),
    (["search", "--queries", "photos", "--json", "--output", "o.csv"], "--json and --output do not go together"),
    (["evaluate", "--all", "FeXT_1"], "--all and CKPT do not go together"),
    (["select", "--count", "2", "--duplicate-threshold", "0.9"], "--duplicate-threshold applies only with --skip-duplicates"),
])
def test_options_that_do_not_apply_together_are_an_error_not_silence(ws, capsys, argv, message):
    assert main(["--workspace", str(ws.root), *argv]) == 2
    err = capsys.readouterr().err
    assert f"fext {argv[0]}: error: {message}" in err, err
    assert [p.name for p in ws.extraction.iterdir()] == ["images"] and not any(ws.checkpoints.iterdir())


@pytest.fixture(scope="module")
def encoded(tmp_path_factory) -> Workspace:
    return _encoded_workspace(tmp_path_factory.mktemp("conventions") / "ws")


def _encoded_workspace(root: Path) -> Workspace:
    """A workspace with one untrained tiny checkpoint and the 8 images of resources/extraction/images encoded."""
    ws = Workspace(root).ensure()
    ws.config_file.parent.mkdir(parents=True, exist_ok=True)
    ws.config_file.write_text(json.dumps(config_to_dict(tiny_config())))
    make_images(ws.extraction_images, 8, seed=3)
    make_checkpoint(ws.checkpoints / "FeXT_20240101T000000", tiny_config())
    assert main(["--workspace", str(ws.root), "--quiet", "encode"]) == 0
    return ws


def _copy(ws: Workspace, tmp_path: Path) -> Workspace:
    shutil.copytree(ws.root, tmp_path / "ws")
    return Workspace(tmp_path / "ws")


def test_embeddings_dir_is_optional_everywhere_with_explores_choice(encoded, tmp_path, capsys):
    ws = _copy(encoded, tmp_path)
    base = ["--workspace", str(ws.root), "--quiet"]
    query = str(ws.extraction_images / "img_02.png")
    assert main([*base, "search", "--query", query, "-k", "3", "--json"]) == 0
    found = json.loads(capsys.readouterr().out)
    assert found["embeddings"] == str(ws.extraction / "FeXT_20240101T000000")
    assert [r["rank"] for r in found["results"]] == [1, 2, 3] and found["results"][0]["path"] == "img_02.png"
    assert found["results"][0]["score"] == pytest.approx(1.0, abs=1e-4)
    assert main([*base, "export-embeddings"]) == 0
    assert (ws.extraction / "FeXT_20240101T000000" / "embeddings.parquet").is_file()
    assert main([*base, "select", "--count", "2"]) == 0
    assert len((ws.extraction / "FeXT_20240101T000000" / "selection.csv").read_text().splitlines()) == 3
    capsys.readouterr()
    shutil.copytree(ws.extraction / "FeXT_20240101T000000", ws.extraction / "second")
    for argv in (["search", "--query", query], ["index"], ["export-embeddings"], ["select", "--count", "2"],
                 ["explore"], ["score", str(ws.extraction_images)]):
        assert main([*base, *argv]) == 1, argv
        err = capsys.readouterr().err
        assert "Several encoded folders" in err and "FeXT_20240101T000000" in err and "second" in err, (argv, err)


def test_a_moved_checkpoint_is_named_by_name_or_path_with_one_flag(tmp_path, capsys):
    ws = _encoded_workspace(tmp_path / "ws")
    (ws.checkpoints / "FeXT_20240101T000000").rename(ws.checkpoints / "renamed")
    shutil.copytree(ws.checkpoints / "renamed", tmp_path / "elsewhere")
    new_image = tmp_path / "new.png"
    shutil.copy(ws.extraction_images / "img_05.png", new_image)
    base = ["--workspace", str(ws.root), "--quiet", "search", "--query", str(new_image), "-k", "1", "--json"]
    assert main(base) == 1
    assert "--checkpoint" in capsys.readouterr().err
    for name_or_path in ("renamed", str(tmp_path / "elsewhere")):
        assert main([*base, "--checkpoint", name_or_path]) == 0
        result = json.loads(capsys.readouterr().out)["results"][0]
        assert result["path"] == "img_05.png" and result["score"] == pytest.approx(1.0, abs=1e-4)
    assert main([*base, "--checkpoint", "nowhere"]) == 1
    assert "Checkpoint nowhere not found" in capsys.readouterr().err
    parser = _subparsers()
    helps = {parser[c]._option_string_actions["--checkpoint"].help for c in ("search", "explore", "score")}
    assert len(helps) == 1


def test_json_is_one_document_on_stdout_and_logs_go_to_stderr(encoded, tmp_path):
    ws = _copy(encoded, tmp_path)
    proc = run_fext("--workspace", str(ws.root), "checkpoints", "--json")
    assert proc.returncode == 0, proc.stderr
    (only,) = json.loads(proc.stdout)
    assert (only["name"], only["preset"], only["img_size"], only["error"]) == ("FeXT_20240101T000000", "small", 64, None)
    proc = run_fext("--workspace", str(ws.root), "config", "--json", "--set", "training.EPOCHS=3")
    assert json.loads(proc.stdout)["training"]["EPOCHS"] == 3 and "--set override" in proc.stderr
    proc = run_fext("--workspace", str(ws.root), "index", "--kind", "flat", "--json")
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert info["kind"] == "flat" and info["vectors"] == 8 and info["recall_at_10"] == 1.0
    proc = run_fext("--workspace", str(ws.root), "search", "--queries", str(ws.extraction_images), "-k", "2", "--json")
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)["results"]
    assert len(rows) == 16 and {r["query"] for r in rows} == {f"img_0{i}.png" for i in range(8)}


def test_explore_json_says_where_the_atlas_is_and_what_was_found(encoded, tmp_path, capsys):
    ws = _copy(encoded, tmp_path)
    assert main(["--workspace", str(ws.root), "--quiet", "explore", "--clusters", "2", "--json"]) == 0
    found = json.loads(capsys.readouterr().out)
    atlas = ws.extraction / "FeXT_20240101T000000" / "explore" / "atlas.html"
    assert found["atlas"] == str(atlas) and atlas.is_file() and found["atlas_url"] == atlas.resolve().as_uri()
    assert found["images"] == 8 and found["clusters"] == 2
    scores = [u["score"] for u in found["most_unusual"]]
    assert scores == sorted(scores, reverse=True) and np.isfinite(scores).all()
    assert 0 < found["duplicate_threshold"] <= 1
