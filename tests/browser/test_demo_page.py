"""The demo page at `/`, driven in a real headless Chromium against the real server.

Needs Debian's `chromium` and `chromium-driver` (`.ci/run` installs them on CI) and Selenium
from PyPI. Without a browser these tests skip and say why, except under `CI=true`, where a
missing browser is a failure: CI must never pass by skipping them.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.conftest import DATA
from tests.service.server import Server

pytestmark = pytest.mark.slow

PHOTO = DATA / "wflw_samples" / "36_Football_americanfootball_ball_36_415.jpg"
PHOTO_SIZE = (1024, 661)  # width, height
API_KEY = "demo-page-test-key"
# The page's palette (service/static/app.js), which is also service/pipeline/draw.py's.
LANDMARK_COLORS = {(0, 200, 255), (255, 140, 0), (255, 0, 255), (0, 255, 0), (255, 0, 0),
                   (255, 255, 0), (0, 255, 128)}
# The page's largest landmark disc radius (6 CSS px at devicePixelRatio 1) plus a margin.
ISOLATION_PX = 7.0
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage",
                  # narrower than the photo, so the page must scale the overlay down
                  "--window-size=900,1000")


def _browser_paths() -> tuple[str, str]:
    """(chromium, chromedriver), or skip with the reason (fail instead under CI=true)."""
    reason = None
    try:
        import selenium  # noqa: F401
    except ImportError:
        reason = "selenium is not installed in this environment"
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if reason is None and not (chromium and driver):
        reason = ("no headless browser: install Debian's chromium and chromium-driver "
                  "(apt-get install chromium chromium-driver)")
    if reason is None:
        return chromium, driver
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"browser tests must run under CI=true: {reason}")
    print(f"\nSKIPPED browser tests: {reason}", file=sys.stderr)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    chromium, driver_path = _browser_paths()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    driver = webdriver.Chrome(options=options, service=Service(executable_path=driver_path))
    driver.set_page_load_timeout(60)
    driver.set_script_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def server(browser, request, tmp_path_factory):
    # The models are asked for only once a browser is known to exist, so a machine without
    # one skips at once instead of exporting a model first.
    model = request.getfixturevalue("tiny_onnx")
    detector = request.getfixturevalue("detector_model_path")
    log = tmp_path_factory.mktemp("demo-server") / "server.log"
    server = Server.python(model, log, api_key=API_KEY, detector_path=detector,
                           ort_threads=1, max_batch_size=4)
    try:
        server.wait_ready()
        yield server
    finally:
        server.close()


def _state(driver) -> str:
    return driver.execute_script("return document.body.dataset.state")


def _act_and_wait(driver, action, timeout: float = 90.0) -> str:
    """Run `action`, then wait until the page has finished (done or error)."""
    from selenium.webdriver.support.ui import WebDriverWait

    driver.execute_script("document.body.dataset.state = 'test-pending'")
    action()
    WebDriverWait(driver, timeout, poll_frequency=0.1).until(
        lambda d: _state(d) in ("done", "error"))
    return _state(driver)


def _message(driver) -> str:
    return driver.find_element("id", "message").text


def _open(driver, server) -> None:
    driver.get(server.url + "/")
    assert _state(driver) == "idle"


def _upload(driver, path: Path) -> str:
    return _act_and_wait(driver, lambda: driver.find_element("id", "image").send_keys(str(path)))


def _overlay_geometry(driver) -> dict:
    return driver.execute_script("""
        const img = document.getElementById('photo'), c = document.getElementById('overlay');
        const a = img.getBoundingClientRect(), b = c.getBoundingClientRect();
        return {img: [a.left, a.top, a.width, a.height], canvas: [b.left, b.top, b.width, b.height],
                natural: [img.naturalWidth, img.naturalHeight], pixels: [c.width, c.height],
                dpr: window.devicePixelRatio};
    """)


def _canvas_rgba(driver, points: list[list[float]]) -> list[list[int]]:
    """RGBA of the overlay's pixels at canvas-pixel positions `points`."""
    return driver.execute_script("""
        const c = document.getElementById('overlay'), ctx = c.getContext('2d');
        return arguments[0].map(([x, y]) => Array.from(ctx.getImageData(x, y, 1, 1).data));
    """, points)


