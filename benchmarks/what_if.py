"""What if ``torch_manual_bp.functions`` made the changes proposed in docs/benchmarks.md?

    python benchmarks/what_if.py                    # small, medium, large; eager; 1 thread
    python benchmarks/what_if.py medium --threads 2 --rounds 31
    python benchmarks/what_if.py medium large --compiled

Patches the changes into the loaded module (nothing on disk changes), checks that every
variant gives bit-for-bit the gradients of the current code, then times, interleaved, for
``relu_grad_at_zero=1`` ("ours") and ``=0`` ("ours/0"): torch, ours now, + (1), + (1)+(2),
and + (1) with (3). Once functions.py has a change, its rows equal the "now" row.

(1) A float-only ReLU mask. Until b98bf53 functions.py read bool tensors (on CPU about 30×
    slower than a float kernel; compiled, Inductor's ``signbit`` is not vectorised); it now
    has its own float-only formula, so the "(1)" rows compare two float-only formulas.
(2) ``Function.apply`` of a ``setup_context``-style Function re-binds its arguments with
    ``inspect.signature`` on every call; the direct path skips that outside torch.func and
    torch.compile.
(3) One ``autograd.Function`` for the whole MLP (a prototype, eager only): the Python cost
    of a Function call once per network instead of once per layer.
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
from torch_manual_bp.functional import sigmoid_bce

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


# (3) ---------------------------------------------------------------------------------------


class MLPFunction(torch.autograd.Function):
    """A prototype: every layer of an ``MLP`` in ONE Function, so that the Python cost of a
    Function call is paid once per network, not once per layer. With (1) inside.

    forward: A[l] = relu(A[l-1] W[l]ᵀ + b[l]) for l < L, Z[L] = A[L-1] W[L]ᵀ + b[L].
    backward, the lecture's loop for l = L, …, 1:
        dW[l] = dZ[l]ᵀ A[l-1],  db[l] = Σᵢ dZ[l],  dZ[l-1] = (dZ[l] W[l]) .* 1{Z[l-1] ≥ 0}
    Saves A[0..L-1] and the W's: what the per-layer Functions save.
    """

    @staticmethod
    def forward(ctx, x, relu_grad_at_zero, *Wb):
        L = len(Wb) // 2
        A, activations = x, [x]
        for l in range(L):
            Z = F.linear(A, Wb[2 * l], Wb[2 * l + 1])
            if l == L - 1:
                break
            A = relu_lecture(Z) if relu_grad_at_zero == 1 else Z.relu_()
            activations.append(A)
        ctx.save_for_backward(*activations, *Wb[0::2])
        ctx.L, ctx.relu_grad_at_zero = L, relu_grad_at_zero
        return Z

    @staticmethod
    def backward(ctx, dZ):
        L = ctx.L
        A, W = ctx.saved_tensors[:L], ctx.saved_tensors[L:]
        grads = [None] * (2 * L)
        for l in reversed(range(L)):
            grads[2 * l] = dZ.mT @ A[l]  # dW[l] = dZ[l]ᵀ A[l-1]
            grads[2 * l + 1] = dZ.sum(0)  # db[l] = Σᵢ dZ[l]
            if l > 0:
                dZ = _relu_mask_grad(dZ @ W[l], A[l], ctx.relu_grad_at_zero)
        return (None, None, *grads)


def _one_function_loss(model):
    Wb = list(model.parameters())
    rgz = model.relu_grad_at_zero
    return lambda x, y: sigmoid_bce(MLPFunction.apply(x, rgz, *Wb), y)


# ---------------------------------------------------------------------------------------------


def _grads(model, loss_fn, x, y) -> list[torch.Tensor]:
    model.zero_grad(set_to_none=True)
    loss_fn(x, y).backward()
    return [p.grad.clone() for p in model.parameters()]


def what_if(size: bench_mlp.Size, rounds: int, min_block_s: float) -> dict:
    """Eager forward+backward of torch and of every variant, interleaved."""
    models, x, y = bench_mlp._case(size, torch.device("cpu"))
    fns = {}
    twin = models["torch"]
    fns["torch"] = bench_mlp._fwd_bwd(twin, bench_mlp._loss_fn("torch", twin), x, y)
    for name in ("ours", "ours/0"):
        model = models[name]
        loss_fn = bench_mlp._loss_fn(name, model)
        _patch(False, False)
        now = _grads(model, loss_fn, x, y)
        _patch(True, True)
        for other in (loss_fn, _one_function_loss(model)):
            got = _grads(model, other, x, y)
            if not all(torch.equal(a, b) for a, b in zip(now, got, strict=True)):
                raise AssertionError(f"{size.name} {name}: a variant's gradients differ")
        variants = {
            " now": (loss_fn, False, False),
            " + (1)": (loss_fn, True, False),
            " + (1)+(2)": (loss_fn, True, True),
            " + (1), (3)": (_one_function_loss(model), True, False),
        }
        for suffix, (f, mask, apply) in variants.items():
            step = bench_mlp._fwd_bwd(model, f, x, y)

            def run(step=step, mask=mask, apply=apply) -> None:
                _patch(mask, apply)
                step()

            fns[name + suffix] = run
    c = compare(fns, rounds=rounds, min_block_s=min_block_s)
    _patch(False, False)
    return {k: (c.median(k), c.iqr(k), c.ratio(k, "torch"), c.ratio_iqr(k, "torch")) for k in fns}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("sizes", nargs="*", default=[s.name for s in bench_mlp.SIZES])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--compiled", action="store_true", help="torch.compile, with (1) and (2) only")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    by_name = {s.name: s for s in bench_mlp.SIZES}
    if args.compiled:  # a compiled graph keeps what it traced: patch once, before compiling
        _patch(True, True)
        sizes = tuple(by_name[n] for n in args.sizes)
        rows = bench_mlp.bench_fwd_bwd(compiled=True, sizes=sizes, rounds=args.rounds)
        print("With (1) and (2) patched in, compiled; ours/0 is relu_grad_at_zero=0\n")
        print(bench_mlp.fwd_bwd_table(rows, {}))
        return
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s); eager fwd+bwd\n")
    print("| size | variant | time (median [IQR]) | ÷ torch [IQR] |\n|---|---|---|---|")
    for name in args.sizes:
        for key, (t, q, r, rq) in what_if(by_name[name], args.rounds, 0.1).items():
            print(f"| {name} | {key} | {fmt_time_iqr(t, q)} | {fmt_ratio(r, rq)} |", flush=True)


if __name__ == "__main__":
    main()
