"""One ticker's raw table -> validated daily bars: column names, numbers, dates, row rules.

Pure functions on DataFrames, no I/O, so that each rule can be pinned by a test of a few rows.
A rule drops rows and says how many, why, and on which dates; nothing is repaired silently.
A table that cannot be used at all raises `Unusable` with the reason; the caller skips the ticker.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

PRICE_COLUMNS = ("open", "high", "low", "close")
# Canonical column -> accepted names, compared after lower-casing and removing everything but
# letters and digits (so `Adj Close`, `adj_close`, `<CLOSE>` and `Close*` all match), in priority
# order: with both `<DATE>` and `<TIME>` (stooq) the date is `<DATE>`.
ALIASES = {
    "date": ("date", "datetime", "timestamp", "time", "day"),
    "open": ("open", "openprice"),
    "high": ("high", "highprice"),
    "low": ("low", "lowprice"),
    "close": ("close", "closelast", "closeprice"),
    "adj_close": ("adjclose", "adjustedclose", "adjclosed", "adjustedcloseprice"),
    "volume": ("volume", "vol"),
    "vwap": ("vwap",),
}
# In a long file (several tickers in one table) the column that names the ticker.
TICKER_ALIASES = ("ticker", "symbol", "name", "tic", "sym", "code", "stock")
REQUIRED = ("date", "open", "high", "low", "close", "volume")
# Exchange suffixes some sources append to the ticker (stooq: `biib.us.txt`, `<TICKER>` = BIIB.US).
EXCHANGE_SUFFIXES = (".US", ".UK", ".DE", ".JP", ".HK", ".PL", ".HU")

# Drop reasons, in the order the rules apply; a row is counted under the first rule it breaks.
UNPARSEABLE_DATE = "unparseable date"
UNPARSEABLE_NUMBER = "unparseable number"
NAN = "NaN or inf"
NON_POSITIVE = "non-positive price"
NEGATIVE_VOLUME = "negative volume"
OHLC = "OHLC inconsistent"
DUPLICATE = "duplicate date"
ZERO_VOLUME = "zero volume"
# A price may exceed High (or undercut Low) by this relative amount before the row counts as
# inconsistent: CSV exports round, and 1e-6 of a price is far below any tick.
OHLC_TOLERANCE = 1e-6
EXAMPLES = 3  # dates (or file lines) kept per drop reason to show the user

# Tried in order on a sample of the column; the format that parses most of it wins (US month-first
# before day-first: a day-first file is recognised only by a day above 12).
DATE_FORMATS = (
    "%Y-%m-%d",
    "%m/%d/%Y",
    "%m/%d/%y",
    "%Y%m%d",
    "%Y/%m/%d",
    "%d-%b-%Y",
    "%d-%b-%y",
    "%b %d, %Y",
    "%d %b %Y",
    "%d/%m/%Y",
    "%d.%m.%Y",
    "%m-%d-%Y",
)
_ISO_PREFIX = re.compile(r"\d{4}-\d{2}-\d{2}")
_THOUSANDS = r"[-+]?\d{1,3}(?:,\d{3})+(?:\.\d*)?"


class Unusable(Exception):
    """The table cannot give this ticker any bars (missing or non-numeric column, no dates)."""


@dataclass
class TickerReport:
    """What happened to one ticker's rows."""

    source: str  # the file it came from
    rows_read: int = 0
    rows_kept: int = 0
    dropped: Counter = field(default_factory=Counter)  # reason -> rows
    examples: dict[str, list[str]] = field(default_factory=dict)  # reason -> first dates / lines
    zero_volume: int = 0
    zero_volume_span: tuple[str, str] | None = None  # first and last date with zero volume
    notes: list[str] = field(default_factory=list)
    first_date: str | None = None
    last_date: str | None = None
    skipped: str | None = None  # why the ticker is not used, None when it is


def normalize(name: object) -> str:
    return re.sub(r"[^a-z0-9]", "", str(name).lower())


