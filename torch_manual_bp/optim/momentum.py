"""The lecture's Momentum (slides 1 and 2) as a ``torch.optim.Optimizer``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import torch
from torch import Tensor
from torch.optim.optimizer import ParamsT

from . import _common as c
from . import _fused
from .rules import momentum_update_, momentum_update_foreach_

__all__ = ["Momentum", "momentum"]


class Momentum(c.LectureOptimizer):
    r"""Momentum as the lecture writes it: an average of the negative gradient, added.

    Update rule, per parameter tensor w with gradient g = ∇J(w(t)), t = 1, 2, ...::

        g    ← g + λ w                        (weight_decay λ > 0: an L2 penalty λ/2·|w|²)
        m(t) ← β m(t−1) + (1 − β)(−g)          m(0) = 0
        w    ← w + α m(t)                      (slide 1, bias_correction=False)
        w    ← w + α m̂(t),  m̂ = m/(1 − βᵗ)      (slide 2, bias_correction=True)

    with α = ``lr`` and β = ``momentum``. ``maximize=True`` uses −g (climbs J).

    PyTorch equivalence (exact, tested at every step in float64): the trajectory equals
    ``torch.optim.SGD(lr=α(1 − β), momentum=β, dampening=0, weight_decay=λ)``, because
    PyTorch's buffer is b ← β b + g with b(1) = g, so m(t) = −(1 − β) b(t). With
    ``bias_correction=True`` it equals that SGD under
    ``LambdaLR(lambda e: 1 / (1 - β ** (e + 1)))`` (the scheduler's epoch e is t − 1 during
    step t). ``SGD(momentum=β, dampening=β)`` does NOT match: its first step is undamped.

    State per parameter: ``step`` (a 0-dim float tensor, t) and ``m`` (the lecture's m,
    ``== -(1 - β) * momentum_buffer`` of that SGD). Param-group keys: ``lr``, ``momentum``
    (so ``OneCycleLR(cycle_momentum=True)`` cycles β), ``bias_correction``, ``weight_decay``,
    ``maximize``, ``foreach``.

    Args:
        params: parameters or param-group dicts.
        lr: α, the learning rate (default 1e-2; a float or a 1-element Tensor).
        momentum: β in [0, 1) (default 0.9, the lecture's typical value). β = 0 is plain
            gradient descent.
        bias_correction: use m̂ = m/(1 − βᵗ) (slide 2) instead of m (slide 1).
        weight_decay: λ ≥ 0, added as λw to the gradient.
        maximize: maximize J instead of minimizing it.
        foreach: True: the multi-tensor ``torch._foreach_*`` path; False: the per-tensor
            loop; None: multi-tensor (faster for small tensors, a tie or up to ~1.1x slower
            for large ones on CPU; docs/optim.md).
        fused: True: one pass over each tensor in a C++ kernel built on first use (CPU,
            float32/float64/bfloat16/float16; needs a C++ compiler, else a clear error).
            None (default) and False: not used.

    Example:
        >>> opt = Momentum(model.parameters(), lr=0.1, momentum=0.9)
        >>> loss = loss_fn(model(x), y); opt.zero_grad(); loss.backward(); opt.step()
    """

    STATE_KEYS = ("step", "m")
    # what a state_dict saved before an option existed means
    OLD_DEFAULTS: ClassVar[dict[str, Any]] = {
        "bias_correction": False,
        "weight_decay": 0.0,
        "maximize": False,
        "foreach": None,
        "fused": None,
    }

    def __init__(
        self,
        params: ParamsT,
        lr: float | Tensor = 1e-2,
        momentum: float = 0.9,
        bias_correction: bool = False,
        weight_decay: float = 0.0,
        maximize: bool = False,
        foreach: bool | None = None,
        fused: bool | None = None,
    ) -> None:
        defaults = {
            "lr": lr,
            "momentum": momentum,
            "bias_correction": bias_correction,
            "weight_decay": weight_decay,
            "maximize": maximize,
            "foreach": foreach,
            "fused": fused,
        }
        self.check_options(defaults)
        super().__init__(params, defaults)

    @staticmethod
    def check_options(options: dict[str, Any]) -> None:
        """ValueError naming the first invalid hyperparameter of a group (or the defaults)."""
        c.check_lr(options["lr"])
        c.check_beta("momentum", options["momentum"])
        c.check_nonnegative("weight_decay", options["weight_decay"])
        c.check_flag("bias_correction", options["bias_correction"])
        c.check_flag("maximize", options["maximize"])
        c.check_paths(options["foreach"], options["fused"])

    def _gather(self, group: dict[str, Any], group_index: int):
        """The tensors of this group that have a gradient, creating their state on first use."""
        w, g, m, t = [], [], [], []
        for i, p in enumerate(group["params"]):
            if p.grad is None:
                continue
            if p.grad.is_sparse:
                raise c.sparse_error("Momentum", group_index, i)
            state = self.state[p]
            if len(state) == 0:
                state["step"] = c.new_step(p, group)
                state["m"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            if p.is_complex():  # updated as real and imaginary parts, like PyTorch
                w.append(c.as_real(p))
                g.append(c.as_real(p.grad))
                m.append(c.as_real(state["m"]))
            else:
                w.append(p)
                g.append(p.grad)
                m.append(state["m"])
            t.append(state["step"])
        return w, g, m, t

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> Any:  # type: ignore[override]
        """One step for every parameter with a gradient; ``closure`` (re-evaluating the loss)
        is called once, with grad mode on, and its loss returned."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for i, group in enumerate(self.param_groups):
            w, g, m, t = self._gather(group, i)
            if w:
                momentum(
                    w,
                    g,
                    m,
                    t,
                    lr=group["lr"],
                    momentum=group["momentum"],
                    bias_correction=group["bias_correction"],
                    weight_decay=group["weight_decay"],
                    maximize=group["maximize"],
                    foreach=group["foreach"],
                    fused=group["fused"],
                )
        return loss


def momentum(
    params: list[Tensor],
    grads: list[Tensor],
    ms: list[Tensor],
    steps: list[Tensor],
    *,
    lr: float | Tensor,
    momentum: float,
    bias_correction: bool = False,
    weight_decay: float = 0.0,
    maximize: bool = False,
    foreach: bool | None = None,
    fused: bool | None = None,
) -> None:
    """Functional Momentum: advance each ``steps[i]`` by one and apply the rule
    (:func:`~torch_manual_bp.optim.rules.momentum_update_`) on the chosen path."""
    if fused:
        _momentum_fused_path(
            params,
            grads,
            ms,
            steps,
            lr=c.number(lr),
            beta=c.number(momentum),
            bias_correction=bias_correction,
            weight_decay=weight_decay,
            maximize=maximize,
        )
        return
    if foreach is None:
        foreach = c.default_foreach(params)
    tensor_mode = c.is_compiling()  # no .item() under torch.compile: it would recompile
    alpha = lr if tensor_mode else c.number(lr)
    kw = dict(
        alpha=alpha,
        beta=momentum,
        weight_decay=weight_decay,
        maximize=maximize,
        bias_correction=bias_correction,
    )
    if foreach:
        for w, g, m, t in c.group_by_device_and_dtype([params, grads, ms, steps]):
            c.increment(t)
            ts = t if tensor_mode else [ti.item() for ti in t]
            # batches bound the temporaries; without maximize or decay there are none
            whole = not (maximize or weight_decay) or tensor_mode
            for b in [list(range(len(w)))] if whole else c.batches(w):
                momentum_update_foreach_(*(c.pick(x, b) for x in (w, g, m)), t=c.pick(ts, b), **kw)
    else:
        c.increment_all(steps)
        for w, g, m, t in zip(params, grads, ms, steps, strict=True):
            t_now = t if tensor_mode or not bias_correction else t.item()  # t only for m̂
            momentum_update_(w, g, m, t=t_now, **kw)


@torch.compiler.disable  # a ctypes call: run eagerly even inside a compiled step
def _momentum_fused_path(params, grads, ms, steps, *, lr, beta, bias_correction, **kw):
    """One fused kernel call per dtype; the step α (or α/(1 − βᵗ)) is computed per tensor."""
    for w, g, m, t in c.group_by_device_and_dtype([params, grads, ms, steps]):
        _fused.check_fusable(w[0])
        c.increment(t)
        ts = [ti.item() for ti in t]
        fast = [i for i in range(len(w)) if _fused.fusable(w[i], g[i], m[i])]
        for i in sorted(set(range(len(w))) - set(fast)):  # non-contiguous: per-tensor rule
            momentum_update_(
                w[i], g[i], m[i], t=ts[i], alpha=lr, beta=beta,
                bias_correction=bias_correction, **kw,
            )  # fmt: skip
        if fast:
            _fused.momentum_fused_(
                [w[i] for i in fast],
                [g[i] for i in fast],
                [m[i] for i in fast],
                step=[lr / (1 - beta ** ts[i]) if bias_correction else lr for i in fast],
                beta=beta,
                **kw,
            )
