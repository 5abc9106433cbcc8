"""What a finished trial leaves for optuna-dashboard: PNG artifacts in a filesystem artifact store.

Trial attributes stay small (numbers and two short loss lists); pictures are Optuna artifacts,
files in a folder beside the storage (`runs/artifacts/` beside the default `runs/hpsearch.db`),
linked to their trial by a system attribute, and shown by the dashboard on the trial's page:

- `trial_<n>_learning_curve.png`: train and validation loss per epoch, the best epoch marked,
  the naive baselines as lines; for every finished trial with a history (pruned ones too);
- `trial_<n>_valid_predictions.png`: the best epoch's forecast of a few tickers against the
  truth, on the validation windows the trial was scored on; for COMPLETE trials (a pruned
  trial's weights were not kept).

Drawing is cheap (well under a second a trial) and never fails a trial: an artifact that cannot be
written is one warning line on the `hpsearch` logger, and the trial goes on.
"""

from __future__ import annotations

import logging
import math
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import optuna
import torch
from matplotlib.dates import AutoDateLocator, ConciseDateFormatter
from matplotlib.ticker import MaxNLocator
from optuna.artifacts import FileSystemArtifactStore, upload_artifact
from torch import nn

from hpsearch import plots
from hpsearch.artifact_store import artifact_dir, open_store, storage_url
from hpsearch.metrics import ic
from hpsearch.train import EpochResult, predict
from hpsearch.windows import WindowData

log = logging.getLogger("hpsearch")

# The tickers `hpsearch train` plots by default, then the first others, up to PLOT_TICKERS.
PREFERRED_TICKERS = ("BIIB", "DOV")
PLOT_TICKERS = 3
DPI = 80


@dataclass(frozen=True)
class Forecast:
    anchors: np.ndarray  # (N,) windows, in anchor order
    pred: np.ndarray  # (N, W)
    true: np.ndarray  # (N, W)


def best_predictions(
    model: nn.Module, data: WindowData, anchors: np.ndarray, best_state: dict | None
) -> Forecast:
    """The best epoch's forecasts of `anchors` (loads best_state into the model): one validation
    pass, which the IC and the prediction plot share."""
    if best_state is not None:
        model.load_state_dict(best_state)
    pred, true = predict(model, data, anchors)
    return Forecast(anchors, pred, true)


def valid_ic(forecast: Forecast, data: WindowData) -> float | None:
    """Step-1 IC over the validation windows; None where undefined (a constant forecast)."""
    value = ic(forecast.pred[:, 0], forecast.true[:, 0], data.row_date[forecast.anchors])
    return float(f"{value:.6g}") if math.isfinite(value) else None


