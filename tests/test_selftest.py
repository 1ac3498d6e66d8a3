"""The parity self-test: it covers every Function and optimizer, passes on this package,
fails (exit 1) when a backward formula or an optimizer is broken, and exits 2 without CUDA."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest
import torch

import torch_manual_bp.functions as functions
from torch_manual_bp import selftest

_CHECK_NAMES = [name for name, _ in selftest._checks()]


def _table_lines(out: str) -> dict[str, str]:
    """check name → its line of the table."""
    return {
        name: line for line in out.splitlines() for name in _CHECK_NAMES if f"  {name}  " in line
    }


EXPECTED = [
    "linear", "linear_relu", "relu_grad_at_zero=0", "relu_grad_at_zero=1", "reduction=mean",
    "reduction=sum", "reduction=none", "weight", "pos_weight", "Momentum ≡ SGD",
    "bias_correction", "Adam ≡ torch.optim.Adam", "amsgrad", "weight_decay", "AdamW",
    "maximize", "per-tensor", "multi-tensor", "fused",
]  # fmt: skip


@pytest.mark.parametrize("what", EXPECTED)
def test_every_function_and_optimizer_is_checked(what):
    assert what in " ".join(_CHECK_NAMES)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_selftest_passes_and_prints_one_table(dtype, capsys):
    assert selftest.main(["--dtype", dtype, "--steps", "3"]) == 0
    out = capsys.readouterr().out
    header = next(line for line in out.splitlines() if line.startswith("device"))
    assert header.split() == ["device", "check", "max", "difference", "tolerance", "result"]
    lines = _table_lines(out)
    assert set(lines) == set(_CHECK_NAMES)
    assert all(line.startswith("cpu") and line.endswith("pass") for line in lines.values())
    assert f"all {len(_CHECK_NAMES)} checks passed" in out


def test_selftest_fails_on_a_broken_backward_formula(monkeypatch, capsys):
    """LinearFunction's db averaged instead of summed over the batch: exactly the checks
    that run it with a bias fail."""
    correct = functions.LinearFunction.backward

    def averaged_db(ctx, dZ):
        dA_prev, dW, db = correct(ctx, dZ)
        return dA_prev, dW, None if db is None else db / (dZ.numel() // dZ.shape[-1])

    monkeypatch.setattr(functions.LinearFunction, "backward", staticmethod(averaged_db))
    assert selftest.main(["--dtype", "float64", "--steps", "1"]) == 1
    lines = _table_lines(capsys.readouterr().out)
    failing = {name for name, line in lines.items() if line.endswith("FAIL")}
    assert failing == {"linear", "linear, batch dims (2, 4, in)", "MLP vs to_torch()"}


def test_selftest_fails_on_a_broken_optimizer(monkeypatch, capsys):
    import torch_manual_bp.optim as optim

    class DriftingAdam(optim.Adam):
        @torch.no_grad()
        def step(self, closure=None):
            loss = super().step(closure)
            for group in self.param_groups:
                for p in group["params"]:
                    p.mul_(1 + 1e-6)  # a tiny drift: 1e-6 relative, far above float64's rtol
            return loss

    monkeypatch.setattr(optim, "Adam", DriftingAdam)
    assert selftest.main(["--dtype", "float64", "--steps", "2", "--verbose"]) == 1
    out = capsys.readouterr().out
    failing = {name for name, line in _table_lines(out).items() if line.endswith("FAIL")}
    assert failing == {name for name in _CHECK_NAMES if name.startswith("Adam")}
    assert "first divergence at step 1" in out  # --verbose: the full report


def _divide_by_s_not_s_max(monkeypatch):
    """An AMSGrad bug on every path: s_max is kept up to date, but the step divides by s."""
    from torch_manual_bp.optim import _fused, adam, rules

    per_tensor, foreach, fused = rules.adam_update_, rules.adam_update_foreach_, _fused.adam_fused_

    def per_tensor_bug(w, g, m, s, s_max, **kw):
        per_tensor(w, g, m, s, None, **kw)
        if s_max is not None:
            torch.maximum(s_max, s, out=s_max)

    def foreach_bug(w, g, m, s, s_max, **kw):
        foreach(w, g, m, s, None, **kw)
        if s_max is not None:
            torch._foreach_maximum_(s_max, s)

    def fused_bug(w, g, m, s, s_max, **kw):
        fused(w, g, m, s, None, **kw)
        if s_max is not None:
            torch._foreach_maximum_(s_max, s)

    for module in (rules, adam):  # adam.py imports the rules by name
        monkeypatch.setattr(module, "adam_update_", per_tensor_bug)
        monkeypatch.setattr(module, "adam_update_foreach_", foreach_bug)
    monkeypatch.setattr(_fused, "adam_fused_", fused_bug)


@pytest.mark.parametrize(
    "argv", [[], ["--dtype", "float64", "--steps", "1"]], ids=["defaults", "float64-1-step"]
)
def test_selftest_fails_when_amsgrad_divides_by_s_instead_of_s_max(argv, monkeypatch, capsys):
    """The amsgrad checks run where s falls below s_max (β₂ = 0.5, shrinking gradients, at
    least 3 steps), so exactly they fail, on every path, even with --steps 1. (With
    β₂ = 0.999 and steady gradients, s_max = s nearly everywhere: the defaults passed.)"""
    from torch_manual_bp.optim import _fused

    _divide_by_s_not_s_max(monkeypatch)
    assert selftest.main(argv) == 1
    lines = _table_lines(capsys.readouterr().out)
    failing = {name for name, line in lines.items() if not line.endswith(("pass", "skip"))}
    paths = ["per-tensor", "multi-tensor"] + (["fused"] if _fused.available() else [])
    assert failing == {f"Adam, amsgrad [{path}]" for path in paths}
    assert all(lines[f"Adam, amsgrad [{path}]"].endswith("FAIL") for path in paths)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_amsgrad_check_runs_where_s_max_differs_from_s(dtype, monkeypatch):
    """In the amsgrad check's run, the reference's max_exp_avg_sq exceeds exp_avg_sq."""
    seen = []
    compare = selftest.compare_training

    def spy(net, ours, twin, theirs, *args, **kw):
        seen.append(theirs)
        return compare(net, ours, twin, theirs, *args, **kw)

    monkeypatch.setattr(selftest, "compare_training", spy)
    torch.manual_seed(0)
    ctx = selftest._Ctx(torch.device("cpu"), dtype, steps=1, seed=0)
    assert selftest._check_adam(ctx, "per-tensor", amsgrad=True).passed
    gaps = [st["max_exp_avg_sq"] - st["exp_avg_sq"] for st in seen[0].state.values()]
    assert all(g.min() >= 0 for g in gaps)
    assert sum(int((g > 0).sum()) for g in gaps) > sum(g.numel() for g in gaps) // 2
    assert selftest._s_max_gap(seen[0]) > 0


def test_an_amsgrad_check_that_cannot_tell_s_max_from_s_is_an_error(monkeypatch, capsys):
    from torch_manual_bp.optim import _fused

    monkeypatch.setattr(selftest, "_s_max_gap", lambda reference: 0.0)
    assert selftest.main(["--dtype", "float64", "--steps", "1"]) == 1
    out = capsys.readouterr().out
    errors = {name for name, line in _table_lines(out).items() if line.endswith("ERROR")}
    paths = ["per-tensor", "multi-tensor"] + (["fused"] if _fused.available() else [])
    assert errors == {f"Adam, amsgrad [{path}]" for path in paths}
    assert "the amsgrad check proves nothing" in out


def test_fused_checks_are_skipped_where_the_kernel_cannot_be_built(monkeypatch, capsys):
    from torch_manual_bp.optim import _fused

    monkeypatch.setattr(_fused, "available", lambda: False)
    assert selftest.main(["--steps", "1"]) == 0
    out = capsys.readouterr().out
    lines = _table_lines(out)
    fused = {name for name in _CHECK_NAMES if name.endswith("[fused]")}
    assert len(fused) == 9
    assert all(lines[name].endswith("skip") for name in fused)
    assert "skipped 9 checks: the fused kernel cannot be built here" in out
    assert f"all {len(_CHECK_NAMES) - 9} checks passed" in out


def test_a_check_that_raises_is_an_error_row(monkeypatch, capsys):
    def broken(ctx):
        raise RuntimeError("no kernel for this dtype")

    monkeypatch.setattr(selftest, "_checks", lambda: [("broken check", broken)])
    assert selftest.main([]) == 1
    out = capsys.readouterr().out
    assert "ERROR" in out and "RuntimeError: no kernel for this dtype" in out


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_cuda_is_a_clear_error_with_exit_2(capsys):
    assert selftest.main(["--device", "cuda"]) == 2
    err = capsys.readouterr().err
    assert "CUDA is not available" in err and "--device cpu" in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_device_all_without_cuda_checks_the_cpu(capsys):
    assert selftest.main(["--device", "all", "--steps", "1"]) == 0
    assert "note: CUDA is not available; checking the CPU only" in capsys.readouterr().out


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_selftest_on_cuda(capsys):
    assert selftest.main(["--device", "all", "--steps", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert any(line.startswith("cuda") for line in lines)


def test_parser_contract():
    parser = argparse.ArgumentParser()
    selftest.configure_parser(parser)
    args = parser.parse_args([])
    assert (args.device, args.dtype) == ("cpu", "float32")
    with pytest.raises(SystemExit) as exc:
        parser.parse_args(["--device", "tpu"])
    assert exc.value.code == 2
    assert selftest.run(parser.parse_args(["--steps", "0"])) == 2


def test_module_runs_standalone():
    done = subprocess.run(
        [sys.executable, "-m", "torch_manual_bp.selftest", "--dtype", "float64", "--steps", "1"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "checks passed" in done.stdout
