"""Two gloo processes on this machine: DDP and ZeRO give the single-process full-batch run.

Each rank trains on one half of a batch; DDP averages the two half-batch gradients, and the
mean of two equal-size halves' mean-loss gradients IS the full-batch mean-loss gradient:

    ∇J_full = (1/m) Σᵢ ∇Jᵢ = ½ [(2/m) Σ_{i ∈ half 0} ∇Jᵢ + (2/m) Σ_{i ∈ half 1} ∇Jᵢ]

so every step, and the whole trajectory, equals one process on the full batch up to float32
rounding. ``ZeroRedundancyOptimizer(optimizer_class=Adam | Momentum)`` shards the optimizer
state over the ranks; its consolidated ``state_dict`` (gathered on rank 0) must resume a run
bit for bit, and must hold the same state a single-process optimizer holds.

All scenarios run in ONE spawn of two processes (a module fixture); the tests read what the
ranks wrote. The ranks rendezvous through a ``FileStore`` in the test's temporary directory
(``init_method="file://..."``), not a TCP port: a port picked free and then released could be
taken by another process before rank 0 binds it.
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel as DDP

from torch_manual_bp.functional import sigmoid_bce
from torch_manual_bp.nn import MLP
from torch_manual_bp.optim import Adam, Momentum

with warnings.catch_warnings():  # torch.distributed.optim imports torch.jit, now deprecated
    warnings.simplefilter("ignore", DeprecationWarning)
    from torch.distributed.optim import ZeroRedundancyOptimizer

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not built"),
]

WORLD = 2
SIZES = [5, 8, 1]  # MLP [n_x, hidden, 1]
M = 16  # full batch; each rank gets M / WORLD rows
STEPS = 4  # DDP vs single process
ZERO_STEPS = (3, 3)  # before and after the checkpoint
OPTIMIZERS = {
    "adam": (Adam, {"lr": 1e-2}),
    "adam-amsgrad-wd": (Adam, {"lr": 1e-2, "amsgrad": True, "weight_decay": 0.1}),
    "momentum": (Momentum, {"lr": 0.1, "momentum": 0.9}),
    "momentum-hat": (Momentum, {"lr": 0.1, "momentum": 0.9, "bias_correction": True}),
}
# float32: the DDP sum of half-batch gradients rounds differently from the full-batch sum.
TOL = {"rtol": 1e-5, "atol": 1e-6}
SPAWN_TIMEOUT_S = 180


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    X = torch.randn(M, SIZES[0], generator=g)
    Y = torch.randint(0, 2, (M, 1), generator=g).float()
    return X, Y


def _model(seed: int = 0) -> MLP:
    torch.manual_seed(seed)
    return MLP(SIZES)


def _train(model, opt, X, Y, steps: int) -> None:
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        sigmoid_bce(model(X), Y).backward()  # the mean over this process's rows
        opt.step()


def _params(model) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


# --------------------------------------------------------------------------------------
# What each rank runs
# --------------------------------------------------------------------------------------


def _worker(rank: int, store: str, out_dir: str) -> None:
    torch.set_num_threads(1)  # two processes on a shared machine
    dist.init_process_group("gloo", init_method=Path(store).as_uri(), rank=rank, world_size=WORLD)
    try:
        X, Y = _data()
        half = slice(rank * M // WORLD, (rank + 1) * M // WORLD)
        x, y = X[half], Y[half]
        out: dict = {"ddp": {}, "zero": {}, "zero_resumed": {}, "zero_state": {}}
        for name, (cls, kw) in OPTIMIZERS.items():
            # DDP + this package's optimizer.
            ddp = DDP(_model())
            _train(ddp, cls(ddp.parameters(), **kw), x, y, STEPS)
            out["ddp"][name] = _params(ddp.module)

            # ZeRO, uninterrupted.
            ddp = DDP(_model())
            zero = ZeroRedundancyOptimizer(ddp.parameters(), optimizer_class=cls, **kw)
            _train(ddp, zero, x, y, sum(ZERO_STEPS))
            out["zero"][name] = _params(ddp.module)

            # ZeRO, checkpointed after the first part, then resumed in a fresh model/optimizer.
            ddp = DDP(_model())
            zero = ZeroRedundancyOptimizer(ddp.parameters(), optimizer_class=cls, **kw)
            _train(ddp, zero, x, y, ZERO_STEPS[0])
            zero.consolidate_state_dict(to=0)  # a collective: every rank calls it
            ckpt = Path(out_dir) / f"ckpt-{name}.pt"
            if rank == 0:
                state = {"model": ddp.module.state_dict(), "optim": zero.state_dict()}
                torch.save(state, ckpt)
                out["zero_state"][name] = state["optim"]
            dist.barrier()
            state = torch.load(ckpt, weights_only=True)
            resumed = _model(seed=123)  # different weights: the checkpoint must overwrite them
            resumed.load_state_dict(state["model"])
            ddp = DDP(resumed)
            zero = ZeroRedundancyOptimizer(ddp.parameters(), optimizer_class=cls, **kw)
            zero.load_state_dict(state["optim"])
            _train(ddp, zero, x, y, ZERO_STEPS[1])
            out["zero_resumed"][name] = _params(ddp.module)
        torch.save(out, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict]:
    """Spawn the two ranks once; return what each wrote."""
    out_dir = tmp_path_factory.mktemp("ddp")
    store = out_dir / "filestore"  # must not exist yet; the ranks create and share it
    ctx = mp.spawn(_worker, args=(str(store), str(out_dir)), nprocs=WORLD, join=False)
    deadline = time.monotonic() + SPAWN_TIMEOUT_S
    while not ctx.join(timeout=5):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail(f"the {WORLD} gloo processes did not finish in {SPAWN_TIMEOUT_S} s")
    return [torch.load(out_dir / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]


def _single_process(name: str, steps: int):
    """The reference: one process, the full batch, the plain optimizer."""
    cls, kw = OPTIMIZERS[name]
    X, Y = _data()
    model = _model()
    opt = cls(model.parameters(), **kw)
    _train(model, opt, X, Y, steps)
    return model, opt


# --------------------------------------------------------------------------------------
# Tests
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_ddp_equals_single_process_full_batch(ranks, name):
    model, _ = _single_process(name, STEPS)
    for r in range(WORLD):
        for got, want in zip(ranks[r]["ddp"][name], model.parameters(), strict=True):
            torch.testing.assert_close(got, want.detach(), **TOL)
    for a, b in zip(ranks[0]["ddp"][name], ranks[1]["ddp"][name], strict=True):
        assert torch.equal(a, b)  # DDP keeps the replicas identical


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_zero_equals_single_process_full_batch(ranks, name):
    model, _ = _single_process(name, sum(ZERO_STEPS))
    for r in range(WORLD):
        for got, want in zip(ranks[r]["zero"][name], model.parameters(), strict=True):
            torch.testing.assert_close(got, want.detach(), **TOL)


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_zero_consolidated_state_resumes_exactly(ranks, name):
    for r in range(WORLD):
        for got, want in zip(ranks[r]["zero_resumed"][name], ranks[r]["zero"][name], strict=True):
            assert torch.equal(got, want)


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_zero_consolidated_state_is_the_single_process_state(ranks, name):
    """The gathered dict has every parameter's state, under the usual keys and indices."""
    _, opt = _single_process(name, ZERO_STEPS[0])
    want = opt.state_dict()
    got = ranks[0]["zero_state"][name]
    assert sorted(got["state"]) == sorted(want["state"])
    for i, state in want["state"].items():
        assert sorted(got["state"][i]) == sorted(state)
        for key, value in state.items():
            torch.testing.assert_close(got["state"][i][key], value, **TOL)
    hyper = {k: v for k, v in want["param_groups"][0].items() if k != "params"}
    for group in got["param_groups"]:
        assert {k: group[k] for k in hyper} == hyper
