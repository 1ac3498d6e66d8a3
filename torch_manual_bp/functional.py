"""The validated entry points: ``linear``, ``linear_relu``, ``sigmoid_bce``.

Each checks its arguments (clear errors naming shapes, dtypes and devices; never a silent
broadcast), applies autocast's casts itself (as ``torch.nn.functional`` would under
``torch.autocast``), then runs the Function from ``torch_manual_bp.functions`` with autocast
disabled. Doing the casts here, rather than with ``torch.amp.custom_fwd`` on the Function,
keeps the Functions in the ``setup_context`` style that ``torch.func`` needs.
"""

from __future__ import annotations

import torch

from ._validation import (
    check_floating,
    check_reduction,
    check_relu_grad_at_zero,
    check_same_device,
    check_same_dtype,
)
from .functions import LinearFunction, LinearReLUFunction, SigmoidBCEFunction, apply

__all__ = ["linear", "linear_relu", "sigmoid_bce"]


def _autocast_to(dtype_of_op: str, *tensors: torch.Tensor | None) -> tuple:
    """Cast tensors as autocast would for an op in its "lower precision" list (``linear``)
    or its "float32" list (``binary_cross_entropy_with_logits``): floating tensors other
    than float64, which autocast never touches."""
    device_type = next(t for t in tensors if t is not None).device.type
    if not torch.is_autocast_enabled(device_type):
        return tensors
    dtype = torch.get_autocast_dtype(device_type) if dtype_of_op == "lower" else torch.float32
    return tuple(t.to(dtype) if _autocast_eligible(t) else t for t in tensors)


def _autocast_eligible(t: torch.Tensor | None) -> bool:
    return t is not None and t.is_floating_point() and t.dtype != torch.float64


def _linear_args_ok(x: object, weight: object, bias: object) -> bool:
    """The common case, checked in one expression: the layers are called on every step."""
    T = torch.Tensor
    return (
        isinstance(x, T)
        and isinstance(weight, T)
        and x.is_floating_point()
        and x.dtype == weight.dtype
        and weight.dim() == 2
        and x.dim() >= 1
        and x.shape[-1] == weight.shape[1]
        and x.device == weight.device
        and (
            bias is None
            or (
                isinstance(bias, T)
                and bias.dtype == x.dtype
                and bias.shape == (weight.shape[0],)
                and bias.device == x.device
            )
        )
    )


