"""Momentum and Adam against torch.optim, step by step, parameters AND optimizer state.

Every parity test runs our optimizer and its PyTorch twin on identical copies of the same
parameters with identical gradients, and compares after every step:

- Adam ≡ torch.optim.Adam (same arguments); m == -exp_avg, s == exp_avg_sq,
  s_max == max_exp_avg_sq.
- Momentum(α, β) ≡ torch.optim.SGD(lr=α(1 − β), momentum=β); m == -(1 − β)·momentum_buffer;
  with bias_correction the SGD runs under LambdaLR(lambda e: 1 / (1 − β^(e + 1))).
"""

from __future__ import annotations

import copy
import io
import math
import pickle
import re
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
import torch

from torch_manual_bp.optim import Adam, Momentum, adam_step_direction, momentum_step_direction

# (rtol, atol) per dtype for parameters and state after many steps of ours vs torch.
TOL = {
    torch.float64: (1e-10, 1e-13),
    torch.complex128: (1e-10, 1e-13),
    torch.float32: (1e-5, 1e-6),
    torch.bfloat16: (1e-2, 1e-2),
    torch.float16: (2e-3, 2e-3),
}


# ---------------------------------------------------------------------------------------------
# The paired runner
# ---------------------------------------------------------------------------------------------


def bias_corrected_lambda(beta: float) -> Callable[[int], float]:
    """LambdaLR factor that turns SGD into slide 2's Momentum (m̂ = m/(1 − βᵗ)).

    LambdaLR sets lr = base_lr · λ(e) with e = scheduler.last_epoch: e = 0 at construction,
    so during optimizer step t (counted from 1) the scheduler has been stepped t − 1 times and
    e = t − 1. The factor for step t is 1/(1 − βᵗ), hence λ(e) = 1/(1 − β^(e + 1)).
    """
    return lambda e: 1.0 / (1.0 - beta ** (e + 1))


def torch_twin(kind: str, groups: list[dict], opts: dict):
    """Our optimizer's PyTorch equivalent and, for bias-corrected Momentum, its scheduler."""
    # the twin takes PyTorch's default path: its capturable=True is CUDA-only, and the
    # trajectory does not depend on the path
    opts = {k: v for k, v in opts.items() if k not in ("capturable", "fused")}
    if kind == "adam":
        return torch.optim.Adam(groups, **opts), None

    # Momentum(α, β) ≡ SGD(α(1 − β), β): translate lr, per group too.
    def sgd_group(g: dict) -> dict:
        g = dict(g)
        beta = g.pop("momentum", opts.get("momentum", 0.9))
        g.pop("bias_correction", None)
        if "lr" in g:
            g["lr"] = g["lr"] * (1 - beta)
        g["momentum"] = beta
        return g

    o = dict(opts)
    beta = o.pop("momentum", 0.9)
    bias_correction = o.pop("bias_correction", False)
    o["lr"] = o.get("lr", 1e-2) * (1 - beta)
    sgd = torch.optim.SGD([sgd_group(g) for g in groups], momentum=beta, **o)
    sched = None
    if bias_correction:
        sched = torch.optim.lr_scheduler.LambdaLR(sgd, bias_corrected_lambda(beta))
    return sgd, sched


def ours(kind: str, groups: list[dict], opts: dict):
    return (Adam if kind == "adam" else Momentum)(groups, **opts)


def assert_state_matches(kind: str, opt, twin, ps: list, qs: list, tol) -> None:
    rtol, atol = tol
    for gi, group in enumerate(opt.param_groups):
        for p, q in zip(group["params"], twin.param_groups[gi]["params"], strict=True):
            torch.testing.assert_close(p, q, rtol=rtol, atol=atol, msg=lambda m: f"w: {m}")
            st, tq = opt.state.get(p, {}), twin.state.get(q, {})
            if kind == "adam":
                assert bool(st) == bool(tq)
                if not st:
                    continue
                assert st["step"].item() == tq["step"].item()
                torch.testing.assert_close(st["m"], -tq["exp_avg"], rtol=rtol, atol=atol)
                torch.testing.assert_close(st["s"], tq["exp_avg_sq"], rtol=rtol, atol=atol)
                if group["amsgrad"]:
                    torch.testing.assert_close(
                        st["s_max"], tq["max_exp_avg_sq"], rtol=rtol, atol=atol
                    )
            else:
                if twin.param_groups[gi]["momentum"] == 0:
                    continue  # plain SGD keeps no buffer (our m is then just −g)
                buf = tq.get("momentum_buffer")
                assert (buf is not None) == bool(st)
                if buf is None:
                    continue
                beta = group["momentum"]
                torch.testing.assert_close(st["m"], -(1 - beta) * buf, rtol=rtol, atol=atol)


@dataclass
class Scenario:
    """Parameters (per group: shapes and group options) and which gradients exist when."""

    name: str
    groups: list[tuple[list[tuple[int, ...]], dict]] = field(
        default_factory=lambda: [([(4, 3), (3,), (2, 2, 2)], {})]
    )
    # (step, flat param index) -> has a gradient at that step?
    has_grad: Callable[[int, int], bool] = lambda t, i: True
    non_contiguous: bool = False
    complex_: bool = False


SCENARIOS = {
    "plain": Scenario("plain"),
    "groups": Scenario(
        "groups",
        groups=[
            ([(5, 2), (2,)], {"lr": 0.03}),
            ([(3, 3)], {"lr": 0.002, "weight_decay": 0.05}),
        ],
    ),
    "zero_dim": Scenario("zero_dim", groups=[([(), (3,)], {})]),
    # param 1 has no gradient at steps 3 and 7 (and nothing is done to it then)
    "some_none": Scenario("some_none", has_grad=lambda t, i: not (i == 1 and t in (3, 7))),
    # param 2 frozen for the first 10 steps: its state starts late, its step count lags
    "unfrozen": Scenario("unfrozen", has_grad=lambda t, i: i != 2 or t > 10),
    "non_contiguous": Scenario("non_contiguous", non_contiguous=True),
}


