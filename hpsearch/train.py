"""The one training loop, for every model family. It knows nothing of Optuna.

Adam on MSE over all W output steps; each epoch draws `samples_per_epoch` training windows
afresh (all of them when 0); validation runs on a fixed set of windows after every epoch. The
weights of the best validation epoch are kept. Stops: `patience` epochs without improvement
("early_stop"), `max_epochs` ("max_epochs"), a non-finite training loss ("diverged"), or an
exception raised by `on_epoch` (how the objective prunes).
"""

from __future__ import annotations

import copy
import ctypes
import math
import platform
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from hpsearch.config import TrainConfig
from hpsearch.windows import WindowData

# Inference batch per device type. On CPU a batch whose activations stay in cache is fastest
# (measured with scripts/bench.py: 256 windows of the default CNN run ~2x faster per window than
# 4096); accelerators want large batches.
EVAL_BATCH = {"cpu": 256}
EVAL_BATCH_DEFAULT = 4096


def eval_batch(device: torch.device) -> int:
    return EVAL_BATCH.get(device.type, EVAL_BATCH_DEFAULT)


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's <malloc.h> mallopt parameters
_malloc_tuned: bool | None = None  # None: not tried yet


def keep_freed_memory() -> bool:
    """Ask glibc's malloc to keep freed blocks for reuse instead of handing them back to the OS.

    torch's CPU allocator has no cache of its own: every activation of a training step or an
    inference batch is a fresh malloc of up to a few MiB. By default glibc serves blocks that size
    with mmap, or trims them off the heap once freed, so the next batch's tensors land on new
    pages that the kernel must fault in and zero (measured with scripts/bench.py: 40-59 k page
    faults in a 4,117-window validation pass at batch 256, 0-360 with this). PyTorch's CPU tuning
    guide answers this with jemalloc or tcmalloc through LD_PRELOAD; two mallopt calls do the same
    in-process, with no dependency. Blocks of up to 32 MiB come from the heap, which keeps up to
    512 MiB of free memory instead of returning it. Once per process; False (nothing done) off
    glibc.
    """
    global _malloc_tuned
    if _malloc_tuned is None:
        _malloc_tuned = False
        if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
            try:
                libc = ctypes.CDLL(None)
                _malloc_tuned = bool(
                    libc.mallopt(_M_MMAP_THRESHOLD, 32 * 1024**2)
                    and libc.mallopt(_M_TRIM_THRESHOLD, 512 * 1024**2)
                )
            except (OSError, AttributeError):  # a libc without mallopt: leave the defaults
                pass
    return _malloc_tuned


def make_optimizer(model: nn.Module, cfg: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    """Adam; the fused kernel (one op for all parameters, the same update within float rounding)
    where torch has one for the device."""
    fused = device.type in ("cpu", "cuda")
    return torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, fused=fused)


@dataclass(frozen=True)
class EpochResult:
    epoch: int  # 1-based
    train_loss: float
    valid_loss: float  # MSE over all W steps
    valid_step1: float  # MSE of the first step alone (comparable across W)
    best_valid: float
    best_epoch: int
    seconds: float  # the whole epoch: training and validation
    valid_seconds: float = 0.0  # of which the validation pass


@dataclass
class TrainResult:
    best_valid: float
    best_valid_step1: float
    best_epoch: int
    stop_reason: str
    history: list[EpochResult] = field(default_factory=list)
    best_state: dict | None = None
    seconds: float = 0.0


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        from hpsearch.errors import ConfigError

        raise ConfigError(f"device '{name}' requested but CUDA is not available on this machine")
    return device


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def valid_subset(data: WindowData, n: int, seed: int) -> np.ndarray:
    """A fixed, sorted sample of at least n validation anchors (all when n == 0 or n >= available),
    drawn as whole dates: every ticker's window of each chosen day. A sample of single rows would
    leave two or three tickers per day, and the cross-sectional IC of such a day means nothing."""
    anchors = data.anchors["valid"]
    if n == 0 or n >= len(anchors):
        return anchors
    days, per_day = np.unique(data.row_date[anchors], return_counts=True)
    order = np.random.default_rng(seed).permutation(len(days))
    take = int(np.searchsorted(np.cumsum(per_day[order]), n)) + 1  # days until n windows are reached
    chosen = np.isin(data.row_date[anchors], days[order[:take]])
    return np.sort(anchors[chosen])


