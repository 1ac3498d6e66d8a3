"""``python -m torch_manual_bp train | compare | parity`` (also installed as ``torch-manual-bp``).

    train     train the lecture's network (bundled breast-cancer data, or --data FILE.csv)
    compare   GD, SGD, Momentum and Adam from the same initial weights: a table and a plot
    parity    the self-test against PyTorch (``torch_manual_bp.selftest``)

Errors in the user's input (options, files, data) print ONE line and exit with status 2;
a diverged run exits with status 1. No traceback for either.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

__all__ = ["build_parser", "main"]

PROG = "torch-manual-bp"
EXIT_DIVERGED = 1
EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line (no usage block), exit status 2."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _number(convert, valid, what: str, what_valid: str | None = None):
    """An argparse ``type`` that converts with ``convert`` and accepts values where
    ``valid(value)``; the error says what was expected (``what``, or ``what_valid`` once the
    text did convert) and repeats the text given."""

    def parse(text: str):
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not valid(value):
            raise argparse.ArgumentTypeError(f"expected {what_valid or what}, got {text!r}")
        return value

    return parse


_positive_int = _number(int, lambda v: v >= 1, "a positive integer")
_nonnegative_int = _number(int, lambda v: v >= 0, "an integer >= 0")
_positive_float = _number(
    float, lambda v: 0.0 < v < float("inf"), "a positive number", "a positive finite number"
)


def _learning_rate(text: str) -> float:
    """A positive α the float32 weights can hold (``torch_manual_bp.train.MAX_LR``)."""
    from .train import MAX_LR

    value = _positive_float(text)
    if value > MAX_LR:
        raise argparse.ArgumentTypeError(
            f"expected a learning rate at most {MAX_LR:.6g} (float32's largest), got {text!r}"
        )
    return value


def _widths(text: str) -> list[int]:
    """``16`` or ``32,16``: hidden layer widths."""
    return [_positive_int(w) for w in text.split(",") if w.strip()] or [_positive_int(text)]


def _add_model_options(p: argparse.ArgumentParser) -> None:
    from .train import TrainConfig

    d = TrainConfig()
    p.add_argument(
        "--hidden",
        type=_widths,
        nargs="+",
        default=[d.hidden],
        metavar="WIDTH",
        help="hidden layer widths, e.g. --hidden 32 16 (default: 16)",
    )
    p.add_argument(
        "--epochs",
        type=_nonnegative_int,
        default=d.epochs,
        help=f"passes over the training split (default: {d.epochs})",
    )
    p.add_argument(
        "--seed",
        type=int,
        default=d.seed,
        help="seed of the split, the initial weights and the shuffling (default: 0)",
    )
    p.add_argument(
        "--device",
        choices=["auto", "cpu", "cuda"],
        default=d.device,
        help="auto = cuda when available (default: auto)",
    )
    p.add_argument(
        "--logdir",
        default=d.logdir,
        help="TensorBoard root; each run is <logdir>/<run-name>; '' = no logs (default: runs)",
    )
    p.add_argument(
        "--data",
        metavar="FILE.csv",
        help="your own numeric CSV with a header row (default: breast cancer)",
    )
    p.add_argument(
        "--target",
        metavar="COLUMN",
        help="the CSV's label column; it must hold two distinct values",
    )
    p.add_argument(
        "--val-fraction",
        type=float,
        default=d.val_fraction,
        help="share of rows held out, stratified (default: 0.2)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _add_train_options(p: argparse.ArgumentParser) -> None:
    from .train import DEFAULT_LR, OPTIMIZERS

    lrs = ", ".join(f"{k} {v:g}" for k, v in DEFAULT_LR.items())
    p.add_argument(
        "--optimizer",
        choices=OPTIMIZERS,
        default="adam",
        help="gd = full batch, sgd = one example per step (default: adam)",
    )
    p.add_argument("--lr", type=_learning_rate, help=f"learning rate α (default: {lrs})")
    p.add_argument(
        "--batch-size",
        type=_positive_int,
        help="examples per step m_B (default: all for gd, 1 for sgd, else 32)",
    )
    _add_model_options(p)
    p.add_argument("--run-name", help="the run's directory name (default: <optimizer>-<time>)")
    p.add_argument(
        "--checkpoint",
        metavar="PATH",
        help="write a checkpoint here at the end of every epoch (atomically)",
    )
    p.add_argument(
        "--resume", metavar="PATH", help="continue from a checkpoint (same settings, more --epochs)"
    )
    p.add_argument(
        "--relu-grad-at-zero",
        type=int,
        choices=[0, 1],
        default=1,
        help="ReLU derivative at Z = 0: 1 = the lecture's 1{Z>=0}, 0 = PyTorch's",
    )
    p.add_argument("--max-steps", type=_positive_int, help="stop after this many steps")
    p.add_argument(
        "--check-parity-every",
        type=_nonnegative_int,
        default=0,
        metavar="N",
        help="every N steps compare the gradients with the to_torch() twin",
    )
    p.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the model and the optimizer step (fullgraph)",
    )
    p.add_argument("--compile-backend", default="inductor", help=argparse.SUPPRESS)
    p.add_argument(
        "--amp",
        action="store_true",
        help="mixed precision: bfloat16 autocast on CPU, float16 + GradScaler on CUDA",
    )
    p.add_argument(
        "--amp-dtype",
        choices=["bfloat16", "float16"],
        help="override the autocast dtype chosen by --amp",
    )


_TRAIN_EXAMPLES = """examples:
  torch-manual-bp train                                   # Adam, breast-cancer data, runs/
  torch-manual-bp train --optimizer sgd --lr 0.05 --epochs 5 --check-parity-every 100
  torch-manual-bp train --data mine.csv --target label --hidden 32 16
  torch-manual-bp train --checkpoint ck.pt --epochs 10    # killed? then:
  torch-manual-bp train --resume ck.pt --checkpoint ck.pt --epochs 30
  torch-manual-bp train --compile --amp
  torchrun --standalone --nproc-per-node 2 -m torch_manual_bp train --device cpu