def make_groups(sc: Scenario, dtype, device, seed: int = 0) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    groups = []
    for shapes, gopts in sc.groups:
        params = []
        for shape in shapes:
            if sc.non_contiguous and len(shape) == 2:
                # a transposed leaf: strides (1, rows), like a weight stored the other way
                x = torch.randn(shape[::-1], generator=g, dtype=torch.float64).t()
            else:
                x = torch.randn(shape, generator=g, dtype=torch.float64)
            x = x.to(device=device, dtype=dtype)
            if sc.non_contiguous and x.dim() == 2:
                assert not x.is_contiguous()
            params.append(x.requires_grad_())
        groups.append({"params": params, **gopts})
    return groups


def clone_groups(groups: list[dict]) -> list[dict]:
    out = []
    for grp in groups:
        ps = []
        for p in grp["params"]:
            q = torch.empty_strided(p.shape, p.stride(), dtype=p.dtype, device=p.device)
            ps.append(q.copy_(p.detach()).requires_grad_())
        out.append({**grp, "params": ps})
    return out


def set_grads(params: list, step: int, sc: Scenario, seed: int = 1, scale: float = 1.0) -> None:
    g = torch.Generator().manual_seed(seed * 100_003 + step)
    for i, p in enumerate(params):
        grad = torch.randn(p.shape, generator=g, dtype=torch.float64) * scale
        if p.dtype.is_complex:
            grad = torch.complex(grad, torch.randn(p.shape, generator=g, dtype=torch.float64))
        grad = grad.to(device=p.device, dtype=p.dtype)
        if sc.non_contiguous and grad.dim() == 2:
            grad = grad.t().contiguous().t()  # a non-contiguous gradient as well
        p.grad = grad if sc.has_grad(step, i) else None


def run_parity(
    kind: str,
    opts: dict,
    sc: Scenario,
    *,
    dtype=torch.float64,
    device="cpu",
    steps: int = 50,
    tol=None,
    grad_scale: float = 1.0,
) -> None:
    groups = make_groups(sc, dtype, device)
    twin_groups = clone_groups(groups)
    opt = ours(kind, groups, opts)
    twin, sched = torch_twin(kind, twin_groups, opts)
    ps = [p for grp in opt.param_groups for p in grp["params"]]
    qs = [q for grp in twin.param_groups for q in grp["params"]]
    tol = tol or TOL[dtype]
    for t in range(1, steps + 1):
        set_grads(ps, t, sc, scale=grad_scale)
        set_grads(qs, t, sc, scale=grad_scale)
        opt.step()
        twin.step()
        if sched is not None:
            sched.step()
        assert_state_matches(kind, opt, twin, ps, qs, tol)


# ---------------------------------------------------------------------------------------------
# Parity grids
# ---------------------------------------------------------------------------------------------

ADAM_GRID = [
    dict(weight_decay=wd, decoupled_weight_decay=dec, amsgrad=ams, maximize=mx, foreach=fe)
    for wd in (0.0, 0.1)
    for dec in (False, True)
    for ams in (False, True)
    for mx in (False, True)
    for fe in (False, True)
    if not (wd == 0.0 and dec)  # decoupled with λ = 0 is the λ = 0 case
]


@pytest.mark.parametrize(
    "opts", ADAM_GRID, ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items())
)
def test_adam_matches_torch_grid_float64(opts, device):
    run_parity("adam", {"lr": 0.01, **opts}, SCENARIOS["plain"], device=device)


MOMENTUM_GRID = [
    dict(weight_decay=wd, maximize=mx, bias_correction=bc, foreach=fe, momentum=beta)
    for wd in (0.0, 0.1)
    for mx in (False, True)
    for bc in (False, True)
    for fe in (False, True)
    for beta in (0.9, 0.0)
    if not (beta == 0.0 and bc)
]


@pytest.mark.parametrize(
    "opts", MOMENTUM_GRID, ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items())
)
def test_momentum_matches_sgd_grid_float64(opts, device):
    run_parity("momentum", {"lr": 0.05, **opts}, SCENARIOS["plain"], device=device)


@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize("scenario", [s for s in SCENARIOS if s != "plain"])
@pytest.mark.parametrize("kind", ["adam", "momentum"])
def test_parity_scenarios_float64(kind, scenario, foreach, device):
    opts = {"lr": 0.01, "foreach": foreach}
    if kind == "adam":
        opts["amsgrad"] = True
    elif scenario not in ("some_none", "unfrozen"):
        # SGD + LambdaLR has one t for all parameters; ours counts t per parameter, so with
        # skipped steps the twin is one SGD per parameter: test_momentum_bias_correction_per_param_t
        opts["bias_correction"] = True
    run_parity(kind, opts, SCENARIOS[scenario], device=device)


