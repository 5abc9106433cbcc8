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


def make_pruner(component: Any) -> optuna.pruners.BasePruner:
    return PRUNERS[component.name](**component.options)


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
