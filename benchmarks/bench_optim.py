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
import gc
import os
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


def seconds_per_pass(device: str = "cpu", samples: int = 15) -> dict[str, float]:
    """Seconds to move the whole parameter set (N_TENSORS x NUMEL float32) once through memory,
    measured on tensors twice that size (a working set like Adam's); the fastest of several
    repeats is the hardware (interference only ever adds time):

    - ``inplace``: ``a.add_(b)`` reads a and b and writes a back in place, 3 passes, the same
      read-modify-write pattern as an optimizer step. This is the floor's unit.
    - ``copy``: ``dst.copy_(src)``, counted as 2 passes (read, write). It reads lower than
      the in-place figure because writing to a line not yet in cache first reads it
      (write-allocate), so it is reported for reference only.
    """
    a = torch.randn(2 * N_TENSORS * NUMEL, device=device)
    b = torch.randn_like(a)
    dst = torch.empty_like(a)
    out = {}
    for name, fn, passes in (
        ("inplace", lambda: a.add_(b, alpha=1e-12), 3),
        ("copy", lambda: dst.copy_(b), 2),
    ):
        fn()
        times = []
        for _ in range(samples):
            _sync(device)
            t0 = time.perf_counter()
            fn()
            _sync(device)
            times.append(time.perf_counter() - t0)
        out[name] = min(times) / (2 * passes)
    return out


def _time_steps(opt: torch.optim.Optimizer, steps: int, device: str) -> float:
    gc.disable()  # a collection inside one side of a pair would skew its ratio
    try:
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(steps):
            opt.step()
        _sync(device)
        return (time.perf_counter() - t0) / steps
    finally:
        gc.enable()


def _fused_available() -> bool:
    try:
        from torch_manual_bp.optim import _fused
    except ImportError:
        return False
    return _fused.available()


def run(quick: bool = False, device: str = "cpu") -> list[dict]:
    """Time every case against its twin; one dict per case (times in milliseconds).

    The floor's unit (seconds per pass) is the fastest in-place ``a.add_(b)`` (3 passes)
    over all rounds: it is timed in every round, between the pairs, so that it sees the same
    machine as the optimizers do."""
    samples, steps = (7, 3) if quick else (31, 5)
    # 2 x 80 MB: a working set as large as Adam's (w, g, m, s), so that caches flatter the
    # floor no more than they flatter the optimizers
    a = torch.randn(2 * N_TENSORS * NUMEL, device=device)
    b = torch.randn_like(a)
    pass_times = []
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
            _sync(device)
            t0 = time.perf_counter()
            a.add_(b, alpha=1e-12)
            _sync(device)
            pass_times.append((time.perf_counter() - t0) / 6)  # 3 passes over 2x the params
        rows.append(
            {
                "case": name,
                "passes": passes,
                "ours_min_ms": 1e3 * min(t_ours),
                "torch_min_ms": 1e3 * min(t_theirs),
                "ours_ms": 1e3 * statistics.median(t_ours),
                "ours_iqr_ms": 1e3 * _iqr(t_ours),
                "torch_ms": 1e3 * statistics.median(t_theirs),
                "torch_iqr_ms": 1e3 * _iqr(t_theirs),
                "ratio": statistics.median(ratios),
                "min_ratio": min(t_ours) / min(t_theirs),
            }
        )
    per_pass = min(pass_times)
    for r in rows:
        floor_ms = 1e3 * r["passes"] * per_pass
        r["floor_ms"] = floor_ms
        r["ours_over_floor"] = r["ours_min_ms"] / floor_ms
        r["torch_over_floor"] = r["torch_min_ms"] / floor_ms
    return rows