@pytest.mark.parametrize("foreach", [False, True])
def test_momentum_bias_correction_per_param_t(foreach, device):
    """m̂ = m/(1 − βᵗ) uses each parameter's own t: a parameter that gets gradients late (or
    skips steps) is corrected by its own count, as one SGD + LambdaLR per parameter that only
    steps when the parameter has a gradient."""
    sc = SCENARIOS["unfrozen"]
    has = lambda t, i: sc.has_grad(t, i) and not (i == 1 and t in (3, 7))  # noqa: E731
    groups = make_groups(sc, torch.float64, device)
    opt = Momentum(
        clone_groups(groups), lr=0.02, momentum=0.8, bias_correction=True, foreach=foreach
    )
    ps = opt.param_groups[0]["params"]
    twins = []
    for p in clone_groups(groups)[0]["params"]:
        sgd = torch.optim.SGD([p], lr=0.02 * (1 - 0.8), momentum=0.8)
        twins.append((p, sgd, torch.optim.lr_scheduler.LambdaLR(sgd, bias_corrected_lambda(0.8))))
    for t in range(1, 31):
        set_grads(ps, t, sc)
        set_grads([q for q, _, _ in twins], t, sc)
        for i, (p, (q, _, _)) in enumerate(zip(ps, twins, strict=True)):
            if not has(t, i):
                p.grad = q.grad = None
        opt.step()
        for q, sgd, sched in twins:
            if q.grad is not None:
                sgd.step()
                sched.step()
        for p, (q, sgd, _) in zip(ps, twins, strict=True):
            torch.testing.assert_close(p, q, rtol=1e-10, atol=1e-13)
            if p in opt.state:
                buf = sgd.state[q]["momentum_buffer"]
                torch.testing.assert_close(
                    opt.state[p]["m"], -(1 - 0.8) * buf, rtol=1e-10, atol=1e-13
                )


@pytest.mark.parametrize("kind", ["adam", "momentum"])
def test_multi_tensor_cpu_batches(kind, monkeypatch):
    """On CPU the multi-tensor path works through the list in bounded batches (so that its
    temporaries stay small); with a tiny batch size every batch boundary is crossed."""
    from torch_manual_bp.optim import _common

    monkeypatch.setattr(_common, "CPU_BATCH_NUMEL", 10)
    sc = SCENARIOS["groups"]
    assert _common.batches([torch.zeros(4), torch.zeros(5), torch.zeros(30), torch.zeros(1)]) == [
        [0, 1],
        [2],
        [3],
    ]
    opts = {"lr": 0.01, "foreach": True}
    opts.update({"amsgrad": True} if kind == "adam" else {"bias_correction": True})
    run_parity(kind, opts, sc)


@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize("kind", ["adam", "momentum"])
def test_parity_complex(kind, foreach, device):
    """Complex parameters are updated as view_as_real, like PyTorch."""
    sc = SCENARIOS["plain"]
    run_parity(kind, {"lr": 0.01, "foreach": foreach}, sc, dtype=torch.complex128, device=device)


@pytest.mark.parametrize(
    "dtype,steps",
    [(torch.float32, 50), (torch.bfloat16, 20), (torch.float16, 20)],
    ids=["float32", "bfloat16", "float16"],
)
@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize("kind", ["adam", "momentum"])
def test_parity_low_precision(kind, foreach, dtype, steps, device):
    opts = {"lr": 0.01, "foreach": foreach, "weight_decay": 0.01}
    run_parity(kind, opts, SCENARIOS["plain"], dtype=dtype, device=device, steps=steps)


@pytest.mark.parametrize("foreach", [False, True])
def test_adam_capturable_matches_torch(foreach, device):
    """capturable=True (step on the device, scalar arithmetic on tensors) gives the same
    trajectory; on CPU too, where it is allowed and just avoids .item()."""
    run_parity(
        "adam",
        {"lr": 0.01, "capturable": True, "foreach": foreach, "amsgrad": True, "weight_decay": 0.1},
        SCENARIOS["unfrozen"],
        device=device,
    )


@pytest.mark.parametrize("kind", ["adam", "momentum"])
@pytest.mark.parametrize("foreach", [False, True])
def test_tensor_lr(kind, foreach, device):
    """A 1-element Tensor lr (with its value changed in place between steps) acts like the
    float lr."""
    sc = SCENARIOS["plain"]
    groups = make_groups(sc, torch.float64, device)
    lr = torch.tensor(0.01, dtype=torch.float64)
    opt = ours(kind, clone_groups(groups), {"lr": lr, "foreach": foreach})
    ref = ours(kind, clone_groups(groups), {"lr": 0.01, "foreach": foreach})
    twin, _ = torch_twin(kind, clone_groups(groups), {"lr": 0.01})
    ps, rs = opt.param_groups[0]["params"], ref.param_groups[0]["params"]
    qs = twin.param_groups[0]["params"]
    for t in range(1, 21):
        if t == 11:  # a scheduler would do this; the float twins follow by hand
            lr.fill_(0.003)
            ref.param_groups[0]["lr"] = 0.003
            twin.param_groups[0]["lr"] = 0.003 * (1 if kind == "adam" else 1 - 0.9)
        for xs in (ps, rs, qs):
            set_grads(xs, t, sc)
        opt.step()
        ref.step()
        twin.step()
        assert_state_matches(kind, opt, twin, ps, qs, TOL[torch.float64])
        for p, r in zip(ps, rs, strict=True):
            torch.testing.assert_close(p, r, rtol=1e-13, atol=1e-15)


# ---------------------------------------------------------------------------------------------
# Schedulers, closure, GradScaler
# ---------------------------------------------------------------------------------------------

SCHEDULERS = {
    "StepLR": lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=5, gamma=0.5),
    "CosineAnnealingLR": lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=20),
    "ReduceLROnPlateau": lambda o: torch.optim.lr_scheduler.ReduceLROnPlateau(
        o, factor=0.5, patience=1
    ),
    "OneCycleLR": lambda o: torch.optim.lr_scheduler.OneCycleLR(
        o, max_lr=0.05, total_steps=40, cycle_momentum=True
    ),
}


def _quadratic_loss(params: list) -> torch.Tensor:
    return sum(((p - 0.5) ** 2).sum() + (p**3).sum() * 0.01 for p in params)


