"""`hpsearch data check`: what hpsearch would make of a data folder, before any study runs.

It loads the data exactly as a run does (same rules, same minimum length T + H + W - 1), builds
the default date split, and prints what was found, used, dropped and skipped, and why.
"""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape

from hpsearch.clean import EXAMPLES
from hpsearch.config import DataConfig, SplitConfig
from hpsearch.data import LoadReport, NoUsableData, load_bars
from hpsearch.errors import ConfigError

TOP_ZERO_VOLUME = 3  # tickers named beside the zero-volume total


def check_data(
    path: str | None,
    seq_len: int,
    horizon: int,
    output_window: int,
    drop_zero_volume: bool,
    console: Console,
) -> int:
    """Print the summary; return 0 when a study could run on the data, raise DataError if not."""
    try:
        data = DataConfig(
            path=path,
            seq_len=seq_len,
            horizon=horizon,
            output_window=output_window,
            drop_zero_volume=drop_zero_volume,
        )
    except ValueError as exc:
        raise ConfigError(f"data check: {exc}") from None
    need = data.seq_len + data.horizon + data.output_window - 1
    try:
        bars = load_bars(data.path, min_rows=need, drop_zero_volume=data.drop_zero_volume)
    except NoUsableData as exc:
        summarize(console, exc.report, need, data.drop_zero_volume)
        raise
    summarize(console, bars.report, need, data.drop_zero_volume)

    # Imported here: torch is slow to import and only this step needs it.
    from hpsearch.windows import build_windows

    split = SplitConfig()
    windows = build_windows(bars, data, split, data.min_embargo)  # DataError when no windows
    seg = "; ".join(
        f"{s.name} {s.first.date()} .. {s.last.date()} ({s.windows:,} windows)"
        for s in windows.segments.values()
        if s.windows
    )
    console.print(
        f"split {split.train:g}/{split.valid:g}/{split.test:g}, embargo {data.min_embargo} days: {seg}"
    )
    ids = windows.ticker.numpy()
    in_train = {windows.tickers[k] for k in set(ids[windows.anchors["train"]].tolist())}
    late = sorted(set(windows.tickers) - in_train)
    if late:
        console.print(f"{len(late)} ticker(s) have no training windows (listed later): {_names(late)}")
    if windows.pooled_scaler:
        console.print(
            f"{len(windows.pooled_scaler)} ticker(s) have fewer than seq_len = {data.seq_len} training rows "
            f"and use the scaler fit on all tickers' training rows: {_names(windows.pooled_scaler)}"
        )
    console.print(
        f"[green]usable[/]: {len(bars.frames)} tickers, seq_len={data.seq_len} horizon={data.horizon} "
        f"output_window={data.output_window}"
    )
    return 0


def summarize(console: Console, report: LoadReport, need: int, drop_zero_volume: bool) -> None:
    tickers = report.tickers
    used = {t: r for t, r in tickers.items() if r.skipped is None}
    console.print(f"data: {escape(report.source)} ({report.files} files: {report.layout or 'none readable'})")
    console.print(f"tickers: {len(tickers)} found, {len(used)} used, {len(report.skipped)} skipped")
    dated = [r for r in (used or tickers).values() if r.first_date]
    if dated:
        console.print(f"dates: {min(r.first_date for r in dated)} .. {max(r.last_date for r in dated)}")
    dropped = ", ".join(f"{reason} {n:,}" for reason, n in report.dropped.most_common() if n)
    kept = sum(r.rows_kept for r in used.values())
    console.print(f"rows: {report.rows_read:,} read, {kept:,} used; dropped: {dropped or 'none'}")
    zero = sorted(((r.zero_volume, t) for t, r in tickers.items() if r.zero_volume), reverse=True)
    if zero:
        most = ", ".join(f"{t} {n:,}" for n, t in zero[:TOP_ZERO_VOLUME])
        fate = "dropped" if drop_zero_volume else "kept (drop them with data.drop_zero_volume: true)"
        console.print(
            f"zero-volume rows: {report.zero_volume_rows:,} in {len(zero)} tickers, {fate}; most: {most}"
        )
    else:
        console.print("zero-volume rows: none")

    short = {t: why for t, why in report.skipped.items() if ": too short: " in why}
    if short:
        console.print(
            f"[yellow]skipped[/] {len(short)} ticker(s) too short for seq_len + horizon + "
            f"output_window - 1 = {need} rows: "
            + escape(", ".join(f"{t} ({tickers[t].rows_kept} rows)" for t in short))
        )
    for t, why in report.skipped.items():
        if t not in short:
            console.print(f"[yellow]skipped[/] {escape(t)}: {escape(why)}")

    anomalies = [(t, r) for t, r in sorted(tickers.items()) if r.dropped or r.zero_volume or r.notes]
    if anomalies:
        console.print(f"per-ticker anomalies ({len(anomalies)} tickers):")
    for t, r in anomalies:
        parts = [
            f"{reason} {n:,} ({', '.join(r.examples.get(reason, []))}{', ...' if n > EXAMPLES else ''})"
            for reason, n in r.dropped.items()
        ]
        if r.zero_volume:
            first, last = r.zero_volume_span or ("?", "?")
            span = first if first == last else f"{first} .. {last}"
            parts.append(
                f"zero volume {r.zero_volume:,} ({span}, {'dropped' if drop_zero_volume else 'kept'})"
            )
        parts += r.notes
        console.print(f"  {escape(t)} ({escape(r.source)}): {escape('; '.join(parts))}")
    per_ticker = {f"{t} ({r.source}): {n}" for t, r in tickers.items() for n in r.notes}
    for note in report.notes:
        if note not in per_ticker:
            console.print(f"[yellow]note[/]: {escape(note)}")


def _names(tickers: list[str], limit: int = 12) -> str:
    shown = ", ".join(tickers[:limit])
    return shown + (f" and {len(tickers) - limit} more" if len(tickers) > limit else "")