def _check_linear_args(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
    """Raise the error that names what is wrong with the arguments of a linear layer.

    Dtypes are compared later, after autocast's casts (``_check_linear_dtypes``).
    """
    check_floating("input", x)
    check_floating("weight", weight)
    if bias is not None:
        check_floating("bias", bias)
    if weight.dim() != 2:
        raise ValueError(
            f"weight must be 2-D (out_features, in_features), got shape {tuple(weight.shape)}"
        )
    if x.dim() < 1 or x.shape[-1] != weight.shape[1]:
        raise ValueError(
            f"input of shape {tuple(x.shape)} does not match weight of shape "
            f"{tuple(weight.shape)}: expected input (..., {weight.shape[1]})"
        )
    if bias is not None and tuple(bias.shape) != (weight.shape[0],):
        raise ValueError(
            f"bias must have shape ({weight.shape[0]},) to match weight of shape "
            f"{tuple(weight.shape)}, got {tuple(bias.shape)}"
        )
    check_same_device([("input", x), ("weight", weight), ("bias", bias)])


def _apply_linear(function: type[torch.autograd.Function], x, weight, bias, *extra):
    """Validate, apply autocast's casts, then run ``function`` with autocast off."""
    device_type = x.device.type if isinstance(x, torch.Tensor) else "cpu"
    autocast = torch.is_autocast_enabled(device_type)
    if autocast or not _linear_args_ok(x, weight, bias):
        _check_linear_args(x, weight, bias)
        x, weight, bias = _autocast_to("lower", x, weight, bias)
        check_same_dtype([("input", x), ("weight", weight), ("bias", bias)])
    if autocast:
        with torch.autocast(device_type, enabled=False):
            return apply(function, x, weight, bias, *extra)
    return apply(function, x, weight, bias, *extra)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """Z = x Wᵀ + b (the lecture's Z[l] = W[l] A[l-1] + b[l], examples as rows).

    Backward (``LinearFunction``): dW = dZᵀ x, db = Σ over the batch of dZ, dx = dZ W.

    Args:
        x: input A[l-1] of shape (..., in_features).
        weight: W[l] of shape (out_features, in_features), as ``nn.Linear.weight``.
        bias: b[l] of shape (out_features,), or None.

    Example:
        >>> z = linear(torch.randn(8, 3), torch.randn(2, 3), torch.zeros(2))  # (8, 2)
    """
    return _apply_linear(LinearFunction, x, weight, bias)


def linear_relu(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    relu_grad_at_zero: int = 1,
) -> torch.Tensor:
    """A = max(0, x Wᵀ + b): a hidden layer of the lecture's network.

    Backward (``LinearReLUFunction``): dZ = dA .* 1{Z ≥ 0}, then the linear lines.

    Args:
        x, weight, bias: as in ``linear``.
        relu_grad_at_zero: the ReLU derivative at exactly Z = 0. ``1`` is the lecture's
            mask 1{Z ≥ 0}; ``0`` is PyTorch's 1{Z > 0} (``F.relu``). With ``1`` the entries
            where Z < 0 come out as −0.0 (equal to 0, but ``signbit`` is set): the sign of
            zero carries the mask, so the convention costs no memory.

    Example:
        >>> a = linear_relu(torch.randn(8, 3), torch.randn(4, 3), relu_grad_at_zero=0)
    """
    check_relu_grad_at_zero(relu_grad_at_zero)
    return _apply_linear(LinearReLUFunction, x, weight, bias, int(relu_grad_at_zero))


def _check_broadcasts_to(name: str, t: torch.Tensor, shape: torch.Size) -> None:
    try:
        ok = torch.broadcast_shapes(t.shape, shape) == shape
    except RuntimeError:
        ok = False
    if not ok:
        raise ValueError(
            f"{name} of shape {tuple(t.shape)} does not broadcast to the logits' shape "
            f"{tuple(shape)}"
        )


def sigmoid_bce(
    logits: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None = None,
    pos_weight: torch.Tensor | None = None,
    reduction: str = "mean",
) -> torch.Tensor:
    """Binary cross-entropy of ŷ = σ(z) against y, fused with the sigmoid.

        J = (1/N) Σᵢ −yᵢ log ŷᵢ − (1 − yᵢ) log(1 − ŷᵢ),      dJ/dz = (ŷ − y) / N

    computed as (1 − y) z − log σ(z), which is finite for every finite z (the literal
    form takes log 0 once σ(z) rounds to 0 or 1). Arguments mean what they mean in
    ``F.binary_cross_entropy_with_logits``.

    On the 1/m: ``reduction="mean"`` divides by N, the number of ELEMENTS of ``logits``.
    That is the lecture's 1/m when there is one output per example (logits of shape (m,)
    or (m, 1)); with k outputs per example it is 1/(m·k). ``"sum"`` gives the lecture's
    J without the 1/m (Appendix 2's proof), ``"none"`` the per-element losses.

    Args:
        logits: z, any shape, floating.
        target: y, the same shape and dtype as ``logits``; values in [0, 1] (soft targets
            get a gradient too: dJ/dy = −z).
        weight: rescales each element's loss; broadcasts to ``logits``.
        pos_weight: p, weight of the positive term: −p y log ŷ; broadcasts to ``logits``.
        reduction: "mean" (default), "sum" or "none".

    Example:
        >>> J = sigmoid_bce(torch.randn(8), torch.randint(0, 2, (8,)).float())
    """
    device_type = logits.device.type if isinstance(logits, torch.Tensor) else "cpu"
    autocast = torch.is_autocast_enabled(device_type)
    if autocast or not _bce_args_ok(logits, target, weight, pos_weight, reduction):
        _check_bce_args(logits, target, weight, pos_weight, reduction)
        logits, target, weight, pos_weight = _autocast_to(
            "float32", logits, target, weight, pos_weight
        )
        check_same_dtype(
            [("logits", logits), ("target", target), ("weight", weight), ("pos_weight", pos_weight)]
        )
    if autocast:
        with torch.autocast(device_type, enabled=False):
            return apply(SigmoidBCEFunction, logits, target, weight, pos_weight, reduction)
    return apply(SigmoidBCEFunction, logits, target, weight, pos_weight, reduction)


def _bce_args_ok(logits, target, weight, pos_weight, reduction) -> bool:
    """The common case (no weights), checked in one expression."""
    return (
        weight is None
        and pos_weight is None
        and reduction in ("mean", "sum", "none")
        and isinstance(logits, torch.Tensor)
        and isinstance(target, torch.Tensor)
        and logits.is_floating_point()
        and target.dtype == logits.dtype
        and target.shape == logits.shape
        and target.device == logits.device
    )


def _check_bce_args(logits, target, weight, pos_weight, reduction) -> None:
    """Raise the error that names what is wrong (dtypes are compared after autocast)."""
    check_reduction(reduction)
    check_floating("logits", logits)
    check_floating("target", target)
    if target.shape != logits.shape:
        raise ValueError(
            f"target shape {tuple(target.shape)} must equal logits shape {tuple(logits.shape)}"
        )
    for name, t in (("weight", weight), ("pos_weight", pos_weight)):
        if t is not None:
            check_floating(name, t)
            _check_broadcasts_to(name, t, logits.shape)
    check_same_device(
        [("logits", logits), ("target", target), ("weight", weight), ("pos_weight", pos_weight)]
    )
