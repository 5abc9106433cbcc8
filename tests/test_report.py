"""`hpsearch report`: tables, importances, plots and report.md of a study."""

import datetime as dt

import optuna
import pytest
from optuna.distributions import FloatDistribution, IntDistribution
from optuna.trial import TrialState, create_trial
from rich.console import Console

from hpsearch.cli import main
from hpsearch.config import from_dict
from hpsearch.report import build_report, cells_grid, comparison_grid, importances, setting, trial_rows
from hpsearch.runner import run_study
from tests.conftest import tiny_study

PNG = b"\x89PNG\r\n\x1a\n"
LR = FloatDistribution(1e-6, 1e-2, log=True)
C1 = IntDistribution(2, 32)
T0 = dt.datetime(2024, 1, 1)


def quiet() -> Console:
    return Console(quiet=True)


def trial(state, lr, curve, stop, c1=None, attrs=True):
    params, dists = {"lr": lr}, {"lr": LR}
    if c1 is not None:
        params["c1"], dists["c1"] = c1, C1
    user = {"stop_reason": stop, "best_epoch": 1 + curve.index(min(curve)), "epochs": len(curve)}
    if attrs:
        user |= {"valid_loss": curve, "train_seconds": 2.5}
    frozen = create_trial(
        state=state,
        value=min(curve) if state == TrialState.COMPLETE else None,
        params=params,
        distributions=dists,
        user_attrs=user,
        intermediate_values=dict(enumerate(curve, start=1)),
    )
    frozen.datetime_start, frozen.datetime_complete = T0, T0 + dt.timedelta(seconds=3)
    return frozen


@pytest.fixture
def synthetic():
    """Three kinds of ending, no training: early-stopped, ran all epochs, pruned (curve only in
    Optuna's intermediate values, as a trial recorded by another tool would have it)."""
    cfg = from_dict(tiny_study(None), "x").to_dict()
    study = optuna.create_study(study_name="synthetic")
    study.set_user_attr("config", cfg)
    study.set_user_attr("baselines_valid_mse", {"zero": 0.9, "train_mean": 0.8})
    study.add_trial(trial(TrialState.COMPLETE, 1e-3, [1.0, 0.7, 0.75, 0.8], "early_stop"))
    study.add_trial(trial(TrialState.COMPLETE, 1e-5, [1.2, 1.1, 1.0, 0.95], "max_epochs"))
    study.add_trial(trial(TrialState.PRUNED, 1e-2, [3.0, 2.5], "pruned", attrs=False))
    return study


def test_rows_tell_the_endings_apart(synthetic):
    rows = trial_rows(synthetic)
    assert [r["stop_reason"] for r in rows] == ["early_stop", "max_epochs", "pruned"]
    assert rows[0]["value"] == 0.7 and rows[0]["best_epoch"] == 2
    pruned = rows[2]
    assert pruned["value"] is None and pruned["best_valid"] == 2.5  # from intermediate values
    assert pruned["valid_loss"] == [3.0, 2.5] and pruned["seconds"] == 3.0


def test_comparison_is_best_first_with_baselines(synthetic):
    config = synthetic.user_attrs["config"]
    header, rows = comparison_grid(
        trial_rows(synthetic), config, {"1": synthetic.user_attrs["baselines_valid_mse"]}
    )
    assert header[:7] == ["trial", "family", "c1", "c2", "lr", "label scale", "output window"]
    assert [r[0] for r in rows] == ["0", "1", "2", "predict zero", "predict train mean"]
    assert rows[0][2:4] == ["2", "4"]  # the study's fixed channels
    assert rows[2][7] == "2.5 (pruned)"
    assert all(len(r) == len(header) for r in rows)


def test_setting_reads_searched_then_fixed_values():
    config = from_dict(tiny_study(None), "x").to_dict()
    row = {"params": {"cnn2d.c1": 16, "lr": 0.01}}
    assert setting(row, config, "c1") == 16  # family-qualified search key
    assert setting(row, config, "c2") == 4  # fixed in the study
    assert setting(row, config, "label_scale") == 1.0
    assert setting(row, config, "family") == "cnn2d"
    assert setting({"params": {"family": "other"}}, config, "c2") is None  # not that family's field


