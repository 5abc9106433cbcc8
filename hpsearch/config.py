"""Study files: YAML -> frozen dataclasses, validated once, at load. No I/O besides reading YAML.

A study file answers one question (`studies/lr_sweep.yaml`: which learning rate?). It holds the
data and split it runs on, the model family and its fixed hyperparameters, the training budget,
the search space, the sampler, the pruner and the number of trials.
"""

from __future__ import annotations

import dataclasses
import itertools
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
    # Windows leave room for this many label steps (None: output_window). Set by hpsearch when a
    # study searches output_window, so that a trial exported from it is rebuilt on the very
    # windows and split the search scored it on.
    max_output_window: int | None = None

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
        if self.max_output_window is not None and self.max_output_window < self.output_window:
            raise ValueError(
                f"max_output_window >= output_window must hold, got max_output_window="
                f"{self.max_output_window} output_window={self.output_window}"
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
    valid_samples: int = 0  # fixed sample of whole validation dates, >= this many windows; 0 = all
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

    def values(self) -> tuple[Any, ...] | None:
        """Every value a trial can draw: the choices, or each whole number of an int range (its
        step apart); None for a float range."""
        if self.type == "categorical":
            return self.choices
        if self.type == "int":
            return tuple(range(int(self.low), int(self.high) + 1, int(self.step or 1)))
        return None


@dataclass(frozen=True)
class Component:
    """A sampler or pruner: a registry name and its constructor options."""

    name: str
    options: dict = field(default_factory=dict)


FAMILY = "family"  # the search key that chooses the model family
DATA_SEARCHABLE = ("output_window",)  # data fields a study may search (they reshape targets only)


@dataclass(frozen=True)
class StudyConfig:
    name: str
    model_family: str  # the family used when the search does not choose one
    model: Any  # that family's frozen config (fixed values; searched ones are put in per trial)
    data: DataConfig = DataConfig()
    split: SplitConfig = SplitConfig()
    training: TrainConfig = TrainConfig()
    # Flat dimensions: `family`, `output_window`, training fields, and the model's fields when
    # the family is fixed. Optuna names them as written.
    search: tuple[Param, ...] = ()
    # Dimensions sampled only when their family is chosen (define-by-run), named "family.field".
    family_search: dict[str, tuple[Param, ...]] = field(default_factory=dict)
    # Fixed hyperparameters of every family the study can build, model_family's included.
    family_models: dict[str, Any] = field(default_factory=dict)
    sampler: Component = Component("tpe")
    pruner: Component = Component("median")
    n_trials: int = 16
    seed: int = 0
    description: str = ""
    # Partial parameter sets tried first (Optuna's enqueue_trial), e.g. one per cell of a grid
    # of categorical choices so that every cell is measured; the rest is sampled.
    enqueue: tuple[dict, ...] = ()

    def param(self, name: str) -> Param | None:
        return next((p for p in self.search if p.name == name), None)

    @property
    def max_output_window(self) -> int:
        p = self.param("output_window")
        searched = int(max(p.choices if p.choices else (p.high,))) if p else 0
        return max(self.data.output_window, self.data.max_output_window or 0, searched)

    @property
    def embargo(self) -> int:
        """Days between segments: enough for the largest W the study can try, so that every
        trial sees the same split and the same validation windows, whatever its W."""
        if self.split.embargo is not None:
            return self.split.embargo
        return self.data.horizon + self.max_output_window - 1

    def with_params(self, params: dict[str, Any]) -> StudyConfig:
        """One trial's full configuration: the searched values put in place, no search left."""
        family = params.get(FAMILY, self.model_family)
        base = self.family_models.get(family, self.model if family == self.model_family else None)
        if base is None:
            raise ConfigError(f"study '{self.name}': family '{family}' is not one this study can build")
        model_fields = {f.name for f in dataclasses.fields(base)}
        model_kw, data_kw, train_kw = {}, {}, {}
        for key, value in params.items():
            fam, _, name = key.rpartition(".")
            if key == FAMILY or (fam and fam != family):
                continue
            if fam or (key in model_fields and not self.param(FAMILY)):
                model_kw[name] = value
            elif key in DATA_SEARCHABLE:
                data_kw[key] = value
            else:
                train_kw[key] = value
        if self.max_output_window > self.data.output_window:
            data_kw["max_output_window"] = self.max_output_window  # same windows as the search
        try:
            model = dataclasses.replace(base, **model_kw)
            return dataclasses.replace(
                self,
                model_family=family,
                model=model,
                data=dataclasses.replace(self.data, **data_kw),
                split=dataclasses.replace(self.split, embargo=self.embargo),  # the search's split
                training=dataclasses.replace(self.training, **train_kw),
                search=(),
                family_search={},
                family_models={family: model},
            )
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"study '{self.name}': parameters {params}: {exc}") from None

    def to_dict(self) -> dict[str, Any]:
        """The YAML form that `from_dict` reads back."""
        model = {"family": self.model_family, **as_dict(self.model)}
        for fam, cfg in self.family_models.items():
            if fam != self.model_family:
                model[fam] = as_dict(cfg)
        search = {p.name: _param_dict(p) for p in self.search}
        for fam, params in self.family_search.items():
            search[fam] = {p.name.partition(".")[2]: _param_dict(p) for p in params}
        return {
            "name": self.name,
            "description": self.description,
            "n_trials": self.n_trials,
            "seed": self.seed,
            "data": as_dict(self.data),
            "split": as_dict(self.split),
            "model": model,
            "training": as_dict(self.training),
            "search": search,
            "sampler": {"name": self.sampler.name, **self.sampler.options},
            "pruner": {"name": self.pruner.name, **self.pruner.options},
            "enqueue": [dict(e) for e in self.enqueue],
        }


