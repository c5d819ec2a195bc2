"""End to end in headless Chromium: the real server (uvicorn on a loopback port), the page, an upload, the overlay.

Needs the Debian packages ``chromium`` and ``chromium-driver`` and the ``selenium`` Python package; skips when any is
absent. Selenium is given /usr/bin/chromedriver explicitly, so Selenium Manager never downloads anything, and the
browser only ever talks to 127.0.0.1.
"""
from __future__ import annotations

import io
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fcnseg.data import get_dataset
from fcnseg.data.synthetic import CLASSES


CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--window-size=1400,1000", "--proxy-server=direct://", "--proxy-bypass-list=*"]


@pytest.fixture
def server(tmp_path, make_checkpoint, free_port):
    """uvicorn serving a checkpoint on 127.0.0.1 and a free port, in a background thread."""
    uvicorn = pytest.importorskip("uvicorn")
    from fcnseg.serve import create_app
    app = create_app(make_checkpoint(tmp_path, head="random"), amp="none")
    port = free_port
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not srv.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}/"
    srv.should_exit = True
    thread.join(timeout=10)


@pytest.fixture
def browser(tmp_path):
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install selenium)")
    for path, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not Path(path).exists():
            pytest.skip(f"{path} is absent (apt-get install -y {package})")
    from selenium.webdriver.chrome.service import Service
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS + [f"--user-data-dir={tmp_path / 'chrome-profile'}"]:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def test_upload_shows_overlay_legend_and_download(browser, server, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
    image, _ = get_dataset("synthetic", None, "val", size=(96, 128))[0]
    path = tmp_path / "scene.png"
    Image.fromarray(image.as_subclass(torch.Tensor).permute(1, 2, 0).numpy()).save(path)

    browser.get(server)
    wait = WebDriverWait(browser, 60)
    wait.until(lambda d: "classes" in d.find_element(By.ID, "model").text)  # /healthz answered
    assert "sky" in browser.find_element(By.ID, "model").text
    browser.find_element(By.ID, "file").send_keys(str(path))
    wait.until(lambda d: d.find_element(By.ID, "overlay").get_attribute("data-ready") == "1"
               or d.find_element(By.ID, "error").text)
    assert browser.find_element(By.ID, "error").text == ""

    canvas = browser.find_element(By.ID, "overlay")
    assert (canvas.get_attribute("width"), canvas.get_attribute("height")) == ("128", "96")
    items = browser.find_elements(By.CSS_SELECTOR, "#legend li")
    assert items, "the legend lists no class"
    names = [li.find_element(By.CLASS_NAME, "name").text for li in items]
    assert set(names) <= set(CLASSES) and names
    shares = [float(li.find_element(By.CLASS_NAME, "pct").text.rstrip(" %")) for li in items]
    assert sum(shares) == pytest.approx(100, abs=0.1 * len(shares))
    link = browser.find_element(By.ID, "download")
    assert link.get_attribute("href").startswith("data:image/png;base64,")
    assert link.get_attribute("download") == "scene_mask.png"

    shot = np.asarray(Image.open(io.BytesIO(canvas.screenshot_as_png)).convert("RGB")).astype(np.float64)
    assert shot.shape[0] >= 90 and shot.shape[1] >= 120
    assert shot.std(axis=(0, 1)).max() > 10, "the overlay is a uniform block"
    assert len(np.unique(shot.reshape(-1, 3), axis=0)) > 50

    # the opacity slider redraws: at 0 the canvas shows the plain photo, so the screenshot changes
    browser.execute_script("const s = document.getElementById('opacity'); s.value = 0;"
                           "s.dispatchEvent(new Event('input'));")
    plain = np.asarray(Image.open(io.BytesIO(canvas.screenshot_as_png)).convert("RGB")).astype(np.float64)
    assert np.abs(plain - shot).mean() > 1
