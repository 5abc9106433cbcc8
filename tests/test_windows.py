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


def test_an_embargo_wider_than_the_minimum_is_kept_free_of_anchors(data_dir):
    # A user's safety margin: 30 trading days more than horizon + W - 1 between every two segments.
    bars, data, base = build(data_dir)
    embargo = data.min_embargo + 30
    w = build_windows(bars, data, SplitConfig(), embargo)
    calendar = np.unique(w.row_date)
    pos = {s: np.searchsorted(calendar, w.row_date[w.anchors[s]]) for s in ("train", "valid", "test")}
    assert pos["valid"].min() - pos["train"].max() - 1 >= embargo
    assert pos["test"].min() - pos["valid"].max() - 1 >= embargo
    # the wider gap is cut from the anchors' own segments, not filled by them
    assert len(w.anchors["train"]) < len(base.anchors["train"])


def wreck_after(folder, first_wrecked_date) -> None:
    """Multiply prices by 7 and volumes by 100 on every row dated on or after the given date."""
    for path in folder.glob("*.csv"):
        frame = pd.read_csv(path)
        late = pd.to_datetime(frame["Date"]) >= first_wrecked_date
        frame.loc[late, ["Open", "High", "Low", "Close", "Adj Close"]] *= 7.0
        frame.loc[late, "Volume"] *= 100
        frame.to_csv(path, index=False)


@pytest.mark.parametrize("scaler", ["per_ticker", "standard"])
def test_scaler_is_fit_on_training_rows_only(tmp_path, scaler):
    folder = write_folder(tmp_path / "a", n_tickers=2, n_days=400)
    _, _, base = build(folder, scaler=scaler)
    train_last = np.datetime64(base.segments["train"].last)  # the training segment's last day
    assert base.segments["valid"].first - base.segments["train"].last > pd.Timedelta(days=1)
    # Wreck every row after the training segment, the embargo included: training rows must not move.
    wreck_after(folder, pd.Timestamp(train_last) + pd.Timedelta(days=1))
    _, _, wrecked = build(folder, scaler=scaler)
    train_rows = base.row_date <= train_last
    np.testing.assert_allclose(wrecked.x.numpy()[train_rows], base.x.numpy()[train_rows], rtol=1e-6)
    assert not np.allclose(wrecked.x.numpy()[~train_rows], base.x.numpy()[~train_rows])


def test_a_ticker_with_few_training_rows_takes_the_pooled_scaler(tmp_path):
    # LATE starts 20 rows before the training segment ends: fewer than seq_len (16 + ...) rows.
    folder = write_folder(tmp_path, n_tickers=2, n_days=400)
    _, data, base = build(folder)
    cut = pd.Timestamp(base.segments["train"].last) - pd.tseries.offsets.BDay(10)
    late = make_frame(400, seed=5)
    late[pd.to_datetime(late["Date"]) > cut].to_csv(folder / "LATE.csv", index=False)
    _, _, w = build(folder)
    assert w.pooled_scaler == ["LATE"]
    _, _, pooled = build(folder, scaler="standard")
    k = w.tickers.index("LATE")
    rows = w.ticker.numpy() == k
    np.testing.assert_allclose(w.x.numpy()[rows], pooled.x.numpy()[rows], rtol=1e-6)


def test_the_train_mean_baseline_follows_the_output_window(data_dir):
    bars, data, w = build(data_dir, output_window=1)
    wide = build_windows(bars, data, SplitConfig(), data.min_embargo + 7, anchor_window=8)
    for width in (1, 8):
        sub = wide.for_window(width)
        targets = sub.y.numpy()[sub.anchors["train"][:, None] + np.arange(width)]
        assert sub.train_label_mean == pytest.approx(float(targets.mean()), rel=1e-6)


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
