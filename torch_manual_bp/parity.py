"""Parity tools: prove a backward pass or an optimizer against PyTorch, with one call.

- ``compare_gradients(model, reference, inputs, target)``: one batch through both models;
  per parameter, how far ∇J(w) is from the reference's.
- ``compare_training(model, optimizer, reference, reference_optimizer, batches, steps)``:
  both trained in lockstep; every parameter and every optimizer-state tensor compared after
  every step (the lecture's m ↔ −exp_avg, s ↔ exp_avg_sq, ...), the first step where they
  part, and why when it can tell.
- ``backprop_trace(mlp, X, Y)``: the lecture's backward pass (Appendix 2) executed layer by
  layer on plain tensors, without autograd, each intermediate compared with autograd's.

The comparison rule (every row of every report). For our tensor a and the reference's b:

    max abs diff = max |a − b|
    max rel diff = max |a − b| / max |b|           (relative to the tensor's scale)
    passes      ⇔  max |a − b| ≤ atol + rtol · max |b|

A normwise rule: an entry that cancels to ~0 in one model and to ~1e-17 in the other is
rounding, not a bug, so entries are not judged relative to themselves. ``rtol`` and ``atol``
come from the dtype (``default_tolerance``) unless given. A NaN on one side fails the row;
NaN on both sides at the same place agrees (and the row's note says so).

Everything runs on the tensors' device and dtype (CPU, CUDA; float64 ... bfloat16), and the
first two tools take any ``nn.Module``, not only the lecture's MLP. This module imports only
torch.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "ComparisonRow",
    "GradientReport",
    "StateMapping",
    "StepRecord",
    "TraceReport",
    "TrainingReport",
    "backprop_trace",
    "compare_gradients",
    "compare_training",
    "default_tolerance",
    "ADAM_STATE",
    "MOMENTUM_STATE",
]

# (rtol, atol) per dtype. float64/float32: a few hundred ulps of a sum over a batch, far below
# any real bug (a missing Σ over the batch is a factor m; a wrong mask, a wrong bias
# correction are O(1)); float16/bfloat16: about 10 ulps.
_TOLERANCES: dict[torch.dtype, tuple[float, float]] = {
    torch.float64: (1e-9, 1e-12),
    torch.float32: (1e-4, 1e-7),
    torch.float16: (1e-2, 1e-4),
    torch.bfloat16: (5e-2, 1e-3),
}


def default_tolerance(dtype: torch.dtype) -> tuple[float, float]:
    """(rtol, atol) used for tensors of ``dtype``: float64 (1e-9, 1e-12), float32 (1e-4, 1e-7),
    float16 (1e-2, 1e-4), bfloat16 (5e-2, 1e-3); other dtypes get float32's."""
    return _TOLERANCES.get(dtype, _TOLERANCES[torch.float32])


# --------------------------------------------------------------------------------------
# One row: one tensor against its reference
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ComparisonRow:
    """One tensor of ours against the reference's: the unit of every report.

    ``tolerance`` is the threshold actually applied to ``max_abs``: atol + rtol · max|ref|.
    """

    name: str
    reference: str
    shape: tuple[int, ...]
    max_abs: float
    max_rel: float
    tolerance: float
    passed: bool
    note: str = ""
    factor: float | None = None  # when a failing tensor is a constant times the reference's

    @property
    def ratio(self) -> float:
        """max_abs / tolerance: > 1 fails. Picks the worst row of a report."""
        return math.inf if math.isnan(self.max_abs) else _ratio(self.max_abs, self.tolerance)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "reference": self.reference,
            "shape": list(self.shape),
            "max_abs": self.max_abs,
            "max_rel": self.max_rel,
            "tolerance": self.tolerance,
            "passed": self.passed,
            "note": self.note,
            "factor": self.factor,
        }


def _ratio(x: float, scale: float) -> float:
    """x / scale, with 0/0 = 0 and x/0 = inf."""
    if scale > 0:
        return x / scale
    return 0.0 if x == 0 else math.inf


def _missing_row(name: str, reference: str, note: str, passed: bool = False) -> ComparisonRow:
    nan = 0.0 if passed else math.inf
    return ComparisonRow(name, reference, (), nan, nan, 0.0, passed, note)


def _compare(
    name: str,
    reference_name: str,
    ours: Tensor,
    theirs: Tensor,
    rtol: float | None,
    atol: float | None,
) -> ComparisonRow:
    """max |a − b| against atol + rtol · max |b|, computed in float64 on a's device."""
    d_rtol, d_atol = default_tolerance(theirs.dtype)
    rtol = d_rtol if rtol is None else rtol
    atol = d_atol if atol is None else atol
    shape = tuple(ours.shape)
    if ours.shape != theirs.shape:
        note = f"shape {shape} vs reference {tuple(theirs.shape)}"
        return ComparisonRow(name, reference_name, shape, math.inf, math.inf, 0.0, False, note)
    a = ours.detach().to(torch.float64)
    b = theirs.detach().to(device=a.device, dtype=torch.float64)
    if a.numel() == 0:
        return ComparisonRow(name, reference_name, shape, 0.0, 0.0, atol, True, "empty")
    both_nan = a.isnan() & b.isnan()
    same = (a == b) | both_nan  # equal infinities, and NaN where both are NaN, agree
    diff = torch.where(same, torch.zeros_like(a), (a - b).abs())  # NaN: one side only
    finite_b = b.abs().masked_fill(~b.isfinite(), 0)
    max_abs, scale = (float(v) for v in torch.stack([diff.max(), finite_b.max()]).tolist())
    tolerance = atol + rtol * scale
    max_rel = _ratio(max_abs, scale)
    passed = max_abs <= tolerance  # False for NaN
    note = "NaN on one side" if math.isnan(max_abs) else ""
    if both_nan.any():
        note = f"{note}, NaN in both" if note else "NaN in both"
    factor = None if passed or note else _constant_factor(a, b, rtol)
    if factor is not None:
        note = f"= {factor:.6g} × reference"
    return ComparisonRow(
        name, reference_name, shape, max_abs, max_rel, tolerance, passed, note, factor
    )


def _constant_factor(a: Tensor, b: Tensor, rtol: float) -> float | None:
    """k when a = k·b up to the tolerance (a bias averaged instead of summed: k = 1/m; a
    flipped sign: k = −1), else None. k is the least-squares fit ⟨a, b⟩/⟨b, b⟩."""
    bb = float((b * b).sum())
    if not (math.isfinite(bb) and bb > 0) or a.numel() < 1:
        return None
    k = float((a * b).sum()) / bb
    residual = float((a - k * b).abs().max())
    return k if residual <= 10 * rtol * float(a.abs().max()) and k != 0 else None


# --------------------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------------------


def _fmt(x: float) -> str:
    return f"{x:.3e}" if math.isfinite(x) else str(x)


