"""What every model family is told about its input, independent of its own hyperparameters."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class InputSpec:
    """Shapes fixed by the data: windows are (B, T, F) floats plus a (B,) ticker id."""

    seq_len: int  # T
    n_features: int  # F, including the ticker column when ticker_encoding == "column"
    output_window: int  # W
    n_tickers: int
    ticker_embedding: bool  # True: the model owns an nn.Embedding over ticker ids
