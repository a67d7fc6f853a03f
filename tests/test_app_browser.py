"""The app in a real browser: headless Chromium (Debian package) driven by Selenium.

Upload a photo and a driving video, click Generate, wait until both result videos play
(H.264 decoded by the browser) and the 3D viewer draws on a canvas; save a screenshot.
Skipped when Chromium, chromedriver or selenium are not installed (see .ci/run).
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.browser]

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
GENERATE_TIMEOUT_S = 240

VIDEO_STATE = """
const v = document.querySelector(arguments[0] + ' video');
return v ? {ready: v.readyState, width: v.videoWidth, duration: v.duration, src: v.currentSrc,
            error: v.error ? v.error.code : null} : null;
"""


def start_chromium(profile_dir, *extra_flags: str):
    """Headless Chromium under Selenium with its own profile; skips the test when Chromium,
    chromedriver or selenium are missing. The caller quits it."""
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        pytest.skip(
            f"headless Chromium not installed ({CHROMIUM}, {CHROMEDRIVER}): apt-get install chromium chromium-driver"
        )
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed")
    from selenium.webdriver.chrome.service import Service

    os.environ.setdefault("SE_OFFLINE", "true")  # selenium-manager must never download anything
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--autoplay-policy=no-user-gesture-required",
        "--window-size=1400,1500",
        f"--user-data-dir={profile_dir}",
        *extra_flags,
    ):
        options.add_argument(flag)
    downloads = Path(profile_dir) / "downloads"
    options.add_experimental_option(
        "prefs", {"download.default_directory": str(downloads), "download.prompt_for_download": False}
    )
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.downloads = downloads  # where clicked downloads land
    driver.set_page_load_timeout(60)
    return driver


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    driver = start_chromium(tmp_path_factory.mktemp("chromium-profile"))
    yield driver
    driver.quit()


EXAMPLES_TABLE = """
const t = document.querySelector('.table-wrap');
return t ? [t.scrollWidth, t.clientWidth] : null;
"""
THUMBNAIL = """
const img = document.querySelector('#photo-gallery img');
const box = img.getBoundingClientRect(), frame = img.closest('.grid-wrap').getBoundingClientRect();
return {fit: getComputedStyle(img).objectFit,
        inside: box.top >= frame.top - 1 && box.bottom <= frame.bottom + 1};
"""


def viewer_pixels(driver) -> dict:
    """The splat canvas as the page shows it (WebGL cannot be read back from script): its
    corner brightness and whether a face-sized patch at the centre differs from it."""
    import io

    import numpy as np
    from PIL import Image
    from selenium.webdriver.common.by import By

    png = driver.find_element(By.CSS_SELECTOR, "#viewer canvas").screenshot_as_png
    rgb = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.float32)
    h, w = rgb.shape[:2]
    corner = rgb[: h // 10, : w // 10].reshape(-1, 3).mean(0)
    centre = rgb[h // 3 : 2 * h // 3, 2 * w // 5 : 3 * w // 5]
    return {"background": float(corner.min()), "centre_change": float(np.abs(centre - corner).mean())}


def shown(driver, selector: str) -> bool:
    """Whether the element exists and takes up space on the page."""
    return bool(driver.execute_script(
        "const e = document.querySelector(arguments[0]); return !!e && e.getBoundingClientRect().height > 0;",
        selector,
    ))  # fmt: skip


def wait_for(condition, timeout: float, what: str, poll: float = 0.5):
    """Poll ``condition()`` until it returns something truthy; fail with ``what`` on timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(poll)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")


