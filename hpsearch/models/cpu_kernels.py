"""hpsearch's CPU kernels: the CNN's fused feature block (cnn2d_cpu.cpp) and the Transformer's
attention and dropout mask (attention_cpu.cpp), one extension built once per machine and loaded
once per process.

torch's JIT extension loader compiles the C++ files with the machine's C++ compiler and ninja (the
`ninja` wheel is a dependency) into `<TORCH_EXTENSIONS_DIR or ~/.cache/torch_extensions>/
hpsearch-py<python>_torch<version>-<hash of the source>/` (e.g.
hpsearch-py311_torch2.13.0_cpu-ebcb9322cf); the build takes ~20 s on 2 cores, later processes load
it in ~1 s.
`hpsearch run` and `hpsearch train` build it before the first trial (`prepare`), so that no
trial's time includes it and parallel workers find it built. Where it cannot be built (no
compiler, a torch without headers) or HPSEARCH_CPU_KERNELS=0 is set, `ops()` returns None and
the models run the same computation with torch's own modules; the reason is logged once and
recorded with each trial (`status()`).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import shutil
import sys
from pathlib import Path

import torch

# The kernel files and the header they share: all copied into the build folder and hashed into its
# name; the .cpp files are compiled.
SOURCES = tuple(Path(__file__).with_name(n) for n in ("cnn2d_cpu.cpp", "attention_cpu.cpp", "cpu_simd.h"))
NAME = "hpsearch_cnn2d_cpu"
ENV = "HPSEARCH_CPU_KERNELS"  # "0": never build or use them
# Measuring switches read by the C++ (any value but "" or "0..." sets them): the generic code on
# an AVX-512 CPU, oneDNN's conv2 instead of hpsearch's. status() names those that are set.
SWITCHES = ("HPSEARCH_CPU_KERNELS_GENERIC", "HPSEARCH_CPU_KERNELS_ONEDNN")
# Set by prepare() when the build failed, so that worker processes skip it and report why.
ENV_UNAVAILABLE = "HPSEARCH_CPU_KERNELS_UNAVAILABLE"

log = logging.getLogger("hpsearch")
_state: dict[str, object] = {}  # "ops": the loaded namespace or None; "why": the reason it is None


def used_by(family: str, device: torch.device) -> bool:
    """Whether a model of this family on this device runs the kernels (the CNN or the Transformer
    on CPU)."""
    return family in ("cnn2d", "transformer") and device.type == "cpu"


def enabled() -> bool:
    return os.environ.get(ENV, "1").strip().lower() not in ("0", "false", "no", "off")


def ops():
    """torch.ops.hpsearch with the fused kernels, or None (disabled, not buildable here)."""
    if not enabled():
        return None
    if "ops" not in _state:
        why = os.environ.get(ENV_UNAVAILABLE)
        _state["ops"], _state["why"] = (None, why) if why else _load()
        if _state["ops"] is None and not why:  # a parent that prepared has said it already
            log.warning(
                "hpsearch: fused CPU kernels unavailable (%s); the models run torch's modules instead "
                "(same results, slower). %s=0 skips the build.",
                _state["why"],
                ENV,
            )
    return _state["ops"]


def runs_on(x: torch.Tensor) -> bool:
    """Whether the kernels can compute with x: float32 on CPU, not under torch.compile (they have
    no meta functions), and built and enabled here. The models add their own conditions."""
    return (
        x.device.type == "cpu"
        and x.dtype == torch.float32
        and not torch.compiler.is_compiling()
        and ops() is not None
    )


def first_derivative_only(what: str) -> None:
    """Called at the top of a kernel's backward. The kernels' gradients are not themselves
    differentiable: under create_graph=True (grad mode on inside backward) a second derivative
    would silently lack their terms (torch's once_differentiable only raises where the kernel's
    output is the only path), so this refuses it and says how to get one."""
    if torch.is_grad_enabled():
        raise RuntimeError(
            f"hpsearch's CPU kernel for {what} has no second derivative (create_graph=True); "
            f"run with {ENV}=0 for torch's modules"
        )


def status() -> str:
    """For provenance: 'fused' (the kernels ran; with the measuring switches set, which), 'disabled',
    'unavailable: why', or 'not loaded'."""
    if not enabled():
        return "disabled"
    if "ops" not in _state:
        return "not loaded"
    if _state["ops"] is None:
        return f"unavailable: {_state['why']}"
    switches = [f"{name}=1" for name in SWITCHES if os.environ.get(name, "")[:1] not in ("", "0")]
    return "fused" + (f" ({', '.join(switches)})" if switches else "")


def prepare(console=None) -> None:
    """Build or load the kernels now, saying so when a build is due; where they cannot be built,
    tell child processes (parallel workers) not to try again."""
    if not enabled() or "ops" in _state:
        return
    folder = build_dir()
    due = not (folder / f"{NAME}.so").exists()
    if console is not None and due and _compiler() is not None:  # else ops() says why in one line
        console.print(f"building hpsearch's CPU kernels into {folder} (once per machine, ~20 s)")
    if ops() is None:
        os.environ[ENV_UNAVAILABLE] = str(_state["why"])


def _flags() -> list[str]:
    # -O3 vectorizes the row loops (the source picks the vector width at load time, so no
    # -march flag: a cache shared by several machines holds code each of them can run).
    # at::parallel_for is inline OpenMP in torch's headers: without -fopenmp it runs on one
    # thread. On Linux the linked libgomp.so.1 is torch's own, already loaded (same soname).
    flags = ["-O3"]
    if sys.platform.startswith("linux") and torch.backends.openmp.is_available():
        flags.append("-fopenmp")
    return flags


def build_dir() -> Path:
    """One folder per Python, torch and version of the source (with its flags). The source is
    built from a copy inside it: torch rebuilds an extension whenever the path of the source it was
    built from changes, so two checkouts building their own files into one folder rebuilt each
    other's on every run (measured: ~20 s each time, silently)."""
    base = os.environ.get("TORCH_EXTENSIONS_DIR") or Path.home() / ".cache" / "torch_extensions"
    tag = re.sub(
        r"[^A-Za-z0-9_.]", "_", f"py{sys.version_info[0]}{sys.version_info[1]}-torch{torch.__version__}"
    )
    text = b"".join(source.read_bytes() for source in SOURCES)
    digest = hashlib.sha256(text + " ".join(_flags()).encode()).hexdigest()[:10]
    return Path(base) / f"hpsearch-{tag}-{digest}"


