"""The modules and the lecture's L-layer MLP against their torch.nn twins."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from _reference import TOL, saved_bytes
from torch import nn

import torch_manual_bp as mbp
from torch_manual_bp.nn import MLP, BCEWithLogitsLoss, Linear, LinearReLU


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("cls", [Linear, LinearReLU])
def test_layers_initialise_exactly_as_nn_linear(cls, bias):
    torch.manual_seed(0)
    ours = cls(7, 5, bias=bias)
    torch.manual_seed(0)
    theirs = nn.Linear(7, 5, bias=bias)
    assert ours.state_dict().keys() == theirs.state_dict().keys()
    for key, value in theirs.state_dict().items():
        assert torch.equal(ours.state_dict()[key], value)


def test_mlp_initialises_as_its_torch_twin_would():
    torch.manual_seed(1)
    net = MLP([6, 5, 4, 1])
    torch.manual_seed(1)
    ref = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 1))
    for a, b in zip(net.parameters(), ref.parameters(), strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("relu_grad_at_zero", [1, 0])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("depth", [1, 2, 3, 4])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_mlp_gradients_match_to_torch_twin(depth, bias, relu_grad_at_zero, dtype, device):
    torch.manual_seed(depth)
    sizes = [6] + [5] * (depth - 1) + [1]
    net = MLP(sizes, bias=bias, relu_grad_at_zero=relu_grad_at_zero, device=device, dtype=dtype)
    twin = net.to_torch()
    assert len(twin) == 2 * depth - 1
    X = torch.randn(16, 6, device=device, dtype=dtype)
    Y = torch.randint(0, 2, (16, 1), device=device).to(dtype)
    J = mbp.functional.sigmoid_bce(net(X), Y)
    J_ref = F.binary_cross_entropy_with_logits(twin(X), Y)
    torch.testing.assert_close(J, J_ref, **TOL[dtype])
    J.backward()
    J_ref.backward()
    for (name, p), p_ref in zip(net.named_parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(p.grad, p_ref.grad, **TOL[dtype], msg=name)


def test_mlp_with_torch_convention_matches_twin_on_exact_ties(device):
    """Zero inputs and zero biases make every hidden pre-activation of those rows exactly 0."""
    torch.manual_seed(0)
    net = MLP([4, 6, 3, 1], relu_grad_at_zero=0, device=device, dtype=torch.float64)
    with torch.no_grad():
        for layer in net[:-1]:
            layer.bias.zero_()
    twin = net.to_torch()
    X = torch.randn(8, 4, device=device, dtype=torch.float64)
    X[::2] = 0
    Y = torch.ones(8, 1, device=device, dtype=torch.float64)
    mbp.functional.sigmoid_bce(net(X), Y).backward()
    F.binary_cross_entropy_with_logits(twin(X), Y).backward()
    for p, p_ref in zip(net.parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(p.grad, p_ref.grad, **TOL[torch.float64])


def test_to_torch_and_from_torch_round_trip():
    torch.manual_seed(0)
    net = MLP([3, 4, 2], bias=True, relu_grad_at_zero=0)
    twin = net.to_torch()
    assert [type(m) for m in twin] == [nn.Linear, nn.ReLU, nn.Linear]
    back = MLP.from_torch(twin, relu_grad_at_zero=0)
    assert back.sizes == [3, 4, 2] and back.relu_grad_at_zero == 0
    for a, b in zip(net.state_dict().values(), back.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    # copies, not shared storage
    with torch.no_grad():
        twin[0].weight.add_(1)
    assert not torch.equal(twin[0].weight, net[0].weight)


@pytest.mark.parametrize(
    "seq",
    [
        nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1)),
        nn.Sequential(nn.Linear(3, 4), nn.ReLU()),
        nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(5, 1)),
        nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 1, bias=False)),
    ],
    ids=["tanh", "ends-with-relu", "widths-dont-chain", "mixed-bias"],
)
def test_from_torch_rejects_other_shapes(seq):
    with pytest.raises(ValueError, match=r"from_torch|widths|bias"):
        MLP.from_torch(seq)


@pytest.mark.parametrize("sizes", [[3], [], [3, 0, 1], [3, 2.5, 1], [True, 2]])
def test_mlp_rejects_bad_sizes(sizes):
    with pytest.raises(ValueError, match="sizes"):
        MLP(sizes)


@pytest.mark.parametrize("value", [2, -1, 0.5, "1", None])
def test_relu_grad_at_zero_must_be_0_or_1(value):
    with pytest.raises(ValueError, match="relu_grad_at_zero"):
        MLP([3, 2, 1], relu_grad_at_zero=value)
    with pytest.raises(ValueError, match="relu_grad_at_zero"):
        mbp.functional.linear_relu(torch.randn(2, 3), torch.randn(2, 3), relu_grad_at_zero=value)


@pytest.mark.parametrize("relu_grad_at_zero", [1, 0])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("depth", [1, 2, 4])
def test_mlp_saves_no_more_for_backward_than_its_twin(depth, bias, relu_grad_at_zero):
    torch.manual_seed(0)
    net = MLP([32] + [64] * (depth - 1) + [1], bias=bias, relu_grad_at_zero=relu_grad_at_zero)
    twin = net.to_torch()
    X = torch.randn(128, 32)
    Y = torch.randint(0, 2, (128, 1)).float()
    ours = saved_bytes(lambda: mbp.functional.sigmoid_bce(net(X), Y))
    theirs = saved_bytes(lambda: F.binary_cross_entropy_with_logits(twin(X), Y))
    assert theirs > 0
    assert ours <= theirs


def test_bce_module_matches_torch_module(device):
    g = torch.Generator().manual_seed(0)
    z = torch.randn(6, 3, generator=g, dtype=torch.float64).to(device)
    y = torch.rand(6, 3, generator=g, dtype=torch.float64).to(device)
    w = torch.rand(3, generator=g, dtype=torch.float64).to(device)
    p = torch.rand(3, generator=g, dtype=torch.float64).to(device) + 0.5
    for reduction in ("mean", "sum", "none"):
        ours = BCEWithLogitsLoss(weight=w, reduction=reduction, pos_weight=p)
        theirs = nn.BCEWithLogitsLoss(weight=w, reduction=reduction, pos_weight=p)
        assert ours.state_dict().keys() == theirs.state_dict().keys()
        torch.testing.assert_close(ours(z, y), theirs(z, y), **TOL[torch.float64])
    with pytest.raises(ValueError, match="reduction"):
        BCEWithLogitsLoss(reduction="avg")


def test_modules_follow_to_device_and_dtype():
    net = MLP([3, 4, 1]).to(torch.float64)
    assert all(p.dtype == torch.float64 for p in net.parameters())
    out = net(torch.randn(2, 3, dtype=torch.float64))
    assert out.dtype == torch.float64 and out.shape == (2, 1)


def test_public_api_is_exposed():
    assert mbp.nn.MLP is MLP and callable(mbp.functional.sigmoid_bce)
    assert isinstance(mbp.__version__, str)
    from torch_manual_bp.functions import (  # noqa: F401
        LinearFunction,
        LinearReLUFunction,
        SigmoidBCEFunction,
    )
