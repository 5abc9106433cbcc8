"""Every registered model family: output shape, a backward step, a finite loss."""

import pytest
import torch

from hpsearch.models import MODELS, InputSpec, build_model


@pytest.mark.parametrize("embedding", [True, False])
@pytest.mark.parametrize("output_window", [1, 48])
@pytest.mark.parametrize("family", sorted(MODELS))
def test_every_family_trains_a_step(family, output_window, embedding):
    torch.manual_seed(0)
    spec = InputSpec(
        seq_len=32,
        n_features=6 if embedding else 7,
        output_window=output_window,
        n_tickers=5,
        ticker_embedding=embedding,
    )
    model = build_model(family, MODELS[family].config(), spec)
    x = torch.randn(8, spec.seq_len, spec.n_features)  # (B, T, F)
    ticker = torch.randint(0, 5, (8,))
    y = torch.randn(8, output_window)
    out = model(x, ticker)
    assert out.shape == (8, output_window)
    loss = torch.nn.functional.mse_loss(out, y)
    assert torch.isfinite(loss)
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


def test_cnn_default_is_the_reference_8_to_16():
    cfg = MODELS["cnn2d"].config()
    assert (cfg.c1, cfg.c2) == (8, 16)