def _compiler() -> str | None:
    name = os.environ.get("CXX", "c++")
    return shutil.which(name)


@contextlib.contextmanager
def _build_lock(folder: Path):
    """Serialize hpsearch's builds with an OS lock, which dies with its process. torch's own lock
    is a file that a build killed mid-way leaves behind, and every later build then waits on it
    forever; under this lock no other build runs, so such a file is stale and is removed."""
    try:
        import fcntl
    except ImportError:  # not POSIX: torch's lock alone
        yield
        return
    with open(folder / "hpsearch.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            stale = folder / "lock"
            if stale.exists():
                log.warning("hpsearch: removing %s, left by a build that was killed", stale)
                stale.unlink(missing_ok=True)
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _reason(exc: Exception) -> str:
    """One readable line: a build failure's message ends with the compiler's error, not its start."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    useful = [line for line in lines if re.search(r"error|not found|No such file|FAILED", line)]
    text = (useful[-1] if useful else lines[-1] if lines else "") or type(exc).__name__
    return f"{type(exc).__name__}: {text}"[:300]


def _load():
    if _compiler() is None:
        return None, f"no C++ compiler: '{os.environ.get('CXX', 'c++')}' not found (set CXX to one)"
    try:
        from torch.utils import cpp_extension

        try:  # the ninja wheel's binary, which is not on PATH when the venv is not activated
            import ninja

            os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + os.environ.get("PATH", "")
        except ImportError:
            pass
        flags = _flags()
        folder = build_dir()
        folder.mkdir(parents=True, exist_ok=True)
        with _build_lock(folder):
            copies = []
            for original in SOURCES:
                source = folder / original.name  # the same path for every checkout of this version
                text = original.read_bytes()
                if not source.exists() or source.read_bytes() != text:
                    source.write_bytes(text)
                copies.append(str(source))
            cpp_extension.load(
                name=NAME,
                sources=[c for c in copies if c.endswith(".cpp")],
                extra_cflags=flags,
                extra_ldflags=flags[1:],
                build_directory=str(folder),
                is_python_module=False,
                verbose=False,
            )
        return torch.ops.hpsearch, ""
    except Exception as exc:  # any failure to build or load means: use torch's modules
        return None, _reason(exc)
