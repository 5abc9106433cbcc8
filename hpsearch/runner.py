"""Run a study: config -> data -> windows -> storage -> optimize, in that order.

Everything that can fail on the user's input (study file, data folder, storage URL) fails
before a study is created, so a failed start leaves the storage as it was.
"""

from __future__ import annotations

import dataclasses
import platform
from dataclasses import dataclass
from typing import Any

import optuna
import sklearn
import torch
from rich.console import Console

import hpsearch
from hpsearch.artifacts import TrialArtifacts
from hpsearch.cache import load_windows
from hpsearch.config import StudyConfig, from_dict
from hpsearch.data import Bars, LoadReport
from hpsearch.errors import ConfigError, mask_url
from hpsearch.metrics import baselines
from hpsearch.models import cpu_kernels
from hpsearch.objective import Objective, Surplus
from hpsearch.progress import SearchProgress, best_trials_table
from hpsearch.search import make_pruner, make_sampler, pruning_cells
from hpsearch.storage import open_storage, sqlite_path
from hpsearch.study_note import StudyNote
from hpsearch.train import resolve_device, valid_subset
from hpsearch.windows import WindowData

FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
RUNNING = (optuna.trial.TrialState.RUNNING,)
# Settings of the stored config that may change between runs of the same study: the budget,
# the text, where the data are read from (their identity is the fingerprint, checked apart) and
# the device a worker trains on.
MUTABLE = {("n_trials",), ("description",), ("data", "path"), ("training", "device")}


def _differences(stored: dict, now: dict, prefix: tuple = ()) -> list[str]:
    out = []
    for key in sorted(set(stored) | set(now)):
        path = (*prefix, key)
        if path in MUTABLE:
            continue
        a, b = stored.get(key), now.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, path)
        elif a != b:
            out.append(f"{'.'.join(path)} ({a!r} -> {b!r})")
    return out


def versions() -> dict[str, str]:
    import numpy
    import pandas

    return {
        "hpsearch": hpsearch.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "optuna": optuna.__version__,
        "numpy": numpy.__version__,
        "pandas": pandas.__version__,
        "scikit-learn": sklearn.__version__,
        "platform": platform.platform(),
    }


@dataclass
class Prepared:
    cfg: StudyConfig
    bars: Bars
    windows: WindowData
    valid_anchors: Any
    baselines: dict[str, float]  # naive forecasts' validation MSE at the study's default W
    baselines_by_window: dict[int, dict[str, float]]  # ... at every W the study can try


def prepare(cfg: StudyConfig, device: torch.device, use_cache: bool = True) -> Prepared:
    d = cfg.data
    # load_bars + build_windows, or their result from the disk cache (hpsearch/cache.py: keyed by
    # the files' bytes and the data-shaping config).
    bars, windows, _ = load_windows(d, cfg.split, cfg.embargo, cfg.max_output_window, use_cache)
    windows = windows.to(device)
    # The same validation windows for every trial (seeded by the study, not the trial), so that
    # trial values are comparable.
    valid = valid_subset(windows, cfg.training.valid_samples, cfg.seed)
    p = cfg.param("output_window")
    widths = sorted({d.output_window, *(int(w) for w in (p.values() if p else ()))})  # every W drawable
    valid_t = torch.as_tensor(valid, device=windows.y.device)
    # Each W's constants on the same validation windows; the train mean of that W's own targets.
    by_window = {
        w: baselines(windows.targets(valid_t, w).cpu().numpy(), windows.for_window(w).train_label_mean)
        for w in widths
    }
    return Prepared(cfg, bars, windows, valid, by_window[d.output_window], by_window)


