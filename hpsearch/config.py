"""Study files: YAML -> frozen dataclasses, validated once, at load. No I/O besides reading YAML.

A study file answers one question (`studies/lr_sweep.yaml`: which learning rate?). It holds the
data and split it runs on, the model family and its fixed hyperparameters, the training budget,
the search space, the sampler, the pruner and the number of trials.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from hpsearch import models
from hpsearch.errors import ConfigError
from hpsearch.schema import as_dict, build, check_keys, coerce, suggest

TICKER_ENCODINGS = ("embedding", "column")
SCALERS = ("per_ticker", "standard")
PRICE_FEATURES = ("returns", "levels")


@dataclass(frozen=True)
class DataConfig:
    path: str | None = None  # folder of per-ticker CSVs; None = the sample shipped with hpsearch
    tickers: tuple[str, ...] | None = None  # a subset of the folder's tickers; None = all
    seq_len: int = 96  # T: rows (trading days) per input window
    horizon: int = 20  # label: forward return over this many trading days
    output_window: int = 1  # W: consecutive daily labels predicted from one window
    label_scale: float = 1.0  # labels are multiplied by this (reference: 1.0)
    # returns: log(price / previous adjusted close) and log(1 + volume), stationary enough that a
    # scaler fit on 2010-2017 still fits 2020; levels: raw prices as the reference lab fed them
    # (out-of-sample prices drift far outside the training range, see README).
    price_features: str = "returns"
    ticker_encoding: str = "embedding"  # embedding: learned vector; column: id as a feature
    scaler: str = "per_ticker"  # per_ticker | standard (one scaler for all tickers)
    drop_zero_volume: bool = False  # zero-volume rows (e.g. before a listing) are kept by default

    def __post_init__(self) -> None:
        for name in ("seq_len", "horizon", "output_window"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} >= 1 must hold, got {name}={getattr(self, name)}")
        if self.seq_len < 4:
            raise ValueError(f"seq_len >= 4 must hold, got seq_len={self.seq_len}")
        if not (math.isfinite(self.label_scale) and self.label_scale > 0):
            raise ValueError(f"label_scale > 0 must hold, got label_scale={self.label_scale}")
        if self.ticker_encoding not in TICKER_ENCODINGS:
            raise ValueError(
                f"ticker_encoding must be one of {', '.join(TICKER_ENCODINGS)}, got '{self.ticker_encoding}'"
            )
        if self.price_features not in PRICE_FEATURES:
            raise ValueError(
                f"price_features must be one of {', '.join(PRICE_FEATURES)}, got '{self.price_features}'"
            )
        if self.scaler not in SCALERS:
            raise ValueError(f"scaler must be one of {', '.join(SCALERS)}, got '{self.scaler}'")

    @property
    def min_embargo(self) -> int:
        """Trading days between segments so that no label of one reaches into the next."""
        return self.horizon + self.output_window - 1


@dataclass(frozen=True)
class SplitConfig:
    train: float = 0.6
    valid: float = 0.2
    test: float = 0.2
    embargo: int | None = None  # trading days between segments; None = horizon + W - 1

    def __post_init__(self) -> None:
        parts = (self.train, self.valid, self.test)
        if min(parts) <= 0 or abs(sum(parts) - 1.0) > 1e-6:
            raise ValueError(
                f"train, valid, test > 0 and summing to 1 must hold, got "
                f"train={self.train} valid={self.valid} test={self.test}"
            )
        if self.embargo is not None and self.embargo < 0:
            raise ValueError(f"embargo >= 0 must hold, got embargo={self.embargo}")


@dataclass(frozen=True)
class TrainConfig:
    lr: float = 1.0e-4
    batch_size: int = 64
    max_epochs: int = 30
    samples_per_epoch: int = 0  # training windows drawn afresh each epoch; 0 = every window
    valid_samples: int = 0  # fixed validation subsample (same for every trial); 0 = all
    patience: int = 5  # epochs without a new best validation loss before stopping
    min_delta: float = 0.0  # an improvement smaller than this does not count
    weight_decay: float = 0.0
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps

    def __post_init__(self) -> None:
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr > 0 must hold, got lr={self.lr}")
        for name in ("batch_size", "max_epochs", "patience"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} >= 1 must hold, got {name}={getattr(self, name)}")
        for name in ("samples_per_epoch", "valid_samples"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} >= 0 must hold, got {name}={getattr(self, name)}")
        if self.min_delta < 0 or self.weight_decay < 0:
            raise ValueError("min_delta >= 0 and weight_decay >= 0 must hold")


@dataclass(frozen=True)
class Param:
    """One dimension of the search space, named after a model or training field."""

    name: str
    type: str  # float | int | categorical
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple[Any, ...] | None = None

    def __post_init__(self) -> None:
        if self.type == "categorical":
            if not self.choices:
                raise ValueError("categorical needs a non-empty 'choices' list")
            if self.low is not None or self.high is not None or self.log:
                raise ValueError("categorical takes 'choices' only, not low/high/log")
            return
        if self.type not in ("float", "int"):
            raise ValueError(f"type must be one of float, int, categorical, got '{self.type}'")
        if self.low is None or self.high is None:
            raise ValueError(f"{self.type} needs 'low' and 'high'")
        if self.choices is not None:
            raise ValueError(f"{self.type} takes low/high, not 'choices'")
        if self.low > self.high:
            raise ValueError(f"low <= high must hold, got low={self.low} high={self.high}")
        if self.log and self.low <= 0:
            raise ValueError(f"log=true needs low > 0, got low={self.low}")
        if self.log and self.step is not None:
            raise ValueError("log=true and step cannot be combined")
        if self.type == "int" and not (float(self.low).is_integer() and float(self.high).is_integer()):
            raise ValueError(f"int needs whole low and high, got low={self.low} high={self.high}")


@dataclass(frozen=True)
class Component:
    """A sampler or pruner: a registry name and its constructor options."""

    name: str
    options: dict = field(default_factory=dict)


@dataclass(frozen=True)
class StudyConfig:
    name: str
    model_family: str
    model: Any  # the family's frozen config dataclass (fixed values; searched ones overridden)
    data: DataConfig = DataConfig()
    split: SplitConfig = SplitConfig()
    training: TrainConfig = TrainConfig()
    search: tuple[Param, ...] = ()
    sampler: Component = Component("tpe")
    pruner: Component = Component("median")
    n_trials: int = 16
    seed: int = 0
    description: str = ""

    @property
    def embargo(self) -> int:
        return self.split.embargo if self.split.embargo is not None else self.data.min_embargo

    def with_params(self, params: dict[str, Any]) -> StudyConfig:
        """This config with searched values put in place: one trial's full configuration."""
        model_fields = {f.name for f in dataclasses.fields(self.model)}
        model_kw = {k: v for k, v in params.items() if k in model_fields}
        train_kw = {k: v for k, v in params.items() if k not in model_fields}
        try:
            return dataclasses.replace(
                self,
                model=dataclasses.replace(self.model, **model_kw),
                training=dataclasses.replace(self.training, **train_kw),
            )
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"study '{self.name}': parameters {params}: {exc}") from None

    def to_dict(self) -> dict[str, Any]:
        """The YAML form that `from_dict` reads back (model family folded into `model`)."""
        out = {
            "name": self.name,
            "description": self.description,
            "n_trials": self.n_trials,
            "seed": self.seed,
            "data": as_dict(self.data),
            "split": as_dict(self.split),
            "model": {"family": self.model_family, **as_dict(self.model)},
            "training": as_dict(self.training),
            "search": {
                p.name: {k: v for k, v in as_dict(p).items() if k != "name" and v not in (None, False)}
                for p in self.search
            },
            "sampler": {"name": self.sampler.name, **self.sampler.options},
            "pruner": {"name": self.pruner.name, **self.pruner.options},
        }
        return out


