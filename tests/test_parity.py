"""The parity tools: they pass on correct code and, above all, they CATCH bugs, pointing at
the right parameter, the right step and, where they can, the cause."""

from __future__ import annotations

import copy
import json
import math
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from torch_manual_bp.nn import MLP, Linear
from torch_manual_bp.parity import (
    StateMapping,
    backprop_trace,
    compare_gradients,
    compare_training,
    default_tolerance,
)

DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16]


def _optim(name: str):
    import torch_manual_bp.optim as optim

    if not hasattr(optim, name):
        pytest.skip(f"torch_manual_bp.optim.{name} has not landed yet")
    return getattr(optim, name)


def _data(m: int = 16, n: int = 5, device="cpu", dtype=torch.float64, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(m, n, generator=g, dtype=dtype).to(device)
    Y = torch.randint(0, 2, (m, 1), generator=g).to(device=device, dtype=dtype)
    return X, Y


def _tied(net: nn.Module, X: torch.Tensor) -> torch.Tensor:
    """Zero the first layer's bias and the first rows of X: exact ties Z = 0 there."""
    with torch.no_grad():
        net[0].bias.zero_()
    X = X.clone()
    X[:4] = 0
    return X


# --------------------------------------------------------------------------------------
# compare_gradients on correct code
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_compare_gradients_passes_for_the_mlp_and_its_torch_twin(device, dtype):
    torch.manual_seed(0)
    net = MLP([5, 8, 6, 1], relu_grad_at_zero=0, device=device, dtype=dtype)
    X, Y = _data(device=device, dtype=dtype)
    report = compare_gradients(net, net.to_torch(), X, Y)
    assert report.passed, report
    names = [r.name for r in report.rows]
    assert names == [
        "output",
        "loss",
        "0.weight",
        "0.bias",
        "1.weight",
        "1.bias",
        "2.weight",
        "2.bias",
        "input",
    ]
    # Matched by order: the twin's names (with the ReLUs in between) are beside ours.
    assert report["1.weight"].reference == "2.weight"
    assert report["2.bias"].reference == "4.bias"
    assert report.dtype == dtype and report.device.type == torch.device(device).type


def test_compare_gradients_leaves_grad_untouched():
    net = MLP([5, 4, 1], relu_grad_at_zero=0, dtype=torch.float64)
    X, Y = _data()
    compare_gradients(net, net.to_torch(), X, Y)
    assert all(p.grad is None for p in net.parameters())


class _Residual(nn.Module):
    """Not an MLP: two inputs, a skip connection, a shared layer."""

    def __init__(self, make_linear) -> None:
        super().__init__()
        self.a = make_linear(5, 5)
        self.b = make_linear(5, 1)

    def forward(self, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.a(x)) + x * u
        return self.b(self.a(h))


def test_compare_gradients_on_a_module_that_is_not_an_mlp(device):
    torch.manual_seed(0)
    kw = {"dtype": torch.float64, "device": device}
    ours = _Residual(lambda i, o: Linear(i, o, **kw))
    theirs = _Residual(lambda i, o: nn.Linear(i, o, **kw))
    theirs.load_state_dict(ours.state_dict())
    X, Y = _data(device=device)
    U = torch.rand_like(X)
    report = compare_gradients(ours, theirs, (X, U), Y, match="name")
    assert report.passed, report
    assert [r.name for r in report.rows][-2:] == ["input[0]", "input[1]"]


def test_row_threshold_is_atol_plus_rtol_times_the_reference_scale():
    net = MLP([5, 4, 1], relu_grad_at_zero=0, dtype=torch.float32)
    X, Y = _data(dtype=torch.float32)
    twin = net.to_torch()
    report = compare_gradients(net, twin, X, Y)
    rtol, atol = default_tolerance(torch.float32)
    g = torch.autograd.grad(F.binary_cross_entropy_with_logits(twin(X), Y), twin[0].weight)[0]
    assert report["0.weight"].tolerance == pytest.approx(atol + rtol * g.abs().max().item())
    loose = compare_gradients(net, twin, X, Y, rtol=0.5, atol=0.0)
    assert loose["0.weight"].tolerance == pytest.approx(0.5 * g.abs().max().item())


# --------------------------------------------------------------------------------------
# compare_gradients catches buggy backward formulas
# --------------------------------------------------------------------------------------


class _BuggyLinearFn(torch.autograd.Function):
    """Z = A_prev Wᵀ + b (then ReLU if ``relu``) with one deliberate bug in the backward."""

    @staticmethod
    def forward(ctx, A_prev, W, b, relu: bool, bug: str | None):
        Z = F.linear(A_prev, W, b)
        A = torch.relu(Z) if relu else Z
        ctx.save_for_backward(A_prev, W, Z)
        ctx.relu, ctx.bug = relu, bug
        return A

    @staticmethod
    def backward(ctx, dA):
        A_prev, W, Z = ctx.saved_tensors
        bug = ctx.bug
        if not ctx.relu or bug == "no ReLU mask":
            dZ = dA
        elif bug == "ReLU mask on the wrong side":
            dZ = dA * (Z < 0)
        else:
            dZ = dA * (Z > 0)
        dW = A_prev.T @ dZ if bug == "dW transposed" else dZ.T @ A_prev
        db = {
            "db averaged over the batch": dZ.mean(0),
            "db of the first example only": dZ[0],
        }.get(bug, dZ.sum(0))
        dA_prev = dZ @ W.T if bug == "dA_prev with Wᵀ" else dZ @ W
        return dA_prev, dW, db, None, None


class _Layer(nn.Linear):
    def __init__(self, n_in: int, n_out: int, relu: bool, bug: str | None = None) -> None:
        super().__init__(n_in, n_out, dtype=torch.float64)
        self.relu, self.bug = relu, bug

    def forward(self, x):
        return _BuggyLinearFn.apply(x, self.weight, self.bias, self.relu, self.bug)


def _buggy_net(bug: str, layer: int, dtype: torch.dtype):
    """l0: 5→8 ReLU, l1: 8→8 ReLU, l2: 8→1, with ``bug`` in layer ``layer``; its torch twin."""
    torch.manual_seed(0)
    sizes = [(5, 8, True), (8, 8, True), (8, 1, False)]
    ours = nn.Sequential()
    for i, (n_in, n_out, relu) in enumerate(sizes):
        ours.add_module(f"l{i}", _Layer(n_in, n_out, relu, bug if i == layer else None))
    ours = ours.to(dtype)
    theirs = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 1))
    theirs = theirs.to(dtype)
    for mine, twin in zip(ours, theirs[0::2], strict=True):
        twin.load_state_dict(mine.state_dict())
    return ours, theirs


