"""Read a user's price files into validated per-ticker frames. No torch, no optuna.

Layouts: a folder of one file per ticker (the ticker from the file name: `BIIB.csv`, `biib.csv`,
`BIIB_data.csv`, `BIIB.us.txt`, gzip too), or long files with a ticker column (a folder holding
one, or the file itself), split into tickers. The row rules live in `clean.py`.

Every row that is dropped is counted by reason, every ticker that is skipped is named with the
reason, and a problem that leaves nothing usable is one DataError, so that a user can see what the
tool did with their data.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import zlib
from collections import Counter
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import pandas as pd

from hpsearch.clean import (
    ALIASES,  # noqa: F401  (re-exported: the accepted column names)
    REQUIRED,
    TickerReport,
    Unusable,
    canonical_columns,
    clean,
    normalize_ticker,
)
from hpsearch.errors import DataError
from hpsearch.schema import suggest

SUFFIXES = (".csv", ".csv.gz", ".txt", ".txt.gz")
GZIP_MAGIC = b"\x1f\x8b"


@dataclass
class LoadReport:
    """What loading did: totals over all tickers, and per ticker in `tickers`."""

    files: int = 0
    rows_read: int = 0
    dropped: Counter = field(default_factory=Counter)  # reason -> rows
    zero_volume_rows: int = 0
    skipped: dict[str, str] = field(default_factory=dict)  # ticker (or file) -> reason
    notes: list[str] = field(default_factory=list)  # warnings worth a line each
    tickers: dict[str, TickerReport] = field(default_factory=dict)  # every ticker found
    layout: str = ""  # "one file per ticker", "long file (ticker column)", or both
    source: str = ""

    @property
    def rows_dropped(self) -> int:
        return sum(self.dropped.values())


@dataclass
class Bars:
    """Validated bars: one frame per ticker, sorted by date, columns as in `ALIASES`."""

    frames: dict[str, pd.DataFrame]
    report: LoadReport
    fingerprint: dict


class NoUsableData(DataError):
    """Nothing usable remains; `report` says what was found and why each part was refused."""

    def __init__(self, message: str, report: LoadReport):
        super().__init__(message)
        self.report = report


def sample_dir() -> Path:
    """The real sample shipped inside the package (24 tickers, 2009-12-31 .. 2023-12-31)."""
    return Path(str(resources.files("hpsearch") / "sample"))


def ticker_from_name(path: Path) -> str:
    """`BIIB.csv`, `biib.csv.gz`, `BIIB_data.csv`, `biib.us.txt` -> BIIB."""
    name = path.name
    for suffix in SUFFIXES:
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    head = name.split("_")[0]  # Kaggle's `AAPL_data.csv`
    return normalize_ticker(head or name)


def _is_data_file(p: Path) -> bool:
    # Hidden files include macOS `._BIIB.csv` resource forks, which are not CSV.
    return p.is_file() and not p.name.startswith(".") and p.name.lower().endswith(SUFFIXES)


def find_files(path: Path) -> list[Path]:
    """The data files of a folder (or the one file given); a DataError when there are none."""
    try:
        if not path.exists():
            raise DataError(f"data folder not found: {path}")
        if path.is_file():
            if not path.name.lower().endswith(SUFFIXES):
                raise DataError(f"data path is a file but not a CSV ({', '.join(SUFFIXES)}): {path}")
            return [path]
        if not path.is_dir():
            raise DataError(f"data path is neither a folder nor a file: {path}")
        entries = sorted(path.iterdir())
    except PermissionError:
        raise DataError(f"cannot read data path {path}: permission denied") from None
    except OSError as exc:
        raise DataError(f"cannot read data path {path}: {exc.strerror or exc}") from None
    files = [p for p in entries if _is_data_file(p)]
    if not files:
        others = [p.name + ("/" if p.is_dir() else "") for p in entries if not p.name.startswith(".")]
        held = f" (it holds: {', '.join(others[:5])}{', ...' if len(others) > 5 else ''})" if others else ""
        raise DataError(f"data folder holds no CSV files (*.csv, *.csv.gz, *.txt): {path}{held}")
    return files


def read_table(path: Path) -> tuple[pd.DataFrame, str]:
    """A file's table and the sha256 of its bytes; Unusable when it cannot be read as CSV."""
    try:
        data = path.read_bytes()
    except PermissionError:
        raise Unusable("cannot read the file: permission denied") from None
    except OSError as exc:
        raise Unusable(f"cannot read the file: {exc.strerror or exc}") from None
    digest = hashlib.sha256(data).hexdigest()
    if data[:2] == GZIP_MAGIC:  # by content, not name: `x.csv` may be gzip and `x.csv.gz` may not
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as exc:
            raise Unusable(f"corrupt gzip file ({exc})") from None
    if not data.strip():
        raise Unusable("empty file")
    if b"\x00" in data[:4096]:
        raise Unusable("not a text file (binary content)")
    first = data.split(b"\n", 1)[0]
    # The separator is whichever of , ; tab the header uses most (European exports use `;`).
    sep = max((b",", b";", b"\t"), key=first.count).decode()
    try:
        table = pd.read_csv(
            io.BytesIO(data),
            sep=sep,
            encoding="utf-8-sig",  # a byte-order mark is not part of the first column's name
            encoding_errors="replace",
            skipinitialspace=True,
            low_memory=False,
        )
    except (ValueError, pd.errors.ParserError) as exc:
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise Unusable(f"not a readable CSV ({msg})") from None
    return table, digest


