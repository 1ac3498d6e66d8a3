"""What both optimizers share: choosing a code path, grouping tensors, hyperparameter checks,
and the ``Optimizer`` scaffolding (per-group checks, loading checkpoints)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor
from torch.optim import Optimizer

from .._validation import check_in_range, check_nonnegative
from . import _fused

# foreach=None: the multi-tensor path, on every device (PyTorch defaults to its loop on CPU).
# CUDA: one launch per op for the whole list instead of one per tensor (PyTorch's default too).
# CPU: PyTorch's foreach kernels run a C++ loop over the per-tensor kernels, so both paths move
# the same bytes; the multi-tensor one saves the Python overhead of ~8 calls per tensor, which
# wins for many small tensors. But it allocates the temporaries (√s, ...) for the whole list
# at once, and tens of MB allocated and freed every step go back to the OS and fault in again:
# unbatched, 100 x 50k float32 took 1.8x the loop's time. So on CPU it works through the list
# in batches of at most CPU_BATCH_NUMEL elements (a larger tensor is a batch of its own).
# Measured then (benchmarks/bench_optim.py, table in docs/optim.md; 2 threads, a shared 2-vCPU
# VM): 0.52-0.62x the loop's time for 200 x 1k, but for larger tensors a tie or a small loss:
# Adam 1.13x at 50 x 20k and 1.07x at 20 x 500k, Momentum 0.65x and 1.10x (the 1-thread run:
# 0.92-1.03x for these rows). It is the default for the small-tensor win; foreach=False picks
# the loop.
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


# How to run, not what to compute: a loaded checkpoint does not change them (see load_state_dict).
PATH_FLAGS = ("foreach", "fused", "capturable")

# Another optimizer's per-parameter state, and how it maps onto the lecture's.
_FOREIGN_STATE = {
    "exp_avg": "m = -exp_avg",
    "exp_avg_sq": "s = exp_avg_sq",
    "max_exp_avg_sq": "s_max = max_exp_avg_sq",
    "momentum_buffer": "m = -(1 - momentum) * momentum_buffer, lr = SGD's lr / (1 - momentum)",
}


def new_step(p: Tensor, group: dict[str, Any], value: float = 0.0) -> Tensor:
    """A step counter t: on the host (``.item()`` is then free), on p's device if capturable."""
    if group.get("capturable", False):
        return torch.tensor(value, dtype=torch.float32, device=p.device)
    return torch.tensor(value, dtype=scalar_dtype())


def check_state_keys(name: str, state_dict: dict[str, Any], keys: tuple[str, ...]) -> None:
    """Every saved per-parameter state has this optimizer's ``keys``; else (a torch.optim
    checkpoint: ``exp_avg``, ``momentum_buffer``) a ValueError, not a KeyError at step()."""
    for pid, st in state_dict.get("state", {}).items():
        if not isinstance(st, dict) or not st or all(k in st for k in keys):
            continue
        hints = [_FOREIGN_STATE[k] for k in st if k in _FOREIGN_STATE]
        how = f"; to convert torch.optim's state: {'; '.join(hints)}" if hints else ""
        raise ValueError(
            f"{name}.load_state_dict: the state of parameter {pid} has keys {sorted(st)}, "
            f"but {name} keeps {list(keys)}: not a {name} state_dict{how}"
        )


class LectureOptimizer(Optimizer):
    """The ``Optimizer`` scaffolding both optimizers share. A subclass sets ``STATE_KEYS``
    (its per-parameter state), ``OLD_DEFAULTS`` (option keys an older state_dict may lack,
    with the value that reproduces the old behaviour) and ``check_options(options)``, the one
    check of a full set of hyperparameters, used for the constructor's defaults and for every
    param group."""

    STATE_KEYS: ClassVar[tuple[str, ...]] = ()
    OLD_DEFAULTS: ClassVar[dict[str, Any]] = {}

    @staticmethod
    def check_options(options: dict[str, Any]) -> None:
        raise NotImplementedError

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """``Optimizer.add_param_group`` (the constructor calls it for every group), after
        checking the group's hyperparameters with the defaults filled in."""
        if isinstance(param_group, dict):
            options = {**self.defaults, **param_group}
            options.pop("params", None)
            try:
                self.check_options(options)
            except ValueError as e:
                raise ValueError(f"{e} in param group {len(self.param_groups)}") from None
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        if group["fused"]:
            for p in group["params"]:
                _fused.check_fusable(p)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """``Optimizer.load_state_dict``, except that each group keeps its own
        ``foreach``/``fused``/``capturable`` (how to run: a checkpoint moves between paths), and
        a state_dict of another optimizer is a ValueError."""
        name = type(self).__name__
        check_state_keys(name, state_dict, self.STATE_KEYS)
        saved = list(state_dict["param_groups"])
        own = [{k: g[k] for k in PATH_FLAGS if k in g} for g in self.param_groups]
        groups = [{**s, **o} for s, o in zip(saved, own, strict=False)] + saved[len(own) :]
        super().load_state_dict({**state_dict, "param_groups": groups})

    def __setstate__(self, state: dict[str, Any]) -> None:
        # A state_dict or pickle from an older version: fill in the option keys it lacks, and
        # turn a Python-number step into a tensor.
        super().__setstate__(state)
        for group in self.param_groups:
            for k, v in self.OLD_DEFAULTS.items():
                group.setdefault(k, v)
            for p in group["params"]:
                st = self.state.get(p, {})
                if "step" in st and not torch.is_tensor(st["step"]):
                    st["step"] = new_step(p, group, float(st["step"]))