BUGS = [
    # (bug, in layer, the rows that must fail: exactly these)
    ("db averaged over the batch", 0, {"l0.bias"}),
    ("db of the first example only", 2, {"l2.bias"}),
    ("dW transposed", 1, {"l1.weight"}),
    ("dA_prev with Wᵀ", 1, {"l0.weight", "l0.bias", "input"}),
    ("no ReLU mask", 0, {"l0.weight", "l0.bias", "input"}),
    (
        "ReLU mask on the wrong side",
        1,
        {"l1.weight", "l1.bias", "l0.weight", "l0.bias", "input"},
    ),
]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize(("bug", "layer", "failing"), BUGS, ids=[b[0] for b in BUGS])
def test_compare_gradients_catches_the_bug_and_names_the_parameter(bug, layer, failing, dtype):
    ours, theirs = _buggy_net(bug, layer, dtype)
    X, Y = _data(dtype=dtype)
    report = compare_gradients(ours, theirs, X, Y)
    assert not report.passed
    assert {r.name for r in report.failures} == failing, report
    assert report["output"].passed and report["loss"].passed  # the forward is right
    assert "FAIL" in str(report)
    # The same network without the bug passes: the failure is the bug, not the tolerance.
    fixed, twin = _buggy_net(None, layer, dtype)
    assert compare_gradients(fixed, twin, X, Y).passed


@pytest.mark.parametrize(
    ("bug", "layer", "words"),
    [
        ("db averaged over the batch", 0, "'l0.bias' is 1/m of the reference's (m = 16)"),
        ("no ReLU mask", 0, None),  # not a constant factor: no guess
    ],
)
def test_compare_gradients_diagnoses_a_constant_factor(bug, layer, words):
    ours, theirs = _buggy_net(bug, layer, torch.float64)
    X, Y = _data()
    report = compare_gradients(ours, theirs, X, Y)
    assert report.diagnosis == (
        None if words is None else words + ": averaged over the batch, not summed"
    )
    if words:
        assert report["l0.bias"].factor == pytest.approx(1 / 16)
        assert "= 0.0625 × reference" in str(report)


