"""Bad input gets a clear error naming the bad shapes, dtypes or devices; never a silent answer."""

from __future__ import annotations

import pytest
import torch

import torch_manual_bp.functional as mbpF
from torch_manual_bp.nn import MLP

x, W, b = torch.randn(4, 3), torch.randn(2, 3), torch.randn(2)
meta = torch.device("meta")  # a second device that exists on every machine

LINEAR_ERRORS = [
    # (args, exception, the message must contain)
    ((torch.randn(4, 5), W, b), ValueError, r"\(4, 5\).*\(2, 3\)"),
    ((torch.randn(4, 3), torch.randn(3), None), ValueError, r"2-D.*\(3,\)"),
    ((x, W, torch.randn(3)), ValueError, r"bias.*\(2,\).*\(3,\)"),
    ((torch.randn(4, 3).long(), W, b), TypeError, "input.*floating.*torch.int64"),
    ((x, W.int(), b), TypeError, "weight.*floating.*torch.int32"),
    ((x, W, b.long()), TypeError, "bias.*floating"),
    ((x.double(), W, b), TypeError, "input is torch.float64.*weight is torch.float32"),
    ((x, W.to(meta), b), ValueError, "input on cpu, weight on meta"),
    (([[1.0, 2.0, 3.0]], W, b), TypeError, "input must be a torch.Tensor, got list"),
    ((torch.tensor(1.0), torch.randn(2, 1), None), ValueError, r"\(\)"),
]


@pytest.mark.parametrize("fn", [mbpF.linear, mbpF.linear_relu])
@pytest.mark.parametrize(("args", "exc", "match"), LINEAR_ERRORS)
def test_linear_bad_input(fn, args, exc, match):
    with pytest.raises(exc, match=match):
        fn(*args)


z, y = torch.randn(4, 1), torch.rand(4, 1)

BCE_ERRORS = [
    (
        {"target": torch.rand(4)},
        ValueError,
        r"target shape \(4,\) must equal logits shape \(4, 1\)",
    ),
    ({"target": torch.rand(4, 2)}, ValueError, r"\(4, 2\)"),
    ({"target": torch.ones(4, 1, dtype=torch.long)}, TypeError, "target.*floating.*int64"),
    ({"logits": torch.ones(4, 1, dtype=torch.int32)}, TypeError, "logits.*floating.*int32"),
    ({"target": y.double()}, TypeError, "logits is torch.float32, target is torch.float64"),
    ({"weight": torch.rand(3)}, ValueError, r"weight of shape \(3,\) does not broadcast"),
    ({"pos_weight": torch.rand(2, 4, 1)}, ValueError, r"pos_weight of shape \(2, 4, 1\)"),
    ({"target": y.to(meta)}, ValueError, "logits on cpu, target on meta"),
    ({"reduction": "avg"}, ValueError, r"reduction must be one of .*'avg'"),
]


@pytest.mark.parametrize(("override", "exc", "match"), BCE_ERRORS)
def test_sigmoid_bce_bad_input(override, exc, match):
    kwargs = {"logits": z, "target": y, **override}
    with pytest.raises(exc, match=match):
        mbpF.sigmoid_bce(**kwargs)


def test_mlp_reports_wrong_feature_count():
    with pytest.raises(ValueError, match=r"\(8, 4\).*expected input \(\.\.\., 3\)"):
        MLP([3, 5, 1])(torch.randn(8, 4))
