"""The Transformer's CPU kernels (hpsearch/models/attention_cpu.cpp) compute what torch computes.

Attention: torch's scaled_dot_product_attention and nn.MultiheadAttention are the definitions;
outputs and the gradients of q, k and v must match within float rounding, for self- and
cross-attention, the causal mask, head widths and key counts that do not fill a vector. Dropout:
the mask keeps 1 - p of the elements and scales them so that the expectation is the input.
The whole model with the kernels must equal the model with torch's modules (HPSEARCH_CPU_KERNELS=0).
"""

from __future__ import annotations

import math
import os
import shutil

import pytest
import torch
from torch import nn

from hpsearch.models import InputSpec, cpu_kernels
from hpsearch.models.transformer import Attention, Dropout, Transformer, TransformerConfig, _Attention

TOL = {"rtol": 1e-5, "atol": 2e-6}


@pytest.fixture
def ops():
    found = cpu_kernels.ops()
    if found is None and not shutil.which(os.environ.get("CXX", "c++")):
        pytest.skip("no C++ compiler on this machine: the Transformer runs torch's modules")
    assert found is not None, f"the CPU kernels did not build: {cpu_kernels.status()}"
    return found


def torch_attention(q, k, v, heads, causal):
    """The definition: (B, T, E) rows split into heads, torch's SDPA, heads put back side by side."""
    B, Tq, E = q.shape
    Tk, D = k.shape[1], E // heads

    def split(t, T):
        return t.reshape(B, T, heads, D).transpose(1, 2)

    o = nn.functional.scaled_dot_product_attention(split(q, Tq), split(k, Tk), split(v, Tk), is_causal=causal)
    return o.transpose(1, 2).reshape(B, Tq, E)


@pytest.mark.parametrize(
    ("B", "Tq", "Tk", "E", "heads", "causal"),
    [
        (3, 96, 96, 32, 4, False),  # the encoder's self-attention at the defaults
        (3, 1, 96, 32, 4, False),  # the decoder's cross-attention at W = 1
        (2, 48, 96, 32, 4, False),  # ... and at W = 48
        (2, 48, 48, 32, 4, True),  # the decoder's causal self-attention at W = 48
        (2, 1, 1, 32, 4, True),
        (2, 13, 13, 24, 2, True),  # head width 12, keys not a multiple of 8
        (2, 7, 21, 12, 4, False),  # head width 3
        (1, 5, 37, 64, 1, False),  # one head of 64
    ],
)
def test_attention_equals_torch_forward_and_backward(ops, B, Tq, Tk, E, heads, causal):
    torch.manual_seed(0)
    # q from one projection's output, k and v from another's: strided views, as in the model.
    x = torch.randn(B, Tq, 3 * E, requires_grad=True)
    y = torch.randn(B, Tk, 3 * E, requires_grad=True)
    q, k, v = x[..., :E], y[..., E : 2 * E], y[..., 2 * E :]
    grad = torch.randn(B, Tq, E)
    ours = _Attention.apply(q, k, v, heads, causal)
    gx, gy = torch.autograd.grad(ours, (x, y), grad)
    theirs = torch_attention(q, k, v, heads, causal)
    tx, ty = torch.autograd.grad(theirs, (x, y), grad)
    torch.testing.assert_close(ours, theirs, **TOL)
    torch.testing.assert_close(gx, tx, **TOL)
    torch.testing.assert_close(gy, ty, **TOL)


def test_attention_rows_far_apart_in_scale_stay_exact(ops):
    # Scores of +-60 after scaling: the softmax needs its max shift and the exp its range.
    torch.manual_seed(1)
    q, k, v = (torch.randn(2, 9, 16) for _ in range(3))
    q = q * 40
    ours, _ = ops.attention(q, k, v, 2, False)
    torch.testing.assert_close(ours, torch_attention(q, k, v, 2, False), **TOL)


def test_attention_rejects_what_it_cannot_index(ops):
    q = torch.randn(2, 4, 8)
    with pytest.raises(RuntimeError, match="heads must divide E"):
        ops.attention(q, q, q, 3, False)
    with pytest.raises(RuntimeError, match="causal attention needs Tq == Tk"):
        ops.attention(q, torch.randn(2, 5, 8), torch.randn(2, 5, 8), 2, True)
    with pytest.raises(RuntimeError, match="last dimension must be contiguous"):
        ops.attention(q.transpose(1, 2).contiguous().transpose(1, 2), q, q, 2, False)


