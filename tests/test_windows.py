import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch

from hpsearch.config import DataConfig, SplitConfig
from hpsearch.data import load_bars
from hpsearch.windows import FEATURES, build_windows, feature_matrix
from tests.conftest import make_frame, write_folder


def build(folder, **data_kw):
    data = DataConfig(**{"seq_len": 16, "horizon": 5, **data_kw})
    bars = load_bars(folder)
    return bars, data, build_windows(bars, data, SplitConfig(), data.min_embargo)


@pytest.mark.parametrize("output_window", [1, 48])
def test_no_training_label_reaches_validation(tmp_path, output_window):
    # Tickers with gaps (every 7th day missing in one) make the check harder than a clean calendar.
    write_folder(tmp_path, n_tickers=2, n_days=600)
    frame = make_frame(600, seed=9)
    frame.iloc[[i for i in range(600) if i % 7 or i == 0]].to_csv(tmp_path / "GAPPY.csv", index=False)
    bars, data, w = build(tmp_path, output_window=output_window)
    H, W = data.horizon, data.output_window
    valid_start = w.segments["valid"].first
    test_start = w.segments["test"].first
    for name, next_start in (("train", valid_start), ("valid", test_start)):
        anchors = w.anchors[name]
        assert len(anchors) > 0
        # The last day any label of a window reads: row anchor + W - 1 + H of the same ticker.
        last_label_row = anchors + W - 1 + H
        assert (w.ticker[anchors] == w.ticker[last_label_row]).all()
        assert (w.row_date[last_label_row] < np.datetime64(next_start)).all(), name
    # and the calendar gap between segments is at least the embargo
    calendar = np.unique(w.row_date)
    gap = np.searchsorted(calendar, np.datetime64(valid_start)) - np.searchsorted(
        calendar, w.row_date[w.anchors["train"]].max()
    )
    assert gap - 1 >= H + W - 1


def test_segments_are_ordered_and_disjoint(data_dir):
    _, _, w = build(data_dir)
    s = w.segments
    assert s["train"].last < s["valid"].first and s["valid"].last < s["test"].first
    assert not set(w.anchors["train"]) & set(w.anchors["valid"])


def test_labels_are_forward_returns_from_adj_close(data_dir):
    bars, data, w = build(data_dir, label_scale=10.0)
    f = bars.frames["T0"]
    adj = f["adj_close"].to_numpy()
    expected = (adj[5:] / adj[:-5] - 1) * 10.0
    np.testing.assert_allclose(w.y[: len(f) - 5].numpy(), expected, rtol=1e-5)
    assert torch.isnan(w.y[len(f) - 5 : len(f)]).all()


def test_windows_equal_a_naive_slice(data_dir):
    bars, data, w = build(data_dir, output_window=3)
    anchors = torch.as_tensor(w.anchors["valid"][:50])
    x, y, tk = w.gather(anchors)
    assert x.shape == (50, 16, len(FEATURES)) and y.shape == (50, 3)
    np.testing.assert_array_equal(x.numpy(), w.naive_window("valid")[:50])
    for i, a in enumerate(anchors.tolist()):
        np.testing.assert_array_equal(y[i].numpy(), w.y[a : a + 3].numpy())
        assert tk[i] == w.ticker[a - 15] == w.ticker[a + 2]  # a window never crosses tickers


@pytest.mark.parametrize("scaler", ["per_ticker", "standard"])
def test_scaler_is_fit_on_training_rows_only(tmp_path, scaler):
    folder = write_folder(tmp_path / "a", n_tickers=2, n_days=400)
    _, _, base = build(folder, scaler=scaler)
    train_last = base.segments["valid"].first
    # Wreck every row after the training segment: features of training rows must not move.
    for path in folder.glob("*.csv"):
        frame = pd.read_csv(path)
        late = pd.to_datetime(frame["Date"]) >= train_last
        frame.loc[late, ["Open", "High", "Low", "Close", "Adj Close"]] *= 7.0
        frame.loc[late, "Volume"] *= 100
        frame.to_csv(path, index=False)
    _, _, wrecked = build(folder, scaler=scaler)
    train_rows = base.row_date < np.datetime64(train_last) - np.timedelta64(1, "D")
    np.testing.assert_allclose(wrecked.x.numpy()[train_rows], base.x.numpy()[train_rows], rtol=1e-6)
    assert not np.allclose(wrecked.x.numpy()[~train_rows], base.x.numpy()[~train_rows])


def test_scaled_training_features_are_standardized(data_dir):
    _, _, w = build(data_dir)
    train_rows = w.row_date <= np.datetime64(w.segments["train"].last)
    x = w.x.numpy()[train_rows & (w.ticker.numpy() == 0)]
    np.testing.assert_allclose(x.mean(0), 0, atol=1e-4)
    np.testing.assert_allclose(x.std(0), 1, atol=1e-2)


def test_returns_features_ignore_price_level():
    a = make_frame(100, seed=3)
    b = a.copy()
    b[["Open", "High", "Low", "Close", "Adj Close"]] *= 13.0
    fa, fb = (feature_matrix(load_frame(x), "returns") for x in (a, b))
    np.testing.assert_allclose(fa, fb, atol=1e-12)


def load_frame(raw: pd.DataFrame) -> pd.DataFrame:
    f = raw.rename(columns=str.lower).rename(columns={"adj close": "adj_close"})
    f["vwap"] = (f["high"] + f["low"] + f["close"]) / 3
    return f


def test_ticker_column_encoding_adds_a_feature(data_dir):
    _, _, w = build(data_dir, ticker_encoding="column")
    assert w.spec.n_features == len(FEATURES) + 1 and not w.spec.ticker_embedding
    np.testing.assert_allclose(np.unique(w.x[:, -1].numpy()), [0, 0.5, 1])


def test_memory_grows_with_rows_not_windows(data_dir):
    _, _, w = build(data_dir, seq_len=64)
    n_rows = len(w.row_date)
    assert w.x.shape == (n_rows, len(FEATURES))
    windows = sum(len(a) for a in w.anchors.values())
    assert w.x.numel() < windows * 64 * len(FEATURES) / 10


def test_config_is_not_mutated(data_dir):
    data = DataConfig(seq_len=16, horizon=5)
    with pytest.raises(dataclasses.FrozenInstanceError):
        data.seq_len = 3