def _param_dict(p: Param) -> dict[str, Any]:
    """The fields a study file would spell: unset ones (None) and log: false left out. Bounds of
    0 stay (`v not in (None, False)` dropped them, since 0.0 == False)."""
    unset = {"name"} | {k for k, v in as_dict(p).items() if v is None or (k == "log" and v is False)}
    return {k: v for k, v in as_dict(p).items() if k not in unset}


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
    "enqueue",
)


def from_dict(raw: Any, where: str, default_name: str = "study") -> StudyConfig:
    """Validate a parsed study mapping. `where` (a file name) prefixes every error."""
    if raw is None:
        raise ConfigError(f"{where}: the study file is empty; it must be a mapping of sections")
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: a study file must be a mapping of sections, got {type(raw).__name__}")
    check_keys(raw, TOP_KEYS, where)
    name = coerce(raw.get("name", default_name), str, f"{where}: name")
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        raise ConfigError(f"{where}: name may hold only letters, digits, '_', '.', '-', got '{name}'")
    n_trials = coerce(raw.get("n_trials", 16), int, f"{where}: n_trials")
    if n_trials < 1:
        raise ConfigError(f"{where}: n_trials >= 1 must hold, got n_trials={n_trials}")

    if not isinstance(raw.get("model") or {}, dict):
        raise ConfigError(f"{where}: model: must be a mapping like {{family: cnn2d, c1: 8}}")
    model_raw = dict(raw.get("model") or {})
    fam_name = coerce(model_raw.pop("family", "cnn2d"), str, f"{where}: model.family")
    if fam_name not in models.MODELS:
        raise ConfigError(
            f"{where}: model.family: unknown family '{fam_name}'{suggest(fam_name, models.MODELS)}; "
            f"valid: {', '.join(models.MODELS)}"
        )
    # `model: {family: cnn2d, c1: 8, transformer: {d_model: 64}}`: fixed values of the main
    # family inline, of other families under their name.
    family_models = {}
    for other in [k for k in model_raw if k in models.MODELS]:
        family_models[other] = build(
            models.MODELS[other].config, model_raw.pop(other) or {}, f"{where}: model.{other}"
        )
    model = build(models.family(fam_name).config, model_raw, f"{where}: model")
    family_models[fam_name] = model
    data = build(DataConfig, raw.get("data") or {}, f"{where}: data")
    split = build(SplitConfig, raw.get("split") or {}, f"{where}: split")
    training = build(TrainConfig, raw.get("training") or {}, f"{where}: training")

    search, family_search = _search(raw.get("search") or {}, fam_name, family_models, where)
    chosen = next((p for p in search if p.name == FAMILY), None)
    for fam in [*family_search, *(chosen.choices if chosen else ())]:
        family_models.setdefault(fam, models.MODELS[fam].config())  # its defaults, unless given
    max_w = max(
        [data.output_window, data.max_output_window or 0]
        + [int(max(p.choices or (p.high,))) for p in search if p.name == "output_window"]
    )
    if split.embargo is not None and split.embargo < data.horizon + max_w - 1:
        raise ConfigError(
            f"{where}: split.embargo >= horizon + output_window - 1 must hold (no label may reach the "
            f"next segment), got embargo={split.embargo} horizon={data.horizon} output_window={max_w}"
        )
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
        family_search=family_search,
        family_models=family_models,
        enqueue=_enqueue(raw.get("enqueue") or [], search, family_search, where),
        sampler=sampler,
        pruner=pruner,
    )
    # Imported here: the registries of samplers and pruners live with the code that builds them.
    from hpsearch.search import check_component

    check_component("sampler", sampler, where)
    check_component("pruner", pruner, where)
    return cfg


