"""Every file of a folder is used or accounted for: discovery by content (issue 27).

Real files of every format Pillow writes, saved under their own suffix, a wrong one and none;
sidecar files beside them; multi-frame GIF, TIFF and MPO; a folder of non-images only. Then the
commands that list a folder (analyze, encode and its incremental run, search --queries,
evaluate --dataset, train) say what they skipped, in one line and one file.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import make_checkpoint, run_fext, tiny_config
from PIL import Image, features

from fext.data import SKIPPED, count_notes, find_images, list_folder
from fext.data.decode import decode_image
from fext.data.discovery import discover_split
from fext.encoding import FAILED, METADATA, ROWS_CSV, encode_folder, encode_images
from fext.errors import FeXTError
from fext.workspace import Workspace

CPU = tiny_config()
COLOUR = (200, 40, 90)
SECOND = (10, 220, 30)


def _solid(size: tuple[int, int] = (40, 30), colour: tuple[int, int, int] = COLOUR) -> Image.Image:
    return Image.new("RGB", size, colour)


def _save(path: Path, image: Image.Image, **options: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, **options)
    return path


SINGLE_FRAME = {
    # name: (Pillow format the file is written in, the mode it is converted to first)
    "photo.jpg": ("JPEG", "RGB"),
    "shot.png": ("PNG", "RGB"),
    "scan.bmp": ("BMP", "RGB"),
    "web.webp": ("WEBP", "RGB"),
    "camera.ppm": ("PPM", "RGB"),
    "mono.pgm": ("PPM", "L"),
    "bits.pbm": ("PPM", "1"),
    "any.pnm": ("PPM", "RGB"),
    "icon.ico": ("ICO", "RGB"),
    "render.tga": ("TGA", "RGB"),
    "still.tif": ("TIFF", "RGB"),
    "still.gif": ("GIF", "P"),
    # wrong and missing suffixes: the content decides
    "misnamed.svg": ("JPEG", "RGB"),
    "really_png.jpg": ("PNG", "RGB"),
    "scan0001": ("PPM", "RGB"),
    "export.dat": ("BMP", "RGB"),
    "nested/deep/frame.raw": ("TIFF", "RGB"),
}
if features.check("jpg_2000"):
    SINGLE_FRAME["wavelet.jp2"] = ("JPEG2000", "RGB")
    SINGLE_FRAME["wavelet_no_suffix"] = ("JPEG2000", "RGB")

MULTI_FRAME = ("anim.gif", "stack.tiff", "stereo.mpo", "anim_no_suffix")
SIDECARS = {
    "photo.xmp": '<x:xmpmeta xmlns:x="adobe:ns:meta/"></x:xmpmeta>',
    "photo.json": '{"exposure": 0.01}',
    "README.txt": "camera output\n",
    "nested/notes.md": "# notes\n",
    "image.svg": '<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>',
}
HIDDEN = (".DS_Store", ".cache/thumb.jpg", "nested/._photo.jpg")


def write_formats(folder: Path) -> None:
    """Every file of the module's tables, written with Pillow (hidden files too)."""
    for name, (fmt, mode) in SINGLE_FRAME.items():
        _save(folder / name, _solid().convert(mode), format=fmt)
    frames = [_solid(), _solid(colour=SECOND)]
    _save(folder / "anim.gif", frames[0], format="GIF", save_all=True, append_images=frames[1:])
    _save(folder / "stack.tiff", frames[0], format="TIFF", save_all=True, append_images=frames[1:])
    _save(folder / "stereo.mpo", frames[0], format="MPO", save_all=True, append_images=frames[1:])
    _save(folder / "anim_no_suffix", frames[0], format="GIF", save_all=True, append_images=frames[1:])
    for name, text in SIDECARS.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)
    (folder / "empty.bin").write_bytes(b"")
    for name in HIDDEN:
        _save(folder / name, _solid(), format="JPEG")


IMAGES = sorted([*SINGLE_FRAME, *MULTI_FRAME])
NOT_IMAGES = sorted([*SIDECARS, "empty.bin"])


