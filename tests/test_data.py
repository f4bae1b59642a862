"""Tests of the image data pipeline: discovery, split, decoding, cache, augmentation, loaders."""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import PIL_MODES, make_images
from fext.data import augment, cache, cache_manifest, decode, loader
from fext.data.cache import open_readonly, prepare_images
from fext.data.decode import ImageDecodeError, image_size, load_image, open_rgb
from fext.data.discovery import draw_sample, find_images, split_images
from fext.errors import FeXTError


def solid(path: Path, color: tuple[int, int, int], size: tuple[int, int] = (48, 32), **save: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path, **save)
    return path


def reason_of(path: Path) -> str:
    with pytest.raises(ImageDecodeError) as info:
        open_rgb(path)
    return str(info.value)


# Discovery, sampling, split


def test_find_images_is_recursive_case_insensitive_sorted_and_skips_hidden(tmp_path: Path) -> None:
    for rel in ["b/z.PNG", "a.JPG", "b/d/e.Jpeg", "c.webp", "c.tiff", "b/a.Gif", "x.bmp"]:
        solid(tmp_path / rel, (1, 2, 3), format="PNG")
    for rel in [".hidden/x.jpg", "b/.y.png", "notes.txt", "b/readme.md"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("x")

    found = find_images(tmp_path)

    rel = [p.relative_to(tmp_path).as_posix() for p in found]
    assert rel == ["a.JPG", "b/a.Gif", "b/d/e.Jpeg", "b/z.PNG", "c.tiff", "c.webp", "x.bmp"]
    assert all(p.is_absolute() for p in found)


def test_find_images_of_a_missing_folder_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FeXTError, match="not found"):
        find_images(tmp_path / "nope")


def test_sample_is_deterministic_sized_and_ordered() -> None:
    paths = [Path(f"/d/{i:04d}.jpg") for i in range(200)]
    a, b = draw_sample(paths, 0.3, seed=1), draw_sample(paths, 0.3, seed=1)
    assert a == b and len(a) == 60 and a == sorted(a)
    assert draw_sample(paths, 0.3, seed=2) != a
    assert draw_sample(paths, 1.0, seed=5) == paths
    assert len(draw_sample(paths[:3], 0.01, seed=0)) == 1


def test_split_is_stable_when_images_are_added_and_removed() -> None:
    root = Path("/data")
    paths = [root / f"dir{i % 7}" / f"img{i:05d}.jpg" for i in range(1000)]
    train, validation = split_images(paths, root, 0.1, split_seed=76)

    assert len(train) + len(validation) == 1000
    assert 0.07 <= len(validation) / 1000 <= 0.13
    assert set(train).isdisjoint(validation)

    more = paths[::2] + [root / "new" / f"n{i}.png" for i in range(300)]
    train2, validation2 = split_images(sorted(more), root, 0.1, split_seed=76)
    assert set(validation2) & set(paths) == set(validation) & set(more)
    assert set(train2) & set(paths) == set(train) & set(more)
    assert split_images(paths, root, 0.1, split_seed=77)[1] != validation


def test_split_gives_each_side_an_image_on_tiny_folders() -> None:
    root = Path("/d")
    train, validation = split_images([root / "a.jpg", root / "b.jpg", root / "c.jpg"], root, 0.01, 3)
    assert len(train) == 2 and len(validation) == 1
    assert split_images([root / "a.jpg"], root, 0.0, 3) == ([root / "a.jpg"], [])


# Decoding


