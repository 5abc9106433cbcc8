"""The layouts users arrive with: file names, long files, column names, date formats, encodings."""

import gzip
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from hpsearch.data import load_bars, ticker_from_name
from tests.conftest import make_frame

SP500 = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "sp500"


def write(path: Path, frame: pd.DataFrame, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, index=False, **kw)
    return path


@pytest.mark.parametrize(
    "name",
    ["BIIB.csv", "biib.csv", "BIIB_data.csv", "BIIB.us.txt", "BIIB.csv.gz", "biib.us.txt.gz", "BIIB.txt"],
)
def test_ticker_comes_from_the_file_name(tmp_path, name):
    write(tmp_path / name, make_frame(50))
    bars = load_bars(tmp_path)
    assert list(bars.frames) == ["BIIB"]
    assert len(bars.frames["BIIB"]) == 50
    assert bars.report.layout == "one file per ticker"


def test_ticker_names_keep_their_share_class():
    assert ticker_from_name(Path("BRK.B.csv")) == "BRK.B"
    assert ticker_from_name(Path("brk-b.us.txt")) == "BRK-B"


def test_gzip_is_recognised_by_content_not_name(tmp_path):
    (tmp_path / "X.csv").write_bytes(gzip.compress(make_frame(30).to_csv(index=False).encode()))
    assert len(load_bars(tmp_path).frames["X"]) == 30


def test_hidden_and_other_files_are_ignored(tmp_path):
    write(tmp_path / "A.csv", make_frame(30))
    (tmp_path / "._A.csv").write_bytes(b"\x00\x05\x16\x07 resource fork")  # macOS copies
    (tmp_path / "README.md").write_text("my data")
    (tmp_path / "sub").mkdir()
    assert list(load_bars(tmp_path).frames) == ["A"]


def long_frame(column: str = "ticker", tickers=("AAA", "BBB", "CCC"), n: int = 40) -> pd.DataFrame:
    parts = [make_frame(n, seed=k).assign(**{column: t}) for k, t in enumerate(tickers)]
    return pd.concat(parts, ignore_index=True)


@pytest.mark.parametrize("column", ["ticker", "Ticker", "symbol", "SYMBOL", "Name", "tic"])
def test_long_file_in_a_folder_is_split_by_its_ticker_column(tmp_path, column):
    write(tmp_path / "all_stocks.csv", long_frame(column))
    bars = load_bars(tmp_path)
    assert sorted(bars.frames) == ["AAA", "BBB", "CCC"]
    assert all(len(f) == 40 for f in bars.frames.values())
    assert bars.report.layout == "long file with a ticker column"
    # each ticker's rows are its own: the frame equals the rows written for it
    np.testing.assert_allclose(bars.frames["BBB"]["close"], make_frame(40, seed=1)["Close"])


def test_long_file_given_as_the_path(tmp_path):
    path = write(
        tmp_path / "prices.csv.gz", long_frame().sample(frac=1.0, random_state=0), compression="gzip"
    )
    bars = load_bars(path)
    assert sorted(bars.frames) == ["AAA", "BBB", "CCC"]
    assert all(f["date"].is_monotonic_increasing for f in bars.frames.values())


def test_long_file_with_a_ticker_subset(tmp_path):
    write(tmp_path / "all.csv", long_frame())
    assert sorted(load_bars(tmp_path, tickers=("bbb", "AAA")).frames) == ["AAA", "BBB"]


def test_ticker_subset_reads_only_the_wanted_files(tmp_path):
    write(tmp_path / "A.csv", make_frame(30))
    (tmp_path / "B.csv").write_text("not, a, price, file\n")
    bars = load_bars(tmp_path, tickers=("A",))
    assert list(bars.frames) == ["A"] and bars.report.files == 1


def test_kaggle_individual_file_with_name_column(tmp_path):
    """Kaggle's sandp500 `AAPL_data.csv`: date,open,high,low,close,volume,Name."""
    frame = make_frame(30, adj=False)
    frame.columns = [c.lower() for c in frame.columns]
    write(tmp_path / "AAPL_data.csv", frame.assign(Name="AAPL"))
    assert list(load_bars(tmp_path).frames) == ["AAPL"]