def _search(
    raw: Any, main_family: str, family_models: dict[str, Any], where: str
) -> tuple[tuple[Param, ...], dict[str, tuple[Param, ...]]]:
    """Flat parameters, and per-family ones (`search: {transformer: {d_model: ...}}`)."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: search must be a mapping of parameter name -> range")
    flat = [
        _param(name, spec, f"{where}: search.{name}")
        for name, spec in raw.items()
        if name not in models.MODELS
    ]
    by_name = {p.name: p for p in flat}
    chosen = by_name.get(FAMILY)
    if chosen is not None:
        if chosen.type != "categorical":
            raise ConfigError(
                f"{where}: search.family: must be categorical, e.g. {{type: categorical, choices: [cnn2d]}}"
            )
        for fam in chosen.choices:
            if fam not in models.MODELS:
                raise ConfigError(
                    f"{where}: search.family: unknown family '{fam}'{suggest(str(fam), models.MODELS)}; "
                    f"valid: {', '.join(models.MODELS)}"
                )
    families = list(chosen.choices) if chosen is not None else [main_family]
    train_fields = [f.name for f in dataclasses.fields(TrainConfig) if f.name != "device"]
    flat_valid = [FAMILY, *DATA_SEARCHABLE, *train_fields]
    if chosen is None:
        flat_valid += [f.name for f in dataclasses.fields(models.MODELS[main_family].config)]
    for p in flat:
        if p.name not in flat_valid:
            hint = "; with a family choice, put model parameters under search.<family>" if chosen else ""
            raise ConfigError(
                f"{where}: search.{p.name}: not a searchable parameter{suggest(p.name, flat_valid)}{hint}; "
                f"valid: {', '.join(flat_valid)}"
            )
        if p.name == "output_window" and not all(
            float(v).is_integer() and v >= 1 for v in (p.choices or (p.low, p.high))
        ):
            raise ConfigError(
                f"{where}: search.output_window: whole numbers >= 1 only, got {p.choices or (p.low, p.high)}"
            )

    family_search: dict[str, tuple[Param, ...]] = {}
    for fam in [k for k in raw if k in models.MODELS]:
        here = f"{where}: search.{fam}"
        if fam not in families:
            raise ConfigError(
                f"{here}: family '{fam}' is not among the study's families ({', '.join(families)})"
            )
        if not isinstance(raw[fam], dict):
            raise ConfigError(f"{here}: must be a mapping of {fam} parameter -> range")
        valid = [f.name for f in dataclasses.fields(models.MODELS[fam].config)]
        params = []
        for name, spec in raw[fam].items():
            if name not in valid:
                raise ConfigError(
                    f"{here}.{name}: not a {fam} parameter{suggest(str(name), valid)}; "
                    f"valid: {', '.join(valid)}"
                )
            param = _param(name, spec, f"{here}.{name}")
            params.append(dataclasses.replace(param, name=f"{fam}.{name}"))
        family_search[fam] = tuple(params)
        base = family_models.get(fam) or models.MODELS[fam].config()
        _check_every_combination(base, params, here)
    if chosen is None:
        _check_every_combination(family_models[main_family], flat, f"{where}: search")
    return tuple(flat), family_search


def _enqueue(raw: Any, search: tuple[Param, ...], family_search: dict, where: str) -> tuple[dict, ...]:
    if not isinstance(raw, list) or not all(isinstance(e, dict) for e in raw):
        raise ConfigError(f"{where}: enqueue must be a list of mappings of parameter -> value")
    space = {p.name: p for p in search} | {p.name: p for ps in family_search.values() for p in ps}
    for i, entry in enumerate(raw):
        for key, value in entry.items():
            p = space.get(key)
            if p is None:
                raise ConfigError(
                    f"{where}: enqueue[{i}].{key}: not a parameter of the search{suggest(str(key), space)}"
                )
            if p.type != "categorical":
                value = entry[key] = coerce(
                    value, float if p.type == "float" else int, f"{where}: enqueue[{i}].{key}"
                )
            if p.type == "categorical" and value not in p.choices:
                raise ConfigError(f"{where}: enqueue[{i}].{key}: {value!r} is not one of {list(p.choices)}")
            if p.type != "categorical" and not (p.low <= value <= p.high):
                raise ConfigError(f"{where}: enqueue[{i}].{key}: low <= value <= high must hold, got {value}")
    return tuple(dict(e) for e in raw)


def _param(name: str, spec: Any, here: str) -> Param:
    if not isinstance(spec, dict):
        raise ConfigError(
            f"{here}: must be a mapping like {{type: float, low: 1.0e-6, high: 1.0e-2, log: true}}"
        )
    return build(Param, {"name": name, **spec}, here)


def _probe_values(p: Param) -> tuple:
    """Categorical choices; every value of a short int range (e.g. odd-only kernel sizes); the
    ends of anything else."""
    if p.type == "categorical" or (p.type == "int" and p.high - p.low <= 64):
        return p.values()
    return (p.low, p.high)


def _check_every_combination(base: Any, params: list[Param], where: str, limit: int = 4096) -> None:
    """Constrain the space, not the trials: every combination of categorical choices and range
    ends must give a valid model config (e.g. n_heads must divide d_model), or the file is refused."""
    names = [p.name.rpartition(".")[2] for p in params]
    fields = {f.name for f in dataclasses.fields(base)}
    values = [_probe_values(p) for p in params]
    pairs = [(n, v) for n, v in zip(names, values, strict=True) if n in fields]
    combos = 1
    for _, v in pairs:
        combos *= len(v)
    if not pairs or combos > limit:
        return
    for combo in itertools.product(*(v for _, v in pairs)):
        kw = {
            n: (
                int(x) if isinstance(getattr(base, n), int) and isinstance(x, float) and x.is_integer() else x
            )
            for (n, _), x in zip(pairs, combo, strict=True)
        }
        try:
            dataclasses.replace(base, **kw)
        except (ValueError, TypeError) as exc:
            shown = " ".join(f"{k}={v}" for k, v in kw.items())
            raise ConfigError(
                f"{where}: every combination of the space must be valid: {exc} (at {shown})"
            ) from None


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
        if path.is_dir():
            raise ConfigError(f"study file is a directory, not a YAML file: {path}")
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
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not a text file (not UTF-8 at byte {exc.start})") from None
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