TOP_KEYS = (
    "name",
    "description",
    "n_trials",
    "seed",
    "data",
    "split",
    "model",
    "training",
    "search",
    "sampler",
    "pruner",
)


def from_dict(raw: Any, where: str, default_name: str = "study") -> StudyConfig:
    """Validate a parsed study mapping. `where` (a file name) prefixes every error."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: a study file must be a mapping of sections, got {type(raw).__name__}")
    check_keys(raw, TOP_KEYS, where)
    name = coerce(raw.get("name", default_name), str, f"{where}: name")
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        raise ConfigError(f"{where}: name may hold only letters, digits, '_', '.', '-', got '{name}'")
    n_trials = coerce(raw.get("n_trials", 16), int, f"{where}: n_trials")
    if n_trials < 1:
        raise ConfigError(f"{where}: n_trials >= 1 must hold, got n_trials={n_trials}")

    model_raw = dict(raw.get("model") or {})
    fam_name = coerce(model_raw.pop("family", "cnn2d"), str, f"{where}: model.family")
    if fam_name not in models.MODELS:
        raise ConfigError(
            f"{where}: model.family: unknown family '{fam_name}'{suggest(fam_name, models.MODELS)}; "
            f"valid: {', '.join(models.MODELS)}"
        )
    fam = models.family(fam_name)
    model = build(fam.config, model_raw, f"{where}: model")
    data = build(DataConfig, raw.get("data") or {}, f"{where}: data")
    split = build(SplitConfig, raw.get("split") or {}, f"{where}: split")
    training = build(TrainConfig, raw.get("training") or {}, f"{where}: training")
    if split.embargo is not None and split.embargo < data.min_embargo:
        raise ConfigError(
            f"{where}: split.embargo >= horizon + output_window - 1 must hold (no label may reach the "
            f"next segment), got embargo={split.embargo} horizon={data.horizon} "
            f"output_window={data.output_window}"
        )

    search = _search(raw.get("search") or {}, fam.config, where)
    sampler = _component(raw.get("sampler"), "tpe", f"{where}: sampler")
    pruner = _component(raw.get("pruner"), "median", f"{where}: pruner")
    cfg = StudyConfig(
        name=name,
        description=coerce(raw.get("description", ""), str, f"{where}: description"),
        n_trials=n_trials,
        seed=coerce(raw.get("seed", 0), int, f"{where}: seed"),
        data=data,
        split=split,
        model_family=fam_name,
        model=model,
        training=training,
        search=search,
        sampler=sampler,
        pruner=pruner,
    )
    # Imported here: the registries of samplers and pruners live with the code that builds them.
    from hpsearch.search import check_component

    check_component("sampler", sampler, where)
    check_component("pruner", pruner, where)
    return cfg


def _search(raw: Any, model_cls: type, where: str) -> tuple[Param, ...]:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: search must be a mapping of parameter name -> range")
    model_fields = [f.name for f in dataclasses.fields(model_cls)]
    train_fields = [f.name for f in dataclasses.fields(TrainConfig) if f.name != "device"]
    valid = model_fields + train_fields
    params = []
    for name, spec in raw.items():
        here = f"{where}: search.{name}"
        if name not in valid:
            raise ConfigError(
                f"{here}: not a searchable parameter{suggest(str(name), valid)}; valid: {', '.join(valid)}"
            )
        if not isinstance(spec, dict):
            raise ConfigError(
                f"{here}: must be a mapping like {{type: float, low: 1.0e-6, high: 1.0e-2, log: true}}"
            )
        params.append(build(Param, {"name": name, **spec}, here))
    return tuple(params)


def _component(raw: Any, default: str, where: str) -> Component:
    if raw is None:
        return Component(default)
    if isinstance(raw, str):
        return Component(raw)
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: must be a name or a mapping with 'name'")
    options = dict(raw)
    name = coerce(options.pop("name", default), str, f"{where}.name")
    for key, value in options.items():  # `1e-5` in YAML arrives as a string
        if isinstance(value, str) and _FLOAT.fullmatch(value):
            options[key] = float(value)
    return Component(name, options)


_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


# --------------------------------------------------------------------------- loading from disk

_NAME = re.compile(r"[A-Za-z0-9_-]+")


def builtin_studies() -> dict[str, Path]:
    folder = resources.files("hpsearch") / "studies"
    return {p.name[: -len(".yaml")]: Path(str(p)) for p in folder.iterdir() if p.name.endswith(".yaml")}


def resolve_study(study: str) -> Path:
    """A study name (looked up in ./studies, then the built-in ones) or an explicit YAML file."""
    if study.endswith((".yaml", ".yml")):
        path = Path(study).expanduser()
        if not path.is_file():
            raise ConfigError(f"study file not found: {path}")
        return path
    if not _NAME.fullmatch(study):
        raise ConfigError(
            f"study name may hold only letters, digits, '_' and '-' (a file must end in .yaml), got '{study}'"
        )
    local = Path("studies") / f"{study}.yaml"
    if local.is_file():
        return local
    builtin = builtin_studies()
    if study in builtin:
        return builtin[study]
    names = sorted(builtin)
    raise ConfigError(f"unknown study '{study}'{suggest(study, names)}; built-in: {', '.join(names)}")


def read_yaml(path: Path) -> Any:
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        return yaml.safe_load(text)  # safe loader: no Python object tags
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{path}: malformed YAML{at}: {problem}") from None


def load_study(study: str) -> StudyConfig:
    path = resolve_study(study)
    return from_dict(read_yaml(path), str(path), default_name=path.stem)
