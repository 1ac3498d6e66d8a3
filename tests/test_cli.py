"""``python -m torch_manual_bp``: the summary, one-line errors with exit status 2, divergence
with exit status 1, and the ``parity`` subcommand's delegation to ``selftest``."""

import math
import os
import subprocess
import sys
import types

import pytest
import torch

pytest.importorskip("sklearn")
pytest.importorskip("tensorboard")

import torch_manual_bp
from torch_manual_bp.cli import main

FAST = ["--optimizer", "gd", "--epochs", "2", "--no-progress"]


def _run(argv, capsys):
    """(exit status, stdout, stderr) of ``main(argv)``, whether it returns or exits."""
    try:
        status = main(argv)
    except SystemExit as stop:
        status = stop.code
    out, err = capsys.readouterr()
    return status, out, err


def test_train_prints_a_summary_and_writes_one_run(tmp_path, capsys):
    status, out, _ = _run(
        ["train", *FAST, "--logdir", str(tmp_path / "runs"), "--run-name", "r",
         "--checkpoint", str(tmp_path / "c.pt"), "--check-parity-every", "1"],
        capsys,
    )  # fmt: skip
    assert status == 0
    assert "Trained MLP [30, 16, 1] with gd (lr 0.5, batch 455) for 2 epochs, 2 steps" in out
    for fragment in ("train  loss", "val    loss", "accuracy", "parity 2 checks",
                     os.path.join(str(tmp_path / "runs"), "r"), "c.pt"):  # fmt: skip
        assert fragment in out
    assert os.listdir(tmp_path / "runs") == ["r"]
    assert torch.load(tmp_path / "c.pt", weights_only=True)["epoch"] == 2


@pytest.mark.parametrize("hidden", [["32", "8"], ["32,8"]])
def test_hidden_widths(hidden, capsys):
    status, out, _ = _run(["train", *FAST, "--logdir", "", "--hidden", *hidden], capsys)
    assert status == 0 and "MLP [30, 32, 8, 1]" in out


def _csv(tmp_path, text: str) -> str:
    path = tmp_path / "d.csv"
    path.write_text(text)
    return str(path)


# (arguments, given tmp_path; the one line expected on stderr)
BAD_INPUT = [
    (lambda t: ["--bogus"], "unrecognized arguments: --bogus"),
    (lambda t: ["--lr", "abc"], "argument --lr: expected a positive number, got 'abc'"),
    (lambda t: ["--lr", "-1"], "argument --lr: expected a positive finite number"),
    (lambda t: ["--optimizer", "rmsprop"], "argument --optimizer: invalid choice: 'rmsprop'"),
    (lambda t: ["--epochs", "x"], "argument --epochs: expected an integer >= 0"),
    (lambda t: ["--data", str(t / "no.csv"), "--target", "y"], "no.csv: no such file"),
    (lambda t: ["--data", _csv(t, ""), "--target", "y"], "d.csv:1:1: empty file"),
    (lambda t: ["--data", _csv(t, "a,b\n1,0\n"), "--target", "y"], "d.csv:1:1: no target column"),
    (lambda t: ["--data", _csv(t, "a,y\n1,0\nz,1\n"), "--target", "y"],
     "d.csv:3:1: non-numeric value 'z' in column 'a'"),
    (lambda t: ["--data", _csv(t, "a,y\n1,0\n2,0\n"), "--target", "y"],
     "must hold exactly two distinct values"),
    (lambda t: ["--data", _csv(t, "a,y\n1,0\n2,1\n3,2\n"), "--target", "y"],
     "must hold exactly two distinct values"),
    (lambda t: ["--data", _csv(t, "a,y\n1,0\n")], "--target COLUMN go together"),
    (lambda t: ["--logdir", _csv(t, "x") + "/runs"], "cannot write the log directory"),
    (lambda t: ["--resume", str(t / "none.pt")], "none.pt: no such checkpoint file"),
]  # fmt: skip


@pytest.mark.parametrize(("args", "message"), BAD_INPUT)
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, args, message):
    status, out, err = _run(["train", "--no-progress", *args(tmp_path)], capsys)
    assert status == 2
    assert message in err
    assert err.count("\n") == 1 and err.startswith("torch-manual-bp")
    assert "Traceback" not in err and out == ""


