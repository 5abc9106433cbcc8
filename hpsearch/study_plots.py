"""PNG plots of a whole study: optimization history, one parameter vs value, learning curves.

They read plain rows (see `report.trial_rows`), not Optuna objects, so they can be tested and
reused on any list of trials. Pruned and early-stopped runs are told apart by colour and line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from hpsearch.plots import baseline_lines, integer_axis, new_figure, save

# stop reason -> (colour, line style, label)
STOP_STYLE = {
    "early_stop": ("tab:blue", "-", "early-stopped (COMPLETE)"),
    "max_epochs": ("tab:green", "-", "ran all epochs (COMPLETE)"),
    "pruned": ("tab:gray", ":", "pruned"),
    "diverged": ("tab:red", "--", "diverged (pruned)"),
    "interrupted": ("tab:brown", "-.", "interrupted (FAIL)"),
}
OTHER_STYLE = ("tab:olive", "-.", "other")


def _style(row: dict[str, Any]) -> tuple[str, str, str]:
    return STOP_STYLE.get(row["stop_reason"], OTHER_STYLE)


def _trial_point(ax, row: dict[str, Any], x: Any, seen: set[str]) -> None:
    """One trial's best validation MSE at x: coloured by how it stopped, x when not COMPLETE;
    each stop kind labelled once for the legend."""
    color, _, label = _style(row)
    marker = "o" if row["state"] == "COMPLETE" else "x"
    ax.scatter(x, row["best_valid"], color=color, marker=marker, s=28, label=None if label in seen else label)
    seen.add(label)


def optimization_history(
    rows: list[dict[str, Any]], baselines: dict[str, float] | None, path: Path, title: str
) -> Path:
    """Each trial's best validation MSE in trial order, the best so far, and the baselines."""
    fig = new_figure()
    ax = fig.add_subplot()
    seen: set[str] = set()
    for r in rows:
        if r["best_valid"] is not None:
            _trial_point(ax, r, r["number"], seen)
    done = [r for r in rows if r["state"] == "COMPLETE" and r["value"] is not None]
    if done:
        best = np.minimum.accumulate([r["value"] for r in done])
        ax.step([r["number"] for r in done], best, where="post", color="black", lw=1.2, label="best so far")
    baseline_lines(ax, baselines)
    auto_log(ax, [r["best_valid"] for r in rows] + list((baselines or {}).values()))
    integer_axis(ax, "trial")
    ax.set_ylabel("best validation MSE of the trial")
    ax.set_title(title)
    ax.legend(fontsize=8)
    return save(fig, path)


def param_vs_value(
    rows: list[dict[str, Any]],
    param: str,
    baselines: dict[str, float] | None,
    path: Path,
    log: bool,
) -> Path:
    """One searched parameter against each trial's best validation MSE (pruned ones marked x)."""
    fig = new_figure()
    ax = fig.add_subplot()
    seen: set[str] = set()
    values = []
    for r in rows:
        x = r["params"].get(param)
        if x is None or r["best_valid"] is None:
            continue
        values.append(x)
        _trial_point(ax, r, x, seen)
    if log and values and all(isinstance(v, (int, float)) and v > 0 for v in values):
        ax.set_xscale("log")
    baseline_lines(ax, baselines)
    auto_log(ax, [r["best_valid"] for r in rows] + list((baselines or {}).values()))
    ax.set_xlabel(param)
    ax.set_ylabel("best validation MSE of the trial")
    ax.set_title(f"{param} vs value ({len(values)} trials)" if values else f"no trial has '{param}'")
    ax.legend(fontsize=8)
    return save(fig, path)


def auto_log(ax, values: list[float]) -> None:
    """Log y when values span more than 20x (a diverging or hopeless trial next to good ones)."""
    v = np.asarray([x for x in values if x is not None and np.isfinite(x) and x > 0])
    if len(v) and v.max() > 20 * v.min():
        ax.set_yscale("log")


def _curves(ax, rows: list[dict[str, Any]], legend: bool) -> None:
    seen = set()
    for r in rows:
        curve = r["valid_loss"]
        if not curve:
            continue
        color, style, label = _style(r)
        shown = None if (label in seen or not legend) else label
        ax.plot(np.arange(1, len(curve) + 1), curve, ls=style, color=color, lw=1, alpha=0.8, label=shown)
        seen.add(label)
        if r["best_epoch"]:
            ax.plot(r["best_epoch"], curve[r["best_epoch"] - 1], "o", ms=3, color=color)
    integer_axis(ax, "epoch")


def learning_curves(
    rows: list[dict[str, Any]], baselines: dict[str, float] | None, path: Path, title: str
) -> Path:
    """Validation MSE per epoch of every trial, coloured by how it stopped, best epochs dotted.

    Left: every curve, log scale when they span orders of magnitude. Right: the same curves
    zoomed on the range that matters, from the best epoch of any trial to just above the
    baselines: whether anything beats predicting a constant is decided there.
    """
    fig = new_figure(13, 5.5)
    full, zoom = fig.subplots(1, 2)
    _curves(full, rows, legend=True)
    _curves(zoom, rows, legend=False)
    for ax in (full, zoom):
        baseline_lines(ax, baselines)
    values = [v for r in rows for v in r["valid_loss"]]
    auto_log(full, values + list((baselines or {}).values()))
    base = list((baselines or {}).values())
    if values:
        floor = min(values + base)
        top = max(base) if base else float(np.quantile(values, 0.25))
        span = max(top - floor, 1e-3 * abs(top), 1e-12)
        zoom.set_ylim(floor - 0.1 * span, top + 0.6 * span)
    full.set_ylabel("validation MSE")
    full.set_title("all trials, all epochs", fontsize=9)
    zoom.set_title("zoom: best epochs against the baselines", fontsize=9)
    full.legend(fontsize=8)
    fig.suptitle(title)
    return save(fig, path)
