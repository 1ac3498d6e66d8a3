"""What if ``torch_manual_bp.functions`` made the changes proposed in docs/benchmarks.md?

    python benchmarks/what_if.py                    # small, medium, large; 1 thread
    python benchmarks/what_if.py medium --threads 2 --rounds 31

Patches the two changes into the loaded module (nothing on disk changes), checks that the
patched MLP gives bit-for-bit the gradients of the current one, then times, interleaved:
torch, ours now, ours + (1) the bool-free ReLU mask, ours + (1) + (2) the direct ``apply``,
and the same for ``relu_grad_at_zero=0``. Once functions.py has the changes, this script
has nothing left to show (the "now" rows then already contain them).

(1) The lecture's mask without bool tensors. On CPU every kernel that reads a bool tensor
    (``masked_fill_``, ``where``, multiplying by a bool) runs about 30× slower than a float
    kernel of the same size, and the current mask reads one in forward and in backward.
(2) ``Function.apply`` of a ``setup_context``-style Function re-binds its arguments with
    ``inspect.signature`` on every call; the direct path skips that outside torch.func and
    torch.compile.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch
import torch.nn.functional as F

import torch_manual_bp.functions as fx
from benchmarks import bench_mlp
from benchmarks.timing import compare, fmt_ratio, fmt_time_iqr

# (1) ---------------------------------------------------------------------------------------

# The negative number closest to 0 in each dtype: Z > it  <=>  Z >= -0.0.
_NEG_TINY = {
    torch.float64: -(2.0**-1074),
    torch.float32: -(2.0**-149),
    torch.bfloat16: -(2.0**-133),
    torch.float16: -(2.0**-24),
}


def relu_lecture(Z: torch.Tensor) -> torch.Tensor:
    """As ``functions.relu_lecture``: A = Z where Z > 0, +0.0 where Z = ±0, −0.0 where Z < 0.

    ``Z + 0.0`` turns −0.0 into +0.0 (−0 ≥ 0: the lecture's mask passes it); ``threshold_``
    then writes −0.0 wherever Z < 0. Two vectorised passes, no bool tensor.
    """
    return F.threshold_(Z.add_(0.0), _NEG_TINY[Z.dtype], -0.0)


def _relu_mask_grad(dA: torch.Tensor, A: torch.Tensor, relu_grad_at_zero: int) -> torch.Tensor:
    """As ``functions._relu_mask_grad``, with nn.ReLU's own backward kernel."""
    if relu_grad_at_zero == 1:
        A = (A + 1).copysign_(A)  # > 0 exactly where A's sign bit is clear
    return torch.ops.aten.threshold_backward(dA, A, 0)  # dA where A > 0, else 0


# (2) ---------------------------------------------------------------------------------------


def _direct_apply(cls, *args):
    # Function.apply binds the arguments with inspect.signature on every call when
    # setup_context is defined. Ours are always called with every argument positionally.
    if torch._C._are_functorch_transforms_active() or torch.compiler.is_compiling():
        return torch.autograd.Function.apply.__func__(cls, *args)
    args = torch._functorch.utils.unwrap_dead_wrappers(args)
    return super(torch.autograd.Function, cls).apply(*args)  # the C++ _FunctionBase.apply


_ORIGINAL = {"relu_lecture": fx.relu_lecture, "_relu_mask_grad": fx._relu_mask_grad}
_FUNCTIONS = (fx.LinearFunction, fx.LinearReLUFunction, fx.SigmoidBCEFunction)


def _patch(mask: bool, apply: bool) -> None:
    fx.relu_lecture = relu_lecture if mask else _ORIGINAL["relu_lecture"]
    fx._relu_mask_grad = _relu_mask_grad if mask else _ORIGINAL["_relu_mask_grad"]
    for cls in _FUNCTIONS:
        if apply:
            cls.apply = classmethod(_direct_apply)
        elif "apply" in cls.__dict__:
            del cls.apply


def _grads(model, loss_fn, x, y) -> list[torch.Tensor]:
    model.zero_grad(set_to_none=True)
    loss_fn(x, y).backward()
    return [p.grad.clone() for p in model.parameters()]


def what_if(size: bench_mlp.Size, rounds: int, min_block_s: float) -> dict:
    models, x, y = bench_mlp._case(size, torch.device("cpu"))
    fns = {}
    for label, name in (("torch", "torch"), ("ours", "ours"), ("ours/0", "ours/0")):
        model = models[name]
        loss_fn = bench_mlp._loss_fn(name, model)
        step = bench_mlp._fwd_bwd(model, loss_fn, x, y)
        if name != "torch":
            _patch(False, False)
            before = _grads(model, loss_fn, x, y)
            _patch(True, True)
            after = _grads(model, loss_fn, x, y)
            _patch(False, False)
            if not all(torch.equal(a, b) for a, b in zip(before, after, strict=True)):
                raise AssertionError(f"{size.name} {name}: patched gradients differ")
        variants = [(False, False)] if name == "torch" else [(False, False), (True, False),
                                                              (True, True)]  # fmt: skip
        for mask, apply in variants:
            suffix = {(False, False): " now", (True, False): " + (1)", (True, True): " + (1)+(2)"}
            key = label if name == "torch" else label + suffix[(mask, apply)]

            def run(step=step, mask=mask, apply=apply) -> None:
                _patch(mask, apply)
                step()

            fns[key] = run
    c = compare(fns, rounds=rounds, min_block_s=min_block_s)
    _patch(False, False)
    return {k: (c.median(k), c.iqr(k), c.ratio(k, "torch"), c.ratio_iqr(k, "torch")) for k in fns}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("sizes", nargs="*", default=[s.name for s in bench_mlp.SIZES])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=15)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    by_name = {s.name: s for s in bench_mlp.SIZES}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s); eager fwd+bwd\n")
    print("| size | variant | time (median [IQR]) | ÷ torch [IQR] |\n|---|---|---|---|")
    for name in args.sizes:
        for key, (t, q, r, rq) in what_if(by_name[name], args.rounds, 0.1).items():
            print(f"| {name} | {key} | {fmt_time_iqr(t, q)} | {fmt_ratio(r, rq)} |", flush=True)


if __name__ == "__main__":
    main()
