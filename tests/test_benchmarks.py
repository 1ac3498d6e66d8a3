"""The benchmark functions run, on tiny sizes. No timing is asserted: speed is not tested."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the benchmarks/ package

from benchmarks import bench_mlp, run
from benchmarks.timing import compare


def test_compare_pairs_rounds_and_ratios():
    c = compare({"a": lambda: None, "b": lambda: sum(range(50))}, rounds=3, min_block_s=1e-4)
    assert len(c.times["a"]) == len(c.times["b"]) == 3
    assert c.ratio("a", "a") == 1.0
    q1, q3 = c.ratio_iqr("b", "a")
    assert q1 <= c.ratio("b", "a") <= q3


def test_fwd_bwd_rows():
    rows = bench_mlp.bench_fwd_bwd(
        compiled=False, sizes=(bench_mlp.TINY,), rounds=2, min_block_s=1e-4
    )
    assert rows[0]["size"] == "tiny" and rows[0]["ratio"] > 0
    assert "tiny" in bench_mlp.fwd_bwd_table(rows, {"tiny": 2.0})


def test_saved_bytes_match_torch():
    """The one figure that is exact: our MLP saves what nn.Linear + nn.ReLU save."""
    rows = bench_mlp.bench_saved_bytes(sizes=(bench_mlp.TINY,))
    assert rows[0]["ours"] == rows[0]["torch"] == rows[0]["ours/0"] > 0


def test_saved_bytes_counts_storages_once_and_skips_parameters():
    w = torch.nn.Parameter(torch.randn(3, 3))
    x = torch.randn(3, 3)
    # x saved by both mm's counts once (36 B); w is a parameter; x * x saves x (same storage).
    assert bench_mlp.saved_bytes(lambda: (x @ w + x @ w.t() + x * x).sum(), [w]) == 36


def test_epoch_runs_on_small_data():
    X = torch.randn(20, 30)
    y = torch.randint(0, 2, (20, 1)).float()
    defaults = {"X": X, "y": y, "data": "random", "hidden": (4,), "batch_size": 8, "lr": 1e-2}
    original = bench_mlp._training_defaults
    bench_mlp._training_defaults = lambda: defaults
    try:
        r = bench_mlp.bench_epoch(rounds=2, min_block_s=1e-4)
    finally:
        bench_mlp._training_defaults = original
    assert r["steps"] == 3 and r["ratio"] > 0
    assert "random" in bench_mlp.epoch_table(r)


def test_machine_and_render():
    info = run.machine()
    assert {"CPU", "cores", "torch", "torch threads"} <= set(info)
    text = run.render("## body", info, quick=True, seconds=1.0)
    assert text.startswith("# Benchmarks") and "## Machine" in text and "## body" in text


def test_optim_target_line_reads_the_multi_tensor_rows():
    rows = [
        {"case": "Adam multi-tensor vs torch foreach", "ratio": 0.9},
        {"case": "Momentum multi-tensor vs torch SGD foreach", "ratio": 1.2},
        {"case": "Adam per-tensor vs torch for-loop", "ratio": 3.0},
    ]
    line = run._optim_target_line(rows)
    assert "Adam multi-tensor 0.90× ✓" in line and "Momentum multi-tensor 1.20× ✗" in line
    assert "per-tensor" not in line and run._optim_target_line([{"case": "x"}]) == ""


def test_what_if_variants_give_the_same_gradients():
    """what_if.py checks every proposed variant bit for bit against the current code."""
    from benchmarks import what_if

    rows = what_if.what_if(bench_mlp.TINY, rounds=1, min_block_s=1e-4)
    assert {"torch", "ours now", "ours + (1), (3)", "ours/0 + (3)"} <= set(rows)
    assert what_if.fx.relu_lecture is what_if._ORIGINAL["relu_lecture"]  # unpatched after