def _layout(per_ticker: int, long: int) -> str:
    kinds = [("one file per ticker", per_ticker), ("long file with a ticker column", long)]
    return " + ".join(name for name, n in kinds if n)


def load_bars(
    path: str | Path | None,
    tickers: tuple[str, ...] | None = None,
    min_rows: int = 1,
    drop_zero_volume: bool = False,
) -> Bars:
    """Read every ticker of `path` (a folder or one file; None: the shipped sample).

    Tickers with fewer than `min_rows` usable rows are skipped with a reason. Raises DataError
    (NoUsableData, carrying the report) when nothing usable remains.
    """
    root = sample_dir() if path is None else Path(path).expanduser()
    files = find_files(root)
    wanted = {normalize_ticker(t) for t in tickers} if tickers else None
    report = LoadReport(source="shipped sample" if path is None else str(root))
    parts, hashes = _gather(files, wanted, report)

    if wanted is not None:
        absent = sorted(wanted - set(parts) - set(report.skipped))
        if absent:
            raise DataError(f"{root}: tickers not found: {', '.join(absent)}{suggest(absent[0], parts)}")

    frames: dict[str, pd.DataFrame] = {}
    for ticker in sorted(parts):
        table, cols, rep = parts[ticker]
        try:
            frame = clean(table, cols, rep, drop_zero_volume)
        except Unusable as exc:
            rep.skipped = f"{rep.source}: {exc}"
            report.skipped[ticker] = rep.skipped
            continue
        report.dropped.update(rep.dropped)
        report.zero_volume_rows += rep.zero_volume
        report.notes.extend(f"{ticker} ({rep.source}): {note}" for note in rep.notes)
        if len(frame) < min_rows:
            rep.skipped = f"{rep.source}: too short: {len(frame)} usable rows, a window needs {min_rows}"
            report.skipped[ticker] = rep.skipped
            continue
        frames[ticker] = frame

    if not frames:
        reasons = "; ".join(f"{t}: {r}" for t, r in list(report.skipped.items())[:3])
        more = f" and {len(report.skipped) - 3} more" if len(report.skipped) > 3 else ""
        raise NoUsableData(f"{root}: no usable ticker ({reasons or 'no rows'}{more})", report)
    hashes = {t: hashes[t] for t in frames}
    return Bars(frames, report, fingerprint(root, frames, hashes))


Part = tuple[pd.DataFrame, dict[str, str], TickerReport]  # one ticker's rows, its columns, its report


