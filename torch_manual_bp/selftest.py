"""``python -m torch_manual_bp parity``: every Function and optimizer of the package against
PyTorch, on this machine's device and dtype, as one table.

Run it on a new machine or GPU before trusting the package::

    python -m torch_manual_bp parity --device all --dtype float32
    python -m torch_manual_bp.selftest --device cpu --dtype float64      # the same, standalone

Each check is one call of a parity tool (``compare_gradients`` or ``compare_training``) on a
tiny seeded problem; its line shows the worst row: the largest max|a − b| relative to its
threshold atol + rtol·max|ref| (see ``torch_manual_bp.parity``). Exit status 0 when every
check passes, 1 otherwise, 2 for a device that is not there.

The checks:

- ``linear`` (with bias, without, with leading batch dims): output, J, dJ/dW, dJ/db, dJ/dX
  against ``nn.Linear``;
- ``linear_relu`` in both conventions, on a batch with exact ties Z = 0:
  ``relu_grad_at_zero=0`` against ``nn.Linear`` + ``nn.ReLU`` (mask 1{Z > 0}),
  ``relu_grad_at_zero=1`` against ``nn.Linear`` + ``clamp(min=0)`` (mask 1{Z ≥ 0});
- ``sigmoid_bce`` for every reduction, with ``weight``, ``pos_weight`` and logits of ±1e4:
  J, dJ/dZ and dJ/dY against ``F.binary_cross_entropy_with_logits``;
- the ``MLP`` against its ``to_torch()`` twin, and ``backprop_trace`` against autograd;
- ``Momentum(α, β)`` against ``SGD(lr=α(1−β), momentum=β)``, ``bias_correction=True``
  against SGD under ``LambdaLR(lambda e: 1/(1 − β**(e + 1)))``, and ``Adam`` against
  ``torch.optim.Adam`` (amsgrad, weight decay, AdamW, maximize), each on the per-tensor, the
  multi-tensor and the fused path (against PyTorch's fused Adam; skipped on CUDA and where
  the kernel cannot be built), every parameter and state tensor at every step. The amsgrad
  checks use β₂ = 0.5, gradients shrinking as 1/t and at least 3 steps, so that s falls
  below s_max (an error when it never does: the check would prove nothing).
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from . import functional as mbpF
from . import nn as mbpnn
from .parity import (
    ComparisonRow,
    backprop_trace,
    compare_gradients,
    compare_training,
)

__all__ = ["configure_parser", "run", "main"]

_DTYPES = {
    "float64": torch.float64,
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}


# --------------------------------------------------------------------------------------
# Small modules the checks need
# --------------------------------------------------------------------------------------


class _ClampReLU(nn.Module):
    """max(0, Z) whose autograd mask is 1{Z ≥ 0}: the lecture's convention in torch ops."""

    def forward(self, Z: torch.Tensor) -> torch.Tensor:
        return Z.clamp(min=0)


class _Logits(nn.Module):
    """Holds logits Z as a parameter and returns loss_fn(Z, Y): a loss Function made into a
    module, so that compare_gradients sees dJ/dZ (parameter) and dJ/dY (input)."""

    def __init__(self, Z: torch.Tensor, loss: Callable[..., torch.Tensor], **kw) -> None:
        super().__init__()
        self.Z = nn.Parameter(Z.clone())
        self.loss = loss
        self.kw = kw

    def forward(self, Y: torch.Tensor) -> torch.Tensor:
        return self.loss(self.Z, Y, **self.kw)


def _weighted_sum(out: torch.Tensor, R: torch.Tensor) -> torch.Tensor:
    """J = Σ R ⊙ out: an arbitrary incoming gradient dJ/dout = R."""
    return (out * R).sum()


# --------------------------------------------------------------------------------------
# The checks: each returns the rows of one report
# --------------------------------------------------------------------------------------


@dataclass
class _Ctx:
    device: torch.device
    dtype: torch.dtype
    steps: int
    seed: int

    def randn(self, *shape: int) -> torch.Tensor:
        return torch.randn(*shape, device=self.device, dtype=self.dtype)

    def target(self, *shape: int) -> torch.Tensor:
        return torch.randint(0, 2, shape, device=self.device).to(self.dtype)


