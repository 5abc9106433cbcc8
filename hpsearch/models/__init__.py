"""Model families, keyed by the word used in study YAML (`model.family`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from hpsearch.errors import ConfigError
from hpsearch.models.base import InputSpec
from hpsearch.models.cnn2d import Cnn2d, Cnn2dConfig
from hpsearch.models.transformer import Transformer, TransformerConfig


@dataclass(frozen=True)
class Family:
    config: type  # frozen dataclass of hyperparameters; search keys are its field names
    module: type[nn.Module]  # built as module(config, spec)


MODELS: dict[str, Family] = {
    "cnn2d": Family(Cnn2dConfig, Cnn2d),
    "transformer": Family(TransformerConfig, Transformer),
}


def family(name: str) -> Family:
    if name not in MODELS:
        raise ConfigError(f"unknown model family '{name}'; valid: {', '.join(MODELS)}")
    return MODELS[name]


def build_model(name: str, cfg: Any, spec: InputSpec) -> nn.Module:
    return family(name).module(cfg, spec)


__all__ = ["MODELS", "Family", "InputSpec", "build_model", "family"]
