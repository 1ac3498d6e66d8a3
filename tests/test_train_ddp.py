"""The training command under ``torchrun``: 2 gloo processes train exactly like one process
on the same global batches, and only rank 0 writes logs and checkpoints."""

import os
import subprocess
import sys

import pytest
import torch

pytest.importorskip("sklearn")

from torch_manual_bp.tensorboard import read_scalars
from torch_manual_bp.train import TrainConfig, train

ARGS = ["--optimizer", "adam", "--batch-size", "64", "--epochs", "2", "--device", "cpu",
        "--no-progress"]  # fmt: skip


@pytest.mark.slow
def test_torchrun_two_gloo_processes_equal_one_process(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
           "2", "-m", "torch_manual_bp", "train", *ARGS, "--logdir", str(tmp_path / "runs"),
           "--run-name", "ddp", "--checkpoint", str(tmp_path / "ddp.pt")]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("Trained MLP") == 1  # the summary comes from rank 0 only
    assert "x 2 processes" in done.stdout

    one = train(TrainConfig(optimizer="adam", batch_size=64, epochs=2, device="cpu",
                            logdir=None, progress=False))  # fmt: skip
    ddp = torch.load(tmp_path / "ddp.pt", weights_only=True)
    for key, w in one.state_dict.items():
        torch.testing.assert_close(ddp["model"][key], w, rtol=1e-5, atol=1e-6)
    # rank 0 alone wrote: one run directory, one event file, one checkpoint
    assert os.listdir(tmp_path / "runs") == ["ddp"]
    assert len(os.listdir(tmp_path / "runs" / "ddp")) == 1
    assert sorted(os.listdir(tmp_path)) == ["ddp.pt", "runs"]
    logged = [J for _, J in read_scalars(tmp_path / "runs" / "ddp")["train/loss"]]
    assert logged == pytest.approx([J for _, J in one.history], rel=1e-5)  # the global batch J
