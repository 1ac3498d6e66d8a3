"""examples/ddp_train.py under torchrun with 2 processes: it trains, and only rank 0 writes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from torch_manual_bp.nn import MLP

pytestmark = pytest.mark.slow

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "ddp_train.py"


def test_ddp_example_with_zero_under_torchrun(tmp_path):
    logdir = tmp_path / "runs"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           str(EXAMPLE), "--epochs", "2", "--zero", "--logdir", str(logdir)]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "epoch   2" in done.stdout
    # One writer: a single TensorBoard event file, and the one checkpoint.
    events = list(logdir.glob("events.out.tfevents.*"))
    assert len(events) == 1, events
    state = torch.load(logdir / "last.pt", weights_only=True)
    assert state["epoch"] == 2
    net = MLP([30, 16, 1])
    net.load_state_dict(state["model"])
    # ZeRO's consolidated state: every parameter's Adam state, gathered from both ranks.
    assert sorted(state["optimizer"]["state"]) == list(range(len(list(net.parameters()))))
    assert all({"step", "m", "s"} <= set(s) for s in state["optimizer"]["state"].values())
