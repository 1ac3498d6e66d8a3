"""The three Functions against PyTorch's built-ins: forward and every gradient."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from _reference import TOL, grads, leaf, torch_linear_relu, torch_sigmoid_bce_composite
from torch.autograd import gradcheck, gradgradcheck

import torch_manual_bp.functional as mbpF
from torch_manual_bp.functions import (
    LinearFunction,
    LinearReLUFunction,
    SigmoidBCEFunction,
    _relu_mask_grad,
    relu_lecture,
)
from torch_manual_bp.functions import apply as apply_function

DTYPES = [torch.float64, torch.float32, torch.bfloat16, torch.float16]

# (input shape, out_features): 2-D, 1-D, 3-D, a single row, an empty batch.
LINEAR_SHAPES = [((8, 5), 3), ((5,), 4), ((2, 4, 5), 3), ((1, 5), 1), ((0, 5), 3)]


def _linear_data(shape, out, bias, dtype, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g, dtype=torch.float64)
    W = torch.randn(out, shape[-1], generator=g, dtype=torch.float64)
    b = torch.randn(out, generator=g, dtype=torch.float64) if bias else None
    cast = lambda t: None if t is None else t.to(device=device, dtype=dtype)  # noqa: E731
    return cast(x), cast(W), cast(b)


def _assert_all_close(ours, theirs, dtype):
    for a, b in zip(ours, theirs, strict=True):
        if b is None:
            assert a is None
            continue
        assert a.dtype == b.dtype and a.shape == b.shape
        torch.testing.assert_close(a, b, **TOL[dtype])


# --------------------------------------------------------------------------------------
# linear / linear_relu
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize(("shape", "out"), LINEAR_SHAPES)
def test_linear_matches_torch(shape, out, bias, dtype, device):
    x, W, b = _linear_data(shape, out, bias, dtype, device)
    ours_in = [leaf(x), leaf(W), leaf(b)]
    ref_in = [leaf(x), leaf(W), leaf(b)]
    Z = mbpF.linear(*ours_in)
    Z_ref = F.linear(*ref_in)
    assert torch.equal(Z, Z_ref)  # the same forward kernel: bit-identical
    dZ = torch.randn_like(Z_ref)
    _assert_all_close(grads(Z, ours_in, dZ), grads(Z_ref, ref_in, dZ), dtype)


@pytest.mark.parametrize("relu_grad_at_zero", [1, 0])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize(("shape", "out"), LINEAR_SHAPES)
def test_linear_relu_matches_torch(shape, out, bias, dtype, relu_grad_at_zero, device):
    x, W, b = _linear_data(shape, out, bias, dtype, device)
    ours_in = [leaf(x), leaf(W), leaf(b)]
    ref_in = [leaf(x), leaf(W), leaf(b)]
    A = mbpF.linear_relu(*ours_in, relu_grad_at_zero=relu_grad_at_zero)
    A_ref = torch_linear_relu(*ref_in, relu_grad_at_zero=relu_grad_at_zero)
    assert torch.equal(A, A_ref)  # equal as numbers (−0.0 == 0.0)
    dA = torch.randn_like(A_ref)
    _assert_all_close(grads(A, ours_in, dA), grads(A_ref, ref_in, dA), dtype)


def _ties(dtype, device):
    """Data with many pre-activations exactly ±0: zero rows of x, zero bias entries and a
    zero row of W."""
    x, W, b = _linear_data((6, 4), 5, True, dtype, device)
    x[::2] = 0  # rows of x that are 0 → z = b
    b[1:3] = 0  # ... and b = 0 there → z = +0 exactly
    W[4] = 0  # a zero row of W → z = b[4] for every example
    b[4] = 0
    return x, W, b


@pytest.mark.parametrize("relu_grad_at_zero", [1, 0])
@pytest.mark.parametrize("dtype", DTYPES)
def test_linear_relu_exact_ties(dtype, relu_grad_at_zero, device):
    x, W, b = _ties(dtype, device)
    assert (F.linear(x, W, b) == 0).sum() >= 10
    ours_in = [leaf(x), leaf(W), leaf(b)]
    ref_in = [leaf(x), leaf(W), leaf(b)]
    A = mbpF.linear_relu(*ours_in, relu_grad_at_zero=relu_grad_at_zero)
    A_ref = torch_linear_relu(*ref_in, relu_grad_at_zero=relu_grad_at_zero)
    assert torch.equal(A, A_ref)
    dA = torch.ones_like(A_ref)
    ours, theirs = grads(A, ours_in, dA), grads(A_ref, ref_in, dA)
    _assert_all_close(ours, theirs, dtype)
    # The conventions really differ on ties: db counts the tied entries under 1{z >= 0} only.
    db_lecture = grads(torch_linear_relu(*ref_in, relu_grad_at_zero=1), ref_in, dA)[2]
    db_torch = grads(F.relu(F.linear(*ref_in)), ref_in, dA)[2]
    assert not torch.equal(db_lecture, db_torch)


@pytest.mark.parametrize("compiled", [False, pytest.param(True, marks=pytest.mark.slow)])
@pytest.mark.parametrize("relu_grad_at_zero", [1, 0])
def test_relu_mask_from_saved_output_handles_signed_zeros(relu_grad_at_zero, compiled):
    """z = −0.0 and z = +0.0 are both ties; the mask read back from the saved output alone
    must equal the chosen convention's 1{z >= 0} or 1{z > 0} on each, and the output must
    equal F.relu as numbers."""
    Z = torch.tensor([-0.0, 0.0, -1.0, 2.0, -1e-30, 1e-30], dtype=torch.float64)
    forward = relu_lecture if relu_grad_at_zero == 1 else torch.relu
    mask_grad = _relu_mask_grad
    if compiled:  # Inductor must not fold away the −0.0 → +0.0 step
        forward, mask_grad = torch.compile(forward), torch.compile(mask_grad)
    A = forward(Z.clone())
    assert torch.equal(A, F.relu(Z))
    assert torch.equal(A.signbit(), Z < 0) or relu_grad_at_zero == 0
    dZ = mask_grad(torch.ones_like(Z), A, relu_grad_at_zero)
    expected = (Z >= 0) if relu_grad_at_zero == 1 else (Z > 0)
    assert torch.equal(dZ, expected.double())


@pytest.mark.parametrize("relu_grad_at_zero", [1, 0])
@pytest.mark.parametrize("fn_name", ["linear", "linear_relu"])
def test_linear_noncontiguous_inputs_and_grads(fn_name, relu_grad_at_zero, device):
    x, W, b = _linear_data((5, 8), 6, True, torch.float64, device)
    x_t = leaf(x.T.contiguous()).T  # non-contiguous view, same values
    W_t = leaf(W.T.contiguous()).T
    assert not x_t.is_contiguous() and not W_t.is_contiguous()
    kw = {"relu_grad_at_zero": relu_grad_at_zero} if fn_name == "linear_relu" else {}
    ours_fn = getattr(mbpF, fn_name)
    ref_fn = torch_linear_relu if fn_name == "linear_relu" else F.linear
    ref_in = [leaf(x), leaf(W), leaf(b)]
    ours = ours_fn(x_t, W_t, b, **kw)
    ref = ref_fn(*ref_in, **kw)
    # .sum().backward() sends a stride-0 (expanded) gradient.
    g_ours = torch.autograd.grad(ours.sum(), [x_t, W_t])
    g_ref = torch.autograd.grad(ref.sum(), ref_in[:2])
    _assert_all_close(g_ours, g_ref, torch.float64)
    # A transposed grad_output.
    dZ = torch.randn(ours.shape[1], ours.shape[0], dtype=torch.float64, device=device).T
    _assert_all_close(
        grads(ours_fn(x_t, W_t, b, **kw), [x_t, W_t], dZ),
        grads(ref_fn(*ref_in, **kw), ref_in[:2], dZ),
        torch.float64,
    )


@pytest.mark.parametrize("relu_grad_at_zero", [1, 0])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("fn_name", ["linear", "linear_relu"])
def test_linear_gradcheck_and_gradgradcheck(fn_name, bias, relu_grad_at_zero, device):
    x, W, b = _linear_data((4, 3, 5), 4, bias, torch.float64, device, seed=3)
    assert F.linear(x, W, b).abs().min() > 1e-3  # away from the ReLU kink
    fn = getattr(mbpF, fn_name)
    kw = {"relu_grad_at_zero": relu_grad_at_zero} if fn_name == "linear_relu" else {}
    args = tuple(t for t in (leaf(x), leaf(W), leaf(b)) if t is not None)
    f = lambda *a: fn(*a, **kw)  # noqa: E731
    assert gradcheck(f, args)
    assert gradgradcheck(f, args)


@pytest.mark.parametrize(
    ("needs", "expect_saved"),
    [
        ((True, True, True), {"x", "W"}),
        ((True, False, False), {"W"}),
        ((False, True, False), {"x"}),
        ((False, False, True), set()),
    ],
)
def test_linear_saves_only_what_needed_gradients_use(needs, expect_saved):
    x, W, b = (torch.randn(4, 3), torch.randn(2, 3), torch.randn(2))
    named = {"x": x, "W": W}
    ins = [t.requires_grad_(n) for t, n in zip((x, W, b), needs, strict=True)]
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        Z = mbpF.linear(*ins)
    got = {name for name, t in named.items() if any(s is t for s in saved)}
    assert got == expect_saved
    out = torch.autograd.grad(Z.sum(), [t for t in ins if t.requires_grad])
    assert len(out) == sum(needs)


# --------------------------------------------------------------------------------------
# sigmoid_bce
# --------------------------------------------------------------------------------------

BCE_SHAPES = [(8,), (8, 1), (4, 3), (2, 3, 4), (0, 3)]
REDUCTIONS = ["mean", "sum", "none"]


def _bce_data(shape, dtype, device, *, scale=3.0, seed=0, soft=False):
    g = torch.Generator().manual_seed(seed)
    z = scale * torch.randn(shape, generator=g, dtype=torch.float64)
    y = torch.rand(shape, generator=g, dtype=torch.float64)
    y = y if soft else (y > 0.5).double()
    C = shape[-1]
    w = torch.rand(C, generator=g, dtype=torch.float64) + 0.5
    p = torch.rand(C, generator=g, dtype=torch.float64) * 3 + 0.1
    return [t.to(device=device, dtype=dtype) for t in (z, y, w, p)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("use_pos_weight", [False, True])
@pytest.mark.parametrize("use_weight", [False, True])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("shape", BCE_SHAPES)
def test_sigmoid_bce_matches_torch(shape, reduction, use_weight, use_pos_weight, dtype, device):
    z, y, w, p = _bce_data(shape, dtype, device, soft=True)
    w = w if use_weight else None
    p = p if use_pos_weight else None
    ours_in, ref_in = [leaf(z), leaf(y)], [leaf(z), leaf(y)]
    J = mbpF.sigmoid_bce(*ours_in, w, p, reduction)
    J_ref = F.binary_cross_entropy_with_logits(*ref_in, w, reduction=reduction, pos_weight=p)
    torch.testing.assert_close(J, J_ref, **TOL[dtype], equal_nan=True)  # mean of empty: nan
    dJ = torch.randn_like(J_ref)
    _assert_all_close(grads(J, ours_in, dJ), grads(J_ref, ref_in, dJ), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("magnitude", [1e4, 1e2, 40.0])
@pytest.mark.parametrize("use_pos_weight", [False, True])
def test_sigmoid_bce_extreme_logits_are_finite_and_match(magnitude, use_pos_weight, dtype, device):
    z = torch.tensor([magnitude, -magnitude, magnitude, -magnitude], dtype=dtype, device=device)
    y = torch.tensor([0.0, 1.0, 1.0, 0.0], dtype=dtype, device=device)
    p = torch.full((4,), 2.5, dtype=dtype, device=device) if use_pos_weight else None
    for reduction in REDUCTIONS:
        ours_in, ref_in = [leaf(z), leaf(y)], [leaf(z), leaf(y)]
        J = mbpF.sigmoid_bce(*ours_in, pos_weight=p, reduction=reduction)
        J_ref = F.binary_cross_entropy_with_logits(*ref_in, pos_weight=p, reduction=reduction)
        assert torch.isfinite(J).all()
        torch.testing.assert_close(J, J_ref, **TOL[dtype])
        ours, theirs = grads(J, ours_in), grads(J_ref, ref_in)
        assert all(torch.isfinite(g).all() for g in ours)
        _assert_all_close(ours, theirs, dtype)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_sigmoid_bce_grad_is_lecture_formula(reduction, device):
    """dJ/dz = (ŷ − y)/N for the mean, ŷ − y for the sum: the lecture's Appendix 1."""
    z, y, _, _ = _bce_data((6, 1), torch.float64, device)
    z.requires_grad_()
    J = mbpF.sigmoid_bce(z, y, reduction=reduction)
    (dz,) = torch.autograd.grad(J.sum(), [z])
    n = z.numel() if reduction == "mean" else 1
    torch.testing.assert_close(dz, (torch.sigmoid(z) - y).detach() / n, rtol=1e-12, atol=0)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("weight_shape", [(3,), (4, 1), (4, 3)])
