"""The CNN's fused CPU kernels (hpsearch/models/cnn2d_cpu.cpp) compute what torch's modules compute.

MaxPool2d((2, 1)) then ReLU, and the Conv2d before them (one input channel, then C1), are the
definitions; the kernels must give the same outputs (the pool: bit for bit) and the same
gradients, on ties, NaN, odd lengths and channel counts that do not fill a vector register.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys

import pytest
import torch
from torch import nn

from hpsearch.models import InputSpec, cpu_kernels
from hpsearch.models.cnn2d import Cnn2dConfig
from hpsearch.reference import twins

CL = torch.channels_last


@pytest.fixture(params=["vector", "generic", "onednn"])
def ops(request, monkeypatch):
    """The kernels, each test run three ways: with the AVX-512 code where this CPU has it (conv2 at
    16 floats), with the generic code that any other CPU runs (HPSEARCH_CPU_KERNELS_GENERIC=1: at
    8 floats), and with oneDNN's conv2 (HPSEARCH_CPU_KERNELS_ONEDNN=1)."""
    if request.param == "generic":
        monkeypatch.setenv("HPSEARCH_CPU_KERNELS_GENERIC", "1")
    if request.param == "onednn":
        monkeypatch.setenv("HPSEARCH_CPU_KERNELS_ONEDNN", "1")
    found = cpu_kernels.ops()
    if found is None and not shutil.which(os.environ.get("CXX", "c++")):
        pytest.skip("no C++ compiler on this machine: the CNN runs torch's modules")
    assert found is not None, f"the fused CPU kernels did not build: {cpu_kernels.status()}"
    return found


def pool_relu_reference(z: torch.Tensor) -> torch.Tensor:
    return torch.relu(nn.functional.max_pool2d(z, (2, 1)))


