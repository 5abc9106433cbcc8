"""The dashboard as a person sees it: headless Chromium (Debian's package) driven by Playwright.

Skipped, with the reason, where the browser or Playwright's Python package is absent (`.ci/run`
installs both). Playwright is pointed at the system Chromium; it never downloads a browser.
Screenshots go to $HPSEARCH_SCREENSHOTS when set, else to the test's temporary folder.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from pathlib import Path

import pytest
from rich.console import Console

from hpsearch.config import from_dict
from hpsearch.runner import run_study
from tests.conftest import tiny_study
from tests.dashboard_util import running_dashboard

CHROMIUM = os.environ.get("HPSEARCH_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
WAIT_MS = 60_000  # a loaded 2-core machine renders the first page slowly


@pytest.fixture
def browser_page(tmp_path):
    """A page in a fresh headless Chromium profile; skips when the browser or driver is absent."""
    if shutil.which(CHROMIUM) is None:
        pytest.skip(f"no Chromium at {CHROMIUM} (Debian: apt-get install chromium)")
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="Playwright's Python package is absent (pip install playwright)"
    )
    with sync_api.sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"),  # --user-data-dir: fresh for every test
            executable_path=CHROMIUM,
            headless=True,
            args=CHROMIUM_FLAGS,
            viewport={"width": 1400, "height": 1400},
        )
        try:
            yield context.new_page()
        finally:
            context.close()


def screenshot_dir(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("HPSEARCH_SCREENSHOTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def test_dashboard_shows_study_trials_artifacts_and_note_in_chromium(browser_page, data_dir, tmp_path):
    page = browser_page
    url = f"sqlite:///{tmp_path}/runs/hpsearch.db"
    cfg = from_dict(tiny_study(data_dir, name="browser_check", n_trials=2), "b.yaml")
    study = run_study(cfg, url, Console(quiet=True))
    shots = screenshot_dir(tmp_path)
    with running_dashboard(url, tmp_path) as dash:
        page.goto(dash.url)
        page.get_by_text(re.compile(r"\bbrowser_check\b")).first.wait_for(timeout=WAIT_MS)

        study_id = dash.get_json("/api/studies")["study_summaries"][0]["study_id"]
        started = time.perf_counter()
        page.goto(f"{dash.url}/studies/{study_id}/trials")
        page.get_by_text("2 Trials").wait_for(timeout=WAIT_MS)  # the trial count
        listed = time.perf_counter() - started

        # The selected trial's artifacts: both PNGs, served and decoded by the browser.
        for name in ("trial_0_learning_curve.png", "trial_0_valid_predictions.png"):
            image = page.locator(f"img[alt='{name}']")
            image.wait_for(timeout=WAIT_MS)
            image.scroll_into_view_if_needed()
            page.wait_for_function(
                "img => img.complete && img.naturalWidth > 0", arg=image.element_handle(), timeout=WAIT_MS
            )
        page.screenshot(path=str(shots / "dashboard_trial.png"))

        page.goto(f"{dash.url}/studies/{study_id}/note")
        page.get_by_text(f"Best trial {study.best_trial.number}").wait_for(timeout=WAIT_MS)
        page.get_by_text(re.compile(r"2 of 2 trials finished")).wait_for(timeout=WAIT_MS)
        page.screenshot(path=str(shots / "dashboard_note.png"))
    print(f"trial list shown in {listed:.2f}s; screenshots in {shots}")
    assert (shots / "dashboard_trial.png").stat().st_size > 20_000
    assert dash.returncode == 0