def test_relu_tie_convention_fails_with_a_diagnosis_and_passes_without_ties():
    torch.manual_seed(0)
    X, Y = _data()
    lecture = MLP([5, 8, 1], relu_grad_at_zero=1, dtype=torch.float64)
    X_tied = _tied(lecture, X)
    report = compare_gradients(lecture, lecture.to_torch(), X_tied, Y)
    assert not report.passed
    assert "0.bias" in {r.name for r in report.failures}
    assert "ReLU tie convention" in report.diagnosis
    assert "relu_grad_at_zero=0" in report.diagnosis
    assert "diagnosis: ReLU tie convention" in str(report)
    # No ties in the batch: the two conventions agree.
    assert compare_gradients(lecture, lecture.to_torch(), X + 0.5, Y).passed
    # PyTorch's convention: agree even on the ties.
    pytorch_like = MLP.from_torch(lecture.to_torch(), relu_grad_at_zero=0)
    assert compare_gradients(pytorch_like, lecture.to_torch(), X_tied, Y).passed


# --------------------------------------------------------------------------------------
# Matching parameters, rows without gradients, the report's forms
# --------------------------------------------------------------------------------------


def test_match_by_name_or_mapping():
    net = MLP([5, 4, 1], dtype=torch.float64)
    twin = net.to_torch()
    X, Y = _data()
    with pytest.raises(ValueError, match=r"no reference parameter named \['1.weight', '1.bias'\]"):
        compare_gradients(net, twin, X, Y, match="name")
    mapping = {
        "0.weight": "0.weight",
        "0.bias": "0.bias",
        "1.weight": "2.weight",
        "1.bias": "2.bias",
    }
    report = compare_gradients(net, twin, X + 1, Y, match=mapping)
    assert report.passed, report
    with pytest.raises(ValueError, match="match must be 'order', 'name' or a dict"):
        compare_gradients(net, twin, X, Y, match="position")


def test_parameters_that_do_not_line_up_raise_naming_both_sides():
    net = MLP([5, 4, 1], dtype=torch.float64)
    wider = nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 2)).double()
    X, Y = _data()
    with pytest.raises(
        ValueError, match=r"'1.weight' of shape \(1, 4\).*'2.weight' of shape \(2, 4\)"
    ):
        compare_gradients(net, wider, X, Y)
    deeper = MLP([5, 4, 4, 1], dtype=torch.float64)
    with pytest.raises(ValueError, match=r"as many parameters .* got 4 .* vs 6"):
        compare_gradients(net, deeper, X, Y)


def test_frozen_parameters_and_inputs_without_gradients():
    net = MLP([5, 4, 1], relu_grad_at_zero=0, dtype=torch.float64)
    twin = net.to_torch()
    X, Y = _data()
    net[0].bias.requires_grad_(False)
    twin[0].bias.requires_grad_(False)
    report = compare_gradients(net, twin, X, Y, check_inputs=False)
    assert report.passed
    assert report["0.bias"].note == "no gradient on either side"
    assert "input" not in [r.name for r in report.rows]
    twin[0].bias.requires_grad_(True)
    report = compare_gradients(net, twin, X, Y)
    assert [r.name for r in report.failures] == ["0.bias"]
    assert report["0.bias"].note == "no gradient in the model"


def test_nan_on_one_side_fails_and_on_both_sides_agrees():
    net = nn.Linear(5, 1).double()
    with torch.no_grad():
        net.weight[0, 0] = math.nan
    X, Y = _data()
    report = compare_gradients(net, copy.deepcopy(net), X, Y)
    assert report.passed and "NaN in both" in report["loss"].note
    clean = copy.deepcopy(net)
    with torch.no_grad():
        clean.weight[0, 0] = 0.0
    report = compare_gradients(net, clean, X, Y)
    assert not report.passed and "NaN on one side" in report["loss"].note


