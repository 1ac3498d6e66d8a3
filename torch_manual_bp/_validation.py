"""Shared argument checks, so that every public entry point words its errors the same way.

Each check raises with a message that names the argument, the bad value, and what would be
valid. Configuration errors are ``ValueError``; a tensor of the wrong kind is ``TypeError``
(dtype) or ``ValueError`` (shape, device). The ``not (low <= x)`` form also rejects NaN.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

__all__ = [
    "check_in_range",
    "check_nonnegative",
    "check_relu_grad_at_zero",
    "check_floating",
    "check_same_device",
    "check_same_dtype",
    "check_reduction",
]

_REDUCTIONS = ("none", "mean", "sum")


def _as_float(name: str, value: object) -> float:
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(f"{name} must be a scalar, got a tensor of shape {tuple(value.shape)}")
        return float(value.item())
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a real number, got {value!r}")
    return float(value)


def check_nonnegative(name: str, value: object) -> None:
    """``0 <= value < inf``; NaN and infinities are rejected."""
    v = _as_float(name, value)
    if not (0.0 <= v < math.inf):
        raise ValueError(f"Invalid {name}: {value!r} (expected a finite number >= 0)")


def check_in_range(
    name: str, value: object, low: float, high: float, *, high_inclusive: bool = False
) -> None:
    """``low <= value < high`` (or ``<= high`` with ``high_inclusive``); NaN is rejected."""
    v = _as_float(name, value)
    ok = (low <= v <= high) if high_inclusive else (low <= v < high)
    if not ok:
        bracket = "]" if high_inclusive else ")"
        raise ValueError(f"Invalid {name}: {value!r} (expected a value in [{low}, {high}{bracket})")


def check_relu_grad_at_zero(value: object) -> None:
    """The ReLU mask convention: 1 is the lecture's 1{z >= 0}, 0 is PyTorch's 1{z > 0}."""
    if isinstance(value, bool) or value not in (0, 1):
        raise ValueError(
            f"relu_grad_at_zero must be 1 (the lecture's 1{{z >= 0}}) or 0 "
            f"(PyTorch's 1{{z > 0}}), got {value!r}"
        )


def check_reduction(reduction: str) -> None:
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")


def check_floating(what: str, t: torch.Tensor) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{what} must be a torch.Tensor, got {type(t).__name__}")
    if not t.is_floating_point():
        raise TypeError(
            f"{what} must have a floating dtype (float16, bfloat16, float32, float64), "
            f"got {t.dtype}"
        )


def check_same_device(named: Sequence[tuple[str, torch.Tensor | None]]) -> None:
    present = [(n, t) for n, t in named if t is not None]
    devices = {t.device for _, t in present}
    if len(devices) > 1:
        listing = ", ".join(f"{n} on {t.device}" for n, t in present)
        raise ValueError(f"all tensors must be on one device, got {listing}")


def check_same_dtype(named: Sequence[tuple[str, torch.Tensor | None]]) -> None:
    present = [(n, t) for n, t in named if t is not None]
    dtypes = {t.dtype for _, t in present}
    if len(dtypes) > 1:
        listing = ", ".join(f"{n} is {t.dtype}" for n, t in present)
        raise TypeError(f"all tensors must share one dtype, got {listing}")
