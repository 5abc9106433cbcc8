"""Where a storage's artifacts live. Light on purpose (no torch, no matplotlib): the dashboard
command imports it too, and should start in a second.

The artifact store is a folder of files named by artifact id; the storage records which trial
each belongs to. Workers and the dashboard must agree on the folder, so it is derived from the
storage URL the same way everywhere: `artifacts/` beside a SQLite file (`runs/artifacts/` beside
the default `runs/hpsearch.db`), `runs/artifacts` for a server database (PostgreSQL), unless
`--artifacts` (dashboard) or $HPSEARCH_ARTIFACTS says otherwise.
"""

from __future__ import annotations

import os
from pathlib import Path

import optuna
from optuna.artifacts import FileSystemArtifactStore

from hpsearch.storage import sqlite_path

ENV_VAR = "HPSEARCH_ARTIFACTS"
OFF = "none"  # HPSEARCH_ARTIFACTS=none: write no artifacts
DEFAULT_DIR = Path("runs/artifacts")  # for storages without a file to sit beside


def artifact_dir(storage_url: str, given: str | Path | None = None) -> Path | None:
    """`given` (--artifacts), else $HPSEARCH_ARTIFACTS, else `artifacts/` beside a SQLite file,
    else `runs/artifacts`. None (no artifacts) for `none` and for an in-memory SQLite."""
    chosen = given or os.environ.get(ENV_VAR)
    if chosen:
        return None if str(chosen).lower() == OFF else Path(chosen)
    path = sqlite_path(storage_url)
    if path is not None:
        return path.parent / "artifacts"
    if storage_url.startswith("sqlite"):
        return None
    return DEFAULT_DIR


def open_store(folder: Path) -> FileSystemArtifactStore:
    folder.mkdir(parents=True, exist_ok=True)
    return FileSystemArtifactStore(folder)


def storage_url(study: optuna.Study) -> str | None:
    """The URL of an RDB-backed study's storage (None for in-memory and journal storages).

    Optuna keeps no public handle on it: a study wraps its RDBStorage in a _CachedStorage."""
    storage = study._storage
    return getattr(getattr(storage, "_backend", storage), "url", None)