def canonical_columns(columns: pd.Index) -> dict[str, str]:
    """Canonical name -> the table's column, for every column we recognise (first match wins)."""
    lookup: dict[str, str] = {}
    for c in columns:
        lookup.setdefault(normalize(c), c)
    found = {}
    for canon, spellings in {**ALIASES, "ticker": TICKER_ALIASES}.items():
        for s in spellings:
            if s in lookup and lookup[s] not in found.values():
                found[canon] = lookup[s]
                break
    return found


def normalize_ticker(raw: str) -> str:
    t = str(raw).strip().upper()
    for suffix in EXCHANGE_SUFFIXES:
        if t.endswith(suffix) and len(t) > len(suffix):
            return t[: -len(suffix)]
    return t


def _is_number_dtype(col: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(col) and not pd.api.types.is_bool_dtype(col)


def to_number(col: pd.Series) -> np.ndarray:
    """Numbers as float64; strings like `$1,234.50` are read too, anything else becomes NaN."""
    if _is_number_dtype(col):
        return col.to_numpy(dtype="float64", na_value=np.nan)
    s = col.astype("string").str.strip().str.removeprefix("$")
    # Only a strict thousands grouping loses its commas: `12,50` (a decimal comma) stays invalid
    # instead of silently becoming 1250.
    grouped = s.str.fullmatch(_THOUSANDS).fillna(False).astype(bool)
    if grouped.any():
        s = s.where(~grouped, s.str.replace(",", "", regex=False))
    return pd.to_numeric(s, errors="coerce").to_numpy(dtype="float64", na_value=np.nan)


def parse_dates(col: pd.Series) -> tuple[np.ndarray, str | None]:
    """Dates (time of day dropped; NaT where unparseable) and a note when the format is unusual."""
    if _is_number_dtype(col):
        v = col.astype("float64")
        if v.dropna().between(1800_01_01, 2200_12_31).all():  # stooq and others: 20100104
            text = v.astype("Int64").astype("string")
            return pd.to_datetime(text, format="%Y%m%d", errors="coerce").to_numpy(), None
        unit = "ms" if v.abs().max() > 1e11 else "s"
        dates = pd.to_datetime(v, unit=unit, errors="coerce").dt.normalize()
        return dates.to_numpy(), f"dates read as Unix time in {'milliseconds' if unit == 'ms' else 'seconds'}"
    sample = col.dropna().head(50).astype("string").str.strip()
    if len(sample) and sample.str.fullmatch(_ISO_PREFIX).all():  # the common case, fast
        return pd.to_datetime(col, format="%Y-%m-%d", errors="coerce").to_numpy(), None
    s = col.astype("string").str.strip()
    if len(sample) and sample.str.match(_ISO_PREFIX).mean() > 0.5:
        # `2010-01-04 00:00:00-05:00` (yfinance) or `2010-01-04T00:00:00Z`: the date as written,
        # without converting time zones, is the trading day.
        return pd.to_datetime(s.str.slice(0, 10), format="%Y-%m-%d", errors="coerce").to_numpy(), None
    best, best_count = DATE_FORMATS[0], -1
    for fmt in DATE_FORMATS:
        count = int(pd.to_datetime(sample, format=fmt, errors="coerce").notna().sum())
        if count > best_count:
            best, best_count = fmt, count
        if count == len(sample):
            break
    note = None if best in ("%m/%d/%Y", "%m/%d/%y") or best.startswith("%Y") else f"dates read as {best}"
    return pd.to_datetime(s, format=best, errors="coerce").to_numpy(), note


def clean(
    raw: pd.DataFrame, cols: dict[str, str], report: TickerReport, drop_zero_volume: bool
) -> pd.DataFrame:
    """Apply the row rules to one ticker's table; `cols` maps canonical names to its columns."""
    missing = [c for c in REQUIRED if c not in cols]
    if missing:
        names = ", ".join(str(c) for c in list(raw.columns)[:8])
        raise Unusable(f"missing required column(s) {', '.join(missing)} (columns: {names})")
    numeric = [c for c in ALIASES if c in cols and c != "date"]
    n = len(raw)
    arrays: dict[str, np.ndarray] = {}
    unparseable = np.zeros(n, dtype=bool)
    for c in numeric:
        given = raw[cols[c]]
        values = arrays[c] = to_number(given)
        if _is_number_dtype(given):
            if n and np.isnan(values).all():
                raise Unusable(f"column '{cols[c]}' has no values")
            continue
        present = given.notna().to_numpy()
        if n and not present.any():
            raise Unusable(f"column '{cols[c]}' has no values")
        bad = np.isnan(values) & present
        if bad.sum() > present.sum() / 2:
            example = given[bad].iloc[0]
            raise Unusable(f"column '{cols[c]}' is not numeric (e.g. {str(example)[:20]!r})")
        unparseable |= bad
    dates, note = parse_dates(raw[cols["date"]])
    no_date = np.isnat(dates)
    if n and no_date.all():
        example = raw[cols["date"]].dropna()
        shown = repr(str(example.iloc[0])[:20]) if len(example) else "none"
        raise Unusable(f"column '{cols['date']}' holds no date in a known format (e.g. {shown})")
    if note:
        report.notes.append(note)
    line = raw.index.to_numpy()  # row numbers in the file (a long file keeps its own)

    values = np.column_stack([arrays[c] for c in numeric])
    prices = np.column_stack([arrays[c] for c in numeric if c != "volume"])
    o, h, lo, c = (arrays[k] for k in PRICE_COLUMNS)
    slack = OHLC_TOLERANCE * np.abs(h)
    with np.errstate(invalid="ignore"):
        rules = (
            (UNPARSEABLE_DATE, no_date),
            (UNPARSEABLE_NUMBER, unparseable),
            (NAN, ~np.isfinite(values).all(axis=1)),
            (NON_POSITIVE, (prices <= 0).any(axis=1)),
            (NEGATIVE_VOLUME, arrays["volume"] < 0),
            # High below Low, or Open / Close outside [Low, High] (PEAK and HUBB on 2021-05-05)
            (OHLC, (h < lo - slack) | (np.maximum(o, c) > h + slack) | (np.minimum(o, c) < lo - slack)),
        )
    alive = np.ones(n, dtype=bool)
    for reason, broken in rules:
        hit = broken & alive
        if hit.any():
            _record(report, reason, dates[hit], line[hit])
            alive &= ~hit
    keep = np.flatnonzero(alive)

    if (np.diff(dates[keep]) < np.timedelta64(0)).any():
        report.notes.append("dates were not in order; sorted them")
        # stable: of two rows with the same date, the one earlier in the file stays first
        keep = keep[np.argsort(dates[keep], kind="stable")]
    dup = np.zeros(len(keep), dtype=bool)
    dup[1:] = dates[keep][1:] == dates[keep][:-1]
    if dup.any():
        _record(report, DUPLICATE, dates[keep[dup]], line[keep[dup]])
        report.notes.append(f"{int(dup.sum())} duplicate date(s); kept the first row of each")
        keep = keep[~dup]
    zero = arrays["volume"][keep] == 0
    report.zero_volume = int(zero.sum())
    if zero.any():
        span = dates[keep[zero]]
        report.zero_volume_span = (str(span[0])[:10], str(span[-1])[:10])
    if drop_zero_volume and zero.any():
        _record(report, ZERO_VOLUME, dates[keep[zero]], line[keep[zero]])
        keep = keep[~zero]

    frame = pd.DataFrame({"date": dates[keep], **{k: v[keep] for k, v in arrays.items()}})
    if "adj_close" not in frame:
        frame["adj_close"] = frame["close"]
    if "vwap" not in frame:
        # No source we know ships VWAP; the typical price is the usual daily proxy.
        frame["vwap"] = (frame["high"] + frame["low"] + frame["close"]) / 3.0
    report.rows_kept = len(frame)
    if len(frame):
        report.first_date = str(frame["date"].iloc[0].date())
        report.last_date = str(frame["date"].iloc[-1].date())
    return frame


def _record(report: TickerReport, reason: str, dates: np.ndarray, lines: np.ndarray) -> None:
    report.dropped[reason] += len(dates)
    shown = report.examples.setdefault(reason, [])
    for date, line in zip(dates[:EXAMPLES], lines[:EXAMPLES], strict=True):
        if len(shown) < EXAMPLES:
            # A row without a date is named by its line in the file (header = line 1).
            shown.append(f"line {line + 2}" if np.isnat(date) else str(date)[:10])
