"""torch.func, torch.compile and autocast with the lecture's Functions."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from _reference import TOL, torch_linear_relu
from torch.func import functional_call, grad, jacrev, vmap

import torch_manual_bp as mbp
from torch_manual_bp.nn import MLP


def _net_and_twin(device, dtype=torch.float64, relu_grad_at_zero=1):
    torch.manual_seed(0)
    net = MLP([5, 7, 4, 1], relu_grad_at_zero=relu_grad_at_zero, device=device, dtype=dtype)
    return net, net.to_torch()


def _data(device, dtype=torch.float64, m=12):
    g = torch.Generator().manual_seed(1)
    X = torch.randn(m, 5, generator=g, dtype=dtype).to(device)
    Y = torch.randint(0, 2, (m, 1), generator=g).to(device=device, dtype=dtype)
    return X, Y


# --------------------------------------------------------------------------------------
# torch.func
# --------------------------------------------------------------------------------------


def test_per_sample_gradients_with_vmap_of_grad(device):
    net, twin = _net_and_twin(device)
    X, Y = _data(device)

    def loss(model, loss_fn):
        def f(params, x, y):
            return loss_fn(functional_call(model, params, (x,)), y)

        return f

    params = {k: v.detach() for k, v in net.named_parameters()}
    tparams = {k: v.detach() for k, v in twin.named_parameters()}
    ours = vmap(grad(loss(net, mbp.functional.sigmoid_bce)), in_dims=(None, 0, 0))(params, X, Y)
    theirs = vmap(grad(loss(twin, F.binary_cross_entropy_with_logits)), in_dims=(None, 0, 0))(
        tparams, X, Y
    )
    for (name, g), g_ref in zip(ours.items(), theirs.values(), strict=True):
        assert g.shape == (12, *params[name].shape)
        torch.testing.assert_close(g, g_ref, **TOL[torch.float64], msg=name)


@pytest.mark.parametrize("relu_grad_at_zero", [1, 0])
def test_jacrev_of_linear_relu(relu_grad_at_zero, device):
    g = torch.Generator().manual_seed(2)
    x, W, b = (
        torch.randn(s, generator=g, dtype=torch.float64).to(device) for s in [(4, 3), (2, 3), (2,)]
    )

    def ours(x, W, b):
        return mbp.functional.linear_relu(x, W, b, relu_grad_at_zero=relu_grad_at_zero)

    def ref(x, W, b):
        return torch_linear_relu(x, W, b, relu_grad_at_zero=relu_grad_at_zero)

    for a, r in zip(
        jacrev(ours, argnums=(0, 1, 2))(x, W, b),
        jacrev(ref, argnums=(0, 1, 2))(x, W, b),
        strict=True,
    ):
        torch.testing.assert_close(a, r, **TOL[torch.float64])


def test_jacrev_and_vmap_of_sigmoid_bce(device):
    g = torch.Generator().manual_seed(3)
    z = torch.randn(3, 4, generator=g, dtype=torch.float64).to(device)
    y = torch.rand(3, 4, generator=g, dtype=torch.float64).to(device)
    for fn_ours, fn_ref in [
        (mbp.functional.sigmoid_bce, F.binary_cross_entropy_with_logits),
        (
            lambda a, b: mbp.functional.sigmoid_bce(a, b, reduction="none"),
            lambda a, b: F.binary_cross_entropy_with_logits(a, b, reduction="none"),
        ),
    ]:
        for argnums in (0, 1):
            torch.testing.assert_close(
                jacrev(fn_ours, argnums=argnums)(z, y), jacrev(fn_ref, argnums=argnums)(z, y)
            )
        torch.testing.assert_close(vmap(fn_ours)(z, y), vmap(fn_ref)(z, y))


# --------------------------------------------------------------------------------------
# torch.compile
# --------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("relu_grad_at_zero", [1, 0])
def test_compile_fullgraph_forward_and_backward_match_eager(relu_grad_at_zero, device):
    torch._dynamo.reset()
    net, _ = _net_and_twin(device, torch.float32, relu_grad_at_zero)
    X, Y = _data(device, torch.float32)
    X[::3] = 0  # with zero first-layer biases: exact ties at z = 0, so the sign-of-zero
    with torch.no_grad():  # trick must survive compilation
        net[0].bias[::2] = 0
    assert (net[0](X) == 0).any()

    def step(model):
        loss = mbp.functional.sigmoid_bce(model(X), Y)
        grads = torch.autograd.grad(loss, list(model.parameters()))
        return loss, grads

    compiled = torch.compile(net, fullgraph=True)  # raises on any graph break
    loss_c, grads_c = step(compiled)
    loss_e, grads_e = step(net)
    torch.testing.assert_close(loss_c, loss_e, **TOL[torch.float32])
    for a, b in zip(grads_c, grads_e, strict=True):
        torch.testing.assert_close(a, b, **TOL[torch.float32])


# --------------------------------------------------------------------------------------
# autocast
# --------------------------------------------------------------------------------------

AUTOCAST = [
    ("cpu", torch.bfloat16),
    pytest.param("cuda", torch.float16, marks=pytest.mark.cuda),
    pytest.param("cuda", torch.bfloat16, marks=pytest.mark.cuda),
]


@pytest.mark.parametrize(("device_type", "amp_dtype"), AUTOCAST)
def test_autocast_behaves_like_nn_linear_and_relu(device_type, amp_dtype):
    if device_type == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA device on this machine")
    net, twin = _net_and_twin(device_type, torch.float32)
    X, Y = _data(device_type, torch.float32, m=64)
    with torch.autocast(device_type, dtype=amp_dtype):
        Z, Z_ref = net(X), twin(X)
        J = mbp.functional.sigmoid_bce(Z, Y)
        J_ref = F.binary_cross_entropy_with_logits(Z_ref, Y)
    assert Z.dtype == Z_ref.dtype == amp_dtype
    assert J.dtype == J_ref.dtype == torch.float32
    torch.testing.assert_close(Z, Z_ref, **TOL[amp_dtype])
    J.backward()
    J_ref.backward()
    for p, p_ref in zip(net.parameters(), twin.parameters(), strict=True):
        assert p.grad.dtype == p_ref.grad.dtype == torch.float32
        torch.testing.assert_close(p.grad, p_ref.grad, **TOL[amp_dtype])


def test_autocast_leaves_float64_alone_as_pytorch_does():
    """Autocast never casts float64: a float64 model runs in float64 inside the region."""
    net, twin = _net_and_twin("cpu", torch.float64)
    X, Y = _data("cpu", torch.float64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        Z, Z_ref = net(X), twin(X)
        J = mbp.functional.sigmoid_bce(Z, Y)
        J_ref = F.binary_cross_entropy_with_logits(Z_ref, Y)
    assert Z.dtype == Z_ref.dtype == torch.float64
    assert J.dtype == J_ref.dtype == torch.float64
    torch.testing.assert_close(J, J_ref, **TOL[torch.float64])
