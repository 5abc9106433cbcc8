"""Tiny seeded generated data: a few tickers, a few hundred business days, written as CSVs."""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from hpsearch.config import from_dict


def make_frame(n_days: int = 300, seed: int = 0, start: str = "2015-01-01", adj: bool = True) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    dates = pd.bdate_range(start, periods=n_days)
    close = 50 * np.exp(np.cumsum(rng.normal(0, 0.02, n_days)))
    open_ = close * np.exp(rng.normal(0, 0.005, n_days))
    high = np.maximum(open_, close) * (1 + rng.uniform(0, 0.01, n_days))
    low = np.minimum(open_, close) * (1 - rng.uniform(0, 0.01, n_days))
    frame = pd.DataFrame(
        {
            "Date": dates.strftime("%Y-%m-%d"),
            "Open": open_,
            "High": high,
            "Low": low,
            "Close": close,
            "Volume": rng.integers(1_000, 100_000, n_days),
        }
    )
    if adj:
        # Adjusted close differs from close by a slowly drifting dividend factor.
        frame.insert(5, "Adj Close", close * np.linspace(0.9, 1.0, n_days))
    return frame


def write_folder(folder: Path, n_tickers: int = 3, n_days: int = 300, seed: int = 0, **kw) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(n_tickers):
        make_frame(n_days, seed + k, **kw).to_csv(folder / f"T{k}.csv", index=False)
    return folder


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return write_folder(tmp_path / "bars", n_tickers=3, n_days=300)


def tiny_study(data_path: Path | str | None, **overrides) -> dict:
    """A study mapping that trains in well under a second per trial."""
    raw = {
        "name": "tiny",
        "n_trials": 3,
        "seed": 0,
        "data": {"path": str(data_path) if data_path else None, "seq_len": 16, "horizon": 5},
        "model": {"family": "cnn2d", "c1": 2, "c2": 4, "hidden": 8},
        "training": {
            "batch_size": 32,
            "max_epochs": 3,
            "samples_per_epoch": 128,
            "valid_samples": 64,
            "patience": 2,
            "device": "cpu",
        },
        "search": {"lr": {"type": "float", "low": 1.0e-4, "high": 1.0e-2, "log": True}},
        "sampler": {"name": "random"},
        "pruner": {"name": "none"},
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(raw.get(key), dict):
            raw[key] = {**raw[key], **value}
        else:
            raw[key] = value
    return raw


@pytest.fixture
def tiny_cfg(data_dir: Path):
    return from_dict(tiny_study(data_dir), "tiny.yaml")


@pytest.fixture(autouse=True)
def _own_cache_dir(tmp_path_factory, monkeypatch):
    """Each test its own prepared-data cache (hpsearch/cache.py), never the working directory's
    runs/cache; subprocesses inherit it through the environment."""
    monkeypatch.setenv("HPSEARCH_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))


PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"


@pytest.fixture
def pg_url():
    """A fresh database on the local PostgreSQL server, dropped after the test; skips without one."""
    sqlalchemy = pytest.importorskip("sqlalchemy")
    pytest.importorskip("psycopg", reason="psycopg not installed: pip install hpsearch[postgres]")
    name = f"hpsearch_test_{uuid.uuid4().hex[:8]}"
    admin = sqlalchemy.create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(f"CREATE DATABASE {name}")
    except sqlalchemy.exc.OperationalError as exc:
        reason = f"no PostgreSQL server answers at {PG_ADMIN}: {str(exc).splitlines()[0]}"
        print(reason)
        pytest.skip(reason)
    yield f"postgresql://postgres@127.0.0.1:5432/{name}"
    with admin.connect() as conn:
        conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    admin.dispose()