def test_loss_fn_and_reference_loss_fn():
    net = MLP([5, 4, 1], relu_grad_at_zero=0, dtype=torch.float64)
    X, Y = _data()

    def summed(z, y):  # a loss that forgot the lecture's 1/m
        return F.binary_cross_entropy_with_logits(z, y, reduction="sum")

    report = compare_gradients(
        net, net.to_torch(), X, Y, summed, reference_loss_fn=F.binary_cross_entropy_with_logits
    )
    assert {r.name for r in report.failures} == {r.name for r in report.rows} - {"output"}
    assert report["loss"].factor == pytest.approx(16)
    assert "'loss' is m = 16 times the reference's" in report.diagnosis
    with pytest.raises(
        ValueError, match=r"loss_fn must return a scalar tensor J, got a tensor of shape \(16, 1\)"
    ):
        compare_gradients(net, net.to_torch(), X, Y, lambda z, y: z)


def test_report_table_is_aligned_and_converts_to_a_dict():
    ours, theirs = _buggy_net("db averaged over the batch", 0, torch.float64)
    X, Y = _data()
    report = compare_gradients(ours, theirs, X, Y)
    lines = str(report).splitlines()
    assert lines[0].startswith("compare_gradients (torch.float64, cpu): FAILED, 8/9 rows pass")
    assert lines[-1].startswith("diagnosis: 'l0.bias' is 1/m")
    header, rule, *rows = lines[1:-1]
    starts = [i for i, c in enumerate(rule) if c == "-" and (i == 0 or rule[i - 1] == " ")]
    for col in ("tensor", "shape", "max abs diff", "max rel diff", "tolerance", "result"):
        assert header.index(col) in starts
    for row in rows:  # every always-filled column starts where its header does
        assert row[0] != " "
        for col in (2, 3, 4, 5, 6):
            assert row[starts[col]] != " " and row[starts[col] - 1] == " "
    d = report.to_dict()
    json.dumps(d)
    assert d["passed"] is False and d["dtype"] == "torch.float64"
    assert [r["name"] for r in d["rows"] if not r["passed"]] == ["l0.bias"]


# --------------------------------------------------------------------------------------
# compare_training
# --------------------------------------------------------------------------------------


def _problem(dtype=torch.float64, device="cpu"):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 1)).to(device, dtype)
    batches = [_data(8, device=device, dtype=dtype, seed=s) for s in range(3)]
    return net, copy.deepcopy(net), batches


def test_compare_training_passes_for_identical_optimizers_and_cycles_batches(device):
    net, twin, batches = _problem(device=device)
    report = compare_training(
        net,
        torch.optim.Adam(net.parameters(), lr=0.01),
        twin,
        torch.optim.Adam(twin.parameters(), lr=0.01),
        batches,
        steps=7,
    )
    assert report.passed and report.first_divergence is None and report.diagnosis is None
    assert [s.step for s in report.steps] == list(range(8))
    names = [r.name for r in report.step(1).rows]
    assert names[:2] == ["loss", "grad 0.weight"]
    assert "0.weight: exp_avg" in names and "2.bias: max_exp_avg_sq" not in names
    assert str(report).startswith("compare_training: PASSED, 7 steps")
    json.dumps(report.to_dict())


def test_compare_training_one_pass_by_default_and_argument_errors():
    net, twin, batches = _problem()
    opt, ref = torch.optim.SGD(net.parameters(), lr=0.1), torch.optim.SGD(twin.parameters(), lr=0.1)
    assert len(compare_training(net, opt, twin, ref, batches).steps) == 1 + len(batches)
    with pytest.raises(ValueError, match="steps must be a positive integer"):
        compare_training(net, opt, twin, ref, batches, steps=0)
    with pytest.raises(ValueError, match="batches is empty"):
        compare_training(net, opt, twin, ref, [], steps=2)
    with pytest.raises(ValueError, match="state_map must be"):
        compare_training(net, opt, twin, ref, batches, state_map="sgd")


@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize(
    "kw", [{}, {"weight_decay": 0.01}, {"maximize": True}], ids=["plain", "wd", "maximize"]
)
def test_momentum_is_sgd_with_lr_alpha_one_minus_beta(kw, dtype, foreach, device):
    Momentum = _optim("Momentum")
    net, twin, batches = _problem(dtype, device)
    alpha, beta = 0.1, 0.9
    ours = Momentum(net.parameters(), lr=alpha, momentum=beta, foreach=foreach, **kw)
    theirs = torch.optim.SGD(twin.parameters(), lr=alpha * (1 - beta), momentum=beta, **kw)
    report = compare_training(net, ours, twin, theirs, batches, steps=6)
    assert report.passed, report
    assert "0.weight: m ↔ −(1−β)·momentum_buffer" in [r.name for r in report.step(6).rows]


