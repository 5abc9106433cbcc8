"""Speed, measured: hpsearch against the straightforward pipeline and against this machine's limit.

    python scripts/bench.py [--quick] [--data DIR] [--threads N] [--device auto]

Prints one table. Every figure stands beside its baseline measured in the same run; competing
variants run interleaved (A, B, A, B, ...) and each figure is the median of its repetitions, so a
machine whose load drifts still gives fair ratios. Sections (issue 8):

1. data preparation of the S&P 500 folder: hpsearch cold (no cache), warm (cache hit) and a path
   that materializes every window; each in its own process, so that peak memory is its own;
2. CNN training throughput over an epoch, data loading included: hpsearch's loop against the
   reference lab's (Dataset slicing one window, DataLoader, batch 64, layer-by-layer CNN, default
   Adam), lever by lever; the model's GFLOP/s against this machine's float32 matmul;
3. the validation pass's share of an epoch at the default study settings, the subsample's size
   and its effect on the ranking of learning rates;
4. time to an answer: the lr_sweep study against the same trials run the reference lab's way;
5. search efficiency: epochs trained with early stopping and pruning against every trial run to
   max_epochs;
6. Transformer training throughput at W = 1 and W = 48, as in 2: hpsearch's loop (its attention and
   dropout kernels on CPU) against the reference loop with torch's modules, the kernels' share,
   and GFLOP/s against matmul (FLOPs counted with torch's math attention).

`--quick` shrinks every section (fewer tickers, windows, trials, epochs; the table says so) to
run in under two minutes; it is what CI may call. The full run is for the record.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import optuna
import torch
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from hpsearch import train as train_module
from hpsearch.config import Component, StudyConfig, load_study
from hpsearch.data import find_files, ticker_from_name
from hpsearch.models import build_model, cpu_kernels
from hpsearch.models.cnn2d import Cnn2d
from hpsearch.models.transformer import Transformer, TransformerConfig
from hpsearch.reference import ReferenceCnn2d, loader, reference_epoch, reference_valid_loss
from hpsearch.runner import FINISHED, open_study, optimize, prepare
from hpsearch.train import make_optimizer, predict, resolve_device, train, train_epoch, valid_losses
from hpsearch.windows import SEGMENTS, WindowData

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "sp500"
GIB = 1024**3


@dataclass(frozen=True)
class Plan:
    """How much of each section to run."""

    prep_tickers: int | None  # section 1: tickers of the folder (None: all)
    epoch_windows: int  # sections 2 and 6: training windows per timed epoch
    reps: int  # repetitions of every interleaved measurement
    transformer_windows: int
    study_scale: dict  # section 3-5: overrides of the lr_sweep study (empty: as shipped)
    reference_epochs: int  # section 4: trial-epochs run the reference way, then scaled
    rank_lrs: int  # section 3: learning rates ranked on the subsample and on all windows
    rank_epochs: int
    compile: bool  # section 2: try torch.compile (tens of seconds of compilation)


FULL = Plan(None, 8192, 5, 2048, {}, 6, 6, 4, True)
QUICK = Plan(
    30,
    1024,
    3,
    256,
    {
        "n_trials": 6,
        "training": {"max_epochs": 5, "samples_per_epoch": 1024, "valid_samples": 1024, "patience": 2},
        "sampler": {"n_startup_trials": 3},
        "pruner": {"n_startup_trials": 2, "n_warmup_steps": 2},
    },
    2,
    4,
    2,
    False,
)


@dataclass
class Row:
    section: str
    what: str
    ours: str
    baseline: str = ""
    ratio: str = ""
    target: str = ""
    met: bool | None = None


@dataclass
class Bench:
    plan: Plan
    device: torch.device
    threads: int
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    _peak: float | None = None

    def add(self, *args, **kw) -> None:
        self.rows.append(Row(*args, **kw))

    def matmul_peak(self, device: torch.device) -> float:
        """This machine's float32 matmul GFLOP/s, measured once per run (sections 2 and 6)."""
        if self._peak is None:
            self._peak = matmul_gflops(device, self.plan.reps)
        return self._peak


# ---------------------------------------------------------------------------------- timing


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device) -> float:
    sync(device)
    t = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t


def interleaved(
    variants: dict[str, Callable[[], object]], reps: int, device: torch.device
) -> dict[str, float]:
    """Median seconds of each variant, run in turn (A, B, C, A, B, C, ...) after one warm-up each."""
    for fn in variants.values():
        fn()
    times: dict[str, list[float]] = {k: [] for k in variants}
    for r in range(reps):
        names = list(variants)
        names = names[r % len(names) :] + names[: r % len(names)]  # rotate who goes first
        for name in names:
            times[name].append(timed(variants[name], device))
    return {k: statistics.median(v) for k, v in times.items()}


def with_env(fn: Callable[[], object], **env: str) -> Callable[[], object]:
    """fn run with these environment variables set, e.g. HPSEARCH_CPU_KERNELS="0": the CNN runs
    torch's modules, as on a machine where the fused kernels cannot be built."""

    def run():
        old = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        try:
            return fn()
        finally:
            for k, v in old.items():
                if v is None:
                    del os.environ[k]
                else:
                    os.environ[k] = v

    return run


def fmt_s(seconds: float) -> str:
    return f"{seconds:.2f} s" if seconds < 100 else f"{seconds / 60:.1f} min"


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b > 0 else "-"


# ---------------------------------------------------------------------------------- studies