def _torch_linear(ours: nn.Linear) -> nn.Linear:
    twin = nn.Linear(
        ours.in_features,
        ours.out_features,
        bias=ours.bias is not None,
        device=ours.weight.device,
        dtype=ours.weight.dtype,
    )
    twin.load_state_dict(ours.state_dict())
    return twin


def _check_linear(ctx: _Ctx, bias: bool = True, batch: tuple[int, ...] = (8,)):
    layer = mbpnn.Linear(5, 3, bias=bias, device=ctx.device, dtype=ctx.dtype)
    X, R = ctx.randn(*batch, 5), ctx.randn(*batch, 3)
    return compare_gradients(layer, _torch_linear(layer), X, R, _weighted_sum)


def _tied_linear_relu(ctx: _Ctx, relu_grad_at_zero: int):
    """A LinearReLU and a batch where some Z are exactly 0 (zero rows of X, zero bias row)."""
    layer = mbpnn.LinearReLU(
        5, 4, relu_grad_at_zero=relu_grad_at_zero, device=ctx.device, dtype=ctx.dtype
    )
    with torch.no_grad():
        layer.bias[:2] = 0
    X = ctx.randn(8, 5)
    X[:3] = 0  # Z = b there: exact ties in the units with zero bias
    return layer, X, ctx.randn(8, 4)


def _check_linear_relu(ctx: _Ctx, relu_grad_at_zero: int):
    layer, X, R = _tied_linear_relu(ctx, relu_grad_at_zero)
    relu = _ClampReLU() if relu_grad_at_zero == 1 else nn.ReLU()
    reference = nn.Sequential(_torch_linear(layer), relu)
    return compare_gradients(layer, reference, X, R, _weighted_sum)


def _check_sigmoid_bce(
    ctx: _Ctx,
    reduction: str = "mean",
    weight: bool = False,
    pos_weight: bool = False,
    scale: float = 3.0,
):
    Z = ctx.randn(8, 3) * scale
    Y = torch.rand(8, 3, device=ctx.device).to(ctx.dtype)  # soft targets: dJ/dY too
    kw = {"reduction": reduction}
    if weight:
        kw["weight"] = torch.rand(3, device=ctx.device).to(ctx.dtype)
    if pos_weight:
        kw["pos_weight"] = (torch.rand(3, device=ctx.device) * 3).to(ctx.dtype)
    ours = _Logits(Z, mbpF.sigmoid_bce, **kw)
    theirs = _Logits(Z, F.binary_cross_entropy_with_logits, **kw)
    R = ctx.randn(8, 3)

    def loss(out: torch.Tensor, _target: object) -> torch.Tensor:
        return _weighted_sum(out, R) if reduction == "none" else out

    return compare_gradients(ours, theirs, Y, None, loss)


def _check_mlp(ctx: _Ctx):
    net = mbpnn.MLP([5, 8, 6, 1], relu_grad_at_zero=0, device=ctx.device, dtype=ctx.dtype)
    X, Y = ctx.randn(16, 5), ctx.target(16, 1)
    return compare_gradients(
        net,
        net.to_torch(),
        X,
        Y,
        mbpF.sigmoid_bce,
        reference_loss_fn=F.binary_cross_entropy_with_logits,
    )


def _check_trace(ctx: _Ctx):
    net = mbpnn.MLP([5, 8, 6, 1], device=ctx.device, dtype=ctx.dtype)
    return backprop_trace(net, ctx.randn(16, 5), ctx.target(16))


def _optim_problem(ctx: _Ctx):
    """A small torch network (so gradients agree exactly) and a few batches."""
    net = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 1)).to(ctx.device, ctx.dtype)
    batches = [(ctx.randn(8, 5), ctx.target(8, 1)) for _ in range(3)]
    return net, copy.deepcopy(net), batches


class _Skip(Exception):
    """A check that does not apply here (the fused kernel on CUDA, no C++ compiler)."""


# The optimizers' code paths: per-tensor loop, multi-tensor (torch._foreach_*), fused kernel.
_PATHS = {
    "per-tensor": {"foreach": False},
    "multi-tensor": {"foreach": True},
    "fused": {"foreach": False, "fused": True},
}


def _path_kwargs(ctx: _Ctx, path: str) -> dict:
    if path == "fused":
        from .optim import _fused

        if ctx.device.type != "cpu":
            raise _Skip("the fused kernel is CPU-only")
        if not _fused.available():
            raise _Skip("the fused kernel cannot be built here (no C++ compiler?)")
    return dict(_PATHS[path])


