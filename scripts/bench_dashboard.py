"""How long `hpsearch dashboard` takes to list a study of many trials: API calls and page loads.

    python scripts/bench_dashboard.py                 # 120 trials of 30 epochs, 2 PNGs each
    python scripts/bench_dashboard.py --trials 500 --epochs 50

The study is written straight into a fresh SQLite storage with `optuna.create_trial`, shaped like
a real hpsearch study: per trial 4 parameters, 30 intermediate values, the same user attributes
(loss curves included), two PNG artifacts of real size, and a study note; study attributes like a
real study's. Then `hpsearch dashboard` serves it and we time, each several times:
- GET /api/studies and GET /api/studies/<id> (what the page fetches and then polls), cold and warm;
- in headless Chromium (if /usr/bin/chromium and Playwright are present), from navigation until
  the trial list says "<N> Trials", and until the study page shows its best trial.
Timings on a shared, loaded machine are noisy: read the minimum and the median together.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

import numpy as np
import optuna

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hpsearch.artifact_store import open_store  # noqa: E402
from hpsearch.storage import open_storage  # noqa: E402
from hpsearch.study_note import render_note  # noqa: E402
from tests.dashboard_util import running_dashboard  # noqa: E402
from tests.test_dashboard_browser import CHROMIUM, CHROMIUM_FLAGS  # noqa: E402

D = optuna.distributions
CACHE_SECONDS = 11  # longer than optuna-dashboard's trial cache (2, 5 or 10 s by trial count)


def png_bytes(epochs: int) -> bytes:
    """A learning-curve PNG of the size the runs write (drawn once, stored per trial)."""
    from hpsearch import plots

    fig = plots.new_figure(7, 3.6, layout=None)
    ax = fig.add_subplot()
    x = np.arange(1, epochs + 1)
    ax.plot(x, 0.01 + 0.02 / x, "o-", ms=3)
    ax.plot(x, 0.012 + 0.01 / x + 1e-4 * x, "o-", ms=3)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "x.png"
        fig.savefig(path, dpi=80)
        return path.read_bytes()


def build_study(url: str, folder: Path, n_trials: int, epochs: int) -> optuna.Study:
    storage = open_storage(url)
    store = open_store(folder)
    study = optuna.create_study(study_name="bench_dashboard", storage=storage, direction="minimize")
    study.set_user_attr("config", {"name": "bench_dashboard", "n_trials": n_trials, "note": "x" * 1500})
    study.set_user_attr("versions", {"optuna": optuna.__version__})
    study.set_user_attr("baselines_valid_mse", {"zero": 0.0083, "train_mean": 0.0081})
    rng = np.random.default_rng(0)
    image = png_bytes(epochs)
    dists = {
        "lr": D.FloatDistribution(1e-6, 1e-2, log=True),
        "c1": D.IntDistribution(4, 32, log=True),
        "c2": D.IntDistribution(4, 64, log=True),
        "dropout": D.FloatDistribution(0.0, 0.5, step=0.1),
    }
    for k in range(n_trials):
        valid = list(0.008 + 0.004 * np.exp(-np.arange(epochs) / 5) + rng.normal(0, 2e-4, epochs))
        train = list(0.008 + 0.006 * np.exp(-np.arange(epochs) / 4))
        system = {}
        for name in ("learning_curve", "valid_predictions"):
            art = str(uuid.uuid4())
            (folder / art).write_bytes(image)
            meta = {"artifact_id": art, "filename": f"trial_{k}_{name}.png", "mimetype": "image/png"}
            system[f"artifacts:{art}"] = json.dumps({**meta, "encoding": None})
        best = int(np.argmin(valid))
        study.add_trial(
            optuna.trial.create_trial(
                params={
                    "lr": float(10 ** rng.uniform(-6, -2)),
                    "c1": int(rng.integers(4, 33)),
                    "c2": int(rng.integers(4, 65)),
                    "dropout": float(rng.integers(0, 6) / 10),
                },
                distributions=dists,
                value=float(valid[best]),
                intermediate_values={e + 1: float(v) for e, v in enumerate(valid)},
                user_attrs={
                    "seed": k,
                    "best_epoch": best + 1,
                    "epochs": epochs,
                    "stop_reason": "early_stop",
                    "train_loss": [float(f"{v:.6g}") for v in train],
                    "valid_loss": [float(f"{v:.6g}") for v in valid],
                    "train_seconds": 12.3,
                    "valid_step1_mse": float(valid[best]),
                    "valid_ic": 0.01,
                },
                system_attrs=system,
            )
        )
    from optuna_dashboard import save_note

    save_note(study, render_note(study.study_name, study.get_trials(), n_trials, {"zero": 0.0083}))
    del store
    return study


def timed_get(url: str) -> tuple[float, int]:
    start = time.perf_counter()
    with urllib.request.urlopen(url, timeout=120) as resp:
        size = len(resp.read())
    return time.perf_counter() - start, size


def summary(times: list[float]) -> str:
    return f"min {min(times):.3f}s  median {statistics.median(times):.3f}s  (n={len(times)})"


def browser_times(dash_url: str, study_id: int, n_trials: int, repeats: int, profile: Path) -> None:
    if shutil.which(CHROMIUM) is None:
        print(f"browser: skipped, no Chromium at {CHROMIUM}")
        return
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        print("browser: skipped, Playwright's Python package is absent")
        return
    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(profile), executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS
        )
        page = context.new_page()
        for label, path, text in (
            ("trial list page", f"/studies/{study_id}/trials", f"{n_trials} Trials"),
            ("study page (history, plots)", f"/studies/{study_id}", "Best Trial"),
        ):
            times = []
            for _ in range(repeats):
                page.goto("about:blank")
                start = time.perf_counter()
                page.goto(dash_url + path)
                page.get_by_text(text).first.wait_for(timeout=120_000)
                times.append(time.perf_counter() - start)
            print(f"browser, {label} until '{text}' shows: {summary(times)}")
        context.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=120)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="bench-dashboard-") as tmp:
        root = Path(tmp)
        url = f"sqlite:///{root}/runs/hpsearch.db"
        start = time.perf_counter()
        build_study(url, root / "runs" / "artifacts", args.trials, args.epochs)
        took = time.perf_counter() - start
        print(f"study of {args.trials} trials x {args.epochs} epochs written in {took:.1f}s")
        with running_dashboard(url, root) as dash:
            study_id = dash.get_json("/api/studies")["study_summaries"][0]["study_id"]
            for path in ("/api/studies", f"/api/studies/{study_id}"):
                first, size = timed_get(dash.base + path)
                warm = [timed_get(dash.base + path)[0] for _ in range(args.repeats)]
                print(f"GET {path}: first {first:.3f}s, then {summary(warm)}; {size / 1e3:.0f} kB")
            # The dashboard caches a study's trials for 2-10 s (more trials, longer); past that
            # every poll reads them all from the storage again.
            uncached = []
            for _ in range(3):
                time.sleep(CACHE_SECONDS)
                uncached.append(timed_get(f"{dash.base}/api/studies/{study_id}")[0])
            print(f"GET /api/studies/{study_id} after its cache expired: {summary(uncached)}")
            browser_times(dash.url, study_id, args.trials, args.repeats, root / "profile")


if __name__ == "__main__":
    main()