def _table(headers: Sequence[str], lines: Sequence[Sequence[str]]) -> str:
    """An aligned text table: columns padded to their widest cell, a rule under the header."""
    widths = [max([len(h), *(len(line[i]) for line in lines)]) for i, h in enumerate(headers)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    out = [fmt.format(*headers).rstrip(), "  ".join("-" * w for w in widths)]
    out += [fmt.format(*line).rstrip() for line in lines]
    return "\n".join(out)


_ROW_HEADERS = (
    "tensor",
    "reference",
    "shape",
    "max abs diff",
    "max rel diff",
    "tolerance",
    "result",
)


def _row_cells(row: ComparisonRow) -> list[str]:
    verdict = "ok" if row.passed else "FAIL"
    if row.note:
        verdict += f" ({row.note})"
    ref = "" if row.reference == row.name else row.reference
    shape = str(tuple(row.shape))
    return [
        row.name,
        ref,
        shape,
        _fmt(row.max_abs),
        _fmt(row.max_rel),
        _fmt(row.tolerance),
        verdict,
    ]


def _rows_table(rows: Sequence[ComparisonRow]) -> str:
    return _table(_ROW_HEADERS, [_row_cells(r) for r in rows])


def _worst(rows: Iterable[ComparisonRow]) -> ComparisonRow | None:
    return max(rows, key=lambda r: r.ratio, default=None)


# --------------------------------------------------------------------------------------
# Matching parameters
# --------------------------------------------------------------------------------------


def _shape(t: Tensor) -> tuple[int, ...]:
    return tuple(t.shape)


def _match_parameters(
    model: nn.Module, reference: nn.Module, match: str | Mapping[str, str]
) -> list[tuple[str, Tensor, str, Tensor]]:
    """Pairs (name, p, reference name, p_ref).

    match="order": the i-th of ``model.parameters()`` with the i-th of the reference's
    (the default: the MLP's "1.weight" is its ``to_torch()`` twin's "2.weight").
    match="name": equal names in ``named_parameters()``. A mapping: model name → reference
    name. Shapes must line up; otherwise ValueError naming both sides.
    """
    ours = list(model.named_parameters())
    theirs = list(reference.named_parameters())
    if match == "order":
        if len(ours) != len(theirs):
            raise ValueError(
                f"match='order' needs as many parameters in the model as in the reference, "
                f"got {len(ours)} ({_listing(ours)}) vs {len(theirs)} ({_listing(theirs)}); "
                f"pass match='name' or a dict {{model name: reference name}}"
            )
        pairs = [(n, p, rn, rp) for (n, p), (rn, rp) in zip(ours, theirs, strict=True)]
    else:
        mapping = {n: n for n, _ in ours} if match == "name" else dict(_check_mapping(match))
        by_name = dict(theirs)
        ours_d = dict(ours)
        missing = [n for n in mapping if n not in ours_d]
        absent = [mapping[n] for n in ours_d if mapping.get(n) not in by_name]
        if missing or absent or len(mapping) != len(ours):
            raise ValueError(
                f"match={match!r}: parameters do not pair up: model has {_listing(ours)}, "
                f"reference has {_listing(theirs)}"
                + (f"; unknown model names {missing}" if missing else "")
                + (f"; no reference parameter named {absent}" if absent else "")
            )
        pairs = [(n, ours_d[n], mapping[n], by_name[mapping[n]]) for n, _ in ours]
    for i, (n, p, rn, rp) in enumerate(pairs):
        if p.shape != rp.shape:
            raise ValueError(
                f"parameter {i} of the model, {n!r} of shape {_shape(p)}, does not line up "
                f"with the reference's {rn!r} of shape {_shape(rp)} (match={match!r}); "
                f"model: {_listing(ours)}; reference: {_listing(theirs)}"
            )
    return pairs


def _check_mapping(match: object) -> Mapping[str, str]:
    if isinstance(match, Mapping):
        return match
    raise ValueError(
        f"match must be 'order', 'name' or a dict {{model name: reference name}}, got {match!r}"
    )


def _listing(named: Sequence[tuple[str, Tensor]]) -> str:
    return "[" + ", ".join(f"{n} {_shape(p)}" for n, p in named) + "]"


def _as_tuple(inputs: Tensor | Sequence[Tensor]) -> tuple:
    return (inputs,) if isinstance(inputs, Tensor) else tuple(inputs)


def _fresh_inputs(inputs: tuple, track: bool) -> tuple:
    """Copies of the floating inputs that require grad (so dJ/dX can be compared)."""
    return tuple(
        x.detach().clone().requires_grad_(True)
        if track and isinstance(x, Tensor) and x.is_floating_point()
        else x
        for x in inputs
    )


def _default_loss(output: Tensor, target: Tensor) -> Tensor:
    """The lecture's J: mean binary cross-entropy of σ(output) against target."""
    return F.binary_cross_entropy_with_logits(output, target)


# --------------------------------------------------------------------------------------
# ReLU ties: the one place the lecture (1{Z ≥ 0}) and PyTorch (1{Z > 0}) part
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Ties:
    layer: str
    count: int
    convention: int  # 1: 1{Z ≥ 0} (the lecture), 0: 1{Z > 0} (torch.relu)


def _relu_ties(model: nn.Module, inputs: tuple) -> list[_Ties]:
    """Exact zeros in the pre-activations of every ReLU the batch goes through.

    Sees ``nn.ReLU`` modules (PyTorch's convention) and linear+ReLU modules that carry a
    ``relu_grad_at_zero`` attribute (this package's ``LinearReLU``: Z recomputed from the
    layer's input). A ReLU called as a function inside a forward is not seen.
    """
    found: list[_Ties] = []
    handles = []

    def hook_for(name: str, module: nn.Module):
        def hook(mod: nn.Module, args: tuple, output: Any) -> None:
            x = args[0]
            if isinstance(mod, nn.ReLU):
                Z, convention = x, 0
            else:
                Z, convention = F.linear(x, mod.weight, mod.bias), int(mod.relu_grad_at_zero)
            count = int((Z == 0).sum())
            if count:
                found.append(_Ties(name, count, convention))

        return hook

    for name, module in model.named_modules():
        is_linear_relu = isinstance(module, nn.Linear) and hasattr(module, "relu_grad_at_zero")
        if isinstance(module, nn.ReLU) or is_linear_relu:
            handles.append(module.register_forward_hook(hook_for(name or "<model>", module)))
    try:
        with torch.no_grad():
            model(*inputs)
    finally:
        for h in handles:
            h.remove()
    return found


def _relu_conventions(model: nn.Module) -> set[int]:
    conventions = set()
    for module in model.modules():
        if isinstance(module, nn.ReLU):
            conventions.add(0)
        elif isinstance(module, nn.Linear) and hasattr(module, "relu_grad_at_zero"):
            conventions.add(int(module.relu_grad_at_zero))
    return conventions


_MASK = {1: "1{Z ≥ 0} (the lecture)", 0: "1{Z > 0} (torch.relu)"}


def _tie_diagnosis(model: nn.Module, reference: nn.Module, inputs: tuple) -> str | None:
    """A sentence when the batch has exact ReLU ties AND the two models mask them differently."""
    ties, ties_ref = _relu_ties(model, inputs), _relu_ties(reference, inputs)
    if not (ties or ties_ref):
        return None
    ours, theirs = _relu_conventions(model), _relu_conventions(reference)
    if ours == theirs and len(ours) <= 1:
        return None
    where = "; ".join(
        f"{side} layer {t.layer!r}: {t.count}"
        for side, found in (("model", ties), ("reference", ties_ref))
        for t in found
    )
    return (
        f"ReLU tie convention: this batch has pre-activations exactly 0 ({where}). The "
        f"model masks with {' and '.join(_MASK[c] for c in sorted(ours, reverse=True))}, "
        f"the reference with {' and '.join(_MASK[c] for c in sorted(theirs, reverse=True))}; "
        f"they differ only at these ties. Use relu_grad_at_zero=0 to follow PyTorch, or "
        f"data without exact zeros."
    )


class _Rows:
    """For reports made of ``ComparisonRow``s (``self.rows``): pass/fail over all of them."""

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.rows)

    @property
    def failures(self) -> list[ComparisonRow]:
        return [r for r in self.rows if not r.passed]


