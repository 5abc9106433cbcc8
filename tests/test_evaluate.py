"""`hpsearch train`: an exported config -> retrain -> one test evaluation -> files on disk."""

import json

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from rich.console import Console

from hpsearch.cli import main
from hpsearch.config import from_dict
from hpsearch.errors import ConfigError, HpsearchError
from hpsearch.evaluate import run_final
from hpsearch.export import best_config, load_run_config, write_yaml
from hpsearch.metrics import mse
from hpsearch.models import build_model
from hpsearch.runner import run_study
from tests.conftest import tiny_study, write_folder

PNG = b"\x89PNG\r\n\x1a\n"


def run_config(data_dir, **overrides) -> dict:
    """A run config as `hpsearch export` writes it, minus the result: no search, a fixed lr."""
    training = {"lr": 3.0e-3, "max_epochs": 2, **overrides.pop("training", {})}
    raw = tiny_study(data_dir, seed=3, training=training, **overrides)
    for key in ("search", "sampler", "pruner", "n_trials"):
        raw.pop(key)
    return raw


def quiet() -> Console:
    return Console(quiet=True)


@pytest.fixture(scope="module")
def final(tmp_path_factory):
    """One final run on tiny data, shared by the read-only checks below."""
    root = tmp_path_factory.mktemp("final")
    data = write_folder(root / "bars", n_tickers=3, n_days=300)
    path = root / "run.yaml"
    write_yaml(run_config(data), path)
    return path, run_final(path, quiet(), out=root / "out")


def test_writes_every_artifact(final):
    _, run = final
    names = {p.name for p in run.out.iterdir()}
    expected = {"metrics.json", "metrics.md", "predictions.csv", "model.pt", "config.yaml", "provenance.json"}
    plots = {"loss_curves.png", "scatter_test.png", "ic_over_time.png", "test_segments_T0.png"}
    assert expected | plots | {"test_segments_T1.png"} <= names  # no BIIB/DOV: the first two tickers
    for name in plots:
        data = (run.out / name).read_bytes()
        assert data.startswith(PNG) and len(data) > 10_000, name


def test_metrics_json_round_trip_matches_the_predictions(final):
    _, run = final
    saved = json.loads((run.out / "metrics.json").read_text())
    test = saved["segments"]["test"]
    preds = pd.read_csv(run.out / "predictions.csv")
    assert list(preds.columns) == ["date", "ticker", "step", "y_true", "y_pred"]
    assert len(preds) == test["windows"] and set(preds["step"]) == {1}
    assert test["model"]["mean"]["mse"] == pytest.approx(mse(preds["y_pred"], preds["y_true"]), rel=1e-5)
    assert test["predict_zero"]["mean"]["mse"] == pytest.approx(np.mean(preds["y_true"] ** 2), rel=1e-5)
    # undefined metrics of constant forecasts are null in JSON, never NaN
    assert test["predict_train_mean"]["mean"]["ic"] is None
    assert test["predict_zero"]["mean"]["hit_rate"] is None
    assert test["first"] <= preds["date"].min() and preds["date"].max() <= test["last"]
    assert saved["segments"]["valid"]["windows"] > saved["training"]["valid_subset_windows"]  # full segment
    assert saved["training"]["search_value"] is None  # a hand-written config has no search result
    # the headline a reader must not miss is written out, not left to be inferred
    no_gain = test["model"]["mean"]["mse"] >= min(
        test["predict_zero"]["mean"]["mse"], test["predict_train_mean"]["mean"]["mse"]
    )
    assert no_gain == any(f.startswith("NO GAIN on test") for f in saved["findings"])
    flat = test["std_ratio"] < 0.1
    assert flat == any(f.startswith("FLAT FORECAST on test") for f in saved["findings"])