@pytest.mark.parametrize("name", list(SCHEDULERS))
@pytest.mark.parametrize("foreach", [False, True])
def test_adam_schedulers_match_torch(name, foreach):
    """The scheduler drives lr (and betas[0] for OneCycleLR) of ours as of torch's Adam."""
    sc = SCENARIOS["groups"]
    groups = make_groups(sc, torch.float64, "cpu")
    opt = Adam(groups, lr=0.01, foreach=foreach)
    twin = torch.optim.Adam(clone_groups(groups), lr=0.01)
    s1, s2 = SCHEDULERS[name](opt), SCHEDULERS[name](twin)
    ps = [p for g in opt.param_groups for p in g["params"]]
    qs = [q for g in twin.param_groups for q in g["params"]]
    for _ in range(40):
        losses = []
        for o, xs in ((opt, ps), (twin, qs)):
            o.zero_grad()
            loss = _quadratic_loss(xs)
            loss.backward()
            o.step()
            losses.append(loss.item())
        assert losses[0] == pytest.approx(losses[1], rel=1e-10)
        for s, lo in ((s1, losses[0]), (s2, losses[1])):
            s.step(lo) if name == "ReduceLROnPlateau" else s.step()
        assert_state_matches("adam", opt, twin, ps, qs, TOL[torch.float64])
        for g1, g2 in zip(opt.param_groups, twin.param_groups, strict=True):
            assert g1["lr"] == pytest.approx(g2["lr"], rel=1e-12)
            assert g1["betas"] == pytest.approx(g2["betas"], rel=1e-12)
    if name == "OneCycleLR":
        assert opt.param_groups[0]["betas"][0] != 0.9  # it did cycle β₁


@pytest.mark.parametrize("name", ["StepLR", "CosineAnnealingLR", "ReduceLROnPlateau"])
def test_momentum_schedulers_match_sgd(name):
    """Multiplicative lr schedules act on α and on SGD's α(1 − β) alike."""
    sc = SCENARIOS["plain"]
    groups = make_groups(sc, torch.float64, "cpu")
    opt = Momentum(groups, lr=0.05, momentum=0.9)
    twin, _ = torch_twin("momentum", clone_groups(groups), {"lr": 0.05, "momentum": 0.9})
    s1, s2 = SCHEDULERS[name](opt), SCHEDULERS[name](twin)
    ps, qs = opt.param_groups[0]["params"], twin.param_groups[0]["params"]
    for _ in range(30):
        losses = []
        for o, xs in ((opt, ps), (twin, qs)):
            o.zero_grad()
            loss = _quadratic_loss(xs)
            loss.backward()
            o.step()
            losses.append(loss.item())
        for s, lo in ((s1, losses[0]), (s2, losses[1])):
            s.step(lo) if name == "ReduceLROnPlateau" else s.step()
        assert_state_matches("momentum", opt, twin, ps, qs, TOL[torch.float64])