def test_sigmoid_bce_weight_and_pos_weight_gradients(weight_shape, reduction, device):
    """PyTorch's kernel gives no gradient for weight / pos_weight; ours does, and it agrees
    with autograd through the same loss written with torch ops."""
    z, y, _, _ = _bce_data((4, 3), torch.float64, device, soft=True)
    g = torch.Generator().manual_seed(1)
    w = (torch.rand(weight_shape, generator=g, dtype=torch.float64) + 0.5).to(device)
    p = (torch.rand(3, generator=g, dtype=torch.float64) + 0.5).to(device)
    ours_in = [leaf(z), leaf(y), leaf(w), leaf(p)]
    ref_in = [leaf(z), leaf(y), leaf(w), leaf(p)]
    J = mbpF.sigmoid_bce(*ours_in, reduction=reduction)
    J_ref = torch_sigmoid_bce_composite(*ref_in, reduction=reduction)
    torch.testing.assert_close(J, J_ref, **TOL[torch.float64])
    dJ = torch.randn_like(J_ref)
    _assert_all_close(grads(J, ours_in, dJ), grads(J_ref, ref_in, dJ), torch.float64)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("with_weights", [False, True])
def test_sigmoid_bce_gradcheck_and_gradgradcheck(reduction, with_weights, device):
    z, y, w, p = _bce_data((4, 3), torch.float64, device, soft=True)
    args = [leaf(z), leaf(y)] + ([leaf(w), leaf(p)] if with_weights else [])

    def f(*a):
        return mbpF.sigmoid_bce(*a, reduction=reduction)

    assert gradcheck(f, tuple(args))
    assert gradgradcheck(f, tuple(args))


