"""The only module that talks to Optuna trials: suggest -> build -> train -> report/prune -> value.

Two different stops, on purpose:
- overfitting (validation loss not improving for `patience` epochs) ends the trial COMPLETE
  with its best-epoch value: the trial was informative, it just peaked early;
- a hopeless trial (worse than the others at the same epoch) is PRUNED by the study's pruner.
The trial's value is the best validation loss, never the last one.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import optuna

from hpsearch.artifacts import Forecast, TrialArtifacts, best_predictions, valid_ic
from hpsearch.config import StudyConfig
from hpsearch.models import build_model, cpu_kernels
from hpsearch.search import suggest_params
from hpsearch.train import EpochResult, seed_everything, train
from hpsearch.windows import WindowData

EpochHook = Callable[[optuna.Trial, EpochResult], None]


class Surplus(Exception):
    """A trial that started after the study already had its n_trials finished or running."""


def _r(x: float) -> float:
    return float(f"{x:.6g}")


class Objective:
    def __init__(
        self,
        cfg: StudyConfig,
        data: WindowData,
        valid_anchors: np.ndarray,
        on_epoch: EpochHook | None = None,
        budget: Any = None,
        artifacts: TrialArtifacts | None = None,
    ) -> None:
        self.cfg = cfg
        self.data = data
        self.valid_anchors = valid_anchors
        self.on_epoch = on_epoch
        self.budget = budget  # has is_surplus(trial); None: no limit (a FixedTrial, a test)
        self.artifacts = artifacts  # PNGs for the dashboard; None: none written

    def __call__(self, trial: optuna.Trial) -> float:
        if self.budget is not None and self.budget.is_surplus(trial):
            trial.set_user_attr("stop_reason", "surplus")
            trial.study.stop()
            raise Surplus(f"trial {trial.number} is beyond the study's {self.cfg.n_trials} trials")
        history: list[EpochResult] = []
        try:
            return self._run(trial, history)
        except KeyboardInterrupt:
            # In training or after it (predictions, pictures): the trial ends FAIL and a rerun
            # retries it, so it must not keep the stop reason of a run that finished.
            self._record(trial, history, "interrupted")
            raise

    def _run(self, trial: optuna.Trial, history: list[EpochResult]) -> float:
        params = suggest_params(trial, self.cfg)
        run = self.cfg.with_params(params)
        seed = self.cfg.seed + trial.number  # each trial its own initialisation, recorded
        trial.set_user_attr("seed", seed)
        seed_everything(seed)
        data = self.data.for_window(run.data.output_window)
        model = build_model(run.model_family, run.model, data.spec)
        if cpu_kernels.used_by(run.model_family, data.x.device):
            cpu_kernels.ops()  # loaded (or found unavailable) now, so that the record is true
            trial.set_user_attr("cpu_kernels", cpu_kernels.status())  # fused kernels or torch's modules

        def report(ep: EpochResult) -> None:
            history.append(ep)
            trial.report(ep.valid_loss, ep.epoch)
            if self.on_epoch is not None:
                self.on_epoch(trial, ep)
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned at epoch {ep.epoch}: valid loss {ep.valid_loss:.6g}")

        try:
            result = train(model, data, run.training, seed, self.valid_anchors, on_epoch=report)
        except optuna.TrialPruned:
            self._record(trial, history, "pruned")
            self._artifacts(trial, history, data, "pruned")
            raise
        self._record(trial, history, result.stop_reason, seconds=result.seconds)
        if result.stop_reason == "diverged" or not math.isfinite(result.best_valid):
            # Never hand Optuna a NaN: a diverged run is pruned, its parameters and reason kept.
            self._artifacts(trial, history, data, result.stop_reason)
            raise optuna.TrialPruned("diverged: non-finite loss")
        trial.set_user_attr("valid_step1_mse", _r(result.best_valid_step1))
        forecast = best_predictions(model, data, self.valid_anchors, result.best_state)
        trial.set_user_attr("valid_ic", valid_ic(forecast, data))
        self._artifacts(trial, history, data, result.stop_reason, forecast)
        return result.best_valid

    def _artifacts(
        self,
        trial: optuna.Trial,
        history: list[EpochResult],
        data: WindowData,
        reason: str,
        forecast: Forecast | None = None,
    ) -> None:
        if self.artifacts is not None:  # never raises: a failed picture is a warning line
            self.artifacts.finished(trial, history, data, reason, forecast)

    @staticmethod
    def _record(
        trial: optuna.Trial, history: list[EpochResult], reason: str, seconds: float | None = None
    ) -> None:
        best = min(history, key=lambda e: e.valid_loss) if history else None
        trial.set_user_attr("stop_reason", reason)
        trial.set_user_attr("epochs", len(history))
        trial.set_user_attr("best_epoch", best.epoch if best else 0)
        trial.set_user_attr("train_loss", [_r(e.train_loss) for e in history])
        trial.set_user_attr("valid_loss", [_r(e.valid_loss) for e in history])
        trial.set_user_attr(
            "train_seconds", round(seconds if seconds is not None else sum(e.seconds for e in history), 2)
        )