def _reference_path(path: str) -> dict:
    """PyTorch's matching path for our fused Adam: its own fused Adam. Both fused kernels
    compute in float32 for float16 parameters, whereas the unfused Adam computes in float16,
    where (1 − β₂)g² underflows to 0 and the step becomes m̂/ε: they cannot agree there.
    (Our fused Momentum is checked against the unfused SGD: in torch 2.13 the CPU fused SGD's
    float16 momentum buffer is far from float64's, while the unfused one is not.)"""
    return {"fused": True} if path == "fused" else {}


def _check_momentum(ctx: _Ctx, path: str, **kw):
    from .optim import Momentum

    net, twin, batches = _optim_problem(ctx)
    alpha, beta = 0.1, 0.9
    ours = Momentum(net.parameters(), lr=alpha, momentum=beta, **_path_kwargs(ctx, path), **kw)
    extra = {k: v for k, v in kw.items() if k in ("weight_decay", "maximize")}
    theirs = torch.optim.SGD(twin.parameters(), lr=alpha * (1 - beta), momentum=beta, **extra)
    schedule = None
    if kw.get("bias_correction"):
        # Slide 2's m̂ = m/(1 − βᵗ): SGD's lr at step t (after t − 1 scheduler steps,
        # LambdaLR's epoch e = t − 1) must be α(1 − β)/(1 − βᵗ).
        schedule = torch.optim.lr_scheduler.LambdaLR(theirs, lambda e: 1 / (1 - beta ** (e + 1)))
    return compare_training(
        net, ours, twin, theirs, batches, ctx.steps, reference_scheduler=schedule
    )


def _shrinking_batches(ctx: _Ctx, n: int) -> list:
    """n batches (X, (Y, c)) whose loss c·J is scaled by c = 1/t at step t: the gradients
    shrink, so s(t) = β₂ s(t−1) + (1 − β₂) g² falls below its running maximum s_max."""
    return [(ctx.randn(8, 5), (ctx.target(8, 1), 1.0 / t)) for t in range(1, n + 1)]


def _scaled_bce(out: torch.Tensor, target: tuple[torch.Tensor, float]) -> torch.Tensor:
    Y, c = target
    return c * F.binary_cross_entropy_with_logits(out, Y)


def _s_max_gap(reference: torch.optim.Optimizer) -> float:
    """max (s_max − s) over the reference Adam's state: > 0 when AMSGrad's ŝ differs."""
    gaps = [
        float((st["max_exp_avg_sq"] - st["exp_avg_sq"]).max())
        for st in reference.state.values()
        if "max_exp_avg_sq" in st
    ]
    return max(gaps, default=0.0)


def _check_adam(ctx: _Ctx, path: str, **kw):
    from .optim import Adam

    net, twin, batches = _optim_problem(ctx)
    steps, loss = ctx.steps, {}
    amsgrad = kw.get("amsgrad", False)
    if amsgrad:
        # With growing s (β₂ = 0.999 over a few steps) s_max = s and dividing by s instead of
        # s_max would pass: β₂ = 0.5 and shrinking gradients put s below s_max from step 2.
        kw["betas"] = (0.9, 0.5)
        steps = max(steps, 3)
        batches, loss = _shrinking_batches(ctx, steps), {"loss_fn": _scaled_bce}
    # ε = 1e-8 is 0 in float16 (and √ŝ underflows): 0/0 on both sides would prove nothing.
    kw.setdefault("eps", 1e-8 if ctx.dtype.itemsize >= 4 else 1e-3)
    ours = Adam(net.parameters(), lr=0.01, **_path_kwargs(ctx, path), **kw)
    reference_cls = (
        torch.optim.AdamW if kw.pop("decoupled_weight_decay", False) else torch.optim.Adam
    )
    if reference_cls is torch.optim.AdamW:
        kw.setdefault("weight_decay", 0.0)
    theirs = reference_cls(twin.parameters(), lr=0.01, **kw, **_reference_path(path))
    report = compare_training(net, ours, twin, theirs, batches, steps, **loss)
    if amsgrad and not _s_max_gap(theirs) > 0:
        raise RuntimeError("the amsgrad check proves nothing: s_max = s at every coordinate")
    return report