def test_stooq_text_format(tmp_path):
    """stooq's `biib.us.txt`: <TICKER>,<PER>,<DATE>,<TIME>,<OPEN>,...,<VOL>,<OPENINT>, dates 20100104."""
    f = make_frame(30, adj=False)
    stooq = pd.DataFrame(
        {
            "<TICKER>": "BIIB.US",
            "<PER>": "D",
            "<DATE>": pd.to_datetime(f["Date"]).dt.strftime("%Y%m%d").astype(int),
            "<TIME>": 0,
            "<OPEN>": f["Open"],
            "<HIGH>": f["High"],
            "<LOW>": f["Low"],
            "<CLOSE>": f["Close"],
            "<VOL>": f["Volume"],
            "<OPENINT>": 0,
        }
    )
    write(tmp_path / "biib.us.txt", stooq)
    got = load_bars(tmp_path).frames["BIIB"]
    assert len(got) == 30 and str(got["date"].iloc[0].date()) == f["Date"].iloc[0]


def test_mixed_layouts_and_a_ticker_in_two_files(tmp_path):
    write(tmp_path / "A.csv", make_frame(30, seed=0))
    write(tmp_path / "a.txt", make_frame(30, seed=9))
    write(tmp_path / "long.csv", long_frame(tickers=("B", "C")))
    bars = load_bars(tmp_path)
    assert sorted(bars.frames) == ["A", "B", "C"]
    assert bars.report.layout == "one file per ticker + long file with a ticker column"
    np.testing.assert_allclose(bars.frames["A"]["close"], make_frame(30, seed=0)["Close"])  # first file wins
    assert "A: also in a.txt; using A.csv and ignoring a.txt" in bars.report.notes


@pytest.mark.parametrize(
    "rename",
    [
        {"Date": "date", "Adj Close": "adj_close"},
        {"Date": "DATE", "Open": "OPEN", "High": "HIGH", "Low": "LOW", "Close": "CLOSE", "Volume": "VOLUME"},
        {"Date": "timestamp", "Adj Close": "adjclose"},
        {"Date": "Datetime", "Adj Close": "adjusted_close"},
        {"Date": " Date ", "Adj Close": "Adj Close**", "Close": "Close*"},  # Yahoo web table
    ],
)
def test_column_aliases(tmp_path, rename):
    frame = make_frame(30)
    write(tmp_path / "X.csv", frame.rename(columns=rename))
    got = load_bars(tmp_path).frames["X"]
    np.testing.assert_allclose(got["adj_close"], frame["Adj Close"])
    np.testing.assert_allclose(got["volume"], frame["Volume"])


def test_vwap_alias_and_index_column_ignored(tmp_path):
    frame = make_frame(30).assign(Vwap=7.0)
    frame.to_csv(tmp_path / "X.csv", index=True)  # pandas writes an unnamed index column first
    got = load_bars(tmp_path).frames["X"]
    assert (got["vwap"] == 7.0).all() and len(got) == 30


@pytest.mark.parametrize(
    ("fmt", "note"),
    [
        ("%Y-%m-%d", None),
        ("%m/%d/%Y", None),
        ("%m/%d/%y", None),
        ("%Y/%m/%d", None),
        ("%Y-%m-%d 00:00:00-05:00", None),  # yfinance with a time zone
        ("%Y-%m-%dT16:00:00Z", None),
        ("%d-%b-%Y", "dates read as %d-%b-%Y"),
        ("%b %d, %Y", "dates read as %b %d, %Y"),
        ("%d/%m/%Y", "dates read as %d/%m/%Y"),  # recognised by days above 12
        ("%d.%m.%Y", "dates read as %d.%m.%Y"),
    ],
)
def test_date_formats(tmp_path, fmt, note):
    frame = make_frame(40)
    dates = pd.to_datetime(frame["Date"])
    write(tmp_path / "X.csv", frame.assign(Date=dates.dt.strftime(fmt)))
    bars = load_bars(tmp_path)
    got = bars.frames["X"]
    assert len(got) == 40
    assert (got["date"].to_numpy() == dates.to_numpy()).all()
    rep = bars.report.tickers["X"]
    assert rep.notes == ([note] if note else [])


def test_unix_time_dates(tmp_path):
    frame = make_frame(30)
    seconds = (pd.to_datetime(frame["Date"]) - pd.Timestamp("1970-01-01")) // pd.Timedelta(seconds=1)
    write(tmp_path / "X.csv", frame.assign(Date=seconds))
    bars = load_bars(tmp_path)
    assert str(bars.frames["X"]["date"].iloc[0].date()) == frame["Date"].iloc[0]
    assert bars.report.tickers["X"].notes == ["dates read as Unix time in seconds"]


