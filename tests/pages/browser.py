"""The dashboard served by a real `streamlit run`, and Debian's chromium to open it: what the browser tests and
docs/take_screenshots.py share."""
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def chromium_path() -> str:
    path = os.environ.get("BROWSER_PATH") or shutil.which("chromium") or shutil.which("chromium-browser")
    assert path, "Debian's chromium is needed for the browser test: apt-get install chromium"
    return path


def requests_leaving_localhost(page) -> list[str]:
    """Every request the page makes to anywhere but this machine (the dashboard must work offline); the list
    fills as the page runs."""
    outside = []

    def record(request):
        if not request.url.startswith(("http://127.0.0.1", "http://localhost", "ws://127.0.0.1", "data:", "blob:")):
            outside.append(request.url)
    page.on("request", record)
    return outside


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def serve(cache_dir: Path, *options: str):
    """`streamlit run app.py` on a free local port over this cache (extra command-line `options`, such as
    "--theme.base", "dark"); yields its address once it answers, stops it afterwards."""
    port = free_port()
    # The jobs the pages start inherit OMP_NUM_THREADS: on CI's two cores, shared with this server and chromium,
    # a retrain with two BLAS threads took three times as long as with one.
    env = {**os.environ, "ANALYSIS_CACHE_DIR": str(cache_dir), "OMP_NUM_THREADS": "1"}
    server = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless", "true",
                               "--server.port", str(port), "--server.address", "127.0.0.1",
                               "--browser.gatherUsageStats", "false", *options], cwd=REPO, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 60
        while True:
            try:
                urllib.request.urlopen(f"{url}/_stcore/health", timeout=2)
                break
            except OSError:
                assert time.time() < deadline and server.poll() is None, "streamlit did not start"
                time.sleep(0.5)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=30)


def open_page(playwright, height: int = 1700):
    """Headless chromium and a page 1400 pixels wide: (browser, page)."""
    browser = playwright.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_FLAGS)
    return browser, browser.new_page(viewport={"width": 1400, "height": height})


def launch_comparison(page, seeds: str, steps: int, test_size: int, lr: float | None = None,
                      budgets: str | None = None, baselines: bool = False) -> None:
    """On the Retrain page: fill the form (every run at one learning rate, no tuning; the module baselines, which
    multiply the runs, only with `baselines`) and start the comparison."""
    page.get_by_text("Plans at this budget").wait_for(timeout=90_000)
    page.locator('input[aria-label="Seeds"]').fill(seeds)
    page.locator('input[aria-label="Steps"]').fill(str(steps))
    if lr is not None:
        page.locator('input[aria-label="Learning rate (without tuning)"]').fill(f"{lr:g}")
    page.locator('input[aria-label="Test examples (0 = all)"]').fill(str(test_size))
    if budgets is not None:
        page.get_by_role("textbox", name="Budgets").fill(budgets)   # the label also names its help button
    page.get_by_role("textbox", name="Tune learning rate over").fill("")
    if not baselines:
        page.locator("[data-testid=stMultiSelect]", has_text="Module baselines").get_by_role(
            "button", name="Clear all").click()
    page.get_by_role("button", name="Retrain and compare").click()
