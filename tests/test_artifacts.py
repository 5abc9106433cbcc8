"""Trial artifacts (learning curve, validation predictions), validation IC and the study note."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from pathlib import Path

import optuna
import pytest
from optuna.artifacts import get_all_artifact_meta
from optuna.trial import TrialState
from optuna_dashboard import get_note
from rich.console import Console

from hpsearch.artifact_store import artifact_dir
from hpsearch.artifacts import TrialArtifacts
from hpsearch.config import from_dict
from hpsearch.runner import run_study
from hpsearch.study_note import MAX_CHARS, render_note
from tests.conftest import tiny_study

PNG = b"\x89PNG\r\n\x1a\n"


def quiet() -> Console:
    return Console(quiet=True)


def artifact_files(trial: optuna.trial.FrozenTrial, study: optuna.Study, folder: Path) -> dict[str, bytes]:
    metas = get_all_artifact_meta(trial, storage=study._storage)
    return {m.filename: (folder / m.artifact_id).read_bytes() for m in metas}


@pytest.mark.parametrize(
    ("url", "given", "env", "expected"),
    [
        ("sqlite:///runs/hpsearch.db", None, None, Path("runs/artifacts")),
        ("sqlite:////data/x/study.db", None, None, Path("/data/x/artifacts")),
        ("postgresql://u:p@h/db", None, None, Path("runs/artifacts")),
        ("postgresql://u:p@h/db", "/srv/art", None, Path("/srv/art")),
        ("sqlite:///runs/hpsearch.db", None, "/env/art", Path("/env/art")),
        ("sqlite:///runs/hpsearch.db", "given", "/env/art", Path("given")),
        ("sqlite:///runs/hpsearch.db", None, "none", None),
        ("sqlite:///:memory:", None, None, None),
    ],
)
def test_artifact_dir_beside_the_storage_unless_told(monkeypatch, url, given, env, expected):
    if env is None:
        monkeypatch.delenv("HPSEARCH_ARTIFACTS", raising=False)
    else:
        monkeypatch.setenv("HPSEARCH_ARTIFACTS", env)
    assert artifact_dir(url, given) == expected


def test_finished_trials_carry_pngs_small_attrs_and_a_note(data_dir, tmp_path, monkeypatch):
    monkeypatch.delenv("HPSEARCH_ARTIFACTS", raising=False)
    url = f"sqlite:///{tmp_path}/runs/hpsearch.db"
    folder = tmp_path / "runs" / "artifacts"
    study = run_study(from_dict(tiny_study(data_dir), "t.yaml"), url, quiet(), n_trials=2)
    for trial in study.trials:
        assert trial.state == TrialState.COMPLETE
        files = artifact_files(trial, study, folder)
        assert sorted(files) == [
            f"trial_{trial.number}_learning_curve.png",
            f"trial_{trial.number}_valid_predictions.png",
        ]
        assert all(body.startswith(PNG) and 5_000 < len(body) < 300_000 for body in files.values())
        ic = trial.user_attrs["valid_ic"]
        assert ic is None or -1 <= ic <= 1
        # Attributes stay small: numbers and two per-epoch lists, no pictures, no arrays.
        assert len(repr(trial.user_attrs)) < 1_000
    note = get_note(study)
    best = study.best_trial
    assert f"**Best trial {best.number}**: validation MSE {best.value:.6g}" in note
    assert "predict zero (naive)" in note and "predict train mean (naive)" in note
    assert "2 of 2 trials finished (2 complete, 0 pruned); 0 failed" in note

    # A pruned trial (threshold 0: pruned after its first epoch) has a learning curve, no weights.
    pruned_cfg = from_dict(
        tiny_study(data_dir, name="pruned", pruner={"name": "threshold", "upper": 1.0e-12}), "p.yaml"
    )
    pruned = run_study(pruned_cfg, url, quiet(), n_trials=1)
    (trial,) = pruned.trials
    assert trial.state == TrialState.PRUNED and trial.user_attrs["stop_reason"] == "pruned"
    assert list(artifact_files(trial, pruned, folder)) == ["trial_0_learning_curve.png"]
    assert "valid_ic" not in trial.user_attrs
    assert "No completed trial yet" in get_note(pruned) and "1 of 1 trials finished" in get_note(pruned)


def test_an_artifact_failure_is_a_warning_not_a_failed_trial(data_dir, tmp_path, monkeypatch, caplog):
    monkeypatch.delenv("HPSEARCH_ARTIFACTS", raising=False)

    def broken(*_args, **_kwargs):
        raise RuntimeError("no room for the picture")

    monkeypatch.setattr(TrialArtifacts, "_predictions", broken)
    url = f"sqlite:///{tmp_path}/s.db"
    with caplog.at_level(logging.WARNING, logger="hpsearch"):
        study = run_study(from_dict(tiny_study(data_dir), "t.yaml"), url, quiet(), n_trials=1)
    (trial,) = study.trials
    assert trial.state == TrialState.COMPLETE
    assert list(artifact_files(trial, study, tmp_path / "artifacts")) == ["trial_0_learning_curve.png"]
    assert (
        "trial 0: validation predictions artifact not written (RuntimeError: no room for the picture)"
        in caplog.text
    )


def test_artifacts_can_be_turned_off(data_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("HPSEARCH_ARTIFACTS", "none")
    study = run_study(from_dict(tiny_study(data_dir), "t.yaml"), f"sqlite:///{tmp_path}/s.db", quiet(), 1)
    assert get_all_artifact_meta(study.trials[0], storage=study._storage) == []
    assert "valid_ic" in study.trials[0].user_attrs  # a metric, not an artifact
    assert not (tmp_path / "artifacts").exists()


def _trial(number: int, state: TrialState, value: float | None = None, **attrs) -> optuna.trial.FrozenTrial:
    start = datetime(2024, 1, 1, 12, 0, 0) + timedelta(seconds=10 * number)
    trial = optuna.trial.create_trial(
        state=state,
        value=value,
        params={"lr": 1e-3 * (number + 1)},
        distributions={"lr": optuna.distributions.FloatDistribution(1e-5, 1e-1, log=True)},
        user_attrs=attrs,
    )
    trial.number = number
    trial.datetime_start = start
    trial.datetime_complete = None if state == TrialState.RUNNING else start + timedelta(seconds=8)
    return trial


def test_note_states_best_trial_baselines_and_budget():
    trials = [
        _trial(0, TrialState.COMPLETE, 0.009, best_epoch=3, epochs=8, stop_reason="stop", valid_ic=0.02),
        _trial(1, TrialState.COMPLETE, 0.007, best_epoch=5, epochs=9, stop_reason="stop", valid_ic=None),
        _trial(2, TrialState.PRUNED, stop_reason="pruned"),
        _trial(3, TrialState.FAIL, stop_reason="interrupted"),
        _trial(4, TrialState.FAIL, stop_reason="surplus"),
        _trial(5, TrialState.RUNNING),
    ]
    note = render_note("lr_sweep", trials, 16, {"zero": 0.008, "train_mean": 0.0075})
    assert note.startswith("## lr_sweep\n")
    assert "**Best trial 1**: validation MSE 0.007 (-6.7% vs the better baseline), best epoch 5 of 9" in note
    assert "validation IC -" in note  # undefined IC is shown as such, not as 0
    assert "| predict train mean (naive) | 0.0075 |" in note
    assert "Parameters: `lr=0.002`" in note
    assert "3 of 16 trials finished (2 complete, 1 pruned); 1 failed, 1 running, 1 surplus" in note
    assert "Wall time 48s" in note  # first start 12:00:00 .. last end 12:00:48
    assert "No gain yet" not in note


def test_note_says_no_gain_and_stays_one_storage_attribute_long():
    trials = [_trial(0, TrialState.COMPLETE, 0.01, best_epoch=1, epochs=1, stop_reason="early_stop")]
    note = render_note("s", trials, 4, {"zero": 0.008, "train_mean": 0.0075})
    assert "**No gain yet**" in note and "+33.3% vs the better baseline" in note
    trials[0].params.update({f"p{k}": "x" * 40 for k in range(80)})
    assert len(render_note("s", trials, 4, None)) <= MAX_CHARS
