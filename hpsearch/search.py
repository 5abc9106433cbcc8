"""Optuna's samplers and pruners by the names study files use, and search-space sampling."""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable
from typing import Any

import optuna

from hpsearch.errors import ConfigError
from hpsearch.schema import suggest

SAMPLERS: dict[str, Callable[..., optuna.samplers.BaseSampler]] = {
    "tpe": optuna.samplers.TPESampler,
    "random": optuna.samplers.RandomSampler,
    "qmc": optuna.samplers.QMCSampler,
    "cmaes": optuna.samplers.CmaEsSampler,
    "gp": optuna.samplers.GPSampler,
}

PRUNERS: dict[str, Callable[..., optuna.pruners.BasePruner]] = {
    "median": optuna.pruners.MedianPruner,
    "percentile": optuna.pruners.PercentilePruner,
    "successive_halving": optuna.pruners.SuccessiveHalvingPruner,
    "hyperband": optuna.pruners.HyperbandPruner,
    "threshold": optuna.pruners.ThresholdPruner,
    "wilcoxon": optuna.pruners.WilcoxonPruner,
    "none": optuna.pruners.NopPruner,
}

_REGISTRIES = {"sampler": SAMPLERS, "pruner": PRUNERS}


def check_component(kind: str, component: Any, where: str) -> None:
    """Unknown names and unknown constructor options are errors that list the valid ones."""
    registry = _REGISTRIES[kind]
    if component.name not in registry:
        raise ConfigError(
            f"{where}: {kind}: unknown {kind} '{component.name}'{suggest(component.name, registry)}; "
            f"valid: {', '.join(registry)}"
        )
    params = inspect.signature(registry[component.name]).parameters
    valid = [p for p in params if p not in ("self", "seed")]
    for key in component.options:
        if key not in valid:
            raise ConfigError(
                f"{where}: {kind}.{key}: unknown option for {component.name}{suggest(key, valid)}; "
                f"valid: {', '.join(valid)}"
            )
    # Values and required options are checked by building it once now, not at the first trial.
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # experimental-feature notices of some samplers
            registry[component.name](**component.options)
    except (TypeError, ValueError) as exc:
        shown = ", ".join(f"{k}={v!r}" for k, v in component.options.items()) or "no options"
        raise ConfigError(f"{where}: {kind} {component.name} ({shown}): {exc}") from None


def make_sampler(component: Any, seed: int) -> optuna.samplers.BaseSampler:
    cls = SAMPLERS[component.name]
    kwargs = dict(component.options)
    if "seed" in inspect.signature(cls).parameters:
        kwargs["seed"] = seed
    if component.name == "tpe":
        # Workers on one study (--workers, or machines sharing a storage) must not propose the
        # same point at once: the running trials count as "lies". Optuna 5 defaults to it; 4.x
        # did not. With one worker there is no other running trial, so nothing changes.
        kwargs.setdefault("constant_liar", True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return cls(**kwargs)


def make_pruner(component: Any, within: tuple[str, ...] = ()) -> optuna.pruners.BasePruner:
    """The study's pruner; with `within` (parameter names), a trial is compared only with the
    trials that share its values of them."""
    pruner = PRUNERS[component.name](**component.options)
    return WithinCellPruner(pruner, within) if within and component.name != "none" else pruner


def pruning_cells(cfg: Any) -> tuple[str, ...]:
    """Parameters whose values put trials on different loss scales. The MSE over W steps of
    W = 48 is not on the same targets as W = 1's (the 48 label days differ; measured on the
    shipped sample: the constant baselines are 0.0086 at W = 48 against 0.0101 at W = 1), so a
    W = 1 trial must not be pruned for being worse than W = 48 trials at the same epoch."""
    return ("output_window",) if cfg.param("output_window") is not None else ()


class WithinCellPruner(optuna.pruners.BasePruner):
    """Runs another pruner on the part of the study that shares the trial's values of `keys`.

    Optuna's pruners compare a trial with every trial of the study at the same step, and take
    no filter; this hands them a view of the study that holds only the trial's own cell."""

    def __init__(self, inner: optuna.pruners.BasePruner, keys: tuple[str, ...]) -> None:
        self.inner = inner
        self.keys = keys

    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        cell = {k: trial.params.get(k) for k in self.keys}
        return self.inner.prune(_CellView(study, cell), trial)  # type: ignore[arg-type]


class _CellView:
    """A study, seen through a filter on parameter values (what pruners read of a study)."""

    def __init__(self, study: optuna.Study, cell: dict[str, Any]) -> None:
        self._study = study
        self._cell = cell

    def get_trials(self, deepcopy: bool = True, states: Any = None) -> list[optuna.trial.FrozenTrial]:
        trials = self._study.get_trials(deepcopy=deepcopy, states=states)
        return [t for t in trials if all(t.params.get(k) == v for k, v in self._cell.items())]

    @property
    def trials(self) -> list[optuna.trial.FrozenTrial]:
        return self.get_trials()

    @property
    def best_trial(self) -> optuna.trial.FrozenTrial:
        done = self.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        if not done:
            raise ValueError("no complete trial in this cell yet")
        pick = max if self._study.direction == optuna.study.StudyDirection.MAXIMIZE else min
        return pick(done, key=lambda t: t.value)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._study, name)  # direction, _storage, ... of the real study


def suggest_one(trial: optuna.Trial, p: Any) -> Any:
    if p.type == "float":
        return trial.suggest_float(p.name, p.low, p.high, log=p.log, step=p.step)
    if p.type == "int":
        step = int(p.step) if p.step else 1
        return trial.suggest_int(p.name, int(p.low), int(p.high), log=p.log, step=step)
    return trial.suggest_categorical(p.name, list(p.choices))


def suggest_params(trial: optuna.Trial, cfg: Any) -> dict[str, Any]:
    """Sample the study's space, define-by-run: a family's own parameters only when it is chosen."""
    params = {p.name: suggest_one(trial, p) for p in cfg.search}
    family = params.get("family", cfg.model_family)
    for p in cfg.family_search.get(family, ()):
        params[p.name] = suggest_one(trial, p)
    return params
