"""The lecture's update rules as small pure functions of tensors, in the lecture's symbols.

No optimizer object and no state dict here: each function takes the weights ``w``, the
gradient ``g`` and the running averages ``m`` (and ``s``) and updates them in place, the way
``torch.optim``'s functional API does. The optimizers in :mod:`.momentum` and :mod:`.adam`
gather tensors and call these.

Symbols (shared/lecture.md)::

    g = ∇J(w(t))                            the gradient (−∇J with maximize=True)
    Momentum:  m(t) ← β m(t−1) + (1 − β)(−g)
               w(t+1) ← w(t) + α m(t)          or + α m̂(t), m̂ = m / (1 − βᵗ)   (slide 2)
    Adam:      m(t) ← β₁ m(t−1) − (1 − β₁) g
               s(t) ← β₂ s(t−1) + (1 − β₂) g²
               w(t+1) ← w(t) + α m̂(t) / (√ŝ(t) + ε),  m̂ = m/(1 − β₁ᵗ), ŝ = s/(1 − β₂ᵗ)

``m`` is the running average of the NEGATIVE gradient and is added; PyTorch keeps the average
of the gradient and subtracts it. Hence ``m == -exp_avg`` (Adam) and
``m == -(1 − β) * momentum_buffer`` (SGD with ``lr = α(1 − β)``, ``momentum = β``).

Two helpers give the step a logger or parity tool wants to show, from an optimizer's state:
:func:`adam_step_direction` (m̂/(√ŝ + ε), so that the update is ``α *`` it) and
:func:`momentum_step_direction` (m or m̂).

Scalars: ``t``, ``alpha``, ``beta*`` are Python numbers on the ordinary (eager) path. They may
be 0-dim tensors (``capturable=True`` or under ``torch.compile``); the update then does its
scalar arithmetic on tensors and never synchronises with the host.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = [
    "adam_step_direction",
    "adam_update_",
    "adam_update_foreach_",
    "momentum_step_direction",
    "momentum_update_",
    "momentum_update_foreach_",
]

Scalar = float | Tensor


def _is_tensor(*xs: object) -> bool:
    return any(isinstance(x, Tensor) for x in xs)


# ---------------------------------------------------------------------------------------------
# Momentum
# ---------------------------------------------------------------------------------------------


def momentum_update_(
    w: Tensor,
    g: Tensor,
    m: Tensor,
    *,
    t: Scalar,
    alpha: Scalar,
    beta: float,
    weight_decay: float = 0.0,
    maximize: bool = False,
    bias_correction: bool = False,
) -> None:
    """One Momentum step on one tensor: updates ``m`` and ``w`` in place, never ``g``.

    ``m(t) ← β m(t−1) + (1 − β)(−g)`` then ``w ← w + α m`` (slide 1), or ``w ← w + α m̂``
    with ``m̂ = m / (1 − βᵗ)`` when ``bias_correction`` (slide 2). ``weight_decay`` λ adds
    λw to g (an L2 penalty λ/2·|w|², like ``torch.optim.SGD``).

    PyTorch: identical to ``SGD(lr=α(1 − β), momentum=β, dampening=0)`` with
    ``m == -(1 − β) * momentum_buffer``; slide 2 to that SGD under a ``LambdaLR`` factor
    ``1/(1 − βᵗ)``.

    Args:
        w, g, m: weights, gradient ∇J(w), the running average (same shape).
        t: this step's number, from 1 (only used with ``bias_correction``).
        alpha: α, the learning rate. beta: β, ``momentum``.
    """
    if maximize:
        g = -g  # climb J: the same rule applied to −J
    if weight_decay != 0:
        g = g.add(w, alpha=weight_decay)
    m.mul_(beta).sub_(g, alpha=1 - beta)  # m ← β m + (1 − β)(−g)
    if isinstance(t, Tensor):
        t = _opmath(t, w)
    step = alpha / (1 - beta**t) if bias_correction else alpha  # α m̂ = α m / (1 − βᵗ)
    if isinstance(step, Tensor):
        w.addcmul_(m, step)  # w ← w + α m̂, α as a 0-dim tensor (no host sync)
    else:
        w.add_(m, alpha=step)  # w ← w + α m̂


def _foreach_gradient(
    g: list[Tensor], w: list[Tensor], weight_decay: float, maximize: bool
) -> list[Tensor]:
    """The gradient the rules use: g (−g with ``maximize``) plus the L2 term λw.

    Returns ``g`` itself when nothing changes, else new tensors: ``.grad`` is never modified.
    """
    if maximize:
        g = torch._foreach_neg(g)  # climb J: the same rule applied to −J
    if weight_decay != 0:
        if maximize:  # g is already our own copy
            torch._foreach_add_(g, w, alpha=weight_decay)
        else:
            g = torch._foreach_add(g, w, alpha=weight_decay)
    return g


def momentum_update_foreach_(
    w: list[Tensor],
    g: list[Tensor],
    m: list[Tensor],
    *,
    t: list[Scalar],
    alpha: Scalar,
    beta: float,
    weight_decay: float = 0.0,
    maximize: bool = False,
    bias_correction: bool = False,
) -> None:
    """:func:`momentum_update_` on lists of tensors of one device and dtype, with
    ``torch._foreach_*`` kernels (a few launches for the whole list). ``t`` per tensor."""
    g = _foreach_gradient(g, w, weight_decay, maximize)
    torch._foreach_mul_(m, beta)
    torch._foreach_add_(m, g, alpha=-(1 - beta))  # m ← β m + (1 − β)(−g)
    if _is_tensor(alpha, *t):
        if bias_correction:  # α / (1 − βᵗ) per tensor, on tensors
            c = torch._foreach_pow(beta, [_opmath(ti, w[0]) for ti in t])
            torch._foreach_sub_(c, 1)
            torch._foreach_neg_(c)  # 1 − βᵗ
            torch._foreach_reciprocal_(c)
            torch._foreach_mul_(c, alpha)
            step = c
        else:
            step = [torch.as_tensor(alpha)] * len(w)
        torch._foreach_addcmul_(w, m, step)  # w ← w + α m̂
    elif bias_correction and len(set(t)) > 1:  # tensors at different steps (a layer unfrozen late)
        torch._foreach_add_(w, torch._foreach_mul(m, [alpha / (1 - beta**ti) for ti in t]))
    else:
        step = alpha / (1 - beta ** t[0]) if bias_correction else alpha
        torch._foreach_add_(w, m, alpha=step)  # w ← w + α m̂


def momentum_step_direction(
    m: Tensor, step: int | float | Tensor, momentum: float, bias_correction: bool = False
) -> Tensor:
    """The direction Momentum adds to ``w`` (times α): ``m``, or ``m̂ = m / (1 − βᵗ)``.

    ``step`` is the optimizer state's ``step`` (t, counted from 1); ``momentum`` is β. Pure:
    returns a new tensor.
    """
    if not bias_correction:
        return m.clone()
    return m / (1 - momentum ** _as_number(step))


# ---------------------------------------------------------------------------------------------
# Adam
# ---------------------------------------------------------------------------------------------


def adam_update_(
    w: Tensor,
    g: Tensor,
    m: Tensor,
    s: Tensor,
    s_max: Tensor | None,
    *,
    t: Scalar,
    alpha: Scalar,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float = 0.0,
    decoupled_weight_decay: bool = False,
    maximize: bool = False,
) -> None:
    """One Adam step on one tensor: updates ``m``, ``s`` (``s_max``) and ``w`` in place.

    ``m ← β₁ m − (1 − β₁) g``, ``s ← β₂ s + (1 − β₂) g²``, ``w ← w + α m̂/(√ŝ + ε)`` with
    ``m̂ = m/(1 − β₁ᵗ)``, ``ŝ = s/(1 − β₂ᵗ)`` (``s_max/(1 − β₂ᵗ)`` for AMSGrad, where
    ``s_max ← max(s_max, s)``). ``weight_decay`` λ: adds λw to g (L2, ``torch.optim.Adam``),
    or with ``decoupled_weight_decay`` scales ``w ← w(1 − αλ)`` first (``torch.optim.AdamW``).

    The last line is evaluated in Kingma & Ba's equivalent form
    ``w + α_t m/(√s + ε_t)`` with ``α_t = α√(1 − β₂ᵗ)/(1 − β₁ᵗ)`` and ``ε_t = ε√(1 − β₂ᵗ)``:
    the same number in exact arithmetic, one pass over the tensor fewer. With ``eps == 0``
    (the slide's literal form) coordinates where ŝ = 0 get a zero update instead of 0/0.

    PyTorch: ``torch.optim.Adam`` with the same arguments, ``m == -exp_avg``,
    ``s == exp_avg_sq``, ``s_max == max_exp_avg_sq``.

    Args:
        w, g, m, s: weights, gradient, first and second running averages (same shape).
        s_max: AMSGrad's running maximum of s, or None.
        t: this step's number, from 1. alpha: α. beta1, beta2: β₁, β₂. eps: ε.
    """
    if maximize:
        g = -g
    if weight_decay != 0:
        if decoupled_weight_decay:
            w.mul_(1 - alpha * weight_decay)  # AdamW: decay outside m and s
        else:
            g = g.add(w, alpha=weight_decay)  # L2 penalty λ/2·|w|² folded into g
    m.mul_(beta1).sub_(g, alpha=1 - beta1)  # m ← β₁ m − (1 − β₁) g
    s.mul_(beta2).addcmul_(g, g, value=1 - beta2)  # s ← β₂ s + (1 − β₂) g²
    if s_max is not None:
        torch.maximum(s_max, s, out=s_max)  # AMSGrad: ŝ from the running maximum
        s = s_max
    if isinstance(t, Tensor):
        t = _opmath(t, w)
    alpha_t, eps_t = _adam_step_scalars(t, alpha, beta1, beta2, eps)
    denom = s.sqrt().add_(eps_t)  # √s + ε_t   (√ŝ + ε = (√s + ε_t)/√(1 − β₂ᵗ))
    if eps == 0:
        denom.masked_fill_(denom == 0, math.inf)  # ŝ = 0: m/∞ = 0, a zero update, not 0/0
    if isinstance(alpha_t, Tensor):
        w.addcdiv_(m, denom.div_(alpha_t))  # w ← w + m / ((√s + ε_t)/α_t), no host sync
    else:
        w.addcdiv_(m, denom, value=alpha_t)  # w ← w + α_t m/(√s + ε_t) = w + α m̂/(√ŝ + ε)


def adam_update_foreach_(
    w: list[Tensor],
    g: list[Tensor],
    m: list[Tensor],
    s: list[Tensor],
    s_max: list[Tensor] | None,
    *,
    t: list[Scalar],
    alpha: Scalar,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float = 0.0,
    decoupled_weight_decay: bool = False,
    maximize: bool = False,
) -> None:
    """:func:`adam_update_` on lists of tensors of one device and dtype, with
    ``torch._foreach_*`` kernels (a few launches for the whole list). ``t`` per tensor."""
    if decoupled_weight_decay and weight_decay != 0:
        torch._foreach_mul_(w, 1 - alpha * weight_decay)  # AdamW: decay outside m and s
    g = _foreach_gradient(g, w, 0.0 if decoupled_weight_decay else weight_decay, maximize)
    torch._foreach_mul_(m, beta1)
    torch._foreach_add_(m, g, alpha=-(1 - beta1))  # m ← β₁ m − (1 − β₁) g
    torch._foreach_mul_(s, beta2)
    torch._foreach_addcmul_(s, g, g, value=1 - beta2)  # s ← β₂ s + (1 − β₂) g²
    if s_max is not None:
        torch._foreach_maximum_(s_max, s)
        s = s_max
    denom = torch._foreach_sqrt(s)
    if _is_tensor(alpha, *t):
        steps = [_opmath(ti, w[0]) for ti in t]
        c1 = torch._foreach_pow(beta1, steps)
        torch._foreach_sub_(c1, 1)
        torch._foreach_neg_(c1)  # 1 − β₁ᵗ
        c2 = torch._foreach_pow(beta2, steps)
        torch._foreach_sub_(c2, 1)
        torch._foreach_neg_(c2)
        torch._foreach_sqrt_(c2)  # √(1 − β₂ᵗ)
        torch._foreach_add_(denom, torch._foreach_mul(c2, eps))  # √s + ε_t
        if eps == 0:
            for d in denom:
                d.masked_fill_(d == 0, math.inf)
        alpha_t = torch._foreach_div(torch._foreach_mul(c2, alpha), c1)
        torch._foreach_div_(denom, alpha_t)
        torch._foreach_addcdiv_(w, m, denom)
    else:
        scalars = [_adam_step_scalars(ti, alpha, beta1, beta2, eps) for ti in t]
        torch._foreach_add_(denom, [eps_t for _, eps_t in scalars])
        if eps == 0:
            for d in denom:
                d.masked_fill_(d == 0, math.inf)
        torch._foreach_addcdiv_(w, m, denom, [alpha_t for alpha_t, _ in scalars])


def _adam_step_scalars(
    t: Scalar, alpha: Scalar, beta1: float, beta2: float, eps: float
) -> tuple[Scalar, Scalar]:
    """``(α_t, ε_t) = (α√(1 − β₂ᵗ)/(1 − β₁ᵗ), ε√(1 − β₂ᵗ))``, numbers or 0-dim tensors."""
    c1 = 1 - beta1**t  # 1 − β₁ᵗ, m̂ = m / c1
    c2 = (1 - beta2**t) ** 0.5  # √(1 − β₂ᵗ), √ŝ = √s / c2
    return alpha * c2 / c1, eps * c2


def adam_step_direction(
    m: Tensor,
    s: Tensor,
    step: int | float | Tensor,
    betas: tuple[float, float],
    eps: float,
) -> Tensor:
    """The direction Adam adds to ``w`` (times α): ``m̂ / (√ŝ + ε)``. Pure, a new tensor.

    From an :class:`~torch_manual_bp.optim.Adam` state: ``adam_step_direction(st["m"],
    st["s_max"] if amsgrad else st["s"], st["step"], group["betas"], group["eps"])``; the
    update of that step was ``group["lr"] *`` this (plus any decoupled weight decay).
    Coordinates with ŝ = 0 and ``eps == 0`` give 0, not NaN.

    Example:
        >>> st = opt.state[p]; g = opt.param_groups[0]
        >>> d = adam_step_direction(st["m"], st["s"], st["step"], g["betas"], g["eps"])
    """
    beta1, beta2 = betas
    t = _as_number(step)
    m_hat = m / (1 - beta1**t)  # m̂ = m / (1 − β₁ᵗ)
    s_hat = s / (1 - beta2**t)  # ŝ = s / (1 − β₂ᵗ)
    denom = s_hat.sqrt().add_(eps)  # √ŝ + ε
    if eps == 0:
        denom.masked_fill_(denom == 0, math.inf)
    return m_hat / denom


def _opmath(t: Scalar, like: Tensor) -> Tensor:
    """The step count as a 0-dim tensor in the precision of the update arithmetic (float64 for
    float64 weights, else float32), so bias corrections on tensors lose nothing to the count's
    float32 storage."""
    dtype = torch.float64 if like.dtype == torch.float64 else torch.float32
    return torch.as_tensor(t).to(dtype)


def _as_number(x: int | float | Tensor) -> float:
    return float(x.item()) if isinstance(x, Tensor) else float(x)
