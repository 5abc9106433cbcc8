"""The CNN's fused CPU kernels (cnn2d_cpu.cpp): built once per machine, loaded once per process.

torch's JIT extension loader compiles the C++ file with the machine's compiler and ninja (the
`ninja` wheel is a dependency) into its cache (~/.cache/torch_extensions, or TORCH_EXTENSIONS_DIR);
the first build takes ~10 s, later processes load it in ~1 s. Where it cannot be built (no
compiler, a torch without headers) or HPSEARCH_CPU_KERNELS=0 is set, `ops()` returns None and the
CNN runs the same computation with torch's own modules, once, with a warning saying why.
"""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path

import torch

SOURCE = Path(__file__).with_name("cnn2d_cpu.cpp")
ENV = "HPSEARCH_CPU_KERNELS"  # "0": never build or use them

_state: dict[str, object] = {}  # "ops": the loaded namespace or None; "why": the reason it is None


def enabled() -> bool:
    return os.environ.get(ENV, "1").strip().lower() not in ("0", "false", "no", "off")


def ops():
    """torch.ops.hpsearch with the fused kernels, or None (not built, not buildable, disabled)."""
    if not enabled():
        return None
    if "ops" not in _state:
        _state["ops"], _state["why"] = _load()
        if _state["ops"] is None:
            warnings.warn(
                f"hpsearch: fused CPU kernels unavailable ({_state['why']}); the CNN runs torch's "
                f"modules instead (same results, slower). Set {ENV}=0 to skip the build.",
                RuntimeWarning,
                stacklevel=3,
            )
    return _state["ops"]


def status() -> str:
    """For provenance: 'fused' (the kernels ran), 'disabled', 'unavailable: why', or 'not loaded'."""
    if not enabled():
        return "disabled"
    if "ops" not in _state:
        return "not loaded"
    return "fused" if _state["ops"] is not None else f"unavailable: {_state['why']}"


def _load():
    try:
        from torch.utils import cpp_extension

        try:  # the ninja wheel's binary, which is not on PATH when the venv is not activated
            import ninja

            os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + os.environ.get("PATH", "")
        except ImportError:
            pass
        # -O3 vectorizes the row loops (the source picks the vector width at load time, so no
        # -march flag: a cache shared by several machines holds code each of them can run).
        # at::parallel_for is inline OpenMP in torch's headers: without -fopenmp it runs on one
        # thread. On Linux the linked libgomp.so.1 is torch's own, already loaded (same soname).
        flags = ["-O3"]
        if sys.platform.startswith("linux") and torch.backends.openmp.is_available():
            flags.append("-fopenmp")
        cpp_extension.load(
            name="hpsearch_cnn2d_cpu",
            sources=[str(SOURCE)],
            extra_cflags=flags,
            extra_ldflags=flags[1:],
            is_python_module=False,
            verbose=False,
        )
        return torch.ops.hpsearch, ""
    except Exception as exc:  # any failure to build or load means: use torch's modules
        first = str(exc).strip().splitlines()
        return None, f"{type(exc).__name__}: {first[0] if first else ''}"[:300]
