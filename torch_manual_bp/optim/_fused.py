"""``fused=True``: one pass over each tensor, in a small C++ kernel built on first use.

Why this route (docs/optim.md has the measurements): an optimizer step only moves memory, and
the per-tensor and multi-tensor paths move it 19 times per Adam step where 7 would do (read
w, g, m, s; write w, m, s). ``torch.compile`` of the rule would also fuse it but costs tens
of seconds of compile per shape on a 2-core CPU. The kernel in ``csrc/fused_optim.cpp`` is
plain C++17 with OpenMP and a C ABI on raw pointers: no torch headers, no ninja, it compiles
in about two seconds with the system compiler (``$CXX``, else ``c++``/``g++``) and is loaded
with ``ctypes``. Nothing is built at import: the first ``step()`` of an optimizer with
``fused=True`` builds it (or finds it cached).

Cache: ``<torch extensions dir>/torch_manual_bp_fused_<hash>/libtmbp_fused.so`` (the
directory ``torch.utils.cpp_extension`` uses, ``$TORCH_EXTENSIONS_DIR`` or
``~/.cache/torch_extensions/...``); the hash covers the source, the compiler command and the
CPU's feature flags (it is built with ``-march=native``). The library is written to a
temporary name and renamed, so concurrent first uses are safe.

Without a compiler, ``fused=True`` raises :class:`FusedUnavailableError` saying why; the
other paths never need it (``fused=None``, the default, does not use it).

Scope: CPU tensors, float32/float64/bfloat16 (and float16 where the compiler has
``_Float16``), contiguous. A non-contiguous tensor in a fused group takes the per-tensor path
instead (same formulas); a CUDA tensor is an error (this package has no CUDA kernel; the
multi-tensor path, the default on CUDA, is PyTorch's launch-efficient route there).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

import torch
from torch import Tensor

__all__ = ["FusedUnavailableError", "adam_fused_", "available", "load", "momentum_fused_"]

_SOURCE = Path(__file__).with_name("csrc") / "fused_optim.cpp"
# -fno-math-errno, -fno-trapping-math: lets sqrt and the select vectorize (no errno, no FP traps
# are used); the arithmetic itself stays IEEE (no -ffast-math).
_FLAGS = ["-O3", "-std=c++17", "-fPIC", "-shared", "-fno-math-errno", "-fno-trapping-math"]
_DTYPES = {torch.float32: 0, torch.float64: 1, torch.bfloat16: 2, torch.float16: 3}
_LIB_NAME = "libtmbp_fused.so"

_lock = threading.Lock()
_lib: ctypes.CDLL | None = None
_error: FusedUnavailableError | None = None


class FusedUnavailableError(RuntimeError):
    """The fused kernel cannot be built or loaded here (no compiler, a compile error)."""


def _compiler() -> str | None:
    for name in (os.environ.get("CXX"), "c++", "g++", "clang++"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def _build_root() -> Path:
    """Where ``torch.utils.cpp_extension`` caches its builds (``$TORCH_EXTENSIONS_DIR`` wins)."""
    from torch.utils.cpp_extension import get_default_build_root

    return Path(os.environ.get("TORCH_EXTENSIONS_DIR") or get_default_build_root())


def _cpu_signature() -> str:
    """What -march=native compiles for: the CPU's feature flags (part of the cache key, so a
    cache shared between different machines never hands one the other's instructions)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith(("flags", "Features"))), "")
    except OSError:
        flags = ""
    return f"{platform.machine()} {platform.system()} {platform.processor()} {flags}"


