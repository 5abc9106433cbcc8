"""The Transformer family: causal decoder, both positional encodings, config invariants."""

import pytest
import torch

from hpsearch.config import from_dict
from hpsearch.errors import ConfigError
from hpsearch.models import InputSpec
from hpsearch.models.transformer import Transformer, TransformerConfig, sinusoidal
from tests.conftest import tiny_study

SPEC = InputSpec(seq_len=16, n_features=6, output_window=8, n_tickers=3, ticker_embedding=True)


def batch(spec: InputSpec = SPEC, size: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(size, spec.seq_len, spec.n_features, generator=gen)  # (B, T, F)
    ticker = torch.randint(0, spec.n_tickers, (size,), generator=gen)  # (B,)
    return x, ticker


def outputs_after_perturbing_queries_after(model: Transformer, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Model outputs before and after adding noise to the decoder's query vectors of steps > k."""
    x, ticker = batch()
    with torch.no_grad():
        before = model(x, ticker)  # (B, W)
        model.queries[k + 1 :] += torch.randn_like(model.queries[k + 1 :])
        after = model(x, ticker)  # (B, W)
    return before, after


@pytest.mark.parametrize("decoder_layers", [1, 2])
@pytest.mark.parametrize("k", [0, 3, 6])
def test_decoder_step_k_ignores_later_steps(k, decoder_layers):
    torch.manual_seed(0)
    model = Transformer(TransformerConfig(decoder_layers=decoder_layers), SPEC).eval()
    before, after = outputs_after_perturbing_queries_after(model, k)
    torch.testing.assert_close(after[:, : k + 1], before[:, : k + 1], rtol=0, atol=1e-6)
    # The perturbation is real: the later steps do move.
    assert (after[:, k + 1 :] - before[:, k + 1 :]).abs().max() > 1e-3


def test_without_the_causal_mask_earlier_steps_would_move():
    """The causality test above can fail: with the mask cleared, step 0 sees the later steps."""
    torch.manual_seed(0)
    model = Transformer(TransformerConfig(), SPEC).eval()
    model.causal_mask.zero_()  # (W, W) of zeros: every step attends to every step
    before, after = outputs_after_perturbing_queries_after(model, 0)
    assert (after[:, 0] - before[:, 0]).abs().max() > 1e-3


@pytest.mark.parametrize("positional", ["sinusoidal", "learned"])
def test_both_positional_encodings_make_the_model_order_aware(positional):
    torch.manual_seed(0)
    model = Transformer(TransformerConfig(positional=positional), SPEC).eval()
    x, ticker = batch()
    with torch.no_grad():
        out = model(x, ticker)
        reversed_out = model(x.flip(1), ticker)  # the same days in reverse order
    assert out.shape == (4, SPEC.output_window)
    # Attention alone is blind to order; only the positional encoding tells the days apart.
    assert (out - reversed_out).abs().max() > 1e-4
    learned = [name for name, _ in model.named_parameters() if name == "position"]
    assert learned == (["position"] if positional == "learned" else [])
    assert ("position" in model.state_dict()) == (positional == "learned")


def test_sinusoidal_table_has_the_standard_form_for_odd_widths():
    table = sinusoidal(5, 7)  # (T, D)
    assert table.shape == (5, 7)
    torch.testing.assert_close(table[0], torch.tensor([0.0, 1.0, 0.0, 1.0, 0.0, 1.0, 0.0]))
    torch.testing.assert_close(table[3, 0], torch.sin(torch.tensor(3.0)))


def test_the_ticker_embedding_reaches_the_output():
    torch.manual_seed(0)
    model = Transformer(TransformerConfig(), SPEC).eval()
    x, _ = batch()
    with torch.no_grad():
        a = model(x, torch.zeros(4, dtype=torch.long))
        b = model(x, torch.ones(4, dtype=torch.long))
    assert (a - b).abs().max() > 1e-4


def test_attention_weights_and_sublayers_get_their_own_dropout():
    model = Transformer(TransformerConfig(dropout=0.2, attention_dropout=0.05), SPEC)
    attention = [m for m in model.modules() if isinstance(m, torch.nn.MultiheadAttention)]
    dropouts = [m for m in model.modules() if isinstance(m, torch.nn.Dropout)]
    assert len(attention) == 2 + 2  # 2 encoder layers (self) + 1 decoder layer (self, cross)
    assert {m.dropout for m in attention} == {0.05}
    assert dropouts and {m.p for m in dropouts} == {0.2}


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"d_model": 30, "n_heads": 4}, "n_heads must divide d_model, got d_model=30 n_heads=4"),
        ({"n_heads": 0}, "n_heads >= 1 must hold, got n_heads=0"),
        ({"encoder_layers": 0}, "encoder_layers >= 1 must hold"),
        ({"decoder_layers": 0}, "decoder_layers >= 1 must hold"),
        ({"dropout": 1.0}, "0 <= dropout < 1 must hold, got dropout=1.0"),
        ({"attention_dropout": -0.1}, "0 <= attention_dropout < 1 must hold, got attention_dropout=-0.1"),
        ({"positional": "rotary"}, "positional must be one of sinusoidal, learned, got positional='rotary'"),
    ],
)
def test_invalid_configs_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TransformerConfig(**kwargs)


def test_a_study_file_reports_the_head_rule_in_one_line():
    raw = {**tiny_study(None), "model": {"family": "transformer", "d_model": 30, "n_heads": 4}}
    with pytest.raises(ConfigError, match="x.yaml: model: n_heads must divide d_model"):
        from_dict(raw, "x.yaml")
