"""The CLI end to end, as a user runs it, in a fresh working directory."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from hpsearch.cli import main
from tests.conftest import tiny_study


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("HPSEARCH_STORAGE", raising=False)
    return tmp_path


def test_smoke_study_end_to_end(workdir, capsys):
    assert main(["run", "--study", "smoke"]) == 0
    out = capsys.readouterr().out
    assert "0 of 4 trials finished, running 4" in out and "predict train mean" in out
    assert (workdir / "runs" / "hpsearch.db").is_file()
    assert main(["run", "--study", "smoke"]) == 0  # resume: already complete
    assert "4 of 4 trials finished, running 0" in capsys.readouterr().out
    assert main(["studies"]) == 0
    assert "smoke" in capsys.readouterr().out
    assert main(["export", "--study", "smoke", "-o", "best.yaml"]) == 0
    doc = yaml.safe_load((workdir / "best.yaml").read_text())
    assert doc["model"]["family"] == "cnn2d" and "lr" in doc["result"]["params"]
    artifacts = workdir / "runs" / "artifacts"
    assert any(artifacts.iterdir())
    capsys.readouterr()
    assert main(["delete", "--study", "smoke"]) == 0
    assert "deleted study 'smoke'" in capsys.readouterr().out
    assert not any(artifacts.iterdir())  # its artifact files went with it
    assert main(["export", "--study", "smoke"]) == 2


def test_console_script_runs_from_any_directory(workdir):
    env = {**os.environ, "HPSEARCH_STORAGE": f"sqlite:///{workdir}/elsewhere.db"}
    proc = subprocess.run(
        [sys.executable, "-m", "hpsearch.cli", "run", "--study", "smoke", "--n-trials", "1"],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert (workdir / "elsewhere.db").is_file()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run", "--study", "nope"], "unknown study 'nope'"),
        (["run", "--study", "../evil"], "study name may hold only"),
        (["run", "--study", "missing.yaml"], "study file not found: missing.yaml"),
        (["run", "--study", "smoke", "--data", "no/such/folder"], "data folder not found: no/such/folder"),
        (["run", "--study", "smoke", "--n-trials", "0"], "--n-trials >= 1 must hold"),
        (["export", "--study", "smoke"], "no storage at sqlite:///runs/hpsearch.db"),
    ],
)
def test_errors_are_one_line_exit_2_and_leave_storage_alone(workdir, capsys, args, message):
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not (workdir / "runs").exists()  # nothing created by a failed start


def test_empty_data_folder_is_refused(workdir, capsys):
    (workdir / "empty").mkdir()
    assert main(["run", "--study", "smoke", "--data", "empty"]) == 2
    assert "holds no CSV files" in capsys.readouterr().err
    assert not (workdir / "runs").exists()


def test_malformed_study_file(workdir, capsys):
    Path("bad.yaml").write_text(yaml.safe_dump(tiny_study(None, training={"patience": -1})))
    assert main(["run", "--study", "bad.yaml"]) == 2
    assert "bad.yaml: training: patience >= 1 must hold, got patience=-1" in capsys.readouterr().err


def test_password_in_storage_url_is_masked(workdir, capsys):
    url = "postgresql://user:s3cret@127.0.0.1:1/none"
    assert main(["studies", "--storage", url]) == 2
    err = capsys.readouterr().err
    assert "s3cret" not in err and "user:***@" in err


def test_local_studies_folder_wins(workdir, data_dir, capsys):
    (workdir / "studies").mkdir()
    (workdir / "studies" / "mine.yaml").write_text(
        yaml.safe_dump(tiny_study(data_dir, name="mine", n_trials=1))
    )
    assert main(["run", "--study", "mine"]) == 0
    assert "study 'mine'" in capsys.readouterr().out
