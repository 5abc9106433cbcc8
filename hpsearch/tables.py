"""The final run's metrics as one table, for the terminal (rich) and for Markdown files.

Rows are metrics; columns are the model and the two naive forecasts on validation and on test,
so that every number stands beside what predicting a constant would have scored on the same rows.
"""

from __future__ import annotations

import math
from typing import Any

from rich.table import Table

FORECASTS = (("model", "model"), ("predict_zero", "zero"), ("predict_train_mean", "train mean"))
ROWS = (
    ("mse", "MSE"),
    ("mae", "MAE"),
    ("ic", "IC"),
    ("rank_ic", "Rank IC"),
    ("icir", "ICIR"),
    ("hit_rate", "hit rate"),
    ("pred_std", "std of forecast"),
)


def fmt(x: Any, digits: int = 4) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a"
    if isinstance(x, float):
        return f"{x:.{digits}g}" if abs(x) >= 1e-3 or x == 0 else f"{x:.{digits}e}"
    return str(x)


def _grid(summary: dict[str, Any], step: int | None = None) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the comparison; `step` None: averaged over the W steps."""
    segs = ("valid", "test")
    header = ["metric"] + [f"{seg} {label}" for seg in segs for _, label in FORECASTS]
    rows = []
    for key, label in ROWS:
        row = [label]
        for seg in segs:
            s = summary["segments"][seg]
            for name, _ in FORECASTS:
                m = s[name]["mean"] if step is None else s[name]["per_step"][step]
                row.append(fmt(m[key]))
        rows.append(row)
    truth = ["std of truth"]
    for seg in segs:
        s = summary["segments"][seg]
        value = s["true_std"] if step is None else s["true_std_per_step"][step]
        truth += [fmt(value), "", ""]
    rows.append(truth)
    return header, rows


def per_step_grid(summary: dict[str, Any], seg: str) -> tuple[list[str], list[list[str]]]:
    """One row per output step: the model's MSE beside the baselines', and its other metrics."""
    s = summary["segments"][seg]
    header = ["step", "MSE", "MSE zero", "MSE train mean", "MAE", "IC", "Rank IC", "ICIR", "hit rate"]
    header += ["std forecast", "std truth"]
    rows = []
    for k, m in enumerate(s["model"]["per_step"]):
        rows.append(
            [str(k + 1), fmt(m["mse"]), fmt(s["predict_zero"]["per_step"][k]["mse"])]
            + [fmt(s["predict_train_mean"]["per_step"][k]["mse"])]
            + [fmt(m[key]) for key in ("mae", "ic", "rank_ic", "icir", "hit_rate", "pred_std")]
            + [fmt(s["true_std_per_step"][k])]
        )
    return header, rows


def metrics_table(summary: dict[str, Any]) -> Table:
    W = summary["label"]["output_window"]
    segs = summary["segments"]
    title = (
        f"{summary['name']}: valid {segs['valid']['first']} .. {segs['valid']['last']} "
        f"({segs['valid']['windows']} windows), test {segs['test']['first']} .. {segs['test']['last']} "
        f"({segs['test']['windows']} windows)" + (f", averaged over {W} steps" if W > 1 else "")
    )
    header, rows = _grid(summary)
    table = Table(title=title)
    for i, col in enumerate(header):
        table.add_column(col, justify="left" if i == 0 else "right", style="bold" if "model" in col else None)
    for row in rows:
        table.add_row(*row)
    return table


def markdown(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def metrics_markdown(summary: dict[str, Any]) -> str:
    t = summary["training"]
    segs = summary["segments"]
    W = summary["label"]["output_window"]
    out = [
        f"# Final run: {summary['name']}",
        "",
        f"Config `{summary['config']}`, seed {summary['seed']}, device {summary['device']}. "
        f"Trained {t['epochs']} epochs ({t['stop_reason']}), weights of epoch {t['best_epoch']} kept; "
        f"validation MSE on the search's {t['valid_subset_windows']} windows "
        f"{fmt(t['best_valid_subset_mse'], 6)}"
        + (f" (search: {fmt(t['search_value'], 6)})" if t["search_value"] is not None else "")
        + ".",
        "",
        f"Validation {segs['valid']['first']} .. {segs['valid']['last']} ({segs['valid']['windows']} "
        f"windows), test {segs['test']['first']} .. {segs['test']['last']} ({segs['test']['windows']} "
        "windows), all of each segment. Label: "
        f"{summary['label']['horizon']}-day forward return x {summary['label']['label_scale']}.",
        "",
        "## Averaged over steps" if W > 1 else "## Metrics",
        "",
        markdown(*_grid(summary)),
    ]
    if W > 1:
        out += ["", "## Per step (test)", "", markdown(*per_step_grid(summary, "test"))]
        out += ["", "## Per step (validation)", "", markdown(*per_step_grid(summary, "valid"))]
    if summary.get("findings"):
        out += ["", "## Findings", ""] + [f"- **{n}**" for n in summary["findings"]]
    out += ["", "## Notes", ""] + [f"- {n}" for n in summary["notes"]]
    return "\n".join(out)