def _check_landmarks_drawn(driver, result: dict) -> int:
    """Every returned landmark inside the photo has an opaque landmark-coloured canvas pixel at
    its place, scaled here from the photo's *displayed* size (not the page's own arithmetic)."""
    geometry = _overlay_geometry(driver)
    assert geometry["natural"] == list(PHOTO_SIZE)
    assert [result["image"]["width"], result["image"]["height"]] == list(PHOTO_SIZE)
    # the canvas lies exactly over the displayed photo, at the screen's pixel density
    assert geometry["canvas"] == pytest.approx(geometry["img"], abs=0.5)
    scale = geometry["img"][2] * geometry["dpr"] / PHOTO_SIZE[0]
    assert geometry["pixels"][0] == pytest.approx(geometry["img"][2] * geometry["dpr"], abs=1)
    assert scale < 1.0  # the photo is shown smaller than its pixels: scaling is exercised
    positions = []
    for face in result["faces"]:
        for x, y in face["landmarks"]:
            cx, cy = int(x * scale), int(y * scale)
            if 0 <= cx < geometry["pixels"][0] and 0 <= cy < geometry["pixels"][1]:
                positions.append([cx, cy])
    assert positions
    everywhere = np.asarray([p for face in result["faces"] for p in face["landmarks"]]) * scale
    for position, rgba in zip(positions, _canvas_rgba(driver, positions)):
        assert rgba[3] == 255, (position, rgba)  # inside an opaque disc
        # Neighbouring discs overlap and blend at their anti-aliased edges; where no other
        # point is within two of the page's largest discs, the colour is a palette colour
        # (canvas readback may still round a channel by one).
        distances = np.hypot(*(everywhere - np.asarray(position) - 0.5).T)
        if np.sort(distances)[1] > 2 * ISOLATION_PX:
            assert any(max(abs(a - b) for a, b in zip(rgba, color)) <= 3
                       for color in LANDMARK_COLORS), (position, rgba)
    # and the overlay is not simply painted everywhere: a far corner stays transparent
    bottom_right = [geometry["pixels"][0] - 6, geometry["pixels"][1] - 6]
    far = [bottom_right] if all(abs(bottom_right[0] - p[0]) > 20 or abs(bottom_right[1] - p[1]) > 20
                                 for p in positions) else []
    assert all(rgba[3] == 0 for rgba in _canvas_rgba(driver, far))
    return len(positions)


def _resource_urls(driver) -> list[str]:
    return driver.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name)")


def test_page_detects_draws_and_explains_the_result(browser, server, tmp_path):
    _open(browser, server)

    # The server wants a key: the page says so instead of failing silently.
    assert _upload(browser, PHOTO) == "error"
    assert "401" in _message(browser) and "API key" in _message(browser)
    assert "needed" in browser.find_element("id", "auth").get_attribute("class")

    browser.find_element("id", "api_key").send_keys(API_KEY)
    assert _act_and_wait(browser, lambda: browser.find_element("id", "run").click()) == "done", \
        _message(browser)
    result = browser.execute_script("return window.lastResult")
    assert result["points"] == "wflw98" and result["faces"], result.get("warnings")
    for face in result["faces"]:
        assert face["detection"] is not None and len(face["detection"]["keypoints"]) == 5
        assert len(face["landmarks"]) == 98 and len(face["bbox"]) == 4
    # the one annotated face of this photo is inside the best detected box
    x, y, w, h = result["faces"][0]["bbox"]
    assert x < 481 < x + w and y < 160 < y + h
    drawn = _check_landmarks_drawn(browser, result)
    assert drawn >= 98 * len(result["faces"]) // 2

    # What the page shows beside the picture.
    details = browser.find_element("id", "details").text
    assert result["model"]["provider"] in details and result["model"]["name"] in details
    timings = browser.find_element("id", "timings").text
    for stage in ("decode", "detect", "inference", "total"):
        assert stage in timings
    assert "random weights" in details  # the tiny test model is untrained; the page says so

    # Hovering a point names it and gives its score. The pointer goes to viewport
    # coordinates computed from the photo's displayed rectangle.
    from selenium.webdriver.common.actions.action_builder import ActionBuilder

    px, py = result["faces"][0]["landmarks"][54]
    client = browser.execute_script("""
        const r = document.getElementById('photo').getBoundingClientRect();
        const [x, y] = [r.left + arguments[0] * r.width, r.top + arguments[1] * r.height];
        window.scrollBy(0, y - window.innerHeight / 2);
        const s = document.getElementById('photo').getBoundingClientRect();
        return [s.left + arguments[0] * s.width, s.top + arguments[1] * s.height];
    """, px / PHOTO_SIZE[0], py / PHOTO_SIZE[1])
    hover = ActionBuilder(browser)
    hover.pointer_action.move_to_location(round(client[0]), round(client[1]))
    hover.perform()
    tooltip = browser.find_element("id", "tooltip")
    assert tooltip.is_displayed(), "no tooltip over a drawn point"
    # "face 1, point 54 nose_tip: score 0.123": the index, the model's name for it, its score
    shown = re.fullmatch(r"face (\d+), point (\d+) (\S+): score (-?[\d.]+)", tooltip.text)
    assert shown, tooltip.text
    face_no, index = int(shown[1]) - 1, int(shown[2])
    model = httpx.get(server.url + "/model", headers={"X-API-Key": API_KEY}, timeout=10).json()
    names = {s["name"]: s["names"] for s in model["point_sets"]}["wflw98"]
    assert shown[3] == names[index]
    assert float(shown[4]) == pytest.approx(result["faces"][face_no]["scores"][index], abs=1e-3)
    browser.execute_script("window.scrollTo(0, 0)")

    screenshot = tmp_path / "demo_page.png"
    assert browser.save_screenshot(str(screenshot)) and screenshot.stat().st_size > 10_000
    print(f"\ndemo page screenshot: {screenshot}")

    # Nothing came from another host: the page, its script, style and API calls are all here.
    urls = _resource_urls(browser)
    assert any(u.endswith("/static/app.js") for u in urls) and any(u.endswith("/static/style.css") for u in urls)
    for url in urls + [browser.current_url]:
        local = url.removeprefix("blob:")
        assert local.startswith(server.url + "/") or url.startswith("data:"), url