def set_number(driver, elem_id: str, value) -> None:
    """Type a value into a slider's number box (Advanced accordion) and commit it."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    def committed() -> bool:
        slider = driver.find_element(By.CSS_SELECTOR, f"#{elem_id} input[type=range]")
        return float(slider.get_attribute("value")) == float(value)

    for _ in range(5):  # a loaded page may still be hydrating and drop the first keystrokes
        box = driver.find_element(By.CSS_SELECTOR, f"#{elem_id} input[type=number]")
        box.send_keys(Keys.CONTROL, "a")
        box.send_keys(str(value), Keys.TAB)
        time.sleep(0.5)
        if committed():
            return
    pytest.fail(f"#{elem_id} did not take the value {value}")


def test_generate_in_browser(browser, app_url, shared_media, tmp_path):
    from selenium.webdriver.common.by import By

    driver = browser
    start = time.monotonic()
    driver.get(app_url)
    wait_for(
        lambda: driver.find_elements(By.CSS_SELECTOR, "#photos input[type=file]"), 60, "the photo upload"
    )
    assert "FlexAvatar" in driver.title
    assert "talking face" in driver.find_element(By.TAG_NAME, "body").text
    # before any upload or result: no empty photo preview, no download buttons, no notes
    assert not shown(driver, "#photo-gallery") and not shown(driver, "#ply-file") and not shown(driver, "#avatar-file")
    assert not driver.find_element(By.CSS_SELECTOR, "#notes").text.strip()
    # the examples table fits the page (no horizontal scrolling)
    table = driver.execute_script(EXAMPLES_TABLE)
    assert table and table[0] <= table[1] + 1, table

    driver.find_element(By.CSS_SELECTOR, "#photos input[type=file]").send_keys(
        str(REPO / "examples/astronaut.png")
    )
    driver.find_element(By.CSS_SELECTOR, "#driving input[type=file]").send_keys(
        str(shared_media / "single_face.mp4")
    )
    wait_for(lambda: driver.find_elements(By.CSS_SELECTOR, "#photo-gallery img"), 60, "the photo thumbnail")
    thumbnail = driver.execute_script(THUMBNAIL)
    assert thumbnail["fit"] == "contain" and thumbnail["inside"], thumbnail  # the whole photo, not a crop
    wait_for(lambda: driver.execute_script(VIDEO_STATE, "#driving"), 60, "the uploaded driving video")

    # keep it quick on a shared CPU: a short turntable and 1 s of the driving video
    driver.find_element(
        By.XPATH, "//button[.//*[normalize-space()='Advanced'] or normalize-space()='Advanced']"
    ).click()
    wait_for(
        lambda: driver.find_elements(By.CSS_SELECTOR, "#turntable-frames input[type=number]"), 10, "Advanced"
    )
    set_number(driver, "turntable-frames", 16)
    set_number(driver, "max-seconds", 1)
    time.sleep(0.5)
    driver.find_element(By.CSS_SELECTOR, "#generate").click()

    def playing(elem_id):
        state = driver.execute_script(VIDEO_STATE, f"#{elem_id}")
        if state and state["error"]:
            pytest.fail(f"#{elem_id} cannot be decoded by Chromium: {state}")
        return state if state and state["ready"] >= 2 and state["width"] > 0 else None

    turntable = wait_for(lambda: playing("turntable-video"), GENERATE_TIMEOUT_S, "the turntable video")
    reenactment = wait_for(lambda: playing("reenact-video"), 60, "the reenactment video")
    assert turntable["duration"] == pytest.approx(16 / 24, abs=0.1)
    assert reenactment["duration"] == pytest.approx(1.0, abs=0.15)
    canvas = wait_for(
        lambda: driver.execute_script(
            "const c = document.querySelector('#viewer canvas');"
            "return c && c.width > 0 && c.height > 0 ? [c.width, c.height] : null;"
        ),
        60,
        "the 3D viewer canvas",
    )
    assert min(canvas) > 50
    wait_for(lambda: shown(driver, "#ply-file") and shown(driver, "#avatar-file"), 30, "the download buttons")
    # the result files read as downloads (buttons), and clicking one downloads the file
    for elem_id, name, magic in (("ply-file", "avatar.ply", b"ply"), ("avatar-file", "avatar.avatar", b"")):
        button = driver.find_element(By.CSS_SELECTOR, f"#{elem_id}")
        assert button.text.startswith("Download") and "Drop" not in button.text
        button.click()
        saved = wait_for(lambda name=name: [p for p in driver.downloads.glob(name) if p.stat().st_size > 1000],
                         30, f"{name} in the browser's downloads")  # fmt: skip
        assert saved[0].read_bytes().startswith(magic)
    # warnings where the user looks: the notes box above the results says the clip was cut at
    # the seconds limit and where to change it
    notes = driver.find_element(By.CSS_SELECTOR, "#notes").text
    assert "tracked the first 30 of 72 frames" in notes and "Use at most this many seconds" in notes, notes
    # the 3D viewer: a light background, the avatar drawn in the middle of the canvas
    time.sleep(2)  # let the splat viewer draw a few frames
    viewer = viewer_pixels(driver)
    assert viewer["background"] > 200 and viewer["centre_change"] > 40, viewer
    driver.execute_script("window.scrollTo(0, 0)")
    time.sleep(2)  # let the splat viewer draw a few frames before the screenshot
    shot = tmp_path / "flexavatar_app.png"
    driver.save_screenshot(str(shot))
    assert shot.stat().st_size > 10_000
    if os.environ.get("FLEXAVATAR_SCREENSHOT_DIR"):  # keep a copy to look at (CI artefact)
        shutil.copy(shot, Path(os.environ["FLEXAVATAR_SCREENSHOT_DIR"]) / shot.name)
    assert time.monotonic() - start < 300