def _checks() -> list[tuple[str, Callable[[_Ctx], object]]]:
    """(name, check) for every Function and optimizer of the package."""
    checks: list[tuple[str, Callable[[_Ctx], object]]] = [
        ("linear", _check_linear),
        ("linear, bias=None", lambda c: _check_linear(c, bias=False)),
        ("linear, batch dims (2, 4, in)", lambda c: _check_linear(c, batch=(2, 4))),
        ("linear_relu, relu_grad_at_zero=0, ties", lambda c: _check_linear_relu(c, 0)),
        ("linear_relu, relu_grad_at_zero=1, ties", lambda c: _check_linear_relu(c, 1)),
        ("sigmoid_bce, reduction=mean", _check_sigmoid_bce),
        ("sigmoid_bce, reduction=sum", lambda c: _check_sigmoid_bce(c, "sum")),
        ("sigmoid_bce, reduction=none", lambda c: _check_sigmoid_bce(c, "none")),
        ("sigmoid_bce, weight", lambda c: _check_sigmoid_bce(c, weight=True)),
        ("sigmoid_bce, pos_weight", lambda c: _check_sigmoid_bce(c, pos_weight=True)),
        (
            "sigmoid_bce, weight+pos_weight, sum",
            lambda c: _check_sigmoid_bce(c, "sum", weight=True, pos_weight=True),
        ),
        ("sigmoid_bce, logits ±1e4", lambda c: _check_sigmoid_bce(c, scale=1e4)),
        ("MLP vs to_torch()", _check_mlp),
        ("backprop_trace vs autograd", _check_trace),
    ]
    momentum_variants = [
        ("Momentum ≡ SGD(lr=α(1−β), momentum=β)", {}),
        ("Momentum, weight_decay", {"weight_decay": 0.01}),
        ("Momentum, maximize", {"maximize": True}),
        ("Momentum, bias_correction ≡ SGD+LambdaLR", {"bias_correction": True}),
    ]
    adam_variants = [
        ("Adam ≡ torch.optim.Adam", {}),
        ("Adam, amsgrad", {"amsgrad": True}),
        ("Adam, weight_decay", {"weight_decay": 0.01}),
        (
            "Adam, decoupled_weight_decay ≡ AdamW",
            {"decoupled_weight_decay": True, "weight_decay": 0.01},
        ),
        ("Adam, maximize", {"maximize": True}),
    ]
    for path in _PATHS:
        for name, kw in momentum_variants:
            checks.append(
                (f"{name} [{path}]", lambda c, p=path, kw=kw: _check_momentum(c, p, **kw))
            )
        for name, kw in adam_variants:
            checks.append(
                (f"{name} [{path}]", lambda c, p=path, kw=kw: _check_adam(c, p, **dict(kw)))
            )
    return checks


# --------------------------------------------------------------------------------------
# Running and printing
# --------------------------------------------------------------------------------------


@dataclass
class _Result:
    device: str
    name: str
    worst: ComparisonRow | None
    passed: bool
    report: object = None
    error: str = ""
    skipped: str = ""  # why the check does not apply here (passed stays True)


def _all_rows(report: object) -> list[ComparisonRow]:
    if hasattr(report, "steps"):
        return [r for s in report.steps for r in s.rows]
    return list(report.rows)


def _run_check(ctx: _Ctx, name: str, check: Callable[[_Ctx], object]) -> _Result:
    torch.manual_seed(ctx.seed)
    device = str(ctx.device)
    try:
        report = check(ctx)
    except _Skip as e:
        return _Result(device, name, None, True, skipped=str(e))
    except TypeError as e:
        if "fused=True does not support" in str(e):  # e.g. float16 without _Float16
            return _Result(device, name, None, True, skipped=str(e))
        return _Result(device, name, None, False, error=f"TypeError: {e}")
    except Exception as e:  # a check that cannot run is a failed check, with the reason
        return _Result(device, name, None, False, error=f"{type(e).__name__}: {e}")
    rows = _all_rows(report)
    worst = max(rows, key=lambda r: r.ratio, default=None)
    return _Result(device, name, worst, bool(report.passed), report)


def _print_table(results: list[_Result], out) -> None:
    from .parity import _fmt, _table  # the same table layout as the reports

    lines = []
    for r in results:
        diff = _fmt(r.worst.max_abs) if r.worst else "-"
        tol = _fmt(r.worst.tolerance) if r.worst else "-"
        verdict = "skip" if r.skipped else "pass" if r.passed else "ERROR" if r.error else "FAIL"
        lines.append([r.device, r.name, diff, tol, verdict])
    print(_table(("device", "check", "max difference", "tolerance", "result"), lines), file=out)