# --------------------------------------------------------------------------------------
# compare_gradients
# --------------------------------------------------------------------------------------


@dataclass
class GradientReport(_Rows):
    """What ``compare_gradients`` found: one row per compared tensor.

    Rows, in order: ``output`` and ``loss`` (the forward), one row per parameter (dJ/dw, named
    by the model's parameter name, the reference's name beside it when it differs), then
    ``input`` rows (dJ/dX) when ``check_inputs``.

    Attributes:
        rows: the ``ComparisonRow``s.
        passed: True only when every row passes.
        diagnosis: a sentence on the likely cause when it can tell (ReLU ties), else None.
        dtype, device: of the model's output.
    """

    rows: list[ComparisonRow]
    dtype: torch.dtype
    device: torch.device
    diagnosis: str | None = None

    def __getitem__(self, name: str) -> ComparisonRow:
        for r in self.rows:
            if r.name == name:
                return r
        raise KeyError(f"no row named {name!r}; rows: {[r.name for r in self.rows]}")

    def __bool__(self) -> bool:
        return self.passed

    def __str__(self) -> str:
        n_ok = sum(r.passed for r in self.rows)
        verdict = "PASSED" if self.passed else "FAILED"
        head = (
            f"compare_gradients ({self.dtype}, {self.device}): {verdict}, "
            f"{n_ok}/{len(self.rows)} rows pass"
        )
        text = f"{head}\n{_rows_table(self.rows)}"
        if self.diagnosis:
            text += f"\ndiagnosis: {self.diagnosis}"
        return text

    def to_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "dtype": str(self.dtype),
            "device": str(self.device),
            "diagnosis": self.diagnosis,
            "rows": [r.to_dict() for r in self.rows],
        }


def _forward_backward(
    module: nn.Module,
    inputs: tuple,
    target: Any,
    loss_fn: Callable[[Any, Any], Tensor],
    params: Sequence[Tensor],
) -> tuple[Tensor, Tensor, list[Tensor | None], list[Tensor | None]]:
    """output, J, dJ/dw per parameter, dJ/dX per input, without touching any ``.grad``."""
    output = module(*inputs)
    J = loss_fn(output, target)
    if not (isinstance(J, Tensor) and J.numel() == 1):
        what = f"a tensor of shape {tuple(J.shape)}" if isinstance(J, Tensor) else repr(J)
        raise ValueError(f"loss_fn must return a scalar tensor J, got {what}")
    leaves = [p for p in params if p.requires_grad]
    xs = [x for x in inputs if isinstance(x, Tensor) and x.requires_grad]
    grads = torch.autograd.grad(J, leaves + xs, allow_unused=True) if leaves or xs else ()
    by_id = {id(t): g for t, g in zip(leaves + xs, grads, strict=True)}
    return (
        output,
        J,
        [by_id.get(id(p)) for p in params],
        [by_id.get(id(x)) for x in inputs if isinstance(x, Tensor) and x.requires_grad],
    )


def _grad_row(
    name: str, ref_name: str, g: Tensor | None, g_ref: Tensor | None, rtol, atol
) -> ComparisonRow:
    if g is None and g_ref is None:
        return _missing_row(name, ref_name, "no gradient on either side", passed=True)
    if g is None or g_ref is None:
        side = "model" if g is None else "reference"
        return _missing_row(name, ref_name, f"no gradient in the {side}")
    return _compare(name, ref_name, g, g_ref, rtol, atol)


def compare_gradients(
    model: nn.Module,
    reference: nn.Module,
    inputs: Tensor | Sequence[Tensor],
    target: Any,
    loss_fn: Callable[[Any, Any], Tensor] | None = None,
    *,
    reference_loss_fn: Callable[[Any, Any], Tensor] | None = None,
    match: str | Mapping[str, str] = "order",
    check_inputs: bool = True,
    rtol: float | None = None,
    atol: float | None = None,
) -> GradientReport:
    """∇J(w) of ``model`` against ``reference``'s on one batch, per parameter.

    Runs J = loss_fn(model(*inputs), target) and the same for the reference, takes every
    gradient with ``torch.autograd.grad`` (no ``.grad`` is read or written), and compares
    the forward output, J, each parameter's dJ/dw and, with ``check_inputs``, dJ/dX.

    Args:
        model: the module under test (any ``nn.Module``).
        reference: the module it should match, with the same weights (e.g.
            ``mlp.to_torch()``).
        inputs: a tensor, or a tuple of tensors passed as ``model(*inputs)``.
        target: passed to the loss as its second argument (may be None).
        loss_fn: J(output, target); default the lecture's J, the mean binary cross-entropy
            on logits (``F.binary_cross_entropy_with_logits``).
        reference_loss_fn: the reference's J; default ``loss_fn``. To test a loss Function,
            pass it as ``loss_fn`` and PyTorch's as ``reference_loss_fn``.
        match: how parameters pair up: "order" (default: i-th of ``parameters()`` with
            i-th; names of an MLP and of its ``to_torch()`` twin differ), "name" (equal
            names), or a dict {model name: reference name}. Shapes must agree (ValueError).
        check_inputs: also compare dJ/dX for every floating input.
        rtol, atol: override the dtype's tolerance (``default_tolerance``).

    Returns:
        A ``GradientReport``: ``.passed``, ``.rows``, ``.diagnosis``, ``str()`` (a table),
        ``.to_dict()``.

    Example:
        >>> net = MLP([4, 8, 1], relu_grad_at_zero=0)
        >>> report = compare_gradients(net, net.to_torch(), X, Y.view(-1, 1))
        >>> assert report.passed, report
    """
    pairs = _match_parameters(model, reference, match)
    loss_fn = _default_loss if loss_fn is None else loss_fn
    reference_loss_fn = loss_fn if reference_loss_fn is None else reference_loss_fn
    inputs = _as_tuple(inputs)
    xs, xs_ref = _fresh_inputs(inputs, check_inputs), _fresh_inputs(inputs, check_inputs)
    out, J, grads, dxs = _forward_backward(model, xs, target, loss_fn, [p for _, p, _, _ in pairs])
    out_r, J_r, grads_r, dxs_r = _forward_backward(
        reference, xs_ref, target, reference_loss_fn, [rp for _, _, _, rp in pairs]
    )
    rows = []
    if isinstance(out, Tensor) and isinstance(out_r, Tensor):
        rows.append(_compare("output", "output", out, out_r, rtol, atol))
    rows.append(_compare("loss", "loss", J, J_r, rtol, atol))
    for (n, _, rn, _), g, g_r in zip(pairs, grads, grads_r, strict=True):
        rows.append(_grad_row(n, rn, g, g_r, rtol, atol))
    for i, (dx, dx_r) in enumerate(zip(dxs, dxs_r, strict=True)):
        name = "input" if len(dxs) == 1 else f"input[{i}]"
        rows.append(_grad_row(name, name, dx, dx_r, rtol, atol))
    report = GradientReport(rows, J.dtype, J.device)
    if not report.passed:
        m = next((x.shape[0] for x in inputs if isinstance(x, Tensor) and x.dim() > 0), None)
        report.diagnosis = _tie_diagnosis(model, reference, inputs) or _factor_diagnosis(
            report.failures, m
        )
    return report


