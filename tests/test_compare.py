"""``compare``: four runs from the same initial weights, a table, a plot, and the lecture's
point (momentum smooths SGD's path) measured on the curves."""

import os
from itertools import pairwise

import pytest

pytest.importorskip("sklearn")
pytest.importorskip("matplotlib")

from torch_manual_bp.cli import main
from torch_manual_bp.compare import compare
from torch_manual_bp.train import TrainConfig


def test_compare_writes_four_runs_a_table_and_a_plot(tmp_path, capsys):
    status = main(["compare", "--steps", "6", "--logdir", str(tmp_path), "--run-name", "c",
                   "--no-progress", "--target-loss", "0.7"])  # fmt: skip
    out = capsys.readouterr().out
    assert status == 0
    assert sorted(os.listdir(tmp_path / "c")) == ["adam", "compare.png", "gd", "momentum", "sgd"]
    assert (tmp_path / "c" / "compare.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    lines = [line for line in out.splitlines() if line.startswith("|")]
    assert len(lines) == 2 + 4 and "steps to J ≤ 0.7" in lines[0]
    assert [line.split("|")[1].strip() for line in lines[2:]] == ["gd", "sgd", "momentum", "adam"]


def test_same_initial_weights_and_steps_to_target():
    out = compare(TrainConfig(logdir=None, progress=False), steps=5, target_loss=0.7)
    starts = {r.full_loss[0] for r in out.results.values()}
    assert len(starts) == 1  # J(w(0)) is the same for all four: same weights, same data
    for name, r in out.results.items():
        assert r.steps == 5 and [t for t, _ in r.full_loss] == list(range(6))
        reached = out.steps_to_target(name)
        losses = dict(r.full_loss)
        if reached is not None:
            assert losses[reached] <= 0.7 and all(losses[t] > 0.7 for t in range(reached))


def _roughness(curve) -> float:
    """Path length of J(t) beyond the net change: 0 for a monotone curve."""
    J = [v for _, v in curve]
    return sum(abs(b - a) for a, b in pairwise(J)) - abs(J[-1] - J[0])


@pytest.mark.slow
def test_momentum_smooths_sgd_at_the_same_learning_rate():
    out = compare(TrainConfig(logdir=None, progress=False), optimizers=["sgd", "momentum"],
                  steps=200)  # fmt: skip
    sgd, momentum = (_roughness(out.results[n].full_loss) for n in ("sgd", "momentum"))
    assert momentum < 0.5 * sgd


def test_bad_learning_rate_spec(capsys):
    status = main(["compare", "--lr", "adam:0.1", "--logdir", "", "--no-progress"])
    err = capsys.readouterr().err
    assert status == 2 and "--lr 'adam:0.1': expected NAME=VALUE" in err
