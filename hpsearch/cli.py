"""Command line: parse arguments, call one function, map known errors to one line and exit 2."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path

from rich.console import Console
from rich.table import Table

from hpsearch.errors import HpsearchError, mask_url

# Piped or redirected output (`hpsearch report > notes.txt`, a scheduler's log) has no terminal
# width; rich would then assume 80 columns and cut the tables' numbers to "0.00…". A terminal, or
# COLUMNS, still sets the width.
_WIDTH = None if sys.stdout.isatty() or "COLUMNS" in os.environ else 160
console = Console(highlight=False, soft_wrap=True, width=_WIDTH)
err_console = Console(stderr=True, highlight=False, soft_wrap=True, width=_WIDTH)


def _quiet_optuna() -> None:
    import optuna

    # hpsearch prints its own line per trial (failed ones included); Optuna's lines would repeat
    # them, and its failed-trial warnings carry tracebacks.
    optuna.logging.set_verbosity(optuna.logging.ERROR)


def cmd_run(args: argparse.Namespace) -> int:
    import dataclasses

    from hpsearch import interrupt
    from hpsearch.config import load_study
    from hpsearch.runner import run_study
    from hpsearch.storage import resolve_url

    cfg = load_study(args.study)
    if args.data:
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, path=args.data))
    if args.device:
        cfg = dataclasses.replace(cfg, training=dataclasses.replace(cfg.training, device=args.device))
    _quiet_optuna()
    url = resolve_url(args.storage)
    # SIGINT and SIGTERM (a scheduler's stop) both end the running trial as FAIL "interrupted",
    # never in the middle of a storage write (see hpsearch.interrupt). Installed explicitly: a
    # shell script starting `hpsearch run ... &` leaves SIGINT ignored.
    handler = interrupt.install(repeat="raise", sigterm=True)
    try:
        run_study(cfg, url, console, n_trials=args.n_trials, workers=args.workers)
    except KeyboardInterrupt:
        err_console.print(
            f"interrupted: finished trials are kept in {mask_url(url)}, and a trial that was running "
            "is marked FAIL (stop_reason: interrupted). Run the same command again to resume."
        )
        return 130
    finally:
        handler.uninstall()
    return 0


def _open_study(args: argparse.Namespace):
    import optuna

    from hpsearch.storage import open_storage, resolve_url, study_names

    url = resolve_url(args.storage)
    storage = open_storage(url, create=False)
    names = study_names(storage)
    if args.study not in names:
        from hpsearch.schema import suggest

        raise HpsearchError(
            f"no study '{args.study}' in {mask_url(url)}{suggest(args.study, names)}; "
            f"studies there: {', '.join(names) or 'none'}"
        )
    return optuna.load_study(study_name=args.study, storage=storage)


def cmd_export(args: argparse.Namespace) -> int:
    from hpsearch.export import best_config, write_yaml

    _quiet_optuna()
    study = _open_study(args)
    doc = best_config(study)
    out = Path(args.output or f"runs/{study.study_name}/best.yaml")
    write_yaml(doc, out)
    r = doc["result"]
    base = r["baselines_valid_mse"]
    console.print(
        f"wrote {out}: trial {r['trial']}, valid MSE {r['value']:.6g} "
        f"(predict zero {base['zero']:.6g}, predict train mean {base['train_mean']:.6g})"
    )
    if r["value"] >= min(base.values()):
        console.print("[bold yellow]warning[/]: the best trial does not beat a naive constant forecast")
    return 0


def cmd_studies(args: argparse.Namespace) -> int:
    import optuna

    from hpsearch.storage import open_storage, resolve_url

    _quiet_optuna()
    url = resolve_url(args.storage)
    storage = open_storage(url, create=False)
    table = Table(title=f"studies in {mask_url(url)}")
    for col in ("study", "trials", "complete", "pruned", "failed", "running", "best value", "best trial"):
        table.add_column(col, justify="left" if col == "study" else "right")
    for summary in sorted(optuna.get_all_study_summaries(storage), key=lambda s: s.study_name):
        study = optuna.load_study(study_name=summary.study_name, storage=storage)
        states = [t.state.name for t in study.get_trials(deepcopy=False)]
        best = summary.best_trial
        table.add_row(
            summary.study_name,
            str(len(states)),
            *(str(states.count(s)) for s in ("COMPLETE", "PRUNED", "FAIL", "RUNNING")),
            f"{best.value:.6g}" if best else "-",
            str(best.number) if best else "-",
        )
    console.print(table)
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    import optuna

    from hpsearch.artifact_store import artifact_dir, open_store
    from hpsearch.storage import resolve_url

    study = _open_study(args)
    url = resolve_url(args.storage)
    folder = artifact_dir(url)
    removed = 0
    if folder is not None and folder.is_dir():
        # The storage knows which files belong to the study; remove them before its records go.
        store = open_store(folder)
        for trial in study.get_trials(deepcopy=False):
            for meta in optuna.artifacts.get_all_artifact_meta(trial, storage=study._storage):
                if (folder / meta.artifact_id).exists():
                    store.remove(meta.artifact_id)
                    removed += 1
    optuna.delete_study(study_name=study.study_name, storage=study._storage)
    console.print(f"deleted study '{args.study}' and {removed} artifact files from {mask_url(url)}")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from hpsearch.config import builtin_studies, load_study

    for name, path in sorted(builtin_studies().items()):
        cfg = load_study(str(path))
        console.print(
            f"[bold]{name}[/]: {cfg.description.strip().splitlines()[0] if cfg.description else ''}"
        )
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from hpsearch.evaluate import run_final

    run_final(args.config, console, out=args.out, tickers=args.tickers, device=args.device)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from hpsearch.report import build_report

    _quiet_optuna()
    study = _open_study(args)
    out = Path(args.out or f"runs/{study.study_name}/report")
    build_report(study, out, console, param=args.param)
    return 0


def cmd_data(args: argparse.Namespace) -> int:
    from hpsearch.datacheck import check_data

    # One action so far (`hpsearch data check`); the sub-parser leaves room for more.
    return check_data(
        args.data, args.seq_len, args.horizon, args.output_window, args.drop_zero_volume, console
    )


def cmd_dashboard(args: argparse.Namespace) -> int:
    from hpsearch.dashboard import serve
    from hpsearch.storage import resolve_url

    _quiet_optuna()
    return serve(resolve_url(args.storage), args.host, args.port, args.artifacts, console)


COMMANDS: dict[str, tuple[Callable[[argparse.Namespace], int], str]] = {
    "run": (cmd_run, "run (or resume) a study until it holds n_trials finished trials"),
    "export": (cmd_export, "write the best trial of a study as a YAML run config"),
    "studies": (cmd_studies, "list the studies in a storage with trial counts and best values"),
    "delete": (cmd_delete, "delete a study and its trials from a storage"),
    "list": (cmd_list, "list the built-in study files"),
    "train": (cmd_train, "retrain an exported config, evaluate once on test, write metrics and plots"),
    "report": (cmd_report, "tables, parameter importances, plots and report.md of a study"),
    "data": (cmd_data, "check a data folder: `hpsearch data check --data DIR`"),
    "dashboard": (cmd_dashboard, "serve optuna-dashboard on a storage, with trial plots and study notes"),
}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hpsearch", description="Hyperparameter searches on daily stock bars.")
    p.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    cmds = {
        name: sub.add_parser(name, help=help_, description=help_) for name, (_, help_) in COMMANDS.items()
    }
    storage_help = "Optuna storage URL (default: $HPSEARCH_STORAGE, else sqlite:///runs/hpsearch.db)"

    run = cmds["run"]
    run.add_argument(
        "--study", required=True, help="built-in study name, ./studies/NAME.yaml, or a .yaml file"
    )
    run.add_argument(
        "--data", help="folder of per-ticker CSVs (default: the study's, else the shipped sample)"
    )
    run.add_argument("--n-trials", type=int, help="total finished trials to reach (overrides the study file)")
    run.add_argument("--device", help="auto | cpu | cuda | cuda:N | mps (overrides training.device)")
    run.add_argument("--workers", type=int, default=1, help="worker processes on this machine (default 1)")
    for name in ("export", "delete"):
        cmds[name].add_argument("--study", required=True, help="study name in the storage")
    cmds["export"].add_argument("-o", "--output", help="YAML file to write (default runs/<study>/best.yaml)")
    for name in ("run", "export", "studies", "delete"):
        cmds[name].add_argument("--storage", help=storage_help)
    train = cmds["train"]
    train.add_argument("--config", required=True, help="exported run config (hpsearch export) YAML")
    train.add_argument("--out", help="output folder (default runs/<name>/final)")
    train.add_argument("--tickers", nargs="+", help="tickers to plot test segments of (default BIIB DOV)")
    train.add_argument("--device", help="auto | cpu | cuda | cuda:N | mps (overrides training.device)")
    report = cmds["report"]
    report.add_argument("--study", required=True, help="study name in the storage")
    report.add_argument("--storage", help=storage_help)
    report.add_argument("--out", help="output folder (default runs/<study>/report)")
    report.add_argument("--param", default="lr", help="searched parameter to plot against value (default lr)")
    dash = cmds["dashboard"]
    dash.add_argument("--storage", help=storage_help)
    dash.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)"
    )
    dash.add_argument("--port", type=int, default=8080, help="port (default 8080; 0: any free port)")
    dash.add_argument(
        "--artifacts",
        help="artifact folder (default: $HPSEARCH_ARTIFACTS, else artifacts/ beside the SQLite file)",
    )
    data_sub = cmds["data"].add_subparsers(dest="data_action", required=True, metavar="ACTION")
    check = data_sub.add_parser(
        "check",
        help="what a run would use, drop and skip, and why",
        description="what a run would use, drop and skip of a data folder, and why; "
        "exit 0 when usable, 2 when not",
    )
    check.add_argument("--data", help="folder of per-ticker CSVs or one long CSV (default: shipped sample)")
    check.add_argument("--seq-len", type=int, default=96, help="T, rows per window (default 96)")
    check.add_argument("--horizon", type=int, default=20, help="H, label horizon in days (default 20)")
    check.add_argument("--output-window", type=int, default=1, help="W, labels per window (default 1)")
    check.add_argument("--drop-zero-volume", action="store_true", help="drop zero-volume rows")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return COMMANDS[args.command][0](args)
    except HpsearchError as exc:
        if args.debug:
            raise
        err_console.print(f"hpsearch: error: {mask_url(str(exc))}", markup=False)
        return exc.exit_code
    except KeyboardInterrupt:
        err_console.print("interrupted")
        return 130
    except OSError as exc:  # permission denied, disk full, a directory where a file was expected
        if args.debug:
            raise
        err_console.print(f"hpsearch: error: {mask_url(str(exc))}", markup=False)
        return 2
    except Exception as exc:  # a bug: one line, and the way to see more
        if args.debug:
            raise
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        err_console.print(
            f"hpsearch: internal error: {type(exc).__name__}: {mask_url(first)} "
            "(rerun with --debug for the traceback)",
            markup=False,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
