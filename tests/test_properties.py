"""Property tests: random shapes, batch dims and data, always equal to PyTorch."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from _reference import TOL, grads, leaf, torch_linear_relu
from hypothesis import given, settings
from hypothesis import strategies as st

import torch_manual_bp.functional as mbpF

batch_dims = st.lists(st.integers(0, 4), min_size=0, max_size=3)
features = st.integers(1, 7)


@settings(max_examples=60, deadline=None)
@given(
    batch=batch_dims,
    n_in=features,
    n_out=features,
    bias=st.booleans(),
    kind=st.sampled_from(["linear", "lecture", "torch"]),
    seed=st.integers(0, 2**31 - 1),
)
def test_linear_layers_match_torch_on_random_shapes(batch, n_in, n_out, bias, kind, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*batch, n_in, generator=g, dtype=torch.float64)
    W = torch.randn(n_out, n_in, generator=g, dtype=torch.float64)
    b = torch.randn(n_out, generator=g, dtype=torch.float64) if bias else None
    ours_in, ref_in = [leaf(x), leaf(W), leaf(b)], [leaf(x), leaf(W), leaf(b)]
    if kind == "linear":
        out, ref = mbpF.linear(*ours_in), F.linear(*ref_in)
    else:
        conv = 1 if kind == "lecture" else 0
        out = mbpF.linear_relu(*ours_in, relu_grad_at_zero=conv)
        ref = torch_linear_relu(*ref_in, relu_grad_at_zero=conv)
    assert torch.equal(out, ref)
    dout = torch.randn(ref.shape, generator=g, dtype=torch.float64)
    for a, r in zip(grads(out, ours_in, dout), grads(ref, ref_in, dout), strict=True):
        torch.testing.assert_close(a, r, **TOL[torch.float64])


@settings(max_examples=60, deadline=None)
@given(
    shape=st.lists(st.integers(1, 4), min_size=1, max_size=3),
    reduction=st.sampled_from(["mean", "sum", "none"]),
    scale=st.sampled_from([1.0, 30.0, 1e4]),
    weighted=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
)
def test_sigmoid_bce_matches_torch_on_random_shapes(shape, reduction, scale, weighted, seed):
    g = torch.Generator().manual_seed(seed)
    z = scale * torch.randn(shape, generator=g, dtype=torch.float64)
    y = torch.rand(shape, generator=g, dtype=torch.float64)
    w = torch.rand(shape[-1], generator=g, dtype=torch.float64) if weighted else None
    p = torch.rand(shape[-1], generator=g, dtype=torch.float64) + 0.5 if weighted else None
    ours_in, ref_in = [leaf(z), leaf(y)], [leaf(z), leaf(y)]
    J = mbpF.sigmoid_bce(*ours_in, w, p, reduction)
    J_ref = F.binary_cross_entropy_with_logits(*ref_in, w, reduction=reduction, pos_weight=p)
    torch.testing.assert_close(J, J_ref, **TOL[torch.float64])
    for a, r in zip(grads(J, ours_in), grads(J_ref, ref_in), strict=True):
        torch.testing.assert_close(a, r, **TOL[torch.float64])
