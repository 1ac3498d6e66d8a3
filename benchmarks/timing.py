"""An interleaved timing harness: paired rounds, so that machine drift cancels in the ratios.

``torch.utils.benchmark.Timer`` measures one statement at a time; on a shared, noisy machine
two statements measured one after the other see different loads, and their ratio inherits
the drift. Here every round times a block of each candidate back to back, in an order that
alternates between rounds (A B C, then C B A, ...), and the ratio is taken WITHIN each round
before taking the median over rounds. A block runs ``n`` calls (chosen once, so that the
slowest candidate's block takes about ``min_block_s``) with the garbage collector off, and
synchronises the device at its end.

Reported per candidate: median time per call, its interquartile range (IQR) and the fastest
round; per pair: the median of the per-round ratios and their IQR, and fastest ÷ fastest
(interference only ever adds time, so on a busy machine the fastest rounds are the
cleanest).
"""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

__all__ = ["Comparison", "compare", "fmt_ratio", "fmt_time", "fmt_time_iqr"]


@dataclass
class Comparison:
    """Per-call seconds of each candidate, one entry per round (same order in every list)."""

    times: dict[str, list[float]]
    calls_per_block: int

    def median(self, name: str) -> float:
        return statistics.median(self.times[name])

    def min(self, name: str) -> float:
        """The fastest round: on a busy machine interference only ever adds time."""
        return min(self.times[name])

    def iqr(self, name: str) -> tuple[float, float]:
        return _quartiles(self.times[name])

    def ratios(self, name: str, baseline: str) -> list[float]:
        return [a / b for a, b in zip(self.times[name], self.times[baseline], strict=True)]

    def ratio(self, name: str, baseline: str) -> float:
        """Median over rounds of (time of ``name``) / (time of ``baseline``) in that round."""
        return statistics.median(self.ratios(name, baseline))

    def ratio_iqr(self, name: str, baseline: str) -> tuple[float, float]:
        return _quartiles(self.ratios(name, baseline))


def _quartiles(xs: list[float]) -> tuple[float, float]:
    if len(xs) < 2:
        return xs[0], xs[0]
    q1, _, q3 = statistics.quantiles(xs, n=4, method="inclusive")
    return q1, q3


def _sync(device: torch.device | None) -> None:
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)


def _block(fn: Callable[[], object], n: int, device: torch.device | None) -> float:
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    _sync(device)
    return (time.perf_counter() - t0) / n


def compare(
    fns: dict[str, Callable[[], object]],
    *,
    rounds: int = 21,
    min_block_s: float = 0.05,
    warmup: int = 3,
    device: torch.device | None = None,
) -> Comparison:
    """Time every callable in ``fns`` in ``rounds`` interleaved rounds.

    Args:
        fns: name → a callable doing one unit of work (e.g. one forward+backward).
        rounds: paired rounds; the ratio is the median over them.
        min_block_s: a block of calls lasts at least about this long (timer resolution and
            per-call jitter average out within a block).
        warmup: calls of each candidate before anything is timed (allocator, caches, JIT).
        device: synchronised around each block when it is a CUDA device.
    """
    names = list(fns)
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    # Calls per block: enough for the slowest candidate to fill min_block_s.
    slowest = max(_block(fn, 1, device) for fn in fns.values())
    n = max(1, int(min_block_s / max(slowest, 1e-9)))
    times: dict[str, list[float]] = {name: [] for name in names}
    gc_was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        for r in range(rounds):
            order = names if r % 2 == 0 else names[::-1]
            for name in order:
                times[name].append(_block(fns[name], n, device))
    finally:
        if gc_was_enabled:
            gc.enable()
    return Comparison(times=times, calls_per_block=n)


def fmt_time(seconds: float) -> str:
    """Seconds in the unit that keeps 3–4 significant digits: ns, µs, ms or s."""
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6)):
        if seconds >= scale:
            return (
                f"{seconds / scale:.3g} {unit}"
                if seconds / scale < 100
                else (f"{seconds / scale:.0f} {unit}")
            )
    return f"{seconds * 1e9:.0f} ns"


def fmt_ratio(ratio: float, q: tuple[float, float] | None = None) -> str:
    """``1.02× [0.99–1.05]``: a ratio with its interquartile range."""
    if q is None:
        return f"{ratio:.2f}×"
    return f"{ratio:.2f}× [{q[0]:.2f}–{q[1]:.2f}]"


def fmt_time_iqr(median: float, q: tuple[float, float]) -> str:
    """``1.2 ms [1.1 ms–1.3 ms]``: a median time with its interquartile range."""
    return f"{fmt_time(median)} [{fmt_time(q[0])}–{fmt_time(q[1])}]"
