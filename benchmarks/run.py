"""Run every benchmark, print ratio tables against PyTorch, write docs/benchmarks.md.

    python benchmarks/run.py            # full: about 3–5 minutes on 2 cores
    python benchmarks/run.py --quick    # about 1 minute: fewer rounds, compiled at small only
    python -m benchmarks.run --threads 1 --out /tmp/bench.md

Sections: MLP forward+backward (eager, compiled), bytes saved for backward, the optimizer
step (``benchmarks/bench_optim.py``), one epoch of the training command's model and data.
Timings are interleaved (``benchmarks/timing.py``): ratios are medians of per-round ratios,
with their interquartile range. Nothing here is a test: no figure fails anything.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # python benchmarks/run.py
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch

from benchmarks import bench_mlp

ROOT = Path(__file__).resolve().parent.parent
NOTES = Path(__file__).resolve().parent / "NOTES.md"

# The targets: ours ÷ torch.
FWD_BWD_TARGETS = {"small": 1.3, "medium": 1.05, "large": 1.05}
SAVED_BYTES_TARGET = 1.0
OPTIM_TARGET = 1.05


# --------------------------------------------------------------------------------------
# The machine
# --------------------------------------------------------------------------------------


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def machine() -> dict[str, str]:
    """What the figures depend on: CPU, cores, threads, torch build, GPU."""
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        usable = os.cpu_count() or 0
    info = {
        "CPU": _cpu_model(),
        "cores": f"{os.cpu_count()} logical, {usable} usable by this process",
        "torch": f"{torch.__version__} (CPU capability {torch.backends.cpu.get_cpu_capability()}"
        f", MKL {'yes' if torch.backends.mkl.is_available() else 'no'})",
        "torch threads": str(torch.get_num_threads()),
        "Python": platform.python_version(),
        "OS": platform.platform(),
        "GPU": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none used",
        "commit": _git_commit(),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }
    with contextlib.suppress(OSError):
        load = os.getloadavg()
        info["load average at start"] = ", ".join(f"{x:.2f}" for x in load)
    return info


# --------------------------------------------------------------------------------------
# Sections
# --------------------------------------------------------------------------------------


def _generic_table(rows: list[dict]) -> str:
    keys = list(dict.fromkeys(k for r in rows for k in r))
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for r in rows:
        cells = []
        for k in keys:
            v = r.get(k, "")
            cells.append(f"{v:.4g}" if isinstance(v, float) else str(v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _optim_target_line(rows: list) -> str:
    """The issue's optimizer target, read off the multi-tensor rows (if the rows say)."""
    hits = [
        r
        for r in rows
        if isinstance(r, dict) and "multi-tensor" in str(r.get("case", "")) and "ratio" in r
    ]
    if not hits:
        return ""
    verdicts = ", ".join(
        f"{r['case'].split(' vs ')[0]} {r['ratio']:.2f}× "
        + ("✓" if r["ratio"] <= OPTIM_TARGET else "✗")
        for r in hits
    )
    return f"\n\nTarget: multi-tensor path ≤ {OPTIM_TARGET}× torch foreach: {verdicts}."


def optim_section(quick: bool, device: str, raw: dict | None = None) -> str:
    """The optimizer engineer's ``benchmarks/bench_optim.py``, however far it has got."""
    try:
        from benchmarks import bench_optim
    except ImportError as e:
        return f"_Not run: benchmarks/bench_optim.py could not be imported ({e})._"
    run = getattr(bench_optim, "run", None)
    if run is None:
        return "_Not run: benchmarks/bench_optim.py has no `run(quick)`._"
    result = run(quick=quick) if device == "cpu" else run(quick=quick, device=device)
    if isinstance(result, str):
        return result
    rows = list(result)
    if raw is not None:
        raw["optim"] = rows
    for name in ("markdown", "table", "markdown_table", "format_table"):
        fmt = getattr(bench_optim, name, None)
        if callable(fmt):
            return fmt(rows) + _optim_target_line(rows)
    return _generic_table(rows) + _optim_target_line(rows)