def test_byte_order_mark_semicolons_and_tabs(tmp_path):
    frame = make_frame(30)
    (tmp_path / "BOM.csv").write_bytes(b"\xef\xbb\xbf" + frame.to_csv(index=False).encode())
    frame.to_csv(tmp_path / "SEMI.csv", index=False, sep=";")
    frame.to_csv(tmp_path / "TAB.txt", index=False, sep="\t")
    bars = load_bars(tmp_path)
    assert sorted(bars.frames) == ["BOM", "SEMI", "TAB"]
    assert all(len(f) == 30 for f in bars.frames.values())


def test_nasdaq_export_with_dollars_newest_first(tmp_path):
    """nasdaq.com: Date,Close/Last,Volume,Open,High,Low with $ prices, MM/DD/YYYY, newest first."""
    text = (
        "Date,Close/Last,Volume,Open,High,Low\n"
        '01/06/2021,$12.50,"1,234,567",$12.00,$12.80,$11.90\n'
        "01/05/2021,$12.10,987654,$12.20,$12.30,$11.95\n"
        "01/04/2021,$12.20,1000000,$12.00,$12.40,$11.80\n"
    )
    (tmp_path / "NDAQ.csv").write_text(text)
    bars = load_bars(tmp_path)
    got = bars.frames["NDAQ"]
    assert list(got["close"]) == [12.2, 12.1, 12.5]
    assert got["volume"].iloc[-1] == 1_234_567
    assert "NDAQ (NDAQ.csv): dates were not in order; sorted them" in bars.report.notes


def test_shipped_sample_real_defects():
    """The sample holds two real defects: HUBB's 2021-05-05 bar and AMCR's pre-listing volumes."""
    bars = load_bars(None, tickers=("HUBB", "AMCR"))
    hubb = bars.report.tickers["HUBB"]
    assert dict(hubb.dropped) == {"OHLC inconsistent": 1}
    assert hubb.examples["OHLC inconsistent"] == ["2021-05-05"]
    assert pd.Timestamp("2021-05-05") not in set(bars.frames["HUBB"]["date"])
    amcr = bars.report.tickers["AMCR"]
    assert amcr.zero_volume > 1000 and amcr.zero_volume_span[1] < "2019-07-01"
    assert (bars.frames["AMCR"]["volume"] == 0).sum() == amcr.zero_volume  # kept by default
    dropped = load_bars(None, tickers=("AMCR",), drop_zero_volume=True)
    assert dropped.report.dropped["zero volume"] == amcr.zero_volume
    assert (dropped.frames["AMCR"]["volume"] > 0).all()


@pytest.mark.skipif(not SP500.is_dir(), reason="the full sp500 folder (../shared/data/sp500) is absent")
def test_full_sp500_loads_fast_and_reports_its_known_defects():
    start = time.process_time()
    bars = load_bars(SP500, min_rows=116)
    seconds = time.process_time() - start
    assert seconds < 10, f"loading 518 tickers took {seconds:.1f} s of CPU"
    report = bars.report
    assert len(report.tickers) == 518 and len(bars.frames) == 517
    assert dict(report.dropped) == {"OHLC inconsistent": 2}
    assert {t for t, r in report.tickers.items() if r.dropped} == {"PEAK", "HUBB"}
    assert report.tickers["AMCR"].zero_volume == 1371
    assert "VLTO" in report.skipped and "KVUE" in bars.frames  # 61 rows < 116 <= 166


def test_an_unreadable_file_gives_way_to_a_readable_one_of_the_same_ticker(tmp_path):
    (tmp_path / "A.csv.gz").write_bytes(gzip.compress(b"Date,Open\n")[:15])  # truncated
    write(tmp_path / "a.txt", make_frame(30))
    bars = load_bars(tmp_path)
    assert len(bars.frames["A"]) == 30 and not bars.report.skipped
    assert bars.report.tickers["A"].source == "a.txt"
    assert any(
        n.startswith("A: A.csv.gz: corrupt gzip file") and n.endswith("using a.txt")
        for n in bars.report.notes
    )


def test_fingerprint_is_the_files_bytes(tmp_path):
    """Unchanged from the first release, so that studies created before still resume."""
    import hashlib

    path = write(tmp_path / "X.csv", make_frame(30))
    assert (
        load_bars(tmp_path).fingerprint["file_sha256"]["X"]
        == hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    )
