"""A study as researchers read it: tables of trials, the hand-written comparison, importances,
plots, and a report.md that stands on its own (`hpsearch report --study NAME`).
"""

from __future__ import annotations

import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import optuna
from rich.console import Console
from rich.table import Table

from hpsearch import study_plots
from hpsearch.progress import baselines_of, fmt_params
from hpsearch.tables import fmt, markdown

# The columns the reference lab's hand-written table had, in its order (c1, c2 only where present).
MODEL_COLUMNS = ("c1", "c2")


def trial_rows(study: optuna.Study) -> list[dict[str, Any]]:
    """One plain dict per trial: what the tables and plots need, nothing Optuna-shaped."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        a = t.user_attrs
        curve = list(a.get("valid_loss") or [v for _, v in sorted(t.intermediate_values.items())])
        value = t.value if t.state == optuna.trial.TrialState.COMPLETE else None
        end, start = t.datetime_complete, t.datetime_start
        stop = a.get("stop_reason") or ("pruned" if t.state == optuna.trial.TrialState.PRUNED else "-")
        rows.append(
            {
                "number": t.number,
                "state": t.state.name,
                "value": value,
                # a pruned trial has no value; its best epoch so far still places it on a plot
                "best_valid": value if value is not None else (min(curve) if curve else None),
                "best_epoch": a.get("best_epoch"),
                "epochs": a.get("epochs", len(curve)),
                "stop_reason": stop,
                "params": dict(t.params),
                "valid_loss": curve,
                "seconds": (end - start).total_seconds() if end and start else None,
                "train_seconds": a.get("train_seconds"),
                "step1": a.get("valid_step1_mse"),
            }
        )
    return rows


def setting(row: dict[str, Any], config: dict[str, Any], key: str) -> Any:
    """A trial's value of a model, data or training field: searched, else fixed in the study."""
    params = row["params"]
    family = params.get("family", (config.get("model") or {}).get("family"))
    for name in (key, f"{family}.{key}"):
        if name in params:
            return params[name]
    if key == "family":
        return family
    if (config.get("model") or {}).get("family") == family and key in (config.get("model") or {}):
        return config["model"][key]
    for section in ("data", "training"):
        if key in (config.get(section) or {}):
            return config[section][key]
    return None


