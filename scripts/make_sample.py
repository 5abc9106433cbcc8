"""Build the small real sample that ships inside the package (hpsearch/sample/).

Reproducible: the same source folder gives byte-identical files (gzip mtime is fixed at 0), so
`git diff` after a rebuild shows nothing. Values are copied unchanged; only the date window is cut.

    python scripts/make_sample.py --source ../shared/data/sp500

The ticker list is chosen to cover what users' data will throw at the tool: two tickers the
reference lab plotted (BIIB, DOV), large and small price levels across sectors, a special
distribution that only Adj Close reflects (WY 2010-07-20), a late listing with zero-volume rows
(AMCR), a short history (ABNB, IPO 2020-12) and an OHLC-inconsistent row (HUBB 2021-05-05).
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
from pathlib import Path

import pandas as pd

TICKERS = [
    "BIIB",
    "DOV",
    "AAPL",
    "MSFT",
    "JPM",
    "XOM",
    "JNJ",
    "PG",
    "KO",
    "WMT",
    "CAT",
    "BA",
    "NVDA",
    "AMZN",
    "PFE",
    "HD",
    "MMM",
    "NEE",
    "DUK",
    "WY",
    "AMCR",
    "ABNB",
    "HUBB",
    "INTC",
]
START, END = "2009-12-31", "2023-12-31"
OUT = Path(__file__).resolve().parent.parent / "hpsearch" / "sample"


def build(source: Path, out: Path) -> list[tuple[str, int, str]]:
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for ticker in TICKERS:
        src = source / f"{ticker}.csv"
        if not src.is_file():
            raise SystemExit(f"make_sample: source file missing: {src}")
        # Read as text so values are written back exactly as the source has them.
        frame = pd.read_csv(src, dtype=str)
        frame = frame[(frame["Date"] >= START) & (frame["Date"] <= END)]
        buf = io.BytesIO()
        with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0, compresslevel=9) as gz:
            gz.write(frame.to_csv(index=False, lineterminator="\n").encode())
        (out / f"{ticker}.csv.gz").write_bytes(buf.getvalue())
        rows.append((ticker, len(frame), hashlib.sha256(src.read_bytes()).hexdigest()[:16]))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=Path("../shared/data/sp500"))
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    rows = build(args.source, args.out)
    lines = [
        "# Shipped sample: provenance",
        "",
        f"{len(rows)} tickers of daily bars, {START} .. {END}, one gzip CSV per ticker",
        "(`Date,Open,High,Low,Close,Adj Close,Volume`), values unchanged from the source.",
        "Built by `python scripts/make_sample.py --source <folder of per-ticker CSVs>`.",
        "",
        "- Source: public GitHub repository dieperdev/yfinance-stock-data, `data/<TICKER>.csv`",
        "  (commit 296de9891a69653e2f3038adfd237bbd58347ed5); the numbers originate from Yahoo Finance.",
        "- Licence of that repository: The Unlicense (copy in `LICENSE.dieperdev-yfinance-stock-data`).",
        "- Prices are split-adjusted, not dividend-adjusted; `Adj Close` is adjusted for both.",
        "- No VWAP column: hpsearch uses the typical price (High + Low + Close) / 3 in its place.",
        "",
        "| ticker | rows | sha256[:16] of source file |",
        "|---|---:|---|",
        *[f"| {t} | {n} | {h} |" for t, n, h in rows],
        "",
    ]
    (args.out / "PROVENANCE.md").write_text("\n".join(lines))
    licence = args.source.parent / "sp500_meta" / "LICENSE.dieperdev-yfinance-stock-data.txt"
    if licence.is_file():
        # Saved without the .txt ending so that the data reader never mistakes it for bars.
        (args.out / licence.stem).write_bytes(licence.read_bytes())
    total = sum(p.stat().st_size for p in args.out.glob("*.csv.gz"))
    print(f"wrote {len(rows)} tickers, {sum(n for _, n, _ in rows)} rows, {total / 1e6:.2f} MB to {args.out}")


if __name__ == "__main__":
    main()
