"""The reference lab's model: the window as a one-channel image, two conv blocks, a small head."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from hpsearch.models import cpu_kernels
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


class OneChannelConv2d(nn.Conv2d):
    """`nn.Conv2d(1, c1, k, padding=k // 2)` over the (T, F) window, computed as one matrix product.

    Why not the library's convolution: with one input channel oneDNN runs this layer far below
    matmul speed (measured on 2 cores at batch 256: ~25 GFLOP/s forward against ~150 for a large
    float32 matmul) and writes the default layout, which the rest of the network then copies to
    channels-last, forward and backward. Here each time step's k rows of the window, (k * F)
    values, multiply a banded (k * F, F * c1) matrix built from the same (c1, 1, k, k) weight:
    band[i, g, f, c] = weight[c, 0, i, g - f + k // 2] where that tap exists, else 0 (the zero
    padding of the feature edges). The product is (B * T, F * c1), which is the channels-last
    memory of (B, c1, T, F), so nothing is copied after it, on any device. Each output sums k * F
    products instead of k * k; the extra ones are by exact zeros (with F < k there are fewer: the
    padding's), so the outputs equal the convolution's (tests/test_speed_equal.py checks outputs
    and gradients). Parameters and state_dict keys are nn.Conv2d's.
    """

    def __init__(self, out_channels: int, kernel_size: int, n_features: int) -> None:
        super().__init__(1, out_channels, kernel_size, padding=kernel_size // 2)
        k, p = kernel_size, kernel_size // 2
        taps = torch.zeros(k, n_features, n_features)  # (j, g, f): input feature g = f + j - p
        for j in range(k):
            for f in range(n_features):
                if 0 <= f + j - p < n_features:
                    taps[j, f + j - p, f] = 1.0
        self.register_buffer("taps", taps, persistent=False)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        B, _, T, F = z.shape  # (B, 1, T, F)
        k, p = self.kernel_size[0], self.padding[0]
        c = self.out_channels
        band = torch.einsum("cij,jgf->igfc", self.weight[:, 0], self.taps).reshape(k * F, F * c)
        rows = nn.functional.pad(z[:, 0], (0, 0, p, p))  # (B, T + 2p, F): zero rows before and after
        rows = rows.unfold(1, k, 1).transpose(2, 3).reshape(B * T, k * F)  # (B, T, F, k) -> (B*T, k*F)
        out = torch.addmm(self.bias.repeat(F), rows, band)  # (B * T, F * c1)
        return out.view(B, T, F, c).permute(0, 3, 1, 2)  # (B, c1, T, F) in channels-last memory


class _Features(torch.autograd.Function):
    """The whole feature block (conv1, pool, ReLU, conv2, pool, ReLU) as one fused CPU op each
    way (cnn2d_cpu.cpp: `features`); x needs no gradient."""

    @staticmethod
    def forward(ctx, x, w1, b1, w2, b2):  # x (B, T, F) -> (B, c2, T/4, F), default layout
        out, a1, code1, code2 = cpu_kernels.ops().features(x, w1, b1, w2, b2)
        ctx.save_for_backward(x, a1, code1, code2, w1, w2)
        return out

    @staticmethod
    def backward(ctx, grad):
        cpu_kernels.first_derivative_only("the CNN features")
        gw1, gb1, gw2, gb2 = cpu_kernels.ops().features_backward(grad, *ctx.saved_tensors)
        return None, gw1, gb1, gw2, gb2


class Cnn2d(nn.Module):
    def __init__(self, cfg: Cnn2dConfig, spec: InputSpec) -> None:
        super().__init__()
        pad = cfg.kernel_size // 2
        # The reference's Conv2d, ReLU, MaxPool2d((2, 1)) twice, computed faster with the same values
        # (tests/test_speed_equal.py checks outputs and gradients against hpsearch.reference).
        # On CPU, float32, the block is one fused C++ op each way (_Features, cnn2d_cpu.cpp:
        # conv1 + pool + ReLU in one pass, conv2 + pool + ReLU in one pass, each convolution
        # summed in registers), measured 2.6x this module path's epoch at batch 64 on 2 AVX2
        # cores and 2.0x on a 2-core AVX-512 Xeon. These modules
        # are the parameters, the state_dict and, elsewhere (CUDA, MPS, no C++ compiler,
        # torch.compile), the computation:
        # - the first conv is one matrix product that writes channels-last activations (see
        #   OneChannelConv2d); the pools and the second conv then run in that layout, where oneDNN
        #   is fastest on CPU (measured: the second conv's backward ~2x, MaxPool2d ~5x);
        # - each max-pool comes before its ReLU, which then touches half the elements: relu(max(a,
        #   b)) == max(relu(a), relu(b)), and the gradient reaches the same element (ties go to the
        #   earlier time step either way; where both are <= 0 it is 0 either way). The ReLU works
        #   in place: the pool's backward needs its input and indices, not its output.
        # The convs keep indices 0 and 3, so state_dicts (`features.0.weight`, ...) are the reference's.
        self.features = nn.Sequential(
            OneChannelConv2d(cfg.c1, cfg.kernel_size, spec.n_features),
            nn.MaxPool2d((2, 1)),  # halve time, keep features
            nn.ReLU(inplace=True),
            nn.Conv2d(cfg.c1, cfg.c2, cfg.kernel_size, padding=pad),
            nn.MaxPool2d((2, 1)),
            nn.ReLU(inplace=True),
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

    def _fused(self, x: torch.Tensor) -> bool:
        """Whether the fused CPU kernels compute the features: where they can run at all
        (`cpu_kernels.runs_on`), with the input not needing a gradient."""
        return not x.requires_grad and cpu_kernels.runs_on(x)

    def forward(self, x: torch.Tensor, ticker: torch.Tensor) -> torch.Tensor:
        dropout, first, *rest = self.head
        w = first.weight  # (out, c2 * T/4 * F [+ ticker_dim]): columns in the reference's order
        if self._fused(x):
            conv1, _, _, conv2, _, _ = self.features
            z = _Features.apply(x, conv1.weight, conv1.bias, conv2.weight, conv2.bias)  # (B, c2, T/4, F)
            z = z.flatten(1)  # (B, c2 * T/4 * F): the reference's order, a view
        else:
            z = self.features(x.unsqueeze(1))  # (B, T, F) -> (B, 1, T, F) -> (B, c2, T/4, F)
            B, c2, T4, F = z.shape
            # Flattened in (T/4, F, c2) order, a view of the channels-last memory; the reference
            # flattens in (c2, T/4, F) order, so the first head layer reads its weight's columns
            # in that order instead (a 32 x 2,300 reshuffle, not a copy of every window's
            # activations, and the gradient then reaches the pool in its own layout). Same
            # products, same sums. A dropout before it masks the same distribution of elements,
            # not the same elements.
            z = z.permute(0, 2, 3, 1).reshape(B, -1)  # (B, T/4 * F * c2)
            flat = c2 * T4 * F
            w = torch.cat(
                [w[:, :flat].reshape(-1, c2, T4, F).permute(0, 2, 3, 1).reshape(-1, flat), w[:, flat:]], 1
            )
        if self.embedding is not None:
            z = torch.cat([z, self.embedding(ticker)], dim=1)  # (B, flat + ticker_dim)
        if dropout.p > 0 and self.training:  # p = 0 would still cost a pass
            z = nn.functional.dropout(z, dropout.p, training=True)
        z = nn.functional.linear(z, w, first.bias)
        for layer in rest:
            z = layer(z)
        return z  # (B, W)
