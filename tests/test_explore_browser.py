"""atlas.html in a real browser: Debian's chromium, headless, driven by selenium through the system chromedriver.

Nothing downloads a browser: the browser and driver paths are passed explicitly, so
selenium-manager never runs. .ci/run installs chromium and chromium-driver with apt-get.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import tiny_config
from PIL import Image

from fext.encoding.calibration import read_bands
from fext.explore import explore
from fext.similarity import band_of

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
NEIGHBOURS = 5
CPU = tiny_config()
BACKGROUND = (0x17, 0x1A, 0x1C)  # the canvas background drawn by atlas.js


def _chromium_or_skip() -> None:
    """Install chromium with apt-get when missing and possible; skip, saying why, when not."""
    if CHROMIUM.exists() and CHROMEDRIVER.exists():
        return
    if shutil.which("apt-get") and os.geteuid() == 0:
        subprocess.run(["apt-get", "install", "-y", "-q", "chromium", "chromium-driver"], capture_output=True, timeout=900)
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.skip("chromium and chromium-driver are not installed and could not be installed "
                    "(apt-get install chromium chromium-driver; .ci/run does it)")


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    _chromium_or_skip()
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is in the dev extra: pip install -e .[dev]")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--window-size=1400,1000",
                 f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
    # An explicit driver path means selenium-manager (which could download a browser) never runs.
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def page(browser, encoded_scenes):
    """The atlas of the encoded images, open in the browser, thumbnails decoded."""
    result = explore(encoded_scenes, encoded_scenes.parent / "atlas", neighbours=NEIGHBOURS, config=CPU, reconstruction=False)
    url = (result.output / "atlas.html").as_uri()
    browser.get(url)
    _wait(lambda: browser.execute_script("return document.body.dataset.ready === '1'"))
    browser.execute_async_script("window.atlas.ready.then(() => arguments[0]())")
    return browser, result, url


def test_the_canvas_is_drawn(page):
    browser, result, _ = page
    canvas = browser.find_element("id", "map")
    pixels = np.asarray(Image.open(io.BytesIO(canvas.screenshot_as_png)).convert("RGB")).astype(int)
    drawn = (np.abs(pixels - np.array(BACKGROUND)).sum(axis=2) > 60).sum()
    assert drawn >= len(result.paths) * 4  # every point is at least a 3x3 dot, some overlap


def test_hover_shows_the_thumbnail_and_click_shows_the_neighbours(page, encoded_scenes):
    from selenium.webdriver.common.action_chains import ActionChains

    browser, result, _ = page
    row = int(result.outliers.ranking()[0])  # the most unusual image stands alone: no other point under the pointer
    canvas = browser.find_element("id", "map")
    x, y = browser.execute_script(f"return window.atlas.screenOf({row})")
    rect = browser.execute_script("return arguments[0].getBoundingClientRect().toJSON()", canvas)
    offset = (round(x - rect["left"] - rect["width"] / 2), round(y - rect["top"] - rect["height"] / 2))
    ActionChains(browser).move_to_element_with_offset(canvas, *offset).perform()
    tip = browser.find_element("id", "tip")
    _wait(lambda: tip.is_displayed() and tip.get_attribute("data-row") == str(row))
    assert result.paths[row] in tip.text
    assert _wait(lambda: browser.execute_script(_TILE_INK, tip.find_element("css selector", "canvas"))) > 100

    ActionChains(browser).move_to_element_with_offset(canvas, *offset).click().perform()
    items = browser.find_elements("css selector", "#neighbours li")
    assert [int(li.get_attribute("data-row")) for li in items] == result.neighbours.indices[row].tolist()
    sims = [float(li.find_element("class name", "sim").text) for li in items]
    assert sims == pytest.approx(result.neighbours.similarities[row].tolist(), abs=1e-3) and sims == sorted(sims, reverse=True)
    assert browser.find_element("css selector", "#detail h3").text == result.paths[row]
    large = browser.find_element("css selector", "#detail img.large")  # the original file, opened by relative path
    assert _wait(lambda: browser.execute_script("return arguments[0].complete && arguments[0].naturalWidth", large)) == 128


def test_box_and_lasso_selection_search_and_csv_download(page, tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains

    browser, result, _ = page
    browser.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(tmp_path)})
    browser.find_element("css selector", "input[name=mode][value=box]").click()
    canvas = browser.find_element("id", "map")
    size = canvas.size
    (ActionChains(browser).move_to_element_with_offset(canvas, -size["width"] // 2 + 2, -size["height"] // 2 + 2)
     .click_and_hold().move_by_offset(size["width"] - 4, size["height"] - 4).release().perform())
    assert browser.find_element("id", "selected-count").text == str(len(result.paths))
    browser.find_element("id", "download").click()
    csv_file = tmp_path / "selection.csv"
    _wait(lambda: csv_file.is_file() and csv_file.stat().st_size > 0)
    lines = csv_file.read_text(encoding="utf-8").splitlines()
    assert lines[0] == "path,cluster,outlier_score" and sorted(line.split(",")[0] for line in lines[1:]) == sorted(result.paths)
    # Lasso around the left half of the map: exactly the points drawn there are selected.
    browser.find_element("id", "clear").click()
    browser.find_element("css selector", "input[name=mode][value=lasso]").click()
    w, h = size["width"], size["height"]
    corners = [(-w // 2 + 2, -h // 2 + 2), (0, -h // 2 + 2), (0, h // 2 - 2), (-w // 2 + 2, h // 2 - 2),
               (-w // 2 + 2, -h // 2 + 3)]
    lasso = ActionChains(browser).move_to_element_with_offset(canvas, *corners[0]).click_and_hold()
    for (x0, y0), (x1, y1) in zip(corners, corners[1:]):
        lasso = lasso.move_by_offset(x1 - x0, y1 - y0)
    lasso.release().perform()
    middle = browser.execute_script("const r = arguments[0].getBoundingClientRect(); return r.left + r.width / 2", canvas)
    xs = [browser.execute_script(f"return window.atlas.screenOf({i})")[0] for i in range(len(result.paths))]
    selected = set(browser.execute_script("return window.atlas.selectedRows()"))
    assert 0 < len(selected) < len(result.paths)  # points within 2 px of the edge may go either way
    assert {i for i, x in enumerate(xs) if x < middle - 2} <= selected <= {i for i, x in enumerate(xs) if x < middle + 2}
    search = browser.find_element("id", "search")
    search.send_keys("sub/")
    assert browser.find_element("id", "match-count").text == "10 matches"
    search.clear()


def test_the_page_made_no_network_request(page):
    browser, _, url = page
    requests = []
    for entry in browser.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            requests.append((message["params"].get("documentURL", ""), message["params"]["request"]["url"]))
    from_page = [u for doc, u in requests if doc == url]
    assert from_page and all(u.split(":", 1)[0] in ("file", "data", "blob") for u in from_page)
    assert not [u for _, u in requests if u.split(":", 1)[0] in ("http", "https", "ws", "wss")]



def _reset(browser, map_side: int | None = None) -> None:
    """The whole map, no filter, nothing selected, no highlight (earlier tests share the page); ``map_side``:
    the map's size in CSS pixels (None: the page's own)."""
    browser.execute_script("""
        const s = document.getElementById('search'); s.value = ''; s.dispatchEvent(new Event('input'));
        const h = document.getElementById('highlight'); if (h.checked) h.click();
        const m = document.getElementById('map'), side = arguments[0];
        m.style.flex = side ? 'none' : ''; m.style.width = m.style.height = side ? side + 'px' : '';
        document.getElementById('clear').click(); document.getElementById('reset').click();""", map_side)


def _canvas_pixels(browser) -> tuple[np.ndarray, dict]:
    canvas = browser.find_element("id", "map")
    rect = browser.execute_script("return arguments[0].getBoundingClientRect().toJSON()", canvas)
    return np.asarray(Image.open(io.BytesIO(canvas.screenshot_as_png)).convert("RGB")).astype(int), rect


def _pixel_at(browser, pixels: np.ndarray, rect: dict, row: int) -> np.ndarray:
    x, y = browser.execute_script(f"return window.atlas.screenOf({row})")
    return pixels[round(y - rect["top"]), round(x - rect["left"])]


def _isolated(xy: np.ndarray, rows) -> int:
    """The row of ``rows`` farthest on the map from every other point."""
    rows = list(rows)
    gaps = [np.sort(np.linalg.norm(xy - xy[r], axis=1))[1] for r in rows]
    return rows[int(np.argmax(gaps))]


def _on_screen(browser, n: int, rect: dict, margin: float = 8) -> list[int]:
    points = browser.execute_script(f"return Array.from({{length: {n}}}, (_, i) => window.atlas.screenOf(i))")
    return [i for i, (x, y) in enumerate(points) if margin < x - rect["left"] < rect["width"] - margin
            and margin < y - rect["top"] < rect["height"] - margin]


def test_zoomed_in_the_points_become_their_thumbnails(page):
    browser, result, _ = page
    smallest = browser.execute_script("return window.atlas.smallestThumbnail")
    _reset(browser, map_side=150)  # crowded: thumbnails would overlap, so dots
    assert browser.execute_script("return window.atlas.thumbnailSide()") < smallest
    assert browser.execute_script("return window.atlas.thumbnailsDrawn()") == 0
    _reset(browser)
    browser.execute_script("window.atlas.zoom(3)")
    assert browser.execute_script("return window.atlas.thumbnailSide()") >= smallest
    pixels, rect = _canvas_pixels(browser)
    on_screen = _on_screen(browser, len(result.paths), rect)
    assert browser.execute_script("return window.atlas.thumbnailsDrawn()") >= len(on_screen) > 0
    row = _isolated(result.xy, on_screen)  # no other thumbnail covers its centre
    with Image.open(result.output.parent / "images" / result.paths[row]) as im:  # the image's own centre colour
        centre = np.asarray(im.convert("RGB"))[im.height // 2, im.width // 2].astype(int)
    assert np.abs(_pixel_at(browser, pixels, rect, row) - centre).sum() < 60
    _reset(browser)


def test_the_highlight_marks_duplicate_groups_and_top_outliers(page):
    browser, result, _ = page
    _reset(browser, map_side=150)  # dots
    browser.find_element("id", "highlight").click()
    pixels, rect = _canvas_pixels(browser)
    grouped = {r for g in result.duplicates.groups for r in g}
    odd = {int(r) for r in result.outliers.ranking()[:48] if result.outliers.score[r] >= 3.5} - grouped
    plain = [r for r in range(len(result.paths)) if r not in grouped | odd]
    cyan, red, dim = np.array([74, 210, 255]), np.array([255, 80, 40]), np.array([0x32, 0x36, 0x3A])
    colours = {r: _pixel_at(browser, pixels, rect, r) for r in range(len(result.paths))}
    assert grouped and all(np.abs(colours[r] - cyan).sum() < 30 for r in grouped)
    assert all(np.abs(colours[r] - red).sum() < 30 for r in odd)
    r = _isolated(result.xy, plain)
    assert np.abs(colours[r] - dim).sum() < 30
    browser.find_element("id", "highlight").click()
    pixels, rect = _canvas_pixels(browser)
    assert np.abs(_pixel_at(browser, pixels, rect, r) - dim).sum() > 60  # back to its cluster's colour
    _reset(browser)

_TILE_INK = """
const c = arguments[0], d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
let n = 0;
for (let i = 0; i < d.length; i += 4) {
    if (d[i + 3] > 0 && Math.abs(d[i] - 34) + Math.abs(d[i + 1] - 34) + Math.abs(d[i + 2] - 34) > 30) n++;
}
return n;
"""


def _wait(condition, timeout: float = 10.0):
    """Poll ``condition`` until it returns something truthy; return it (fail after ``timeout`` seconds)."""
    end = time.monotonic() + timeout
    while True:
        value = condition()
        if value or time.monotonic() > end:
            assert value, "timed out waiting for the page"
            return value
        time.sleep(0.05)
