"""Parallel workers, measured: storage errors under contention, and trials per hour.

    python scripts/bench_workers.py [--workers 4] [--trials 24] [--throughput-trials 8]

1. N workers x M trials of a tiny study (seconds per trial, so the storage is hammered) on
   SQLite (WAL, the default) and on the local PostgreSQL (skipped when none answers); counts
   finished trials, duplicates, failed trials and workers that exited with an error.
2. Trials per hour of lr_sweep's configuration on the shipped sample with 1 and with 2 workers,
   same trials (seeded), in this one run.
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
import uuid
from pathlib import Path

import optuna
from rich.console import Console
from rich.table import Table

from hpsearch.config import from_dict, load_study
from hpsearch.runner import FINISHED, run_study

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"


def tiny_cfg(n_trials: int):
    raw = {
        "name": "contention",
        "n_trials": n_trials,
        "data": {"tickers": ["BIIB", "DOV", "AAPL"], "seq_len": 32, "horizon": 5},
        "model": {"family": "cnn2d", "c1": 2, "c2": 4, "hidden": 8},
        "training": {"max_epochs": 2, "samples_per_epoch": 128, "valid_samples": 128, "device": "cpu"},
        "search": {"lr": {"type": "float", "low": 1.0e-4, "high": 1.0e-2, "log": True}},
        "sampler": {"name": "tpe", "n_startup_trials": 4},
        "pruner": {"name": "none"},
    }
    return from_dict(raw, "contention")


def summarize(study: optuna.Study) -> dict:
    trials = study.get_trials(deepcopy=False)
    surplus = [t for t in trials if t.user_attrs.get("stop_reason") == "surplus"]
    failed = [t for t in trials if t.state.name == "FAIL" and t not in surplus]
    return {
        "finished": sum(t.state in FINISHED for t in trials),
        "duplicates": len(trials) - len({t.number for t in trials}),
        "failed": len(failed),
        "surplus": len(surplus),
    }


def pg_database() -> str | None:
    import sqlalchemy

    name = f"hpsearch_bench_{uuid.uuid4().hex[:8]}"
    try:
        engine = sqlalchemy.create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            conn.exec_driver_sql(f"CREATE DATABASE {name}")
    except (sqlalchemy.exc.SQLAlchemyError, ImportError) as exc:
        print(f"PostgreSQL skipped: {str(exc).splitlines()[0]}")
        return None
    return f"postgresql://postgres@127.0.0.1:5432/{name}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--trials", type=int, default=24)
    parser.add_argument("--throughput-trials", type=int, default=8)
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    quiet = Console(quiet=True)
    console = Console()
    tmp = Path(tempfile.mkdtemp(prefix="hpsearch-bench-"))

    table = Table(title=f"{args.workers} workers x {args.trials} trials on one study")
    for col in ("storage", "finished", "duplicates", "failed", "surplus", "seconds"):
        table.add_column(col)
    urls = {"SQLite (WAL)": f"sqlite:///{tmp}/contention.db"}
    pg = pg_database()
    if pg:
        urls["PostgreSQL"] = pg
    for label, url in urls.items():
        t0 = time.perf_counter()
        study = run_study(tiny_cfg(args.trials), url, quiet, workers=args.workers)
        s = summarize(study)
        table.add_row(
            label,
            *(str(s[k]) for k in ("finished", "duplicates", "failed", "surplus")),
            f"{time.perf_counter() - t0:.1f}",
        )
    console.print(table)

    cfg = dataclasses.replace(load_study("lr_sweep"), n_trials=args.throughput_trials)
    rate = Table(title=f"lr_sweep configuration, {args.throughput_trials} trials, shipped sample")
    for col in ("workers", "seconds", "trials/hour", "best lr", "best value"):
        rate.add_column(col)
    for workers in (1, 2):
        cfg_w = dataclasses.replace(cfg, name=f"rate{workers}")
        t0 = time.perf_counter()
        study = run_study(cfg_w, f"sqlite:///{tmp}/rate.db", quiet, workers=workers)
        secs = time.perf_counter() - t0
        best = study.best_trial
        rate.add_row(
            str(workers),
            f"{secs:.0f}",
            f"{3600 * args.throughput_trials / secs:.0f}",
            f"{best.params['lr']:.3g}",
            f"{best.value:.6g}",
        )
    console.print(rate)


if __name__ == "__main__":
    main()