class TrialArtifacts:
    """Writes a trial's PNGs into `store` and links them to the trial (Optuna artifacts)."""

    def __init__(
        self,
        store: FileSystemArtifactStore,
        baselines_by_window: dict[int, dict[str, float]] | None = None,
        tickers: int = PLOT_TICKERS,
    ) -> None:
        self.store = store
        self.baselines_by_window = baselines_by_window or {}
        self.n_tickers = tickers

    @classmethod
    def for_study(
        cls, study: optuna.Study, baselines_by_window: dict[int, dict[str, float]] | None = None
    ) -> TrialArtifacts | None:
        url = storage_url(study)
        folder = artifact_dir(url) if url else None
        return None if folder is None else cls(open_store(folder), baselines_by_window)

    def finished(
        self,
        trial: optuna.Trial,
        history: Sequence[EpochResult],
        data: WindowData,
        reason: str,
        forecast: Forecast | None = None,
    ) -> None:
        """Learning curve for any trial with a history; with the best epoch's `forecast`, the
        validation prediction plot too. Each failure is one logged warning, never raised."""
        n = trial.number
        drawings: list[tuple[str, Callable[[Path], Path]]] = []
        if history:
            drawings.append(
                ("learning curve", lambda tmp: self._learning_curve(n, history, data, reason, tmp))
            )
        if forecast is not None:
            drawings.append(("validation predictions", lambda tmp: self._predictions(n, forecast, data, tmp)))
        for what, draw in drawings:
            try:
                with tempfile.TemporaryDirectory(prefix="hpsearch-artifact-") as tmp:
                    path = draw(Path(tmp))
                    upload_artifact(artifact_store=self.store, file_path=str(path), study_or_trial=trial)
            except Exception as exc:  # a picture must never cost the trial; say what went wrong
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
                log.warning(
                    "warning: trial %d: %s artifact not written (%s: %s); the trial is unaffected",
                    n,
                    what,
                    type(exc).__name__,
                    first,
                )

    def _learning_curve(
        self, number: int, history: Sequence[EpochResult], data: WindowData, reason: str, tmp: Path
    ) -> Path:
        """Train and validation MSE per epoch, the best epoch and the baselines. A smaller cousin of
        plots.loss_curves: a fixed layout at a lower resolution draws in a third of its time."""
        best = min(history, key=lambda e: e.valid_loss)
        fig = plots.new_figure(7, 3.6, layout=None)
        fig.subplots_adjust(left=0.1, right=0.98, bottom=0.13, top=0.9)
        ax = fig.add_subplot()
        epochs = np.arange(1, len(history) + 1)
        ax.plot(epochs, [e.train_loss for e in history], "o-", ms=3, label="train (epoch mean)")
        ax.plot(epochs, [e.valid_loss for e in history], "o-", ms=3, label="validation")
        ax.axvline(best.epoch, color="tab:green", lw=1, label=f"best epoch {best.epoch}")
        plots.baseline_lines(ax, self.baselines_by_window.get(data.spec.output_window))
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch", fontsize=8)
        ax.set_ylabel("MSE", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.set_title(f"trial {number}: {reason}, best epoch {best.epoch} of {len(history)}", fontsize=9)
        ax.legend(fontsize=7)
        path = tmp / f"trial_{number}_learning_curve.png"
        fig.savefig(path, dpi=DPI)
        return path

    def plotted_tickers(self, data: WindowData, anchors: np.ndarray) -> list[tuple[str, np.ndarray]]:
        """The tickers to plot (BIIB and DOV when present, then the first others), each with the
        positions of its rows in `anchors`."""
        ids = data.ticker[torch.as_tensor(anchors, device=data.ticker.device)].cpu().numpy()
        present = [t for k, t in enumerate(data.tickers) if (ids == k).any()]
        order = [t for t in PREFERRED_TICKERS if t in present] + [
            t for t in present if t not in PREFERRED_TICKERS
        ]
        return [(t, np.flatnonzero(ids == data.tickers.index(t))) for t in order[: self.n_tickers]]

    def _predictions(self, number: int, forecast: Forecast, data: WindowData, tmp: Path) -> Path:
        """Step-1 forecast against truth for a few tickers, over the validation windows the trial
        was scored on (the study's validation sample when `valid_samples` > 0: no extra pass)."""
        chosen = self.plotted_tickers(data, forecast.anchors)
        fig = plots.new_figure(9, 1.0 + 2.1 * max(len(chosen), 1), layout=None)
        fig.subplots_adjust(left=0.08, right=0.98, bottom=0.07, top=0.9, hspace=0.55)
        axes = fig.subplots(max(len(chosen), 1), 1, squeeze=False).ravel()
        W = data.spec.output_window
        step = f" (step 1 of the W = {W} forecast)" if W > 1 else ""
        fig.suptitle(
            f"trial {number}, best epoch's weights: validation prediction vs truth{step}", fontsize=10
        )
        if not chosen:
            axes[0].set_title("no validation windows", fontsize=9)
        for ax, (ticker, rows) in zip(axes, chosen, strict=False):
            dates = data.row_date[forecast.anchors[rows]]
            pred, true = forecast.pred[rows, 0], forecast.true[rows, 0]
            ax.plot(dates, true, color=plots.TRUE_COLOR, lw=0.8, label="truth")
            ax.plot(dates, pred, color=plots.PRED_COLOR, lw=1.3, label="prediction")
            ax.axhline(0, color="tab:gray", lw=0.5)
            locator = AutoDateLocator()
            ax.xaxis.set_major_locator(locator)
            ax.xaxis.set_major_formatter(ConciseDateFormatter(locator))
            ax.set_title(
                f"{ticker}, {len(rows)} validation windows: {plots.std_note(pred, true)}", fontsize=8
            )
            ax.tick_params(labelsize=7)
        axes[0].legend(fontsize=7, loc="upper left")
        path = tmp / f"trial_{number}_valid_predictions.png"
        fig.savefig(path, dpi=DPI)
        return path