def describe_data(console: Console, report: LoadReport, w: WindowData, fingerprint: dict) -> None:
    dropped = ", ".join(f"{k}: {v}" for k, v in report.dropped.items() if v) or "none"
    console.print(
        f"data: {fingerprint['n_tickers']} tickers from {fingerprint['source']}, "
        f"{fingerprint['first_date']} .. {fingerprint['last_date']}, {fingerprint['rows']} rows; "
        f"rows dropped: {dropped}; zero-volume rows: {report.zero_volume_rows}"
    )
    for ticker, why in {**report.skipped, **w.skipped}.items():
        console.print(f"[yellow]warning[/]: skipped {ticker}: {why}")
    for note in report.notes:
        console.print(f"[yellow]warning[/]: {note}")
    seg = "; ".join(
        f"{s.name} {s.first.date()} .. {s.last.date()} ({s.windows} windows)" for s in w.segments.values()
    )
    console.print(f"split: {seg}")


def check_resumable(study: optuna.Study, cfg: StudyConfig, fingerprint: dict) -> None:
    """A stored study must have been created from the same question and the same data."""
    stored = study.user_attrs.get("config")
    if stored is None:
        return
    diff = _differences(stored, cfg.to_dict())
    if diff:
        raise ConfigError(
            f"study '{cfg.name}' already exists in this storage with a different {', '.join(diff[:3])}"
            f"{' and more' if len(diff) > 3 else ''}; give the study a new `name` "
            f"(or delete it: hpsearch delete --study {cfg.name})"
        )
    old = study.user_attrs.get("data_fingerprint", {}).get("sha256")
    if old and old != fingerprint["sha256"]:
        raise ConfigError(
            f"study '{cfg.name}' was run on different data (fingerprint {old[:12]}, now "
            f"{fingerprint['sha256'][:12]}); give the study a new `name`"
        )


def open_study(
    cfg: StudyConfig, storage: str | optuna.storages.BaseStorage, prep: Prepared
) -> tuple[optuna.Study, int]:
    """Load the study (checking it asks the same question of the same data) or create it with
    its provenance. Returns the study and how many trials had been started before."""
    if isinstance(storage, str):
        storage = open_storage(storage)
    try:
        study = optuna.load_study(study_name=cfg.name, storage=storage)
        check_resumable(study, cfg, prep.bars.fingerprint)
        started = len(study.get_trials(deepcopy=False))
    except KeyError:
        started = 0
    study = optuna.create_study(
        study_name=cfg.name,
        storage=storage,
        sampler=make_sampler(cfg.sampler, cfg.seed + started),
        pruner=make_pruner(cfg.pruner, pruning_cells(cfg)),
        direction="minimize",
        load_if_exists=True,
    )
    if "config" not in study.user_attrs:  # written last: its presence means all of this was
        for params in cfg.enqueue:
            study.enqueue_trial(params, skip_if_exists=True)
        fp = prep.bars.fingerprint
        study.set_user_attr("data_fingerprint", {k: v for k, v in fp.items() if k != "file_sha256"})
        study.set_user_attr("data_files_sha256", fp["file_sha256"])
        study.set_user_attr("versions", versions())
        study.set_user_attr("baselines_valid_mse", prep.baselines)
        if len(prep.baselines_by_window) > 1:
            by_window = {str(w): b for w, b in prep.baselines_by_window.items()}
            study.set_user_attr("baselines_valid_mse_by_window", by_window)
        study.set_user_attr("valid_windows", int(len(prep.valid_anchors)))
        segments = {
            s.name: [str(s.first.date()), str(s.last.date()), s.windows]
            for s in prep.windows.segments.values()
        }
        study.set_user_attr("segments", segments)
        study.set_user_attr("config", cfg.to_dict())
    return study, started


def count(study: optuna.Study, states: tuple) -> int:
    return len(study.get_trials(deepcopy=False, states=states))