def module_pair(**kwargs) -> tuple[Attention, nn.MultiheadAttention]:
    torch.manual_seed(0)
    theirs = nn.MultiheadAttention(32, 4, batch_first=True, **kwargs)
    ours = nn.MultiheadAttention(32, 4, batch_first=True, **kwargs)
    ours.__class__ = Attention
    ours.load_state_dict(theirs.state_dict())
    return ours, theirs


@pytest.mark.parametrize("kind", ["self", "cross", "causal"])
def test_the_attention_module_equals_multihead_attention(ops, kind):
    ours, theirs = module_pair()
    x = torch.randn(4, 10, 32)
    memory = torch.randn(4, 17, 32) if kind == "cross" else x
    mask = nn.Transformer.generate_square_subsequent_mask(10) if kind == "causal" else None
    results = []
    for module in (ours, theirs):
        out, weights = module(x, memory, memory, need_weights=False, attn_mask=mask)
        assert weights is None
        out.sum().backward()
        results.append((out, [p.grad.clone() for p in module.parameters()]))
    torch.testing.assert_close(results[0][0], results[1][0], **TOL)
    for a, b in zip(results[0][1], results[1][1], strict=True):
        torch.testing.assert_close(a, b, **TOL)


@pytest.mark.parametrize(
    "case", ["weights", "padding", "other mask", "attention dropout", "separate k and v", "modules"]
)
def test_the_attention_module_hands_what_it_does_not_cover_to_torch(ops, case, monkeypatch):
    ours, theirs = module_pair(dropout=0.5 if case == "attention dropout" else 0.0)
    calls = []
    monkeypatch.setattr(_Attention, "apply", lambda *a: calls.append(a) or _Attention.forward(None, *a))
    x = torch.randn(3, 6, 32)
    key, value = x, x
    kwargs = {"need_weights": case == "weights"}
    if case == "padding":
        kwargs["key_padding_mask"] = torch.zeros(3, 6, dtype=torch.bool)
    if case == "other mask":
        kwargs["attn_mask"] = torch.zeros(6, 6)
    if case == "separate k and v":
        value = torch.randn(3, 6, 32)
    if case == "modules":
        monkeypatch.setenv(cpu_kernels.ENV, "0")
    torch.manual_seed(5)
    out, weights = ours(x, key, value, **kwargs)
    torch.manual_seed(5)
    expected, expected_weights = theirs(x, key, value, **kwargs)
    assert calls == []  # the kernel did not run
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    assert (weights is None) == (expected_weights is None)


def test_the_attention_module_uses_the_kernel_in_the_default_case(ops, monkeypatch):
    # The counterpart of the test above: it could pass with a kernel that never runs.
    ours, _ = module_pair()
    calls = []
    original = _Attention.apply
    monkeypatch.setattr(_Attention, "apply", lambda *a: calls.append(a) or original(*a))
    x = torch.randn(3, 6, 32)
    ours(x, x, x, need_weights=False)
    assert len(calls) == 1


def test_dropout_keeps_one_minus_p_scaled_to_keep_the_expectation(ops):
    drop = nn.Dropout(0.1)
    drop.__class__ = Dropout
    x = torch.ones(1000, 1000, requires_grad=True)
    torch.manual_seed(0)
    y = drop(x)
    cut = round(0.1 * 2**21)
    scale = 2**21 / (2**21 - cut)
    kept = y != 0
    assert y.detach().unique().tolist() == [0.0, pytest.approx(scale)]
    n, rate = kept.numel(), cut / 2**21
    assert abs((~kept).sum().item() / n - rate) < 5 * math.sqrt(rate * (1 - rate) / n)  # 5 sigma
    assert abs(y.detach().mean().item() - 1.0) < 5 * math.sqrt(rate / (1 - rate) / n)
    # Neighbours are independent: the drop rate next to a dropped element is the rate.
    flat = ~kept.flatten()
    after_drop = flat[1:][flat[:-1]].float().mean().item()
    assert abs(after_drop - rate) < 5 * math.sqrt(rate * (1 - rate) / flat[:-1].sum().item())
    y.sum().backward()
    torch.testing.assert_close(x.grad, y.detach())  # the gradient passes where the mask kept, scaled
    torch.manual_seed(0)
    torch.testing.assert_close(drop(x), y)  # torch's seed fixes the mask
    assert not torch.equal(drop(x), y)  # and the next draw differs
    drop.eval()
    assert torch.equal(drop(x), x)


def test_dropout_of_an_odd_sized_tensor_draws_every_element(ops):
    drop = nn.Dropout(0.5)
    drop.__class__ = Dropout
    y = drop(torch.ones(7, 5))  # 35 elements: 12 words of 3, the last one partly used
    assert y.shape == (7, 5) and set(y.unique().tolist()) <= {0.0, 2.0}
    masks = torch.stack([drop(torch.ones(7, 5)) == 0 for _ in range(400)]).float().mean(0)
    assert ((masks - 0.5).abs() < 0.15).all()  # every position is dropped about half the time


