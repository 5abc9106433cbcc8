"""Metrics on small arrays computed by hand, and the naive baselines beside them."""

import math

import numpy as np
import pytest

from hpsearch.metrics import (
    baselines,
    compare_to_baselines,
    forecast_metrics,
    hit_rate,
    ic,
    ic_by_date,
    icir,
    mae,
    mse,
    rank_ic,
)

D1, D2 = np.datetime64("2020-01-02"), np.datetime64("2020-01-03")
# Two dates, three tickers each. Date 1: pred 1,2,3 vs true 1,2,4; date 2: pred 1,2,3 vs true 3,2,1.
DATES = np.array([D1, D1, D1, D2, D2, D2])
PRED = np.array([1.0, 2.0, 3.0, 1.0, 2.0, 3.0])
TRUE = np.array([1.0, 2.0, 4.0, 3.0, 2.0, 1.0])
# By hand, date 1: dx = (-1, 0, 1), dy = (-4/3, -1/3, 5/3): sxy = 3, sxx = 2, syy = 14/3,
# r = 3 / sqrt(28/3) = sqrt(27/28). Date 2 is exactly reversed: r = -1.
R1 = math.sqrt(27 / 28)


def test_mse_mae_by_hand():
    assert mse([1.0, 2.0], [0.0, 4.0]) == pytest.approx((1 + 4) / 2)
    assert mae([1.0, 2.0], [0.0, 4.0]) == pytest.approx((1 + 2) / 2)


def test_ic_per_date_and_mean():
    dates, series = ic_by_date(PRED, TRUE, DATES)
    assert list(dates) == [D1, D2]
    assert series == pytest.approx([R1, -1.0])
    assert ic(PRED, TRUE, DATES) == pytest.approx((R1 - 1) / 2)


def test_rank_ic_uses_ranks_and_averages_ties():
    # Date 1's truths 1,2,4 rank 1,2,3 like the predictions: Spearman 1; date 2: -1.
    assert rank_ic(PRED, TRUE, DATES) == pytest.approx(0.0)
    # Tied predictions share the average rank: ranks (1.5, 1.5, 3) vs (1, 2, 3):
    # dx = (-.5, -.5, 1), dy = (-1, 0, 1), sxy = 1.5, sxx = 1.5, syy = 2 -> r = 1.5 / sqrt(3).
    tie = rank_ic(np.array([1.0, 1.0, 2.0]), np.array([10.0, 20.0, 30.0]), np.array([D1] * 3))
    assert tie == pytest.approx(1.5 / math.sqrt(3))


def test_icir_is_mean_over_std_of_the_daily_ic():
    series = np.array([R1, -1.0])
    expected = series.mean() / series.std(ddof=1)  # std(ddof=1) of two values = |a - b| / sqrt(2)
    assert icir(PRED, TRUE, DATES) == pytest.approx(expected)
    assert expected == pytest.approx(((R1 - 1) / 2) / ((R1 + 1) / math.sqrt(2)))


def test_constant_forecast_has_no_correlation():
    const = np.full(6, 0.5)
    assert math.isnan(ic(const, TRUE, DATES))
    assert math.isnan(rank_ic(const, TRUE, DATES))
    assert math.isnan(icir(const, TRUE, DATES))
    # constant on one date only: that date is left out, the other still counts
    half = np.array([0.5, 0.5, 0.5, 1.0, 2.0, 3.0])
    assert ic(half, TRUE, DATES) == pytest.approx(-1.0)


def test_single_ticker_dates_are_skipped():
    dates = np.array([D1, D2, D2])
    assert ic(np.array([1.0, 1.0, 2.0]), np.array([5.0, 1.0, 2.0]), dates) == pytest.approx(1.0)


def test_hit_rate_by_hand():
    # hits: (+,+) yes, (-,-) yes, (0,+) no: a zero calls no direction, (+,-) no
    assert hit_rate([1.0, -1.0, 0.0, 2.0], [2.0, -3.0, 1.0, -1.0]) == pytest.approx(0.5)
    # a truth of exactly 0 is left out
    assert hit_rate([1.0, 1.0], [0.0, 2.0]) == pytest.approx(1.0)
    assert math.isnan(hit_rate([0.0, 0.0], [1.0, -1.0]))


def test_baselines_beside_the_model_on_the_same_rows():
    out = compare_to_baselines(PRED, TRUE, DATES, train_mean=0.5)
    zero, mean = out["predict_zero"]["mean"], out["predict_train_mean"]["mean"]
    assert zero["mse"] == pytest.approx(np.mean(TRUE**2))
    assert mean["mse"] == pytest.approx(np.mean((TRUE - 0.5) ** 2))
    assert mean["mae"] == pytest.approx(np.mean(np.abs(TRUE - 0.5)))
    # the old API agrees
    assert baselines(TRUE, 0.5) == pytest.approx({"zero": zero["mse"], "train_mean": mean["mse"]})
    assert math.isnan(zero["ic"]) and math.isnan(mean["rank_ic"]) and math.isnan(mean["icir"])
    assert math.isnan(zero["hit_rate"])
    assert mean["hit_rate"] == 1.0  # all truths positive, the mean forecast positive
    assert zero["pred_std"] == 0.0 and mean["pred_std"] == 0.0  # exactly, not 1e-19
    assert out["model"]["mean"]["pred_std"] == pytest.approx(np.std(PRED))
    assert out["true_std"] == pytest.approx(np.std(TRUE))


def test_multi_step_per_step_and_averaged():
    pred = np.column_stack([PRED, -PRED])  # (N, W=2): step 2 is step 1 mirrored
    true = np.column_stack([TRUE, TRUE])
    m = forecast_metrics(pred, true, DATES)
    s1, s2 = m["per_step"]
    assert s1["ic"] == pytest.approx((R1 - 1) / 2) and s2["ic"] == pytest.approx(-(R1 - 1) / 2)
    assert m["mean"]["ic"] == pytest.approx(0.0)
    assert m["mean"]["mse"] == pytest.approx(mse(pred, true))  # same rows per step
    assert s2["hit_rate"] == pytest.approx(0.0)


def test_agrees_with_scipy_on_random_cross_sections():
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    dates = np.repeat(np.arange("2020-01-01", "2020-01-21", dtype="datetime64[D]"), 7)
    pred, true = rng.normal(size=len(dates)), rng.normal(size=len(dates))
    pred[::5] = np.round(pred[::5])  # some ties
    days = np.unique(dates)
    pearson = [stats.pearsonr(pred[dates == d], true[dates == d])[0] for d in days]
    spearman = [stats.spearmanr(pred[dates == d], true[dates == d])[0] for d in days]
    assert ic(pred, true, dates) == pytest.approx(np.mean(pearson))
    assert rank_ic(pred, true, dates) == pytest.approx(np.mean(spearman))
    assert icir(pred, true, dates) == pytest.approx(np.mean(pearson) / np.std(pearson, ddof=1))
