"""From an exported config to a final result: retrain, evaluate once on test, write everything.

`hpsearch train --config best.yaml` rebuilds the data, split and model the search used, trains
with the same loop and early-stopping rule on the same validation windows (so that the search's
value is reproduced, a check in itself), keeps the best validation epoch's weights, then scores
the FULL validation and test segments once, beside the naive baselines on the same rows.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from rich.console import Console

from hpsearch import plots
from hpsearch.config import StudyConfig
from hpsearch.errors import ConfigError, HpsearchError
from hpsearch.export import RUN_KEYS, load_run_config, write_yaml
from hpsearch.metrics import UNDEFINED_FOR_CONSTANT, compare_to_baselines, ic_by_date
from hpsearch.models import build_model, cpu_kernels
from hpsearch.runner import Prepared, describe_data, prepare, versions
from hpsearch.tables import metrics_markdown, metrics_table
from hpsearch.train import EpochResult, TrainResult, predict, resolve_device, seed_everything, train
from hpsearch.windows import WindowData

DEFAULT_PLOT_TICKERS = ("BIIB", "DOV")
FLAT_RATIO = 0.1  # prediction std below this share of the truth's: called a flat forecast


@dataclass
class FinalRun:
    out: Path
    metrics: dict[str, Any]
    result: TrainResult


def study_seed(cfg: StudyConfig, extras: dict) -> int:
    """The seed the search drew its validation subsample with (the study's, not the trial's)."""
    result = extras.get("result") or {}
    if result.get("valid_subset_seed") is not None:
        return int(result["valid_subset_seed"])
    if result.get("trial") is not None:
        return cfg.seed - int(result["trial"])  # the objective seeds trial k with study seed + k
    return cfg.seed


def check_provenance(extras: dict, prep: Prepared, where: str, console: Console) -> None:
    prov = extras.get("provenance") or {}
    old = (prov.get("data_fingerprint") or {}).get("sha256")
    new = prep.bars.fingerprint["sha256"]
    if old and old != new:
        raise ConfigError(
            f"{where}: the data differ from those the config was searched on (fingerprint "
            f"{old[:12]}, now {new[:12]}); point data.path at the original files, or delete "
            f"`provenance` from the file to train on these data anyway"
        )
    was, now = (prov.get("versions") or {}).get("torch"), versions()["torch"]
    if was and was != now:
        console.print(f"[yellow]warning[/]: searched with torch {was}, now {now}: values may differ slightly")


def plot_tickers(requested: list[str] | None, available: list[str]) -> list[str]:
    if requested:
        wanted = [t.upper() for t in requested]
        absent = [t for t in wanted if t not in available]
        if absent:
            raise HpsearchError(
                f"--tickers: not in the data: {', '.join(absent)}; available: {', '.join(available)}"
            )
        return wanted
    return [t for t in DEFAULT_PLOT_TICKERS if t in available] or available[:2]


def score(model: torch.nn.Module, w: WindowData, segment: str) -> dict[str, Any]:
    """Predictions of a whole segment and their metrics beside the baselines."""
    anchors = w.anchors[segment]
    pred, true = predict(model, w, anchors)  # (N, W) each
    dates = w.row_date[anchors]
    return {
        "anchors": anchors,
        "dates": dates,
        "pred": pred,
        "true": true,
        "metrics": compare_to_baselines(pred, true, dates, w.train_label_mean),
        "ic_series": ic_by_date(pred[:, 0], true[:, 0], dates),
    }


def predictions_frame(w: WindowData, scored: dict[str, Any]) -> pd.DataFrame:
    """One row per (forecast day, ticker, step); step 1 is the first output."""
    anchors, pred, true = scored["anchors"], scored["pred"], scored["true"]
    N, W = pred.shape
    tickers = np.array(w.tickers)[w.ticker.cpu().numpy()[anchors]]
    return pd.DataFrame(
        {
            "date": np.repeat(pd.to_datetime(scored["dates"]).strftime("%Y-%m-%d"), W),
            "ticker": np.repeat(tickers, W),
            "step": np.tile(np.arange(1, W + 1), N),
            "y_true": true.ravel(),
            "y_pred": pred.ravel(),
        }
    )


def _json_ready(obj: Any) -> Any:
    """NaN -> None: JSON has no NaN; an undefined metric is written as null (see `notes`)."""
    if isinstance(obj, dict):
        return {k: _json_ready(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_ready(v) for v in obj]
    if isinstance(obj, (float, np.floating)):
        return None if not math.isfinite(obj) else float(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def segment_summary(w: WindowData, segment: str, scored: dict[str, Any]) -> dict[str, Any]:
    s = w.segments[segment]
    m = scored["metrics"]
    return {
        "first": str(s.first.date()),
        "last": str(s.last.date()),
        "windows": int(len(scored["anchors"])),
        "dates": int(len(np.unique(scored["dates"]))),
        **m,
        "std_ratio": m["model"]["mean"]["pred_std"] / m["true_std"] if m["true_std"] > 0 else math.nan,
    }


DEFINITIONS = [
    f"{', '.join(UNDEFINED_FOR_CONSTANT)} of a constant forecast (both baselines) are undefined: null.",
    "hit_rate of predict_zero is null: a zero forecast calls no direction.",
    "IC and Rank IC are means over dates of the cross-sectional correlation; ICIR = IC mean / IC "
    "std over dates (not annualized).",
]


def findings(summary: dict[str, Any]) -> list[str]:
    """What a reader must not miss: no gain over a constant, a flat forecast, a changed result."""
    out = []
    for seg in ("valid", "test"):
        s = summary["segments"][seg]
        model = s["model"]["mean"]["mse"]
        name, best = min(
            ((k, s[k]["mean"]["mse"]) for k in ("predict_zero", "predict_train_mean")), key=lambda kv: kv[1]
        )
        if model >= best:
            out.append(
                f"NO GAIN on {seg}: the model's MSE {model:.6g} is not below {name.replace('_', ' ')}'s "
                f"{best:.6g}."
            )
        ratio = s["std_ratio"]
        if math.isfinite(ratio) and ratio < FLAT_RATIO:
            out.append(
                f"FLAT FORECAST on {seg}: the prediction's std is {ratio:.1%} of the truth's; the model "
                "predicts nearly the same value for every window."
            )
    search = summary["training"].get("search_value")
    if search is not None and not summary["training"]["reproduced_search_value"]:
        out.append(
            f"the search's value {search:.6g} was not reproduced (retrained "
            f"{summary['training']['best_valid_subset_mse']:.6g}): different device, threads or versions?"
        )
    return out


def write_plots(out: Path, result: TrainResult, prep: Prepared, scored: dict, tickers: list[str], seed: int):
    w = prep.windows
    plots.loss_curves(
        [e.train_loss for e in result.history],
        [e.valid_loss for e in result.history],
        result.best_epoch,
        prep.baselines,
        out / "loss_curves.png",
        f"{prep.cfg.name}: loss per epoch (validation: the search's {len(prep.valid_anchors)} windows)",
    )
    test = scored["test"]
    ids = w.ticker.cpu().numpy()[test["anchors"]]
    for t in tickers:
        mine = ids == w.tickers.index(t)
        plots.test_segments(
            test["dates"][mine],
            test["pred"][mine],
            test["true"][mine],
            t,
            out / f"test_segments_{t}.png",
            seed,
        )
    plots.scatter(test["pred"], test["true"], out / "scatter_test.png", f"{prep.cfg.name}: test, all steps")
    plots.ic_over_time({s: scored[s]["ic_series"] for s in ("valid", "test")}, out / "ic_over_time.png")


def summarize(
    cfg: StudyConfig,
    config: Path,
    dev: torch.device,
    prep: Prepared,
    result: TrainResult,
    scored: dict[str, dict[str, Any]],
    extras: dict,
) -> dict[str, Any]:
    """Everything metrics.json holds: the training run, each segment beside its baselines."""
    search_value = (extras.get("result") or {}).get("value")
    summary: dict[str, Any] = {
        "name": cfg.name,
        "config": str(config),
        "seed": cfg.seed,
        "device": str(dev),
        "label": {
            "what": "forward return over `horizon` trading days x label_scale, one per output step",
            "horizon": cfg.data.horizon,
            "label_scale": cfg.data.label_scale,
            "output_window": cfg.data.output_window,
        },
        "training": {
            "best_epoch": result.best_epoch,
            "epochs": len(result.history),
            "stop_reason": result.stop_reason,
            "seconds": round(result.seconds, 2),
            "best_valid_subset_mse": result.best_valid,
            "valid_subset_windows": int(len(prep.valid_anchors)),
            "search_value": search_value,
            "reproduced_search_value": search_value is not None
            and math.isclose(result.best_valid, search_value, rel_tol=1e-6),
        },
        "segments": {s: segment_summary(prep.windows, s, scored[s]) for s in ("valid", "test")},
    }
    summary["findings"] = findings(summary)
    summary["notes"] = DEFINITIONS
    return summary


def provenance_doc(
    cfg: StudyConfig, config: Path, dev: torch.device, prep: Prepared, extras: dict, started: float
) -> dict[str, Any]:
    """What the result was computed from, saved next to it."""
    return {
        "config_file": str(config.resolve()),
        "config_sha256": hashlib.sha256(config.read_bytes()).hexdigest(),
        "seed": cfg.seed,
        "valid_subset_seed": study_seed(cfg, extras),
        "device": str(dev),
        "cpu_kernels": cpu_kernels.status(),  # whether the model ran hpsearch's CPU kernels
        "data_fingerprint": {k: v for k, v in prep.bars.fingerprint.items() if k != "file_sha256"},
        "data_files_sha256": prep.bars.fingerprint["file_sha256"],
        "segments": {
            s.name: [str(s.first.date()), str(s.last.date()), s.windows]
            for s in prep.windows.segments.values()
        },
        "versions": versions(),
        "search": extras.get("result"),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "seconds": round(time.time() - started, 2),
    }


def run_final(
    config: str | Path,
    console: Console,
    out: str | Path | None = None,
    tickers: list[str] | None = None,
    device: str | None = None,
    with_plots: bool = True,
) -> FinalRun:
    config = Path(config)
    cfg, extras = load_run_config(config)
    if device:
        cfg = dataclasses.replace(cfg, training=dataclasses.replace(cfg.training, device=device))
    dev = resolve_device(cfg.training.device)
    # Validation subsample drawn as the search drew it, so that early stopping sees the same windows.
    prep = prepare(dataclasses.replace(cfg, seed=study_seed(cfg, extras)), dev)
    describe_data(console, prep.bars.report, prep.windows, prep.bars.fingerprint)
    check_provenance(extras, prep, str(config), console)
    chosen = plot_tickers(tickers, prep.windows.tickers)
    if len(prep.windows.anchors["test"]) == 0:
        raise HpsearchError(f"{config}: the test segment has no windows: nothing to evaluate")
    out = Path(out) if out else Path("runs") / cfg.name / "final"

    seed_everything(cfg.seed)
    model = build_model(cfg.model_family, cfg.model, prep.windows.spec)

    def show(ep: EpochResult) -> None:
        console.print(
            f"epoch {ep.epoch:>3}  train {ep.train_loss:.6g}  valid {ep.valid_loss:.6g}  "
            f"best {ep.best_valid:.6g} (epoch {ep.best_epoch})  {ep.seconds:.1f}s"
        )

    if cpu_kernels.used_by(cfg.model_family, dev):
        cpu_kernels.prepare(console)  # built before training, not inside its first epoch
    console.print(f"training {cfg.name} ({cfg.model_family}, seed {cfg.seed}) on {dev}")
    started = time.time()
    result = train(model, prep.windows, cfg.training, cfg.seed, prep.valid_anchors, on_epoch=show)
    if result.best_state is None:
        raise HpsearchError(f"{config}: training diverged before its first validation epoch: no model")
    model.load_state_dict(result.best_state)
    # The one evaluation on test, after training is over and the weights are fixed.
    scored = {s: score(model, prep.windows, s) for s in ("valid", "test")}

    summary = summarize(cfg, config, dev, prep, result, scored, extras)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(_json_ready(summary), indent=2) + "\n")
    predictions_frame(prep.windows, scored["test"]).to_csv(
        out / "predictions.csv", index=False, float_format="%.8g"
    )
    torch.save(result.best_state, out / "model.pt")
    resolved = {k: v for k, v in cfg.to_dict().items() if k in RUN_KEYS}
    write_yaml(resolved, out / "config.yaml")
    provenance = provenance_doc(cfg, config, dev, prep, extras, started)
    (out / "provenance.json").write_text(json.dumps(_json_ready(provenance), indent=2) + "\n")
    if with_plots:
        write_plots(out, result, prep, scored, chosen, cfg.seed)
    (out / "metrics.md").write_text(metrics_markdown(summary) + "\n")

    console.print(metrics_table(summary))
    for line in summary["findings"]:
        console.print(f"[yellow]finding[/]: {line}")
    console.print(f"wrote {out}/: metrics.json, metrics.md, predictions.csv, model.pt, config.yaml, ...")
    return FinalRun(out, summary, result)