def _factor_diagnosis(failures: Sequence[ComparisonRow], m: int | None) -> str | None:
    """A sentence for failing rows that are a constant multiple of the reference."""
    hints = []
    for r in failures:
        k = r.factor
        if k is None:
            continue
        if m and math.isclose(1 / k, m, rel_tol=1e-6):
            why = f"1/m of the reference's (m = {m}): averaged over the batch, not summed"
        elif m and math.isclose(k, m, rel_tol=1e-6):
            why = f"m = {m} times the reference's: summed over the batch, not averaged"
        elif math.isclose(k, -1, rel_tol=1e-6):
            why = "the reference's with the sign flipped"
        else:
            why = f"{k:.6g} times the reference's: a constant factor is off"
        hints.append(f"{r.name!r} is {why}")
    return "; ".join(hints) or None


# --------------------------------------------------------------------------------------
# compare_training: state mappings
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StateMapping:
    """One optimizer-state tensor of ours and the reference's tensor it corresponds to.

    ``to_reference(ours, group)`` converts our tensor into the reference's convention, using
    our parameter group's hyperparameters; ``label`` says the relation, e.g.
    "m ↔ −exp_avg". ``absent_ok(reference_group)`` says why the reference may keep no
    ``theirs`` tensor under that group's hyperparameters (the row then passes with that
    note), or None when its absence is a failure.
    """

    ours: str
    theirs: str
    label: str
    to_reference: Callable[[Tensor, dict], Tensor] = field(default=lambda t, group: t)
    absent_ok: Callable[[dict], str | None] = field(default=lambda group: None)


def _neg(t: Tensor, group: dict) -> Tensor:
    return -t


def _momentum_to_buffer(m: Tensor, group: dict) -> Tensor:
    # m = −(1 − β) b  ⇒  b = −m / (1 − β)
    return -m / (1 - group["momentum"])


def _no_buffer_at_zero_momentum(group: dict) -> str | None:
    # torch.optim.SGD(momentum=0) keeps no buffer; with β = 0, w(t) = w(t−1) + α m(t), so
    # the parameter rows already check m.
    if group.get("momentum", 0) != 0:
        return None
    return (
        "not compared: SGD(momentum=0) keeps no 'momentum_buffer'; with β = 0 the "
        "parameter rows check m (w(t) = w(t−1) + α·m(t))"
    )


#: The lecture's Adam against ``torch.optim.Adam`` / ``AdamW``.
ADAM_STATE: tuple[StateMapping, ...] = (
    StateMapping("step", "step", "step ↔ step"),
    StateMapping("m", "exp_avg", "m ↔ −exp_avg", _neg),
    StateMapping("s", "exp_avg_sq", "s ↔ exp_avg_sq"),
    StateMapping("s_max", "max_exp_avg_sq", "s_max ↔ max_exp_avg_sq"),
)

#: The lecture's Momentum against ``torch.optim.SGD(momentum=β)``.
MOMENTUM_STATE: tuple[StateMapping, ...] = (
    StateMapping(
        "m",
        "momentum_buffer",
        "m ↔ −(1−β)·momentum_buffer",
        _momentum_to_buffer,
        _no_buffer_at_zero_momentum,
    ),
)


def _auto_state_map(optimizer: torch.optim.Optimizer, reference: torch.optim.Optimizer):
    """ADAM_STATE against torch Adam/AdamW, MOMENTUM_STATE against torch SGD, else the
    identity on the state keys both share (None)."""
    if type(optimizer) is type(reference):
        return None
    if isinstance(reference, (torch.optim.Adam, torch.optim.AdamW)):
        return ADAM_STATE
    if isinstance(reference, torch.optim.SGD):
        return MOMENTUM_STATE
    return None


def _resolve_state_map(state_map, optimizer, reference):
    if isinstance(state_map, str):
        presets = {"adam": ADAM_STATE, "momentum": MOMENTUM_STATE, "identity": None}
        if state_map == "auto":
            return _auto_state_map(optimizer, reference)
        if state_map not in presets:
            raise ValueError(
                f"state_map must be 'auto', 'adam', 'momentum', 'identity' or a sequence of "
                f"StateMapping, got {state_map!r}"
            )
        return presets[state_map]
    return tuple(state_map)


def _param_groups_of(optimizer: torch.optim.Optimizer) -> dict[int, dict]:
    return {id(p): g for g in optimizer.param_groups for p in g["params"]}


def _state_rows(pairs, optimizer, reference_optimizer, mapping, rtol, atol) -> list[ComparisonRow]:
    groups, groups_r = _param_groups_of(optimizer), _param_groups_of(reference_optimizer)
    rows = []
    for n, p, rn, rp in pairs:
        st = _numeric_state(optimizer.state.get(p, {}))
        st_r = _numeric_state(reference_optimizer.state.get(rp, {}))
        if mapping is None:  # identity on the keys both have
            maps = [StateMapping(k, k, k) for k in sorted(st) if k in st_r]
        else:
            maps = [s for s in mapping if s.ours in st or s.theirs in st_r]
        for s in maps:
            name, ref_name = f"{n}: {s.label}", f"{rn}: {s.theirs}"
            why = s.absent_ok(groups_r[id(rp)]) if id(rp) in groups_r else None
            if s.ours in st and s.theirs not in st_r and why:
                rows.append(_missing_row(name, ref_name, why, passed=True))
                continue
            if s.ours not in st or s.theirs not in st_r:
                side, key = ("model", s.ours) if s.ours not in st else ("reference", s.theirs)
                rows.append(_missing_row(name, ref_name, f"no {key!r} in the {side}'s state"))
                continue
            theirs = st_r[s.theirs]
            converted = s.to_reference(st[s.ours].to(theirs.device), groups.get(id(p), {}))
            rows.append(_compare(name, ref_name, converted, theirs, rtol, atol))
    return rows


