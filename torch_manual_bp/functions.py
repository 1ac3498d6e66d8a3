"""The lecture's backward formulas as ``torch.autograd.Function``s.

Each ``backward`` below IS a formula from the slides (Appendix 2, general m), one line per
gradient, in the lecture's symbols. Nothing here differentiates the forward with autograd.

Notation. The lecture stacks the m examples as COLUMNS; PyTorch stacks them as ROWS. Every
formula holds with the transposes swapped (layer l, A[0] = X):

    lecture (columns)                     this code (rows, any leading batch dims)
    Z[l]       = W[l] A[l-1] + b[l]       Z       = A_prev Wᵀ + b
    dJ/dW[l]   = dJ/dZ[l] · A[l-1]ᵀ       dW      = dZᵀ · A_prev        (batch dims flattened)
    dJ/db[l]   = Σᵢ [dJ/dZ[l]]ᵢ           db      = dZ summed over the batch
    dJ/dA[l-1] = W[l]ᵀ · dJ/dZ[l]         dA_prev = dZ · W
    dJ/dZ[l]   = dJ/dA[l] .* 1{Z[l] ≥ 0}  dZ      = dA .* mask(A)
    dJ/dZ[L]   = Ŷ − Y                    dZ      = σ(Z) − Y   (fused with the loss)

These Functions take already-validated tensors; users call ``torch_manual_bp.functional``,
which checks arguments and applies autocast's casts. All three support double backward
(every backward is made of differentiable torch ops), ``torch.func`` (``setup_context`` and
``generate_vmap_rule``) and ``torch.compile``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

__all__ = ["LinearFunction", "LinearReLUFunction", "SigmoidBCEFunction", "relu_lecture"]


# --------------------------------------------------------------------------------------
# Linear: Z = A_prev Wᵀ + b
# --------------------------------------------------------------------------------------


def _linear_backward(
    dZ: torch.Tensor,
    A_prev: torch.Tensor | None,
    W: torch.Tensor | None,
    needs: tuple[bool, ...],
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """dA_prev, dW, db from dZ: the three linear-layer lines of the slides.

    Shapes: dZ (..., out), A_prev (..., in), W (out, in).
    """
    dA_prev = dW = db = None
    if needs[0]:
        dA_prev = dZ @ W  # dJ/dA[l-1] = W[l]ᵀ dJ/dZ[l]          (..., in)
    if needs[1] or needs[2]:
        dZ_2d = dZ.reshape(-1, dZ.shape[-1])  # batch dims flattened: (m, out)
        if needs[1]:
            dW = dZ_2d.mT @ A_prev.reshape(-1, A_prev.shape[-1])  # dJ/dW = dJ/dZ A[l-1]ᵀ (out, in)
        if needs[2]:
            db = dZ_2d.sum(0)  # dJ/db[l] = Σᵢ [dJ/dZ[l]]ᵢ            (out,)
    return dA_prev, dW, db


class LinearFunction(torch.autograd.Function):
    """Z = A_prev Wᵀ + b, with the lecture's backward.

    Saves A_prev only if dW is needed and W only if dA_prev is needed, as ``nn.Linear`` does.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(A_prev: torch.Tensor, W: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
        return F.linear(A_prev, W, b)  # Z = A_prev Wᵀ + b: the same kernel as nn.Linear

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: torch.Tensor) -> None:
        A_prev, W, _ = inputs
        need_dA_prev, need_dW, _ = ctx.needs_input_grad
        ctx.save_for_backward(A_prev if need_dW else None, W if need_dA_prev else None)

    @staticmethod
    def backward(ctx: Any, dZ: torch.Tensor):
        A_prev, W = ctx.saved_tensors
        return _linear_backward(dZ, A_prev, W, ctx.needs_input_grad)


# --------------------------------------------------------------------------------------
# Linear + ReLU: A = max(0, A_prev Wᵀ + b)
# --------------------------------------------------------------------------------------


def relu_lecture(Z: torch.Tensor) -> torch.Tensor:
    """max(0, Z) that remembers, in the sign of zero, which entries had Z < 0.

    Returns A with A = Z where Z > 0, A = +0.0 where Z = ±0, and A = −0.0 where Z < 0.
    As numbers these equal ``torch.relu(Z)``; ``A.signbit()`` is then exactly 1{Z < 0},
    so the lecture's mask 1{Z ≥ 0} can be read back from the saved output alone, with no
    saved Z and no separate mask (no memory beyond what ``nn.ReLU`` saves).
    Works in place on Z, which must be a fresh tensor. Only float kernels (no bool mask, no
    copysign): on CPU those are many times slower than a vectorised float pass.
    """
    Z.add_(0.0)  # −0.0 + 0.0 = +0.0: a tie at −0 counts as Z ≥ 0
    signed_zero = Z.sign().mul_(0.0)  # −0.0 where Z < 0, +0.0 elsewhere (NaN stays NaN)
    return Z.clamp_min_(signed_zero)  # max(Z, ±0): Z where Z > 0, else the signed zero