SPEC1 = InputSpec(seq_len=96, n_features=6, output_window=1, n_tickers=5, ticker_embedding=True)
SPEC48 = InputSpec(seq_len=96, n_features=6, output_window=48, n_tickers=5, ticker_embedding=True)


@pytest.mark.parametrize(
    ("cfg", "spec"),
    [
        (TransformerConfig(dropout=0.0), SPEC1),
        (TransformerConfig(dropout=0.0), SPEC48),
        (TransformerConfig(d_model=24, n_heads=2, ff_dim=16, positional="learned", dropout=0.0), SPEC48),
        (TransformerConfig(d_model=16, n_heads=4, decoder_layers=2, dropout=0.0), SPEC1),
    ],
)
def test_the_model_with_the_kernels_equals_the_model_with_torch_modules(ops, monkeypatch, cfg, spec):
    torch.manual_seed(0)
    model = Transformer(cfg, spec)
    assert {type(m) for m in model.modules()} >= {Attention, Dropout}
    x, ticker = torch.randn(8, spec.seq_len, spec.n_features), torch.randint(0, spec.n_tickers, (8,))
    y = torch.randn(8, spec.output_window)
    results = []
    for env in ("1", "0"):
        monkeypatch.setenv(cpu_kernels.ENV, env)
        model.zero_grad()
        loss = nn.functional.mse_loss(model(x, ticker), y)
        loss.backward()
        results.append((loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    torch.testing.assert_close(results[0][0], results[1][0], **TOL)
    for name, grad in results[0][1].items():
        torch.testing.assert_close(grad, results[1][1][name], rtol=1e-4, atol=1e-6, msg=name)


def test_the_state_dict_is_torch_layers_and_every_attention_and_dropout_is_switched():
    model = Transformer(TransformerConfig(), SPEC1)
    layer = nn.TransformerEncoderLayer(32, 4, 64, 0.1, batch_first=True)
    keys = {k for k in model.state_dict() if k.startswith("encoder.layers.0.")}
    assert keys == {f"encoder.layers.0.{k}" for k in layer.state_dict()}
    kinds = [type(m) for m in model.modules()]
    assert nn.MultiheadAttention not in kinds and nn.Dropout not in kinds
    # the input's, 3 in each of 2 encoder layers, 4 in the decoder layer
    assert kinds.count(Attention) == 4 and kinds.count(Dropout) == 1 + 2 * 3 + 4


def test_under_cpu_autocast_the_model_runs_torch_attention(ops):
    torch.manual_seed(0)
    model = Transformer(TransformerConfig(), InputSpec(12, 5, 3, 3, True))
    x, ticker = torch.randn(2, 12, 5), torch.randint(0, 3, (2,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x, ticker)  # the projections are bfloat16 here: the kernel is not for them
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()


def test_a_second_derivative_through_the_kernels_raises_instead_of_being_wrong(ops):
    # Through the whole model other paths reach x: without the check the result came back
    # silently without the attention's terms.
    torch.manual_seed(0)
    model = Transformer(TransformerConfig(dropout=0.0), InputSpec(12, 5, 3, 3, True))
    x, ticker = torch.randn(2, 12, 5, requires_grad=True), torch.randint(0, 3, (2,))
    with pytest.raises(RuntimeError, match="no second derivative"):
        torch.autograd.grad(model(x, ticker).square().sum(), x, create_graph=True)
    (g,) = torch.autograd.grad(model(x, ticker).square().sum(), x)  # a first derivative is fine
    assert torch.isfinite(g).all()


def test_no_keys_is_torch_zeros_and_the_op_refuses_it(ops):
    ours, theirs = module_pair()
    q, empty = torch.randn(2, 3, 32), torch.randn(2, 0, 32)
    out, _ = ours(q, empty, empty, need_weights=False)
    torch.testing.assert_close(out, theirs(q, empty, empty, need_weights=False)[0])
    with pytest.raises(RuntimeError, match="at least one key"):
        ops.attention(q, empty, empty, 4, False)


def test_a_causal_mask_being_learned_gets_its_gradient_from_torch(ops):
    ours, _ = module_pair()
    x = torch.randn(2, 6, 32)
    mask = nn.Transformer.generate_square_subsequent_mask(6).requires_grad_()
    ours(x, x, x, need_weights=False, attn_mask=mask)[0].sum().backward()
    assert mask.grad is not None
