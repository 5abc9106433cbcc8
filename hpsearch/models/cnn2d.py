"""The reference lab's model: the window as a one-channel image, two conv blocks, a small head."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from hpsearch.models.base import InputSpec


@dataclass(frozen=True)
class Cnn2dConfig:
    c1: int = 8  # channels of the first conv block (reference: 8)
    c2: int = 16  # channels of the second conv block (reference: 16)
    kernel_size: int = 3  # square kernel over (time, feature); odd so padding keeps the shape
    hidden: int = 32  # width of the head's hidden layer; 0 maps features straight to W outputs
    dropout: float = 0.0
    ticker_dim: int = 4  # size of the learned ticker embedding (ticker_encoding: embedding)

    def __post_init__(self) -> None:
        for name in ("c1", "c2", "kernel_size", "ticker_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} >= 1 must hold, got {name}={getattr(self, name)}")
        if self.kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd, got kernel_size={self.kernel_size}")
        if self.hidden < 0:
            raise ValueError(f"hidden >= 0 must hold, got hidden={self.hidden}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"0 <= dropout < 1 must hold, got dropout={self.dropout}")


class ChannelsLastOnCpu(nn.Module):
    """Hand the rest of the network channels-last activations on CPU.

    Measured on 2 CPU cores (oneDNN, batch 64): the second convolution's backward pass is about
    2x faster and MaxPool2d about 5x faster in channels-last layout, while the first convolution
    (one input channel) is faster in the default layout, so the switch sits between them. On other
    devices the layout is left as it is. A layout changes no value.
    """

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if z.device.type != "cpu":
            return z
        return z.contiguous(memory_format=torch.channels_last)  # (B, C, T, F), strides of (B, T, F, C)


class PoolReLU(nn.Module):
    """MaxPool2d((2, 1)) then ReLU: the reference's ReLU-then-pool, on half the elements.

    relu(max(a, b)) == max(relu(a), relu(b)) for every a, b, and the gradient reaches the same
    element (ties go to the earlier time step either way; where both are <= 0 it is 0 either way).
    """

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        z = nn.functional.max_pool2d(z, (2, 1))  # (B, C, T, F) -> (B, C, T // 2, F): halve time
        return torch.relu_(z)  # in place: the pool's backward needs its input and indices, not this


class Cnn2d(nn.Module):
    def __init__(self, cfg: Cnn2dConfig, spec: InputSpec) -> None:
        super().__init__()
        pad = cfg.kernel_size // 2
        # The reference's Conv2d, ReLU, MaxPool2d((2, 1)) twice, reordered for speed with the same
        # values (tests/test_speed_equal.py checks outputs and gradients against it). The convs keep
        # indices 0 and 3, so state_dicts (`features.0.weight`, ...) are the reference's.
        self.features = nn.Sequential(
            nn.Conv2d(1, cfg.c1, cfg.kernel_size, padding=pad),
            ChannelsLastOnCpu(),
            PoolReLU(),  # halve time, keep features
            nn.Conv2d(cfg.c1, cfg.c2, cfg.kernel_size, padding=pad),
            PoolReLU(),
        )
        flat = cfg.c2 * (spec.seq_len // 4) * spec.n_features
        self.embedding = nn.Embedding(spec.n_tickers, cfg.ticker_dim) if spec.ticker_embedding else None
        width = flat + (cfg.ticker_dim if self.embedding is not None else 0)
        layers: list[nn.Module] = [nn.Dropout(cfg.dropout)]
        if cfg.hidden:
            layers += [nn.Linear(width, cfg.hidden), nn.ReLU(), nn.Linear(cfg.hidden, spec.output_window)]
        else:
            layers += [nn.Linear(width, spec.output_window)]
        self.head = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor, ticker: torch.Tensor) -> torch.Tensor:
        z = self.features(x.unsqueeze(1))  # (B, T, F) -> (B, 1, T, F) -> (B, c2, T/4, F)
        z = z.flatten(1)  # (B, c2, T/4, F) -> (B, c2 * T/4 * F), in this order whatever the layout
        if self.embedding is not None:
            z = torch.cat([z, self.embedding(ticker)], dim=1)  # (B, flat + ticker_dim)
        return self.head(z)  # (B, W)