def path_choice(quick: bool = False) -> list[dict]:
    """Our per-tensor vs our multi-tensor path at several tensor sizes on CPU: the
    measurement behind ``foreach=None`` (docs/optim.md). Same total traffic, different
    Python overhead."""
    samples, steps = (7, 3) if quick else (21, 5)
    rows = []
    for cls, kw in ((Adam, {"lr": LR}), (Momentum, {"lr": LR, "momentum": BETA})):
        for n, numel in ((200, 1_000), (50, 20_000), (20, 500_000)):
            opts = []
            for foreach in (False, True):
                g = torch.Generator().manual_seed(0)
                ps = [torch.randn(numel, generator=g).requires_grad_() for _ in range(n)]
                for p in ps:
                    p.grad = torch.randn(numel, generator=g) * 1e-2
                opts.append(cls(ps, foreach=foreach, **kw))
            for o in opts:
                _time_steps(o, 3, "cpu")
            loop, multi = [], []
            for i in range(samples):
                pair = [(opts[0], loop), (opts[1], multi)]
                for o, out in pair if i % 2 == 0 else pair[::-1]:
                    out.append(_time_steps(o, steps, "cpu"))
            rows.append(
                {
                    "optimizer": cls.__name__,
                    "tensors": f"{n} x {numel}",
                    "per_tensor_ms": 1e3 * statistics.median(loop),
                    "multi_tensor_ms": 1e3 * statistics.median(multi),
                    "multi_over_per": statistics.median(
                        [b / a for a, b in zip(loop, multi, strict=True)]
                    ),
                }
            )
    return rows


def path_choice_table(rows: list[dict]) -> str:
    head = (
        "| optimizer | tensors | per-tensor ms | multi-tensor ms | multi/per |\n"
        "|---|---|---|---|---|\n"
    )
    return head + "".join(
        f"| {r['optimizer']} | {r['tensors']} | {r['per_tensor_ms']:.2f} "
        f"| {r['multi_tensor_ms']:.2f} | {r['multi_over_per']:.2f} |\n"
        for r in rows
    )


def _iqr(xs: list[float]) -> float:
    q = statistics.quantiles(xs, n=4)
    return q[2] - q[0]


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if "model name" in line)
    except (OSError, StopIteration):
        pass
    bw = seconds_per_pass()
    gbs = {k: N_TENSORS * NUMEL * 4 / v / 1e9 for k, v in bw.items()}
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (
        f"{cpu}, {os.cpu_count()} CPUs (load average {load:.1f}), torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, {N_TENSORS} tensors x {NUMEL} float32; "
        f"bandwidth {gbs['inplace']:.1f} GB/s in place (floor unit), {gbs['copy']:.1f} GB/s copy_"
    )


def markdown_table(rows: list[dict]) -> str:
    """Median (IQR) and fastest step in ms. ours/torch: the median of the paired ratios, and
    the ratio of the fastest steps (the estimate least disturbed by other processes); the
    floor ratios use the fastest steps too."""
    head = (
        "| case | ours ms median (IQR) | ours min | torch ms median (IQR) | torch min "
        "| ours/torch median | ours/torch min | floor ms | ours/floor | torch/floor |\n"
        "|---|---|---|---|---|---|---|---|---|---|\n"
    )
    body = "".join(
        f"| {r['case']} | {r['ours_ms']:.2f} ({r['ours_iqr_ms']:.2f}) | {r['ours_min_ms']:.2f} "
        f"| {r['torch_ms']:.2f} ({r['torch_iqr_ms']:.2f}) | {r['torch_min_ms']:.2f} "
        f"| {r['ratio']:.2f} | {r['min_ratio']:.2f} | {r['floor_ms']:.2f} "
        f"| {r['ours_over_floor']:.2f} | {r['torch_over_floor']:.2f} |\n"
        for r in rows
    )
    return head + body


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer samples")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = run(quick=args.quick)
    print(machine())
    print()
    print(markdown_table(rows))
    print("foreach=None on CPU: our two paths (median of paired ratios)")
    print()
    print(path_choice_table(path_choice(quick=args.quick)))


if __name__ == "__main__":
    main()