@pytest.mark.parametrize(
    "kw",
    [{}, {"weight_decay": 0.01}, {"maximize": True}, {"bias_correction": True}],
    ids=["plain", "wd", "maximize", "bias_correction"],
)
def test_momentum_zero_is_plain_sgd_which_keeps_no_buffer(kw):
    """SGD(momentum=0) keeps no momentum_buffer: m is not compared (β = 0: w + α m is checked
    by the parameter rows), and a correct Momentum(β = 0) passes."""
    Momentum = _optim("Momentum")
    net, twin, batches = _problem()
    ours = Momentum(net.parameters(), lr=0.1, momentum=0, **kw)
    sgd_kw = {k: v for k, v in kw.items() if k != "bias_correction"}  # 1 − 0ᵗ = 1
    theirs = torch.optim.SGD(twin.parameters(), lr=0.1, **sgd_kw)
    report = compare_training(net, ours, twin, theirs, batches, steps=4)
    assert report.passed and report.first_divergence is None, report
    row = next(r for r in report.step(4).rows if r.name == "0.weight: m ↔ −(1−β)·momentum_buffer")
    assert row.passed and "SGD(momentum=0) keeps no 'momentum_buffer'" in row.note


def test_momentum_against_buffer_less_sgd_still_catches_a_beta_mismatch():
    Momentum = _optim("Momentum")
    net, twin, batches = _problem()
    ours = Momentum(net.parameters(), lr=1.0, momentum=0.9)  # α(1 − β) = 0.1: step 1 agrees
    theirs = torch.optim.SGD(twin.parameters(), lr=0.1)
    report = compare_training(net, ours, twin, theirs, batches, steps=3)
    assert report.first_divergence == 2 and "β mismatch" in report.diagnosis, report


LAMBDAS = [
    # LambdaLR's lr at epoch e (= step t − 1) is base_lr · λ(e); step t needs 1/(1 − βᵗ).
    ("1/(1 − β^(e+1))", lambda b: lambda e: 1 / (1 - b ** (e + 1)), None),
    ("1/(1 − β^(e+2))", lambda b: lambda e: 1 / (1 - b ** (e + 2)), 1),
    ("no schedule", lambda b: lambda e: 1.0, 1),
]


@pytest.mark.parametrize(
    ("name", "make_lambda", "diverges_at"), LAMBDAS, ids=[x[0] for x in LAMBDAS]
)
def test_bias_corrected_momentum_is_sgd_under_lambdalr(name, make_lambda, diverges_at):
    """Derives, by testing, the schedule that makes SGD follow slide 2's m̂ = m/(1 − βᵗ)."""
    Momentum = _optim("Momentum")
    net, twin, batches = _problem()
    alpha, beta = 0.1, 0.9
    ours = Momentum(net.parameters(), lr=alpha, momentum=beta, bias_correction=True)
    theirs = torch.optim.SGD(twin.parameters(), lr=alpha * (1 - beta), momentum=beta)
    schedule = torch.optim.lr_scheduler.LambdaLR(theirs, make_lambda(beta))
    report = compare_training(
        net, ours, twin, theirs, batches, steps=8, reference_scheduler=schedule
    )
    assert report.first_divergence == diverges_at, report
    if diverges_at is not None:
        assert "lr mismatch at step 1" in report.diagnosis
        assert "LambdaLR(lambda e: 1/(1 − β**(e + 1)))" in report.diagnosis


ADAM_VARIANTS = [
    ({}, torch.optim.Adam, {}),
    ({"amsgrad": True}, torch.optim.Adam, {"amsgrad": True}),
    ({"weight_decay": 0.1}, torch.optim.Adam, {"weight_decay": 0.1}),
    (
        {"decoupled_weight_decay": True, "weight_decay": 0.1},
        torch.optim.AdamW,
        {"weight_decay": 0.1},
    ),
    ({"maximize": True}, torch.optim.Adam, {"maximize": True}),
]


