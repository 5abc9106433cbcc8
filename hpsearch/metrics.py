"""Pure metric functions on arrays, and the naive baselines every result is shown beside."""

from __future__ import annotations

import numpy as np


def mse(pred: np.ndarray, true: np.ndarray) -> float:
    return float(np.mean((np.asarray(pred, dtype=np.float64) - np.asarray(true, dtype=np.float64)) ** 2))


def mae(pred: np.ndarray, true: np.ndarray) -> float:
    return float(np.mean(np.abs(np.asarray(pred, dtype=np.float64) - np.asarray(true, dtype=np.float64))))


def baselines(true: np.ndarray, train_mean: float) -> dict[str, float]:
    """MSE of the two constant forecasts a model must beat: zero return, and the training mean."""
    true = np.asarray(true, dtype=np.float64)
    return {
        "zero": mse(np.zeros_like(true), true),
        "train_mean": mse(np.full_like(true, train_mean), true),
    }