def test_modes_become_rgb_with_alpha_on_white(tmp_path: Path) -> None:
    gray = Image.new("L", (4, 4), 77)
    gray.save(tmp_path / "l.png")
    la = Image.new("LA", (4, 4), (10, 255))
    la.putpixel((0, 0), (10, 0))
    la.save(tmp_path / "la.png")
    pal = Image.new("P", (4, 4), 1)
    pal.putpalette([0, 0, 0, 200, 30, 40] + [0] * 762)
    pal.putpixel((0, 0), 0)
    pal.save(tmp_path / "p.png", transparency=0)
    rgba = Image.new("RGBA", (4, 4), (0, 0, 255, 255))
    rgba.putpixel((0, 0), (0, 0, 255, 0))
    rgba.putpixel((1, 0), (0, 0, 255, 128))
    rgba.save(tmp_path / "rgba.png")
    Image.new("CMYK", (4, 4), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg", quality=100)
    Image.new("1", (4, 4), 1).save(tmp_path / "bw.png")

    def pixels(name: str) -> np.ndarray:
        image = open_rgb(tmp_path / name)
        assert image.mode == "RGB" and image.size == (4, 4)
        return np.asarray(image).astype(int)

    assert pixels("l.png")[1, 1].tolist() == [77, 77, 77]
    assert pixels("la.png")[0, 0].tolist() == [255, 255, 255]
    assert pixels("la.png")[1, 1].tolist() == [10, 10, 10]
    assert pixels("p.png")[0, 0].tolist() == [255, 255, 255]
    assert pixels("p.png")[1, 1].tolist() == [200, 30, 40]
    assert pixels("rgba.png")[0, 0].tolist() == [255, 255, 255]
    assert np.abs(pixels("rgba.png")[0, 1] - [127, 127, 255]).max() <= 1
    assert pixels("rgba.png")[2, 2].tolist() == [0, 0, 255]
    assert np.abs(pixels("cmyk.jpg")[2, 2] - [255, 0, 0]).max() <= 3
    assert pixels("bw.png")[0, 0].tolist() == [255, 255, 255]


def test_every_pillow_mode_goes_through_the_cache_as_rgb(tmp_path: Path) -> None:
    paths = make_images(tmp_path / "modes", n=len(PIL_MODES), modes=PIL_MODES)
    cached = prepare_images(paths, 64, tmp_path / "cache", workers=0, progress=False)
    assert cached.failures == [] and len(cached) == len(PIL_MODES)
    images = cached.batch(np.arange(len(PIL_MODES))).numpy()  # (N, 64, 64, 3) uint8
    assert images.shape == (len(PIL_MODES), 64, 64, 3)
    for mode, image in zip(PIL_MODES, images):
        r, g, b = image[..., 0], image[..., 1], image[..., 2]
        gray = mode in ("L", "LA", "I;16", "1")
        assert bool((r == g).all() and (g == b).all()) == gray, mode
        assert image.std() > 5, mode  # the gradient survived, whatever the mode


def test_16_bit_and_wide_modes_are_scaled_not_clipped(tmp_path: Path) -> None:
    Image.fromarray(np.array([[0, 32768, 65535]], dtype=np.uint16)).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode in ("I;16", "I")  # 16 bits kept; Pillow < 10.3 opens them as I
    assert np.asarray(open_rgb(tmp_path / "g16.png"))[0, :, 0].tolist() == [0, 128, 255]
    Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32)).save(tmp_path / "f.tiff")
    assert np.asarray(open_rgb(tmp_path / "f.tiff"))[0, :, 1].tolist() == [0, 128, 255]


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    pixels = np.zeros((20, 40, 3), dtype=np.uint8)  # stored 40 wide, 20 high
    pixels[:6, :6] = (255, 0, 0)  # red stored top-left
    image = Image.fromarray(pixels)
    exif = image.getexif()
    exif[0x0112] = 6  # displayed rotated 90 degrees clockwise
    image.save(tmp_path / "rot.jpg", exif=exif, quality=95)

    upright = np.asarray(open_rgb(tmp_path / "rot.jpg")).astype(int)

    assert upright.shape == (40, 20, 3)
    assert image_size(tmp_path / "rot.jpg") == (20, 40)
    assert upright[2, 17, 0] > 200 and upright[2, 17, 1] < 60  # now top-right
    assert upright[2, 2].max() < 60 and upright[37, 17].max() < 60


