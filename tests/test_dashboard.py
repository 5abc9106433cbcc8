"""`hpsearch dashboard`: serves the storage and its artifacts, and watching never breaks a study."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import optuna
import pytest
from rich.console import Console

from hpsearch.cli import main
from hpsearch.config import from_dict
from hpsearch.runner import run_study
from hpsearch.storage import open_storage
from tests.conftest import tiny_study
from tests.dashboard_util import running_dashboard

POLL_SECONDS = 0.1
POLL_LIMIT_SECONDS = 180  # the poller stops by itself even if the study hangs


def test_watching_a_live_study_never_breaks_it(data_dir, tmp_path, caplog):
    """`hpsearch dashboard` polled in a loop while a study runs: no failed trial, no locked
    database; then it serves the finished study's artifacts and note, and stops on Ctrl-C."""
    url = f"sqlite:///{tmp_path}/runs/hpsearch.db"
    open_storage(url)  # an empty storage for the dashboard to open before the study exists
    cfg = from_dict(tiny_study(data_dir, n_trials=4), "t.yaml")
    done = threading.Event()
    seen: list[tuple[str, int, int, int]] = []  # (path, HTTP status, trials, note version)
    errors: list[str] = []

    with running_dashboard(url, tmp_path) as dash:
        assert dash.url.startswith("http://127.0.0.1:")  # local only unless told otherwise
        assert f"artifacts in {tmp_path}/runs/artifacts" in "".join(dash.lines)

        def poll() -> None:
            deadline = time.monotonic() + POLL_LIMIT_SECONDS
            while not done.is_set() and time.monotonic() < deadline:
                for path in ("/api/studies", "/api/studies/1", "/dashboard"):
                    try:
                        with urllib.request.urlopen(dash.base + path, timeout=30) as resp:
                            body = resp.read()
                            if path == "/api/studies/1":
                                detail = json.loads(body)
                                n, version = len(detail["trials"]), detail["note"]["version"]
                                seen.append((path, resp.status, n, version))
                            else:
                                seen.append((path, resp.status, -1, -1))
                    except urllib.error.HTTPError as exc:  # 404 until the study exists
                        seen.append((path, exc.code, -1, -1))
                    except OSError as exc:
                        errors.append(f"{path}: {exc}")
                time.sleep(POLL_SECONDS)

        poller = threading.Thread(target=poll)
        poller.start()
        try:
            # Two halves, so that the poller sees the study at two sizes however loaded the
            # machine is (trials of the tiny study last well under a second): run 2 trials, wait
            # until the dashboard has served them, then resume to 4 while it goes on polling.
            run_study(cfg, url, Console(quiet=True), n_trials=2)
            deadline = time.monotonic() + 60
            while not any(n == 2 for _, _, n, _ in seen) and time.monotonic() < deadline:
                time.sleep(POLL_SECONDS)
            study = run_study(cfg, url, Console(quiet=True))
        finally:
            done.set()
            poller.join()

        (summary,) = dash.get_json("/api/studies")["study_summaries"]
        assert summary["study_name"] == "tiny"
        detail = dash.get_json(f"/api/studies/{summary['study_id']}")
        assert "4 of 4 trials finished" in detail["note"]["body"]
        trial = detail["trials"][0]
        names = sorted(a["filename"] for a in trial["artifacts"])
        assert names == ["trial_0_learning_curve.png", "trial_0_valid_predictions.png"]
        art = trial["artifacts"][0]
        with urllib.request.urlopen(
            f"{dash.base}/artifacts/{summary['study_id']}/{trial['trial_id']}/{art['artifact_id']}"
        ) as resp:
            assert resp.headers["Content-Type"] == "image/png"
            assert resp.read(8) == b"\x89PNG\r\n\x1a\n"

    states = [t.state for t in study.trials]
    assert states.count(optuna.trial.TrialState.COMPLETE) == 4 and len(states) == 4
    assert not errors
    assert {status for _, status, _, _ in seen} <= {200, 404}, seen
    live = [(n, v) for path, status, n, v in seen if path == "/api/studies/1" and status == 200]
    assert len({n for n, _ in live}) >= 2 and len({v for _, v in live}) >= 2  # watched it progress
    assert "locked" not in dash.stderr and "Traceback" not in dash.stderr
    assert "locked" not in caplog.text
    assert dash.returncode == 0, dash.stderr  # Ctrl-C: a clean stop
    assert "dashboard stopped" in "".join(dash.lines)


def test_missing_storage_is_one_line_and_exit_2(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("HPSEARCH_STORAGE", raising=False)
    assert main(["dashboard"]) == 2
    err = capsys.readouterr().err
    assert "no storage at sqlite:///runs/hpsearch.db" in err and err.count("\n") == 1
    assert not Path("runs").exists()


def test_port_in_use_is_one_line_and_exit_2(tmp_path, capsys):
    import socket

    url = f"sqlite:///{tmp_path}/s.db"
    open_storage(url)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["dashboard", "--storage", url, "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("hpsearch: error:") and err.count("\n") == 1


@pytest.mark.parametrize("port", ["-1", "70000"])
def test_bad_port_is_refused(tmp_path, capsys, port):
    url = f"sqlite:///{tmp_path}/s.db"
    open_storage(url)
    assert main(["dashboard", "--storage", url, "--port", port]) == 2
    assert "--port must be in 0..65535" in capsys.readouterr().err
