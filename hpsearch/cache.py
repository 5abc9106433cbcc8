"""A disk cache of prepared data: a second run on the same files with the same data-shaping
configuration loads the bars and windows instead of parsing every CSV again.

The key is a sha256 over
- the name and bytes of every data file under the data path (not only the tickers used), so an
  edited, added, removed or renamed file misses;
- the data-shaping configuration: every `data` field, the split, the embargo and the W the anchors
  leave room for (which also fixes the minimum rows per ticker);
- the source of the modules that compute the result (data.py, clean.py, windows.py, this file,
  models/base.py) and the versions of numpy, pandas, scikit-learn and torch, so that a change of
  code cannot serve windows the new code would not build.
Entries hold only tensors, strings and numbers, are written atomically (temporary file, then
rename; concurrent workers may both write, the contents are the same) and are read with
`torch.load(weights_only=True)`, so a cache file cannot run code. An entry that cannot be read is
a miss. The newest `KEEP` entries are kept.

Location: $HPSEARCH_CACHE_DIR, else `runs/cache` under the working directory (next to
runs/hpsearch.db); `HPSEARCH_CACHE_DIR=off` turns the cache off.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import sklearn
import torch

import hpsearch
from hpsearch.clean import TickerReport
from hpsearch.config import DataConfig, SplitConfig
from hpsearch.data import Bars, LoadReport, find_files, load_bars, sample_dir
from hpsearch.models.base import InputSpec
from hpsearch.windows import SEGMENTS, Segment, WindowData, build_windows

FORMAT = 2  # bump when the layout of an entry changes
KEEP = 8  # entries kept; the least recently used beyond that are deleted
ENV = "HPSEARCH_CACHE_DIR"
OFF = ("off", "0", "false", "no", "none")
_PACKAGE = Path(hpsearch.__file__).resolve().parent
CODE = ("data.py", "clean.py", "windows.py", "cache.py", "models/base.py")


def cache_dir() -> Path | None:
    """Where entries live, or None when the cache is off."""
    value = os.environ.get(ENV)
    if value is None:
        return Path("runs") / "cache"
    if value.strip().lower() in OFF or not value.strip():
        return None
    return Path(value).expanduser()


def data_root(path: str | None) -> Path:
    return sample_dir() if path is None else Path(path).expanduser()


def key(data: DataConfig, split: SplitConfig, embargo: int, anchor_window: int) -> str:
    """The entry's name; reads every data file (a DataError when the path holds none)."""
    root = data_root(data.path)
    digest = hashlib.sha256()
    parts = {
        "format": FORMAT,
        "root": str(root.resolve()),
        "data": dataclasses.asdict(data),
        "split": dataclasses.asdict(split),
        "embargo": embargo,
        "anchor_window": anchor_window,
        "versions": [hpsearch.__version__, np.__version__, pd.__version__, sklearn.__version__]
        + [torch.__version__],
    }
    digest.update(json.dumps(parts, sort_keys=True, default=str).encode())
    for name in CODE:
        digest.update(hashlib.sha256((_PACKAGE / name).read_bytes()).digest())
    for f in find_files(root):
        digest.update(f.name.encode() + b"\0")
        try:
            digest.update(hashlib.sha256(f.read_bytes()).digest())
        except OSError:
            digest.update(b"unreadable")  # load_bars reports it; the entry must differ from a readable file's
    return digest.hexdigest()


def load_windows(
    data: DataConfig, split: SplitConfig, embargo: int, anchor_window: int, use_cache: bool = True
) -> tuple[Bars, WindowData, bool]:
    """Bars and windows as `load_bars` + `build_windows` make them, from the cache when it holds
    them; and whether it did."""
    folder = cache_dir() if use_cache else None
    name = key(data, split, embargo, anchor_window) if folder is not None else ""
    if folder is not None:
        found = read(folder / f"{name}.pt")
        if found is not None:
            return found[0], found[1], True
    bars = load_bars(
        data.path,
        data.tickers,
        min_rows=data.seq_len + data.horizon + anchor_window - 1,
        drop_zero_volume=data.drop_zero_volume,
    )
    windows = build_windows(bars, data, split, embargo, anchor_window)
    if folder is not None:
        write(folder / f"{name}.pt", bars, windows)
    return bars, windows, False