def trials_grid(rows: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    header = ["trial", "state", "value", "best epoch", "stop", "params", "duration s"]
    out = []
    for r in rows:
        out.append(
            [
                str(r["number"]),
                r["state"],
                fmt(r["value"], 6),
                f"{r['best_epoch'] if r['best_epoch'] is not None else '-'}/{r['epochs']}",
                r["stop_reason"],
                fmt_params(r["params"]),
                fmt(round(r["seconds"], 1)) if r["seconds"] is not None else "-",
            ]
        )
    return header, out


def comparison_grid(
    rows: list[dict[str, Any]], config: dict[str, Any], baselines: dict[str, dict[str, float]]
) -> tuple[list[str], list[list[str]]]:
    """The reference lab's table, one row per finished trial, best first, baselines below (per W,
    `baselines` maps "W" -> {"zero": mse, "train_mean": mse}); with several W a step-1 column."""
    finished = sorted((r for r in rows if r["best_valid"] is not None), key=lambda r: r["best_valid"])
    model_cols = [c for c in MODEL_COLUMNS if any(setting(r, config, c) is not None for r in finished)]
    several = len(baselines) > 1
    header = ["trial", "family", *model_cols, "lr", "label scale", "output window"]
    header += ["best valid MSE", *(["step-1 MSE"] if several else []), "stop", "training s"]
    out = []
    for r in finished:
        best = fmt(r["best_valid"], 6) + ("" if r["state"] == "COMPLETE" else f" ({r['state'].lower()})")
        cells = [str(r["number"]), str(setting(r, config, "family"))]
        cells += [fmt(setting(r, config, c)) for c in model_cols]
        cells += [fmt(setting(r, config, k)) for k in ("lr", "label_scale", "output_window")]
        cells += [
            best,
            *([fmt(r["step1"], 6) if r["step1"] is not None else "-"] if several else []),
            r["stop_reason"],
            f"{r['train_seconds']:.1f}" if r["train_seconds"] is not None else "-",
        ]
        out.append(cells)
    for w, base in sorted(baselines.items(), key=lambda kv: int(kv[0])):
        for name, value in base.items():
            label = f"predict {name.replace('_', ' ')}" + (f" (W={w})" if several else "")
            tail = [fmt(value, 6), *([fmt(base_step1(baselines, name), 6)] if several else []), "", ""]
            out.append([label, "(naive baseline)"] + [""] * (len(header) - 2 - len(tail)) + tail)
    return header, out


def base_step1(baselines: dict[str, dict[str, float]], name: str) -> float | None:
    """A baseline's step-1 MSE: the W = 1 baseline, scored on the same first labels."""
    return (baselines.get("1") or {}).get(name)


def cells_grid(
    rows: list[dict[str, Any]], config: dict[str, Any], baselines: dict[str, dict[str, float]]
) -> tuple[list[str], list[list[str]]] | None:
    """One row per (family, output window) the study tried, when it searched either: the question
    "which family, which W?" answered on step-1 MSE, the one metric on the same labels for every W."""
    searched = set(config.get("search") or {})
    if not searched & {"family", "output_window"}:
        return None
    cells: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for r in rows:
        w = setting(r, config, "output_window")
        cells.setdefault((str(setting(r, config, "family")), int(w) if w is not None else 1), []).append(r)
    header = ["family", "W", "trials (complete/pruned/other)", "best valid MSE (all W steps)"]
    header += ["predict zero (same W)", "best step-1 MSE", "predict zero step 1", "trial seconds"]
    out = []
    for (family, w), group in sorted(cells.items()):
        done = [r for r in group if r["value"] is not None]
        n_pruned = sum(r["state"] == "PRUNED" for r in group)
        step1 = [r["step1"] for r in done if r["step1"] is not None]
        seconds = sum(r["seconds"] or 0.0 for r in group)
        out.append(
            [
                family,
                str(w),
                f"{len(group)} ({len(done)}/{n_pruned}/{len(group) - len(done) - n_pruned})",
                fmt(min(r["value"] for r in done), 6) if done else "-",
                fmt((baselines.get(str(w)) or {}).get("zero"), 6),
                fmt(min(step1), 6) if step1 else "-",
                fmt(base_step1(baselines, "zero"), 6),
                f"{seconds:.0f}",
            ]
        )
    return header, out


def importances(study: optuna.Study) -> tuple[dict[str, float], str]:
    """Optuna's parameter importances, or an empty dict and why there are none."""
    done = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if len(done) < 2:
        return {}, f"not computed: needs at least 2 completed trials, the study has {len(done)}"
    names = {k for t in done for k in t.params}
    if not names:
        return {}, "not computed: the study searched no parameter"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = optuna.importance.get_param_importances(study)
    except (ValueError, RuntimeError) as exc:
        return {}, f"not computed: {str(exc).splitlines()[0]}"
    if len(result) == 1:
        return result, "one searched parameter: its importance is 1 by definition"
    return result, f"fANOVA over {len(done)} completed trials (Optuna's default evaluator)"


def rich_table(title: str, header: list[str], rows: list[list[str]]) -> Table:
    table = Table(title=title)
    for i, col in enumerate(header):
        table.add_column(
            col, justify="left" if i in (0, 1) or col in ("stop", "params", "state") else "right"
        )
    for row in rows:
        table.add_row(*row)
    return table


def _plot_param(config: dict[str, Any], rows: list[dict[str, Any]], wanted: str) -> tuple[str, bool]:
    searched = list((config.get("search") or {}).keys()) or sorted({k for r in rows for k in r["params"]})
    param = wanted if wanted in searched or not searched else searched[0]
    spec = (config.get("search") or {}).get(param) or {}
    return param, bool(spec.get("log"))


def build_report(study: optuna.Study, out: Path, console: Console, param: str = "lr") -> Path:
    attrs = study.user_attrs
    config = attrs.get("config") or {}
    by_window = baselines_of(study)  # "W" -> baselines at that W
    baselines = by_window.get(str(config.get("data", {}).get("output_window", 1))) or attrs.get(
        "baselines_valid_mse"
    )
    rows = trial_rows(study)
    out.mkdir(parents=True, exist_ok=True)

    name = study.study_name
    plot_param, log = _plot_param(config, rows, param)
    figures = {
        "optimization history": study_plots.optimization_history(
            rows, baselines, out / "optimization_history.png", f"{name}: best validation MSE per trial"
        ),
        f"{plot_param} vs value": study_plots.param_vs_value(
            rows, plot_param, baselines, out / f"param_{plot_param}.png", log
        ),
        "learning curves": study_plots.learning_curves(
            rows, baselines, out / "learning_curves.png", f"{name}: validation MSE per epoch, every trial"
        ),
    }
    trials = trials_grid(rows)
    comparison = comparison_grid(rows, config, by_window)
    cells = cells_grid(rows, config, by_window)
    imp, imp_note = importances(study)

    console.print(rich_table(f"study '{name}': {len(rows)} trials", *trials))
    console.print(rich_table("comparison (best validation MSE first)", *comparison))
    if cells:
        console.print(rich_table("by family and output window (compare W on step-1 MSE)", *cells))
    console.print(f"parameter importances: {fmt_params(imp) or '-'} ({imp_note})")

    text = report_markdown(study, rows, trials, comparison, cells, imp, imp_note, figures, out)
    path = out / "report.md"
    path.write_text(text)
    console.print(f"wrote {path} and {len(figures)} plots in {out}/")
    return path


def report_markdown(
    study: optuna.Study,
    rows: list[dict[str, Any]],
    trials: tuple[list[str], list[list[str]]],
    comparison: tuple[list[str], list[list[str]]],
    cells: tuple[list[str], list[list[str]]] | None,
    imp: dict[str, float],
    imp_note: str,
    figures: dict[str, Path],
    out: Path,
) -> str:
    attrs = study.user_attrs
    config = attrs.get("config") or {}
    fp = attrs.get("data_fingerprint") or {}
    segments = attrs.get("segments") or {}
    states = Counter(r["state"] for r in rows)
    done = [r for r in rows if r["value"] is not None]
    best = min(done, key=lambda r: r["value"]) if done else None
    lines = [f"# Study report: {study.study_name}", ""]
    if config.get("description"):
        lines += [" ".join(str(config["description"]).split()), ""]
    lines += [
        f"{len(rows)} trials: " + ", ".join(f"{n} {s.lower()}" for s, n in sorted(states.items())) + ".",
        f"Value: validation MSE over all output steps at each trial's best epoch, on "
        f"{attrs.get('valid_windows', '?')} fixed validation windows (the test segment is never used here).",
        "",
    ]
    if best:
        w = setting(best, config, "output_window")
        base = baselines_of(study).get(str(w if w is not None else 1)) or {}
        lines += [
            f"**Best: trial {best['number']}, validation MSE {fmt(best['value'], 6)}** "
            f"({fmt_params(best['params'])}, epoch {best['best_epoch']}/{best['epochs']}, "
            f"{best['stop_reason']}). Baselines on the same windows at W={w if w is not None else 1}: "
            + ", ".join(f"predict {k.replace('_', ' ')} {fmt(v, 6)}" for k, v in base.items())
            + f". Retrain and test it: `hpsearch export --study {study.study_name}` then "
            f"`hpsearch train --config runs/{study.study_name}/best.yaml`.",
            "",
        ]
    lines += ["## Comparison", "", markdown(*comparison), ""]
    if cells:
        lines += [
            "## By family and output window",
            "",
            "The value of a W = 48 trial is its MSE over 48 label days, not the same targets as W = 1's "
            "(see the baselines at each W); step-1 MSE is scored on the same first label of the same "
            "windows for every W, and is the column to compare W on. Pruning compares a trial only "
            "with trials of its own W.",
            "",
            markdown(*cells),
            "",
        ]
    lines += ["## Parameter importances", "", imp_note + ".", ""]
    if imp:
        lines += [markdown(["parameter", "importance"], [[k, f"{v:.3f}"] for k, v in imp.items()]), ""]
    lines += ["## Plots", ""]
    for title, path in figures.items():
        lines += [f"### {title}", "", f"![{title}]({path.relative_to(out).as_posix()})", ""]
    lines += [
        "Learning curves: blue solid = early-stopped (COMPLETE, value = best epoch, dot), green = ran "
        "all epochs, grey dotted = pruned (stopped as hopeless by the pruner), red dashed = diverged. "
        "Horizontal lines: the naive baselines.",
        "",
        "## All trials",
        "",
        markdown(*trials),
        "",
        "## Data and provenance",
        "",
        f"- data: {fp.get('n_tickers', '?')} tickers from {fp.get('source', '?')}, "
        f"{fp.get('first_date', '?')} .. {fp.get('last_date', '?')}, {fp.get('rows', '?')} rows, "
        f"sha256 {str(fp.get('sha256', '?'))[:16]}",
    ]
    for seg, (first, last, n) in segments.items():
        lines.append(f"- {seg}: {first} .. {last}, {n} windows")
    model = config.get("model") or {}
    searched = set(config.get("search") or {})
    training = {k: v for k, v in (config.get("training") or {}).items() if k not in searched}
    lines += [
        f"- model (fixed): {fmt_params({k: v for k, v in model.items() if k not in searched})}",
        f"- training (fixed): {fmt_params(training)}",
        f"- search: {config.get('search')}",
        f"- sampler: {config.get('sampler')}; pruner: {config.get('pruner')}; seed {config.get('seed')}",
        f"- versions: {fmt_params(attrs.get('versions') or {})}",
        "",
    ]
    return "\n".join(lines)
