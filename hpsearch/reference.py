"""The straightforward way, kept to measure against and to prove the fast paths equal to it.

- `ReferenceCnn2d`: the reference lab's CNN layer by layer (Conv2d, ReLU, MaxPool2d((2, 1)), twice,
  in the default memory layout), with the parameters and state_dict keys of `models.Cnn2d`, so
  one set of weights runs in both (`twins` builds such a pair);
- `WindowDataset`: a torch Dataset whose `__getitem__` slices one window, and `loader`, a
  DataLoader over it at batch 64: how the reference lab fed its model;
- `reference_epoch` and `reference_valid_loss`: the loop written the obvious way, with torch's
  default Adam.

Used by scripts/bench.py (the baselines) and the tests (the equalities); never by a search.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, RandomSampler

from hpsearch.models.base import InputSpec
from hpsearch.models.cnn2d import Cnn2d, Cnn2dConfig
from hpsearch.windows import WindowData

BATCH = 64


class ReferenceCnn2d(Cnn2d):
    def __init__(self, cfg: Cnn2dConfig, spec: InputSpec) -> None:
        super().__init__(cfg, spec)
        pad = cfg.kernel_size // 2
        self.features = nn.Sequential(
            nn.Conv2d(1, cfg.c1, cfg.kernel_size, padding=pad),
            nn.ReLU(),
            nn.MaxPool2d((2, 1)),
            nn.Conv2d(cfg.c1, cfg.c2, cfg.kernel_size, padding=pad),
            nn.ReLU(),
            nn.MaxPool2d((2, 1)),
        )

    def forward(self, x: torch.Tensor, ticker: torch.Tensor) -> torch.Tensor:
        z = self.features(x.unsqueeze(1)).flatten(1)  # (B, 1, T, F) -> (B, c2 * T/4 * F)
        if self.embedding is not None:
            z = torch.cat([z, self.embedding(ticker)], dim=1)
        return self.head(z)


def twins(cfg: Cnn2dConfig, spec: InputSpec, device: str = "cpu") -> tuple[Cnn2d, ReferenceCnn2d]:
    """hpsearch's CNN (seeded) and the reference layers holding the same weights."""
    torch.manual_seed(0)
    fast = Cnn2d(cfg, spec).to(device)
    ref = ReferenceCnn2d(cfg, spec).to(device)
    ref.load_state_dict(fast.state_dict())  # strict: the same keys and shapes
    return fast, ref


class WindowDataset(Dataset):
    """Window i: rows anchors[i] - T + 1 .. anchors[i] of the (N, F) features, its W labels, its ticker."""

    def __init__(self, data: WindowData, anchors: np.ndarray) -> None:
        self.x = data.x.cpu().numpy()
        self.y = data.y.cpu().numpy()
        self.ticker = data.ticker.cpu().numpy()
        self.anchors = anchors
        self.T, self.W = data.spec.seq_len, data.spec.output_window

    def __len__(self) -> int:
        return len(self.anchors)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        a = int(self.anchors[i])
        x = torch.from_numpy(self.x[a - self.T + 1 : a + 1])  # (T, F)
        y = torch.from_numpy(self.y[a : a + self.W])  # (W,)
        return x, y, int(self.ticker[a])


def loader(
    data: WindowData, anchors: np.ndarray, shuffle: bool, samples: int = 0, seed: int = 0
) -> DataLoader:
    """Batches of 64; with `shuffle`, `samples` windows drawn afresh each epoch (0: all)."""
    ds = WindowDataset(data, anchors)
    if not shuffle:
        return DataLoader(ds, batch_size=BATCH, shuffle=False)
    gen = torch.Generator().manual_seed(seed)
    sampler = RandomSampler(ds, num_samples=samples or len(ds), generator=gen)
    return DataLoader(ds, batch_size=BATCH, sampler=sampler)


def reference_epoch(
    model: nn.Module, batches: DataLoader, opt: torch.optim.Optimizer, device: torch.device
) -> float:
    """One pass over the loader; the mean training loss."""
    model.train()
    loss_fn = nn.MSELoss()
    total, count = 0.0, 0
    for x, y, ticker in batches:
        x, y, ticker = x.to(device), y.to(device), ticker.to(device)
        loss = loss_fn(model(x, ticker), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        total += loss.item() * len(y)
        count += len(y)
    return total / max(count, 1)


def reference_valid_loss(model: nn.Module, batches: DataLoader, device: torch.device) -> float:
    """Validation MSE over all W steps, batch by batch under no_grad."""
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for x, y, ticker in batches:
            pred = model(x.to(device), ticker.to(device))
            total += ((pred.double() - y.to(device).double()) ** 2).sum().item()
            count += y.numel()
    return total / max(count, 1)