def study_config(plan: Plan, device: torch.device, **more) -> StudyConfig:
    """The shipped lr_sweep, scaled down by the plan where it says so."""
    cfg = load_study("lr_sweep")
    scale = {**plan.study_scale, **more}
    for key, value in scale.items():
        if key == "training":
            cfg = dataclasses.replace(cfg, training=dataclasses.replace(cfg.training, **value))
        elif key in ("sampler", "pruner"):
            old = getattr(cfg, key)
            cfg = dataclasses.replace(cfg, **{key: Component(old.name, {**old.options, **value})})
        elif key == "data":
            cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, **value))
        else:
            cfg = dataclasses.replace(cfg, **{key: value})
    return dataclasses.replace(cfg, training=dataclasses.replace(cfg.training, device=str(device)))


# ------------------------------------------------------------------------- 1: data preparation


def child_prep(args: argparse.Namespace) -> None:
    """Run in a subprocess: one preparation path, then its time and this process's peak memory."""
    import resource

    def peak() -> float:
        r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return r / GIB if sys.platform == "darwin" else r * 1024 / GIB

    cfg = load_study("lr_sweep")
    tickers = tuple(args.tickers.split(",")) if args.tickers else None
    cfg = dataclasses.replace(
        cfg, data=dataclasses.replace(cfg.data, path=args.data or None, tickers=tickers)
    )
    before = peak()
    t = time.perf_counter()
    prep = prepare(cfg, torch.device("cpu"), use_cache=args.mode != "materialize")
    held = sum(t.numel() * t.element_size() for t in (prep.windows.x, prep.windows.y, prep.windows.ticker))
    held += sum(a.nbytes for a in prep.windows.anchors.values())
    if args.mode == "materialize":
        w, T = prep.windows, prep.windows.spec.seq_len
        x = w.x.numpy()
        # The obvious way: every window its own (T, F) array, stacked per segment.
        windows = {s: np.stack([x[a - T + 1 : a + 1] for a in w.anchors[s]]) for s in SEGMENTS}
        held = sum(v.nbytes for v in windows.values())
    seconds = time.perf_counter() - t
    print(json.dumps({"seconds": seconds, "peak_gib": peak(), "imports_gib": before, "held_gib": held / GIB}))


def child_malloc(args: argparse.Namespace) -> None:
    """Run in a subprocess: an epoch of the hpsearch loop (training, then the validation pass) with
    glibc's default malloc settings or with hpsearch's (train.keep_freed_memory), which hold for a
    whole process; medians of its seconds and page faults."""
    import resource

    if args.mode == "malloc-kept":
        assert train_module.keep_freed_memory(), "mallopt unavailable"
    torch.set_num_threads(args.threads)
    plan = QUICK if args.quick else FULL
    cfg = study_config(plan, torch.device("cpu"))
    prep = prepare(cfg, torch.device("cpu"))
    w, tc = prep.windows, cfg.training
    torch.manual_seed(0)
    model = Cnn2d(cfg.model, w.spec)
    opt = make_optimizer(model, tc, torch.device("cpu"))
    anchors = torch.as_tensor(w.anchors["train"])
    order = anchors[
        torch.randperm(len(anchors), generator=torch.Generator().manual_seed(0))[: plan.epoch_windows]
    ]

    def faults() -> int:
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt

    rows = []
    for rep in range(plan.reps + 1):  # the first is a warm-up
        f0, t0 = faults(), time.perf_counter()
        train_epoch(model, w, order, opt, tc.batch_size, nn.MSELoss())
        f1, t1 = faults(), time.perf_counter()
        predict(model, w, prep.valid_anchors)
        f2, t2 = faults(), time.perf_counter()
        if rep:
            rows.append((t1 - t0, t2 - t1, f1 - f0, f2 - f1))
    med = [statistics.median(col) for col in zip(*rows, strict=True)]
    keys = ("train_s", "valid_s", "train_faults", "valid_faults")
    print(
        json.dumps(
            {**dict(zip(keys, med, strict=True)), "windows": len(order), "valid": len(prep.valid_anchors)}
        )
    )