@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize(
    ("kw", "reference_cls", "reference_kw"),
    ADAM_VARIANTS,
    ids=["plain", "amsgrad", "wd", "adamw", "maximize"],
)
def test_adam_is_torch_adam(kw, reference_cls, reference_kw, dtype, foreach, device):
    Adam = _optim("Adam")
    net, twin, batches = _problem(dtype, device)
    ours = Adam(net.parameters(), lr=0.01, foreach=foreach, **kw)
    theirs = reference_cls(twin.parameters(), lr=0.01, **reference_kw)
    report = compare_training(net, ours, twin, theirs, batches, steps=6)
    assert report.passed, report
    names = {r.name for r in report.step(6).rows}
    assert {"0.weight: m ↔ −exp_avg", "0.weight: s ↔ exp_avg_sq", "0.weight: step ↔ step"} <= names
    assert ("0.weight: s_max ↔ max_exp_avg_sq" in names) == bool(kw.get("amsgrad"))


MISCONFIGURED = [
    # (our optimizer, the reference's, first step where they part, words of the diagnosis)
    ("Momentum", {"lr": 0.1, "momentum": 0.9}, {"lr": 0.1, "momentum": 0.9, "dampening": 0.9}, 1,
     "does not dampen its first step"),
    ("Momentum", {"lr": 0.1, "momentum": 0.9}, {"lr": 0.1, "momentum": 0.9}, 1,
     "lr mismatch at step 1"),
    ("Momentum", {"lr": 0.1, "momentum": 0.9}, {"lr": 0.01, "momentum": 0.8}, 2,
     "β mismatch"),
    ("Adam", {"lr": 0.01, "amsgrad": True}, {"lr": 0.01}, 1, "amsgrad mismatch"),
    ("Adam", {"lr": 0.01}, {"lr": 0.02}, 1, "lr mismatch"),
    ("Adam", {"lr": 0.01, "betas": (0.9, 0.99)}, {"lr": 0.01}, 1, "betas mismatch"),
]  # fmt: skip


@pytest.mark.parametrize(("kind", "ours_kw", "theirs_kw", "step", "words"), MISCONFIGURED)
def test_compare_training_diagnoses_misconfigured_references(kind, ours_kw, theirs_kw, step, words):
    net, twin, batches = _problem()
    ours = _optim(kind)(net.parameters(), **ours_kw)
    theirs = (torch.optim.SGD if kind == "Momentum" else torch.optim.Adam)(
        twin.parameters(), **theirs_kw
    )
    report = compare_training(net, ours, twin, theirs, batches, steps=4)
    assert report.first_divergence == step, report
    assert words in report.diagnosis
    assert f"first divergence at step {step}" in str(report)


def test_compare_training_reports_a_different_start_at_step_0():
    net, twin, batches = _problem()
    with torch.no_grad():
        twin[2].bias += 1
    report = compare_training(
        net,
        torch.optim.SGD(net.parameters(), lr=0.1),
        twin,
        torch.optim.SGD(twin.parameters(), lr=0.1),
        batches,
    )
    assert report.first_divergence == 0
    assert [r.name for r in report.step(0).failures] == ["2.bias"]
    assert "start from different parameters" in report.diagnosis


def test_compare_training_finds_relu_ties_in_the_batch():
    torch.manual_seed(0)
    X, Y = _data()
    lecture = MLP([5, 8, 1], relu_grad_at_zero=1, dtype=torch.float64)
    batches = [(X + 0.5, Y), (_tied(lecture, X), Y)]  # ties in batch 2 only...
    twin = lecture.to_torch()  # ...but step 1 moves the bias off zero: no tie left
    opt = torch.optim.SGD(lecture.parameters(), lr=0.1)
    ref = torch.optim.SGD(twin.parameters(), lr=0.1)
    assert compare_training(lecture, opt, twin, ref, batches).passed
    # A zero bias left out of the optimizer keeps the ties: they part at step 3, the first
    # batch with ties, in dJ/db[1] (the only gradient a tie of the first layer reaches).
    lecture = MLP([5, 8, 1], relu_grad_at_zero=1, dtype=torch.float64)
    batches = [(X + 0.5, Y), (X + 0.5, Y), (_tied(lecture, X), Y), (X + 0.5, Y)]
    twin = lecture.to_torch()
    opt = torch.optim.SGD([p for n, p in lecture.named_parameters() if n != "0.bias"], lr=0.1)
    ref = torch.optim.SGD([p for n, p in twin.named_parameters() if n != "0.bias"], lr=0.1)
    report = compare_training(lecture, opt, twin, ref, batches)
    assert report.first_divergence == 3, report
    assert [r.name for r in report.step(3).failures] == ["grad 0.bias"]
    assert report.diagnosis.startswith("step 3: ReLU tie convention")


