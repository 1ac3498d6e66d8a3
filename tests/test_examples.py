"""Each example script runs top to bottom on tiny settings and leaves a readable run."""

import runpy
import sys
from pathlib import Path

import pytest

pytest.importorskip("sklearn")
pytest.importorskip("tensorboard")

from torch_manual_bp.tensorboard import read_scalars

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

CASES = [
    ("train_loop_tensorboard.py", {"train/loss", "val/loss", "val/accuracy",
                                   "optim/update_norm/layer1", "hparam/val_accuracy"}),
    ("train_loop_scheduler_amp.py", {"train/loss", "lr", "val/accuracy",
                                     "optim/m_hat_norm/layer2"}),
]  # fmt: skip


@pytest.mark.parametrize(("script", "tags"), CASES, ids=[c[0] for c in CASES])
def test_example_runs(tmp_path, monkeypatch, capsys, script, tags):
    """Run in this process, as ``python examples/<script> --epochs 2 --logdir <tmp>`` would."""
    logdir = tmp_path / "run"
    monkeypatch.setattr(sys, "argv", [script, "--epochs", "2", "--logdir", str(logdir)])
    runpy.run_path(str(EXAMPLES / script), run_name="__main__")
    assert "val accuracy" in capsys.readouterr().out
    scalars = read_scalars(logdir)
    assert tags <= set(scalars)
    assert len(scalars["train/loss"]) == 2 * 15  # 2 epochs of ceil(455 / 32) steps