def _plain(obj: object) -> object:
    """Dataclasses, Counters and tuples as JSON values (dataclasses.asdict would rebuild a Counter
    from (key, value) pairs, counting the pairs)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: _plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


def _numpy_scalar(obj: object) -> object:
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"cannot store {type(obj).__name__} in a cache entry")


def _report_from(d: dict) -> LoadReport:
    tickers = {}
    for t, r in d["tickers"].items():
        span = r["zero_volume_span"]
        tickers[t] = TickerReport(
            **{**r, "dropped": Counter(r["dropped"]), "zero_volume_span": tuple(span) if span else None}
        )
    return LoadReport(**{**d, "dropped": Counter(d["dropped"]), "tickers": tickers})


def _stamp(t: pd.Timestamp) -> str | None:
    return None if pd.isna(t) else t.isoformat()


def write(path: Path, bars: Bars, w: WindowData) -> None:
    frames = []
    dates, values = [], []
    for ticker, frame in bars.frames.items():
        cols = [c for c in frame.columns if c != "date"]
        d = frame["date"].to_numpy()
        frames.append({"ticker": ticker, "columns": ["date", *cols], "date_dtype": str(d.dtype)})
        dates.append(torch.from_numpy(d.view("int64").copy()))
        values.append(torch.from_numpy(frame[cols].to_numpy(dtype="float64")))
    meta = {
        "format": FORMAT,
        "report": _plain(bars.report),
        "fingerprint": bars.fingerprint,
        "frames": frames,
        "tickers": w.tickers,
        "segments": {s: [_stamp(g.first), _stamp(g.last), g.windows] for s, g in w.segments.items()},
        "spec": dataclasses.asdict(w.spec),
        "train_label_mean": w.train_label_mean,
        "skipped": w.skipped,
        "anchor_window": w.anchor_window,
        "pooled_scaler": w.pooled_scaler,
        "row_date_dtype": str(w.row_date.dtype),
    }
    entry = {
        "meta": json.dumps(meta, default=_numpy_scalar),
        "dates": dates,
        "values": values,
        "x": w.x.cpu(),
        "y": w.y.cpu(),
        "ticker": w.ticker.cpu(),
        "row_date": torch.from_numpy(w.row_date.view("int64").copy()),
        "anchors": {s: torch.from_numpy(w.anchors[s]) for s in SEGMENTS},
    }
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".part")
    except OSError:
        return  # a cache that cannot be written (read-only, full disk) only costs the next run time
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(entry, fh)
        os.replace(tmp, path)
    except OSError:
        Path(tmp).unlink(missing_ok=True)
        return
    prune(path.parent)


def read(path: Path) -> tuple[Bars, WindowData] | None:
    if not path.is_file():
        return None
    try:
        entry = torch.load(path, weights_only=True)
        meta = json.loads(entry["meta"])
        if meta.get("format") != FORMAT:
            return None
        frames = {}
        for f, dates, values in zip(meta["frames"], entry["dates"], entry["values"], strict=True):
            cols = f["columns"]
            body = {"date": dates.numpy().view(f["date_dtype"])}
            body.update({c: values[:, j].numpy() for j, c in enumerate(cols[1:])})
            frames[f["ticker"]] = pd.DataFrame(body, columns=cols)
        bars = Bars(frames, _report_from(meta["report"]), meta["fingerprint"])
        segments = {
            s: Segment(s, pd.Timestamp(first) if first else pd.NaT, pd.Timestamp(last) if last else pd.NaT, n)
            for s, (first, last, n) in meta["segments"].items()
        }
        windows = WindowData(
            x=entry["x"],
            y=entry["y"],
            ticker=entry["ticker"],
            row_date=entry["row_date"].numpy().view(meta["row_date_dtype"]),
            anchors={s: entry["anchors"][s].numpy() for s in SEGMENTS},
            tickers=meta["tickers"],
            segments=segments,
            spec=InputSpec(**meta["spec"]),
            train_label_mean=meta["train_label_mean"],
            skipped=meta["skipped"],
            anchor_window=meta["anchor_window"],
            pooled_scaler=meta["pooled_scaler"],
        )
    except (OSError, RuntimeError, EOFError, KeyError, TypeError, ValueError):
        return None  # truncated, written by another torch, or of another layout: a miss, rewritten
    # Recently used: pruning keeps it. Another process may have pruned it meanwhile; what was read
    # is complete either way.
    with contextlib.suppress(OSError):
        os.utime(path)
    return bars, windows


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def prune(folder: Path, keep: int = KEEP) -> None:
    for old in sorted(folder.glob("*.pt"), key=_mtime, reverse=True)[keep:]:
        old.unlink(missing_ok=True)