def test_momentum_one_cycle_cycles_beta():
    """OneCycleLR(cycle_momentum) drives the group's ``momentum`` (β); SGD has no twin for a
    varying β (its lr would have to follow α(1 − β)), so the reference is the lecture's rule
    written out in float64 with the α and β the scheduler set for each step."""
    w0 = torch.randn(6, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    w = w0.clone().requires_grad_()
    opt = Momentum([w], lr=0.01, momentum=0.9)
    sched = SCHEDULERS["OneCycleLR"](opt)
    ref_w, ref_m, betas = w0.clone(), torch.zeros_like(w0), set()
    for _ in range(40):
        alpha, beta = opt.param_groups[0]["lr"], opt.param_groups[0]["momentum"]
        betas.add(beta)
        opt.zero_grad()
        _quadratic_loss([w]).backward()
        g = w.grad.clone()
        opt.step()
        sched.step()
        ref_m = beta * ref_m + (1 - beta) * (-g)  # m(t) ← β m(t−1) + (1 − β)(−∇J)
        ref_w = ref_w + alpha * ref_m  # w(t+1) ← w(t) + α m(t)
        torch.testing.assert_close(w.detach(), ref_w, rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(opt.state[w]["m"], ref_m, rtol=1e-12, atol=1e-14)
    assert len(betas) > 10


@pytest.mark.parametrize("kind", ["adam", "momentum"])
def test_closure_called_once_with_grad_and_loss_returned(kind):
    w = torch.randn(4, requires_grad=True)
    opt = ours(kind, [{"params": [w]}], {"lr": 0.1})
    calls = []

    def closure():
        calls.append(torch.is_grad_enabled())
        opt.zero_grad()
        loss = (w**2).sum()
        loss.backward()
        return loss

    with torch.no_grad():
        loss = opt.step(closure)
    assert calls == [True]
    assert isinstance(loss, torch.Tensor) and loss.requires_grad
    assert opt.step() is None


def _scaled_training(opt_factory, device, inf_at: int):
    """Train a tiny model under torch.amp.GradScaler; inject an inf gradient at one step."""
    torch.manual_seed(0)
    model = torch.nn.Linear(5, 3).to(device)
    opt = opt_factory(model.parameters())
    scaler = torch.amp.GradScaler(device.type if hasattr(device, "type") else device)
    x = torch.randn(16, 5, device=device)
    y = torch.randn(16, 3, device=device)
    snapshots = []
    for t in range(1, 9):
        opt.zero_grad()
        loss = ((model(x) - y) ** 2).mean()
        scaler.scale(loss).backward()
        if t == inf_at:
            model.weight.grad[0, 0] = math.inf
        before = [p.detach().clone() for p in model.parameters()]
        scaler.step(opt)
        scaler.update()
        after = [p.detach().clone() for p in model.parameters()]
        snapshots.append((before, after))
    return model, opt, snapshots


@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize("kind", ["adam", "momentum"])
def test_grad_scaler_skips_inf_and_matches_torch(kind, foreach, device):
    if kind == "adam":
        mine = lambda ps: Adam(ps, lr=0.01, foreach=foreach)  # noqa: E731
        theirs = lambda ps: torch.optim.Adam(ps, lr=0.01)  # noqa: E731
    else:
        mine = lambda ps: Momentum(ps, lr=0.1, momentum=0.9, foreach=foreach)  # noqa: E731
        theirs = lambda ps: torch.optim.SGD(ps, lr=0.1 * 0.1, momentum=0.9)  # noqa: E731
    m1, o1, snaps = _scaled_training(mine, device, inf_at=4)
    m2, _, _ = _scaled_training(theirs, device, inf_at=4)
    before, after = snaps[3]
    for b, a in zip(before, after, strict=True):
        assert torch.equal(a, b)  # the inf step was skipped, params intact
    # 8 iterations, one skipped: every state's step count is 7
    assert all(st["step"].item() == 7 for st in o1.state.values())
    for p, q in zip(m1.parameters(), m2.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# state_dict, pickling, compile
# ---------------------------------------------------------------------------------------------

STATE_CASES = [
    ("adam", {"lr": 0.01, "foreach": False}),
    ("adam", {"lr": 0.01, "foreach": True, "amsgrad": True, "weight_decay": 0.1}),
    ("adam", {"lr": 0.01, "capturable": True, "decoupled_weight_decay": True, "weight_decay": 0.1}),
    ("momentum", {"lr": 0.05, "foreach": False}),
    ("momentum", {"lr": 0.05, "foreach": True, "bias_correction": True}),
]


def _train(opt, params, sc, steps, start=1):
    for t in range(start, start + steps):
        set_grads(params, t, sc)
        opt.step()


@pytest.mark.parametrize(
    "kind,opts", STATE_CASES, ids=[f"{k}-{i}" for i, (k, _) in enumerate(STATE_CASES)]
)
def test_state_dict_roundtrip_bit_identical(kind, opts, device):
    """10 steps, torch.save, torch.load(weights_only=True) into a new optimizer over cloned
    params, 10 more steps == 20 uninterrupted steps, bit for bit."""
    sc = SCENARIOS["unfrozen"]
    groups = make_groups(sc, torch.float32, device)
    straight = ours(kind, clone_groups(groups), opts)
    ps = straight.param_groups[0]["params"]
    _train(straight, ps, sc, 20)

    first = ours(kind, clone_groups(groups), opts)
    qs = first.param_groups[0]["params"]
    _train(first, qs, sc, 10)
    buf = io.BytesIO()
    torch.save(first.state_dict(), buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=True)
    rs = [q.detach().clone().requires_grad_() for q in qs]
    resumed = ours(kind, [{"params": rs}], opts)
    resumed.load_state_dict(loaded)
    _train(resumed, rs, sc, 10, start=11)

    for p, r in zip(ps, rs, strict=True):
        assert torch.equal(p, r)
        a, b = straight.state[p], resumed.state[r]
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), k
            assert a[k].device == b[k].device, k


@pytest.mark.parametrize("kind", ["adam", "momentum"])
def test_old_state_dict_without_newer_keys_loads(kind):
    """A state_dict saved before an option existed (and with a float step) still loads."""
    sc = SCENARIOS["plain"]
    groups = make_groups(sc, torch.float64, "cpu")
    a = ours(kind, clone_groups(groups), {"lr": 0.01})
    b = ours(kind, clone_groups(groups), {"lr": 0.01})
    ps, qs = a.param_groups[0]["params"], b.param_groups[0]["params"]
    _train(a, ps, sc, 5)
    _train(b, qs, sc, 5)
    sd = copy.deepcopy(b.state_dict())
    newer = ["foreach", "maximize", "weight_decay"]
    newer += ["decoupled_weight_decay", "capturable", "amsgrad"] if kind == "adam" else []
    newer += ["bias_correction"] if kind == "momentum" else []
    for k in newer:
        del sd["param_groups"][0][k]
    for st in sd["state"].values():
        st["step"] = float(st["step"])  # very old format: a Python number
    c = ours(kind, [{"params": qs}], {"lr": 0.5, "foreach": True})
    c.load_state_dict(sd)
    assert c.param_groups[0]["lr"] == 0.01
    assert c.param_groups[0]["foreach"] is True  # a path flag: the receiver's own
    _train(a, ps, sc, 5, start=6)
    _train(c, qs, sc, 5, start=6)
    for p, q in zip(ps, qs, strict=True):
        torch.testing.assert_close(p, q, rtol=1e-13, atol=1e-15)
        assert torch.is_tensor(c.state[q]["step"])


@pytest.mark.parametrize("kind", ["adam", "momentum"])
def test_load_state_dict_keeps_the_receivers_path_flags(kind):
    """foreach/fused/capturable say how to run, not what to compute: the loading optimizer
    keeps its own (a checkpoint moves between paths), the rest comes from the file."""
    sc = SCENARIOS["plain"]
    groups = make_groups(sc, torch.float64, "cpu")
    saved_opts = {"lr": 0.01, "foreach": False, "weight_decay": 0.1}
    if kind == "adam":
        saved_opts["capturable"] = True
    a = ours(kind, clone_groups(groups), saved_opts)
    ps = a.param_groups[0]["params"]
    _train(a, ps, sc, 5)
    sd = copy.deepcopy(a.state_dict())  # state_dict() holds a's live state tensors
    qs = [p.detach().clone().requires_grad_() for p in ps]
    b = ours(kind, [{"params": qs}], {"lr": 0.5, "foreach": True})
    b.load_state_dict(sd)
    g = b.param_groups[0]
    assert (g["foreach"], g["fused"], g.get("capturable", False)) == (True, None, False)
    assert (g["lr"], g["weight_decay"]) == (0.01, 0.1)  # the math comes from the file
    assert sd["param_groups"][0]["foreach"] is False  # the caller's dict is not modified
    _train(a, ps, sc, 5, start=6)
    _train(b, qs, sc, 5, start=6)
    for p, q in zip(ps, qs, strict=True):
        torch.testing.assert_close(q, p, rtol=1e-13, atol=1e-15)


def _torch_adam(groups):
    return torch.optim.Adam(groups, lr=0.01)


def _torch_amsgrad(groups):
    return torch.optim.Adam(groups, lr=0.01, amsgrad=True)


def _torch_sgd(groups):
    return torch.optim.SGD(groups, lr=0.01, momentum=0.9)


TORCH_CHECKPOINTS = [
    ("adam", _torch_adam, ["exp_avg", "exp_avg_sq", "m = -exp_avg"]),
    ("adam", _torch_amsgrad, ["max_exp_avg_sq", "s_max = max_exp_avg_sq"]),
    ("momentum", _torch_sgd, ["momentum_buffer", "m = -(1 - momentum) * momentum_buffer"]),
]


@pytest.mark.parametrize(
    "kind,make,words", TORCH_CHECKPOINTS, ids=["Adam", "Adam-amsgrad", "SGD-momentum"]
)
def test_torch_optim_state_dict_is_a_value_error_naming_its_keys(kind, make, words):
    """torch.optim keeps exp_avg / momentum_buffer, not the lecture's m (and SGD no step):
    loading its checkpoint is refused with the keys and the conversion, not a KeyError at
    the next step; the optimizer is left as it was."""
    sc = SCENARIOS["plain"]
    groups = make_groups(sc, torch.float64, "cpu")
    twin = make(clone_groups(groups))
    _train(twin, twin.param_groups[0]["params"], sc, 2)
    opt = ours(kind, clone_groups(groups), {"lr": 0.01})
    with pytest.raises(ValueError, match=r"not a (Adam|Momentum) state_dict") as e:
        opt.load_state_dict(twin.state_dict())
    for word in [*words, "'m'", "'step'"]:
        assert word in str(e.value)
    assert len(opt.state) == 0 and opt.param_groups[0]["lr"] == 0.01
    _train(opt, opt.param_groups[0]["params"], sc, 1)  # still usable


@pytest.mark.parametrize("kind", ["adam", "momentum"])
def test_deepcopy_and_pickle(kind):
    sc = SCENARIOS["plain"]
    groups = make_groups(sc, torch.float64, "cpu")
    opt = ours(kind, groups, {"lr": 0.01})
    ps = opt.param_groups[0]["params"]
    _train(opt, ps, sc, 3)
    for other in (copy.deepcopy(opt), pickle.loads(pickle.dumps(opt))):
        assert type(other) is type(opt)
        assert repr(other) == repr(opt)
        qs = other.param_groups[0]["params"]
        for p, q in zip(ps, qs, strict=True):
            assert torch.equal(p, q) and q is not p
            for k in opt.state[p]:
                assert torch.equal(opt.state[p][k], other.state[q][k])
        _train(other, qs, sc, 2, start=4)  # the copy still steps


@pytest.mark.slow
@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize("kind", ["adam", "momentum"])
def test_compiled_step_matches_eager_without_recompiling(kind, foreach):
    """torch.compile(opt.step): same results as eager; the tensor step counter means the
    compiled step is not recompiled as t grows."""
    from torch._dynamo.testing import CompileCounterWithBackend

    torch._dynamo.reset()
    sc = SCENARIOS["plain"]
    groups = make_groups(sc, torch.float32, "cpu")
    opts = {"lr": 0.01, "foreach": foreach}
    if kind == "momentum":
        opts["bias_correction"] = True
    eager = ours(kind, clone_groups(groups), opts)
    comp = ours(kind, clone_groups(groups), opts)
    counter = CompileCounterWithBackend("inductor")
    step = torch.compile(comp.step, backend=counter)
    ps, qs = eager.param_groups[0]["params"], comp.param_groups[0]["params"]
    frames = []
    for t in range(1, 9):
        set_grads(ps, t, sc)
        set_grads(qs, t, sc)
        eager.step()
        step()
        frames.append(counter.frame_count)
        for p, q in zip(ps, qs, strict=True):
            torch.testing.assert_close(q, p, rtol=1e-5, atol=1e-6)
            for k in eager.state[p]:
                torch.testing.assert_close(
                    comp.state[q][k], eager.state[p][k], rtol=1e-5, atol=1e-6
                )
    assert frames[2] == frames[-1], f"recompiled as the step count grew: {frames}"
    torch._dynamo.reset()


# ---------------------------------------------------------------------------------------------
# Hygiene
# ---------------------------------------------------------------------------------------------

HYGIENE_OPTS = [
    ("adam", {"lr": 0.01, "maximize": True, "weight_decay": 0.1, "foreach": False}),
    ("adam", {"lr": 0.01, "maximize": True, "weight_decay": 0.1, "foreach": True}),
    ("adam", {"lr": 0.01, "amsgrad": True, "capturable": True}),
    ("momentum", {"lr": 0.01, "maximize": True, "weight_decay": 0.1, "foreach": False}),
    ("momentum", {"lr": 0.01, "maximize": True, "weight_decay": 0.1, "foreach": True}),
]
HYGIENE_IDS = [f"{k}-{i}" for i, (k, _) in enumerate(HYGIENE_OPTS)]


@pytest.mark.parametrize("kind,opts", HYGIENE_OPTS, ids=HYGIENE_IDS)
def test_grad_never_modified_and_gradless_params_skipped(kind, opts, device):
    sc = SCENARIOS["some_none"]
    groups = make_groups(sc, torch.float32, device)
    ps = groups[0]["params"]
    extra = torch.randn(3, device=device, requires_grad=True)  # never gets a gradient
    extra0 = extra.detach().clone()
    groups[0]["params"] = [*ps, extra]
    opt = ours(kind, groups, opts)
    for t in range(1, 6):
        set_grads(ps, t, sc)
        grads = [None if p.grad is None else p.grad.clone() for p in ps]
        opt.step()
        for p, g in zip(ps, grads, strict=True):
            assert (p.grad is None) == (g is None)
            if g is not None:
                assert torch.equal(p.grad, g)
    assert torch.equal(extra, extra0)
    assert extra not in opt.state


@pytest.mark.parametrize(
    "kind,opts",
    [
        ("adam", {"foreach": False}),
        ("adam", {"foreach": True}),
        ("adam", {"eps": 0.0}),
        ("adam", {"eps": 0.0, "capturable": True, "amsgrad": True}),
        ("momentum", {"foreach": False}),
        ("momentum", {"foreach": True, "bias_correction": True}),
    ],
)
def test_zero_grads_leave_params_bit_exact(kind, opts, device):
    w = torch.randn(7, 3, device=device, requires_grad=True)
    w0 = w.detach().clone()
    opt = ours(kind, [{"params": [w]}], {"lr": 0.1, **opts})
    for _ in range(5):
        w.grad = torch.zeros_like(w)
        opt.step()
    assert torch.equal(w, w0)


@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize("capturable", [False, True])
def test_adam_eps_zero_gives_zero_update_where_s_hat_is_zero(foreach, capturable, device):
    """eps=0 (the slide's literal form): coordinates whose ŝ is 0 (gradient always 0) get a
    zero update, never NaN; the others move exactly as torch.optim.Adam(eps=0) moves them."""
    w = torch.randn(6, 4, dtype=torch.float64, device=device, requires_grad=True)
    v = w.detach().clone().requires_grad_()
    w0 = w.detach().clone()
    mask = torch.ones_like(w0)
    mask[:, 0] = 0  # column 0 never gets a gradient: ŝ = 0 there
    opt = Adam([w], lr=0.01, eps=0.0, foreach=foreach, capturable=capturable)
    twin = torch.optim.Adam([v], lr=0.01, eps=0.0)
    g = torch.Generator().manual_seed(0)
    for _ in range(10):
        grad = (torch.randn(w.shape, generator=g, dtype=torch.float64) * mask).to(device)
        w.grad, v.grad = grad.clone(), grad.clone()
        opt.step()
        twin.step()
    assert torch.isfinite(w).all()
    assert torch.equal(w[:, 0], w0[:, 0])
    assert torch.isnan(v[:, 0]).all()  # PyTorch's 0/0, for contrast
    torch.testing.assert_close(w[:, 1:], v[:, 1:], rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("kind", ["adam", "momentum"])
def test_step_hooks_fire_once_per_step(kind):
    w = torch.randn(3, requires_grad=True)
    opt = ours(kind, [{"params": [w]}], {"lr": 0.1})
    calls = []
    opt.register_step_pre_hook(lambda o, a, k: calls.append("pre"))
    opt.register_step_post_hook(lambda o, a, k: calls.append("post"))
    for _ in range(3):
        w.grad = torch.ones_like(w)
        opt.step()
    assert calls == ["pre", "post"] * 3


def test_repr_shows_groups():
    w = torch.randn(3, requires_grad=True)
    r = repr(Adam([w], lr=0.02, amsgrad=True))
    assert r.startswith("Adam (") and "lr: 0.02" in r and "amsgrad: True" in r and "betas" in r
    r = repr(Momentum([w], lr=0.3, momentum=0.8))
    assert r.startswith("Momentum (") and "momentum: 0.8" in r and "bias_correction" in r


# ---------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------

BAD_CONFIGS = [
    (Momentum, {"lr": -0.1}, "lr"),
    (Momentum, {"lr": math.nan}, "lr"),
    (Momentum, {"lr": math.inf}, "lr"),
    (Momentum, {"momentum": 1.0}, "momentum"),
    (Momentum, {"momentum": -0.5}, "momentum"),
    (Momentum, {"momentum": math.nan}, "momentum"),
    (Momentum, {"weight_decay": -1.0}, "weight_decay"),
    (Momentum, {"weight_decay": math.nan}, "weight_decay"),
    (Momentum, {"bias_correction": "yes"}, "bias_correction"),
    (Momentum, {"foreach": 1}, "foreach"),
    (Adam, {"lr": -1e-3}, "lr"),
    (Adam, {"lr": math.nan}, "lr"),
    (Adam, {"lr": torch.tensor([0.1, 0.2])}, "lr"),
    (Adam, {"betas": (1.0, 0.999)}, "betas[0]"),
    (Adam, {"betas": (0.9, math.nan)}, "betas[1]"),
    (Adam, {"betas": (0.9, -0.1)}, "betas[1]"),
    (Adam, {"betas": (0.9,)}, "betas"),
    (Adam, {"eps": -1e-8}, "eps"),
    (Adam, {"eps": math.nan}, "eps"),
    (Adam, {"weight_decay": -0.1}, "weight_decay"),
    (Adam, {"weight_decay": math.nan}, "weight_decay"),
    (Adam, {"amsgrad": None}, "amsgrad"),
]


@pytest.mark.parametrize(
    "cls,kwargs,name",
    BAD_CONFIGS,
    ids=[f"{c.__name__}-{n}-{i}" for i, (c, _, n) in enumerate(BAD_CONFIGS)],
)
def test_bad_configuration_is_a_value_error_naming_it(cls, kwargs, name):
    w = torch.randn(2, requires_grad=True)
    with pytest.raises(ValueError, match="Invalid " + re.escape(name)):
        cls([w], **kwargs)


@pytest.mark.parametrize(
    "cls,kwargs,name",
    BAD_CONFIGS,
    ids=[f"{c.__name__}-{n}-{i}" for i, (c, _, n) in enumerate(BAD_CONFIGS)],
)
def test_bad_group_hyperparameter_is_a_value_error_naming_it_and_the_group(cls, kwargs, name):
    """A param group's own hyperparameters get the same checks, in the constructor and in
    add_param_group; a rejected group is not added."""
    w, v = torch.randn(2, requires_grad=True), torch.randn(2, requires_grad=True)
    with pytest.raises(ValueError, match=f"Invalid {re.escape(name)}.* in param group 0$"):
        cls([{"params": [w], **kwargs}])
    opt = cls([w])
    with pytest.raises(ValueError, match=f"Invalid {re.escape(name)}.* in param group 1$"):
        opt.add_param_group({"params": [v], **kwargs})
    assert len(opt.param_groups) == 1


@pytest.mark.parametrize("cls", [Adam, Momentum])
def test_group_path_flags_are_checked_with_the_defaults(cls):
    """A group's foreach=True against fused=True defaults is the same error as both kwargs."""
    w = torch.randn(2, requires_grad=True)
    with pytest.raises(ValueError, match=r"foreach=True and fused=True.* in param group 0$"):
        cls([{"params": [w], "foreach": True}], fused=True)


@pytest.mark.parametrize("cls", [Adam, Momentum])
def test_bad_value_is_quoted_in_message(cls):
    w = torch.randn(2, requires_grad=True)
    with pytest.raises(ValueError, match="nan"):
        cls([w], lr=math.nan)


@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize("cls", [Adam, Momentum])
def test_sparse_gradient_is_a_clear_error(cls, foreach):
    emb = torch.nn.Embedding(10, 3, sparse=True)
    opt = cls(emb.parameters(), lr=0.1, foreach=foreach)
    emb(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(RuntimeError, match="sparse gradients"):
        opt.step()


# ---------------------------------------------------------------------------------------------
# The step-direction helpers (read by loggers and parity tools)
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("amsgrad", [False, True])
@pytest.mark.parametrize("eps", [1e-8, 0.0])
def test_adam_step_direction_is_the_step_taken(amsgrad, eps):
    w = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    lr = 0.01
    opt = Adam([w], lr=lr, eps=eps, amsgrad=amsgrad)
    g = torch.Generator().manual_seed(0)
    for _ in range(6):
        w.grad = torch.randn(w.shape, generator=g, dtype=torch.float64)
        w.grad[0] = 0.0 if eps == 0 and _ == 0 else w.grad[0]
        before = w.detach().clone()
        opt.step()
        st, grp = opt.state[w], opt.param_groups[0]
        s = st["s_max"] if amsgrad else st["s"]
        d = adam_step_direction(st["m"], s, st["step"], grp["betas"], grp["eps"])
        torch.testing.assert_close(w.detach() - before, lr * d, rtol=1e-9, atol=1e-15)


@pytest.mark.parametrize("bias_correction", [False, True])
def test_momentum_step_direction_is_the_step_taken(bias_correction):
    w = torch.randn(5, dtype=torch.float64, requires_grad=True)
    opt = Momentum([w], lr=0.1, momentum=0.8, bias_correction=bias_correction)
    for _ in range(4):
        w.grad = torch.randn_like(w)
        before = w.detach().clone()
        opt.step()
        st = opt.state[w]
        d = momentum_step_direction(st["m"], st["step"], 0.8, bias_correction)
        torch.testing.assert_close(w.detach() - before, 0.1 * d, rtol=1e-12, atol=1e-15)


# ---------------------------------------------------------------------------------------------
# CUDA graphs (skipped without a GPU)
# ---------------------------------------------------------------------------------------------


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
@pytest.mark.parametrize("foreach", [False, True])
def test_adam_capturable_cuda_graph_capture_and_replay(foreach):
    """Capture one step in a CUDA graph, replay it with new gradients copied into the same
    .grad tensors, and follow torch.optim.Adam(capturable=True) run eagerly."""
    device = torch.device("cuda")
    sc = SCENARIOS["plain"]
    groups = make_groups(sc, torch.float32, device)
    lr = torch.tensor(0.01, device=device)
    opt = Adam(clone_groups(groups), lr=lr, capturable=True, foreach=foreach, amsgrad=True)
    twin = torch.optim.Adam(clone_groups(groups), lr=0.01, capturable=True, amsgrad=True)
    ps, qs = opt.param_groups[0]["params"], twin.param_groups[0]["params"]
    # warm up on a side stream (state is created lazily, outside the graph)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for t in range(1, 4):
            set_grads(ps, t, sc)
            set_grads(qs, t, sc)
            opt.step()
            twin.step()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        opt.step()
    for t in range(4, 30):
        g = torch.Generator().manual_seed(t)
        for p, q in zip(ps, qs, strict=True):
            grad = torch.randn(p.shape, generator=g).to(device)
            p.grad.copy_(grad)
            q.grad = grad.clone()
        graph.replay()
        twin.step()
    torch.cuda.synchronize()
    assert_state_matches("adam", opt, twin, ps, qs, (1e-4, 1e-5))
    assert opt.state[ps[0]]["step"].item() == 29