def run_all(quick: bool, compile_: bool, device: str = "cpu") -> tuple[str, dict]:
    """All sections as markdown, plus the raw rows and each section's seconds."""
    rounds, block = (7, 0.02) if quick else (31, 0.04)
    timing = {"rounds": rounds, "min_block_s": block}
    out: list[str] = []
    raw: dict = {"section_seconds": {}}
    t_all = time.perf_counter()

    def section(title: str, make) -> None:
        t0 = time.perf_counter()
        body = make()
        raw["section_seconds"][title] = round(time.perf_counter() - t0, 1)
        text = f"## {title}\n\n{body}\n"
        print(text + f"\n({raw['section_seconds'][title]:.0f} s)\n", flush=True)
        out.append(text)

    def fwd_bwd(compiled: bool) -> str:
        sizes = bench_mlp.SIZES[:1] if (quick and compiled) else bench_mlp.SIZES
        rows = bench_mlp.bench_fwd_bwd(compiled=compiled, sizes=sizes, device=device, **timing)
        raw["fwd_bwd_compiled" if compiled else "fwd_bwd_eager"] = rows
        text = bench_mlp.fwd_bwd_table(rows, FWD_BWD_TARGETS) + "\n\n" + _FWD_BWD_LEGEND
        if compiled:
            text += (
                " Compiled: `torch.compile(lambda x, y: loss(model(x), y))` on both sides, "
                "default mode; compilation is not timed."
                + (" (`--quick`: the small size only.)" if quick else "")
            )
        return text

    def saved() -> str:
        rows = raw["saved_bytes"] = bench_mlp.bench_saved_bytes(device=device)
        return bench_mlp.saved_bytes_table(rows, SAVED_BYTES_TARGET) + "\n\n" + _SAVED_LEGEND

    def epoch() -> str:
        r = raw["epoch"] = bench_mlp.bench_epoch(**timing)
        return bench_mlp.epoch_table(r) + "\n\n" + _EPOCH_LEGEND

    section("MLP forward + backward, eager", lambda: fwd_bwd(False))
    if compile_:
        section("MLP forward + backward, torch.compile", lambda: fwd_bwd(True))
    section("Bytes saved for backward, per forward", saved)
    section("Optimizer step", lambda: optim_section(quick, device, raw))
    section("One epoch of the training command's model and data (CPU)", epoch)
    raw["seconds"] = time.perf_counter() - t_all
    return "\n".join(out), raw


_FWD_BWD_LEGEND = (
    "One call = set grads to None, forward, loss, backward. torch: `MLP.to_torch()` "
    "(nn.Linear + nn.ReLU) + `F.binary_cross_entropy_with_logits`; ours: `MLP` "
    "(`relu_grad_at_zero=1`, the lecture's mask) + `functional.sigmoid_bce`; ours/0: "
    "`relu_grad_at_zero=0` (PyTorch's mask). Same weights, same data. Times are medians over "
    "rounds [interquartile range]; ratios are medians of the per-round ratios [IQR]; "
    "fastest ÷ fastest compares each side's fastest round."
)
_EPOCH_LEGEND = (
    "One epoch = zero_grad, forward, loss, backward and an Adam step for every mini-batch of a "
    "fixed permutation of the training split; torch's side is the `to_torch()` twin, "
    "`F.binary_cross_entropy_with_logits` and `torch.optim.Adam` (defaults)."
)
_SAVED_LEGEND = (
    "Distinct storages reaching `torch.autograd.graph.saved_tensors_hooks` during one forward "
    "(model + loss), parameters excluded; the input and target are counted on both sides."
)


def render(
    body: str,
    info: dict[str, str],
    quick: bool,
    seconds: float,
    section_seconds: dict[str, float] | None = None,
) -> str:
    lines = [
        "# Benchmarks: torch_manual_bp against PyTorch's built-ins",
        "",
        "Generated by `python benchmarks/run.py" + (" --quick" if quick else "") + "` in "
        f"{seconds:.0f} s. Regenerate on a quiet machine; ratios are ours ÷ torch (below 1 "
        "is faster). Targets (issue 6): forward+backward ≤ 1.05× at medium and large, ≤ 1.3× "
        "at small; saved bytes ≤ 1.0×; optimizer multi-tensor path ≤ 1.05× torch foreach.",
        "",
        "## Machine",
        "",
        *[f"- {k}: {v}" for k, v in info.items()],
        *(
            [
                "- seconds per section: "
                + ", ".join(f"{k} {v:.0f}" for k, v in section_seconds.items())
            ]
            if section_seconds
            else []
        ),
        "",
        body,
    ]
    if NOTES.exists():
        lines += ["", NOTES.read_text().strip(), ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer rounds; compiled at small only")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile rows")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads(N) first")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda: where the MLP and "
                   "optimizer benchmarks run (the epoch stays on CPU)")  # fmt: skip
    p.add_argument("--json", type=Path, default=None, help="also write the raw rows here")
    p.add_argument(
        "--out",
        type=Path,
        default=ROOT / "docs" / "benchmarks.md",
        help="markdown file to write (default: docs/benchmarks.md)",
    )
    args = p.parse_args(argv)
    if args.threads is not None:
        if args.threads < 1:
            p.error(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    info = machine()
    print("\n".join(f"{k}: {v}" for k, v in info.items()), end="\n\n", flush=True)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        p.error(f"--device {args.device}: CUDA is not available on this machine")
    body, raw = run_all(args.quick, compile_=not args.no_compile, device=args.device)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(render(body, info, args.quick, raw["seconds"], raw["section_seconds"]))
    if args.json is not None:
        args.json.write_text(json.dumps({"machine": info, **raw}, indent=1, default=str))
    print(f"wrote {args.out} ({raw['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