def _devices(choice: str) -> list[torch.device] | str:
    """The devices to test, or the error message when CUDA was asked for and is missing."""
    if choice == "cpu":
        return [torch.device("cpu")]
    if not torch.cuda.is_available():
        if choice == "cuda":
            return (
                f"--device cuda: CUDA is not available on this machine "
                f"(torch {torch.__version__}, built with CUDA {torch.version.cuda}); "
                f"use --device cpu"
            )
        return [torch.device("cpu")]
    if choice == "cuda":
        return [torch.device("cuda")]
    return [torch.device("cpu"), torch.device("cuda")]


_DESCRIPTION = """\
Check every Function (linear, linear_relu in both ReLU conventions, sigmoid_bce with each
reduction and weights) and every optimizer (Momentum against SGD, bias-corrected Momentum
against SGD under LambdaLR, Adam against torch.optim.Adam/AdamW) of torch_manual_bp against
PyTorch on this machine, and print one table: check, max difference, tolerance, result.
Exit status: 0 when every check passes, 1 when one fails, 2 when the device is missing."""

_EPILOG = """\
examples:
  %(prog)s                                 # CPU, float32
  %(prog)s --device all --dtype float64    # CPU and CUDA (when present), float64
  %(prog)s --dtype bfloat16 --verbose      # every row of a failing check"""


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Add the self-test's options to ``parser`` (used by ``python -m torch_manual_bp parity``);
    also sets its description and epilog."""
    parser.description = _DESCRIPTION
    parser.epilog = _EPILOG
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument(
        "--device",
        choices=("cpu", "cuda", "all"),
        default="cpu",
        help="where to run the checks; 'all' = cpu, and cuda when available (default: cpu)",
    )
    parser.add_argument(
        "--dtype",
        choices=tuple(_DTYPES),
        default="float32",
        help="dtype of every tensor; the tolerance follows it (default: float32)",
    )
    parser.add_argument(
        "--steps", type=int, default=5, help="optimizer steps per optimizer check (default: 5)"
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="print the full report of failing checks"
    )


def run(args: argparse.Namespace) -> int:
    """Run every check and print one table; 0 when all pass, 1 otherwise, 2 without CUDA."""
    devices = _devices(args.device)
    if isinstance(devices, str):
        print(f"error: {devices}", file=sys.stderr)
        return 2
    if args.steps < 1:
        print(f"error: --steps must be >= 1, got {args.steps}", file=sys.stderr)
        return 2
    from . import __version__

    dtype = _DTYPES[args.dtype]
    print(
        f"torch_manual_bp {__version__} parity self-test: torch {torch.__version__}, "
        f"dtype {args.dtype}, device {', '.join(map(str, devices))}"
    )
    if args.device == "all" and len(devices) == 1:
        print("note: CUDA is not available; checking the CPU only")
    start = time.perf_counter()
    results = [
        _run_check(_Ctx(device, dtype, args.steps, args.seed), name, check)
        for device in devices
        for name, check in _checks()
    ]
    _print_table(results, sys.stdout)
    failed = [r for r in results if not r.passed]
    took = time.perf_counter() - start
    for reason in sorted({r.skipped for r in results if r.skipped}):
        n = sum(r.skipped == reason for r in results)
        print(f"skipped {n} checks: {reason}")
    ran = [r for r in results if not r.skipped]
    if not failed:
        print(f"all {len(ran)} checks passed in {took:.1f} s")
        return 0
    print(f"{len(failed)} of {len(ran)} checks FAILED ({took:.1f} s):")
    for r in failed:
        detail = r.error or (
            str(r.report) if args.verbose else getattr(r.report, "diagnosis", None)
        )
        print(f"- [{r.device}] {r.name}" + (f": {detail}" if detail else ""))
    if not args.verbose:
        print("(rerun with --verbose for every row of the failing checks)")
    return 1


def main(argv: list[str] | None = None) -> int:
    """``python -m torch_manual_bp.selftest [--device ...] [--dtype ...]``."""
    parser = argparse.ArgumentParser(prog="python -m torch_manual_bp.selftest")
    configure_parser(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