def _relu_mask_grad(dA: torch.Tensor, A: torch.Tensor, relu_grad_at_zero: int) -> torch.Tensor:
    """dJ/dZ = dJ/dA .* mask, read from the saved output A.

    relu_grad_at_zero=1: the lecture's 1{Z ≥ 0}  (A from ``relu_lecture``: −0.0 marks Z < 0).
    relu_grad_at_zero=0: PyTorch's   1{Z > 0}   (A from ``torch.relu``).
    Both end in ``threshold_backward(dA, key, 0)`` = dA .* 1{key > 0}, nn.ReLU's own kernel.
    """
    if relu_grad_at_zero == 1:
        A = A.detach()  # the mask is piecewise constant: no gradient flows through it
        A = A.reciprocal().add_(A)  # 1/(+0) = +inf, 1/(−0) = −inf: > 0 exactly where Z ≥ 0
    return torch.ops.aten.threshold_backward(dA, A, 0)


class LinearReLUFunction(torch.autograd.Function):
    """A = max(0, A_prev Wᵀ + b), with the lecture's backward.

    backward: dZ = dA .* 1{Z ≥ 0} (or 1{Z > 0} with ``relu_grad_at_zero=0``), then the
    linear lines. Saves A_prev, W (as ``nn.Linear`` does) and the output A (as ``nn.ReLU``
    does); nothing else.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(
        A_prev: torch.Tensor,
        W: torch.Tensor,
        b: torch.Tensor | None,
        relu_grad_at_zero: int,
    ) -> torch.Tensor:
        Z = F.linear(A_prev, W, b)
        return relu_lecture(Z) if relu_grad_at_zero == 1 else torch.relu_(Z)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: torch.Tensor) -> None:
        A_prev, W, _, relu_grad_at_zero = inputs
        need_dA_prev, need_dW, need_db, _ = ctx.needs_input_grad
        ctx.relu_grad_at_zero = relu_grad_at_zero
        ctx.save_for_backward(
            A_prev if need_dW else None,
            W if need_dA_prev else None,
            output if (need_dA_prev or need_dW or need_db) else None,
        )

    @staticmethod
    def backward(ctx: Any, dA: torch.Tensor):
        A_prev, W, A = ctx.saved_tensors
        dZ = _relu_mask_grad(dA, A, ctx.relu_grad_at_zero)  # dJ/dZ[l] = dJ/dA[l] .* 1{Z[l] ≥ 0}
        return (*_linear_backward(dZ, A_prev, W, ctx.needs_input_grad[:3]), None)


# --------------------------------------------------------------------------------------
# Sigmoid fused with binary cross-entropy
# --------------------------------------------------------------------------------------


def _sigmoid_bce_elementwise(
    Z: torch.Tensor,
    Y: torch.Tensor,
    weight: torch.Tensor | None,
    pos_weight: torch.Tensor | None,
) -> torch.Tensor:
    """J_i = −y log σ(z) − (1 − y) log(1 − σ(z)), in the stable form (1 − y) z − log σ(z).

    (log(1 − σ(z)) = log σ(z) − z.) With ``pos_weight`` p the positive term is scaled:
    J_i = (1 − y) z − (1 + (p − 1) y) log σ(z); with ``weight`` w, J_i is multiplied by w.
    ``logsigmoid`` is finite for every finite z, so this never takes log 0.
    """
    log_Y_hat = F.logsigmoid(Z)  # log σ(z), stable at z = ±1e4
    if pos_weight is None:
        J = (1 - Y) * Z - log_Y_hat
    else:
        J = (1 - Y) * Z - (1 + (pos_weight - 1) * Y) * log_Y_hat
    return J if weight is None else J * weight


def _reduce(J: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "mean":
        return J.mean()
    if reduction == "sum":
        return J.sum()
    return J


def _times_incoming(
    d: torch.Tensor, dJ: torch.Tensor, weight: torch.Tensor | None, N: int, reduction: str
) -> torch.Tensor:
    """Chain an elementwise derivative with the loss's weight w, the incoming gradient dJ,
    and the mean's 1/N (the lecture's 1/m)."""
    if weight is not None:
        d = d * weight
    d = d * dJ
    return d / N if reduction == "mean" else d


class SigmoidBCEFunction(torch.autograd.Function):
    """Binary cross-entropy of Ŷ = σ(Z) against Y, with the lecture's backward dJ/dZ = Ŷ − Y.

    forward(Z, Y, weight, pos_weight, reduction) → J, as
    ``F.binary_cross_entropy_with_logits``. backward:

        dJ/dZ = Ŷ − Y                                      (the lecture, Appendix 1)
              = (1 + (p − 1) Y) Ŷ − p Y                    (with pos_weight p)
        times the weight w, times the incoming gradient, ÷ N for reduction="mean".

    Ŷ = σ(Z) is recomputed from the saved logits rather than cached, so that the backward
    stays differentiable in Z (double backward). Gradients are also given for a soft target
    Y (dJ/dY = −Z − (p − 1) log σ(Z), times w), for ``weight`` and for ``pos_weight``.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(
        Z: torch.Tensor,
        Y: torch.Tensor,
        weight: torch.Tensor | None,
        pos_weight: torch.Tensor | None,
        reduction: str,
    ) -> torch.Tensor:
        return _reduce(_sigmoid_bce_elementwise(Z, Y, weight, pos_weight), reduction)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: torch.Tensor) -> None:
        Z, Y, weight, pos_weight, reduction = inputs
        ctx.reduction = reduction
        ctx.save_for_backward(Z, Y, weight, pos_weight)

    @staticmethod
    def backward(ctx: Any, dJ: torch.Tensor):
        Z, Y, weight, pos_weight = ctx.saved_tensors
        need_dZ, need_dY, need_dw, need_dp, _ = ctx.needs_input_grad
        # Operations in the order of PyTorch's own kernel, so that float16/bfloat16 round alike.
        dZ = dY = dw = dp = None
        if need_dZ:
            Y_hat = torch.sigmoid(Z)  # Ŷ = σ(Z), recomputed: keeps d²J/dZ² right
            if pos_weight is None:
                dZ = Y_hat - Y  # dJ/dZ = Ŷ − Y
            else:
                pY = pos_weight * Y
                dZ = (pY + 1 - Y) * Y_hat - pY  # (1 + (p − 1) Y) Ŷ − p Y
            dZ = _times_incoming(dZ, dJ, weight, Z.numel(), ctx.reduction)
        if need_dY:  # soft target: dJ/dY = −Z − (p − 1) log σ(Z)
            dY = -Z if pos_weight is None else -Z - (pos_weight - 1) * F.logsigmoid(Z)
            dY = _times_incoming(dY, dJ, weight, Z.numel(), ctx.reduction)
        if need_dw:  # dJ/dw = the unweighted elementwise loss
            J = _sigmoid_bce_elementwise(Z, Y, None, pos_weight)
            dw = _times_incoming(J, dJ, None, Z.numel(), ctx.reduction).sum_to_size(weight.shape)
        if need_dp:  # dJ/dp = −Y log σ(Z)
            dp = _times_incoming(-Y * F.logsigmoid(Z), dJ, weight, Z.numel(), ctx.reduction)
            dp = dp.sum_to_size(pos_weight.shape)
        return dZ, dY, dw, dp, None