def test_bad_input_from_a_real_process_has_no_traceback(tmp_path):
    """The same through ``python -m``: exit status 2, one line on stderr."""
    path = _csv(tmp_path, "a,b,y\n1,2,0\n3,oops,1\n")
    done = subprocess.run(
        [sys.executable, "-m", "torch_manual_bp", "train", "--data", path, "--target", "y"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr == (
        f"torch-manual-bp: error: {path}:3:2: non-numeric value 'oops' in column 'b'\n"
    )


def _diverge(ckpt: str, lr: str, epochs: str, capsys):
    return _run(
        ["train", "--optimizer", "gd", "--lr", lr, "--epochs", epochs, "--no-progress",
         "--logdir", "", "--checkpoint", ckpt], capsys,
    )  # fmt: skip


def test_divergence_exits_1_naming_the_step_and_keeping_the_checkpoint(tmp_path, capsys):
    """gd, α = 1e5: epochs 1-3 end finite, epoch 4 with J = NaN; epoch 3's checkpoint stays."""
    ckpt = str(tmp_path / "c.pt")
    status, _, err = _diverge(ckpt, "1e5", "6", capsys)
    assert status == 1
    assert "at step 4" in err and "lower learning rate" in err
    assert f"The last good checkpoint is kept: {ckpt}" in err
    assert err.count("\n") == 1
    kept = torch.load(ckpt, weights_only=True)
    assert kept["epoch"] == 3 and math.isfinite(kept["metrics"]["train/epoch_loss"])
    assert all(torch.isfinite(v).all() for v in kept["model"].values())


def test_divergence_before_any_good_epoch_claims_no_checkpoint(tmp_path, capsys):
    """α = 1e30 diverges in epoch 1. A file left at the path by an earlier run is not this
    run's "last good checkpoint": the message must not advertise it, and it is untouched."""
    ckpt = tmp_path / "c.pt"
    ckpt.write_bytes(b"an earlier run's file")
    status, _, err = _diverge(str(ckpt), "1e30", "5", capsys)
    assert status == 1
    assert "the training loss is nan at step 1" in err and "checkpoint was not written" in err
    assert "kept" not in err and err.count("\n") == 1
    assert ckpt.read_bytes() == b"an earlier run's file"


@pytest.mark.parametrize("lr", ["1e39", "3.5e38", "inf", "nan", "0"])
def test_an_lr_float32_cannot_hold_is_refused_at_parse_time(capsys, lr):
    status, out, err = _run(["train", *FAST, "--logdir", "", "--lr", lr], capsys)
    assert status == 2 and out == "" and err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("torch-manual-bp train: error: argument --lr: expected a")
    assert repr(lr) in err


def test_parity_delegates_to_selftest(monkeypatch):
    seen = {}

    def configure_parser(parser):
        parser.add_argument("--steps", type=int, default=5)

    def run(args):
        seen["steps"] = args.steps
        return 7

    fake = types.ModuleType("torch_manual_bp.selftest")
    fake.configure_parser, fake.run = configure_parser, run
    monkeypatch.setitem(sys.modules, "torch_manual_bp.selftest", fake)
    monkeypatch.setattr(torch_manual_bp, "selftest", fake, raising=False)
    assert main(["parity", "--steps", "3"]) == 7
    assert seen == {"steps": 3}


def test_broken_selftest_does_not_break_train(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "torch_manual_bp.selftest", None)  # import fails
    monkeypatch.delattr(torch_manual_bp, "selftest", raising=False)
    status, _, err = _run(["parity"], capsys)
    assert status == 2 and "the parity self-test is unavailable" in err
    assert err.count("\n") == 1
    status, out, _ = _run(["train", *FAST, "--logdir", ""], capsys)
    assert status == 0 and "Trained MLP" in out


def test_help_lists_the_subcommands(capsys):
    status, out, _ = _run(["--help"], capsys)
    assert status == 0
    assert all(c in out for c in ("train", "compare", "parity"))
    status, out, _ = _run(["train", "--help"], capsys)
    for option in ("--optimizer", "--lr", "--batch-size", "--epochs", "--hidden", "--seed",
                   "--device", "--logdir", "--run-name", "--data", "--target", "--checkpoint",
                   "--resume", "--check-parity-every", "--compile", "--amp"):  # fmt: skip
        assert option in out


def test_importing_the_package_and_cli_pulls_no_training_extras():
    code = (
        "import sys, torch_manual_bp, torch_manual_bp.cli, torch_manual_bp.train, "
        "torch_manual_bp.data, torch_manual_bp.tensorboard, torch_manual_bp.compare\n"
        "extras = ('tensorboard', 'sklearn', 'matplotlib')  # torch itself imports tqdm\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in extras))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_progress_bar_on_stderr(capsys):
    status, out, err = _run(["train", "--optimizer", "gd", "--epochs", "3", "--logdir", ""],
                            capsys)  # fmt: skip
    assert status == 0 and "Trained MLP" in out
    assert "train gd" in err and "3/3" in err and "loss=" in err