def _gather(files: list[Path], wanted: set[str] | None, report: LoadReport) -> tuple[dict[str, Part], dict]:
    """Read the files and assign rows to tickers: ticker -> part, and ticker -> sha256 of its file."""
    parts: dict[str, Part] = {}
    hashes: dict[str, str] = {}
    n_per_ticker = n_long = 0
    for f in files:
        name_ticker = ticker_from_name(f)
        if wanted is not None and name_ticker not in wanted and not _may_be_long(f):
            continue
        report.files += 1
        try:
            raw, digest = read_table(f)
        except Unusable as exc:
            report.skipped[name_ticker] = f"{f.name}: {exc}"
            report.tickers.setdefault(name_ticker, TickerReport(f.name, skipped=report.skipped[name_ticker]))
            continue
        cols = canonical_columns(raw.columns)
        if "ticker" in cols:
            n_long += 1
            missing = [c for c in REQUIRED if c not in cols]
            if missing:  # one line for the file, not one per ticker in it
                report.skipped[f.name] = f"missing required column(s) {', '.join(missing)}"
                continue
            groups = _split_long(raw, cols["ticker"], f, report)
        else:
            n_per_ticker += 1
            groups = [(name_ticker, raw)]
        for ticker, table in groups:
            if wanted is not None and ticker not in wanted:
                continue
            if ticker in parts:
                first = parts[ticker][2].source
                report.notes.append(f"{ticker}: also in {f.name}; using {first} and ignoring {f.name}")
                continue
            if ticker in report.skipped:  # an earlier file of this ticker could not be read
                report.notes.append(f"{ticker}: {report.skipped.pop(ticker)}; using {f.name}")
                report.tickers.pop(ticker, None)
            report.rows_read += len(table)
            parts[ticker] = (table, cols, TickerReport(source=f.name, rows_read=len(table)))
            report.tickers[ticker] = parts[ticker][2]
            hashes[ticker] = digest
    report.layout = _layout(n_per_ticker, n_long)
    return parts, hashes


def _may_be_long(path: Path) -> bool:
    """Whether a file's header names a ticker column (read without loading the whole file)."""
    try:
        with path.open("rb") as fh:
            head = fh.read(2)
        opener = gzip.open if head == GZIP_MAGIC else open
        with opener(path, "rb") as fh:
            line = fh.readline(65536).decode("utf-8-sig", errors="replace")
    except (OSError, EOFError, zlib.error):
        return True  # let the full read report the problem
    sep = max(",;\t", key=line.count)
    return "ticker" in canonical_columns(pd.Index(line.strip().split(sep)))


def _split_long(
    raw: pd.DataFrame, column: str, f: Path, report: LoadReport
) -> list[tuple[str, pd.DataFrame]]:
    """A long table -> (ticker, rows) per ticker; rows without a ticker are dropped and counted."""
    names = raw[column].astype("string").str.strip()
    missing = names.isna() | (names == "")
    if missing.any():
        report.rows_read += int(missing.sum())
        report.dropped["no ticker"] += int(missing.sum())
        report.notes.append(f"{f.name}: {int(missing.sum())} row(s) without a ticker in '{column}'; dropped")
    keys = names[~missing].map(normalize_ticker)
    return [(str(t), raw.loc[idx]) for t, idx in keys.groupby(keys, sort=True).groups.items()]


def fingerprint(root: Path, frames: dict[str, pd.DataFrame], hashes: dict[str, str]) -> dict:
    """What a result was computed from: tickers, date range and a hash over the files' bytes."""
    combined = hashlib.sha256("".join(f"{t}:{h}\n" for t, h in sorted(hashes.items())).encode())
    starts = [f["date"].iloc[0] for f in frames.values()]
    ends = [f["date"].iloc[-1] for f in frames.values()]
    return {
        "source": "shipped sample" if root == sample_dir() else str(root.resolve()),
        "tickers": sorted(frames),
        "n_tickers": len(frames),
        "rows": int(sum(len(f) for f in frames.values())),
        "first_date": str(min(starts).date()),
        "last_date": str(max(ends).date()),
        "sha256": combined.hexdigest(),
        "file_sha256": {t: h[:16] for t, h in sorted(hashes.items())},
    }