def section_malloc(b: Bench) -> None:
    """The allocator lever, in alternating child processes: it holds for a whole process, so it
    cannot be interleaved within one."""
    if b.device.type != "cpu":
        return
    runs: dict[str, list[dict]] = {"malloc-default": [], "malloc-kept": []}
    for _ in range(max(1, b.plan.reps // 2)):
        for mode in runs:
            cmd = [sys.executable, __file__, "--child", mode, "--threads", str(b.threads)]
            cmd += ["--quick"] if b.plan is QUICK else []
            out = subprocess.run(cmd, capture_output=True, text=True, check=False, cwd=REPO)
            if out.returncode != 0:
                b.add(
                    "3 validation", "lever: malloc keeps freed blocks", f"failed: {out.stderr.strip()[-80:]}"
                )
                return
            runs[mode].append(json.loads(out.stdout.strip().splitlines()[-1]))
    m = {mode: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for mode, rs in runs.items()}
    kept, default = m["malloc-kept"], m["malloc-default"]

    def show(r: dict) -> str:
        return (
            f"epoch {fmt_s(r['train_s'] + r['valid_s'])}: valid {r['valid'] / r['valid_s']:,.0f} win/s, "
            f"{r['valid_faults']:,.0f} page faults/pass; train {r['windows'] / r['train_s']:,.0f} win/s"
        )

    b.add(
        "3 validation",
        "lever kept: glibc malloc keeps freed blocks (train.keep_freed_memory; child processes, "
        "alternating; both loops of sections 2-5 run with it)",
        show(kept),
        "default malloc: " + show(default),
        ratio(default["train_s"] + default["valid_s"], kept["train_s"] + kept["valid_s"]) + " epoch",
    )


def run_child(mode: str, data: str, tickers: list[str] | None, cache: str) -> dict:
    cmd = [sys.executable, __file__, "--child", mode, "--data", data, "--tickers", ",".join(tickers or [])]
    env = {**os.environ, "HPSEARCH_CACHE_DIR": cache}
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False, cwd=REPO)
    if out.returncode != 0:
        raise RuntimeError(f"{mode} preparation failed: {out.stderr.strip().splitlines()[-1:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def section_prep(b: Bench, data_dir: Path | None) -> None:
    if data_dir is None or not data_dir.is_dir():
        b.notes.append(
            f"1: {data_dir or DEFAULT_DATA} not found: the full-size run is skipped; section 1 runs on the "
            "shipped sample (24 tickers)"
        )
        data, tickers, label = "", None, "shipped sample, 24 tickers"
    else:
        names = sorted({ticker_from_name(f) for f in find_files(data_dir)})
        tickers = names[: b.plan.prep_tickers] if b.plan.prep_tickers else None
        data = str(data_dir)
        label = f"{len(tickers) if tickers else len(names)} of {len(names)} tickers"
    with tempfile.TemporaryDirectory(prefix="hpsearch-bench-cache-") as cache:
        cold = run_child("cold", data, tickers, cache)
        warm = run_child("warm", data, tickers, cache)
        naive = run_child("materialize", data, tickers, "off")
    s = "1 data prep"
    b.add(
        s,
        f"cold: load, clean, features, labels, split, scale, index, cache write ({label})",
        f"{fmt_s(cold['seconds'])}, peak {cold['peak_gib']:.2f} GiB",
        f"materialized windows: {fmt_s(naive['seconds'])}, peak {naive['peak_gib']:.2f} GiB",
        f"{ratio(naive['seconds'], cold['seconds'])} time, "
        f"{ratio(naive['peak_gib'], cold['peak_gib'])} memory",
        "<= 15 s, <= 2 GiB",
        cold["seconds"] <= 15 and cold["peak_gib"] <= 2,
    )
    b.add(
        s,
        "warm: the same data and config again (cache hit)",
        fmt_s(warm["seconds"]),
        f"cold {fmt_s(cold['seconds'])}",
        ratio(cold["seconds"], warm["seconds"]),
        "<= 2 s",
        warm["seconds"] <= 2,
    )
    b.add(
        s,
        "windows held in memory (peaks include ~{:.2f} GiB of imports)".format(cold["imports_gib"]),
        f"{cold['held_gib']:.3f} GiB (rows x features + index)",
        f"{naive['held_gib']:.2f} GiB (windows x T x F)",
        ratio(naive["held_gib"], cold["held_gib"]),
    )


# --------------------------------------------------------------------- 2: CNN training throughput


def gather_by_indexing(data: WindowData, anchors: torch.Tensor):
    """The previous gather: advanced indexing of a (B, T) row index."""
    T, W = data.spec.seq_len, data.spec.output_window
    past = torch.arange(-T + 1, 1, device=anchors.device)
    ahead = torch.arange(W, device=anchors.device)
    return data.x[anchors[:, None] + past], data.y[anchors[:, None] + ahead], data.ticker[anchors]


def gathered_epoch(model, opt, data: WindowData, order: torch.Tensor, batch: int, gather) -> None:
    model.train()
    loss_fn = nn.MSELoss()
    for start in range(0, len(order), batch):
        x, y, tk = gather(data, order[start : start + batch])
        loss = loss_fn(model(x, tk), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        loss.item()


class ChannelsLast(nn.Module):
    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return z.contiguous(memory_format=torch.channels_last)


class LayoutCnn2d(ReferenceCnn2d):
    """Bench only: hpsearch's previous formulation, one lever short of today's. The library's
    conv1, its output copied to channels-last, each max-pool before its ReLU; flattened in the
    reference's order (another copy)."""

    def __init__(self, cfg, spec) -> None:
        super().__init__(cfg, spec)
        conv1, conv2 = self.features[0], self.features[3]
        pool, relu = nn.MaxPool2d((2, 1)), nn.ReLU(inplace=True)
        self.features = nn.Sequential(conv1, ChannelsLast(), pool, relu, conv2, pool, relu)

    def load_state_dict(self, state, strict=True, assign=False):
        # conv2 sits at index 4 here, at 3 in the reference's keys.
        state = {k.replace("features.3.", "features.4."): v for k, v in state.items()}
        return super().load_state_dict(state, strict, assign)


class Conv1AsMatmul(nn.Module):
    """Bench only (a lever that did not pay): the one-channel first convolution as the k*k shifted
    copies of the window times a (k*k, c1) matrix, written straight into channels-last layout.
    (hpsearch's OneChannelConv2d instead multiplies k rows of F features by a banded matrix.)"""

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        self.conv = conv

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        B, _, T, F = z.shape
        k = self.conv.kernel_size[0]
        p = k // 2
        zp = nn.functional.pad(z[:, 0], (p, p, p, p))  # (B, T, F) -> (B, T + 2p, F + 2p)
        cols = torch.stack(
            [zp[:, i : i + T, j : j + F] for i in range(k) for j in range(k)], -1
        )  # (B, T, F, k*k)
        w = self.conv.weight.view(self.conv.out_channels, k * k)  # (c1, k*k)
        out = torch.addmm(self.conv.bias, cols.view(-1, k * k), w.t())  # (B*T*F, c1)
        return out.view(B, T, F, -1).permute(0, 3, 1, 2)  # (B, c1, T, F) in channels-last memory


def flops_per_window(model: nn.Module, data: WindowData, batch: int) -> float:
    """Forward + backward FLOPs of one training step, per window (torch's FlopCounterMode)."""
    x, y, tk = data.gather(torch.as_tensor(data.anchors["train"][:batch], device=data.x.device))
    with FlopCounterMode(display=False) as counter:
        nn.functional.mse_loss(model(x, tk), y).backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops() / batch


def matmul_gflops(device: torch.device, reps: int) -> float:
    """This machine's float32 matmul GFLOP/s: the better of two square sizes, so that the
    denominator of "model GFLOP/s against matmul" is the machine's peak, not one size's dip
    (on a 2-core EPYC: n=1024 122, 2048 139, 4096 141 GFLOP/s)."""
    best = 0.0
    for n in (4096, 8192) if device.type == "cuda" else (2048, 4096):
        a, c = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
        seconds = interleaved({"mm": lambda a=a, c=c: a @ c}, max(reps, 5), device)["mm"]
        best = max(best, 2 * n**3 / seconds / 1e9)
    return best


def section_cnn(b: Bench, prep) -> None:
    plan, dev = b.plan, b.device
    w = prep.windows
    cfg = prep.cfg.model
    tc = prep.cfg.training
    n = plan.epoch_windows
    gen = torch.Generator().manual_seed(0)
    train_anchors = torch.as_tensor(w.anchors["train"])

    def order() -> torch.Tensor:
        return train_anchors[torch.randperm(len(train_anchors), generator=gen)[:n]].to(dev)

    torch.manual_seed(0)
    base = Cnn2d(cfg, w.spec).to(dev)

    def fresh(kind: str) -> nn.Module:
        m = {"ref": ReferenceCnn2d, "layout": LayoutCnn2d, "fast": Cnn2d}[kind](cfg, w.spec).to(dev)
        m.load_state_dict(base.state_dict())
        return m

    def reference_loop(batch: int):
        model = fresh("ref")
        opt = torch.optim.Adam(model.parameters(), lr=tc.lr)
        rng = iter(range(10**9))
        return lambda: reference_epoch(
            model, loader(w, w.anchors["train"], shuffle=True, samples=n, seed=next(rng)), opt, dev
        )

    def gathered(kind: str, gather, fused: bool, batch: int = 64):
        model = fresh(kind)
        opt = make_optimizer(model, tc, dev) if fused else torch.optim.Adam(model.parameters(), lr=tc.lr)
        return lambda: gathered_epoch(model, opt, w, order(), batch, gather)

    def hpsearch_loop(batch: int = 64, model: nn.Module | None = None):
        model = model if model is not None else fresh("fast")
        opt = make_optimizer(model, tc, dev)
        loss_fn = nn.MSELoss()
        return lambda: train_epoch(model, w, order(), opt, batch, loss_fn)

    steps = {
        "reference": reference_loop(64),
        "gather": gathered("ref", gather_by_indexing, False),
        "index_select": gathered("ref", WindowData.gather, False),
        "fused": gathered("ref", WindowData.gather, True),
        "layout": hpsearch_loop(64, fresh("layout")),
        "modules": with_env(hpsearch_loop(64), **{cpu_kernels.ENV: "0"}),
        "onednn": with_env(
            hpsearch_loop(64), HPSEARCH_CPU_KERNELS_GENERIC="1", HPSEARCH_CPU_KERNELS_ONEDNN="1"
        ),
        "generic": with_env(hpsearch_loop(64), HPSEARCH_CPU_KERNELS_GENERIC="1"),
        "hpsearch": hpsearch_loop(64),
    }
    conv1 = fresh("layout")
    conv1.features[0] = Conv1AsMatmul(conv1.features[0])
    steps["conv1_matmul"] = hpsearch_loop(64, conv1)
    t = interleaved(steps, plan.reps, dev)
    per = {k: n / v for k, v in t.items()}
    s = "2 CNN train"
    head = f"epoch of {n} windows, batch 64, data loading included ({b.threads} threads)"
    b.add(
        s,
        f"hpsearch loop vs reference DataLoader loop: {head}",
        f"{per['hpsearch']:,.0f} win/s",
        f"{per['reference']:,.0f} win/s",
        ratio(per["hpsearch"], per["reference"]),
        ">= 2x",
        per["hpsearch"] >= 2 * per["reference"],
    )
    avx512 = torch.backends.cpu.get_cpu_capability().startswith("AVX512")
    chain = [
        ("gather", "lever kept: batches gathered from the row index (no Dataset, no collate)", "reference"),
        ("index_select", "lever kept: gather by index_select instead of advanced indexing", "gather"),
        ("fused", "lever kept: fused Adam (one kernel for all parameters)", "index_select"),
        ("layout", "lever kept: channels-last after conv1, max-pool before ReLU", "fused"),
        (
            "modules",
            "lever kept: conv1 as one banded (k*F, F*c1) matmul writing channels-last; head reads "
            "channels-last (no flatten copy) [the path where the fused kernels cannot be built]",
            "layout",
        ),
        (
            "onednn",
            "lever kept: fused CPU kernels (C++, built on first use): the feature block as one op "
            "each way (conv1+max-pool+ReLU in one pass, oneDNN conv2, max-pool+ReLU in one pass); "
            "head reads the reference's order [generic loops]",
            "modules",
        ),
        (
            "generic",
            "lever kept: conv2 as hpsearch's direct convolution (8 floats) fused with its pool, forward "
            "and backward, instead of oneDNN's [generic loops]",
            "onednn",
        ),
        (
            "hpsearch",
            "lever kept: AVX-512 where the CPU has it: conv2's direct convolution at 16 floats, "
            "forward and backward"
            + ("" if avx512 else " [this CPU has no AVX-512: the same code as the row above]"),
            "generic",
        ),
        ("conv1_matmul", "lever NOT kept: conv1 as k*k shifted copies @ (k*k, c1) matrix", "layout"),
    ]
    for key, what, prev in chain:
        b.add(s, what, f"{per[key]:,.0f} win/s", f"{per[prev]:,.0f} ({prev})", ratio(per[key], per[prev]))

    # Threads: the same loop at this run's thread count against the other natural setting.
    other = 1 if b.threads > 1 else (os.cpu_count() or 1)
    if other != b.threads:
        loop = hpsearch_loop(64)

        def with_other():
            torch.set_num_threads(other)
            try:
                loop()
            finally:
                torch.set_num_threads(b.threads)

        t2 = interleaved({"this": loop, "other": with_other}, plan.reps, dev)
        b.add(
            s,
            f"lever: torch intra-op threads {b.threads} (this run) vs {other}",
            f"{n / t2['this']:,.0f} win/s",
            f"{n / t2['other']:,.0f} ({other} threads)",
            ratio(t2["other"], t2["this"]),
        )

    if plan.compile:
        section_compile(b, fresh("fast"), hpsearch_loop, n)
    else:
        b.add(s, "lever: torch.compile", "not measured with --quick (tens of seconds of compilation)")

    # GFLOP/s at batch 64 and 256 against float32 matmul.
    flops = flops_per_window(fresh("ref"), w, 256)
    big = interleaved(
        {"hps": hpsearch_loop(256), "ref": gathered("ref", WindowData.gather, False, 256)}, plan.reps, dev
    )
    peak = b.matmul_peak(dev)
    for batch, seconds in ((64, t["hpsearch"]), (256, big["hps"])):
        achieved = flops * n / seconds / 1e9
        b.add(
            s,
            f"model GFLOP/s, batch {batch} (fwd+bwd, {flops / 1e6:.2f} MFLOP/window by FlopCounterMode)",
            f"{achieved:.1f} GFLOP/s",
            f"float32 matmul {peak:.1f} GFLOP/s (best of 2 sizes)",
            f"{achieved / peak:.0%}",
            ">= 40% at batch >= 256" if batch == 256 else "",
            achieved >= 0.4 * peak if batch == 256 else None,
        )
    b.add(
        s,
        "batch 256: hpsearch loop vs layer-by-layer CNN, same gather and Adam",
        f"{n / big['hps']:,.0f} win/s",
        f"{n / big['ref']:,.0f} win/s",
        ratio(big["ref"], big["hps"]),
    )


def section_compile(b: Bench, model: nn.Module, loop_for, n: int) -> None:
    s = "2 CNN train"
    try:
        compiled = torch.compile(model)
        t = time.perf_counter()
        loop = loop_for(64, compiled)
        loop()
        first = time.perf_counter() - t
        plain = loop_for(64)
        t2 = interleaved({"compiled": loop, "plain": plain}, b.plan.reps, b.device)
        b.add(
            s,
            f"lever NOT kept: torch.compile of the modules path (the fused kernels have no meta "
            f"functions), first epoch with compilation {fmt_s(first)}",
            f"{n / t2['compiled']:,.0f} win/s",
            f"{n / t2['plain']:,.0f} (eager)",
            ratio(t2["plain"], t2["compiled"]),
        )
    except Exception as exc:  # noqa: BLE001  (a compiler missing is a result here, not a failure)
        b.add(s, "lever: torch.compile", f"unavailable: {type(exc).__name__}: {str(exc)[:60]}")


# ---------------------------------------------------------------------------- 3: validation


def section_validation(b: Bench, prep) -> None:
    plan, dev = b.plan, b.device
    cfg = prep.cfg
    w = prep.windows
    tc = dataclasses.replace(cfg.training, max_epochs=2, patience=10)
    s = "3 validation"

    def run_train(eval_batches: dict | None) -> list[float]:
        old = train_module.EVAL_BATCH
        if eval_batches is not None:
            train_module.EVAL_BATCH = eval_batches
        try:
            torch.manual_seed(0)
            model = build_model(cfg.model_family, cfg.model, w.spec)
            history = train(model, w, tc, 0, prep.valid_anchors).history
        finally:
            train_module.EVAL_BATCH = old
        return [e.valid_seconds / e.seconds for e in history]

    shares: dict[str, list[float]] = {"now": [], "old": []}
    for _ in range(max(1, plan.reps // 2)):
        shares["now"] += run_train(None)
        shares["old"] += run_train({})  # every device at 4096, the previous setting
    torch.manual_seed(0)
    ref = ReferenceCnn2d(cfg.model, w.spec).to(dev)
    opt = torch.optim.Adam(ref.parameters(), lr=tc.lr)
    n_train = tc.samples_per_epoch or len(w.anchors["train"])
    t = interleaved(
        {
            "train": lambda: reference_epoch(ref, loader(w, w.anchors["train"], True, n_train), opt, dev),
            "valid": lambda: reference_valid_loss(ref, loader(w, prep.valid_anchors, False), dev),
        },
        max(1, plan.reps // 2),
        dev,
    )
    now, old = statistics.median(shares["now"]), statistics.median(shares["old"])
    ref_share = t["valid"] / (t["train"] + t["valid"])
    setting = f"{n_train} train + {len(prep.valid_anchors)} valid windows"
    eb = train_module.eval_batch(dev)
    b.add(
        s,
        f"validation share of an epoch ({setting}; inference_mode, batch {eb} on {dev.type})",
        f"{now:.0%}",
        f"reference loop (DataLoader 64, no_grad): {ref_share:.0%}",
        "",
        "<= 25%",
        now <= 0.25,
    )
    b.add(
        s,
        "lever kept: inference batch 256 on CPU (was 4096: activations out of cache)",
        f"{now:.0%}",
        f"{old:.0%} at 4096",
    )
    n_all = len(w.anchors["valid"])
    b.add(
        s,
        f"fixed validation subsample: {len(prep.valid_anchors)} of {n_all} validation windows, "
        "the same for every trial",
        f"{len(prep.valid_anchors) / n_all:.0%} of the pass",
        f"all {n_all}",
    )
    section_ranking(b, prep)


def section_ranking(b: Bench, prep) -> None:
    """Does the subsample rank learning rates as all validation windows do?"""
    plan, cfg, w = b.plan, prep.cfg, prep.windows
    lrs = np.geomspace(1e-5, 1e-2, plan.rank_lrs)
    tc = dataclasses.replace(cfg.training, max_epochs=plan.rank_epochs, patience=plan.rank_epochs)
    sub, full = [], []
    for k, lr in enumerate(lrs):
        torch.manual_seed(k)
        model = build_model(cfg.model_family, cfg.model, w.spec)
        result = train(model, w, dataclasses.replace(tc, lr=float(lr)), k, prep.valid_anchors)
        if result.best_state is None:  # diverged in its first epoch: nothing to rank
            continue
        model.load_state_dict(result.best_state)
        sub.append(result.best_valid)
        full.append(valid_losses(model, w, w.anchors["valid"])[0])
    rho = spearman(np.array(sub), np.array(full))
    same_best = int(np.argmin(sub)) == int(np.argmin(full))
    b.add(
        "3 validation",
        f"ranking of {len(lrs)} lrs ({lrs[0]:.0e}..{lrs[-1]:.0e}, {plan.rank_epochs} epochs) "
        "by the subsample vs by all windows",
        f"Spearman {rho:.2f}",
        "1.00 = same order",
        "same best lr" if same_best else "best lr differs",
        "",
        None,
    )


def spearman(a: np.ndarray, c: np.ndarray) -> float:
    ra, rc = np.argsort(np.argsort(a)), np.argsort(np.argsort(c))
    return float(np.corrcoef(ra, rc)[0, 1])


# ----------------------------------------------------------------- 4 + 5: time to an answer


def run_study(
    cfg: StudyConfig, folder: Path, device: torch.device, use_cache: bool
) -> tuple[optuna.Study, float]:
    t = time.perf_counter()
    prep = prepare(cfg, device, use_cache=use_cache)
    study, _ = open_study(cfg, f"sqlite:///{folder / (cfg.name + '.db')}", prep)
    optimize(cfg, study, prep)
    return study, time.perf_counter() - t


@contextlib.contextmanager
def stdout_silenced():
    """File descriptor 1 to /dev/null, for this process and the workers it spawns (their per-trial
    lines would break the one table)."""
    sys.stdout.flush()
    saved, devnull = os.dup(1), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)
        os.close(devnull)


def run_parallel(
    cfg: StudyConfig, folder: Path, device: torch.device, workers: int
) -> tuple[optuna.Study, float]:
    """The same study with `hpsearch run --workers N`: N processes, cores divided among them."""
    from hpsearch.parallel import run_workers

    t = time.perf_counter()
    prep = prepare(cfg, device, use_cache=False)
    url = f"sqlite:///{folder / (cfg.name + '.db')}"
    study, _ = open_study(cfg, url, prep)
    with stdout_silenced():
        run_workers(cfg, url, workers, Console(file=io.StringIO()), 0)
    return study, time.perf_counter() - t


def section_answer(b: Bench, prep_cfg: StudyConfig) -> None:
    plan, dev = b.plan, b.device
    cfg = prep_cfg
    tc = cfg.training
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    workers = os.cpu_count() or 1
    with tempfile.TemporaryDirectory(prefix="hpsearch-bench-study-") as tmp:
        folder = Path(tmp)
        sweep, sweep_s = run_study(cfg, folder, dev, use_cache=False)
        trials = sorted(sweep.get_trials(deepcopy=False, states=FINISHED), key=lambda t: t.number)
        epochs = sum(int(t.user_attrs.get("epochs", 0)) for t in trials)
        # Every trial to max_epochs: the same configurations in the same order (so the same seeds),
        # no pruner, patience beyond max_epochs.
        full_cfg = dataclasses.replace(
            cfg,
            name=cfg.name + "_every_epoch",
            pruner=Component("none"),
            training=dataclasses.replace(tc, patience=tc.max_epochs + 1),
            enqueue=tuple(dict(t.params) for t in trials),
        )
        full, full_s = run_study(full_cfg, folder, dev, use_cache=True)
        full_epochs = sum(int(t.user_attrs.get("epochs", 0)) for t in full.get_trials(states=FINISHED))
        best, best_full, best_value, full_value = (
            sweep.best_params["lr"],
            full.best_params["lr"],
            sweep.best_value,
            full.best_value,
        )
        par = None
        if workers > 1 and dev.type == "cpu":
            par_study, par_s = run_parallel(
                dataclasses.replace(cfg, name=cfg.name + "_workers"), folder, dev, workers
            )
            par = (par_s, par_study.best_params["lr"], par_study.best_value)

    # The reference lab's way, measured on a few trial-epochs and scaled to every trial x max_epochs:
    # a DataLoader epoch of the same training budget, then a validation pass over the whole
    # validation split, as the lab's loop did. The fixed validation subsample is one of hpsearch's
    # levers (section 3), so a second baseline gives the reference that subsample too: that ratio
    # isolates the loop, early stopping and pruning.
    prep = prepare(cfg, dev)
    w = prep.windows
    n_train = tc.samples_per_epoch or len(w.anchors["train"])
    n_valid = len(w.anchors["valid"])
    parts: dict[str, list[float]] = {"train": [], "valid_all": [], "valid_sub": []}
    for k in range(plan.reference_epochs):
        torch.manual_seed(k)
        ref = ReferenceCnn2d(cfg.model, w.spec).to(dev)
        opt = torch.optim.Adam(ref.parameters(), lr=float(trials[k % len(trials)].params["lr"]))
        batches = loader(w, w.anchors["train"], True, n_train, seed=k)
        parts["train"].append(
            timed(lambda ref=ref, opt=opt, b=batches: reference_epoch(ref, b, opt, dev), dev)
        )
        for key, anchors in (("valid_all", w.anchors["valid"]), ("valid_sub", prep.valid_anchors)):
            vb = loader(w, anchors, False)
            parts[key].append(timed(lambda ref=ref, vb=vb: reference_valid_loss(ref, vb, dev), dev))
    med = {k: statistics.median(v) for k, v in parts.items()}
    prep_s = timed(lambda: prepare(cfg, dev, use_cache=False), dev)
    runs = len(trials) * tc.max_epochs
    ref_s = prep_s + (med["train"] + med["valid_all"]) * runs
    ref_sub_s = prep_s + (med["train"] + med["valid_sub"]) * runs
    agree = max(best, best_full) / min(best, best_full)
    s4 = "4 time to answer"
    scaled = (
        f"scaled from {plan.reference_epochs} trial-epochs x {len(trials)} x {tc.max_epochs} "
        f"+ prep {fmt_s(prep_s)}"
    )
    b.add(
        s4,
        f"{cfg.name}: {len(trials)} trials, <= {tc.max_epochs} epochs of {n_train} windows, "
        f"validation on the {len(prep.valid_anchors)}-window subsample, data prep included",
        fmt_s(sweep_s),
        f"reference way, validating on all {n_valid} validation windows each epoch: "
        f"{fmt_s(ref_s)} ({scaled})",
        ratio(ref_s, sweep_s),
        ">= 5x",
        ref_s >= 5 * sweep_s,
    )
    b.add(
        s4,
        "the same, the reference given hpsearch's validation subsample too (the loop, early stopping "
        "and pruning alone)",
        fmt_s(sweep_s),
        f"reference way, {len(prep.valid_anchors)}-window validation: {fmt_s(ref_sub_s)}",
        ratio(ref_sub_s, sweep_s),
    )
    if par is not None:
        par_agree = max(par[1], best_full) / min(par[1], best_full)
        b.add(
            s4,
            f"the same study with --workers {workers} (cores divided among workers; its own TPE streams)",
            f"{fmt_s(par[0])}, best lr {par[1]:.3g} (valid MSE {par[2]:.6g})",
            f"reference way {fmt_s(ref_s)}, best lr {best_full:.3g} (valid MSE {full_value:.6g})",
            ratio(ref_s, par[0]),
            ">= 5x, lr within 3x",
            ref_s >= 5 * par[0] and par_agree <= 3,
        )
    b.add(
        s4,
        "best lr: search vs every trial to max_epochs (the reference's answer, same loop math)",
        f"{best:.3g}",
        f"{best_full:.3g}",
        f"{agree:.2f}x apart",
        "within 3x",
        agree <= 3,
    )
    s5 = "5 search efficiency"
    saved = 1 - epochs / full_epochs
    b.add(
        s5,
        "epochs trained: early stopping + median pruning vs every trial to max_epochs (same trials, seeds)",
        f"{epochs}",
        f"{full_epochs} (in {fmt_s(full_s)})",
        f"{saved:.0%} saved",
        ">= 60% saved, same best lr",
        saved >= 0.6 and agree <= 3,
    )
    b.add(
        s5,
        "best validation MSE: search vs every trial to max_epochs",
        f"{best_value:.6g}",
        f"{full_value:.6g}",
        f"{best_value / full_value:.4f}",
    )


# ------------------------------------------------------------------------- 6: Transformer


def section_transformer(b: Bench, plan: Plan) -> None:
    """As section 2, for the Transformer family at its defaults: hpsearch's loop (with its
    attention and dropout kernels on CPU) against the reference DataLoader loop with torch's
    modules, the kernels' share of that, and GFLOP/s against this machine's matmul."""
    dev = b.device
    cfg = study_config(plan, dev, data={"output_window": 48})
    prep = prepare(cfg, dev)
    tc = cfg.training
    n = plan.transformer_windows
    s = "6 Transformer"
    gen = torch.Generator().manual_seed(0)
    modules = {cpu_kernels.ENV: "0"}  # torch's own attention and dropout
    kernels = dev.type == "cpu" and cpu_kernels.ops() is not None
    peak = b.matmul_peak(dev)

    def fresh(w: WindowData, base: Transformer) -> Transformer:
        m = Transformer(TransformerConfig(), w.spec).to(dev)
        m.load_state_dict(base.state_dict())
        return m

    def ours(w: WindowData, model: Transformer, batch: int = 64):
        opt = make_optimizer(model, tc, dev)
        anchors = torch.as_tensor(w.anchors["train"])
        order = lambda: anchors[torch.randperm(len(anchors), generator=gen)[:n]].to(dev)  # noqa: E731
        return lambda: train_epoch(model, w, order(), opt, batch, nn.MSELoss())

    def reference(w: WindowData, model: Transformer):
        opt = torch.optim.Adam(model.parameters(), lr=tc.lr)
        rng = iter(range(10**9))

        def epoch():
            return reference_epoch(model, loader(w, w.anchors["train"], True, n, next(rng)), opt, dev)

        return with_env(epoch, **modules)

    for W in (1, 48):
        w = prep.windows.for_window(W)
        torch.manual_seed(0)
        base = Transformer(TransformerConfig(), w.spec).to(dev)  # the family's defaults
        variants = {"hps": ours(w, fresh(w, base)), "ref": reference(w, fresh(w, base))}
        if kernels:
            variants["hps_modules"] = with_env(ours(w, fresh(w, base)), **modules)
        t = interleaved(variants, plan.reps, dev)
        b.add(
            s,
            f"W = {W}: hpsearch loop vs reference DataLoader loop, epoch of {n} windows, batch 64",
            f"{n / t['hps']:,.0f} win/s",
            f"{n / t['ref']:,.0f} win/s",
            ratio(t["ref"], t["hps"]),
            ">= 2x (as 2a)",
            t["ref"] / t["hps"] >= 2,
        )
        if kernels:
            b.add(
                s,
                f"W = {W}: lever kept: attention (q.k, softmax, p.v in one pass per window and head, "
                "both ways) and dropout masks as hpsearch's CPU kernels, vs torch's modules in the same loop",
                f"{n / t['hps']:,.0f} win/s",
                f"{n / t['hps_modules']:,.0f} (modules)",
                ratio(t["hps_modules"], t["hps"]),
            )
        flops = transformer_flops_per_window(fresh(w, base), w, 256)
        big = interleaved({"hps": ours(w, fresh(w, base), 256)}, plan.reps, dev)["hps"]
        for batch, seconds in ((64, t["hps"]), (256, big)):
            achieved = flops * n / seconds / 1e9
            b.add(
                s,
                f"W = {W}: model GFLOP/s, batch {batch} (fwd+bwd, {flops / 1e6:.2f} MFLOP/window by "
                "FlopCounterMode, attention counted as its matmuls)",
                f"{achieved:.1f} GFLOP/s",
                f"float32 matmul {peak:.1f} GFLOP/s (best of 2 sizes)",
                f"{achieved / peak:.0%}",
                "(as 2b: 40% at batch >= 256)" if batch == 256 else "",
                achieved >= 0.4 * peak if batch == 256 else None,
            )


def transformer_flops_per_window(model: nn.Module, data: WindowData, batch: int) -> float:
    """flops_per_window with torch's modules and its math attention: FlopCounterMode has no count
    for hpsearch's kernels or for torch's CPU flash attention, and would leave attention out."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel(SDPBackend.MATH):
        return with_env(lambda: flops_per_window(model, data, batch), **{cpu_kernels.ENV: "0"})()


# ---------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="every section shrunk: under 2 minutes")
    ap.add_argument("--data", default=None, help=f"S&P 500 folder for section 1 (default {DEFAULT_DATA})")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch intra-op threads")
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps")
    ap.add_argument("--only", default="", help="comma-separated sections to run, e.g. 1,2 (default all)")
    ap.add_argument("--json", default=None, help="also write the rows and the run's settings to this file")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--tickers", default="", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        args.mode = args.child
        (child_malloc if args.child.startswith("malloc") else child_prep)(args)
        return 0
    torch.set_num_threads(args.threads)
    plan = QUICK if args.quick else FULL
    bench = Bench(plan, resolve_device(args.device), args.threads)
    if bench.device.type == "cpu":
        # hpsearch's training sets this at its first train(); set here, before any section, so that
        # every in-process figure (hpsearch's and the reference's alike) runs with the same allocator.
        train_module.keep_freed_memory()
        # Built (or loaded from the cache) now, not inside the first timed epoch.
        kernels = "fused" if cpu_kernels.ops() is not None else cpu_kernels.status()
        bench.notes.append(f"CPU kernels (CNN, Transformer): {kernels}")
    only = {s.strip() for s in args.only.split(",") if s.strip()} or {"1", "2", "3", "4", "5", "6"}
    load0 = os.getloadavg()
    t0 = time.perf_counter()
    data_dir = Path(args.data).expanduser() if args.data else DEFAULT_DATA
    if "1" in only:
        section_prep(bench, data_dir)
    cfg = study_config(plan, bench.device)
    if only & {"2", "3"}:
        prep = prepare(cfg, bench.device)
        if "2" in only:
            section_cnn(bench, prep)
        if "3" in only:
            section_validation(bench, prep)
            section_malloc(bench)
    if only & {"4", "5"}:
        section_answer(bench, cfg)
    if "6" in only:
        section_transformer(bench, plan)
    seconds, load1 = time.perf_counter() - t0, os.getloadavg()
    print_table(bench, load0, load1, seconds, args.quick)
    if args.json:
        record = {
            "quick": args.quick,
            "device": str(bench.device),
            "threads": bench.threads,
            "torch": torch.__version__,
            "load_average": [load0[0], load1[0]],
            "seconds": seconds,
            "notes": bench.notes,
            "rows": [dataclasses.asdict(r) for r in bench.rows],
        }
        Path(args.json).write_text(json.dumps(record, indent=1))
    return 0


def print_table(b: Bench, load0, load1, seconds: float, quick: bool) -> None:
    title = (
        f"hpsearch speed ({'--quick: every section shrunk' if quick else 'full run'}) on {b.device} | "
        f"torch {torch.__version__}, {b.threads} threads (torch.set_num_threads), {os.cpu_count()} CPUs | "
        f"load average {load0[0]:.1f} at start, {load1[0]:.1f} at end | {fmt_s(seconds)}"
    )
    notes = [
        "Medians of interleaved repetitions; ratios are of medians measured in this run. Sections 2-6 use "
        "the lr_sweep study's data (the shipped 24-ticker sample) and settings"
        + (", shrunk by --quick." if quick else "."),
        *b.notes,
    ]
    table = Table(title=escape(title), caption=escape("\n".join(notes)), show_lines=False)
    for col in ("section", "measure", "hpsearch", "baseline", "ratio", "target", "met"):
        table.add_column(col, overflow="fold")
    last = None
    for r in b.rows:
        met = "" if r.met is None else ("yes" if r.met else "NO")
        cells = (r.section if r.section != last else "", r.what, r.ours, r.baseline, r.ratio, r.target, met)
        table.add_row(*(escape(c) for c in cells))  # "[...]" in a row is text, not rich markup
        last = r.section
    Console(width=220).print(table)


if __name__ == "__main__":
    sys.exit(main())
