"""Every speed lever kept in the code computes what the straightforward code computes.

The reference: the lab's CNN layer by layer in the default layout (hpsearch.reference), windows
sliced one by one, torch's default Adam, one inference pass over all windows at once.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import default_collate

from hpsearch.config import TrainConfig
from hpsearch.models import InputSpec, build_model, cpu_kernels
from hpsearch.models.cnn2d import Cnn2d, Cnn2dConfig, OneChannelConv2d
from hpsearch.reference import WindowDataset, loader, twins
from hpsearch.runner import prepare
from hpsearch.train import eval_batch, make_optimizer, predict, resolve_device

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(params=["fused", "modules"])
def cnn_path(request, monkeypatch):
    """The CNN on CPU both ways: with the fused kernels (tests/test_cpu_kernels.py checks they
    build here) and with torch's modules, as where they cannot be built."""
    if request.param == "modules":
        monkeypatch.setenv(cpu_kernels.ENV, "0")
    return request.param


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    ("cfg", "T", "F", "embedding", "W"),
    [
        (Cnn2dConfig(), 96, 6, True, 1),  # the default study
        (Cnn2dConfig(), 97, 6, True, 48),  # odd T: the pools drop the last step, as MaxPool2d
        (Cnn2dConfig(c1=4, c2=32, kernel_size=5, hidden=0), 30, 7, False, 3),
        (Cnn2dConfig(c1=1, c2=1, kernel_size=1, hidden=16), 8, 1, True, 1),
        (Cnn2dConfig(c1=3, c2=5, kernel_size=5, dropout=0.0), 12, 2, True, 2),  # kernel wider than F
    ],
)
def test_cnn_equals_the_reference_layers_forward_and_backward(device, cfg, T, F, embedding, W, cnn_path):
    spec = InputSpec(seq_len=T, n_features=F, output_window=W, n_tickers=5, ticker_embedding=embedding)
    fast, ref = twins(cfg, spec, device)
    x = torch.randn(33, T, F, device=device)  # (B, T, F)
    ticker = torch.randint(0, 5, (33,), device=device)
    y = torch.randn(33, W, device=device)
    out_fast, out_ref = fast(x, ticker), ref(x, ticker)
    torch.testing.assert_close(out_fast, out_ref, rtol=1e-5, atol=1e-6)
    torch.nn.functional.mse_loss(out_fast, y).backward()
    torch.nn.functional.mse_loss(out_ref, y).backward()
    grads_ref = dict(ref.named_parameters())
    for name, p in fast.named_parameters():
        torch.testing.assert_close(p.grad, grads_ref[name].grad, rtol=1e-4, atol=1e-6, msg=name)
    fast.eval(), ref.eval()
    with torch.inference_mode():
        torch.testing.assert_close(fast(x, ticker), ref(x, ticker), rtol=1e-5, atol=1e-6)


