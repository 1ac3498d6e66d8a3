"""fused=True (one C++ pass per tensor) against the per-tensor path and against torch.optim.

The kernel is built on first use (about two seconds with g++, cached on disk); without a
compiler these tests skip, except the ones that check the error and the silent fallback.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys

import pytest
import torch
from test_optim import (
    SCENARIOS,
    TOL,
    _scaled_training,
    assert_state_matches,
    clone_groups,
    make_groups,
    ours,
    set_grads,
    torch_twin,
)

from torch_manual_bp.optim import Adam, Momentum, _fused


@pytest.fixture(scope="module")
def kernel():
    if not _fused.available():
        pytest.skip(f"fused kernel unavailable: {_fused._error}")


def run_paths(kind, opts, sc, *, dtype, steps, tol, other=None):
    """Fused vs another path (per-tensor by default) on the same params and gradients."""
    other = other or {"foreach": False}
    groups = make_groups(sc, dtype, "cpu")
    fused = ours(kind, clone_groups(groups), {**opts, "fused": True})
    ref = ours(kind, clone_groups(groups), {**opts, **other})
    ps = [p for g in fused.param_groups for p in g["params"]]
    rs = [r for g in ref.param_groups for r in g["params"]]
    rtol, atol = tol
    for t in range(1, steps + 1):
        set_grads(ps, t, sc)
        set_grads(rs, t, sc)
        fused.step()
        ref.step()
        for p, r in zip(ps, rs, strict=True):
            torch.testing.assert_close(p, r, rtol=rtol, atol=atol)
            assert fused.state[p].keys() == ref.state[r].keys()
            for k, v in fused.state[p].items():
                torch.testing.assert_close(v, ref.state[r][k], rtol=rtol, atol=atol)
    return fused, ref


ADAM_OPTS = [
    dict(weight_decay=wd, decoupled_weight_decay=dec, amsgrad=ams, maximize=mx)
    for wd in (0.0, 0.1)
    for dec in (False, True)
    for ams in (False, True)
    for mx in (False, True)
    if not (wd == 0.0 and dec)
]
MOMENTUM_OPTS = [
    dict(weight_decay=wd, maximize=mx, bias_correction=bc)
    for wd in (0.0, 0.1)
    for mx in (False, True)
    for bc in (False, True)
]
DTYPES = [torch.float64, torch.float32]


def _id(o: dict) -> str:
    return "-".join(f"{k}={v}" for k, v in o.items())


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("opts", ADAM_OPTS, ids=_id)
def test_fused_adam_matches_per_tensor(kernel, opts, dtype):
    run_paths(
        "adam", {"lr": 0.01, **opts}, SCENARIOS["groups"], dtype=dtype, steps=50, tol=TOL[dtype]
    )


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("opts", MOMENTUM_OPTS, ids=_id)
def test_fused_momentum_matches_per_tensor(kernel, opts, dtype):
    run_paths(
        "momentum", {"lr": 0.05, **opts}, SCENARIOS["groups"], dtype=dtype, steps=50, tol=TOL[dtype]
    )


@pytest.mark.parametrize("scenario", ["non_contiguous", "unfrozen", "some_none", "zero_dim"])
@pytest.mark.parametrize("kind", ["adam", "momentum"])
def test_fused_scenarios_match_torch(kernel, kind, scenario):
    """Against torch.optim directly: non-contiguous tensors (per-tensor fallback inside a
    fused group), late and skipped gradients (per-tensor t), 0-dim parameters."""
    from test_optim import run_parity

    opts = {"lr": 0.01, "fused": True}
    if kind == "adam":
        opts["amsgrad"] = True
    run_parity(kind, opts, SCENARIOS[scenario])


@pytest.mark.parametrize("kind", ["adam", "momentum"])
def test_fused_complex_matches_torch(kernel, kind):
    from test_optim import run_parity

    run_parity(kind, {"lr": 0.01, "fused": True}, SCENARIOS["plain"], dtype=torch.complex128)


@pytest.mark.parametrize(
    "opts", [{}, {"amsgrad": True, "weight_decay": 0.01}], ids=["default", "amsgrad-l2"]
)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("kind", ["adam", "momentum"])
def test_fused_low_precision_matches_per_tensor(kernel, kind, dtype, opts):
    """bf16/fp16 storage, float arithmetic, one rounding per stored value. (Decoupled decay is
    left out: the per-tensor path rounds w·(1 − αλ) to bf16 on its own, which loses a decay
    smaller than half an ulp; the fused path does not, so the two drift apart by design.)"""
    if dtype == torch.float16 and not _fused.load().tmbp_has_half():
        pytest.skip("this compiler has no _Float16")
    opts = dict(opts)
    if kind == "momentum":
        opts.pop("amsgrad", None)
    else:
        opts["eps"] = 1e-3  # fp16 cannot hold ε = 1e-8 next to √s of its own rounding
    run_paths("adam" if kind == "adam" else "momentum", {"lr": 0.01, **opts},
              SCENARIOS["plain"], dtype=dtype, steps=20, tol=TOL[dtype])  # fmt: skip


@pytest.mark.parametrize("kind", ["adam", "momentum"])
def test_fused_grad_scaler_skips_inf_and_matches_torch(kernel, kind):
    if kind == "adam":
        mine = lambda ps: Adam(ps, lr=0.01, fused=True)  # noqa: E731
        theirs = lambda ps: torch.optim.Adam(ps, lr=0.01)  # noqa: E731
    else:
        mine = lambda ps: Momentum(ps, lr=0.1, momentum=0.9, fused=True)  # noqa: E731
        theirs = lambda ps: torch.optim.SGD(ps, lr=0.1 * 0.1, momentum=0.9)  # noqa: E731
    m1, o1, snaps = _scaled_training(mine, torch.device("cpu"), inf_at=4)
    m2, _, _ = _scaled_training(theirs, torch.device("cpu"), inf_at=4)
    before, after = snaps[3]
    assert all(torch.equal(a, b) for a, b in zip(after, before, strict=True))
    assert all(st["step"].item() == 7 for st in o1.state.values())
    for p, q in zip(m1.parameters(), m2.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "first,second",
    [({"fused": True}, {"foreach": True}), ({"foreach": False}, {"fused": True})],
    ids=["fused-then-foreach", "per-tensor-then-fused"],
)
@pytest.mark.parametrize("kind", ["adam", "momentum"])
def test_state_dict_moves_between_paths(kernel, kind, first, second):
    """A state_dict saved on one path loads into another and training continues on the
    trajectory of the fused run (float rounding apart)."""
    sc = SCENARIOS["plain"]
    opts = {"lr": 0.01, "weight_decay": 0.1}
    if kind == "adam":
        opts["amsgrad"] = True
    groups = make_groups(sc, torch.float64, "cpu")
    straight = ours(kind, clone_groups(groups), {**opts, "fused": True})
    ps = straight.param_groups[0]["params"]
    for t in range(1, 21):
        set_grads(ps, t, sc)
        straight.step()
    a = ours(kind, clone_groups(groups), {**opts, **first})
    qs = a.param_groups[0]["params"]
    for t in range(1, 11):
        set_grads(qs, t, sc)
        a.step()
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    buf.seek(0)
    rs = [q.detach().clone().requires_grad_() for q in qs]
    b = ours(kind, [{"params": rs}], {**opts, **second})
    b.load_state_dict(torch.load(buf, weights_only=True))
    group = b.param_groups[0]  # the path is the receiver's, not the file's
    assert (group["fused"], group["foreach"]) == (second.get("fused"), second.get("foreach"))
    for t in range(11, 21):
        set_grads(rs, t, sc)
        b.step()
    for p, r in zip(ps, rs, strict=True):
        torch.testing.assert_close(r, p, rtol=1e-10, atol=1e-13)
        assert straight.state[p].keys() == b.state[r].keys()


@pytest.mark.parametrize("kind", ["adam", "momentum"])
def test_fused_schedulers_and_tensor_lr(kernel, kind):
    """OneCycleLR (lr and the momentum key/betas[0]) and a Tensor lr drive the fused path
    exactly as they drive torch.optim."""
    sc = SCENARIOS["plain"]
    groups = make_groups(sc, torch.float64, "cpu")
    if kind == "adam":
        opt = Adam(clone_groups(groups), lr=torch.tensor(0.01, dtype=torch.float64), fused=True)
        twin = torch.optim.Adam(clone_groups(groups), lr=0.01)
        sched = [
            torch.optim.lr_scheduler.OneCycleLR(o, max_lr=0.05, total_steps=30) for o in (opt, twin)
        ]
    else:  # a multiplicative schedule keeps Momentum ≡ SGD(α(1 − β), β)
        opt = Momentum(clone_groups(groups), lr=torch.tensor(0.05, dtype=torch.float64), fused=True)
        twin, _ = torch_twin("momentum", clone_groups(groups), {"lr": 0.05})
        sched = [torch.optim.lr_scheduler.StepLR(o, step_size=4, gamma=0.5) for o in (opt, twin)]
    ps, qs = opt.param_groups[0]["params"], twin.param_groups[0]["params"]
    for t in range(1, 31):
        set_grads(ps, t, sc)
        set_grads(qs, t, sc)
        opt.step()
        twin.step()
        for s in sched:
            s.step()
        assert_state_matches(kind, opt, twin, ps, qs, TOL[torch.float64])


@pytest.mark.parametrize("kind", ["adam", "momentum"])
def test_fused_hygiene(kernel, kind):
    """.grad untouched, zero gradients leave w bit-exact, eps=0 gives no NaN."""
    w = torch.randn(50, requires_grad=True)
    w0 = w.detach().clone()
    opts = {"lr": 0.1, "fused": True}
    if kind == "adam":
        opts["eps"] = 0.0
    opt = ours(kind, [{"params": [w]}], opts)
    for _ in range(3):
        w.grad = torch.zeros_like(w)
        opt.step()
        assert torch.equal(w.grad, torch.zeros_like(w))
    assert torch.equal(w, w0)
    w.grad = torch.randn_like(w)
    w.grad[:10] = 0
    g0 = w.grad.clone()
    opt.step()
    assert torch.equal(w.grad, g0) and torch.isfinite(w).all()
    assert torch.equal(w[:10], w0[:10])


def test_fused_and_foreach_together_is_an_error():
    w = torch.randn(2, requires_grad=True)
    for cls in (Adam, Momentum):
        with pytest.raises(ValueError, match="foreach=True and fused=True"):
            cls([w], fused=True, foreach=True)


@pytest.mark.parametrize("per_group", [False, True])
@pytest.mark.parametrize("cls", [Adam, Momentum])
def test_fused_on_a_non_cpu_tensor_is_a_clear_error(cls, per_group):
    w = torch.empty(3, device="meta", requires_grad=True)
    with pytest.raises(RuntimeError, match="CPU tensors only"):
        if per_group:
            cls([{"params": [w], "fused": True}])
        else:
            cls([w], fused=True)


def test_no_compiler_gives_a_clear_error_and_default_falls_back(monkeypatch, tmp_path):
    monkeypatch.setattr(_fused, "_lib", None)
    monkeypatch.setattr(_fused, "_error", None)
    monkeypatch.setattr(_fused, "_compiler", lambda: None)
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    w = torch.randn(4, requires_grad=True)
    w.grad = torch.ones_like(w)
    with pytest.raises(_fused.FusedUnavailableError, match="C\\+\\+ compiler"):
        Adam([w], fused=True).step()
    assert not _fused.available()
    before = w.detach().clone()
    Adam([w]).step()  # fused=None: never needs the kernel, no warning, no error
    Momentum([w]).step()
    for cls in (Adam, Momentum):  # a fused checkpoint loads and steps on the default path
        opt = cls([w])
        opt.load_state_dict(cls([w], fused=True).state_dict())
        opt.step()
    assert not torch.equal(w, before)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_kernel_is_built_lazily_and_cached(tmp_path):
    """Importing builds nothing; the first fused step builds into the torch extensions
    directory; a second process reuses the cached library."""
    env = {**os.environ, "TORCH_EXTENSIONS_DIR": str(tmp_path)}
    code_import = "import torch_manual_bp.optim"
    subprocess.run([sys.executable, "-c", code_import], check=True, env=env)
    assert list(tmp_path.iterdir()) == []
    code_step = (
        "import torch; from torch_manual_bp.optim import Adam\n"
        "w = torch.randn(3, requires_grad=True); w.grad = torch.ones(3)\n"
        "Adam([w], fused=True).step(); from torch_manual_bp.optim import _fused\n"
        "print(_fused._lib._name)"
    )
    out1 = subprocess.run(
        [sys.executable, "-c", code_step], check=True, env=env, capture_output=True, text=True
    )
    out2 = subprocess.run(
        [sys.executable, "-c", code_step], check=True, env=env, capture_output=True, text=True
    )
    assert out1.stdout == out2.stdout and str(tmp_path) in out1.stdout
    libs = list(tmp_path.rglob("*.so"))
    assert len(libs) == 1, libs