def _numeric_state(state: dict) -> dict[str, Tensor]:
    """The state's tensors, and its plain numbers (an int ``step``) as float64 tensors."""
    out = {}
    for k, v in state.items():
        if isinstance(v, Tensor):
            out[k] = v
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            out[k] = torch.tensor(float(v), dtype=torch.float64)
    return out


# --------------------------------------------------------------------------------------
# compare_training: the report
# --------------------------------------------------------------------------------------


@dataclass
class StepRecord(_Rows):
    """Everything compared at step t (t = 0: the starting parameters).

    ``rows``: ``loss``, then per parameter ``grad <name>`` (dJ/dw at w(t−1), before the
    update), ``<name>`` (w(t), after it) and one row per state tensor (``<name>: m ↔
    −exp_avg``). ``hyper``: both optimizers' param groups as used for this step.
    """

    step: int
    rows: list[ComparisonRow]
    loss: float | None = None
    reference_loss: float | None = None
    hyper: tuple[list[dict], list[dict]] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "passed": self.passed,
            "loss": self.loss,
            "reference_loss": self.reference_loss,
            "rows": [r.to_dict() for r in self.rows],
        }


@dataclass
class TrainingReport:
    """What ``compare_training`` found, step by step.

    Attributes:
        steps: one ``StepRecord`` per step, ``steps[0]`` the starting parameters.
        first_divergence: the first step t where some row fails, or None.
        diagnosis: why they part, when it can tell (ReLU ties, torch SGD's undamped first
            step, an lr/β mismatch, backward vs update), else None.
        passed: True only when every row of every step passes.
    """

    steps: list[StepRecord]
    diagnosis: str | None = None

    @property
    def passed(self) -> bool:
        return all(s.passed for s in self.steps)

    def __bool__(self) -> bool:
        return self.passed

    @property
    def first_divergence(self) -> int | None:
        return next((s.step for s in self.steps if not s.passed), None)

    def step(self, t: int) -> StepRecord:
        for s in self.steps:
            if s.step == t:
                return s
        raise KeyError(f"no step {t}; steps 0..{self.steps[-1].step}")

    def __str__(self) -> str:
        verdict = (
            "PASSED" if self.passed else f"FAILED: first divergence at step {self.first_divergence}"
        )
        lines = []
        for s in self.steps:
            w = _worst(s.rows)
            lines.append(
                [
                    str(s.step),
                    "" if s.loss is None else f"{s.loss:.6g}",
                    "" if s.reference_loss is None else f"{s.reference_loss:.6g}",
                    w.name if w else "",
                    _fmt(w.max_abs) if w else "",
                    _fmt(w.tolerance) if w else "",
                    "ok" if s.passed else f"FAIL ({len(s.failures)} rows)",
                ]
            )
        headers = (
            "step",
            "loss",
            "reference loss",
            "worst tensor",
            "max abs diff",
            "tolerance",
            "result",
        )
        text = f"compare_training: {verdict}, {len(self.steps) - 1} steps\n{_table(headers, lines)}"
        t = self.first_divergence
        if t is not None:
            text += f"\n\nstep {t}, every row:\n{_rows_table(self.step(t).rows)}"
        if self.diagnosis:
            text += f"\ndiagnosis: {self.diagnosis}"
        return text

    def to_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "first_divergence": self.first_divergence,
            "diagnosis": self.diagnosis,
            "steps": [s.to_dict() for s in self.steps],
        }


# --------------------------------------------------------------------------------------
# compare_training: diagnosis
# --------------------------------------------------------------------------------------


def _scalar(v: Any) -> Any:
    if isinstance(v, Tensor) and v.numel() == 1:
        return float(v)
    if isinstance(v, (tuple, list)):
        return tuple(_scalar(x) for x in v)
    return v


def _snapshot(optimizer: torch.optim.Optimizer) -> list[dict]:
    return [{k: _scalar(v) for k, v in g.items() if k != "params"} for g in optimizer.param_groups]


def _close(a: Any, b: Any) -> bool:
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-12)
    return a == b


def _momentum_vs_sgd(ours: dict, theirs: dict, t: int) -> list[str]:
    """What keeps SGD from following the lecture's Momentum at step t.

    Momentum(α, β) ≡ SGD(lr=α(1−β), momentum=β, dampening=0); with bias_correction the lr
    of step t is α(1−β)/(1−βᵗ). With dampening d ≠ 0, SGD's buffer b ← βb + (1−d)g matches
    the lecture's recursion for lr = α(1−β)/(1−d) (d = β: lr = α) but starts at b(1) = g,
    undamped, so its first step is 1/(1−d) times too long.
    """
    problems = []
    alpha, beta = ours["lr"], ours["momentum"]
    d = theirs.get("dampening", 0) or 0
    if d != 0:
        problems.append(
            f"torch.optim.SGD(dampening={d}) does not dampen its first step: its buffer "
            f"starts at b(1) = g, not (1 − dampening)·g, so step 1 is 1/(1 − {d}) times "
            f"the lecture's; use SGD(lr=α(1−β), momentum=β, dampening=0)"
        )
    if not _close(theirs.get("momentum"), beta):
        problems.append(
            f"β mismatch: Momentum(momentum={beta}) vs SGD(momentum={theirs.get('momentum')})"
        )
    if theirs.get("nesterov"):
        problems.append(
            "the reference SGD uses nesterov=True; the lecture's Momentum is not Nesterov's"
        )
    corrected = bool(ours.get("bias_correction", False))
    if beta < 1 and d < 1:
        expected = alpha * (1 - beta) / (1 - d) / ((1 - beta**t) if corrected else 1)
        if not _close(theirs.get("lr"), expected):
            problems.append(_lr_problem(alpha, beta, d, t, corrected, theirs.get("lr"), expected))
    for key in ("weight_decay", "maximize"):
        if key in ours and key in theirs and not _close(ours[key], theirs[key]):
            problems.append(f"{key} mismatch: {ours[key]!r} vs the reference's {theirs[key]!r}")
    return problems


def _lr_problem(alpha, beta, d, t, corrected, lr, expected) -> str:
    sym, num = "α(1−β)", f"{alpha}·(1−{beta})"
    if d:
        sym, num = f"{sym}/(1−dampening)", f"{num}/(1−{d})"
    if corrected:
        sym, num = f"{sym}/(1−βᵗ)", f"{num}/(1−{beta}^{t})"
    how = f"{sym} = {num}"
    hint = (
        " (bias_correction=True: schedule SGD with LambdaLR(lambda e: 1/(1 − β**(e + 1))))"
        if corrected
        else ""
    )
    return (
        f"lr mismatch at step {t}: the reference SGD used lr={lr}, the lecture's "
        f"Momentum(lr={alpha}, momentum={beta}) moves like lr = {how} = {expected:.6g}{hint}"
    )