@torch.inference_mode()
def predict(model: nn.Module, data: WindowData, anchors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Predictions and targets, each (len(anchors), W), in anchor order."""
    model.eval()
    device = data.x.device
    preds, trues = [], []
    step = eval_batch(device)
    for start in range(0, len(anchors), step):
        idx = torch.as_tensor(anchors[start : start + step], device=device)
        x, y, tk = data.gather(idx)
        preds.append(model(x, tk).float().cpu())
        trues.append(y.cpu())
    return torch.cat(preds).numpy(), torch.cat(trues).numpy()


def valid_losses(model: nn.Module, data: WindowData, anchors: np.ndarray) -> tuple[float, float]:
    """MSE over all W steps and of the first step alone."""
    pred, true = predict(model, data, anchors)
    err = (pred.astype(np.float64) - true) ** 2
    return float(err.mean()), float(err[:, 0].mean())


def train_epoch(
    model: nn.Module,
    data: WindowData,
    order: torch.Tensor,
    opt: torch.optim.Optimizer,
    batch_size: int,
    loss_fn: nn.Module,
) -> tuple[float, int, bool]:
    """One pass over `order` (anchors, on the data's device) in batches of `batch_size`.
    Returns the loss summed over windows, the windows trained, and whether a loss was not finite
    (the pass stops there, before that step)."""
    model.train()
    total, count = 0.0, 0
    for start in range(0, len(order), batch_size):
        x, y, tk = data.gather(order[start : start + batch_size])
        loss = loss_fn(model(x, tk), y)
        value = loss.item()  # the step's one host sync
        if not math.isfinite(value):
            return total, count, True
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        total += value * len(y)
        count += len(y)
    return total, count, False


def train(
    model: nn.Module,
    data: WindowData,
    cfg: TrainConfig,
    seed: int,
    valid_anchors: np.ndarray,
    on_epoch: Callable[[EpochResult], None] | None = None,
) -> TrainResult:
    device = data.x.device
    if device.type == "cpu":
        keep_freed_memory()
    model.to(device)
    opt = make_optimizer(model, cfg, device)
    loss_fn = nn.MSELoss()
    gen = torch.Generator().manual_seed(seed)
    train_anchors = torch.as_tensor(data.anchors["train"])
    n_train = len(train_anchors)
    per_epoch = cfg.samples_per_epoch if 0 < cfg.samples_per_epoch < n_train else n_train

    result = TrainResult(
        best_valid=math.inf, best_valid_step1=math.inf, best_epoch=0, stop_reason="max_epochs"
    )
    t0 = time.perf_counter()
    for epoch in range(1, cfg.max_epochs + 1):
        te = time.perf_counter()
        order = train_anchors[torch.randperm(n_train, generator=gen)[:per_epoch]].to(device)
        total, count, diverged = train_epoch(model, data, order, opt, cfg.batch_size, loss_fn)
        if diverged:
            result.stop_reason = "diverged"
            break
        tv = time.perf_counter()
        valid_loss, valid_step1 = valid_losses(model, data, valid_anchors)
        valid_seconds = time.perf_counter() - tv
        if not math.isfinite(valid_loss):
            result.stop_reason = "diverged"
            break
        if valid_loss < result.best_valid - cfg.min_delta:
            result.best_valid, result.best_valid_step1, result.best_epoch = valid_loss, valid_step1, epoch
            result.best_state = copy.deepcopy({k: v.detach().cpu() for k, v in model.state_dict().items()})
        ep = EpochResult(
            epoch=epoch,
            train_loss=total / max(count, 1),
            valid_loss=valid_loss,
            valid_step1=valid_step1,
            best_valid=result.best_valid,
            best_epoch=result.best_epoch,
            seconds=time.perf_counter() - te,
            valid_seconds=valid_seconds,
        )
        result.history.append(ep)
        if on_epoch is not None:
            on_epoch(ep)  # may raise (the objective prunes this way); history is kept on result
        if epoch - result.best_epoch >= cfg.patience:
            result.stop_reason = "early_stop"
            break
    result.seconds = time.perf_counter() - t0
    return result
