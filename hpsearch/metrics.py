"""Pure metric functions on arrays, and the naive baselines every result is shown beside.

Conventions, stated once:
- `pred` and `true` are (N,) or (N, W) arrays of labels (forward returns x label_scale); `dates`
  is (N,) and names the cross-section each row belongs to (the day the forecast is made).
- IC is the mean over dates of the cross-sectional Pearson correlation of prediction and truth;
  Rank IC the same with Spearman (ranks, ties averaged); ICIR is IC mean / IC std (ddof 1) over
  dates, not annualized. A date whose predictions (or truths) are all equal has no correlation:
  it is NaN and left out of the mean, so a constant forecast (both naive baselines) has IC NaN.
  We report that as undefined rather than as 0, which would look like a measured "no skill".
- Hit rate is the share of rows where prediction and truth have the same strict sign; a zero
  prediction calls no direction and counts as a miss, rows whose truth is exactly 0 are left
  out. A forecast that is 0 everywhere (the predict-zero baseline) has hit rate NaN.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

# Metrics that are undefined (NaN) for a forecast that is the same number on every row.
UNDEFINED_FOR_CONSTANT = ("ic", "rank_ic", "icir")


def _f64(a: np.ndarray) -> np.ndarray:
    return np.asarray(a, dtype=np.float64)


def mse(pred: np.ndarray, true: np.ndarray) -> float:
    return float(np.mean((_f64(pred) - _f64(true)) ** 2))


def mae(pred: np.ndarray, true: np.ndarray) -> float:
    return float(np.mean(np.abs(_f64(pred) - _f64(true))))


def baselines(true: np.ndarray, train_mean: float) -> dict[str, float]:
    """MSE of the two constant forecasts a model must beat: zero return, and the training mean."""
    true = _f64(true)
    return {
        "zero": mse(np.zeros_like(true), true),
        "train_mean": mse(np.full_like(true, train_mean), true),
    }


def hit_rate(pred: np.ndarray, true: np.ndarray) -> float:
    pred, true = _f64(pred).ravel(), _f64(true).ravel()
    keep = true != 0
    if not keep.any() or not (pred != 0).any():
        return math.nan
    return float(np.mean(np.sign(pred[keep]) == np.sign(true[keep])))


def _group_ids(dates: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unique dates (sorted) and the index of each row's date in them."""
    unique, ids = np.unique(np.asarray(dates), return_inverse=True)
    return unique, ids.ravel()


def _pearson_by_group(x: np.ndarray, y: np.ndarray, g: np.ndarray, n_groups: int) -> np.ndarray:
    """Pearson correlation of x and y within each group; NaN where either side is constant."""
    n = np.bincount(g, minlength=n_groups).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        dx = x - (np.bincount(g, x, n_groups) / n)[g]
        dy = y - (np.bincount(g, y, n_groups) / n)[g]
        sxy = np.bincount(g, dx * dy, n_groups)
        sxx = np.bincount(g, dx * dx, n_groups)
        syy = np.bincount(g, dy * dy, n_groups)
        r = sxy / np.sqrt(sxx * syy)
    # Exactly constant within the group: the mean's rounding would otherwise leave a tiny
    # non-zero spread and a meaningless correlation.
    frame = pd.DataFrame({"g": g, "x": x, "y": y}).groupby("g")
    spread = (frame.max() - frame.min()).reindex(range(n_groups))
    constant = (spread["x"].to_numpy() == 0) | (spread["y"].to_numpy() == 0)
    r[(n < 2) | constant | ~np.isfinite(r)] = np.nan
    return np.clip(r, -1.0, 1.0)


def ic_by_date(
    pred: np.ndarray, true: np.ndarray, dates: np.ndarray, rank: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """(dates, correlation per date) of one output step: pred, true and dates all (N,)."""
    x, y = _f64(pred).ravel(), _f64(true).ravel()
    unique, g = _group_ids(dates)
    if rank:
        x = pd.Series(x).groupby(g).rank(method="average").to_numpy()
        y = pd.Series(y).groupby(g).rank(method="average").to_numpy()
    return unique, _pearson_by_group(x, y, g, len(unique))


def _nanmean(a: np.ndarray) -> float:
    a = a[np.isfinite(a)]
    return float(a.mean()) if len(a) else math.nan


def ic(pred: np.ndarray, true: np.ndarray, dates: np.ndarray) -> float:
    return _nanmean(ic_by_date(pred, true, dates)[1])


def rank_ic(pred: np.ndarray, true: np.ndarray, dates: np.ndarray) -> float:
    return _nanmean(ic_by_date(pred, true, dates, rank=True)[1])


def icir(pred: np.ndarray, true: np.ndarray, dates: np.ndarray) -> float:
    series = ic_by_date(pred, true, dates)[1]
    series = series[np.isfinite(series)]
    if len(series) < 2 or series.std(ddof=1) == 0:
        return math.nan
    return float(series.mean() / series.std(ddof=1))


def _std(a: np.ndarray) -> float:
    """Standard deviation, exactly 0 for a constant (np.std leaves ~1e-19 from the mean's rounding)."""
    a = _f64(a)
    return float(np.std(a)) if a.size and np.ptp(a) > 0 else 0.0


def step_metrics(pred: np.ndarray, true: np.ndarray, dates: np.ndarray) -> dict[str, float]:
    """Every metric of one output step; pred, true, dates all (N,)."""
    return {
        "mse": mse(pred, true),
        "mae": mae(pred, true),
        "ic": ic(pred, true, dates),
        "rank_ic": rank_ic(pred, true, dates),
        "icir": icir(pred, true, dates),
        "hit_rate": hit_rate(pred, true),
        "pred_std": _std(pred),
    }


def _mean_over_steps(per_step: list[dict[str, float]]) -> dict[str, float]:
    return {k: _nanmean(np.array([s[k] for s in per_step])) for k in per_step[0]}


def forecast_metrics(pred: np.ndarray, true: np.ndarray, dates: np.ndarray) -> dict:
    """pred, true (N, W) or (N,); dates (N,) -> metrics averaged over steps, and per step.

    Every step has the same rows, so the mean of per-step MSE (or MAE) is the MSE over all
    N x W values.
    """
    pred, true = _f64(pred).reshape(len(dates), -1), _f64(true).reshape(len(dates), -1)
    per_step = [step_metrics(pred[:, k], true[:, k], dates) for k in range(pred.shape[1])]
    return {"mean": _mean_over_steps(per_step), "per_step": per_step}


def compare_to_baselines(
    pred: np.ndarray, true: np.ndarray, dates: np.ndarray, train_mean: float
) -> dict[str, dict]:
    """The model and the two naive forecasts, scored by the same metrics on the same rows."""
    true = _f64(true).reshape(len(dates), -1)
    return {
        "model": forecast_metrics(pred, true, dates),
        "predict_zero": forecast_metrics(np.zeros_like(true), true, dates),
        "predict_train_mean": forecast_metrics(np.full_like(true, train_mean), true, dates),
        "true_std": _std(true),
        "true_std_per_step": [_std(true[:, k]) for k in range(true.shape[1])],
    }