class Budget:
    """Stop at exactly `n_total` finished trials, even with several workers on one study.

    Optuna's MaxTrialsCallback stops a worker only after its own trial ends, so N workers can
    overshoot by N - 1. Here a worker stops once finished + running trials reach the total, and a
    trial that a race still let start beyond the total ends at once (FAIL, attribute
    `stop_reason: surplus`) without training. Queued (WAITING) trials do not count until a
    worker takes one.
    """

    def __init__(self, n_total: int) -> None:
        self.n_total = n_total

    def __call__(self, study: optuna.Study, _trial: optuna.trial.FrozenTrial) -> None:
        if count(study, (*FINISHED, *RUNNING)) >= self.n_total:
            study.stop()

    def is_surplus(self, trial: optuna.Trial) -> bool:
        ahead = [
            t
            for t in trial.study.get_trials(deepcopy=False, states=(*FINISHED, *RUNNING))
            if t.number < trial.number
        ]
        return len(ahead) >= self.n_total


def optimize(
    cfg: StudyConfig,
    study: optuna.Study,
    prep: Prepared,
    on_epoch: Any = None,
    on_trial_end: Any = None,
) -> None:
    """Run trials in this process until the study holds cfg.n_trials finished ones."""
    budget = Budget(cfg.n_trials)
    # Learning curves and prediction plots as Optuna artifacts beside the storage, and the study's
    # dashboard note rewritten after every trial (see hpsearch.artifacts, hpsearch.study_note).
    artifacts = TrialArtifacts.for_study(study, prep.baselines_by_window)
    objective = Objective(
        cfg, prep.windows, prep.valid_anchors, on_epoch=on_epoch, budget=budget, artifacts=artifacts
    )
    callbacks = [budget, StudyNote(cfg.n_trials, prep.baselines)] + ([on_trial_end] if on_trial_end else [])
    if count(study, FINISHED) < cfg.n_trials:
        study.optimize(objective, callbacks=callbacks, gc_after_trial=False, catch=(Surplus,))


def run_study(
    cfg: StudyConfig,
    storage_url: str,
    console: Console,
    n_trials: int | None = None,
    workers: int = 1,
) -> optuna.Study:
    if n_trials is not None:
        if n_trials < 1:
            raise ConfigError(f"--n-trials >= 1 must hold, got {n_trials}")
        cfg = dataclasses.replace(cfg, n_trials=n_trials)
    if workers < 1:
        raise ConfigError(f"--workers >= 1 must hold, got {workers}")
    device = resolve_device(cfg.training.device)
    # A server URL is checked before the data load (seconds to minutes) so that a typo fails at
    # once; a SQLite file is opened only after, as opening creates it.
    storage = None if sqlite_path(storage_url) else open_storage(storage_url)
    prep = prepare(cfg, device)
    describe_data(console, prep.bars.report, prep.windows, prep.bars.fingerprint)
    study, _ = open_study(cfg, storage or storage_url, prep)
    done = count(study, FINISHED)
    console.print(
        f"study '{cfg.name}' in {mask_url(storage_url)}: {done} of {cfg.n_trials} trials finished, "
        f"running {max(cfg.n_trials - done, 0)} on {device}"
        + (f" with {workers} workers" if workers > 1 else "")
    )
    if done < cfg.n_trials:
        if any(cpu_kernels.used_by(f, device) for f in {cfg.model_family, *cfg.family_models}):
            cpu_kernels.prepare(console)  # before any trial, and before workers start
        if workers > 1:
            from hpsearch.parallel import run_workers

            run_workers(cfg, storage_url, workers, console, done)
        else:
            with SearchProgress(console, cfg.n_trials, done, cfg.training.max_epochs) as progress:
                optimize(cfg, study, prep, progress.on_epoch, progress.on_trial_end)
    finished = count(study, FINISHED)
    if finished < cfg.n_trials:
        console.print(
            f"[yellow]warning[/]: {finished} of {cfg.n_trials} trials finished (failed or surplus trials "
            f"do not count); run the same command again to continue"
        )
    console.print(best_trials_table(study))
    return study


def stored_config(study: optuna.Study) -> StudyConfig:
    raw = study.user_attrs.get("config")
    if raw is None:
        raise ConfigError(f"study '{study.study_name}' was not created by hpsearch (no stored config)")
    return from_dict(raw, f"study '{study.study_name}' (stored config)")