class _UserAdam(torch.optim.Optimizer):
    """A user's Adam in the lecture's convention (m averages −g), with an optional bug."""

    def __init__(self, params, lr=0.01, betas=(0.9, 0.999), eps=1e-8, bug=None):
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps})
        self.bug = bug

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for w in group["params"]:
                st = self.state[w]
                if not st:
                    st["step"], st["m"], st["s"] = 0, torch.zeros_like(w), torch.zeros_like(w)
                t = st["step"] + 1
                if self.bug != "step counter never saved":
                    st["step"] = t
                g = w.grad
                sign = 1 if self.bug == "m averages +g" else -1
                st["m"].mul_(beta1).add_(g, alpha=sign * (1 - beta1))
                st["s"].mul_(beta2).addcmul_(g, g, value=1 - beta2)
                t_hat = t + 1 if self.bug == "bias correction off by one" else t
                m_hat = st["m"] / (1 - beta1**t_hat)
                s_hat = st["s"] / (1 - beta2**t)
                w.add_(-sign * m_hat / (s_hat.sqrt() + group["eps"]), alpha=group["lr"])


USER_BUGS = [
    (None, None, None),
    ("bias correction off by one", 1, "moved differently"),
    ("step counter never saved", 1, "optimizer state parts first at '0.weight: step ↔ step'"),
    ("m averages +g", 1, "optimizer state parts first at '0.weight: m ↔ −exp_avg'"),
]


@pytest.mark.parametrize(("bug", "step", "words"), USER_BUGS, ids=[str(b[0]) for b in USER_BUGS])
def test_compare_training_catches_a_buggy_optimizer_at_the_right_step(bug, step, words):
    net, twin, batches = _problem()
    ours = _UserAdam(net.parameters(), bug=bug)
    theirs = torch.optim.Adam(twin.parameters(), lr=0.01)
    # ADAM_STATE, picked from the reference's class: m ↔ −exp_avg, s ↔ exp_avg_sq, and the
    # user's int step ↔ torch's tensor step.
    report = compare_training(net, ours, twin, theirs, batches, steps=5)
    assert report.first_divergence == step, report
    if bug is None:
        assert "0.weight: step ↔ step" in {r.name for r in report.step(5).rows}
        return
    if bug == "step counter never saved":  # the parameters only part at step 2
        assert all(":" in r.name for r in report.step(1).failures)
    assert "grad" not in " ".join(r.name for r in report.step(step).failures)
    assert words in report.diagnosis
    assert "0.weight" in report.diagnosis


def test_custom_state_mapping_for_a_user_optimizer():
    net, twin, batches = _problem()
    ours = _UserAdam(net.parameters())
    theirs = torch.optim.Adam(twin.parameters(), lr=0.01)
    halved = [StateMapping("s", "exp_avg_sq", "s ↔ 2·exp_avg_sq", lambda s, group: s / 2)]
    report = compare_training(net, ours, twin, theirs, batches, steps=2, state_map=halved)
    assert report.first_divergence == 1
    assert {r.name for r in report.step(1).failures} == {
        f"{n}: s ↔ 2·exp_avg_sq" for n in ("0.weight", "0.bias", "2.weight", "2.bias")
    }


# --------------------------------------------------------------------------------------
# backprop_trace
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("relu_grad_at_zero", [1, 0])
def test_backprop_trace_matches_autograd_even_on_ties(relu_grad_at_zero, dtype, device):
    torch.manual_seed(0)
    net = MLP([5, 8, 6, 1], relu_grad_at_zero=relu_grad_at_zero, device=device, dtype=dtype)
    X, Y = _data(device=device, dtype=dtype)
    trace = backprop_trace(net, _tied(net, X), Y[:, 0])  # Y as the lecture's row vector
    assert trace.passed, trace
    assert list(trace.intermediates) == [
        "dJ/dZ[3]", "dJ/dW[3]", "dJ/db[3]", "dJ/dA[2]",
        "dJ/dZ[2]", "dJ/dW[2]", "dJ/db[2]", "dJ/dA[1]",
        "dJ/dZ[1]", "dJ/dW[1]", "dJ/db[1]", "dJ/dA[0]",
    ]  # fmt: skip
    assert [r.name for r in trace.rows] == ["J", *trace.intermediates]
    assert trace["dJ/dZ[2]"].shape == (16, 6) and trace["dJ/dW[2]"].shape == (6, 8)
    assert set(trace.layer(1)) == {"dJ/dZ[1]", "dJ/dW[1]", "dJ/db[1]", "dJ/dA[0]"}