def test_bad_files_give_one_human_reason(tmp_path: Path) -> None:
    good = solid(tmp_path / "good.jpg", (9, 9, 9), size=(64, 64), quality=90)
    data = good.read_bytes()
    (tmp_path / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("this is not an image\n")

    assert reason_of(tmp_path / "truncated.jpg") == "truncated or corrupt image data"
    assert reason_of(tmp_path / "empty.jpg") == "empty file"
    assert reason_of(tmp_path / "text.jpg") == "not an image"
    assert reason_of(tmp_path / "missing.jpg") == "file not found"


def test_decompression_bombs_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    solid(tmp_path / "warn.png", (1, 1, 1), size=(40, 40))  # 1600 px: between 1x and 2x the limit
    solid(tmp_path / "error.png", (1, 1, 1), size=(100, 100))  # above 2x: Pillow's own error
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    for name in ("warn.png", "error.png"):
        assert reason_of(tmp_path / name) == "image too large (decompression bomb guard)"


def test_mislabelled_png_decodes(tmp_path: Path) -> None:
    solid(tmp_path / "really_png.jpg", (10, 200, 30), format="PNG")
    assert np.asarray(open_rgb(tmp_path / "really_png.jpg"))[0, 0].tolist() == [10, 200, 30]


def test_load_image_resizes_with_and_without_draft(tmp_path: Path) -> None:
    gradient = np.tile(np.linspace(0, 255, 320, dtype=np.uint8)[None, :, None], (240, 1, 3))
    Image.fromarray(gradient).save(tmp_path / "g.jpg", quality=95)

    with Image.open(tmp_path / "g.jpg") as im:
        im.draft("RGB", (64, 64))
        assert im.size == (160, 120)  # half-scale DCT decoding is available
    fast = load_image(tmp_path / "g.jpg", 64)
    full = load_image(tmp_path / "g.jpg", 64, draft=False)

    assert fast.shape == (64, 64, 3) and fast.dtype == np.uint8 and fast.flags.c_contiguous
    assert np.abs(fast.astype(int) - full.astype(int)).mean() < 2
    assert fast[:, 0].mean() < 10 and fast[:, -1].mean() > 245


# Cache


@pytest.fixture()
def count_decodes(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    calls: list[Path] = []
    original = decode.decode_image

    def counting(path: Path, size: int, draft: bool = True):
        calls.append(Path(path))
        return original(path, size, draft)

    monkeypatch.setattr(decode, "decode_image", counting)
    return calls


def make_dataset(root: Path, count: int = 4) -> list[Path]:
    return [solid(root / f"img{i}.png", (40 * i, 255 - 40 * i, 7), size=(24, 16)) for i in range(count)]


def test_cache_hits_invalidates_and_adds(
    tmp_path: Path, count_decodes: list[Path], caplog: pytest.LogCaptureFixture
) -> None:
    paths = make_dataset(tmp_path / "ds")
    bad = tmp_path / "ds" / "bad.jpg"
    bad.write_text("nope")
    cache_dir = tmp_path / "cache"

    with caplog.at_level(logging.WARNING):
        first = prepare_images([*paths[:2], bad, *paths[2:]], 16, cache_dir, workers=0)
    assert len(count_decodes) == 5
    assert first.paths == paths and len(first) == 4
    assert first.failures == [(bad, "not an image")]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [f"Skipping {bad}: not an image"]
    expected = np.stack([load_image(p, 16) for p in paths])
    assert np.array_equal(first.array, expected)
    assert np.array_equal(first.batch([3, 0]).numpy(), expected[[3, 0]])

    count_decodes.clear()
    second = prepare_images([*paths, bad], 16, cache_dir, workers=0)
    assert count_decodes == [] and np.array_equal(second.array, expected)
    assert second.failures == [(bad, "not an image")]

    solid(paths[1], (0, 0, 250), size=(24, 16))
    stat = paths[1].stat()
    os.utime(paths[1], ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000))
    added = solid(tmp_path / "ds" / "sub" / "new.png", (1, 2, 3), size=(16, 16))
    third = prepare_images([*paths, added], 16, cache_dir, workers=0)
    assert sorted(count_decodes) == sorted([paths[1], added])
    assert third.array[1, 5, 5].tolist() == [0, 0, 250]
    assert third.array[4, 0, 0].tolist() == [1, 2, 3]
    assert np.array_equal(third.array[[0, 2, 3]], expected[[0, 2, 3]])

    readonly = open_readonly([*paths, added], 16, cache_dir)
    assert np.array_equal(readonly.array, third.array)
    with pytest.raises(FeXTError, match="not in the decoded-image cache"):
        open_readonly([solid(tmp_path / "ds" / "late.png", (5, 5, 5))], 16, cache_dir)


def test_cache_survives_a_killed_build(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    paths = make_dataset(tmp_path / "ds", count=6)
    monkeypatch.setattr(cache, "_DECODE_BATCH", 2)
    monkeypatch.setattr(cache, "_COMMIT_SECONDS", -1.0)  # commit after every batch
    original = decode.decode_image
    decoded: list[Path] = []

    def dies_on_fifth(path: Path, size: int, draft: bool = True):
        if len(decoded) == 4:
            raise KeyboardInterrupt
        decoded.append(Path(path))
        return original(path, size, draft)

    monkeypatch.setattr(decode, "decode_image", dies_on_fifth)
    with pytest.raises(KeyboardInterrupt):
        prepare_images(paths, 16, tmp_path / "cache", workers=0)

    decoded.clear()
    resumed = prepare_images(paths, 16, tmp_path / "cache", workers=0)
    assert decoded == paths[4:]  # the two batches committed before the kill were kept
    monkeypatch.setattr(decode, "decode_image", original)
    assert resumed.slots.tolist() == list(range(6))
    assert np.array_equal(resumed.array, np.stack([load_image(p, 16) for p in paths]))


def test_cache_compacts_stale_slots(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cache_manifest, "COMPACT_MIN_DEAD", 0)
    paths = make_dataset(tmp_path / "ds", count=3)
    before = prepare_images(paths, 16, tmp_path / "cache", workers=0)
    for i, path in enumerate(paths):
        solid(path, (i, i, i), size=(24, 16))
        os.utime(path, ns=(0, path.stat().st_mtime_ns + 10**9))
    prepare_images(paths, 16, tmp_path / "cache", workers=0)  # 3 stale slots, 0 live: compacted first
    after = prepare_images(paths, 16, tmp_path / "cache", workers=0)

    assert [after.array[i, 0, 0].tolist() for i in range(3)] == [[i, i, i] for i in range(3)]
    assert after.data_file != before.data_file and not before.data_file.exists()
    assert [p.name for p in after.data_file.parent.glob("pixels-*")] == [after.data_file.name]


def _build_in_child(args: tuple[list[Path], Path]) -> bytes:
    paths, cache_dir = args
    return prepare_images(paths, 16, cache_dir, workers=0).array.tobytes()


def test_two_processes_building_at_once_agree(tmp_path: Path) -> None:
    paths = make_dataset(tmp_path / "ds", count=6)
    with multiprocessing.get_context("fork").Pool(2) as pool:
        results = pool.map(_build_in_child, [(paths, tmp_path / "cache")] * 2)

    expected = np.stack([load_image(p, 16) for p in paths]).tobytes()
    assert results == [expected, expected]
    reopened = pickle.loads(pickle.dumps(open_readonly(paths, 16, tmp_path / "cache")))
    assert reopened.array.tobytes() == expected
    manifest = json.loads((cache.cache_folder(tmp_path / "cache", 16) / "manifest.json").read_text())
    assert len(manifest["images"]) == 6


def test_a_cache_whose_manifest_has_the_old_name_is_decoded_again(tmp_path: Path) -> None:
    paths = make_dataset(tmp_path / "ds", count=3)
    first = prepare_images(paths, 16, tmp_path / "cache", workers=0)
    folder = first.data_file.parent
    (folder / "manifest.json").rename(folder / "index.json")  # a cache written before the rename

    again = prepare_images(paths, 16, tmp_path / "cache", workers=0)

    assert np.array_equal(again.array, first.array)
    assert sorted(p.name for p in folder.iterdir()) == sorted(["lock", "manifest.json", again.data_file.name])


def test_no_readable_image_is_one_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "a.jpg"
    bad.write_bytes(b"")
    message = r"No readable image in .*: 1 files could not be decoded \(first: .*a.jpg: empty file\)"
    with pytest.raises(FeXTError, match=message):
        prepare_images([bad], 16, tmp_path / "cache", workers=0)


# Loaders


def test_iterate_batches_and_to_float(tmp_path: Path) -> None:
    paths = make_dataset(tmp_path / "ds", count=5)
    cached = prepare_images(paths, 8, tmp_path / "cache", workers=0)

    def epoch_of(seed: int) -> list[torch.Tensor]:
        generator = torch.Generator().manual_seed(seed)
        return list(loader.iterate_batches(cached, range(5), 2, shuffle=True, generator=generator))

    epoch, again = epoch_of(0), epoch_of(0)
    assert [b.shape[0] for b in epoch] == [2, 2, 1]
    assert all(torch.equal(a, b) for a, b in zip(epoch, again))
    rows = sorted(map(tuple, torch.cat(epoch)[:, 0, 0].tolist()))
    assert rows == sorted(map(tuple, cached.array[:, 0, 0].tolist()))
    assert len(list(loader.iterate_batches(cached, [0, 1, 2], 2, False, None, drop_last=True))) == 1

    x = loader.to_float(next(loader.iterate_batches(cached, [4], 1, shuffle=False, generator=None)))
    assert x.shape == (1, 3, 8, 8) and x.dtype == torch.float32
    assert x.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(x[0, :, 0, 0], torch.tensor([160, 95, 7]) / 255.0)
    extremes = loader.to_float(torch.tensor([0, 255], dtype=torch.uint8).view(1, 1, 2, 1).expand(2, 2, 2, 3))
    assert extremes.min().item() == 0.0 and extremes.max().item() == 1.0


def test_decode_batches_align_positions_and_failures_with_workers(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    paths = [solid(tmp_path / f"{i}.jpg", (30 * i, 10, 10), size=(20 + i, 10), quality=95) for i in range(7)]
    paths[3].write_bytes(paths[3].read_bytes()[:100])

    with caplog.at_level(logging.WARNING):
        batches = list(loader.decode_batches(paths, 16, batch_size=2, workers=2))

    assert [b.positions for b in batches] == [[0, 1], [2], [4, 5], [6]]
    assert [f for b in batches for f in b.failures] == [(3, "truncated or corrupt image data")]
    assert [r.getMessage() for r in caplog.records] == [f"Skipping {paths[3]}: {batches[1].failures[0][1]}"]
    assert [s for b in batches for s in b.sizes] == [(20 + i, 10) for i in (0, 1, 2, 4, 5, 6)]
    images = torch.cat([b.images for b in batches])
    assert images.dtype == torch.uint8 and images.shape == (6, 16, 16, 3)
    assert np.array_equal(images.numpy(), np.stack([load_image(paths[i], 16) for i in (0, 1, 2, 4, 5, 6)]))


# Augmentation


def test_augmentation_rates_range_and_determinism() -> None:
    h = w = 6
    ramp_w = torch.linspace(0, 0.1, w).view(1, 1, 1, w)
    ramp_h = torch.linspace(0, 0.1, h).view(1, 1, h, 1)
    x = (0.4 + ramp_w + ramp_h).expand(4000, 3, h, w).contiguous()

    original = x.clone()
    out = augment.augment_batch(x, torch.Generator().manual_seed(0))
    assert torch.equal(x, original)

    h_flipped = out[:, 0, 0, 0] > out[:, 0, 0, -1]
    v_flipped = out[:, 0, 0, 0] > out[:, 0, -1, 0]
    brightened = (out.mean(dim=(1, 2, 3)) - x.mean(dim=(1, 2, 3))).abs() > 1e-4
    contrasted = (out.std(dim=(1, 2, 3)) / x.std(dim=(1, 2, 3)) - 1).abs() > 1e-3
    assert abs(h_flipped.float().mean().item() - 0.5) < 0.05
    assert abs(v_flipped.float().mean().item() - 0.5) < 0.05
    assert abs(brightened.float().mean().item() - 0.25) < 0.04
    assert abs(contrasted.float().mean().item() - 0.35) < 0.04
    assert torch.equal(out, augment.augment_batch(x, torch.Generator().manual_seed(0)))

    noisy = torch.rand(512, 3, 8, 8).contiguous(memory_format=torch.channels_last)
    wild = augment.augment_batch(noisy, torch.Generator().manual_seed(1))
    assert wild.min() >= 0 and wild.max() <= 1
    assert wild.is_contiguous(memory_format=torch.channels_last)
