"""Read a folder of per-ticker daily-bar CSVs into validated frames. No torch, no optuna.

Every row that is dropped is counted by reason, and every ticker that is skipped is named with
the reason, so that a user can see what the tool did with their data.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd

from hpsearch.errors import DataError

PRICE_COLUMNS = ("open", "high", "low", "close")
# Canonical column -> accepted spellings (compared after lower-casing and trimming).
ALIASES = {
    "date": ("date", "datetime", "timestamp", "time"),
    "open": ("open",),
    "high": ("high",),
    "low": ("low",),
    "close": ("close",),
    "adj_close": ("adj close", "adj_close", "adjclose", "adjusted_close", "adjusted close"),
    "volume": ("volume", "vol"),
    "vwap": ("vwap",),
}
REQUIRED = ("date", "open", "high", "low", "close", "volume")
SUFFIXES = (".csv", ".csv.gz", ".txt", ".txt.gz")


@dataclass
class LoadReport:
    files: int = 0
    rows_read: int = 0
    dropped: Counter = field(default_factory=Counter)  # reason -> rows
    zero_volume_rows: int = 0
    skipped: dict[str, str] = field(default_factory=dict)  # ticker -> reason
    notes: list[str] = field(default_factory=list)

    @property
    def rows_dropped(self) -> int:
        return sum(self.dropped.values())


@dataclass
class Bars:
    """Validated bars: one frame per ticker, sorted by date, columns as in `ALIASES`."""

    frames: dict[str, pd.DataFrame]
    report: LoadReport
    fingerprint: dict


def sample_dir() -> Path:
    """The real sample shipped inside the package (24 tickers, 2009-12-31 .. 2023-12-31)."""
    return Path(str(resources.files("hpsearch") / "sample"))


def ticker_from_name(path: Path) -> str:
    name = path.name
    for suffix in SUFFIXES:
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    return name.upper()


def find_files(folder: Path) -> list[Path]:
    if not folder.exists():
        raise DataError(f"data folder not found: {folder}")
    if not folder.is_dir():
        raise DataError(f"data path is not a folder: {folder}")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.name.lower().endswith(SUFFIXES))
    if not files:
        raise DataError(f"data folder holds no CSV files (*.csv, *.csv.gz): {folder}")
    return files


def _canonical_columns(frame: pd.DataFrame) -> dict[str, str]:
    lookup = {str(c).strip().lstrip("\ufeff").lower(): c for c in frame.columns}
    found = {}
    for canon, spellings in ALIASES.items():
        for s in spellings:
            if s in lookup:
                found[canon] = lookup[s]
                break
    return found


def read_ticker(path: Path, report: LoadReport, drop_zero_volume: bool) -> pd.DataFrame | None:
    """One ticker's bars, cleaned; None (and a reason in `report.skipped`) when unusable."""
    ticker = ticker_from_name(path)
    try:
        raw = pd.read_csv(path)
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        report.skipped[ticker] = f"unreadable ({type(exc).__name__}: {str(exc).splitlines()[0]})"
        return None
    report.rows_read += len(raw)
    cols = _canonical_columns(raw)
    missing = [c for c in REQUIRED if c not in cols]
    if missing:
        report.skipped[ticker] = f"missing column(s): {', '.join(missing)}"
        return None
    frame = pd.DataFrame({canon: raw[col] for canon, col in cols.items()})
    frame["date"] = pd.to_datetime(frame["date"], errors="coerce")
    numeric = [c for c in frame.columns if c != "date"]
    for c in numeric:
        frame[c] = pd.to_numeric(frame[c], errors="coerce")

    bad_date = frame["date"].isna()
    values = frame[numeric].to_numpy(dtype="float64")
    non_finite = ~np.isfinite(values).all(axis=1) & ~bad_date.to_numpy()
    non_positive = (
        (frame[list(PRICE_COLUMNS)].to_numpy() <= 0).any(axis=1) & ~non_finite & ~bad_date.to_numpy()
    )
    keep = ~(bad_date.to_numpy() | non_finite | non_positive)
    report.dropped["unparseable date"] += int(bad_date.sum())
    report.dropped["NaN or inf"] += int(non_finite.sum())
    report.dropped["non-positive price"] += int(non_positive.sum())
    frame = frame[keep]

    if not frame["date"].is_monotonic_increasing:
        report.notes.append(f"{ticker}: dates were not sorted; sorted them")
        frame = frame.sort_values("date", kind="stable")
    dup = frame["date"].duplicated(keep="first")
    if dup.any():
        report.dropped["duplicate date"] += int(dup.sum())
        frame = frame[~dup]

    zero_vol = frame["volume"] <= 0
    report.zero_volume_rows += int(zero_vol.sum())
    if drop_zero_volume and zero_vol.any():
        report.dropped["zero volume"] += int(zero_vol.sum())
        frame = frame[~zero_vol]
    if "adj_close" not in frame:
        frame["adj_close"] = frame["close"]
    if "vwap" not in frame:
        # No source we know ships VWAP; the typical price is the usual daily proxy.
        frame["vwap"] = (frame["high"] + frame["low"] + frame["close"]) / 3.0
    return frame.reset_index(drop=True)


def load_bars(
    path: str | Path | None,
    tickers: tuple[str, ...] | None = None,
    min_rows: int = 1,
    drop_zero_volume: bool = False,
) -> Bars:
    """Read every per-ticker file of `path` (None: the shipped sample).

    Tickers with fewer than `min_rows` usable rows are skipped with a reason. Raises DataError
    when nothing usable remains.
    """
    folder = sample_dir() if path is None else Path(path).expanduser()
    files = find_files(folder)
    by_ticker = {ticker_from_name(f): f for f in files}
    if tickers:
        wanted = [t.upper() for t in tickers]
        absent = [t for t in wanted if t not in by_ticker]
        if absent:
            raise DataError(f"{folder}: tickers not found: {', '.join(absent)}")
        by_ticker = {t: by_ticker[t] for t in wanted}

    report = LoadReport(files=len(by_ticker))
    frames: dict[str, pd.DataFrame] = {}
    hashes = {}
    for ticker in sorted(by_ticker):
        f = by_ticker[ticker]
        frame = read_ticker(f, report, drop_zero_volume)
        if frame is None:
            continue
        if len(frame) < min_rows:
            report.skipped[ticker] = f"too short: {len(frame)} usable rows, a window needs {min_rows}"
            continue
        frames[ticker] = frame
        hashes[ticker] = hashlib.sha256(f.read_bytes()).hexdigest()
    if not frames:
        reasons = "; ".join(f"{t}: {r}" for t, r in list(report.skipped.items())[:3])
        raise DataError(f"{folder}: no usable ticker ({reasons})")
    return Bars(frames, report, fingerprint(folder, frames, hashes))


def fingerprint(folder: Path, frames: dict[str, pd.DataFrame], hashes: dict[str, str]) -> dict:
    """What a result was computed from: tickers, date range and a hash over the files' bytes."""
    combined = hashlib.sha256("".join(f"{t}:{h}\n" for t, h in sorted(hashes.items())).encode())
    starts = [f["date"].iloc[0] for f in frames.values()]
    ends = [f["date"].iloc[-1] for f in frames.values()]
    return {
        "source": "shipped sample" if folder == sample_dir() else str(folder.resolve()),
        "tickers": sorted(frames),
        "n_tickers": len(frames),
        "rows": int(sum(len(f) for f in frames.values())),
        "first_date": str(min(starts).date()),
        "last_date": str(max(ends).date()),
        "sha256": combined.hexdigest(),
        "file_sha256": {t: h[:16] for t, h in sorted(hashes.items())},
    }