def _adam_vs_adam(ours: dict, theirs: dict, reference: torch.optim.Optimizer) -> list[str]:
    problems = []
    for key in ("lr", "betas", "eps", "weight_decay", "amsgrad", "maximize"):
        if key in ours and key in theirs and not _close(ours[key], theirs[key]):
            problems.append(f"{key} mismatch: {ours[key]!r} vs the reference's {theirs[key]!r}")
    if "decoupled_weight_decay" in ours:
        theirs_decoupled = isinstance(reference, torch.optim.AdamW) or bool(
            theirs.get("decoupled_weight_decay", False)
        )
        if bool(ours["decoupled_weight_decay"]) != theirs_decoupled and ours.get("weight_decay"):
            problems.append(
                f"decoupled_weight_decay={ours['decoupled_weight_decay']} vs a reference that "
                f"{'decouples (AdamW)' if theirs_decoupled else 'adds λw to the gradient (Adam)'}"
            )
    return problems


def _same_kind(ours: dict, theirs: dict) -> list[str]:
    return [
        f"{k} mismatch: {ours[k]!r} vs the reference's {theirs[k]!r}"
        for k in ours
        if k in theirs and not _close(ours[k], theirs[k])
    ]


def _hyper_problems(optimizer, reference_optimizer, record: StepRecord) -> list[str]:
    if record.hyper is None:
        return []
    problems = []
    for ours, theirs in zip(*record.hyper, strict=False):
        if isinstance(reference_optimizer, torch.optim.SGD) and "momentum" in ours:
            problems += _momentum_vs_sgd(ours, theirs, record.step)
        elif (
            isinstance(reference_optimizer, (torch.optim.Adam, torch.optim.AdamW))
            and "betas" in ours
        ):
            problems += _adam_vs_adam(ours, theirs, reference_optimizer)
        elif type(optimizer) is type(reference_optimizer):
            problems += _same_kind(ours, theirs)
    return problems


def _factor_words(row: ComparisonRow) -> str:
    return "" if row.factor is None else f", ours = {row.factor:.6g} × the reference's"


def _diagnose(
    report: TrainingReport, optimizer, reference_optimizer, ties: str | None
) -> str | None:
    """Why the first divergent step parts, from its rows, the hyperparameters and ``ties``
    (the ReLU-tie sentence for that step's batch, found before its update)."""
    t = report.first_divergence
    if t is None:
        return None
    record = report.step(t)
    failing = record.failures
    if t == 0:
        return (
            f"the models start from different parameters ({failing[0].name} differs): copy "
            f"the weights first (MLP.to_torch(), load_state_dict, or match=...)"
        )
    forward = [r for r in failing if r.name == "loss"]
    backward = [r for r in failing if r.name.startswith("grad ")]
    if forward or backward:
        if ties:
            return f"step {t}: {ties}"
        what = "the losses" if forward else f"the gradients ({backward[0].name})"
        return (
            f"step {t}: {what} differ while the parameters still agree: the forward/backward "
            f"passes differ, not the optimizers; run compare_gradients on this batch"
        )
    problems = _hyper_problems(optimizer, reference_optimizer, record)
    if problems:
        return f"step {t}: the gradients agree but the updates differ: " + "; ".join(problems)
    state = [r for r in failing if ":" in r.name]
    params = [r for r in failing if ":" not in r.name]
    if state:
        return (
            f"step {t}: the gradients and hyperparameters agree, but the optimizer state "
            f"parts first at {state[0].name!r} (reference {state[0].reference!r}"
            f"{_factor_words(state[0])}): the state's update rule differs"
        )
    return (
        f"step {t}: the gradients, hyperparameters and optimizer state agree, but the "
        f"parameter {params[0].name!r} moved differently: the step itself differs (its bias "
        f"correction, ε, sign or learning rate)"
    )


# --------------------------------------------------------------------------------------
# compare_training
# --------------------------------------------------------------------------------------


def _batches(batches: Iterable, steps: int | None):
    """(inputs, target) pairs: one pass when steps is None, else cycle until ``steps``."""
    if steps is None:
        yield from batches
        return
    given = 0
    while given < steps:
        empty = True
        for batch in batches:
            empty = False
            yield batch
            given += 1
            if given == steps:
                return
        if empty:
            raise ValueError(f"batches is empty (or an exhausted iterator) after {given} steps")


def _param_rows(pairs, rtol, atol, prefix: str = "") -> list[ComparisonRow]:
    return [_compare(f"{prefix}{n}", f"{prefix}{rn}", p, rp, rtol, atol) for n, p, rn, rp in pairs]


def _train_step(module, optimizer, inputs, target, loss_fn) -> Tensor:
    optimizer.zero_grad(set_to_none=True)
    module.zero_grad(set_to_none=True)  # also parameters the optimizer does not own
    J = loss_fn(module(*inputs), target)
    J.backward()
    return J.detach()


def compare_training(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    reference: nn.Module,
    reference_optimizer: torch.optim.Optimizer,
    batches: Iterable[tuple[Any, Any]],
    steps: int | None = None,
    *,
    loss_fn: Callable[[Any, Any], Tensor] | None = None,
    reference_loss_fn: Callable[[Any, Any], Tensor] | None = None,
    scheduler: Any = None,
    reference_scheduler: Any = None,
    match: str | Mapping[str, str] = "order",
    state_map: str | Sequence[StateMapping] = "auto",
    rtol: float | None = None,
    atol: float | None = None,
) -> TrainingReport:
    """Train ``model`` and ``reference`` in lockstep and compare them after every step.

    Step t (t = 1, 2, ...): both take batch t, compute J and ∇J(w(t−1)), call their
    optimizer's ``step()`` (then their scheduler's, if given), and the report compares J,
    every gradient (rows ``grad <name>``), every parameter w(t) and every optimizer-state
    tensor, mapped to the reference's names and convention:

        this package's Adam      ↔ torch.optim.Adam/AdamW:  m ↔ −exp_avg, s ↔ exp_avg_sq,
                                                            s_max ↔ max_exp_avg_sq, step ↔ step
        this package's Momentum  ↔ torch.optim.SGD:         m ↔ −(1−β)·momentum_buffer

    Step 0 compares the starting parameters. The report's ``first_divergence`` is the first
    step with a failing row and ``diagnosis`` says why when it can: a different start; ReLU
    ties in that batch masked differently; gradients that differ while the parameters
    agree (the backward, not the optimizer); torch SGD's undamped first step; an lr/β/…
    mismatch (Momentum(α, β) moves like SGD(lr=α(1−β), momentum=β, dampening=0)); or which
    state tensor, or which parameter's step, parts first.

    The models and optimizers are trained in place (pass copies to keep the originals).

    Args:
        model, optimizer: the module and optimizer under test.
        reference, reference_optimizer: what they should match, from the same weights.
        batches: an iterable of (inputs, target); inputs a tensor or a tuple of tensors.
        steps: how many steps; None for one pass over ``batches``, else ``batches`` is
            iterated again (a list or DataLoader) until ``steps`` are taken.
        loss_fn, reference_loss_fn: as in ``compare_gradients``.
        scheduler, reference_scheduler: LR schedulers stepped after each optimizer step.
        match: as in ``compare_gradients``.
        state_map: "auto" (the table above by the reference's class; the identity on shared
            keys when both optimizers have one class), "adam", "momentum", "identity", or a
            sequence of ``StateMapping`` for an optimizer of your own.
        rtol, atol: override the dtype's tolerance.

    Example:
        >>> ours = Adam(net.parameters(), lr=1e-2)
        >>> twin = net.to_torch(); theirs = torch.optim.Adam(twin.parameters(), lr=1e-2)
        >>> report = compare_training(net, ours, twin, theirs, [(X, Y)], steps=20)
        >>> print(report)
    """
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
        raise ValueError(f"steps must be a positive integer or None, got {steps!r}")
    pairs = _match_parameters(model, reference, match)
    mapping = _resolve_state_map(state_map, optimizer, reference_optimizer)
    loss_fn = _default_loss if loss_fn is None else loss_fn
    reference_loss_fn = loss_fn if reference_loss_fn is None else reference_loss_fn
    report = TrainingReport([StepRecord(0, _param_rows(pairs, rtol, atol))])
    ties: str | None = None  # ReLU ties in the batch where the gradients first part
    for t, (inputs, target) in enumerate(_batches(batches, steps), start=1):
        inputs = _as_tuple(inputs)
        hyper = (_snapshot(optimizer), _snapshot(reference_optimizer))
        J = _train_step(model, optimizer, inputs, target, loss_fn)
        J_r = _train_step(reference, reference_optimizer, inputs, target, reference_loss_fn)
        rows = [_compare("loss", "loss", J, J_r, rtol, atol)]
        rows += [
            _grad_row(f"grad {n}", f"grad {rn}", p.grad, rp.grad, rtol, atol)
            for n, p, rn, rp in pairs
        ]
        if report.passed and not all(r.passed for r in rows):
            ties = _tie_diagnosis(model, reference, inputs)  # before the update moves w
        optimizer.step()
        reference_optimizer.step()
        for s in (scheduler, reference_scheduler):
            if s is not None:
                s.step()
        rows += _param_rows(pairs, rtol, atol)
        rows += _state_rows(pairs, optimizer, reference_optimizer, mapping, rtol, atol)
        report.steps.append(StepRecord(t, rows, float(J), float(J_r), hyper))
    if len(report.steps) == 1:
        raise ValueError("batches gave no batch: nothing to compare")
    report.diagnosis = _diagnose(report, optimizer, reference_optimizer, ties)
    return report


