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
