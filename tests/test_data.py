import numpy as np
import pytest

from hpsearch.data import load_bars, sample_dir
from hpsearch.errors import DataError
from tests.conftest import make_frame, write_folder


def test_shipped_sample_is_real_and_complete():
    bars = load_bars(None)
    assert len(bars.frames) == 24
    assert {"BIIB", "DOV"} <= set(bars.frames)
    assert bars.fingerprint["first_date"] == "2009-12-31"
    assert bars.fingerprint["last_date"] == "2023-12-29"
    assert (sample_dir() / "PROVENANCE.md").is_file()
    assert any(p.name.startswith("LICENSE") for p in sample_dir().iterdir())


def test_column_names_are_case_insensitive_and_adj_close_optional(tmp_path):
    frame = make_frame(200, adj=False)
    frame.columns = [c.lower() for c in frame.columns]
    frame.to_csv(tmp_path / "abc.csv", index=False)
    bars = load_bars(tmp_path)
    got = bars.frames["ABC"]
    np.testing.assert_allclose(got["adj_close"], got["close"])  # labels fall back to Close


def test_vwap_is_the_typical_price_when_absent(data_dir):
    f = load_bars(data_dir).frames["T0"]
    np.testing.assert_allclose(f["vwap"], (f["high"] + f["low"] + f["close"]) / 3)


def test_vwap_column_is_used_when_present(tmp_path):
    frame = make_frame(100)
    frame["VWAP"] = 42.0
    frame.to_csv(tmp_path / "X.csv", index=False)
    assert (load_bars(tmp_path).frames["X"]["vwap"] == 42.0).all()


def test_nan_and_inf_rows_are_dropped_and_counted(tmp_path):
    frame = make_frame(100).astype({"Volume": float, "Open": object})
    frame.loc[10, "Close"] = np.nan
    frame.loc[20, "Volume"] = np.inf
    frame.loc[30, "Open"] = "n/a"
    frame.to_csv(tmp_path / "X.csv", index=False)
    bars = load_bars(tmp_path)
    assert len(bars.frames["X"]) == 97
    assert bars.report.dropped["NaN or inf"] == 3


def test_short_ticker_is_skipped_with_a_reason(tmp_path):
    write_folder(tmp_path, n_tickers=2, n_days=200)
    make_frame(30).to_csv(tmp_path / "SHORT.csv", index=False)
    bars = load_bars(tmp_path, min_rows=50)
    assert "SHORT" not in bars.frames
    assert "too short: 30 usable rows" in bars.report.skipped["SHORT"]


def test_missing_and_empty_folders_are_errors(tmp_path):
    with pytest.raises(DataError, match="data folder not found"):
        load_bars(tmp_path / "nope")
    with pytest.raises(DataError, match="holds no CSV files"):
        load_bars(tmp_path)


def test_no_usable_ticker_is_an_error(tmp_path):
    make_frame(30).to_csv(tmp_path / "A.csv", index=False)
    with pytest.raises(DataError, match="no usable ticker"):
        load_bars(tmp_path, min_rows=100)


def test_fingerprint_changes_with_the_data(tmp_path):
    a = load_bars(write_folder(tmp_path / "a", seed=1)).fingerprint
    b = load_bars(write_folder(tmp_path / "b", seed=2)).fingerprint
    assert a["sha256"] != b["sha256"]
    assert a["tickers"] == b["tickers"] == ["T0", "T1", "T2"]
