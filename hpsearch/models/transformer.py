"""A Transformer encoder over the window's days and a decoder that emits the W output steps at once."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from hpsearch.models import cpu_kernels
from hpsearch.models.base import InputSpec

POSITIONAL = ("sinusoidal", "learned")


@dataclass(frozen=True)
class TransformerConfig:
    d_model: int = 32  # width of every token (day) inside the model
    n_heads: int = 4  # attention heads; must divide d_model (each head gets d_model / n_heads)
    encoder_layers: int = 2  # self-attention + feed-forward blocks over the window's T days
    decoder_layers: int = 1  # causal self-attention over the W steps + cross-attention to the encoder
    ff_dim: int = 64  # hidden width of each block's feed-forward layer
    dropout: float = 0.1  # on the embedded input and on every sublayer's output before Add & Norm
    attention_dropout: float = 0.0  # on attention weights; 0.1 makes a CPU training step ~3x slower
    positional: str = "sinusoidal"  # "sinusoidal" (fixed) | "learned" (one trained vector per day)
    ticker_dim: int = 4  # size of the learned ticker embedding (ticker_encoding: embedding)

    def __post_init__(self) -> None:
        for name in ("d_model", "n_heads", "encoder_layers", "decoder_layers", "ff_dim", "ticker_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} >= 1 must hold, got {name}={getattr(self, name)}")
        if self.d_model % self.n_heads:
            raise ValueError(
                f"n_heads must divide d_model, got d_model={self.d_model} n_heads={self.n_heads}"
            )
        for name in ("dropout", "attention_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"0 <= {name} < 1 must hold, got {name}={getattr(self, name)}")
        if self.positional not in POSITIONAL:
            raise ValueError(
                f"positional must be one of {', '.join(POSITIONAL)}, got positional='{self.positional}'"
            )


def sinusoidal(length: int, dim: int) -> torch.Tensor:
    """The fixed encoding of "Attention Is All You Need": sin on even, cos on odd channels. (T, D)."""
    position = torch.arange(length, dtype=torch.float32).unsqueeze(1)  # (T,) -> (T, 1)
    # Wavelengths from 2*pi to 10000*2*pi: one frequency per sin/cos channel pair.
    freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))  # (D/2,)
    table = torch.zeros(length, dim)
    table[:, 0::2] = torch.sin(position * freq)  # (T, D/2 rounded up)
    table[:, 1::2] = torch.cos(position * freq[: dim // 2])  # (T, D/2 rounded down)
    return table


def _kernels(x: torch.Tensor) -> bool:
    """Whether hpsearch's CPU kernels (attention_cpu.cpp) compute this: where they can run at all
    (`cpu_kernels.runs_on`), and not under CPU autocast (the projections would be bfloat16)."""
    return not torch.is_autocast_enabled("cpu") and cpu_kernels.runs_on(x)


class _Attention(torch.autograd.Function):
    """softmax(q k^T / sqrt(D)) v for every head, q (B, Tq, E), k and v (B, Tk, E) with the heads
    side by side in E: `attention` and `attention_backward` of attention_cpu.cpp."""

    @staticmethod
    def forward(ctx, q, k, v, heads: int, causal: bool):
        o, lse = cpu_kernels.ops().attention(q, k, v, heads, causal)  # (B, Tq, E), (B, heads, Tq)
        ctx.save_for_backward(q, k, v, o, lse)
        ctx.heads, ctx.causal = heads, causal
        return o

    @staticmethod
    def backward(ctx, grad):
        cpu_kernels.first_derivative_only("the attention")
        dq, dk, dv = cpu_kernels.ops().attention_backward(grad, *ctx.saved_tensors, ctx.heads, ctx.causal)
        return dq, dk, dv, None, None


class Attention(nn.MultiheadAttention):
    """nn.MultiheadAttention whose core runs hpsearch's CPU kernel where it can (float32 on CPU,
    batch_first, no padding mask, no mask but a causal one flagged is_causal, no attention dropout
    while training, no attention weights asked for); elsewhere, and for its parameters and
    state_dict, it is torch's module.

    Why: with 8-float heads torch's CPU attention was about 60 % of a Transformer training step
    (attention_cpu.cpp says more). The projections are the same products as torch's
    (in_proj_weight's three blocks, out_proj), and q, k and v are views of them, not copies.
    Outputs and gradients equal torch's within float rounding (tests/test_transformer_kernels.py).
    """

    def _fast(self, query, key, value, key_padding_mask, need_weights, attn_mask, is_causal) -> bool:
        if not (
            self.batch_first
            and self._qkv_same_embed_dim
            and self.in_proj_bias is not None
            and self.bias_k is None
            and not self.add_zero_attn
            and not need_weights
            and key_padding_mask is None
            and (self.dropout == 0.0 or not self.training)
            and query.dim() == 3
            and key is value
            and query.shape[1] > 0
            and key.shape[1] > 0  # no keys: torch's module gives zeros
            and _kernels(query)
        ):
            return False
        if attn_mask is None:
            return not is_causal  # is_causal without a mask: torch's module raises its own error
        # A mask runs here only as torch's module runs it without reading it: flagged is_causal
        # (nn.TransformerDecoder sets the flag when its mask is the causal one), and then torch
        # too computes causal attention from the flag alone. Any other mask is torch's to apply.
        return is_causal and query is key

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        key_padding_mask: torch.Tensor | None = None,
        need_weights: bool = True,
        attn_mask: torch.Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ):
        if not self._fast(query, key, value, key_padding_mask, need_weights, attn_mask, is_causal):
            return super().forward(
                query, key, value, key_padding_mask, need_weights, attn_mask, average_attn_weights, is_causal
            )
        E, w, b = self.embed_dim, self.in_proj_weight, self.in_proj_bias
        if query is key:  # self-attention: one (B, T, 3E) product, q, k and v its column blocks
            q, k, v = nn.functional.linear(query, w, b).split(E, dim=-1)
        else:  # cross-attention: q from the query, k and v from the memory
            q = nn.functional.linear(query, w[:E], b[:E])
            k, v = nn.functional.linear(key, w[E:], b[E:]).split(E, dim=-1)
        o = _Attention.apply(q, k, v, self.num_heads, attn_mask is not None)  # (B, Tq, E)
        return nn.functional.linear(o, self.out_proj.weight, self.out_proj.bias), None


class Dropout(nn.Dropout):
    """nn.Dropout whose mask, on CPU, is drawn as 21 random bits per element from torch's
    generator (three elements per int64 draw) and built by `dropout_mask` (attention_cpu.cpp):
    ~0.4 ms with the multiply instead of ~2 ms for a (64, 96, 32) activation on 2 cores. The
    drop rate is p rounded to a multiple of 2^-21 and the kept elements are scaled by
    1 / (1 - that rate), so the output's expectation is the input, as with torch's. Elsewhere it
    is torch's module."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cut = round(self.p * 2**21)
        if not (self.training and 0 < cut < 2**21 and not self.inplace and _kernels(x)):
            return super().forward(x)
        # 63 random bits per word (Tensor.random_ of int64: [0, 2^63)), 21 per element
        words = torch.empty((x.numel() + 2) // 3, dtype=torch.int64, device=x.device).random_()
        mask = cpu_kernels.ops().dropout_mask(words, x.numel(), cut, 2**21 / (2**21 - cut))
        return x * mask.view(x.shape)


def _block(layer: type[nn.Module], cfg: TransformerConfig) -> nn.Module:
    """One encoder or decoder layer: post-norm, x + sublayer(x) then LayerNorm (the paper's Add & Norm)."""
    block = layer(cfg.d_model, cfg.n_heads, cfg.ff_dim, cfg.dropout, batch_first=True, norm_first=False)
    # torch's layers use one rate everywhere; the paper drops sublayer outputs only. Dropout on the
    # (B, heads, T, T) attention weights also forces the slow attention kernel on CPU.
    for attention in (block.self_attn, getattr(block, "multihead_attn", None)):
        if attention is not None:
            attention.dropout = cfg.attention_dropout
    return block


class Transformer(nn.Module):
    def __init__(self, cfg: TransformerConfig, spec: InputSpec) -> None:
        super().__init__()
        self.embedding = nn.Embedding(spec.n_tickers, cfg.ticker_dim) if spec.ticker_embedding else None
        width = spec.n_features + (cfg.ticker_dim if self.embedding is not None else 0)
        self.project = nn.Linear(width, cfg.d_model)
        if cfg.positional == "learned":
            self.position = nn.Parameter(torch.randn(spec.seq_len, cfg.d_model) * 0.02)  # (T, D)
        else:
            # Not persistent: it is a function of (T, D), so checkpoints do not carry it.
            self.register_buffer("position", sinusoidal(spec.seq_len, cfg.d_model), persistent=False)
        self.dropout = nn.Dropout(cfg.dropout)
        self.encoder = nn.TransformerEncoder(
            _block(nn.TransformerEncoderLayer, cfg),
            cfg.encoder_layers,
            enable_nested_tensor=False,  # windows are never padded; nested tensors only help with padding
        )
        # The decoder's inputs are W learned query vectors, one per output step, the same for every
        # window; it emits all W steps in one pass (non-autoregressive). No label is ever fed in, so
        # training and inference see identical inputs and nothing from the future can leak at
        # inference. Teacher forcing would instead feed true labels of earlier steps in training,
        # need W sequential passes at inference, and train on inputs it never sees at inference.
        # The causal mask over the W steps then makes step k a function of the encoded window and
        # the queries of steps 0..k only: a step's forecast is never shaped by later steps, and
        # step 1 is computed the same way whether W is 1 or 48.
        self.queries = nn.Parameter(torch.randn(spec.output_window, cfg.d_model) * 0.02)  # (W, D)
        # (W, W): -inf above the diagonal, so step k attends to steps <= k only.
        mask = nn.Transformer.generate_square_subsequent_mask(spec.output_window)
        self.register_buffer("causal_mask", mask, persistent=False)
        self.decoder = nn.TransformerDecoder(_block(nn.TransformerDecoderLayer, cfg), cfg.decoder_layers)
        self.head = nn.Linear(cfg.d_model, 1)
        # torch's layers build their attention and dropout modules themselves, with no way to
        # choose the classes; these two subclasses add no parameters or buffers, so switching the
        # class of each built module keeps the initial weights (the same random draws as torch's
        # layers), the state_dict and, where the kernels do not run, the computation.
        for module in self.modules():
            if type(module) is nn.MultiheadAttention:
                module.__class__ = Attention
            elif type(module) is nn.Dropout:
                module.__class__ = Dropout

    def forward(self, x: torch.Tensor, ticker: torch.Tensor) -> torch.Tensor:
        if self.embedding is not None:
            tick = self.embedding(ticker).unsqueeze(1)  # (B, ticker_dim) -> (B, 1, ticker_dim)
            tick = tick.expand(-1, x.shape[1], -1)  # (B, 1, ticker_dim) -> (B, T, ticker_dim)
            x = torch.cat([x, tick], dim=2)  # (B, T, F) -> (B, T, F + ticker_dim)
        z = self.dropout(self.project(x) + self.position)  # (B, T, D) + (T, D) -> (B, T, D)
        memory = self.encoder(z)  # (B, T, D)
        query = self.queries.unsqueeze(0).expand(x.shape[0], -1, -1)  # (W, D) -> (1, W, D) -> (B, W, D)
        out = self.decoder(query, memory, tgt_mask=self.causal_mask)  # (B, W, D)
        return self.head(out).squeeze(2)  # (B, W, D) -> (B, W, 1) -> (B, W)