def test_weights_and_config_load_back(final):
    path, run = final
    state = torch.load(run.out / "model.pt", weights_only=True)
    cfg, _ = load_run_config(run.out / "config.yaml")
    original, _ = load_run_config(path)
    assert cfg == original
    assert run.result.best_state is not None and state.keys() == run.result.best_state.keys()
    assert all(torch.equal(state[k], run.result.best_state[k]) for k in state)
    provenance = json.loads((run.out / "provenance.json").read_text())
    assert provenance["seed"] == 3 and provenance["data_fingerprint"]["sha256"]
    assert {"torch", "numpy", "python"} <= set(provenance["versions"])
    model = build_model(cfg.model_family, cfg.model, _spec(run))
    model.load_state_dict(state)  # the right architecture for the saved weights


def _spec(run):
    from hpsearch.models import InputSpec

    return InputSpec(seq_len=16, n_features=6, output_window=1, n_tickers=3, ticker_embedding=True)


def test_same_seed_same_metrics(final, tmp_path):
    path, run = final
    again = run_final(path, quiet(), out=tmp_path / "again", with_plots=False)
    assert again.metrics["segments"] == run.metrics["segments"]


def test_reproduces_the_search_value(data_dir, tmp_path):
    cfg = from_dict(tiny_study(data_dir, n_trials=2, training={"max_epochs": 2}), "tiny.yaml")
    study = run_study(cfg, f"sqlite:///{tmp_path}/s.db", quiet())
    write_yaml(best_config(study), tmp_path / "best.yaml")
    run = run_final(tmp_path / "best.yaml", quiet(), out=tmp_path / "out", with_plots=False)
    training = run.metrics["training"]
    assert training["search_value"] == study.best_value
    assert training["reproduced_search_value"], training
    assert run.metrics["seed"] == study.best_trial.user_attrs["seed"]


def test_refuses_what_it_cannot_honour(data_dir, tmp_path):
    bad = tmp_path / "bad.yaml"
    write_yaml({**run_config(data_dir), "n_trials": 4}, bad)
    with pytest.raises(ConfigError, match="'n_trials' belongs in a study file"):
        run_final(bad, quiet(), out=tmp_path / "out")
    moved = tmp_path / "moved.yaml"
    write_yaml({**run_config(data_dir), "provenance": {"data_fingerprint": {"sha256": "0" * 64}}}, moved)
    with pytest.raises(ConfigError, match="data differ from those the config was searched on"):
        run_final(moved, quiet(), out=tmp_path / "out")
    good = tmp_path / "good.yaml"
    write_yaml(run_config(data_dir), good)
    with pytest.raises(HpsearchError, match="--tickers: not in the data: NOPE; available: T0, T1, T2"):
        run_final(good, quiet(), out=tmp_path / "out", tickers=["NOPE"])
    assert not (tmp_path / "out").exists()  # refused before anything was written


def test_cli_train_errors_are_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--config", "missing.yaml"]) == 2
    err = capsys.readouterr().err
    assert "missing.yaml: cannot read" in err and err.count("\n") == 1


def test_cli_multi_step_forecast_into_the_default_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    data = write_folder(tmp_path / "bars", n_tickers=3, n_days=300)
    raw = run_config(data, data={"output_window": 3}, training={"max_epochs": 1})
    write_yaml(raw, tmp_path / "best.yaml")
    assert main(["train", "--config", "best.yaml", "--tickers", "t2"]) == 0
    out = tmp_path / "runs" / "tiny" / "final"
    assert "hit rate" in capsys.readouterr().out  # the comparison table is printed
    metrics = json.loads((out / "metrics.json").read_text())
    test = metrics["segments"]["test"]
    assert len(test["model"]["per_step"]) == 3 and len(test["true_std_per_step"]) == 3
    mean_mse = np.mean([s["mse"] for s in test["model"]["per_step"]])
    assert test["model"]["mean"]["mse"] == pytest.approx(mean_mse)
    preds = pd.read_csv(out / "predictions.csv")
    assert len(preds) == 3 * test["windows"] and list(preds["step"][:3]) == [1, 2, 3]
    assert (out / "test_segments_T2.png").stat().st_size > 10_000
    assert not (out / "test_segments_T0.png").exists()
    assert "Per step (test)" in (out / "metrics.md").read_text()
    assert yaml.safe_load((out / "config.yaml").read_text())["data"]["output_window"] == 3
