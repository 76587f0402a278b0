"""Screenshots of every page of the dashboard, in Streamlit's light and dark themes, for the README and docs.

    python docs/take_screenshots.py [--cache DIR] [--out docs/screenshots] [--populate] [--pages cka,id]

Serves app.py over a results cache with `streamlit run` (once per theme: `--theme.base light|dark`), opens each
page in headless chromium (Debian's package, as the browser tests do), waits until the page has finished
running and its figures are drawn, and saves the whole page as docs/screenshots/<page>-<theme>.png, 1400
pixels wide, compressed again by PIL, and reduced to a palette of 256 colours only when it would still be larger
than 400 KB (a palette merges thin lines' colours and bands colour bars).

--populate first fills the cache with what the pages show, on the embedded MiniLM and Rotten Tomatoes, on the
CPU, with small settings: every signal on 128 validation snippets (a 50-step warm-up for Shapley and AdaLoRA,
16 Shapley coalitions, 60 + 4 x 10 SoRA steps), then a comparison of uniform LoRA and Shapley at r2 and r4
(one seed, 80 steps, 200 test examples). On a busy 2-core machine that took about 40 and 27 minutes; what
the cache already holds is not computed again.
"""
from __future__ import annotations

import argparse
import io
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.pages.browser import open_page, requests_leaving_localhost, serve  # noqa: E402  (as the browser tests)

# (url path, file name, the page's title): the app's home (Setup), each page under views/ and each signal's own page.
PAGES = [("", "setup", "Where should the LoRA rank go?"), ("overview", "overview", "All signals"),
         ("shapley", "shapley", "Shapley sensitivity"), ("sora", "sora", "SoRA gate sparsity"),
         ("cka", "cka", "CKA layer importance"), ("id", "id", "Intrinsic dimension (GeLoRA)"),
         ("budget", "budget", "Budget and plans"), ("retrain", "retrain", "Retrain and compare"),
         ("export", "export", "Export for papers")]
THEMES = ("light", "dark")
WIDTH, MAX_HEIGHT, MAX_BYTES = 1400, 9000, 400_000
RUN = ["--device", "cpu", "--val-size", "128"]
SIGNAL_OPTIONS = ["--set", "shapley.coalition_per=batch", "--set", "shapley.warmup_steps=50",
                  "--set", "adalora.warmup_steps=50", "--set", "shapley.samples=16", "--set", "shapley.min_samples=8",
                  "--set", "sora.steps=60", "--set", "sora.snapshot_every=10", "--set", "sora.round_steps=10"]
COMPARISON = ["--signals", "shapley", "--budgets", "r2,r4", "--seeds", "0", "--tune-lr", "off", "--steps", "80",
              "--lr", "0.003", "--test-size", "200"]


def populate(cache: Path) -> None:
    """Every signal, then the comparison, through the command line (cached work is reused)."""
    env = {**os.environ, "ANALYSIS_CACHE_DIR": str(cache)}
    for command in (["run", *RUN, *SIGNAL_OPTIONS], ["compare", *RUN, *COMPARISON]):
        print("python -m analysis", " ".join(command), flush=True)
        subprocess.run([sys.executable, "-m", "analysis", *command], cwd=REPO, env=env, check=True)


def settled(page) -> None:
    """Wait until the page's script has finished (Streamlit's running indicator gone, no stale elements) and
    every figure is drawn."""
    deadline = time.time() + 180
    quiet_since = None
    while time.time() < deadline:
        busy = sum(page.locator(selector).count() for selector in
                   ("[data-testid=stStatusWidget]", "[data-stale=true]", "[data-testid=stSpinner]"))
        drawn = page.evaluate("[...document.querySelectorAll('.js-plotly-plot')]"
                              ".every(plot => plot.querySelector('.main-svg'))")
        if not busy and drawn:
            quiet_since = quiet_since or time.time()
            if time.time() - quiet_since > 3:
                return
        else:
            quiet_since = None
        time.sleep(0.5)
    raise TimeoutError("the page did not settle within 3 minutes")


def shrink(path: Path) -> None:
    """The PNG compressed again; a palette of 256 colours where it is still larger than MAX_BYTES."""
    from PIL import Image

    image = Image.open(path).convert("RGB")
    if path.stat().st_size > MAX_BYTES:
        image = image.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.NONE)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    if len(buffer.getvalue()) < path.stat().st_size:
        path.write_bytes(buffer.getvalue())


def take(cache: Path, out: Path, names: set[str] | None = None) -> list[Path]:
    from playwright.sync_api import sync_playwright

    out.mkdir(parents=True, exist_ok=True)
    written = []
    for theme in THEMES:
        with serve(cache, "--theme.base", theme) as url, sync_playwright() as playwright:
            browser, page = open_page(playwright, height=1000)
            outside = requests_leaving_localhost(page)
            for path, name, title in [p for p in PAGES if names is None or p[1] in names]:
                page.goto(f"{url}/{path}")
                page.get_by_role("heading", name=title).first.wait_for(timeout=120_000)
                settled(page)
                height = None
                for _ in range(5):   # the whole page in the window: resize until its height holds
                    measured = page.evaluate("document.querySelector('[data-testid=stMain]').scrollHeight")
                    if measured == height:
                        break
                    height = measured
                    page.set_viewport_size({"width": WIDTH, "height": min(max(height, 800), MAX_HEIGHT)})
                    settled(page)
                target = out / f"{name}-{theme}.png"
                page.screenshot(path=str(target), full_page=True)
                shrink(target)
                written.append(target)
                print(f"{target.relative_to(REPO) if target.is_relative_to(REPO) else target}: "
                      f"{target.stat().st_size // 1000} KB", flush=True)
                page.set_viewport_size({"width": WIDTH, "height": 1000})
            browser.close()
        if outside:
            raise SystemExit(f"the dashboard reached outside this machine: {outside[:5]}")
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache", type=Path, default=Path(os.environ.get("ANALYSIS_CACHE_DIR", REPO / "cache")),
                        help="results cache to show (default: $ANALYSIS_CACHE_DIR or ./cache)")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "screenshots")
    parser.add_argument("--populate", action="store_true", help="compute what the pages show first (CPU, small)")
    parser.add_argument("--pages", default=None, help="comma-separated file names of the pages to take (default: all)")
    args = parser.parse_args()
    if args.populate:
        populate(args.cache)
    take(args.cache.resolve(), args.out.resolve(), set(args.pages.split(",")) if args.pages else None)


if __name__ == "__main__":
    main()