@pytest.mark.parametrize(
    ("B", "C", "T", "F"), [(5, 8, 96, 6), (3, 16, 48, 6), (4, 3, 9, 5), (2, 17, 7, 1), (1, 40, 4, 3)]
)
def test_pool_relu_equals_max_pool_then_relu_bit_for_bit(ops, B, C, T, F):
    torch.manual_seed(0)
    z = torch.randn(B, C, T, F)
    n = 2 * (T // 2)  # the pooled steps: pairs (0, 1), (2, 3), ...
    tie = torch.rand(B, C, n // 2, F) < 0.3
    z[:, :, 1:n:2] = torch.where(tie, z[:, :, 0:n:2], z[:, :, 1:n:2])  # equal neighbours in time
    z[0, 0, 0, 0], z[0, 0, 1, 0] = float("nan"), 1.0  # NaN in the even step wins
    if T > 3:
        z[0, 0, 2, 0], z[0, 0, 3, 0] = 1.0, float("nan")  # and in the odd step
    z[-1, -1, 0, -1], z[-1, -1, 1, -1] = -0.0, -2.0  # a pair that ReLU cuts
    z = z.contiguous(memory_format=CL)
    out, code = ops.pool_relu(z)
    ref = pool_relu_reference(z)
    torch.testing.assert_close(out, ref, rtol=0, atol=0, equal_nan=True)
    g = torch.randn_like(ref)
    zr = z.clone().requires_grad_()
    pool_relu_reference(zr).backward(g)
    grad = ops.pool_relu_backward(g, code, T)
    assert grad.is_contiguous(memory_format=CL)
    torch.testing.assert_close(grad, zr.grad, rtol=0, atol=0)


@pytest.mark.parametrize(
    ("c1", "k", "T", "F"),
    [(8, 3, 96, 6), (4, 5, 30, 7), (2, 3, 5, 1), (3, 7, 9, 2), (1, 1, 4, 3), (17, 3, 11, 6), (32, 5, 16, 4)],
)
def test_conv1_pool_relu_equals_conv_then_pool_then_relu(ops, c1, k, T, F):
    torch.manual_seed(0)
    conv = nn.Conv2d(1, c1, k, padding=k // 2)
    x = torch.randn(9, T, F)  # (B, T, F)
    out, code = ops.conv1_pool_relu(x, conv.weight.detach(), conv.bias.detach())
    ref = pool_relu_reference(conv(x.unsqueeze(1)))
    assert out.shape == ref.shape == (9, c1, T // 2, F) and out.is_contiguous(memory_format=CL)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    g = torch.randn_like(ref)
    ref.backward(g)
    grad_weight, grad_bias = ops.conv1_pool_relu_backward(g, code, x, k)
    torch.testing.assert_close(grad_weight, conv.weight.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(grad_bias, conv.bias.grad, rtol=1e-4, atol=1e-5)


def on_1_2_3_threads(fn) -> list:
    """fn() run on 1, 2 and 3 torch threads (the thread count restored after)."""
    threads = torch.get_num_threads()
    try:
        results = []
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            results.append(fn())
    finally:
        torch.set_num_threads(threads)
    return results


def test_the_weight_gradient_does_not_depend_on_the_thread_count(ops):
    torch.manual_seed(0)
    x, w, b = torch.randn(70, 96, 6), torch.randn(8, 1, 3, 3), torch.randn(8)
    out, code = ops.conv1_pool_relu(x, w, b)
    g = torch.randn_like(out)
    results = on_1_2_3_threads(lambda: ops.conv1_pool_relu_backward(g, code, x, 3))
    for gw, gb in results[1:]:
        assert torch.equal(gw, results[0][0]) and torch.equal(gb, results[0][1])


def test_the_cnn_uses_the_kernels_and_the_reference_order_for_its_head(ops):
    spec = InputSpec(seq_len=96, n_features=6, output_window=1, n_tickers=3, ticker_embedding=True)
    fast, ref = twins(Cnn2dConfig(dropout=0.5), spec)
    x, tk = torch.randn(32, 96, 6), torch.randint(0, 3, (32,))
    assert fast._fused(x) and not fast._fused(x.clone().requires_grad_()) and not fast._fused(x.double())
    # The fused path flattens in the reference's order, so even dropout draws the same mask.
    torch.manual_seed(3)
    a = fast(x, tk)
    torch.manual_seed(3)
    torch.testing.assert_close(a, ref(x, tk), rtol=1e-5, atol=1e-6)


def test_disabled_kernels_give_the_same_model(ops, monkeypatch):
    spec = InputSpec(seq_len=30, n_features=5, output_window=3, n_tickers=2, ticker_embedding=True)
    fast, _ = twins(Cnn2dConfig(c1=5, c2=7), spec)
    x, tk = torch.randn(16, 30, 5), torch.randint(0, 2, (16,))
    fused = fast(x, tk)
    monkeypatch.setenv(cpu_kernels.ENV, "0")
    assert not fast._fused(x) and cpu_kernels.status() == "disabled"
    torch.testing.assert_close(fast(x, tk), fused, rtol=1e-5, atol=1e-6)


def test_kernels_that_cannot_be_built_warn_once_and_the_cnn_still_runs(monkeypatch, caplog):
    monkeypatch.setattr(cpu_kernels, "_state", {})
    monkeypatch.setattr(cpu_kernels, "_load", lambda: (None, "RuntimeError: c++: not found"))
    spec = InputSpec(seq_len=16, n_features=3, output_window=1, n_tickers=2, ticker_embedding=False)
    fast, ref = twins(Cnn2dConfig(c1=2, c2=3), spec)
    x, tk = torch.randn(4, 16, 3), torch.zeros(4, dtype=torch.long)
    with caplog.at_level(logging.WARNING, logger="hpsearch"):
        out = fast(x, tk)
        fast(x, tk)
    assert [r.getMessage().count("c++: not found") for r in caplog.records] == [1]
    torch.testing.assert_close(out, ref(x, tk), rtol=1e-5, atol=1e-6)
    assert cpu_kernels.status() == "unavailable: RuntimeError: c++: not found"


def test_a_failed_prepare_tells_worker_processes_not_to_build(monkeypatch, caplog):
    monkeypatch.setattr(cpu_kernels, "_state", {})
    monkeypatch.setattr(cpu_kernels, "_load", lambda: (None, "RuntimeError: broken"))
    monkeypatch.setenv(cpu_kernels.ENV_UNAVAILABLE, "")  # so that the variable set below is undone
    monkeypatch.delenv(cpu_kernels.ENV_UNAVAILABLE)
    cpu_kernels.prepare()
    assert os.environ[cpu_kernels.ENV_UNAVAILABLE] == "RuntimeError: broken"
    # A worker: a new process inherits the environment and never builds, nor warns again.
    monkeypatch.setattr(cpu_kernels, "_state", {})
    monkeypatch.setattr(cpu_kernels, "_load", lambda: pytest.fail("a worker built the kernels"))
    caplog.clear()
    assert cpu_kernels.ops() is None and cpu_kernels.status() == "unavailable: RuntimeError: broken"
    assert not caplog.records


def test_the_reason_of_a_failed_build_is_the_compilers_error_not_the_command_line():
    exc = RuntimeError(
        "Error building extension 'hpsearch_cnn2d_cpu': [1/2] c++ -MMD -MF cnn2d_cpu.o.d "
        "-DTORCH_EXTENSION_NAME=hpsearch_cnn2d_cpu -isystem /very/long/include/path "
        * 3
        + "\nFAILED: [code=127] cnn2d_cpu.o\n/bin/sh: 1: c++: not found\nninja: build stopped"
    )
    assert cpu_kernels._reason(exc) == "RuntimeError: /bin/sh: 1: c++: not found"


def test_no_compiler_is_said_plainly(monkeypatch):
    monkeypatch.setenv("CXX", "/nonexistent/c++")
    assert cpu_kernels._load() == (None, "no C++ compiler: '/nonexistent/c++' not found (set CXX to one)")


def test_a_lock_left_by_a_killed_build_does_not_hang_the_next_one(ops):
    # torch's build lock is a plain file: a build killed mid-way leaves it, and torch then waits
    # for it forever. A new process (the library cannot be loaded twice in one) must get through.
    lock = cpu_kernels.build_dir() / "lock"
    lock.write_text("")
    code = (
        "from hpsearch.models import cpu_kernels; assert cpu_kernels.ops() is not None, cpu_kernels.status()"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=300)
    assert not lock.exists()


def test_pool_backward_reads_a_gradient_sliced_from_a_wider_one(ops):
    # What the head hands back: the feature columns of a (B, flat + ticker_dim) gradient.
    z = torch.randn(4, 3, 10, 5).contiguous(memory_format=CL)
    out, code = ops.pool_relu(z)
    wide = torch.randn(4, out[0].numel() + 2)
    g = wide[:, : out[0].numel()].view(out.shape)
    assert not g.is_contiguous()
    torch.testing.assert_close(
        ops.pool_relu_backward(g, code, 10), ops.pool_relu_backward(g.contiguous(), code, 10), rtol=0, atol=0
    )


@pytest.mark.parametrize(
    ("c1", "c2", "k", "T", "F"),
    [(8, 16, 3, 96, 6), (4, 17, 3, 21, 5), (3, 40, 5, 16, 7), (2, 3, 3, 9, 1), (16, 8, 1, 8, 4)],
)
def test_the_feature_block_equals_the_modules(ops, c1, c2, k, T, F):
    # conv2 runs as hpsearch's direct convolution fused with its pool (16 floats on AVX-512 where
    # it has more than 8 channels, else 8), or as oneDNN's: channel counts that do not fill a
    # register, pixels that do not fill a block.
    torch.manual_seed(0)
    conv1, conv2 = nn.Conv2d(1, c1, k, padding=k // 2), nn.Conv2d(c1, c2, k, padding=k // 2)
    x = torch.randn(6, T, F)
    params = [p.detach() for p in (conv1.weight, conv1.bias, conv2.weight, conv2.bias)]
    out, a1, code1, code2 = ops.features(x, *params)
    ref = pool_relu_reference(conv2(pool_relu_reference(conv1(x.unsqueeze(1)))))
    assert out.shape == ref.shape == (6, c2, T // 4, F) and out.is_contiguous()
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    g = torch.randn_like(ref)
    ref.backward(g)
    grads = ops.features_backward(g, x, a1, code1, code2, params[0], params[2])
    for got, p in zip(grads, (conv1.weight, conv1.bias, conv2.weight, conv2.bias), strict=True):
        torch.testing.assert_close(got, p.grad, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    ("c1", "c2", "k", "T1", "F"),
    [
        (8, 16, 3, 48, 6),
        (9, 17, 3, 11, 5),
        (32, 64, 3, 8, 7),
        (3, 40, 5, 13, 2),
        (4, 9, 1, 6, 1),
        (16, 8, 5, 7, 4),
    ],
)
def test_direct_conv2_with_its_pool_equals_the_modules_both_ways(ops, c1, c2, k, T1, F):
    # The 8-float kernels on any CPU: output-channel blocks of 16 and 8 with padding lanes, input
    # channels past a register, pixel blocks of 1-6, an odd number of rows (its last unpooled).
    torch.manual_seed(0)
    conv = nn.Conv2d(c1, c2, k, padding=k // 2)
    a1 = torch.randn(11, c1, T1, F).contiguous(memory_format=CL).requires_grad_()
    out, code = ops.conv2_pool_relu_direct(a1.detach(), conv.weight.detach(), conv.bias.detach())
    ref = pool_relu_reference(conv(a1))
    assert out.shape == ref.shape and out.is_contiguous()
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    assert torch.equal(code, ops.pool_relu(conv(a1).detach().contiguous(memory_format=CL))[1])
    g = torch.randn_like(ref)
    ref.backward(g)
    wide = torch.randn(11, g[0].numel() + 3)  # as the head hands it back: a slice of a wider gradient
    wide[:, : g[0].numel()] = g.flatten(1)
    sliced = wide[:, : g[0].numel()].view(g.shape)
    ga1, gw, gb = ops.conv2_pool_relu_direct_backward(sliced, code, a1.detach(), conv.weight.detach())
    assert ga1.is_contiguous(memory_format=CL)
    torch.testing.assert_close(ga1, a1.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(gw, conv.weight.grad, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(gb, conv.bias.grad, rtol=1e-4, atol=1e-4)


def test_direct_conv2_gradients_do_not_depend_on_the_thread_count(ops):
    torch.manual_seed(0)
    a1 = torch.randn(70, 8, 48, 6).contiguous(memory_format=CL)
    w, b = torch.randn(16, 8, 3, 3), torch.randn(16)
    out, code = ops.conv2_pool_relu_direct(a1, w, b)
    g = torch.randn_like(out)
    results = on_1_2_3_threads(lambda: ops.conv2_pool_relu_direct_backward(g, code, a1, w))
    for got in results[1:]:
        assert all(torch.equal(a, b) for a, b in zip(got, results[0], strict=True))


def test_conv2_weights_that_do_not_fit_the_input_are_refused(ops):
    # The kernels index buffers by these shapes: a mismatch must raise, not read past a buffer.
    a1 = torch.randn(2, 8, 6, 3).contiguous(memory_format=CL)
    x = torch.randn(2, 12, 3)
    w1, b1 = torch.randn(8, 1, 3, 3), torch.randn(8)
    for w2, b2 in [
        (torch.randn(4, 4, 3, 3), torch.randn(4)),  # input channels: 4, not 8
        (torch.randn(4, 8, 3, 3), torch.randn(2)),  # bias: 2, not 4
        (torch.randn(4, 8, 2, 2), torch.randn(4)),  # an even kernel
        (torch.randn(4, 8, 3, 3).double(), torch.randn(4)),
    ]:
        with pytest.raises(RuntimeError):
            ops.conv2_pool_relu_direct(a1, w2, b2)
        with pytest.raises(RuntimeError):
            ops.features(x, w1, b1, w2, b2)
    with pytest.raises(RuntimeError):
        ops.conv2_pool_relu_direct_backward(
            torch.randn(2, 4, 3, 3), torch.zeros(2, 3, 12, dtype=torch.uint8), a1, torch.randn(4, 4, 3, 3)
        )


def test_the_recorded_status_names_the_measuring_switches(ops, monkeypatch):
    monkeypatch.delenv("HPSEARCH_CPU_KERNELS_GENERIC", raising=False)
    monkeypatch.delenv("HPSEARCH_CPU_KERNELS_ONEDNN", raising=False)
    assert cpu_kernels.status() == "fused"
    monkeypatch.setenv("HPSEARCH_CPU_KERNELS_ONEDNN", "1")
    assert cpu_kernels.status() == "fused (HPSEARCH_CPU_KERNELS_ONEDNN=1)"
    monkeypatch.setenv("HPSEARCH_CPU_KERNELS_ONEDNN", "0")
    assert cpu_kernels.status() == "fused"


def test_the_build_folder_is_one_per_version_of_the_source(monkeypatch, tmp_path):
    # Two checkouts of one version share one build (built from a copy of the source in the folder,
    # since torch rebuilds whenever the source's path changes); another version gets its own.
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    here = cpu_kernels.build_dir()
    assert here.parent == tmp_path and here.name.startswith("hpsearch-py")
    copies = [tmp_path / source.name for source in cpu_kernels.SOURCES]
    for source, copy in zip(cpu_kernels.SOURCES, copies, strict=True):
        copy.write_bytes(source.read_bytes())
    monkeypatch.setattr(cpu_kernels, "SOURCES", tuple(copies))
    assert cpu_kernels.build_dir() == here  # the same text elsewhere: the same build
    for copy in copies:  # a change to either file is another version
        before = copy.read_bytes()
        copy.write_bytes(before + b"// changed\n")
        assert cpu_kernels.build_dir() != here
        copy.write_bytes(before)
        assert cpu_kernels.build_dir() == here


def test_a_second_derivative_through_the_fused_features_raises(ops):
    # A gradient penalty (create_graph=True) would otherwise lack the fused block's terms silently.
    spec = InputSpec(seq_len=16, n_features=3, output_window=1, n_tickers=2, ticker_embedding=True)
    fast, _ = twins(Cnn2dConfig(), spec)
    x, ticker = torch.randn(4, 16, 3), torch.zeros(4, dtype=torch.long)
    loss = fast(x, ticker).square().sum()
    with pytest.raises(RuntimeError, match="no second derivative"):
        torch.autograd.grad(loss, list(fast.parameters()), create_graph=True)
