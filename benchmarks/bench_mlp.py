"""The lecture's MLP against its PyTorch twin: forward+backward time, saved bytes, one epoch.

Every comparison runs this package's ``MLP`` + ``functional.sigmoid_bce`` and the twin that
``MLP.to_torch()`` returns (``nn.Sequential(Linear, ReLU, ..., Linear)``, the same weights)
+ ``F.binary_cross_entropy_with_logits`` on the same data, interleaved (``timing.compare``).
"ours" is the default network (``relu_grad_at_zero=1``, the lecture's mask 1{Z ≥ 0});
"ours/0" is the same network with PyTorch's mask 1{Z > 0}.

Sizes (hidden widths; the last layer has one output, a logit per example):

    small   batch 64,   widths 64,   3 layers   [64, 64, 64, 1]
    medium  batch 512,  widths 512,  3 layers   [512, 512, 512, 1]
    large   batch 1024, widths 1024, 4 layers   [1024, 1024, 1024, 1024, 1]
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from torch_manual_bp import functional as mbpF
from torch_manual_bp.nn import MLP

from .timing import compare, fmt_ratio, fmt_time_iqr

__all__ = ["SIZES", "Size", "bench_epoch", "bench_fwd_bwd", "bench_saved_bytes", "saved_bytes"]


@dataclass(frozen=True)
class Size:
    name: str
    batch: int
    sizes: tuple[int, ...]  # [n_in, hidden..., n_out]


SIZES = (
    Size("small", 64, (64, 64, 64, 1)),
    Size("medium", 512, (512, 512, 512, 1)),
    Size("large", 1024, (1024, 1024, 1024, 1024, 1)),
)
TINY = Size("tiny", 8, (4, 4, 1))  # for the smoke test only


def _case(size: Size, device: torch.device, seed: int = 0):
    """ours (lecture mask), ours/0 (PyTorch mask) and torch, all with the same weights."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    net = MLP(size.sizes, relu_grad_at_zero=1).to(device)
    net0 = MLP(size.sizes, relu_grad_at_zero=0).to(device)
    net0.load_state_dict(net.state_dict())
    twin = net.to_torch()
    x = torch.randn(size.batch, size.sizes[0], generator=g).to(device)
    y = torch.randint(0, 2, (size.batch, size.sizes[-1]), generator=g).float().to(device)
    return {"torch": twin, "ours": net, "ours/0": net0}, x, y


def _loss_fn(name: str, model: nn.Module) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    if name == "torch":
        return lambda x, y: F.binary_cross_entropy_with_logits(model(x), y)
    return lambda x, y: mbpF.sigmoid_bce(model(x), y)


def _fwd_bwd(model: nn.Module, loss_fn, x: torch.Tensor, y: torch.Tensor) -> Callable[[], None]:
    params = list(model.parameters())

    def step() -> None:
        for p in params:  # the same fresh-gradient work on both sides
            p.grad = None
        loss_fn(x, y).backward()

    return step


def bench_fwd_bwd(
    *,
    compiled: bool,
    sizes: tuple[Size, ...] = SIZES,
    rounds: int = 21,
    min_block_s: float = 0.05,
    device: torch.device | str = "cpu",
) -> list[dict]:
    """Forward + loss + backward per call, ours vs torch, one row per size.

    ``compiled``: the loss function (model + loss) goes through ``torch.compile`` on both
    sides; its backward is then the compiled backward graph. Compilation is not timed.
    """
    device = torch.device(device)
    rows = []
    for size in sizes:
        models, x, y = _case(size, device)
        if compiled:
            torch._dynamo.reset()
        fns = {}
        for name, model in models.items():
            loss_fn = _loss_fn(name, model)
            if compiled:
                loss_fn = torch.compile(loss_fn)
            fns[name] = _fwd_bwd(model, loss_fn, x, y)
        c = compare(fns, rounds=rounds, min_block_s=min_block_s, device=device)
        rows.append(
            {
                "size": size.name,
                "batch": size.batch,
                "sizes": list(size.sizes),
                "mode": "compiled" if compiled else "eager",
                "torch_s": c.median("torch"),
                "torch_iqr_s": c.iqr("torch"),
                "ours_s": c.median("ours"),
                "ours_iqr_s": c.iqr("ours"),
                "ratio": c.ratio("ours", "torch"),
                "ratio_iqr": c.ratio_iqr("ours", "torch"),
                "ratio0": c.ratio("ours/0", "torch"),
                "ratio0_iqr": c.ratio_iqr("ours/0", "torch"),
                "min_ratio": c.min("ours") / c.min("torch"),
                "rounds": rounds,
                "calls_per_block": c.calls_per_block,
            }
        )
    if compiled:
        torch._dynamo.reset()
    return rows