def test_report_files(synthetic, tmp_path):
    path = build_report(synthetic, tmp_path / "rep", quiet())
    text = path.read_text()
    for name in ("optimization_history.png", "param_lr.png", "learning_curves.png"):
        data = (tmp_path / "rep" / name).read_bytes()
        assert data.startswith(PNG) and len(data) > 10_000, name
        assert f"]({name})" in text  # linked relative to report.md
    assert "## Comparison" in text and "| predict zero | (naive baseline) |" in text
    assert "**Best: trial 0, validation MSE 0.7**" in text
    assert "| 2 | PRUNED | n/a | 2/2 | pruned |" in text


def test_importances_are_graceful(synthetic):
    empty = optuna.create_study()
    assert importances(empty) == ({}, "not computed: needs at least 2 completed trials, the study has 0")
    result, note = importances(synthetic)  # one searched parameter
    assert result == {"lr": 1.0} and "by definition" in note
    two = optuna.create_study()
    for k in range(6):
        lr = 10.0 ** -(2 + k / 2)  # inside LR's range
        two.add_trial(trial(TrialState.COMPLETE, lr, [1.0 + k, 0.5 + k], "early_stop", c1=2 + k))
    result, note = importances(two)
    assert set(result) == {"lr", "c1"} and sum(result.values()) == pytest.approx(1.0)
    assert "fANOVA over 6 completed trials" in note


def test_report_of_a_real_study_from_the_cli(data_dir, tmp_path, monkeypatch, capsys):
    raw = tiny_study(
        data_dir,
        n_trials=4,
        training={"max_epochs": 3, "patience": 1},
        search={"lr": {"type": "float", "low": 1.0e-7, "high": 1.0e-1, "log": True}},
        pruner={"name": "median", "n_startup_trials": 1, "n_warmup_steps": 0},
    )
    url = f"sqlite:///{tmp_path}/s.db"
    study = run_study(from_dict(raw, "tiny.yaml"), url, quiet())
    monkeypatch.chdir(tmp_path)
    assert main(["report", "--study", "tiny", "--storage", url]) == 0
    out = tmp_path / "runs" / "tiny" / "report"
    printed = capsys.readouterr().out
    assert "comparison" in printed and "parameter importances" in printed
    text = (out / "report.md").read_text()
    assert "# Study report: tiny" in text and "4 trials" in text
    for t in study.trials:
        assert f"\n| {t.number} | {t.state.name} |" in text
    assert (out / "learning_curves.png").stat().st_size > 10_000
    assert main(["report", "--study", "nope", "--storage", url]) == 2
    assert "no study 'nope'" in capsys.readouterr().err


def test_several_output_windows_get_their_baselines_and_a_cell_table():
    cfg = from_dict(tiny_study(None), "x").to_dict()
    cfg["search"]["output_window"] = {"type": "categorical", "choices": [1, 48]}
    dist = {"lr": LR, "output_window": optuna.distributions.CategoricalDistribution([1, 48])}
    by_window = {"1": {"zero": 0.0101, "train_mean": 0.0102}, "48": {"zero": 0.0086, "train_mean": 0.0084}}
    rows = []
    for n, (w, value, step1) in enumerate(((1, 0.0099, 0.0099), (48, 0.0083, 0.0097), (48, 0.0085, 0.0098))):
        rows.append(
            {
                "number": n,
                "state": "COMPLETE",
                "value": value,
                "best_valid": value,
                "best_epoch": 1,
                "epochs": 2,
                "stop_reason": "early_stop",
                "params": {"lr": 1e-3, "output_window": w},
                "valid_loss": [value],
                "seconds": 10.0,
                "train_seconds": 9.0,
                "step1": step1,
            }
        )
    assert set(dist) == set(rows[0]["params"])
    header, grid = comparison_grid(rows, cfg, by_window)
    assert "step-1 MSE" in header
    labels = [r[0] for r in grid]
    assert labels[3:] == [
        "predict zero (W=1)",
        "predict train mean (W=1)",
        "predict zero (W=48)",
        "predict train mean (W=48)",
    ]
    assert all(len(r) == len(header) for r in grid)
    header, cells = cells_grid(rows, cfg, by_window)
    assert [c[:2] for c in cells] == [["cnn2d", "1"], ["cnn2d", "48"]]
    w48 = dict(zip(header, cells[1], strict=True))
    assert w48["best valid MSE (all W steps)"] == "0.0083" and w48["predict zero (same W)"] == "0.0086"
    assert w48["best step-1 MSE"] == "0.0097" and w48["predict zero step 1"] == "0.0101"
    assert w48["trials (complete/pruned/other)"] == "2 (2/0/0)" and w48["trial seconds"] == "20"
    assert cells_grid(rows, from_dict(tiny_study(None), "x").to_dict(), by_window) is None  # nothing searched