def test_point_set_and_detection_toggles(browser, server):
    _open(browser, server)
    browser.find_element("id", "api_key").send_keys(API_KEY)
    browser.find_element("id", "detect").click()  # off: the whole image is one face
    from selenium.webdriver.support.ui import Select

    Select(browser.find_element("id", "points")).select_by_value("ibug68")
    assert _upload(browser, PHOTO) == "done", _message(browser)
    result = browser.execute_script("return window.lastResult")
    assert result["points"] == "ibug68" and len(result["faces"]) == 1
    face = result["faces"][0]
    assert face["detection"] is None and len(face["landmarks"]) == 68
    assert face["bbox"] == pytest.approx([0, 0, *PHOTO_SIZE], abs=1)
    assert any("whole image" in w for w in result["warnings"])
    _check_landmarks_drawn(browser, result)

    state = _act_and_wait(
        browser, lambda: Select(browser.find_element("id", "points")).select_by_value("five"))
    assert state == "done", _message(browser)
    result = browser.execute_script("return window.lastResult")
    assert result["points"] == "five" and len(result["faces"][0]["landmarks"]) == 5
    _check_landmarks_drawn(browser, result)


def test_a_file_that_is_not_an_image_shows_the_servers_error(browser, server, tmp_path):
    _open(browser, server)
    browser.find_element("id", "api_key").send_keys(API_KEY)
    text = tmp_path / "notes.jpg"
    text.write_text("this is not a picture\n")
    assert _upload(browser, text) == "error"
    body = browser.execute_script("return window.lastResult")
    assert body["code"] and body["request_id"]
    message = _message(browser)
    assert "415" in message and body["code"] in message and body["request_id"] in message
    assert browser.find_element("id", "download").get_attribute("disabled") is not None


def test_render_endpoint_gives_an_image_the_browser_decodes(browser, server):
    """POST /landmarks/render from the page's origin (fetch + FormData, as a web client would)
    and decode the answer in the browser: an image of the photo's size, faces detected."""
    _open(browser, server)
    browser.find_element("id", "image").send_keys(str(PHOTO))  # the page's own file input
    result = browser.execute_async_script("""
        const done = arguments[arguments.length - 1];
        const file = document.getElementById('image').files[0];
        const form = new FormData();
        form.append('image', file);
        form.append('format', 'png');
        fetch('/landmarks/render', {method: 'POST', body: form, headers: {'X-API-Key': arguments[0]}})
          .then(async (r) => {
            const blob = await r.blob();
            const img = new Image();
            img.onload = () => done({status: r.status, type: r.headers.get('content-type'),
                                     faces: r.headers.get('x-faces'),
                                     size: [img.naturalWidth, img.naturalHeight]});
            img.onerror = () => done({status: r.status, error: 'not decodable'});
            img.src = URL.createObjectURL(blob);
          })
          .catch((e) => done({error: String(e)}));
    """, API_KEY)
    assert result.get("error") is None, result
    assert result["status"] == 200 and result["type"] == "image/png"
    assert result["size"] == list(PHOTO_SIZE) and int(result["faces"]) >= 1