def _build(cxx: str) -> Path:
    source = _SOURCE.read_bytes()
    # Fallbacks: a compiler without -march=native, one without OpenMP (then one thread).
    for extra in (["-fopenmp", "-march=native"], ["-fopenmp"], []):
        flags = _FLAGS + extra
        key = hashlib.sha256(source + " ".join([cxx, *flags, _cpu_signature()]).encode())
        key = key.hexdigest()[:16]
        out_dir = _build_root() / f"torch_manual_bp_fused_{key}"
        lib = out_dir / _LIB_NAME
        if lib.exists():
            return lib
        out_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=out_dir)
        os.close(fd)
        cmd = [cxx, *flags, "-o", tmp, str(_SOURCE)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode == 0:
            os.replace(tmp, lib)  # atomic: a concurrent builder sees all or nothing
            return lib
        os.unlink(tmp)
        last = f"{' '.join(cmd)}\n{proc.stderr.strip()[-2000:]}"
    raise FusedUnavailableError(f"building the fused optimizer kernel failed:\n{last}")


def load() -> ctypes.CDLL:
    """The kernel library, built on first call (a couple of seconds) and cached on disk."""
    global _lib, _error
    with _lock:
        if _lib is not None:
            return _lib
        if _error is not None:
            raise _error
        try:
            cxx = _compiler()
            if cxx is None:
                raise FusedUnavailableError(
                    "fused=True needs a C++ compiler to build its kernel on first use, and "
                    "none was found (set $CXX, or install g++/clang++); use foreach=True or "
                    "the default fused=None instead"
                )
            lib = ctypes.CDLL(str(_build(cxx)))
            if lib.tmbp_abi_version() != 1:
                raise FusedUnavailableError("the cached fused kernel has an unexpected ABI")
        except FusedUnavailableError as e:
            _error = e
            raise
        except OSError as e:  # a library that does not load
            _error = FusedUnavailableError(f"loading the fused optimizer kernel failed: {e}")
            raise _error from e
        _declare(lib)
        _lib = lib
        return lib


def available() -> bool:
    """Whether ``fused=True`` works here (builds the kernel if needed; never raises)."""
    try:
        load()
    except FusedUnavailableError:
        return False
    return True


def _declare(lib: ctypes.CDLL) -> None:
    p, i64, d, i = ctypes.c_void_p, ctypes.c_int64, ctypes.c_double, ctypes.c_int
    pp, pi64, pd = ctypes.POINTER(p), ctypes.POINTER(i64), ctypes.POINTER(d)
    lib.tmbp_adam.argtypes = [i, i, i, i, i64, pp, pp, pp, pp, pp, pi64, pd, pd, d, d, d, d, i]
    lib.tmbp_adam.restype = i
    lib.tmbp_momentum.argtypes = [i, i, i, i64, pp, pp, pp, pi64, pd, d, d, i]
    lib.tmbp_momentum.restype = i
    lib.tmbp_has_half.restype = i


# Below this many elements in a call, one thread: waking a second costs more than it saves
# (and on a busy machine the join can wait a whole time slice). PyTorch's grain is 32768.
_PARALLEL_MIN_NUMEL = 1 << 16


def _threads(numels: list[int]) -> int:
    return torch.get_num_threads() if sum(numels) >= _PARALLEL_MIN_NUMEL else 1


def _ptrs(ts: list[Tensor]):
    return (ctypes.c_void_p * len(ts))(*[t.data_ptr() for t in ts])


def _doubles(xs: list[float]):
    return (ctypes.c_double * len(xs))(*xs)


def _dtype_code(lib: ctypes.CDLL, t: Tensor) -> int:
    code = _DTYPES.get(t.dtype)
    if code is None or (code == 3 and not lib.tmbp_has_half()):
        raise TypeError(f"fused=True does not support {t.dtype} parameters")
    return code


def check_fusable(t: Tensor) -> None:
    if t.device.type != "cpu":
        raise RuntimeError(
            f"fused=True runs on CPU tensors only (this package has no {t.device.type} "
            f"kernel); on {t.device.type} use foreach=True, the default there"
        )
    real = t.dtype.to_real() if t.dtype.is_complex else t.dtype  # complex: view_as_real
    if real not in _DTYPES:
        raise TypeError(f"fused=True does not support {t.dtype} parameters")


def fusable(*ts: Tensor) -> bool:
    """Contiguous (then the kernel can treat each tensor as a flat array)."""
    return all(t.is_contiguous() for t in ts)


@torch.compiler.disable
def adam_fused_(
    w: list[Tensor],
    g: list[Tensor],
    m: list[Tensor],
    s: list[Tensor],
    s_max: list[Tensor] | None,
    *,
    alpha_t: list[float],
    eps_t: list[float],
    beta1: float,
    beta2: float,
    weight_decay: float,
    decay: float,
    decoupled_weight_decay: bool,
    maximize: bool,
) -> None:
    """Adam on lists of contiguous CPU tensors of one dtype, one pass each (see the .cpp)."""
    lib = load()
    mode = 0 if weight_decay == 0 else (2 if decoupled_weight_decay else 1)
    numels = [t.numel() for t in w]
    rc = lib.tmbp_adam(
        _dtype_code(lib, w[0]),
        int(maximize),
        mode,
        int(s_max is not None),
        len(w),
        _ptrs(w),
        _ptrs(g),
        _ptrs(m),
        _ptrs(s),
        _ptrs(s_max if s_max is not None else s),
        (ctypes.c_int64 * len(w))(*numels),
        _doubles(alpha_t),
        _doubles(eps_t),
        beta1,
        beta2,
        weight_decay,
        decay,
        _threads(numels),
    )
    if rc != 0:
        raise RuntimeError(f"fused Adam kernel failed for dtype {w[0].dtype}")


@torch.compiler.disable
def momentum_fused_(
    w: list[Tensor],
    g: list[Tensor],
    m: list[Tensor],
    *,
    step: list[float],
    beta: float,
    weight_decay: float,
    maximize: bool,
) -> None:
    """Momentum on lists of contiguous CPU tensors of one dtype, one pass each."""
    lib = load()
    numels = [t.numel() for t in w]
    rc = lib.tmbp_momentum(
        _dtype_code(lib, w[0]),
        int(maximize),
        int(weight_decay != 0),
        len(w),
        _ptrs(w),
        _ptrs(g),
        _ptrs(m),
        (ctypes.c_int64 * len(w))(*numels),
        _doubles(step),
        beta,
        weight_decay,
        _threads(numels),
    )
    if rc != 0:
        raise RuntimeError(f"fused Momentum kernel failed for dtype {w[0].dtype}")
