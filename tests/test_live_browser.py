"""The Live tab in a real browser: headless Chromium with a fake camera that plays
examples/driving.mp4 (released with the project) converted to Y4M, as Chromium's
``--use-file-for-fake-video-capture`` needs. Start the webcam, press record, and watch avatar
frames come back; save a screenshot. Skipped without Chromium / chromedriver / selenium.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_app_browser import REPO, start_chromium, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.browser]


def frames_shown(driver) -> int:
    from selenium.webdriver.common.by import By

    match = re.search(r"(\d+) frames shown", driver.find_element(By.CSS_SELECTOR, "#live-stats").text)
    return int(match.group(1)) if match else 0


def click_button(driver, root: str, label: str) -> None:
    """Click the visible button under ``root`` whose text or aria-label contains ``label``."""
    from selenium.webdriver.common.by import By

    def find():
        for button in driver.find_elements(By.CSS_SELECTOR, f"{root} button"):
            text = f"{button.text} {button.get_attribute('aria-label') or ''}"
            if button.is_displayed() and label.lower() in text.lower():
                return button
        return None

    wait_for(find, 30, f"the '{label}' button").click()


def test_live_tab_streams_a_fake_camera(app_url, tmp_path):
    from imageio_ffmpeg import (
        get_ffmpeg_exe as ffmpeg_exe,  # as tests/media_checks.py (video.py no longer exports it)
    )
    from selenium.webdriver.common.by import By

    y4m = tmp_path / "driving.y4m"
    subprocess.run([ffmpeg_exe(), "-loglevel", "error", "-i", str(REPO / "examples/driving.mp4"), "-pix_fmt", "yuv420p",
                    str(y4m)], check=True, timeout=60)  # fmt: skip
    driver = start_chromium(tmp_path / "profile", "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
                            f"--use-file-for-fake-video-capture={y4m}")  # fmt: skip
    try:
        driver.get(app_url)
        live_tab = wait_for(lambda: [t for t in driver.find_elements(By.CSS_SELECTOR, "button[role=tab]")
                                     if t.text.strip() == "Live"], 60, "the Live tab")[0]  # fmt: skip
        live_tab.click()
        click_button(driver, "#live-camera", "Access Webcam")
        wait_for(lambda: driver.execute_script(
            "const v = document.querySelector('#live-camera video'); return v && v.videoWidth > 0;"), 30, "the camera")  # fmt: skip
        click_button(driver, "#live-camera", "capture photo")  # the record button: starts the stream
        start = time.monotonic()
        wait_for(lambda: frames_shown(driver) >= 10, 120, "10 avatar frames")
        sources = set()
        for _ in range(20):  # the avatar image keeps changing while the camera streams
            sources.add(driver.execute_script("const i = document.querySelector('#live-avatar img'); return i && i.src;"))
            time.sleep(0.1)
        assert len(sources - {None}) >= 3, sources
        before = frames_shown(driver)
        click_button(driver, "#live-tab", "Reset neutral")
        wait_for(lambda: frames_shown(driver) >= before + 5, 60, "frames after Reset neutral")
        rate = frames_shown(driver) / (time.monotonic() - start)
        print(f"browser: {frames_shown(driver)} avatar frames in {time.monotonic() - start:.1f} s ({rate:.1f} frames/s, "
              f"load {os.getloadavg()[0]:.1f}); {driver.find_element(By.CSS_SELECTOR, '#live-stats').text}")  # fmt: skip
        driver.execute_script("document.querySelector('#live-tab').scrollIntoView()")
        time.sleep(0.5)
        shot = tmp_path / "flexavatar_live.png"
        driver.save_screenshot(str(shot))
        avatar = tmp_path / "live_avatar.png"
        driver.find_element(By.CSS_SELECTOR, "#live-avatar img").screenshot(str(avatar))
        pixels = np.asarray(Image.open(avatar).convert("RGB")).astype(float)
        assert pixels.std() > 10, "the avatar frame is blank"
        if os.environ.get("FLEXAVATAR_SCREENSHOT_DIR"):  # keep a copy to look at (CI artefact)
            shutil.copy(shot, Path(os.environ["FLEXAVATAR_SCREENSHOT_DIR"]) / shot.name)
    finally:
        driver.quit()