def test_backprop_trace_equals_the_packages_own_gradients():
    """The trace (formulas on tensors) and the MLP's Functions (the same formulas inside
    autograd) give the same dJ/dW[l], dJ/db[l], in both conventions, on ties."""
    torch.manual_seed(0)
    for relu_grad_at_zero in (1, 0):
        net = MLP([5, 8, 1], relu_grad_at_zero=relu_grad_at_zero, dtype=torch.float64)
        X, Y = _data()
        X = _tied(net, X)
        trace = backprop_trace(net, X, Y)
        F.binary_cross_entropy_with_logits(net(X), Y).backward()
        for l, layer in enumerate(net, start=1):
            torch.testing.assert_close(trace[f"dJ/dW[{l}]"], layer.weight.grad)
            torch.testing.assert_close(trace[f"dJ/db[{l}]"], layer.bias.grad)


def test_backprop_trace_conventions_differ_exactly_on_ties():
    torch.manual_seed(0)
    net = MLP([5, 8, 1], dtype=torch.float64)
    X, Y = _data()
    X = _tied(net, X)
    lecture = backprop_trace(net, X, Y)["dJ/dZ[1]"]
    pytorch = backprop_trace(net, X, Y, relu_grad_at_zero=0)["dJ/dZ[1]"]
    Z1 = F.linear(X, net[0].weight, net[0].bias)
    differ = lecture != pytorch
    assert differ.any() and (Z1[differ] == 0).all()


def test_backprop_trace_on_a_torch_sequential_without_bias_and_its_report():
    torch.manual_seed(0)
    seq = nn.Sequential(nn.Linear(5, 4, bias=False), nn.ReLU(), nn.Linear(4, 1, bias=False))
    X, Y = _data(dtype=torch.float32)
    trace = backprop_trace(seq, X, Y)
    assert trace.passed and trace.relu_grad_at_zero == 0
    assert not any(name.startswith("dJ/db") for name in trace.intermediates)
    assert str(trace).startswith("backprop_trace: PASSED")
    assert "1{Z > 0}" in str(trace).splitlines()[0]
    d = trace.to_dict()
    json.dumps(d)
    assert d["passed"] and len(d["rows"]) == 1 + len(trace.intermediates)


@pytest.mark.parametrize(
    ("model", "X_shape", "Y_shape", "words"),
    [
        (nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 1)), (8, 5), (8,), "expects"),
        (MLP([5, 4, 1]), (8, 3), (8,), r"X must have shape \(m, 5\)"),
        (MLP([5, 4, 2]), (8, 5), (8,), r"Y must have shape \(8, 2\)"),
    ],
)
def test_backprop_trace_errors(model: Any, X_shape, Y_shape, words):
    with pytest.raises(ValueError, match=words):
        backprop_trace(model, torch.randn(X_shape), torch.rand(Y_shape))
    with pytest.raises(ValueError, match="relu_grad_at_zero must be 1 or 0"):
        backprop_trace(MLP([5, 4, 1]), torch.randn(8, 5), torch.rand(8), relu_grad_at_zero=2)


# --------------------------------------------------------------------------------------
# The example script: a deliberately buggy Function, caught
# --------------------------------------------------------------------------------------


def test_example_verify_your_backward_catches_its_bugs(capsys):
    import pathlib
    import runpy

    script = pathlib.Path(__file__).parents[1] / "examples" / "verify_your_backward.py"
    with pytest.raises(SystemExit) as exc:
        runpy.run_path(str(script), run_name="__main__")
    out = capsys.readouterr().out
    assert exc.value.code == 0, out
    assert "-> caught: the report fails on ['0.bias']" in out
    assert "-> caught: the report fails on ['0.weight', '0.bias', 'input']" in out
    assert "every bug caught, every correct version passed" in out
