"""The prepared-data cache: a hit returns exactly what the work would, and anything that changes
the result (a file's bytes, the file set, the data-shaping config, the code) misses."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from hpsearch import cache
from hpsearch.config import from_dict
from hpsearch.runner import prepare
from hpsearch.train import resolve_device
from tests.conftest import make_frame, tiny_study, write_folder

CPU = resolve_device("cpu")


def load(cfg, use_cache=True):
    return cache.load_windows(cfg.data, cfg.split, cfg.embargo, cfg.max_output_window, use_cache)


def entries(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.pt"))


def assert_same(a, b) -> None:
    """Two (bars, windows) pairs hold the same values, field by field."""
    (bars_a, w_a), (bars_b, w_b) = a, b
    assert list(bars_a.frames) == list(bars_b.frames)
    for t in bars_a.frames:
        pd.testing.assert_frame_equal(bars_a.frames[t], bars_b.frames[t], check_exact=True)
    assert bars_a.report == bars_b.report
    assert bars_a.fingerprint == bars_b.fingerprint
    for name in ("x", "y", "ticker"):
        # exactly equal, NaN where NaN (labels whose horizon runs off the end)
        torch.testing.assert_close(getattr(w_a, name), getattr(w_b, name), rtol=0, atol=0, equal_nan=True)
    assert np.array_equal(w_a.row_date, w_b.row_date) and w_a.row_date.dtype == w_b.row_date.dtype
    for s in w_a.anchors:
        assert np.array_equal(w_a.anchors[s], w_b.anchors[s]) and w_a.anchors[s].dtype == np.int64
    assert w_a.segments == w_b.segments
    assert (w_a.tickers, w_a.spec, w_a.skipped, w_a.anchor_window) == (
        w_b.tickers,
        w_b.spec,
        w_b.skipped,
        w_b.anchor_window,
    )
    assert w_a.train_label_mean == w_b.train_label_mean


def test_a_second_run_hits_and_returns_exactly_the_work(tmp_path):
    folder = write_folder(tmp_path / "bars", n_tickers=4, n_days=300)
    # A short ticker (skipped, with its reason) and a defective row (dropped, counted) in the report.
    make_frame(15, seed=9).to_csv(folder / "SHORT.csv", index=False)
    bad = make_frame(300, seed=5)
    bad.loc[10, "High"] = bad.loc[10, "Low"] / 2
    bad.to_csv(folder / "BAD.csv", index=False)
    cfg = from_dict(tiny_study(folder), "tiny.yaml")
    bars, w, hit = load(cfg)
    assert not hit and len(entries(cache.cache_dir())) == 1
    assert bars.report.dropped and bars.report.skipped
    bars2, w2, hit2 = load(cfg)
    assert hit2
    assert_same((bars, w), (bars2, w2))
    assert_same((bars, w), load(cfg, use_cache=False)[:2])


def test_prepare_uses_the_cache_and_gives_the_same_study_inputs(tiny_cfg):
    cold = prepare(tiny_cfg, CPU)
    warm = prepare(tiny_cfg, CPU)
    assert len(entries(cache.cache_dir())) == 1
    assert_same((cold.bars, cold.windows), (warm.bars, warm.windows))
    assert np.array_equal(cold.valid_anchors, warm.valid_anchors)
    assert cold.baselines == warm.baselines


@pytest.mark.parametrize(
    "change",
    ["edit a value", "append a row", "add a file", "remove a file", "rename a file"],
)
def test_any_change_of_the_files_misses(tmp_path, change):
    folder = write_folder(tmp_path / "bars", n_tickers=3, n_days=300)
    cfg = from_dict(tiny_study(folder), "tiny.yaml")
    before = load(cfg)
    first = folder / "T0.csv"
    if change == "edit a value":
        frame = pd.read_csv(first)
        frame.loc[150, "Close"] *= 1.01
        frame.loc[150, "High"] = frame.loc[150, ["High", "Close"]].max()
        frame.to_csv(first, index=False)
    elif change == "append a row":
        frame = make_frame(301, seed=0)
        frame.to_csv(first, index=False)
    elif change == "add a file":
        make_frame(300, seed=7).to_csv(folder / "NEW.csv", index=False)
    elif change == "remove a file":
        (folder / "T2.csv").unlink()
    else:
        first.rename(folder / "RENAMED.csv")
    after = load(cfg)
    assert not after[2]
    assert len(entries(cache.cache_dir())) == 2
    assert after[0].fingerprint["sha256"] != before[0].fingerprint["sha256"]
    assert_same(after[:2], load(cfg, use_cache=False)[:2])


@pytest.mark.parametrize(
    ("section", "change"),
    [
        ("data", {"seq_len": 12}),
        ("data", {"horizon": 3}),
        ("data", {"output_window": 2}),
        ("data", {"label_scale": 100.0}),
        ("data", {"price_features": "levels"}),
        ("data", {"ticker_encoding": "column"}),
        ("data", {"scaler": "standard"}),
        ("data", {"drop_zero_volume": True}),
        ("data", {"tickers": ["T0", "T1"]}),
        ("split", {"train": 0.5, "valid": 0.25, "test": 0.25}),
        ("split", {"embargo": 12}),
    ],
)
def test_a_data_shaping_change_misses(data_dir, section, change):
    base = tiny_study(data_dir)
    load(from_dict(base, "tiny.yaml"))
    changed = from_dict(tiny_study(data_dir, **{section: {**base.get(section, {}), **change}}), "tiny.yaml")
    bars, w, hit = load(changed)
    assert not hit
    assert_same((bars, w), load(changed, use_cache=False)[:2])


def test_a_searched_output_window_widens_the_anchors_and_misses(data_dir):
    base = tiny_study(data_dir)
    load(from_dict(base, "tiny.yaml"))
    search = {**base["search"], "output_window": {"type": "categorical", "choices": [1, 3]}}
    assert not load(from_dict(tiny_study(data_dir, search=search), "tiny.yaml"))[2]


def test_training_settings_do_not_change_the_key(data_dir):
    load(from_dict(tiny_study(data_dir), "tiny.yaml"))
    other = tiny_study(data_dir, training={"valid_samples": 32, "batch_size": 8}, seed=5, name="other")
    assert load(from_dict(other, "other.yaml"))[2]


def test_a_change_of_the_code_that_shapes_data_misses(data_dir, tmp_path, monkeypatch):
    cfg = from_dict(tiny_study(data_dir), "tiny.yaml")
    before = cache.key(cfg.data, cfg.split, cfg.embargo, 1)
    copy = tmp_path / "package"
    shutil.copytree(cache._PACKAGE, copy, ignore=shutil.ignore_patterns("sample", "__pycache__"))
    monkeypatch.setattr(cache, "_PACKAGE", copy)
    assert cache.key(cfg.data, cfg.split, cfg.embargo, 1) == before
    with (copy / "windows.py").open("a") as fh:
        fh.write("\n# a change\n")
    assert cache.key(cfg.data, cfg.split, cfg.embargo, 1) != before


def test_off_writes_nothing(data_dir, monkeypatch, tmp_path):
    monkeypatch.setenv(cache.ENV, "off")
    assert cache.cache_dir() is None
    cfg = from_dict(tiny_study(data_dir), "tiny.yaml")
    assert not load(cfg)[2] and not load(cfg)[2]
    monkeypatch.setenv(cache.ENV, str(tmp_path / "c"))
    assert not load(cfg, use_cache=False)[2]
    assert not (tmp_path / "c").exists()


def test_default_location_is_runs_cache_of_the_working_directory(data_dir, monkeypatch, tmp_path):
    monkeypatch.delenv(cache.ENV)
    monkeypatch.chdir(tmp_path)
    load(from_dict(tiny_study(data_dir), "tiny.yaml"))
    assert len(entries(tmp_path / "runs" / "cache")) == 1


def test_a_damaged_entry_is_a_miss_and_is_rewritten(data_dir):
    cfg = from_dict(tiny_study(data_dir), "tiny.yaml")
    good = load(cfg)
    (entry,) = entries(cache.cache_dir())
    entry.write_bytes(entry.read_bytes()[:1000])
    bars, w, hit = load(cfg)
    assert not hit
    assert_same(good[:2], (bars, w))
    assert load(cfg)[2]


def test_an_unwritable_cache_only_costs_time(data_dir, tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setenv(cache.ENV, str(blocker / "cache"))
    cfg = from_dict(tiny_study(data_dir), "tiny.yaml")
    assert not load(cfg)[2] and not load(cfg)[2]


def test_only_the_newest_entries_are_kept(data_dir, monkeypatch):
    monkeypatch.setattr(cache, "KEEP", 2)
    for seq_len in (10, 11, 12):
        cfg = from_dict(tiny_study(data_dir, data={"seq_len": seq_len}), "tiny.yaml")
        load(cfg)
    cache.prune(cache.cache_dir(), keep=2)
    assert len(entries(cache.cache_dir())) == 2


def test_a_missing_folder_is_the_same_error_with_or_without_cache(tmp_path):
    from hpsearch.errors import DataError

    cfg = from_dict(tiny_study(tmp_path / "absent"), "tiny.yaml")
    for use in (True, False):
        with pytest.raises(DataError, match="data folder not found"):
            load(cfg, use)


def test_windows_from_the_cache_train_like_fresh_ones(tiny_cfg):
    from hpsearch.models import build_model
    from hpsearch.train import seed_everything, train

    results = []
    for _ in range(2):
        prep = prepare(tiny_cfg, CPU)
        seed_everything(0)
        model = build_model(tiny_cfg.model_family, tiny_cfg.model, prep.windows.spec)
        training = dataclasses.replace(tiny_cfg.training, max_epochs=2)
        result = train(model, prep.windows, training, 0, prep.valid_anchors)
        results.append([e.valid_loss for e in result.history])
    assert results[0] == results[1]