def fwd_bwd_table(rows: list[dict], targets: dict[str, float]) -> str:
    lines = [
        "| size | mode | torch (median [IQR]) | ours (median [IQR]) | ours ÷ torch | "
        "fastest ÷ fastest | ours/0 ÷ torch | target |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        target = targets.get(r["size"])
        ok = "" if target is None else (f"≤ {target}× " + ("✓" if r["ratio"] <= target else "✗"))
        lines.append(
            f"| {r['size']} (batch {r['batch']}, {r['sizes']}) | {r['mode']} | "
            f"{fmt_time_iqr(r['torch_s'], r['torch_iqr_s'])} | "
            f"{fmt_time_iqr(r['ours_s'], r['ours_iqr_s'])} | "
            f"**{fmt_ratio(r['ratio'], r['ratio_iqr'])}** | {fmt_ratio(r['min_ratio'])} | "
            f"{fmt_ratio(r['ratio0'], r['ratio0_iqr'])} | {ok} |"
        )
    return "\n".join(lines)


# --------------------------------------------------------------------------------------
# Bytes saved for backward
# --------------------------------------------------------------------------------------


def saved_bytes(forward: Callable[[], torch.Tensor], params: list[torch.Tensor]) -> int:
    """Bytes of the distinct storages that autograd saves for backward during ``forward()``.

    Counted with ``torch.autograd.graph.saved_tensors_hooks``: every saved tensor's storage
    once (views of one storage, and one tensor saved by two ops, count once), parameters'
    storages excluded (they exist whether or not a backward follows).
    """
    param_ptrs = {p.untyped_storage().data_ptr() for p in params}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in param_ptrs:
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = forward()
    del out  # the graph (and what it saved) is freed here; the hook already counted it
    return sum(seen.values())


def bench_saved_bytes(
    sizes: tuple[Size, ...] = SIZES, device: torch.device | str = "cpu"
) -> list[dict]:
    device = torch.device(device)
    rows = []
    for size in sizes:
        models, x, y = _case(size, device)
        row = {"size": size.name, "batch": size.batch, "sizes": list(size.sizes)}
        for name, model in models.items():
            loss_fn = _loss_fn(name, model)
            row[name] = saved_bytes(partial(loss_fn, x, y), list(model.parameters()))
        row["ratio"] = row["ours"] / row["torch"]
        row["ratio0"] = row["ours/0"] / row["torch"]
        rows.append(row)
    return rows


def saved_bytes_table(rows: list[dict], target: float) -> str:
    lines = [
        "| size | torch | ours | ours/0 | ours ÷ torch | target |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        ok = "✓" if r["ratio"] <= target else "✗"
        lines.append(
            f"| {r['size']} (batch {r['batch']}, {r['sizes']}) | {r['torch']:,} B | "
            f"{r['ours']:,} B | {r['ours/0']:,} B | **{r['ratio']:.3f}×** | ≤ {target}× {ok} |"
        )
    return "\n".join(lines)


# --------------------------------------------------------------------------------------
# One epoch of the training command's model and data
# --------------------------------------------------------------------------------------


def _training_defaults() -> dict:
    """The training command's default run: data, hidden widths, batch size, Adam's lr.

    Read from ``torch_manual_bp.train`` / ``torch_manual_bp.data`` (the training split of
    the breast-cancer set, standardised); if they are missing, the same set built here.
    """
    try:
        from torch_manual_bp.data import load_breast_cancer
        from torch_manual_bp.train import DEFAULT_BATCH_SIZE, DEFAULT_LR, TrainConfig

        cfg = TrainConfig()
        data = load_breast_cancer(val_fraction=cfg.val_fraction, seed=cfg.seed)
        return {
            "X": data.x_train,
            "y": data.y_train.reshape(-1, 1),
            "data": f"breast cancer, training split {tuple(data.x_train.shape)}",
            "hidden": tuple(cfg.hidden),
            "batch_size": DEFAULT_BATCH_SIZE[cfg.optimizer],
            "lr": DEFAULT_LR[cfg.optimizer],
        }
    except ImportError:
        from sklearn.datasets import load_breast_cancer

        bunch = load_breast_cancer()
        X = torch.tensor(bunch.data, dtype=torch.float32)
        X = (X - X.mean(0)) / X.std(0)
        y = torch.tensor(bunch.target, dtype=torch.float32).reshape(-1, 1)
        return {"X": X, "y": y, "data": f"breast cancer {tuple(X.shape)}", "hidden": (16,),
                "batch_size": 32, "lr": 1e-2}  # fmt: skip


def _our_adam():
    """This package's Adam if it is there; torch's otherwise (then said in the table)."""
    with contextlib.suppress(ImportError, AttributeError):
        from torch_manual_bp.optim import Adam

        return Adam, "torch_manual_bp.optim.Adam"
    return torch.optim.Adam, "torch.optim.Adam (torch_manual_bp.optim.Adam not available)"


def _epoch(model, loss_fn, opt, X, y, batches: list[torch.Tensor]) -> Callable[[], None]:
    def run() -> None:
        for idx in batches:
            opt.zero_grad(set_to_none=True)
            loss_fn(X[idx], y[idx]).backward()
            opt.step()

    return run


def bench_epoch(*, rounds: int = 21, min_block_s: float = 0.05) -> dict:
    """One epoch (shuffled mini-batches, Adam) of MLP + sigmoid_bce vs the torch twin.

    The training command's defaults (``_training_defaults``). Both sides see the same
    permutation and start from the same weights; a timed "epoch" is zero_grad + forward +
    loss + backward + Adam step over every batch. The weights move between calls,
    identically on both sides, which does not change the work done.
    """
    d = _training_defaults()
    X, y = d["X"], d["y"]
    torch.manual_seed(0)
    net = MLP([X.shape[1], *d["hidden"], 1])
    twin = net.to_torch()
    perm = torch.randperm(X.shape[0], generator=torch.Generator().manual_seed(0))
    batches = list(perm.split(d["batch_size"]))
    Adam, adam_name = _our_adam()
    torch_opt = torch.optim.Adam(twin.parameters(), lr=d["lr"])
    fns = {
        "torch": _epoch(twin, _loss_fn("torch", twin), torch_opt, X, y, batches),
        "ours": _epoch(
            net, _loss_fn("ours", net), Adam(net.parameters(), lr=d["lr"]), X, y, batches
        ),
    }
    c = compare(fns, rounds=rounds, min_block_s=min_block_s)
    return {
        "data": d["data"],
        "sizes": [X.shape[1], *d["hidden"], 1],
        "batch_size": d["batch_size"],
        "lr": d["lr"],
        "steps": len(batches),
        "optimizer": adam_name,
        "torch_s": c.median("torch"),
        "torch_iqr_s": c.iqr("torch"),
        "ours_s": c.median("ours"),
        "ours_iqr_s": c.iqr("ours"),
        "ratio": c.ratio("ours", "torch"),
        "ratio_iqr": c.ratio_iqr("ours", "torch"),
        "min_ratio": c.min("ours") / c.min("torch"),
    }


def epoch_table(r: dict) -> str:
    return "\n".join(
        [
            "| data | model | batches | torch (median [IQR]) | ours (median [IQR]) "
            "| ours ÷ torch | fastest ÷ fastest |",
            "|---|---|---|---|---|---|---|",
            f"| {r['data']} | MLP {r['sizes']} + {r['optimizer']} (lr {r['lr']:g}) | "
            f"{r['steps']} × {r['batch_size']} | "
            f"{fmt_time_iqr(r['torch_s'], r['torch_iqr_s'])} | "
            f"{fmt_time_iqr(r['ours_s'], r['ours_iqr_s'])} | "
            f"**{fmt_ratio(r['ratio'], r['ratio_iqr'])}** | {fmt_ratio(r['min_ratio'])} |",
        ]
    )
