"""What both optimizers share: choosing a code path, grouping tensors, hyperparameter checks."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torch.optim import Optimizer

from .._validation import check_in_range, check_nonnegative

# foreach=None: the multi-tensor path where it measured faster than the per-tensor loop.
# CUDA: one launch per op for the whole list instead of one per tensor (PyTorch's default too).
# CPU: PyTorch's foreach kernels run a C++ loop over the per-tensor kernels, so both paths move
# the same bytes; the multi-tensor one saves the Python overhead of ~8 calls per tensor, which
# wins for many small tensors. But it allocates the temporaries (√s, ...) for the whole list at
# once, and tens of MB allocated and freed every step go back to the OS and fault in again:
# on 100 x 50k float32 it measured 1.8x slower than the loop. So on CPU the multi-tensor path
# works through the list in batches of at most CPU_BATCH_NUMEL elements (a tensor larger than
# that is a batch of its own); then it is never slower than the loop (benchmarks/bench_optim.py,
# docs/optim.md), and it is the default on every device. (PyTorch defaults to its loop on CPU.)
_FOREACH_DEVICES = ("cpu", "cuda", "xpu", "mps")
CPU_BATCH_NUMEL = 1 << 18


def default_foreach(params: Sequence[Tensor]) -> bool:
    """The path ``foreach=None`` picks: multi-tensor unless some tensor's type or device has
    no ``torch._foreach_*`` kernels (a Tensor subclass, an unusual backend)."""
    if torch.jit.is_scripting():
        return False
    return all(
        type(p) in (Tensor, torch.nn.Parameter) and p.device.type in _FOREACH_DEVICES
        for p in params
    )


def is_compiling() -> bool:
    return torch.compiler.is_compiling()


def group_by_device_and_dtype(tensorlists: list[list]) -> list[list[list]]:
    """Split parallel tensor lists into same-(device, dtype) sublists, the unit that one
    ``torch._foreach_*`` kernel accepts."""
    grouped = Optimizer._group_tensors_by_device_and_dtype(tensorlists)
    return [lists for lists, _ in grouped.values()]


def batches(tensors: list[Tensor]) -> list[list[int]]:
    """Index lists that split one device's multi-tensor work: the whole list on accelerators
    and under torch.compile; on CPU consecutive runs of at most CPU_BATCH_NUMEL elements."""
    whole = [list(range(len(tensors)))]
    if is_compiling() or tensors[0].device.type != "cpu" or len(tensors) == 1:
        return whole
    numels = [t.numel() for t in tensors]
    if sum(numels) <= CPU_BATCH_NUMEL:
        return whole
    out, cur, size = [], [], 0
    for i, n in enumerate(numels):
        if cur and size + n > CPU_BATCH_NUMEL:
            out.append(cur)
            cur, size = [], 0
        cur.append(i)
        size += n
    out.append(cur)
    return out


def increment(steps: list[Tensor]) -> None:
    """t ← t + 1 for a list of step counters of one device."""
    if not is_compiling() and steps[0].is_cpu:
        # A CPU tensor as the scalar takes the fast overload; a Python 1 would be wrapped into a
        # tensor once per counter (PyTorch's optimizers use the same trick).
        torch._foreach_add_(steps, torch.tensor(1.0), alpha=1.0)
    else:
        torch._foreach_add_(steps, 1)


def increment_all(steps: list[Tensor]) -> None:
    """t ← t + 1 for step counters that may live on several devices (capturable)."""
    if all(t.is_cpu for t in steps):
        increment(steps)
    else:
        for t in steps:
            t += 1


def pick(xs: list | None, idx: list[int]) -> list | None:
    return None if xs is None else [xs[i] for i in idx]


def scalar_dtype() -> torch.dtype:
    """The step counter's dtype, as in ``torch.optim``: float64 under a float64 default."""
    return torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32


def check_lr(lr: float | Tensor) -> None:
    if isinstance(lr, Tensor) and lr.numel() != 1:
        raise ValueError(f"Invalid lr: a Tensor lr must have 1 element, got shape {lr.shape}")
    check_nonnegative("lr", lr)


def check_beta(name: str, value: float) -> None:
    check_in_range(name, value, 0.0, 1.0)


def check_flag(name: str, value: object, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if not isinstance(value, bool):
        valid = "True, False or None" if allow_none else "True or False"
        raise ValueError(f"Invalid {name}: {value!r} (expected {valid})")


def check_paths(foreach: bool | None, fused: bool | None) -> None:
    check_flag("foreach", foreach, allow_none=True)
    check_flag("fused", fused, allow_none=True)
    if foreach and fused:
        raise ValueError("foreach=True and fused=True cannot be set together; pick one path")


def sparse_error(name: str, group_index: int, param_index: int) -> RuntimeError:
    return RuntimeError(
        f"{name} does not support sparse gradients (parameter {param_index} of param group "
        f"{group_index} has one); use torch.optim.SparseAdam, or a dense gradient "
        f"(e.g. nn.Embedding(sparse=False))"
    )


def as_real(t: Tensor) -> Tensor:
    """Complex tensors are updated as their real and imaginary parts (PyTorch's convention:
    ``view_as_real``, so |g|² is the sum of the two squared parts coordinate by coordinate)."""
    return torch.view_as_real(t) if torch.is_complex(t) else t


def number(x: float | Tensor) -> float:
    """A Python number from a hyperparameter (a Tensor ``lr`` syncs once per group and step)."""
    return float(x.item()) if isinstance(x, Tensor) else float(x)