# --------------------------------------------------------------------------------------
# Calling them: the same Functions, without Function.apply's per-call signature binding
# --------------------------------------------------------------------------------------


def _classic_twin(function: type[torch.autograd.Function]) -> type[torch.autograd.Function]:
    """The same forward, context and backward as ``function``, in the classic
    ``forward(ctx, ...)`` style.

    ``Function.apply`` re-binds the arguments with ``inspect.signature`` on every call of a
    ``setup_context``-style Function (tens of µs: more than a small layer's kernels). The
    classic style skips that but is unusable under ``torch.func`` transforms, so
    ``apply`` below picks it only outside transforms and outside ``torch.compile``.
    """

    def forward(ctx: Any, *args: Any) -> torch.Tensor:
        output = function.forward(*args)
        function.setup_context(ctx, args, output)
        return output

    def backward(ctx: Any, *grads: torch.Tensor):
        return function.backward(ctx, *grads)  # looked up per call: follows a patched Function

    return type(
        function.__name__,
        (torch.autograd.Function,),
        {"forward": staticmethod(forward), "backward": staticmethod(backward)},
    )


_CLASSIC = {f: _classic_twin(f) for f in (LinearFunction, LinearReLUFunction, SigmoidBCEFunction)}


def _transforms_active() -> bool:
    active = getattr(torch._C, "_are_functorch_transforms_active", None)
    return True if active is None else active()


def apply(function: type[torch.autograd.Function], *args: Any) -> torch.Tensor:
    """``function.apply(*args)``: the classic-style twin in plain eager mode (faster), the
    ``setup_context`` Function itself under ``torch.func`` transforms and ``torch.compile``."""
    if torch.compiler.is_compiling() or _transforms_active():
        return function.apply(*args)
    return _CLASSIC[function].apply(*args)
