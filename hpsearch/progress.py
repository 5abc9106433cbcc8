"""What a user sees while a search runs: rich progress for trials and epochs, a line per trial."""

from __future__ import annotations

import time

import optuna
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from hpsearch.train import EpochResult


def fmt_params(params: dict) -> str:
    return " ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())


def trial_progress(console: Console) -> Progress:
    """The bar every run shows: description, bar, i/N, elapsed, eta (one worker or several)."""
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(bar_width=24),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=console,
    )


class SearchProgress:
    """Trial i of N with an ETA, and the current trial's epoch, current and best valid loss."""

    def __init__(self, console: Console, n_total: int, n_done: int, max_epochs: int) -> None:
        self.console = console
        self.max_epochs = max_epochs
        self.progress = trial_progress(console)
        self.trials = self.progress.add_task("trials", total=n_total, completed=n_done)
        self.epochs = self.progress.add_task("epoch", total=max_epochs)
        self.best: float | None = None
        self._started = time.perf_counter()

    def __enter__(self) -> SearchProgress:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.remove_task(self.epochs)  # no stale "epoch 0/N" line left on screen
        self.progress.__exit__(*exc)

    def on_epoch(self, trial: optuna.Trial, ep: EpochResult) -> None:
        self.progress.update(
            self.epochs,
            completed=ep.epoch,
            description=(
                f"trial {trial.number} epoch {ep.epoch:>2}  valid {ep.valid_loss:.5g}  "
                f"trial best {ep.best_valid:.5g} (epoch {ep.best_epoch})"
            ),
        )

    def on_trial_end(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        state = trial.state.name
        attrs = trial.user_attrs
        complete = trial.state == optuna.trial.TrialState.COMPLETE
        value = f"{trial.value:.6g}" if complete else "-"
        if complete and (self.best is None or trial.value < self.best):
            self.best = trial.value
        secs = (
            (trial.datetime_complete - trial.datetime_start).total_seconds() if trial.datetime_complete else 0
        )
        self.console.print(
            f"trial {trial.number:>3} {state:<8} value {value:<10} "
            f"best epoch {attrs.get('best_epoch', '-')}/{attrs.get('epochs', '-')} "
            f"({attrs.get('stop_reason', '-')})  {fmt_params(trial.params)}  {secs:.1f}s"
        )
        best = f"best {self.best:.6g}" if self.best is not None else "no value yet"
        self.progress.update(self.trials, advance=1, description=f"trials ({best})")
        self.progress.reset(self.epochs, total=self.max_epochs, description="epoch")


def baselines_of(study: optuna.Study) -> dict[str, dict[str, float]]:
    """Naive baselines' validation MSE by output window ("1", "48", ...) from the study attrs."""
    by_window = study.user_attrs.get("baselines_valid_mse_by_window")
    if by_window:
        return by_window
    w = (study.user_attrs.get("config") or {}).get("data", {}).get("output_window", 1)
    base = study.user_attrs.get("baselines_valid_mse")
    return {str(w): base} if base else {}


def beats_baselines(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool | None:
    """Whether a complete trial's value is below every naive baseline at its W (None: unknown)."""
    by_window = baselines_of(study)
    w = trial.params.get(
        "output_window", (study.user_attrs.get("config") or {}).get("data", {}).get("output_window", 1)
    )
    base = by_window.get(str(w))
    return None if not base else trial.value < min(base.values())


def best_trials_table(study: optuna.Study, top: int = 5) -> Table:
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    done.sort(key=lambda t: t.value)
    by_window = baselines_of(study)
    n_valid = study.user_attrs.get("valid_windows")
    caption = (
        f"baselines on the same {n_valid} validation windows every trial is scored on" if n_valid else None
    )
    if done and beats_baselines(study, done[0]) is False:
        caption = "[bold yellow]warning: the best trial does not beat a naive constant forecast[/]" + (
            f"; {caption}" if caption else ""
        )
    table = Table(
        title=f"study '{study.study_name}': the {min(top, len(done))} best of {len(study.trials)} trials",
        caption=caption,
    )
    for col in ("trial", "valid MSE", "epoch", "stop", "params", "train s"):
        table.add_column(
            col, justify="left" if col in ("trial", "stop", "params") else "right", no_wrap=col != "params"
        )
    for t in done[:top]:
        a = t.user_attrs
        table.add_row(
            str(t.number),
            f"{t.value:.5g}",
            f"{a.get('best_epoch', '-')}/{a.get('epochs', '-')}",
            str(a.get("stop_reason", "-")),
            fmt_params(t.params),
            f"{a.get('train_seconds', 0):.0f}",
        )
    for w, base in by_window.items():
        for name, value in base.items():
            label = f"predict {name.replace('_', ' ')}" + (f" (W={w})" if len(by_window) > 1 else "")
            table.add_row(label, f"{value:.5g}", "", "", "(baseline)", "", style="dim")
    return table
