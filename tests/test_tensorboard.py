"""TrainingLogger: the optimizer's m̂, ŝ and step, checked against the step actually taken and
against torch.optim's state; event files read back with EventAccumulator (tags AND values)."""

import math
import os

import pytest
import torch

pytest.importorskip("tensorboard")

import torch_manual_bp as mbp
from torch_manual_bp.tensorboard import (
    TrainingLogger,
    layer_name,
    optimizer_quantities,
    read_hparams,
    read_scalars,
)

# (name, optimizer factory); every rule's "update" must equal the parameter change it made
# (no weight decay here, so the rule's own step is the whole step).
OPTIMIZERS = [
    ("mbp-adam", lambda p: mbp.optim.Adam(p, lr=0.01)),
    ("mbp-adam-amsgrad", lambda p: mbp.optim.Adam(p, lr=0.01, amsgrad=True)),
    ("mbp-momentum", lambda p: mbp.optim.Momentum(p, lr=0.1, momentum=0.9)),
    ("mbp-momentum-hat", lambda p: mbp.optim.Momentum(p, lr=0.1, bias_correction=True)),
    ("torch-adam", lambda p: torch.optim.Adam(p, lr=0.01)),
    ("torch-adam-amsgrad", lambda p: torch.optim.Adam(p, lr=0.01, amsgrad=True)),
    ("torch-sgd-momentum", lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9)),
    ("torch-sgd", lambda p: torch.optim.SGD(p, lr=0.1)),
]


def _net_and_batch(seed: int = 0, dtype=torch.float64):
    torch.manual_seed(seed)
    net = mbp.nn.MLP([5, 4, 3, 1], dtype=dtype)
    x = torch.randn(16, 5, dtype=dtype)
    y = (torch.rand(16, dtype=dtype) > 0.5).to(dtype)
    return net, x, y


def _train_step(net, opt, x, y):
    loss = mbp.functional.sigmoid_bce(net(x).squeeze(-1), y)
    opt.zero_grad()
    loss.backward()
    opt.step()
    return loss


@pytest.mark.parametrize(("name", "make"), OPTIMIZERS, ids=[n for n, _ in OPTIMIZERS])
def test_update_is_the_step_actually_taken(name, make):
    net, x, y = _net_and_batch()
    opt = make(net.parameters())
    for _ in range(3):  # t = 3: the bias corrections matter
        before = {n: p.detach().clone() for n, p in net.named_parameters()}
        _train_step(net, opt, x, y)
        q = optimizer_quantities(opt, dict(net.named_parameters()))
        assert set(q) == set(before)
        for n, p in net.named_parameters():
            torch.testing.assert_close(
                q[n]["update"], p.detach() - before[n], rtol=1e-9, atol=1e-12
            )


class _HalfUsed(torch.nn.Module):
    """w's last two coordinates never reach the loss: their gradient is always 0, so ŝ = 0."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor([0.5, -1.0, 2.0, 3.0], dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.w[:2] * x).sum()


@pytest.mark.parametrize("amsgrad", [False, True])
def test_adam_eps_0_logs_the_zero_step_not_nan(tmp_path, amsgrad):
    """ε = 0 and ŝ = 0: the optimizer leaves w alone there; the logged update is 0, not NaN."""
    model = _HalfUsed()
    opt = mbp.optim.Adam(model.parameters(), lr=0.1, eps=0.0, amsgrad=amsgrad)
    x = torch.tensor([1.0, -2.0], dtype=torch.float64)
    with TrainingLogger(tmp_path / "r") as tb:
        for step in range(3):
            before = model.w.detach().clone()
            loss = model(x)
            opt.zero_grad()
            loss.backward()
            opt.step()
            change = model.w.detach() - before
            update = optimizer_quantities(opt, dict(model.named_parameters()))["w"]["update"]
            torch.testing.assert_close(update, change, rtol=1e-9, atol=0.0)
            assert torch.equal(update[2:], torch.zeros(2, dtype=torch.float64))
            tb.log_step(step, model, opt, loss, histograms=True)
    norms = [v for _, v in read_scalars(tmp_path / "r")["optim/update_norm/w"]]
    assert all(math.isfinite(v) for v in norms) and norms == pytest.approx([0.1 * 2**0.5] * 3)


def test_adam_m_hat_and_s_hat_match_torch_adam():
    """Ours (m = average of −∇J) and torch's (exp_avg = average of +∇J), stepped in pairs."""
    net, x, y = _net_and_batch()
    twin = mbp.nn.MLP.from_torch(net.to_torch())
    ours = mbp.optim.Adam(net.parameters(), lr=0.01)
    theirs = torch.optim.Adam(twin.parameters(), lr=0.01)
    for t in range(1, 4):
        _train_step(net, ours, x, y)
        _train_step(twin, theirs, x, y)
        q_ours = optimizer_quantities(ours, dict(net.named_parameters()))
        q_theirs = optimizer_quantities(theirs, dict(twin.named_parameters()))
        for n, p in twin.named_parameters():
            st = theirs.state[p]
            m_hat_torch = -st["exp_avg"] / (1 - 0.9**t)  # the lecture's m̂ is −exp_avg / (1 − β₁ᵗ)
            s_hat_torch = st["exp_avg_sq"] / (1 - 0.999**t)
            for q in (q_ours[n], q_theirs[n]):
                torch.testing.assert_close(q["m_hat"], m_hat_torch)
                torch.testing.assert_close(q["s_hat"], s_hat_torch)