# --------------------------------------------------------------------------------------
# backprop_trace
# --------------------------------------------------------------------------------------


def _mlp_layers(mlp: nn.Module) -> tuple[list[nn.Linear], int]:
    """The Linear layers of Linear, ReLU, ..., Linear (this package's MLP, or
    ``nn.Sequential`` of nn.Linear/nn.ReLU) and the ReLU convention they use."""
    modules = list(mlp.children()) if isinstance(mlp, nn.Sequential) else []
    if modules and all(hasattr(m, "relu_grad_at_zero") for m in modules[:-1]):
        linears = modules  # MLP: LinearReLU, ..., LinearReLU, Linear
        ok = all(isinstance(m, nn.Linear) for m in modules)
        conventions = {int(m.relu_grad_at_zero) for m in modules[:-1]}
        if ok and len(conventions) <= 1:
            return linears, conventions.pop() if conventions else 1
    linears, relus = modules[0::2], modules[1::2]
    if (
        len(modules) % 2 == 1
        and all(isinstance(m, nn.Linear) and not hasattr(m, "relu_grad_at_zero") for m in linears)
        and all(type(m) is nn.ReLU for m in relus)
    ):
        return linears, 0
    kinds = ", ".join(type(m).__name__ for m in modules) or type(mlp).__name__
    raise ValueError(
        "backprop_trace expects this package's MLP or nn.Sequential(Linear, ReLU, ..., "
        f"Linear), got {kinds}"
    )


@dataclass
class TraceReport(_Rows):
    """The lecture's backward pass, layer by layer, against autograd.

    Names follow the slides (layer l = 1..L, A[0] = X): ``dJ/dZ[l]``, ``dJ/dW[l]``,
    ``dJ/db[l]``, ``dJ/dA[l-1]``, in the order the backward computes them. Tensors are in
    PyTorch's row layout: dJ/dZ[l] is (m, n_l), the lecture's (n_l, m) transposed; dJ/dW[l]
    is (n_l, n_{l-1}) in both.

    Attributes:
        intermediates: name → the tensor computed by the lecture's formulas.
        autograd: name → autograd's value for the same tensor.
        rows: one ``ComparisonRow`` per name; ``passed``: every row passes.
        loss: J computed by hand; ``reference_loss``: autograd's forward.
        relu_grad_at_zero: the mask used, 1: 1{Z ≥ 0}, 0: 1{Z > 0}.
    """

    intermediates: dict[str, Tensor]
    autograd: dict[str, Tensor]
    rows: list[ComparisonRow]
    loss: float
    reference_loss: float
    relu_grad_at_zero: int

    def __bool__(self) -> bool:
        return self.passed

    def __getitem__(self, name: str) -> Tensor:
        return self.intermediates[name]

    def layer(self, l: int) -> dict[str, Tensor]:
        """dJ/dZ[l], dJ/dW[l], dJ/db[l] and dJ/dA[l-1] of layer l (1-based)."""
        names = (f"dJ/dZ[{l}]", f"dJ/dW[{l}]", f"dJ/db[{l}]", f"dJ/dA[{l - 1}]")
        return {n: self.intermediates[n] for n in names if n in self.intermediates}

    def __str__(self) -> str:
        verdict = "PASSED" if self.passed else "FAILED"
        mask = _MASK[self.relu_grad_at_zero]
        head = (
            f"backprop_trace: {verdict}, J = {self.loss:.6g} (autograd {self.reference_loss:.6g}), "
            f"ReLU mask {mask}"
        )
        return f"{head}\n{_rows_table(self.rows)}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "loss": self.loss,
            "reference_loss": self.reference_loss,
            "relu_grad_at_zero": self.relu_grad_at_zero,
            "rows": [r.to_dict() for r in self.rows],
        }


