"""Storage URL -> Optuna storage. SQLite by default; any SQLAlchemy URL (PostgreSQL first).

Opening a storage never creates a study; the caller does that only once everything else has
loaded, so a run that fails early leaves the storage exactly as it was.
"""

from __future__ import annotations

import os
import time
import warnings
from pathlib import Path

import optuna
from sqlalchemy.exc import SQLAlchemyError

from hpsearch.errors import StorageError, mask_url

DEFAULT_URL = "sqlite:///runs/hpsearch.db"  # relative to the working directory
ENV_VAR = "HPSEARCH_STORAGE"
# A worker beats every HEARTBEAT seconds while it runs a trial; a RUNNING trial with no beat for
# 3 x HEARTBEAT is marked FAIL by the next trial that starts and retried once with the same
# parameters. Overridable for tests (a real kill test cannot wait minutes).
HEARTBEAT_SECONDS = int(os.environ.get("HPSEARCH_HEARTBEAT_SECONDS", "10"))
SQLITE_TIMEOUT_SECONDS = 60


def resolve_url(url: str | None) -> str:
    """--storage, else $HPSEARCH_STORAGE, else the default SQLite file."""
    return url or os.environ.get(ENV_VAR) or DEFAULT_URL


def sqlite_path(url: str) -> Path | None:
    if not url.startswith("sqlite:///"):
        return None
    path = url[len("sqlite:///") :]
    return None if path in ("", ":memory:") else Path(path)


def open_storage(url: str, create: bool = True) -> optuna.storages.BaseStorage:
    """An Optuna storage with heartbeats; a trial left RUNNING by a killed worker is retried once.

    With `create=False` a missing SQLite file is an error, not a new empty storage.
    """
    path = sqlite_path(url)
    engine_kwargs: dict = {}
    if path is not None:
        if not create and not path.is_file():
            raise StorageError(f"no storage at {url} (run a study first, or pass --storage)")
        path.parent.mkdir(parents=True, exist_ok=True)
        engine_kwargs = {"connect_args": {"timeout": SQLITE_TIMEOUT_SECONDS}}
    elif url.startswith("postgresql"):
        # Drop connections the server closed (restarts, idle timeouts) instead of failing a trial.
        engine_kwargs = {"pool_pre_ping": True}
    try:
        storage = _rdb_storage(url, engine_kwargs)
        if path is not None:
            # WAL lets readers (the dashboard, other workers) proceed while one worker writes; the
            # mode is stored in the file, so setting it once is enough. Writers wait up to the
            # connection timeout for the lock instead of failing with "database is locked".
            with storage.engine.connect() as conn:
                conn.exec_driver_sql("PRAGMA journal_mode=WAL")
        return storage
    except (SQLAlchemyError, ImportError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise StorageError(f"cannot open storage {mask_url(url)}: {mask_url(first)}") from None


# Messages of a schema that another process created at the same moment (two workers, or a run and
# a dashboard, opening a new storage at once): SQLite says "table ... already exists" or "UNIQUE
# constraint failed: alembic_version..." (both seen with 6 processes), PostgreSQL "duplicate key
# value violates unique constraint" on its catalog, or "already exists".
_SCHEMA_RACE = ("already exists", "duplicate key value", "UNIQUE constraint failed: alembic_version")
_SCHEMA_ATTEMPTS = 3


def _rdb_storage(url: str, engine_kwargs: dict) -> optuna.storages.RDBStorage:
    """RDBStorage, tried again when its schema creation lost a race with another process: Optuna
    creates the tables with check-then-create, which is not atomic across processes."""
    for attempt in range(1, _SCHEMA_ATTEMPTS):
        try:
            return _new_rdb_storage(url, engine_kwargs)
        except SQLAlchemyError as exc:
            if not any(m in str(exc) for m in _SCHEMA_RACE):
                raise
            time.sleep(0.2 * attempt)  # the other process finishes the schema meanwhile
    return _new_rdb_storage(url, engine_kwargs)  # the last attempt: its error is the caller's


def _new_rdb_storage(url: str, engine_kwargs: dict) -> optuna.storages.RDBStorage:
    with warnings.catch_warnings():
        # Heartbeats have carried the "experimental" label since Optuna 2.8; they are what
        # recovers trials whose worker was killed, so we use them on purpose.
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.storages.RDBStorage(
            url,
            engine_kwargs=engine_kwargs,
            heartbeat_interval=HEARTBEAT_SECONDS,
            grace_period=3 * HEARTBEAT_SECONDS,
            heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=1),
        )


def study_names(storage: optuna.storages.BaseStorage) -> list[str]:
    return sorted(s.study_name for s in storage.get_all_studies())