@pytest.mark.parametrize(
    ("param", "layer"),
    [("0.weight", "layer1"), ("2.bias", "layer3"), ("module.1.weight", "layer2"),
     ("_orig_mod.0.bias", "layer1"), ("encoder.fc.weight", "encoder.fc"), ("w", "w")],
)  # fmt: skip
def test_layer_names(param, layer):
    assert layer_name(param) == layer


def _norm(tensors) -> float:
    return math.sqrt(sum(float(t.square().sum()) for t in tensors))


LR_SCHEDULE = [0.01, 0.005, 0.0025]


def test_logged_tags_and_values_read_back(tmp_path):
    net, x, y = _net_and_batch(dtype=torch.float32)
    opt = mbp.optim.Adam(net.parameters(), lr=0.01)
    run = tmp_path / "run"
    losses, grad_norms, update_norms = [], [], []
    with TrainingLogger(run) as tb:
        for step, lr in enumerate(LR_SCHEDULE):
            opt.param_groups[0]["lr"] = lr  # a schedule: the logged lr must follow it
            before = [p.detach().clone() for p in net[0].parameters()]
            loss = _train_step(net, opt, x, y)
            tb.log_step(step, net, opt, loss, histograms=step == 2)
            losses.append(float(loss.detach()))
            grad_norms.append(_norm([p.grad for p in net[0].parameters()]))
            after = [p.detach() for p in net[0].parameters()]
            update_norms.append(_norm([a - b for a, b in zip(after, before, strict=True)]))
        tb.log_scalars(3, {"val/loss": 0.25})
        tb.log_hparams({"lr": 0.01, "optimizer": "adam", "hidden": [4, 3]}, {"hparam/val": 0.5})
    assert os.listdir(tmp_path) == ["run"]  # hparams in the SAME directory, nothing beside it
    assert all(f.startswith("events.out.tfevents") for f in os.listdir(run))
    scalars = read_scalars(run)
    expected_tags = {"train/loss", "lr", "val/loss", "hparam/val"} | {
        f"{kind}/layer{i}"
        for i in (1, 2, 3)
        for kind in ("grad_norm", "optim/m_hat_norm", "optim/s_hat_mean", "optim/update_norm")
    }
    assert set(scalars) == expected_tags
    assert [s for s, _ in scalars["train/loss"]] == [0, 1, 2]
    for tag, want in (
        ("train/loss", losses),
        ("grad_norm/layer1", grad_norms),
        ("optim/update_norm/layer1", update_norms),
    ):
        got = [v for _, v in scalars[tag]]
        assert got == pytest.approx(want, rel=1e-5), tag
    assert [s for s, _ in scalars["lr"]] == [0, 1, 2]
    assert [v for _, v in scalars["lr"]] == pytest.approx(LR_SCHEDULE, rel=1e-6)
    hparams, metrics = read_hparams(run)
    assert hparams == {"lr": 0.01, "optimizer": "adam", "hidden": "[4, 3]"}
    assert metrics == ["hparam/val"]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run), size_guidance={"histograms": 0})
    acc.Reload()
    histos = set(acc.Tags()["histograms"])
    assert {"weights/0.weight", "grads/2.bias", "optim/m_hat/1.weight", "optim/s_hat/0.bias",
            "optim/update/2.weight"} <= histos  # fmt: skip
    hist = acc.Histograms("weights/0.weight")[0].histogram_value
    assert hist.num == net[0].weight.numel()
    assert hist.min == pytest.approx(float(net[0].weight.detach().min()), rel=1e-6)


def test_logger_on_plain_torch_model_and_optimizer(tmp_path):
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.ReLU(), torch.nn.Linear(2, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    with TrainingLogger(tmp_path / "r") as tb:
        tb.log_step(0, model, opt, 1.5)
    scalars = read_scalars(tmp_path / "r")
    assert scalars["train/loss"] == [(0, 1.5)]
    assert {"grad_norm/layer1", "grad_norm/layer3", "optim/update_norm/layer1"} <= set(scalars)