def test_sigmoid_bce_second_derivative_is_sigmoid_prime(device):
    """d²J/dz² = σ(z)(1 − σ(z)): wrong if σ(z) were cached from the forward."""
    z, y, _, _ = _bce_data((5,), torch.float64, device)
    z.requires_grad_()
    (dz,) = torch.autograd.grad(mbpF.sigmoid_bce(z, y, reduction="sum"), [z], create_graph=True)
    (d2z,) = torch.autograd.grad(dz.sum(), [z])
    z_ref = leaf(z)
    (dz_ref,) = torch.autograd.grad(
        F.binary_cross_entropy_with_logits(z_ref, y, reduction="sum"), [z_ref], create_graph=True
    )
    (d2z_ref,) = torch.autograd.grad(dz_ref.sum(), [z_ref])
    torch.testing.assert_close(d2z, d2z_ref, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize(
    ("function", "make_args"),
    [
        (LinearFunction, lambda x, W, b, z, y: (x, W, b)),
        (LinearReLUFunction, lambda x, W, b, z, y: (x, W, b, 1)),
        (LinearReLUFunction, lambda x, W, b, z, y: (x, W, b, 0)),
        (SigmoidBCEFunction, lambda x, W, b, z, y: (z, y, None, None, "mean")),
    ],
    ids=["linear", "linear_relu/1", "linear_relu/0", "sigmoid_bce"],
)
def test_classic_twin_and_setup_context_function_agree_bit_for_bit(function, make_args, device):
    """Eager calls go through a classic-style twin (no per-call signature binding); the
    setup_context Function serves torch.func and torch.compile. Same numbers from both."""
    x, W, b = _linear_data((6, 5), 4, True, torch.float64, device)
    z, y, _, _ = _bce_data((6, 4), torch.float64, device)
    results = []
    for call in (function.apply, lambda *a: apply_function(function, *a)):
        args = [leaf(a) if isinstance(a, torch.Tensor) else a for a in make_args(x, W, b, z, y)]
        out = call(*args)
        tensors = [a for a in args if isinstance(a, torch.Tensor)]
        results.append((out, *torch.autograd.grad(out.sum(), tensors)))
    assert results[1][0].grad_fn.__class__ is not results[0][0].grad_fn.__class__
    for a, b_ in zip(*results, strict=True):
        assert torch.equal(a, b_)
