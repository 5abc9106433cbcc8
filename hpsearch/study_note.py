"""The study's note in optuna-dashboard: the best trial beside the baselines, and the budget used.

An Optuna callback rewrites the note (Markdown, `optuna_dashboard.save_note`) after every trial
that ends, in every worker; the last writer wins, and each writes the whole current picture. The
note is kept under one storage attribute (2045 characters) so that two workers writing at once
cannot interleave halves of two notes.
"""

from __future__ import annotations

import logging
from datetime import datetime

import optuna
from optuna.trial import FrozenTrial, TrialState
from optuna_dashboard import save_note

from hpsearch.progress import fmt_params

log = logging.getLogger("hpsearch")
MAX_CHARS = 2000


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h {m:02d}m {s:02d}s" if h else f"{m}m {s:02d}s" if m else f"{s}s"


def _g(x: float | None) -> str:
    return "-" if x is None else f"{x:.6g}"


def render_note(
    study_name: str,
    trials: list[FrozenTrial],
    n_trials: int,
    baselines: dict[str, float] | None,
    now: datetime | None = None,
) -> str:
    """Markdown of the study's state: best trial, baselines, parameters, budget, wall time."""
    states = [t.state for t in trials]
    complete = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
    surplus = sum(
        1 for t in trials if t.state == TrialState.FAIL and t.user_attrs.get("stop_reason") == "surplus"
    )
    failed = states.count(TrialState.FAIL) - surplus
    finished = len(complete) + states.count(TrialState.PRUNED)
    lines = [f"## {study_name}", ""]
    if complete:
        best = min(complete, key=lambda t: t.value)
        a = best.user_attrs
        better = min(baselines.values()) if baselines else None
        gain = f" ({(best.value / better - 1):+.1%} vs the better baseline)" if better else ""
        lines += [
            f"**Best trial {best.number}**: validation MSE {best.value:.6g}{gain}, best epoch "
            f"{a.get('best_epoch', '-')} of {a.get('epochs', '-')} ({a.get('stop_reason', '-')}), "
            f"step-1 MSE {_g(a.get('valid_step1_mse'))}, validation IC {_g(a.get('valid_ic'))}",
            "",
            "| | validation MSE |",
            "|---|---|",
            f"| trial {best.number} | {best.value:.6g} |",
        ]
        lines += [
            f"| predict {k.replace('_', ' ')} (naive) | {v:.6g} |" for k, v in (baselines or {}).items()
        ]
        lines += ["", f"Parameters: `{fmt_params(best.params)}`"]
        if better is not None and best.value >= better:
            lines += ["", "**No gain yet**: the best trial is not below a constant forecast."]
    else:
        lines += ["No completed trial yet."]
    started = [t.datetime_start for t in trials if t.datetime_start]
    ended = [t.datetime_complete for t in trials if t.datetime_complete]
    wall = (max(ended) if ended else (now or datetime.now())) - min(started) if started else None
    busy = sum(
        (t.datetime_complete - t.datetime_start).total_seconds()
        for t in trials
        if t.datetime_complete and t.datetime_start
    )
    lines += [
        "",
        f"**Budget**: {finished} of {n_trials} trials finished ({len(complete)} complete, "
        f"{states.count(TrialState.PRUNED)} pruned); {failed} failed, "
        f"{states.count(TrialState.RUNNING)} running"
        + (f", {surplus} surplus (not trained)" if surplus else "")
        + ".",
        "",
        f"Wall time {_duration(wall.total_seconds()) if wall else '-'} from the first trial's start to "
        f"the last one's end; {_duration(busy)} of trial time.",
    ]
    note = "\n".join(lines) + "\n"
    return note if len(note) <= MAX_CHARS else note[: MAX_CHARS - 2] + "…\n"


class StudyNote:
    """Optuna callback: rewrite the study's dashboard note after each trial. Never raises."""

    def __init__(self, n_trials: int, baselines: dict[str, float] | None) -> None:
        self.n_trials = n_trials
        self.baselines = baselines

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        try:
            trials = study.get_trials(deepcopy=False)
            save_note(study, render_note(study.study_name, trials, self.n_trials, self.baselines))
        except Exception as exc:  # the note is a summary; a failed update must not stop the study
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            log.warning(
                "warning: study note not updated after trial %d (%s: %s)",
                trial.number,
                type(exc).__name__,
                first,
            )
