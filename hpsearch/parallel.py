"""Several worker processes on one study, sharing its storage.

Plain `multiprocessing` processes (spawn) rather than joblib: each worker is a long-lived
Optuna loop that must receive Ctrl-C itself (to mark its trial FAIL "interrupted"), and loky's
worker reuse and signal handling get in the way of both. Workers on other machines run the same
loop: `hpsearch run --study NAME --storage postgresql://...` on each.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import signal
import time
from typing import TYPE_CHECKING

from hpsearch import interrupt

if TYPE_CHECKING:  # imported where used: a worker starts by importing this module (see worker_main)
    from rich.console import Console

    from hpsearch.config import StudyConfig

POLL_SECONDS = 1.0
WORKER_SEED_STRIDE = 10_007  # distinct sampler streams per worker, still reproducible


def threads_per_worker(workers: int) -> int:
    """Divide the cores among workers: oversubscribed torch threads spin and run 5-10x slower."""
    return max(1, (os.cpu_count() or 1) // workers)


def worker_main(raw_cfg: dict, storage_url: str, index: int, threads: int) -> None:
    """One worker: its own data, storage connection and seeded sampler, until the study is full.
    The config comes as a plain dict, so that starting the process imports nothing heavy."""
    # First, before the imports (torch, optuna: seconds): Ctrl-C in a terminal reaches every
    # worker, and the parent passes it on too; the second signal must not interrupt the worker
    # while it records its trial as FAIL "interrupted". SIGTERM (a scheduler stopping the
    # process group) ends the trial the same way.
    interrupt.install(repeat="ignore", sigterm=True)
    # On Ctrl-C the trial is already marked FAIL "interrupted"; the parent says how to resume.
    with contextlib.suppress(KeyboardInterrupt):
        _work(raw_cfg, storage_url, index, threads)
    # Done: a signal still waiting for a storage call, or a late copy, must not print a traceback
    # from multiprocessing's exit path (which skips atexit).
    interrupt.ignore_signals()


def _work(raw_cfg: dict, storage_url: str, index: int, threads: int) -> None:
    import optuna
    import torch
    from rich.console import Console

    from hpsearch.config import from_dict
    from hpsearch.progress import fmt_params
    from hpsearch.runner import optimize, prepare
    from hpsearch.search import make_pruner, make_sampler, pruning_cells
    from hpsearch.storage import open_storage
    from hpsearch.train import resolve_device

    cfg = from_dict(raw_cfg, "the study config passed to a worker")
    torch.set_num_threads(threads)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    console = Console(highlight=False, soft_wrap=True)
    prep = prepare(cfg, resolve_device(cfg.training.device))
    storage = open_storage(storage_url)
    started = len(optuna.load_study(study_name=cfg.name, storage=storage).get_trials(deepcopy=False))
    study = optuna.load_study(
        study_name=cfg.name,
        storage=storage,
        sampler=make_sampler(cfg.sampler, cfg.seed + started + WORKER_SEED_STRIDE * (index + 1)),
        pruner=make_pruner(cfg.pruner, pruning_cells(cfg)),
    )

    def line(_study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        a = trial.user_attrs
        value = f"{trial.value:.6g}" if trial.state == optuna.trial.TrialState.COMPLETE else "-"
        console.print(
            f"[w{index}] trial {trial.number:>3} {trial.state.name:<8} value {value:<10} "
            f"best epoch {a.get('best_epoch', '-')}/{a.get('epochs', '-')} ({a.get('stop_reason', '-')})  "
            f"{fmt_params(trial.params)}"
        )

    optimize(cfg, study, prep, on_trial_end=line)


def run_workers(cfg: StudyConfig, storage_url: str, workers: int, console: Console, done: int) -> None:
    import optuna

    from hpsearch.progress import trial_progress
    from hpsearch.runner import FINISHED, count
    from hpsearch.storage import open_storage

    ctx = mp.get_context("spawn")
    threads = threads_per_worker(workers)
    procs = [
        ctx.Process(target=worker_main, args=(cfg.to_dict(), storage_url, i, threads), name=f"hpsearch-w{i}")
        for i in range(workers)
    ]
    for p in procs:
        p.start()
    study = optuna.load_study(study_name=cfg.name, storage=open_storage(storage_url))
    progress = trial_progress(console)
    try:
        with progress:
            task = progress.add_task(
                f"trials ({workers} workers x {threads} threads)", total=cfg.n_trials, completed=done
            )
            while any(p.is_alive() for p in procs):
                progress.update(task, completed=count(study, FINISHED))
                time.sleep(POLL_SECONDS)
            progress.update(task, completed=count(study, FINISHED))
    except KeyboardInterrupt:
        # A terminal's Ctrl-C reaches every process of the group; a signal sent to this process
        # alone is passed on, so each worker ends its trial as FAIL "interrupted".
        for p in procs:
            if p.is_alive() and p.pid:
                os.kill(p.pid, signal.SIGINT)
        for p in procs:
            p.join(timeout=30)
        raise
    for p in procs:
        p.join()
    failed = [p.name for p in procs if p.exitcode not in (0, None)]
    if failed:
        console.print(
            f"[yellow]warning[/]: worker(s) {', '.join(failed)} exited with an error; see their output above"
        )
