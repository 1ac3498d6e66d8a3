"""What if ``torch_manual_bp.functions`` made the changes proposed in docs/benchmarks.md?

    python benchmarks/what_if.py                    # small, medium, large; eager; 1 thread
    python benchmarks/what_if.py small --threads 2 --rounds 31
    python benchmarks/what_if.py medium large --compiled

Patches the changes into the loaded module (nothing on disk changes), checks that every
variant gives bit-for-bit the gradients of the current code, then times, interleaved, for
``relu_grad_at_zero=1`` ("ours") and ``=0`` ("ours/0"): torch, ours now, + (1), + (3), and
+ (1) with (3).

(1) The lecture's ReLU mask with no temporary tensor: forward ``threshold_(Z + 0, −tiny,
    −0.0)`` in place (functions.py: ``add_``, ``sign`` (a temporary), ``mul_``, ``clamp_``);
    backward the same key 1/A + A, built in the result's buffer in a plain eager backward.
    On CPU every fresh temporary of a few MB is fresh memory from the OS (page faults), which
    costs more than the arithmetic. (Until b98bf53 functions.py read bool tensors, about 30×
    slower than a float kernel on CPU: that was the eager gap at medium and large. Until
    0ba6191 every eager call paid ``inspect.signature`` binding in ``Function.apply``.)
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
    then writes −0.0 wherever Z < 0. Two in-place passes: no temporary tensor.
    """
    return F.threshold_(Z.add_(0.0), _NEG_TINY[Z.dtype], -0.0)


def _eager() -> bool:
    return not (
        torch.is_grad_enabled()  # a double backward records this: out= has no autograd
        or torch._C._are_functorch_transforms_active()
        or torch.compiler.is_compiling()
    )


def _relu_mask_grad(dA: torch.Tensor, A: torch.Tensor, relu_grad_at_zero: int) -> torch.Tensor:
    """As ``functions._relu_mask_grad`` (the same key), with no temporary beyond the result.

    key = 1/A + A is > 0 exactly where A's sign bit is clear (1/(±0) = ±inf); in the plain
    eager backward it is built in the result's buffer, which threshold_backward overwrites.
    """
    if relu_grad_at_zero != 1:
        return torch.ops.aten.threshold_backward(dA, A, 0)
    A = A.detach()
    if not _eager():
        return torch.ops.aten.threshold_backward(dA, A.reciprocal().add_(A), 0)
    key = torch.reciprocal(A, out=torch.empty_like(dA)).add_(A)
    return torch.ops.aten.threshold_backward.grad_input(dA, key, 0, grad_input=key)


_ORIGINAL = {"relu_lecture": fx.relu_lecture, "_relu_mask_grad": fx._relu_mask_grad}


def _patch(mask: bool) -> None:
    fx.relu_lecture = relu_lecture if mask else _ORIGINAL["relu_lecture"]
    fx._relu_mask_grad = _relu_mask_grad if mask else _ORIGINAL["_relu_mask_grad"]


# (3) ---------------------------------------------------------------------------------------


class MLPFunction(torch.autograd.Function):
    """A prototype: every layer of an ``MLP`` in ONE Function, so that the Python cost of a
    Function call is paid once per network, not once per layer. Uses the module's current
    mask (``fx.relu_lecture``, ``fx._relu_mask_grad``), so that (3) and (1) can be combined.

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
            A = fx.relu_lecture(Z) if relu_grad_at_zero == 1 else Z.relu_()
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
                dZ = fx._relu_mask_grad(dZ @ W[l], A[l], ctx.relu_grad_at_zero)
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
    twin = models["torch"]
    fns = {"torch": bench_mlp._fwd_bwd(twin, bench_mlp._loss_fn("torch", twin), x, y)}
    for name in ("ours", "ours/0"):
        model = models[name]
        per_layer, one_function = bench_mlp._loss_fn(name, model), _one_function_loss(model)
        _patch(False)
        now = _grads(model, per_layer, x, y)
        variants = {  # suffix: (loss function, mask (1) patched in)
            " now": (per_layer, False),
            " + (1)": (per_layer, True),
            " + (3)": (one_function, False),
            " + (1), (3)": (one_function, True),
        }
        for suffix, (loss_fn, mask) in variants.items():
            _patch(mask)
            got = _grads(model, loss_fn, x, y)
            if not all(torch.equal(a, b) for a, b in zip(now, got, strict=True)):
                raise AssertionError(f"{size.name} {name}{suffix}: the gradients differ")
            step = bench_mlp._fwd_bwd(model, loss_fn, x, y)

            def run(step=step, mask=mask) -> None:
                _patch(mask)
                step()

            fns[name + suffix] = run
    c = compare(fns, rounds=rounds, min_block_s=min_block_s)
    _patch(False)
    return {k: (c.median(k), c.iqr(k), c.ratio(k, "torch"), c.ratio_iqr(k, "torch")) for k in fns}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("sizes", nargs="*", default=[s.name for s in bench_mlp.SIZES])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--compiled", action="store_true", help="torch.compile, with (1) only")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    by_name = {s.name: s for s in bench_mlp.SIZES}
    if args.compiled:  # a compiled graph keeps what it traced: patch once, before compiling
        _patch(True)
        sizes = tuple(by_name[n] for n in args.sizes)
        rows = bench_mlp.bench_fwd_bwd(compiled=True, sizes=sizes, rounds=args.rounds)
        print("With (1) patched in, compiled; ours/0 is relu_grad_at_zero=0\n")
        print(bench_mlp.fwd_bwd_table(rows, {}))
        return
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s); eager fwd+bwd\n")
    print("| size | variant | time (median [IQR]) | ÷ torch [IQR] |\n|---|---|---|---|")
    for name in args.sizes:
        for key, (t, q, r, rq) in what_if(by_name[name], args.rounds, 0.1).items():
            print(f"| {name} | {key} | {fmt_time_iqr(t, q)} | {fmt_ratio(r, rq)} |", flush=True)


if __name__ == "__main__":
    main()
