"A real browser: Voila serves the EF-slider notebook, headless Chromium moves the slider, a new video appears."
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "nbs" / "61_ef_slider.ipynb"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--no-first-run", "--disable-quic"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0)); return s.getsockname()[1]


def _wait_port(port, proc, timeout=90):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None: raise RuntimeError(f"voila exited with {proc.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0: return
        time.sleep(0.5)
    raise TimeoutError(f"voila did not open port {port}")


@pytest.fixture
def voila_url(tmp_path):
    port = _free_port()
    env = dict(os.environ, OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE")
    log = open(tmp_path / "voila.log", "w")
    proc = subprocess.Popen([str(Path(sys.executable).parent / "voila"), str(NOTEBOOK), "--no-browser", f"--port={port}",
                             "--Voila.ip=127.0.0.1", "--VoilaConfiguration.file_allowlist=['.*']"],
                            cwd=NOTEBOOK.parent, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        _wait_port(port, proc)
        yield f"http://127.0.0.1:{port}/"
    finally:
        proc.terminate()
        try: proc.wait(10)
        except subprocess.TimeoutExpired: proc.kill()
        log.close()


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed (.ci/run installs it)")
def test_voila_ef_slider_in_chromium(voila_url):
    from playwright.sync_api import sync_playwright
    shots = ROOT / "tests" / "_artifacts"; shots.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1000, "height": 900})
            page.goto(voila_url, timeout=120_000)
            page.wait_for_selector(".widget-slider", timeout=180_000)
            page.wait_for_selector("video", timeout=60_000)
            page.evaluate("document.querySelectorAll('video').forEach(v => v.dataset.seen = '1')")
            info_before = page.locator("text=requested EF").first.inner_text()
            handle = page.locator(".widget-slider .noUi-handle").first
            handle.focus()
            for _ in range(10): page.keyboard.press("ArrowRight")
            # the widget replaces its HTML: a video element that was not there before the slider moved
            page.wait_for_function("() => [...document.querySelectorAll('video')].some(v => !v.dataset.seen)", timeout=120_000)
            page.wait_for_timeout(500)
            info_after = page.locator("text=requested EF").first.inner_text()
            page.screenshot(path=str(shots / "ef_slider_voila.png"), full_page=True)
            n_videos = page.locator("video").count()
        finally:
            browser.close()
    assert n_videos >= 1
    assert info_after != info_before and "65" in info_after, (info_before, info_after)
