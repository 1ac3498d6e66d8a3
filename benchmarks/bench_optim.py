"""Optimizer step time: torch_manual_bp.optim against torch.optim, path by path, and the floor.

An optimizer step is memory traffic: Adam reads w, g, m, s and writes w, m, s (7 passes over
the parameters), Momentum/SGD read w, g, m and write w, m (5 passes). The floor is those bytes
divided by the copy bandwidth measured here (``dst.copy_(src)`` on a tensor as large as all
the parameters together, which moves 2 passes).

Every case is timed interleaved with its PyTorch twin (ours, torch, ours, torch, ...) so that
the other processes sharing the CPU slow both alike; each sample is the mean of a few steps;
the table gives the median and the interquartile range of the samples, and median ratios.

    python benchmarks/bench_optim.py            # 20 tensors x 500k float32 on CPU
    python benchmarks/bench_optim.py --quick    # fewer samples (a smoke run)

A benchmark runner can call ``run(quick) -> list[dict]`` and ``markdown_table(rows)``.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Callable

import torch

from torch_manual_bp.optim import Adam, Momentum

N_TENSORS = 20
NUMEL = 500_000
LR, BETA = 1e-3, 0.9


def _params(seed: int, device: str, dtype: torch.dtype) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ps = []
    for _ in range(N_TENSORS):
        p = torch.randn(NUMEL, generator=g, dtype=dtype).to(device).requires_grad_()
        p.grad = torch.randn(NUMEL, generator=g, dtype=dtype).to(device) * 1e-2
        ps.append(p)
    return ps


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


# (row name, ours: params -> optimizer, torch: params -> optimizer, passes over the params)
Case = tuple[str, Callable, Callable, int]


def _cases(fused_available: bool) -> list[Case]:
    sgd_lr = LR * (1 - BETA)  # Momentum(α, β) ≡ SGD(α(1 − β), β)
    cases: list[Case] = [
        (
            "Adam per-tensor vs torch for-loop",
            lambda p: Adam(p, lr=LR, foreach=False),
            lambda p: torch.optim.Adam(p, lr=LR, foreach=False),
            7,
        ),
        (
            "Adam multi-tensor vs torch foreach",
            lambda p: Adam(p, lr=LR, foreach=True),
            lambda p: torch.optim.Adam(p, lr=LR, foreach=True),
            7,
        ),
        (
            "Momentum per-tensor vs torch SGD for-loop",
            lambda p: Momentum(p, lr=LR, momentum=BETA, foreach=False),
            lambda p: torch.optim.SGD(p, lr=sgd_lr, momentum=BETA, foreach=False),
            5,
        ),
        (
            "Momentum multi-tensor vs torch SGD foreach",
            lambda p: Momentum(p, lr=LR, momentum=BETA, foreach=True),
            lambda p: torch.optim.SGD(p, lr=sgd_lr, momentum=BETA, foreach=True),
            5,
        ),
    ]
    if fused_available:
        cases += [
            (
                "Adam fused vs torch fused",
                lambda p: Adam(p, lr=LR, fused=True),
                lambda p: torch.optim.Adam(p, lr=LR, fused=True),
                7,
            ),
            (
                "Momentum fused vs torch SGD fused",
                lambda p: Momentum(p, lr=LR, momentum=BETA, fused=True),
                lambda p: torch.optim.SGD(p, lr=sgd_lr, momentum=BETA, fused=True),
                5,
            ),
        ]
    return cases


def copy_seconds_per_pass(device: str = "cpu", samples: int = 15) -> float:
    """Seconds to move the whole parameter set once (read or write), from timing ``copy_``."""
    src = torch.randn(N_TENSORS * NUMEL, device=device)
    dst = torch.empty_like(src)
    times = []
    for _ in range(samples):
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(3):
            dst.copy_(src)
        _sync(device)
        times.append((time.perf_counter() - t0) / 3)
    return min(times) / 2  # a copy reads once and writes once; the fastest is the hardware


def _time_steps(opt: torch.optim.Optimizer, steps: int, device: str) -> float:
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        opt.step()
    _sync(device)
    return (time.perf_counter() - t0) / steps


def _fused_available() -> bool:
    try:
        from torch_manual_bp.optim import _fused
    except ImportError:
        return False
    return _fused.available()


def run(quick: bool = False, device: str = "cpu") -> list[dict]:
    """Time every case against its twin; one dict per case (times in milliseconds)."""
    samples, steps = (7, 3) if quick else (31, 5)
    per_pass = copy_seconds_per_pass(device)
    rows = []
    for name, ours_fn, theirs_fn, passes in _cases(_fused_available()):
        ours = ours_fn(_params(0, device, torch.float32))
        theirs = theirs_fn(_params(0, device, torch.float32))
        for opt in (ours, theirs):  # warm up: lazy state, caches, a compiled kernel
            _time_steps(opt, 3, device)
        t_ours, t_theirs, ratios = [], [], []
        for i in range(samples):
            # alternate who goes first, so that neither always follows the other's cache state
            pair = [(ours, t_ours), (theirs, t_theirs)]
            for opt, out in pair if i % 2 == 0 else pair[::-1]:
                out.append(_time_steps(opt, steps, device))
            ratios.append(t_ours[-1] / t_theirs[-1])
        floor = passes * per_pass
        rows.append(
            {
                "case": name,
                "ours_ms": 1e3 * statistics.median(t_ours),
                "ours_iqr_ms": 1e3 * _iqr(t_ours),
                "torch_ms": 1e3 * statistics.median(t_theirs),
                "torch_iqr_ms": 1e3 * _iqr(t_theirs),
                "ratio": statistics.median(ratios),
                "floor_ms": 1e3 * floor,
                "ours_over_floor": statistics.median(t_ours) / floor,
                "torch_over_floor": statistics.median(t_theirs) / floor,
            }
        )
    return rows


def _iqr(xs: list[float]) -> float:
    q = statistics.quantiles(xs, n=4)
    return q[2] - q[0]


def machine() -> str:
    return (
        f"{platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, {N_TENSORS} tensors x {NUMEL} float32"
    )


def markdown_table(rows: list[dict]) -> str:
    head = (
        "| case | ours ms (IQR) | torch ms (IQR) | ours/torch | floor ms | ours/floor "
        "| torch/floor |\n|---|---|---|---|---|---|---|\n"
    )
    body = "".join(
        f"| {r['case']} | {r['ours_ms']:.2f} ({r['ours_iqr_ms']:.2f}) "
        f"| {r['torch_ms']:.2f} ({r['torch_iqr_ms']:.2f}) | {r['ratio']:.2f} "
        f"| {r['floor_ms']:.2f} | {r['ours_over_floor']:.2f} | {r['torch_over_floor']:.2f} |\n"
        for r in rows
    )
    return head + body


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer samples")
    args = parser.parse_args()
    rows = run(quick=args.quick)
    print(machine())
    print(markdown_table(rows))


if __name__ == "__main__":
    main()