def _lecture_backward(
    Ws: list[Tensor], bs: list[Tensor | None], X: Tensor, Y: Tensor, relu_grad_at_zero: int
) -> tuple[dict[str, Tensor], Tensor]:
    """Appendix 2 on plain tensors (rows = examples). Returns the named gradients and J."""
    L = len(Ws)
    A, Z = [X], [X]  # A[0] = X; Z[0] unused
    for l in range(1, L + 1):
        # Z[l] = W[l] A[l-1] + b[l] as A[l-1] W[l]ᵀ + b[l]                   (m, n_l)
        # F.linear rather than `@` then `+`: the same kernel as the autograd side, so both
        # see bitwise the same Z and the same ReLU masks, even in float16.
        Z_l = F.linear(A[l - 1], Ws[l - 1], bs[l - 1])
        Z.append(Z_l)
        A.append(Z_l.clamp(min=0))  # A[l] = max(0, Z[l]) (A[L] unused: σ is in the loss)
    Y_hat = torch.sigmoid(Z[L])  # Ŷ = σ(Z[L])
    N = Z[L].numel()  # the lecture's m (one output per example)
    J = ((1 - Y) * Z[L] - F.logsigmoid(Z[L])).sum() / N  # (1/m) Σ −y log ŷ − (1−y) log(1−ŷ)
    out: dict[str, Tensor] = {}
    dZ = (Y_hat - Y) / N  # dJ/dZ[L] = (Ŷ − Y)/m                                 (m, n_L)
    for l in range(L, 0, -1):
        out[f"dJ/dZ[{l}]"] = dZ
        out[f"dJ/dW[{l}]"] = dZ.T @ A[l - 1]  # dJ/dW[l] = dJ/dZ[l] · A[l-1]ᵀ   (n_l, n_{l-1})
        if bs[l - 1] is not None:
            out[f"dJ/db[{l}]"] = dZ.sum(0)  # dJ/db[l] = Σᵢ [dJ/dZ[l]]ᵢ            (n_l,)
        dA_prev = dZ @ Ws[l - 1]  # dJ/dA[l-1] = W[l]ᵀ · dJ/dZ[l]                 (m, n_{l-1})
        out[f"dJ/dA[{l - 1}]"] = dA_prev
        if l > 1:
            mask = Z[l - 1] >= 0 if relu_grad_at_zero == 1 else Z[l - 1] > 0
            dZ = dA_prev * mask  # dJ/dZ[l-1] = dJ/dA[l-1] .* 1{Z[l-1] ≥ 0}
    return out, J


def _autograd_backward(
    Ws: list[Tensor], bs: list[Tensor | None], X: Tensor, Y: Tensor, relu_grad_at_zero: int
) -> tuple[dict[str, Tensor], Tensor]:
    """The same network in plain torch ops; autograd's gradient of every named tensor.

    The ReLU is ``clamp(min=0)`` for the lecture's mask (its derivative at 0 is 1) and
    ``torch.relu`` for PyTorch's (0), so both sides use one convention.
    """
    L = len(Ws)
    Ws = [W.detach().clone().requires_grad_(True) for W in Ws]
    bs = [None if b is None else b.detach().clone().requires_grad_(True) for b in bs]
    A = X.detach().clone().requires_grad_(True)
    As, Zs = [A], []
    with torch.enable_grad():
        for l in range(L):
            Z = F.linear(A, Ws[l], bs[l])
            Z.retain_grad()
            Zs.append(Z)
            if l < L - 1:
                A = Z.clamp(min=0) if relu_grad_at_zero == 1 else torch.relu(Z)
                A.retain_grad()
                As.append(A)
        J = F.binary_cross_entropy_with_logits(Zs[-1], Y)
        J.backward()
    out: dict[str, Tensor] = {}
    for l in range(L, 0, -1):
        out[f"dJ/dZ[{l}]"] = Zs[l - 1].grad
        out[f"dJ/dW[{l}]"] = Ws[l - 1].grad
        if bs[l - 1] is not None:
            out[f"dJ/db[{l}]"] = bs[l - 1].grad
        out[f"dJ/dA[{l - 1}]"] = As[l - 1].grad
    return out, J.detach()


def backprop_trace(
    mlp: nn.Module,
    X: Tensor,
    Y: Tensor,
    *,
    relu_grad_at_zero: int | None = None,
    rtol: float | None = None,
    atol: float | None = None,
) -> TraceReport:
    """The lecture's backward pass, executed by its formulas, next to autograd's.

    With J the mean binary cross-entropy of σ(Z[L]) against Y and, for l = L, ..., 1::

        dJ/dZ[L]   = (Ŷ − Y)/m
        dJ/dW[l]   = dJ/dZ[l] · A[l−1]ᵀ          (rows layout: dZᵀ · A_prev)
        dJ/db[l]   = Σᵢ [dJ/dZ[l]]ᵢ
        dJ/dA[l−1] = W[l]ᵀ · dJ/dZ[l]            (rows layout: dZ · W)
        dJ/dZ[l−1] = dJ/dA[l−1] .* 1{Z[l−1] ≥ 0}

    every line evaluated on plain tensors under ``torch.no_grad`` (no autograd, no Function
    of this package), and each result compared with autograd's gradient of the same tensor
    in the same network written in torch ops (``retain_grad`` on every Z[l] and A[l]).
    The model's own ``.grad`` is not touched.

    Args:
        mlp: this package's ``MLP``, or ``nn.Sequential(Linear, ReLU, ..., Linear)``.
        X: A[0], shape (m, n_0) (examples as rows).
        Y: targets in [0, 1], shape (m, n_L), or (m,) when n_L = 1.
        relu_grad_at_zero: the mask at Z = 0; default the MLP's (1 for the lecture's
            1{Z ≥ 0}), 0 for an ``nn.Sequential`` (torch.relu's 1{Z > 0}).
        rtol, atol: override the dtype's tolerance.

    Returns:
        A ``TraceReport``: ``report["dJ/dW[1]"]``, ``report.layer(2)``, ``.rows``,
        ``.passed``, ``str()``, ``.to_dict()``.

    Example:
        >>> trace = backprop_trace(MLP([4, 8, 1]), X, Y)
        >>> print(trace)               # one row per dJ/dZ[l], dJ/dW[l], dJ/db[l], dJ/dA[l-1]
        >>> trace["dJ/dZ[2]"]          # (Ŷ − Y)/m, shape (m, 1)
    """
    linears, convention = _mlp_layers(mlp)
    if relu_grad_at_zero is not None:
        if relu_grad_at_zero not in (0, 1) or isinstance(relu_grad_at_zero, bool):
            raise ValueError(f"relu_grad_at_zero must be 1 or 0, got {relu_grad_at_zero!r}")
        convention = int(relu_grad_at_zero)
    W0 = linears[0].weight
    if X.dim() != 2 or X.shape[1] != W0.shape[1]:
        raise ValueError(f"X must have shape (m, {W0.shape[1]}), got {tuple(X.shape)}")
    n_out = linears[-1].weight.shape[0]
    if Y.shape == (X.shape[0],) and n_out == 1:
        Y = Y.reshape(-1, 1)  # the lecture's row vector y as a column of targets
    if Y.shape != (X.shape[0], n_out):
        raise ValueError(f"Y must have shape ({X.shape[0]}, {n_out}), got {tuple(Y.shape)}")
    if X.device != W0.device:
        raise ValueError(f"X is on {X.device} but the MLP's weights are on {W0.device}")
    X = X.to(W0.dtype)
    Y = Y.to(device=X.device, dtype=W0.dtype)
    Ws = [m.weight.detach() for m in linears]
    bs = [None if m.bias is None else m.bias.detach() for m in linears]
    with torch.no_grad():
        manual, J = _lecture_backward(Ws, bs, X, Y, convention)
    auto, J_auto = _autograd_backward(Ws, bs, X, Y, convention)
    rows = [_compare("J", "J", J, J_auto, rtol, atol)]
    rows += [_grad_row(n, n, manual[n], auto.get(n), rtol, atol) for n in manual]
    return TraceReport(manual, auto, rows, float(J), float(J_auto), convention)