def test_with_dropout_the_cnn_equals_the_reference_in_eval_and_draws_masks_in_training(cnn_path):
    spec = InputSpec(seq_len=16, n_features=6, output_window=2, n_tickers=4, ticker_embedding=True)
    fast, ref = twins(Cnn2dConfig(dropout=0.5), spec, "cpu")
    x, ticker = torch.randn(64, 16, 6), torch.randint(0, 4, (64,))
    fast.eval(), ref.eval()
    torch.testing.assert_close(fast(x, ticker), ref(x, ticker), rtol=1e-5, atol=1e-6)
    fast.train()
    torch.manual_seed(1)
    a = fast(x, ticker)
    torch.manual_seed(2)
    b = fast(x, ticker)
    assert a.shape == (64, 2) and torch.isfinite(a).all() and not torch.equal(a, b)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    ("c1", "k", "T", "F"), [(8, 3, 96, 6), (4, 5, 30, 7), (2, 3, 5, 1), (3, 7, 9, 2), (1, 1, 4, 3)]
)
def test_one_channel_conv_equals_conv2d(device, c1, k, T, F):
    torch.manual_seed(0)
    fast = OneChannelConv2d(c1, k, F).to(device)
    conv = torch.nn.Conv2d(1, c1, k, padding=k // 2).to(device)
    conv.load_state_dict(fast.state_dict())
    x = torch.randn(9, 1, T, F, device=device)
    out_fast, out_ref = fast(x), conv(x)
    assert out_fast.shape == out_ref.shape == (9, c1, T, F)
    assert out_fast.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out_fast, out_ref, rtol=1e-5, atol=1e-6)
    g = torch.randn_like(out_ref)
    out_fast.backward(g), out_ref.backward(g)
    torch.testing.assert_close(fast.weight.grad, conv.weight.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(fast.bias.grad, conv.bias.grad, rtol=1e-4, atol=1e-5)


def test_pool_ties_and_non_positive_values_route_the_gradient_like_the_reference():
    # Ties (equal neighbours in time) and all-negative pairs are where reordering ReLU and
    # max-pool could differ; the gradient must reach the same elements.
    spec = InputSpec(seq_len=8, n_features=2, output_window=1, n_tickers=1, ticker_embedding=False)
    fast, ref = twins(Cnn2dConfig(c1=2, c2=2, kernel_size=1, hidden=0), spec, "cpu")
    with torch.no_grad():
        for m in (fast, ref):
            m.features[0].weight.fill_(1.0), m.features[0].bias.zero_()
    x = torch.tensor([[[1.0, -1.0], [1.0, -2.0], [0.0, 3.0], [2.0, 3.0]] * 2]).requires_grad_()
    xr = x.detach().clone().requires_grad_()
    fast(x, torch.zeros(1, dtype=torch.long)).sum().backward()
    ref(xr, torch.zeros(1, dtype=torch.long)).sum().backward()
    torch.testing.assert_close(x.grad, xr.grad, rtol=0, atol=0)
    assert x.grad[0, 2, 1] != 0 and x.grad[0, 3, 1] == 0  # the tie 3 == 3 went to the earlier step


def test_state_dicts_keep_the_reference_layout():
    spec = InputSpec(seq_len=96, n_features=6, output_window=1, n_tickers=3, ticker_embedding=True)
    fast, ref = twins(Cnn2dConfig(), spec, "cpu")
    assert list(fast.state_dict()) == list(ref.state_dict())
    assert "features.0.weight" in fast.state_dict() and "features.3.weight" in fast.state_dict()


@pytest.fixture
def prepared(tiny_cfg):
    return prepare(tiny_cfg, resolve_device("cpu"))


def test_gathered_batches_equal_windows_sliced_one_by_one(prepared):
    w = prepared.windows.for_window(1)
    rng = np.random.default_rng(0)
    anchors = rng.choice(np.concatenate(list(w.anchors.values())), size=50)
    x, y, tk = w.gather(torch.as_tensor(anchors))
    ds = WindowDataset(w, anchors)
    xs, ys, tks = default_collate([ds[i] for i in range(len(anchors))])
    assert torch.equal(x, xs) and torch.equal(y, ys) and torch.equal(tk, tks)
    T = w.spec.seq_len
    np.testing.assert_array_equal(x.numpy(), np.stack([w.x.numpy()[a - T + 1 : a + 1] for a in anchors]))


def test_fused_adam_takes_the_default_adams_steps():
    spec = InputSpec(seq_len=16, n_features=6, output_window=1, n_tickers=3, ticker_embedding=True)
    torch.manual_seed(0)
    a = Cnn2d(Cnn2dConfig(), spec)
    b = Cnn2d(Cnn2dConfig(), spec)
    b.load_state_dict(a.state_dict())
    cfg = TrainConfig(lr=1e-3, weight_decay=1e-4)
    fused = make_optimizer(a, cfg, torch.device("cpu"))
    assert fused.defaults["fused"]
    plain = torch.optim.Adam(b.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    for _ in range(20):
        x, tk, y = torch.randn(16, 16, 6), torch.randint(0, 3, (16,)), torch.randn(16, 1)
        for model, opt in ((a, fused), (b, plain)):
            opt.zero_grad()
            torch.nn.functional.mse_loss(model(x, tk), y).backward()
            opt.step()
    for (name, p), q in zip(a.named_parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-6, msg=name)


def test_batched_prediction_equals_one_pass_over_all_windows(prepared, cnn_path):
    w = prepared.windows
    torch.manual_seed(0)
    model = build_model("cnn2d", prepared.cfg.model, w.spec).eval()
    anchors = w.anchors["valid"]
    assert len(anchors) > eval_batch(torch.device("cpu")) // 8  # several batches below
    from hpsearch import train as train_module

    old = train_module.EVAL_BATCH
    try:
        train_module.EVAL_BATCH = {"cpu": 7}  # many small batches, the last one partial
        pred, true = predict(model, w, anchors)
    finally:
        train_module.EVAL_BATCH = old
    with torch.inference_mode():
        x, y, tk = w.gather(torch.as_tensor(anchors))
        whole = model(x, tk).numpy()
    np.testing.assert_allclose(pred, whole, rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(true, y.numpy())


def test_a_training_step_equals_the_reference_loops_step(prepared, cnn_path):
    """hpsearch's step (gather, fast CNN, fused Adam) against the lab's (DataLoader batch,
    layer-by-layer CNN, default Adam) on the same windows: the same weights after 5 steps."""
    w = prepared.windows
    fast, ref = twins(prepared.cfg.model, w.spec, "cpu")
    cfg = TrainConfig(lr=1e-3)
    opt_fast = make_optimizer(fast, cfg, torch.device("cpu"))
    opt_ref = torch.optim.Adam(ref.parameters(), lr=cfg.lr)
    batches = loader(w, w.anchors["train"], shuffle=False)
    loss_fn = torch.nn.MSELoss()
    for step, (xb, yb, tkb) in zip(range(5), batches, strict=False):
        anchors = torch.as_tensor(w.anchors["train"][step * 64 : (step + 1) * 64])
        x, y, tk = w.gather(anchors)
        assert torch.equal(x, xb) and torch.equal(y, yb)
        for model, opt, inputs in ((fast, opt_fast, (x, tk, y)), (ref, opt_ref, (xb, tkb, yb))):
            opt.zero_grad()
            loss_fn(model(inputs[0], inputs[1]), inputs[2]).backward()
            opt.step()
    for (name, p), q in zip(fast.named_parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-6, msg=name)