exit status: 0 done, 1 the loss diverged (NaN/inf), 2 bad input (one line on stderr)"""


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG,
        description="The lecture's backpropagation and optimizers, trained and checked "
        "against PyTorch.",
    )
    sub = parser.add_subparsers(
        dest="command", metavar="{train,compare,parity}", parser_class=_Parser
    )
    train = sub.add_parser(
        "train",
        help="train the lecture's network, log to TensorBoard",
        description="Train the lecture's network and log it to TensorBoard.",
        epilog=_TRAIN_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_train_options(train)
    from . import compare

    cmp = sub.add_parser(
        "compare",
        help="GD vs SGD vs Momentum vs Adam: table and plot",
        description=compare.__doc__.split("\n\n")[0],
    )
    _add_model_options(cmp)
    compare.configure_parser(cmp)
    sub.add_parser("parity", help="self-test against PyTorch (see parity --help)", add_help=False)
    return parser


def _config_from_args(args: argparse.Namespace):
    from .train import TrainConfig

    hidden = [w for group in args.hidden for w in group]
    return TrainConfig(
        optimizer=args.optimizer,
        lr=args.lr,
        batch_size=args.batch_size,
        epochs=args.epochs,
        hidden=hidden,
        seed=args.seed,
        device=args.device,
        logdir=args.logdir or None,  # --logdir "": no TensorBoard
        run_name=args.run_name,
        data=args.data,
        target=args.target,
        val_fraction=args.val_fraction,
        checkpoint=args.checkpoint,
        resume=args.resume,
        max_steps=args.max_steps,
        check_parity_every=args.check_parity_every,
        compile=args.compile,
        compile_backend=args.compile_backend,
        amp=args.amp or args.amp_dtype is not None,
        amp_dtype=args.amp_dtype,
        relu_grad_at_zero=args.relu_grad_at_zero,
        progress=not args.no_progress,
    )


def _plural(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _percent(x: float) -> str:
    return f"{100 * x:.2f}%"


def format_summary(result) -> str:
    """The end-of-run summary the ``train`` command prints."""
    cfg = result.config
    lines = [
        f"Trained MLP {[*_sizes(result)]} with {cfg.optimizer} (lr {cfg.lr:g}, batch "
        f"{cfg.batch_size}) for {_plural(result.epochs, 'epoch')}, "
        f"{_plural(result.steps, 'step')}, {result.seconds:.1f} s on {result.device}"
        + (f" x {result.world_size} processes" if result.world_size > 1 else ""),
        f"  train  loss {result.train_loss:.4f}  accuracy {_percent(result.train_accuracy)}",
        f"  val    loss {result.val_loss:.4f}  accuracy {_percent(result.val_accuracy)}",
    ]
    if result.parity_checks:
        verdict = "FAILED" if result.parity_failures else "ok"
        lines.append(
            f"  parity {result.parity_checks} checks, max |grad diff| "
            f"{result.parity_max_diff:.2e}: {verdict}"
        )
    if result.run_dir:
        lines.append(f"  logs   {result.run_dir}  (view: tensorboard --logdir {cfg.logdir})")
    if result.checkpoint:
        lines.append(f"  checkpoint  {result.checkpoint}")
    return "\n".join(lines)


def _sizes(result) -> list[int]:
    sd = result.state_dict
    ws = [v for k, v in sd.items() if k.endswith("weight")]
    return [ws[0].shape[1], *(w.shape[0] for w in ws)] if ws else []


def _is_rank0() -> bool:
    return os.environ.get("RANK", "0") == "0"


def _fail(message: str, status: int) -> int:
    if _is_rank0():
        print(f"{PROG}: error: {message}", file=sys.stderr)
    return status


def _run_train(args: argparse.Namespace) -> int:
    from .train import train

    result = train(_config_from_args(args))
    if result.rank == 0:
        print(format_summary(result))
    return 0


def _run_parity(argv: Sequence[str]) -> int:
    try:
        from . import selftest
    except Exception as err:  # missing or broken: `train` must not suffer from it
        return _fail(f"the parity self-test is unavailable ({type(err).__name__}: {err})", 2)
    parser = _Parser(prog=f"{PROG} parity", description=(selftest.__doc__ or "").strip())
    selftest.configure_parser(parser)
    return int(selftest.run(parser.parse_args(list(argv))))


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status (0 ok, 1 diverged, 2 bad input)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "parity":
        return _run_parity(argv[1:])
    args = build_parser().parse_args(argv)
    if args.command is None:
        build_parser().print_help()
        return EXIT_USAGE
    from .data import DataError
    from .train import ConfigError, Diverged

    try:
        if args.command == "train":
            return _run_train(args)
        from . import compare

        return compare.run(args)
    except (ConfigError, DataError) as err:
        return _fail(str(err), EXIT_USAGE)
    except Diverged as err:
        kept = err.checkpoint  # written by THIS run, not merely a file left by an earlier one
        err_text = f"{err} The last good checkpoint is kept: {kept}" if kept else str(err)
        return _fail(err_text, EXIT_DIVERGED)
    except KeyboardInterrupt:
        return _fail("interrupted", 130)
    except BrokenPipeError:  # e.g. `... | head`: the reader left; not an error of ours
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115  (keeps the exit-time flush quiet)
        return 0


if __name__ == "__main__":
    sys.exit(main())
