"""Studies in real SQLite storage: resume to a total, export round trip, stored provenance."""

import dataclasses

import optuna
import pytest
from rich.console import Console

from hpsearch.config import from_dict
from hpsearch.errors import ConfigError
from hpsearch.export import best_config, load_run_config, write_yaml
from hpsearch.runner import FINISHED, run_study
from tests.conftest import tiny_study


def quiet() -> Console:
    return Console(quiet=True)


def finished(study):
    return [t for t in study.trials if t.state in FINISHED]


def test_resume_runs_up_to_the_total_not_n_more(tiny_cfg, tmp_path):
    url = f"sqlite:///{tmp_path}/s.db"
    study = run_study(tiny_cfg, url, quiet(), n_trials=2)
    assert len(finished(study)) == 2
    study = run_study(tiny_cfg, url, quiet(), n_trials=2)
    assert len(study.trials) == 2  # already done: nothing new
    study = run_study(tiny_cfg, url, quiet(), n_trials=4)
    assert len(finished(study)) == 4 and len(study.trials) == 4


def test_restarted_seeded_sampler_does_not_replay(tiny_cfg, tmp_path):
    url = f"sqlite:///{tmp_path}/s.db"
    run_study(tiny_cfg, url, quiet(), n_trials=2)
    study = run_study(tiny_cfg, url, quiet(), n_trials=4)
    lrs = [t.params["lr"] for t in study.trials]
    assert len(set(lrs)) == 4


def test_study_records_provenance_and_baselines(tiny_cfg, tmp_path):
    study = run_study(tiny_cfg, f"sqlite:///{tmp_path}/s.db", quiet(), n_trials=1)
    attrs = study.user_attrs
    assert attrs["config"] == dataclasses.replace(tiny_cfg, n_trials=1).to_dict()
    assert attrs["data_fingerprint"]["tickers"] == ["T0", "T1", "T2"]
    assert {"torch", "optuna", "python"} <= set(attrs["versions"])
    assert set(attrs["baselines_valid_mse"]) == {"zero", "train_mean"}
    trial = study.trials[0]
    assert {"best_epoch", "stop_reason", "seed", "valid_loss", "train_loss"} <= set(trial.user_attrs)
    assert trial.intermediate_values  # per-epoch validation curve for the dashboard


def test_changed_study_file_is_refused_on_resume(tiny_cfg, tmp_path):
    url = f"sqlite:///{tmp_path}/s.db"
    run_study(tiny_cfg, url, quiet(), n_trials=1)
    changed = dataclasses.replace(tiny_cfg, training=dataclasses.replace(tiny_cfg.training, max_epochs=9))
    with pytest.raises(ConfigError, match=r"with a different training.max_epochs \(3 -> 9\)"):
        run_study(changed, url, quiet(), n_trials=2)


def test_device_and_data_location_may_change_on_resume(tiny_cfg, data_dir, tmp_path):
    import shutil

    url = f"sqlite:///{tmp_path}/s.db"
    run_study(tiny_cfg, url, quiet(), n_trials=1)
    copy = shutil.copytree(data_dir, tmp_path / "copy")  # the same bytes elsewhere
    moved = dataclasses.replace(
        tiny_cfg,
        data=dataclasses.replace(tiny_cfg.data, path=str(copy)),
        training=dataclasses.replace(tiny_cfg.training, device="auto"),
    )
    study = run_study(moved, url, quiet(), n_trials=2)
    assert len(finished(study)) == 2


def test_export_round_trip(tiny_cfg, tmp_path):
    study = run_study(tiny_cfg, f"sqlite:///{tmp_path}/s.db", quiet(), n_trials=3)
    doc = best_config(study)
    path = tmp_path / "best.yaml"
    write_yaml(doc, path)
    run, extras = load_run_config(path)
    best = study.best_trial
    assert run.training.lr == best.params["lr"]
    assert run.model == tiny_cfg.model and run.data == tiny_cfg.data
    assert run.split == dataclasses.replace(tiny_cfg.split, embargo=tiny_cfg.embargo)  # pinned
    assert run.seed == best.user_attrs["seed"]
    assert run.search == ()
    assert extras["result"]["value"] == best.value and extras["result"]["trial"] == best.number
    assert extras["provenance"]["data_fingerprint"]["sha256"]


def test_export_without_completed_trial_is_an_error(tmp_path):
    study = optuna.create_study(storage=f"sqlite:///{tmp_path}/s.db", study_name="empty")
    study.set_user_attr("config", from_dict(tiny_study(None), "x").to_dict())
    with pytest.raises(ConfigError, match="no completed trial"):
        best_config(study)


def test_pruner_prunes_hopeless_trials(data_dir, tmp_path):
    raw = tiny_study(
        data_dir,
        n_trials=8,
        training={"max_epochs": 4, "patience": 4},
        search={"lr": {"type": "float", "low": 1.0e-7, "high": 1.0e-2, "log": True}},
        pruner={"name": "median", "n_startup_trials": 2, "n_warmup_steps": 0},
    )
    study = run_study(from_dict(raw, "p.yaml"), f"sqlite:///{tmp_path}/s.db", quiet())
    states = [t.state for t in study.trials]
    assert optuna.trial.TrialState.PRUNED in states
    pruned = [t for t in study.trials if t.state == optuna.trial.TrialState.PRUNED]
    assert all(t.user_attrs["stop_reason"] == "pruned" for t in pruned)


@pytest.mark.parametrize(("value", "warned"), [(0.5, True), (0.01, False)])
def test_table_warns_when_the_best_trial_loses_to_a_constant(value, warned):
    from hpsearch.progress import best_trials_table

    study = optuna.create_study()
    study.set_user_attr("baselines_valid_mse", {"zero": 0.02, "train_mean": 0.019})
    study.set_user_attr("config", {"data": {"output_window": 1}})
    study.add_trial(
        optuna.trial.create_trial(
            params={"lr": 1e-3},
            distributions={"lr": optuna.distributions.FloatDistribution(1e-5, 1e-1, log=True)},
            value=value,
        )
    )
    console = Console(record=True, width=120)
    console.print(best_trials_table(study))
    text = console.export_text()
    assert ("does not beat a naive constant forecast" in text) is warned
    assert "predict train mean" in text


def test_a_search_never_reads_the_test_segment(tmp_path):
    """Wreck every row from the test segment on: a search over the same seeds scores the same."""
    import numpy as np
    import pandas as pd

    from hpsearch.data import load_bars
    from hpsearch.windows import build_windows
    from tests.conftest import write_folder
    from tests.test_windows import wreck_after

    clean = write_folder(tmp_path / "clean", n_tickers=3, n_days=300)
    wrecked = write_folder(tmp_path / "wrecked", n_tickers=3, n_days=300)
    cfg = from_dict(tiny_study(clean), "t.yaml")
    w = build_windows(load_bars(clean), cfg.data, cfg.split, cfg.data.min_embargo)
    test_start = pd.Timestamp(w.segments["test"].first)
    wreck_after(wrecked, test_start)
    assert not np.allclose(pd.read_csv(clean / "T0.csv")["Close"], pd.read_csv(wrecked / "T0.csv")["Close"])
    values = []
    for folder in (clean, wrecked):
        c = from_dict(tiny_study(folder), "t.yaml")
        study = run_study(c, f"sqlite:///{tmp_path}/{folder.name}.db", quiet(), n_trials=3)
        values.append([t.value for t in study.trials])
    assert values[0] == values[1]
