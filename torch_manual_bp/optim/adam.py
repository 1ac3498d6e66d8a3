"""The lecture's Adam as a ``torch.optim.Optimizer``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import torch
from torch import Tensor
from torch.optim.optimizer import ParamsT

from . import _common as c
from . import _fused
from .rules import _adam_step_scalars, adam_update_, adam_update_foreach_

__all__ = ["Adam", "adam"]


class Adam(c.LectureOptimizer):
    r"""Adam as the lecture writes it: m averages the negative gradient and is added.

    Update rule, per parameter tensor w with gradient g = ∇J(w(t)), t = 1, 2, ...::

        g    ← g + λ w                  (weight_decay λ, L2; or with decoupled_weight_decay
                                        w ← w(1 − αλ) instead, AdamW)
        m(t) ← β₁ m(t−1) − (1 − β₁) g        m(0) = 0
        s(t) ← β₂ s(t−1) + (1 − β₂) g²       s(0) = 0
        m̂ = m/(1 − β₁ᵗ),  ŝ = s/(1 − β₂ᵗ)    (AMSGrad: s_max ← max(s_max, s), ŝ from s_max)
        w    ← w + α m̂ / (√ŝ + ε)

    with α = ``lr``, (β₁, β₂) = ``betas``, ε = ``eps``. The slide has no ε (ŝ = 0 is 0/0);
    ε is added after the bias correction, as in the paper and PyTorch. ``eps=0`` gives the
    slide's literal form, and a zero update (never NaN) where ŝ = 0.

    PyTorch equivalence (exact up to rounding, tested at every step in float64): the same
    trajectory as ``torch.optim.Adam`` with the same arguments (``decoupled_weight_decay=True``
    is ``torch.optim.AdamW``); state ``m == -exp_avg``, ``s == exp_avg_sq``,
    ``s_max == max_exp_avg_sq``.

    State per parameter: ``step`` (0-dim float tensor, t; on the parameter's device when
    ``capturable``), ``m``, ``s``, and ``s_max`` with ``amsgrad``. The step that was taken is
    ``lr * adam_step_direction(m, s, step, betas, eps)``.

    Args:
        params: parameters or param-group dicts.
        lr: α (default 1e-3; a float or a 1-element Tensor).
        betas: (β₁, β₂), each in [0, 1) (default (0.9, 0.999)).
        eps: ε ≥ 0 (default 1e-8).
        weight_decay: λ ≥ 0.
        decoupled_weight_decay: decay w by (1 − αλ) instead of adding λw to g (AdamW).
        amsgrad: divide by the running maximum of s (AMSGrad).
        maximize: maximize J instead of minimizing it.
        foreach: True: the multi-tensor ``torch._foreach_*`` path; False: the per-tensor
            loop; None: multi-tensor (faster for small tensors, a tie or up to ~1.1x slower
            for large ones on CPU; docs/optim.md).
        fused: True: one pass over each tensor in a C++ kernel built on first use (CPU,
            float32/float64/bfloat16/float16; needs a C++ compiler, else a clear error).
            None (default) and False: not used.
        capturable: keep ``step`` on the parameter's device and do all scalar arithmetic on
            tensors, so a step never synchronises with the host and can be captured in a
            CUDA graph. Works on every device (on CPU it only costs a little speed).

    Example:
        >>> opt = Adam(model.parameters(), lr=1e-3)
        >>> loss = loss_fn(model(x), y); opt.zero_grad(); loss.backward(); opt.step()
    """

    STATE_KEYS = ("step", "m", "s")
    # what a state_dict saved before an option existed means
    OLD_DEFAULTS: ClassVar[dict[str, Any]] = {
        "weight_decay": 0.0,
        "decoupled_weight_decay": False,
        "amsgrad": False,
        "maximize": False,
        "foreach": None,
        "capturable": False,
        "fused": None,
    }

    def __init__(
        self,
        params: ParamsT,
        lr: float | Tensor = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        decoupled_weight_decay: bool = False,
        amsgrad: bool = False,
        maximize: bool = False,
        foreach: bool | None = None,
        capturable: bool = False,
        fused: bool | None = None,
    ) -> None:
        defaults = {
            "lr": lr,
            "betas": betas,
            "eps": eps,
            "weight_decay": weight_decay,
            "decoupled_weight_decay": decoupled_weight_decay,
            "amsgrad": amsgrad,
            "maximize": maximize,
            "foreach": foreach,
            "capturable": capturable,
            "fused": fused,
        }
        self.check_options(defaults)
        defaults["betas"] = tuple(betas)
        super().__init__(params, defaults)

    @staticmethod
    def check_options(options: dict[str, Any]) -> None:
        """ValueError naming the first invalid hyperparameter of a group (or the defaults)."""
        c.check_lr(options["lr"])
        betas = options["betas"]
        if not (isinstance(betas, (tuple, list)) and len(betas) == 2):
            raise ValueError(f"Invalid betas: {betas!r} (expected a pair (beta1, beta2))")
        c.check_beta("betas[0]", betas[0])
        c.check_beta("betas[1]", betas[1])
        c.check_nonnegative("eps", options["eps"])
        c.check_nonnegative("weight_decay", options["weight_decay"])
        for name in ("decoupled_weight_decay", "amsgrad", "maximize", "capturable"):
            c.check_flag(name, options[name])
        c.check_paths(options["foreach"], options["fused"])

    def _gather(self, group: dict[str, Any], group_index: int):
        """The tensors of this group that have a gradient, creating their state on first use."""
        w, g, m, s, s_max, t = [], [], [], [], [], []
        for i, p in enumerate(group["params"]):
            if p.grad is None:
                continue
            if p.grad.is_sparse:
                raise c.sparse_error("Adam", group_index, i)
            state = self.state[p]
            if len(state) == 0:
                state["step"] = c.new_step(p, group)
                state["m"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["s"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                if group["amsgrad"]:
                    state["s_max"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            if p.is_complex():  # updated as real and imaginary parts, like PyTorch
                w.append(c.as_real(p))
                g.append(c.as_real(p.grad))
                m.append(c.as_real(state["m"]))
                s.append(c.as_real(state["s"]))
                if group["amsgrad"]:
                    s_max.append(c.as_real(state["s_max"]))
            else:
                w.append(p)
                g.append(p.grad)
                m.append(state["m"])
                s.append(state["s"])
                if group["amsgrad"]:
                    s_max.append(state["s_max"])
            t.append(state["step"])
        return w, g, m, s, (s_max if group["amsgrad"] else None), t

    def _check_capture(self) -> None:
        # PyTorch's own guard: capturing a CUDA graph needs capturable=True in every group.
        check = getattr(self, "_accelerator_graph_capture_health_check", None) or getattr(
            self, "_cuda_graph_capture_health_check", None
        )
        if check is not None:
            check()

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> Any:  # type: ignore[override]
        """One step for every parameter with a gradient; ``closure`` (re-evaluating the loss)
        is called once, with grad mode on, and its loss returned."""
        self._check_capture()
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for i, group in enumerate(self.param_groups):
            w, g, m, s, s_max, t = self._gather(group, i)
            if w:
                beta1, beta2 = group["betas"]
                adam(
                    w,
                    g,
                    m,
                    s,
                    s_max,
                    t,
                    lr=group["lr"],
                    beta1=beta1,
                    beta2=beta2,
                    eps=group["eps"],
                    weight_decay=group["weight_decay"],
                    decoupled_weight_decay=group["decoupled_weight_decay"],
                    maximize=group["maximize"],
                    foreach=group["foreach"],
                    capturable=group["capturable"],
                    fused=group["fused"],
                )
        return loss


def adam(
    params: list[Tensor],
    grads: list[Tensor],
    ms: list[Tensor],
    ss: list[Tensor],
    s_maxs: list[Tensor] | None,
    steps: list[Tensor],
    *,
    lr: float | Tensor,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float = 0.0,
    decoupled_weight_decay: bool = False,
    maximize: bool = False,
    foreach: bool | None = None,
    capturable: bool = False,
    fused: bool | None = None,
) -> None:
    """Functional Adam: advance each ``steps[i]`` by one and apply the rule
    (:func:`~torch_manual_bp.optim.rules.adam_update_`) on the chosen path."""
    if fused:
        _adam_fused_path(
            params,
            grads,
            ms,
            ss,
            s_maxs,
            steps,
            lr=c.number(lr),
            beta1=c.number(beta1),
            beta2=c.number(beta2),
            eps=eps,
            weight_decay=weight_decay,
            decoupled_weight_decay=decoupled_weight_decay,
            maximize=maximize,
        )
        return
    if foreach is None:
        foreach = c.default_foreach(params)
    # On tensors (no .item()): under capture, and under torch.compile where a Python number
    # read from the step would be baked into the graph and force a recompile every step.
    tensor_mode = capturable or c.is_compiling()
    alpha = lr if tensor_mode else c.number(lr)
    if tensor_mode and isinstance(alpha, Tensor):
        alpha = alpha.to(params[0].device)
    kw = dict(
        alpha=alpha,
        beta1=c.number(beta1),
        beta2=c.number(beta2),
        eps=eps,
        weight_decay=weight_decay,
        decoupled_weight_decay=decoupled_weight_decay,
        maximize=maximize,
    )
    amsgrad = s_maxs is not None
    if foreach:
        lists = [params, grads, ms, ss, s_maxs if amsgrad else [None] * len(params), steps]
        for w, g, m, s, s_max, t in c.group_by_device_and_dtype(lists):
            c.increment(t)
            ts = t if tensor_mode else [ti.item() for ti in t]
            s_max = s_max if amsgrad else None
            for b in c.batches(w):
                adam_update_foreach_(
                    *(c.pick(x, b) for x in (w, g, m, s, s_max)), t=c.pick(ts, b), **kw
                )
    else:
        c.increment_all(steps)
        for i, (w, g, m, s, t) in enumerate(zip(params, grads, ms, ss, steps, strict=True)):
            s_max = s_maxs[i] if amsgrad else None
            adam_update_(w, g, m, s, s_max, t=t if tensor_mode else t.item(), **kw)


@torch.compiler.disable  # a ctypes call: run eagerly even inside a compiled step
def _adam_fused_path(params, grads, ms, ss, s_maxs, steps, *, lr, beta1, beta2, eps, **kw):
    """One fused kernel call per dtype; the scalars α_t, ε_t are computed here, per tensor."""
    amsgrad = s_maxs is not None
    lists = [params, grads, ms, ss, s_maxs if amsgrad else [None] * len(params), steps]
    for w, g, m, s, s_max, t in c.group_by_device_and_dtype(lists):
        _fused.check_fusable(w[0])
        c.increment(t)
        ts = [ti.item() for ti in t]
        fast = [
            i
            for i in range(len(w))
            if _fused.fusable(w[i], g[i], m[i], s[i], *([s_max[i]] if amsgrad else []))
        ]
        rest = sorted(set(range(len(w))) - set(fast))
        for i in rest:  # non-contiguous: the per-tensor rule, same formulas
            adam_update_(
                w[i], g[i], m[i], s[i], s_max[i] if amsgrad else None,
                t=ts[i], alpha=lr, beta1=beta1, beta2=beta2, eps=eps, **kw,
            )  # fmt: skip
        if not fast:
            continue
        scalars = [_adam_step_scalars(ts[i], lr, beta1, beta2, eps) for i in fast]
        _fused.adam_fused_(
            [w[i] for i in fast],
            [g[i] for i in fast],
            [m[i] for i in fast],
            [s[i] for i in fast],
            [s_max[i] for i in fast] if amsgrad else None,
            alpha_t=[a for a, _ in scalars],
            eps_t=[e for _, e in scalars],
            beta1=beta1,
            beta2=beta2,
            weight_decay=kw["weight_decay"],
            decay=1 - lr * kw["weight_decay"],
            decoupled_weight_decay=kw["decoupled_weight_decay"],
            maximize=kw["maximize"],
        )
