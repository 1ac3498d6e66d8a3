"""GD, SGD, Momentum and Adam on the same network, from the same initial weights, on the same data.

Each optimizer trains for the same number of steps (one step = one update) and is its own
TensorBoard run, ``<logdir>/<run-name>/<optimizer>``. After every step the loss J(w(t)) over
the WHOLE training split is recorded, so that the curves compare the objective itself, not
the noisy batch losses. Then a table (final loss and accuracy, steps to reach the target
loss) is printed and a PNG plot of J against the step is written.

What it shows is the lecture's point: SGD (m_B = 1) follows a noisy estimate of ∇J and
oscillates; Momentum averages the recent gradients, m ← βm + (1 − β)(−∇J), and smooths the
path; Adam divides by √ŝ, so every weight moves at a similar rate whatever its gradient's
scale.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import time
from dataclasses import dataclass

from .train import OPTIMIZERS, TrainConfig, TrainResult, train

__all__ = ["COMPARE_LR", "CompareResult", "compare", "configure_parser", "format_table", "run"]

# Learning rates for the comparison. SGD and Momentum share α: the lecture's momentum
# averages the gradient (m is a weighted MEAN of −∇J), so with the same α it moves at the
# same speed as SGD and the difference in the plot is the noise alone.
COMPARE_LR = {"gd": 0.5, "sgd": 0.05, "momentum": 0.05, "adam": 0.005}


@dataclass
class CompareResult:
    results: dict[str, TrainResult]
    target_loss: float
    group_dir: str | None
    plot: str | None

    def steps_to_target(self, name: str) -> int | None:
        """The first step t with J(w(t)) ≤ target on the training split, or None."""
        for t, loss in self.results[name].full_loss:
            if loss <= self.target_loss:
                return t
        return None


def configure_parser(p: argparse.ArgumentParser) -> None:
    """The ``compare`` options (besides the model and data ones shared with ``train``)."""
    p.add_argument("--steps", type=int, default=400, help="updates per optimizer (default: 400)")
    p.add_argument(
        "--batch-size",
        type=int,
        default=1,
        help="m_B for sgd, momentum and adam; gd always uses all rows (default: 1)",
    )
    p.add_argument(
        "--lr",
        nargs="+",
        default=[],
        metavar="NAME=VALUE",
        help="learning rates, e.g. --lr adam=0.005 sgd=0.02 (default: "
        + ", ".join(f"{k}={v:g}" for k, v in COMPARE_LR.items())
        + ")",
    )
    p.add_argument(
        "--optimizers",
        nargs="+",
        choices=OPTIMIZERS,
        default=list(OPTIMIZERS),
        help="which to compare (default: all four)",
    )
    p.add_argument(
        "--target-loss",
        type=float,
        default=0.1,
        help="report the steps each needs to reach this J (default: 0.1)",
    )
    p.add_argument(
        "--run-name", help="the group directory under --logdir (default: compare-<time>)"
    )
    p.add_argument(
        "--plot",
        metavar="PNG",
        help="where to write the plot (default: <logdir>/<run-name>/compare.png)",
    )


def _parse_lrs(items: list[str]) -> dict[str, float]:
    from .train import ConfigError

    lrs = dict(COMPARE_LR)
    for item in items:
        name, sep, value = item.partition("=")
        try:
            lr = float(value)
        except ValueError:
            lr = float("nan")
        if not sep or name not in OPTIMIZERS or not (0.0 < lr < math.inf):
            raise ConfigError(
                f"--lr {item!r}: expected NAME=VALUE with NAME in {OPTIMIZERS} and VALUE > 0"
            )
        lrs[name] = lr
    return lrs


def compare(
    base: TrainConfig,
    *,
    optimizers: tuple[str, ...] | list[str] = OPTIMIZERS,
    steps: int = 400,
    batch_size: int = 1,
    lrs: dict[str, float] | None = None,
    target_loss: float = 0.1,
    plot: str | None = None,
) -> CompareResult:
    """Train each optimizer for ``steps`` updates from ``base``'s seed; returns the results.

    ``base.logdir/base.run_name`` becomes the group directory of the four runs.
    """
    from .train import ConfigError

    if steps < 1 or batch_size < 1:
        raise ConfigError(f"--steps and --batch-size must be >= 1, got {steps}, {batch_size}")
    lrs = {**COMPARE_LR, **(lrs or {})}
    group_dir = None
    if base.logdir is not None:
        group = base.run_name or f"compare-{time.strftime('%Y%m%d-%H%M%S')}"
        group_dir = os.path.join(base.logdir, group)
    results = {}
    for name in optimizers:
        cfg = dataclasses.replace(
            base,
            optimizer=name,
            lr=lrs[name],
            batch_size=None if name == "gd" else batch_size,
            epochs=10**9,  # bounded by max_steps
            max_steps=steps,
            track_full_loss=True,
            logdir=group_dir,
            run_name=name,
            checkpoint=None,
            resume=None,
        )
        results[name] = train(cfg)
    if plot is None and group_dir is not None:
        plot = os.path.join(group_dir, "compare.png")
    out = CompareResult(results, target_loss, group_dir, plot)
    if plot is not None:
        write_plot(out, plot)
    return out


def format_table(out: CompareResult) -> str:
    """A markdown table: one row per optimizer."""
    rows = [
        f"| optimizer | lr | m_B | steps | final train J | train acc | val J | val acc "
        f"| steps to J ≤ {out.target_loss:g} | seconds |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in out.results.items():
        reached = out.steps_to_target(name)
        rows.append(
            f"| {name} | {r.config.lr:g} | {r.config.batch_size} | {r.steps} "
            f"| {r.train_loss:.4f} | {100 * r.train_accuracy:.2f}% | {r.val_loss:.4f} "
            f"| {100 * r.val_accuracy:.2f}% | {'—' if reached is None else reached} "
            f"| {r.seconds:.1f} |"
        )
    return "\n".join(rows)


def write_plot(out: CompareResult, path: str) -> None:
    """J over the training split against the step, one line per optimizer, log scale."""
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=120)
    for name, r in out.results.items():
        steps, losses = zip(*r.full_loss, strict=True)
        label = f"{name} (α={r.config.lr:g}, m_B={r.config.batch_size})"
        ax.plot(steps, losses, label=label, linewidth=1.4)
    ax.axhline(out.target_loss, color="grey", linestyle=":", linewidth=1, label="target J")
    ax.set_yscale("log")
    ax.set_xlabel("step t (one update)")
    ax.set_ylabel("J(w(t)) on the training split")
    ax.set_title("Same network, same initial weights: GD, SGD, Momentum, Adam")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def run(args: argparse.Namespace) -> int:
    """The ``compare`` subcommand."""
    base = TrainConfig(
        hidden=[w for group in args.hidden for w in group],
        seed=args.seed,
        device=args.device,
        logdir=args.logdir or None,  # --logdir "": no TensorBoard
        run_name=args.run_name,
        data=args.data,
        target=args.target,
        val_fraction=args.val_fraction,
        progress=not args.no_progress,
        histograms=False,
    )
    out = compare(
        base,
        optimizers=args.optimizers,
        steps=args.steps,
        batch_size=args.batch_size,
        lrs=_parse_lrs(args.lr),
        target_loss=args.target_loss,
        plot=args.plot,
    )
    print(format_table(out))
    if out.group_dir:
        print(f"\nTensorBoard runs: {out.group_dir}  (view: tensorboard --logdir {out.group_dir})")
    if out.plot:
        print(f"Plot: {out.plot}")
    return 0
