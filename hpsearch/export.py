"""Best trial -> a YAML file that `hpsearch` reads back as a complete run configuration."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna
import yaml

from hpsearch.config import StudyConfig, from_dict, read_yaml
from hpsearch.errors import ConfigError

RUN_KEYS = ("name", "description", "seed", "data", "split", "model", "training")
EXTRA_KEYS = ("result", "provenance")


def best_config(study: optuna.Study) -> dict[str, Any]:
    from hpsearch.runner import stored_config

    try:
        best = study.best_trial
    except ValueError:
        raise ConfigError(f"study '{study.study_name}' has no completed trial yet") from None
    study_cfg = stored_config(study)
    cfg = study_cfg.with_params(best.params)
    full = cfg.to_dict()
    out: dict[str, Any] = {k: full[k] for k in RUN_KEYS}
    out["seed"] = best.user_attrs.get("seed", cfg.seed)  # the seed that trial trained with
    out["result"] = {
        "study": study.study_name,
        "trial": best.number,
        "value": best.value,
        "metric": "validation MSE over all output steps (best epoch)",
        "valid_step1_mse": best.user_attrs.get("valid_step1_mse"),
        "best_epoch": best.user_attrs.get("best_epoch"),
        "stop_reason": best.user_attrs.get("stop_reason"),
        "params": dict(best.params),
        # The search drew its fixed validation subsample with the study's seed, not the trial's.
        "valid_subset_seed": study_cfg.seed,
        "baselines_valid_mse": study.user_attrs.get("baselines_valid_mse_by_window", {}).get(
            str(cfg.data.output_window), study.user_attrs.get("baselines_valid_mse")
        ),
    }
    out["provenance"] = {
        "data_fingerprint": study.user_attrs.get("data_fingerprint"),
        "data_files_sha256": study.user_attrs.get("data_files_sha256"),
        "segments": study.user_attrs.get("segments"),
        "versions": study.user_attrs.get("versions"),
        "exported_at": _now(),
    }
    return out


def _now() -> str:
    from datetime import datetime, timezone

    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def write_yaml(doc: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(doc, sort_keys=False, default_flow_style=None, width=100))


def load_run_config(path: str | Path) -> tuple[StudyConfig, dict[str, Any]]:
    """Read an exported config back: the run configuration (no search space) and its result."""
    path = Path(path)
    raw = read_yaml(path)
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: an exported config must be a mapping")
    extras = {k: raw.pop(k) for k in EXTRA_KEYS if k in raw}
    for key in ("search", "sampler", "pruner", "n_trials"):
        if key in raw:
            raise ConfigError(f"{path}: '{key}' belongs in a study file, not an exported run config")
    return from_dict(raw, str(path), default_name=path.stem), extras