@pytest.fixture(scope="module")
def formats(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("formats") / "camera"
    write_formats(folder)
    return folder


def test_every_file_is_an_image_by_content_or_listed_with_its_reason(formats: Path) -> None:
    listing = list_folder(formats)

    assert [listing.relative(p) for p in listing.images] == IMAGES
    assert [listing.relative(p) for p, _ in listing.not_images] == NOT_IMAGES
    reasons = {listing.relative(p): r for p, r in listing.not_images}
    assert reasons["empty.bin"] == "empty file" and reasons["photo.xmp"] == "not an image"
    assert sorted(listing.relative(p) for p in listing.multi_frame) == sorted(MULTI_FRAME)
    assert listing.hidden == 3  # .DS_Store, the .cache folder (its content not walked), ._photo.jpg
    assert find_images(formats) == listing.images


def test_every_listed_image_decodes_and_multi_frame_files_give_their_first_frame(formats: Path) -> None:
    for path in list_folder(formats).images:
        pixels, size = decode_image(path, 16)
        assert pixels.shape == (16, 16, 3) and size[0] > 0
        if path.name in MULTI_FRAME:
            # The first frame is the first colour (lossy JPEG frames of an MPO within a few levels).
            np.testing.assert_allclose(pixels.reshape(-1, 3).mean(0), COLOUR, atol=4)


def test_notes_count_in_one_sentence_each() -> None:
    assert count_notes(3, 0) == ["3 files are not images (skipped.csv)"]
    assert count_notes(1, 2, "summary.txt") == [
        "1 file is not an image (summary.txt)", "2 images have several frames: the first frame is used"]
    assert count_notes(0, 0) == []


def test_a_folder_of_only_non_images_is_one_clear_error(tmp_path: Path, ws: Workspace) -> None:
    data = tmp_path / "sidecars"
    for name, text in SIDECARS.items():
        (data / name).parent.mkdir(parents=True, exist_ok=True)
        (data / name).write_text(text)
    with pytest.raises(FeXTError) as info:
        discover_split(data, 1.0, 0, 0.1, 0)
    message = str(info.value)
    assert message.startswith(f"No image found in {data}: none of its 5 files is an image Pillow can open")
    assert "(README.txt, image.svg, nested/notes.md and 2 more)" in message

    done = run_fext("analyze", "--dataset", str(data), "--quiet", "--workspace", str(ws.root))
    assert done.returncode == 1
    errors = [line for line in done.stderr.splitlines() if line.strip()]
    hint = "Put images there, or pass another folder with --dataset DIR."
    assert errors == ["error: " + message.replace("Put images there or point to another folder.", hint)]


def test_analyze_reports_formats_non_images_and_multi_frame_files(formats: Path, ws: Workspace) -> None:
    done = run_fext("analyze", "--dataset", str(formats), "--quiet", "--workspace", str(ws.root),
                    "--set", "device.NUM_PROCESSORS=0")
    assert done.returncode == 0, done.stderr
    out = ws.validation_dataset
    summary = json.loads((out / "summary.json").read_text())
    expected = {"JPEG": 2, "PNG": 2, "BMP": 2, "WEBP": 1, "PPM": 5, "ICO": 1, "TGA": 1, "TIFF": 3, "GIF": 3, "MPO": 1}
    if features.check("jpg_2000"):
        expected["JPEG2000"] = 2
    assert summary["formats"] == dict(sorted(expected.items(), key=lambda kv: (-kv[1], kv[0])))
    assert (summary["images"], summary["readable"], summary["not_images"], summary["multi_frame"]) == (
        len(IMAGES), len(IMAGES), len(NOT_IMAGES), 4)
    assert _csv(out / SKIPPED)[0] == ["path", "reason"]
    assert [row[0] for row in _csv(out / SKIPPED)[1:]] == NOT_IMAGES
    assert "  formats: PPM 5, GIF 3, TIFF 3," in done.stdout
    assert f"  {len(NOT_IMAGES)} files are not images (skipped.csv)" in done.stdout
    assert "  4 images have several frames: the first frame is used" in done.stdout
    assert not any("Skipped" in line for line in done.stderr.splitlines())  # no line per non-image


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "FeXT_20240101T000000", CPU)


def test_encode_uses_every_image_and_lists_the_rest_in_skipped_csv(
    formats: Path, tmp_path: Path, ws: Workspace, ckpt: Path,
) -> None:
    done = run_fext("encode", str(ckpt), "--input", str(formats), "--output", str(tmp_path / "out"),
                    "--workspace", str(ws.root), "--set", "device.DEVICE=CPU", "--set", "device.NUM_PROCESSORS=0")
    assert done.returncode == 0, done.stderr
    out = tmp_path / "out"
    assert [row[1] for row in _csv(out / ROWS_CSV)[1:]] == IMAGES
    assert _csv(out / FAILED) == [["path", "reason"]]
    assert [row for row in _csv(out / SKIPPED)[1:]] == [
        [name, "empty file" if name == "empty.bin" else "not an image"] for name in NOT_IMAGES]
    meta = json.loads((out / METADATA).read_text())
    assert (meta["images"], meta["failed"], meta["not_images"], meta["multi_frame"]) == (len(IMAGES), 0, len(NOT_IMAGES), 4)
    log = done.stderr + done.stdout
    assert f"{len(NOT_IMAGES)} files are not images (skipped.csv)" in log
    assert "4 images have several frames: the first frame is used" in log
    assert not any(name in log for name in NOT_IMAGES)  # counted, never one line each


def test_incremental_encode_keeps_skipped_csv_true(tmp_path: Path, ckpt: Path) -> None:
    images = tmp_path / "images"
    _save(images / "a.ppm", _solid(), format="PPM")
    _save(images / "b", _solid(colour=SECOND), format="PNG")
    (images / "a.xmp").write_text("<xmp/>")
    out = encode_folder(ckpt, images, tmp_path / "out", config=CPU, progress=False)
    assert [r[0] for r in _csv(out / SKIPPED)[1:]] == ["a.xmp"]

    (images / "b.json").write_text("{}")
    _save(images / "c.txt", _solid(), format="JPEG")  # an image, whatever its name says
    encode_folder(ckpt, images, out, config=CPU, progress=False)
    assert [r[0] for r in _csv(out / SKIPPED)[1:]] == ["a.xmp", "b.json"]
    assert [r[1] for r in _csv(out / ROWS_CSV)[1:]] == ["a.ppm", "b", "c.txt"]
    meta = json.loads((out / METADATA).read_text())
    assert meta["update"]["added"] == 1 and meta["not_images"] == 2


def test_search_queries_take_images_by_content(tmp_path: Path, ckpt: Path, caplog: pytest.LogCaptureFixture) -> None:
    queries = tmp_path / "queries"
    _save(queries / "q1.pgm", _solid().convert("L"), format="PPM")
    _save(queries / "q2", _solid(colour=SECOND), format="TGA")
    (queries / "q1.xmp").write_text("<xmp/>")
    with caplog.at_level("INFO", logger="fext"):
        vectors, rows = encode_images(ckpt, queries, config=CPU)
    assert [row["path"] for row in rows] == ["q1.pgm", "q2"] and vectors.shape == (2, 128)
    assert f"{queries}: 1 file is not an image (e.g. q1.xmp)" in caplog.messages


def _csv(path: Path) -> list[list[str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.reader(f))
