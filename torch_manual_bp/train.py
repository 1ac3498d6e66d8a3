"""The training loop behind ``python -m torch_manual_bp train``.

The lecture's network ``MLP([n_x, *hidden, 1])`` trained on J = sigmoid_bce(Z[L], Y) with
one of the lecture's rules:

    gd        w ← w − α ∇J          one batch = the whole training split
    sgd       w ← w − α ∇J          m_B = 1 example per step
    momentum  m ← β m + (1 − β)(−∇J),  w ← w + α m                  (β = 0.9)
    adam      m ← β₁ m − (1 − β₁)∇J,  s ← β₂ s + (1 − β₂)(∇J)²,  w ← w + α m̂/(√ŝ + ε)

(gd and sgd run ``torch.optim.SGD`` without momentum, which is the lecture's gradient
descent exactly; momentum and adam are ``torch_manual_bp.optim``.)

What the loop guarantees:

- Reproducible: the same config on the same device gives the same numbers. The split comes
  from ``seed``, the initial weights from ``torch.manual_seed(seed)``, the shuffling from
  its own ``torch.Generator`` whose state is checkpointed.
- Checkpoints are written atomically at the end of every epoch (temporary file, fsync,
  ``os.replace``) and load with ``torch.load(path, weights_only=True)``; resuming from the
  epoch-k checkpoint ends bit-identical to the uninterrupted run.
- A non-finite batch loss stops the run (``Diverged``) before the bad step is applied; an
  epoch end whose loss on the training or validation split, or any weight, is not finite
  stops it before that epoch's checkpoint is written. So the checkpoint on disk is always the
  last good epoch (``Diverged.checkpoint`` names it if this run wrote one).
- Distributed: launched by ``torchrun`` (WORLD_SIZE > 1) it trains with
  DistributedDataParallel (gloo on CPU, nccl on CUDA). Each global batch is split across the
  ranks and every rank's loss is Σ J_i · world / m_B, so that DDP's gradient average is the
  global batch's mean gradient: the same steps as one process. Only rank 0 writes logs and
  checkpoints.
- ``compile``: the model and the optimizer step each go through ``torch.compile`` with
  ``fullgraph=True``, so a graph break is an error, not a silent slowdown.
- ``amp``: autocast in bfloat16 (CPU default) or float16 with a ``GradScaler`` (CUDA
  default); the parameters and the optimizer state stay float32.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from .functional import sigmoid_bce
from .nn import MLP

if TYPE_CHECKING:  # the logger needs the [train] extra; imported where it is used
    from .tensorboard import TrainingLogger

__all__ = [
    "OPTIMIZERS",
    "ConfigError",
    "Diverged",
    "TrainConfig",
    "TrainResult",
    "compile_step",
    "load_checkpoint",
    "make_optimizer",
    "save_checkpoint",
    "train",
]

OPTIMIZERS = ("gd", "sgd", "momentum", "adam")
DEFAULT_LR = {"gd": 0.5, "sgd": 0.01, "momentum": 0.1, "adam": 0.003}
DEFAULT_BATCH_SIZE = {"sgd": 1, "momentum": 32, "adam": 32}  # gd: the whole training split
CHECKPOINT_FORMAT = 1
# The largest α the float32 weights can hold: the optimizers turn α into a float32 scalar.
MAX_LR = torch.finfo(torch.float32).max
# Largest |∇ours − ∇torch| accepted by --check-parity-every, relative to max(1, max |∇torch|).
PARITY_TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-5}
# Config fields that change the numbers: a resumed run must agree with its checkpoint on them.
_RESUME_MUST_MATCH = (
    "optimizer",
    "lr",
    "batch_size",
    "hidden",
    "seed",
    "data",
    "target",
    "val_fraction",
    "amp",
    "amp_dtype",
    "relu_grad_at_zero",
)


class ConfigError(ValueError):
    """A bad option, path or checkpoint; ``str(err)`` is one line. The command exits 2."""


class Diverged(RuntimeError):
    """The loss (or a weight) became NaN or infinite at ``step``.

    Found by a batch loss: that step was not applied. Found at an epoch end (the loss on the
    training or validation split, or a weight, is not finite): that epoch's checkpoint was not
    written. ``checkpoint``: the last checkpoint THIS run wrote, or None if it wrote none.
    """

    def __init__(
        self,
        step: int,
        loss: float,
        lr: float,
        *,
        what: str | None = None,
        consequence: str = "the step was not applied",
        checkpoint: str | None = None,
    ) -> None:
        self.step, self.loss, self.lr, self.checkpoint = step, loss, lr, checkpoint
        super().__init__(
            f"{what or f'the loss is {loss}'} at step {step}: training diverged; {consequence}. "
            f"Try a lower learning rate than --lr {lr:g} (e.g. --lr {lr / 10:g})."
        )


@dataclass
class TrainConfig:
    """Everything a run depends on; the command's options map one to one onto these fields."""

    optimizer: str = "adam"
    lr: float | None = None  # None: DEFAULT_LR[optimizer]
    batch_size: int | None = None  # None: the whole split for gd, 1 for sgd, else 32
    epochs: int = 30
    hidden: list[int] = field(default_factory=lambda: [16])
    seed: int = 0
    device: str = "auto"
    logdir: str | None = "runs"  # None: no TensorBoard
    run_name: str | None = None  # None: "<optimizer>-<date>-<time>"
    data: str | None = None  # None: the bundled breast-cancer set
    target: str | None = None
    val_fraction: float = 0.2
    checkpoint: str | None = None
    resume: str | None = None
    check_parity_every: int = 0
    compile: bool = False
    compile_backend: str = "inductor"
    amp: bool = False
    amp_dtype: str | None = None  # None: bfloat16 on CPU, float16 on CUDA
    relu_grad_at_zero: int = 1
    histograms: bool = True  # weight/gradient/optimizer histograms, ~20 epoch ends per run
    max_steps: int | None = None  # stop after this many steps (compare)
    track_full_loss: bool = False  # J over the whole training split after every step
    progress: bool = True

    def resolved(self, n_train: int) -> TrainConfig:
        """A copy with the defaults that depend on the optimizer and data filled in."""
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"unknown optimizer {self.optimizer!r}; choose one of {OPTIMIZERS}")
        lr = DEFAULT_LR[self.optimizer] if self.lr is None else self.lr
        bs = self.batch_size
        if bs is None:
            bs = n_train if self.optimizer == "gd" else DEFAULT_BATCH_SIZE[self.optimizer]
        return dataclasses.replace(self, lr=float(lr), batch_size=min(int(bs), n_train))

    def check(self) -> None:
        """Raise ``ConfigError`` naming the first bad value."""
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"unknown optimizer {self.optimizer!r}; choose one of {OPTIMIZERS}")
        if self.lr is not None and not (0.0 < self.lr <= MAX_LR):
            raise ConfigError(
                f"--lr must be a positive number at most {MAX_LR:.6g} (float32's largest), "
                f"got {self.lr!r}"
            )
        positive = {"--batch-size": self.batch_size, "--max-steps": self.max_steps}
        for flag, v in positive.items():
            if v is not None and v < 1:
                raise ConfigError(f"{flag} must be at least 1, got {v}")
        if self.epochs < 0:
            raise ConfigError(f"--epochs must be at least 0, got {self.epochs}")
        if not self.hidden or any(w < 1 for w in self.hidden):
            raise ConfigError(f"--hidden must list positive layer widths, got {self.hidden}")
        if self.check_parity_every < 0:
            raise ConfigError(f"--check-parity-every must be >= 0, got {self.check_parity_every}")
        if not (0.0 < self.val_fraction < 1.0):
            raise ConfigError(f"--val-fraction must be in (0, 1), got {self.val_fraction}")
        if (self.data is None) != (self.target is None):
            raise ConfigError("--data FILE.csv and --target COLUMN go together")
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise ConfigError(f"--device must be auto, cpu or cuda, got {self.device!r}")
        if self.amp_dtype not in (None, "bfloat16", "float16"):
            raise ConfigError(f"--amp-dtype must be bfloat16 or float16, got {self.amp_dtype!r}")
        if self.run_name is not None and (
            not self.run_name or os.sep in self.run_name or self.run_name in (".", "..")
        ):
            raise ConfigError(f"--run-name must be a plain directory name, got {self.run_name!r}")


@dataclass
class TrainResult:
    """What the run ended with (on every rank; only rank 0 wrote files)."""

    train_loss: float
    train_accuracy: float
    val_loss: float
    val_accuracy: float
    epochs: int  # epochs completed, including those before a resume
    steps: int
    seconds: float
    config: TrainConfig
    run_dir: str | None
    checkpoint: str | None  # where to write, rank 0 only
    rank: int = 0
    world_size: int = 1
    device: str = "cpu"
    history: list[tuple[int, float]] = field(default_factory=list)  # (step, batch J)
    full_loss: list[tuple[int, float]] = field(default_factory=list)  # (step, J on all train)
    parity_checks: int = 0
    parity_failures: int = 0
    parity_max_diff: float = 0.0
    state_dict: dict = field(default_factory=dict, repr=False)  # the final weights


# --------------------------------------------------------------------------------------
# Building blocks
# --------------------------------------------------------------------------------------


def make_optimizer(name: str, params, lr: float) -> torch.optim.Optimizer:
    """The update rule behind ``--optimizer`` (see the module docstring)."""
    if name in ("gd", "sgd"):  # w ← w − α ∇J: torch's SGD without momentum, exactly
        return torch.optim.SGD(params, lr=lr)
    from . import optim as mbp_optim

    if name == "momentum":
        return mbp_optim.Momentum(params, lr=lr, momentum=0.9)
    if name == "adam":
        return mbp_optim.Adam(params, lr=lr)
    raise ConfigError(f"unknown optimizer {name!r}; choose one of {OPTIMIZERS}")


def compile_step(optimizer: torch.optim.Optimizer, backend: str = "inductor") -> Callable:
    """``optimizer.step`` compiled as ONE graph (``fullgraph=True``).

    ``torch.optim.Optimizer.step`` is wrapped by torch in hook handling and, for torch's own
    optimizers, in ``_use_grad_for_differentiable``, which calls ``torch._dynamo.graph_break()``
    on purpose. We compile the unwrapped update under ``torch.no_grad()`` instead: the same
    arithmetic, with no graph break (step hooks, which this loop does not use, are skipped).
    """
    raw_step = inspect.unwrap(type(optimizer).step)

    @torch.compile(fullgraph=True, backend=backend)
    def step(closure=None):
        with torch.no_grad():
            return raw_step(optimizer)

    return step


def _resolve_device(name: str, local_rank: int) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError("--device cuda: no CUDA device is available (use --device cpu)")
        return torch.device(name if ":" in name else f"cuda:{local_rank}")
    return torch.device("cpu")


def _load_data(cfg: TrainConfig):
    from . import data

    if cfg.data is None:
        return data.load_breast_cancer(val_fraction=cfg.val_fraction, seed=cfg.seed)
    return data.load_csv(cfg.data, cfg.target, val_fraction=cfg.val_fraction, seed=cfg.seed)


def _amp_dtype(cfg: TrainConfig, device: torch.device) -> torch.dtype | None:
    if not cfg.amp:
        return None
    name = cfg.amp_dtype or ("float16" if device.type == "cuda" else "bfloat16")
    return getattr(torch, name)


def batch_loss(model, x: torch.Tensor, y: torch.Tensor, scale: float) -> torch.Tensor:
    """Σᵢ J_i / scale over the batch: the mean when scale = m_B (one process)."""
    z = model(x).squeeze(-1)  # (m_B,) logits Z[L]
    return sigmoid_bce(z, y.to(z.dtype), reduction="sum") / scale


@torch.no_grad()
def evaluate(model, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """(J, accuracy) over all of x: J = mean BCE, accuracy = share of 1{z > 0} == y."""
    z = model(x).squeeze(-1).float()
    loss = float(sigmoid_bce(z, y, reduction="mean"))
    accuracy = float(((z > 0).float() == y).float().mean())
    return loss, accuracy


def parity_check(model: MLP, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """The same batch through ``model`` and its ``to_torch()`` twin under autograd.

    Returns (max |∇ours − ∇torch| over all parameters, the tolerance for the dtype).
    Uses ``torch.autograd.grad``, so the training gradients in ``.grad`` are untouched.
    """
    twin = model.to_torch()
    ours = torch.autograd.grad(sigmoid_bce(model(x).squeeze(-1), y), list(model.parameters()))
    z_twin = twin(x).squeeze(-1)
    theirs = torch.autograd.grad(
        F.binary_cross_entropy_with_logits(z_twin, y), list(twin.parameters())
    )
    diff = max(float((a - b).abs().max()) for a, b in zip(ours, theirs, strict=True))
    scale = max(1.0, max(float(b.abs().max()) for b in theirs))
    return diff, PARITY_TOLERANCE.get(x.dtype, 1e-2) * scale


# --------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------


def save_checkpoint(path: str, state: dict) -> None:
    """Write ``state`` to ``path`` atomically: a reader sees the old file or the new one."""
    directory = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(directory, f".{os.path.basename(path)}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)  # atomic on POSIX and Windows
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def load_checkpoint(path: str, map_location: str | torch.device = "cpu") -> dict:
    """A checkpoint written by ``train``, loaded with ``weights_only=True``."""
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such checkpoint file") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a directory, expected a checkpoint file") from None
    except Exception as err:  # truncated, foreign or corrupt file
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ConfigError(f"{path}: not a readable checkpoint ({reason})") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ConfigError(f"{path}: not a torch_manual_bp training checkpoint")
    return state


def _config_record(cfg: TrainConfig) -> dict:
    """The config as plain types (what ``weights_only`` loading accepts)."""
    return {k: (list(v) if isinstance(v, list) else v) for k, v in dataclasses.asdict(cfg).items()}


def _check_resume_matches(path: str, saved: dict, cfg: TrainConfig) -> None:
    for key in _RESUME_MUST_MATCH:
        ours = getattr(cfg, key)
        if saved.get(key) != ours:
            flag = "--" + key.replace("_", "-")
            raise ConfigError(
                f"{path}: the checkpoint was trained with {flag} {saved.get(key)!r}, this run "
                f"asks for {ours!r}; resume with the same settings"
            )


# --------------------------------------------------------------------------------------
# Files: the run directory and the checkpoint's directory
# --------------------------------------------------------------------------------------


def _default_run_name(cfg: TrainConfig) -> str:
    return f"{cfg.optimizer}-{time.strftime('%Y%m%d-%H%M%S')}"


def _prepare_run_dir(cfg: TrainConfig, resuming: bool) -> str:
    logdir = cfg.logdir
    name = cfg.run_name or _default_run_name(cfg)
    run_dir = os.path.join(logdir, name)
    if cfg.run_name is None:  # an automatic name never reuses an existing directory
        k = 2
        while os.path.exists(run_dir):
            run_dir, k = os.path.join(logdir, f"{name}-{k}"), k + 1
    elif os.path.isdir(run_dir) and os.listdir(run_dir) and not resuming:
        raise ConfigError(
            f"{run_dir}: the run directory already exists; choose another --run-name "
            f"(or --resume a checkpoint to continue it)"
        )
    try:
        os.makedirs(run_dir, exist_ok=True)
        _probe_writable(run_dir)
    except OSError as err:
        raise ConfigError(f"{logdir}: cannot write the log directory ({err.strerror})") from None
    return run_dir


def _probe_writable(directory: str) -> None:
    probe = os.path.join(directory, f".write-test-{os.getpid()}")
    with open(probe, "wb"):
        pass
    os.remove(probe)


def _check_checkpoint_path(path: str) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise ConfigError(f"{path}: --checkpoint is a directory, expected a file path")
    try:
        os.makedirs(directory, exist_ok=True)
        _probe_writable(directory)
    except OSError as err:
        raise ConfigError(f"{path}: cannot write the checkpoint ({err.strerror})") from None


# --------------------------------------------------------------------------------------
# Distributed
# --------------------------------------------------------------------------------------


def _init_distributed(device_name: str) -> tuple[int, int, int]:
    """(rank, world_size, local_rank); joins the process group when torchrun started us."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, 0
    import torch.distributed as dist

    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        wants_cuda = device_name.startswith("cuda") or (
            device_name == "auto" and torch.cuda.is_available()
        )
        dist.init_process_group(backend="nccl" if wants_cuda else "gloo")
    return dist.get_rank(), dist.get_world_size(), local_rank


def _all_reduce_sum(t: torch.Tensor, world: int) -> torch.Tensor:
    if world > 1:
        import torch.distributed as dist

        t = t.clone()
        dist.all_reduce(t)
    return t


# --------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------


def train(
    config: TrainConfig, *, on_epoch: Callable[[int, dict], None] | None = None
) -> TrainResult:
    """Train as ``config`` says; see the module docstring for the guarantees.

    Raises:
        ConfigError: a bad option, path or checkpoint (one-line message).
        torch_manual_bp.data.DataError: unusable data (``FILE:LINE:COLUMN: ...``).
        Diverged: a batch loss, an epoch-end loss or a weight became non-finite (no
            checkpoint is written for that epoch; ``.checkpoint`` is the last one this run
            wrote, or None).
    """
    config.check()
    rank, world, local_rank = _init_distributed(config.device)
    try:
        return _train(config, rank, world, local_rank, on_epoch)
    finally:
        if world > 1:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()


def _train(config, rank, world, local_rank, on_epoch) -> TrainResult:
    device = _resolve_device(config.device, local_rank)
    if device.type == "cuda" and world > 1:
        torch.cuda.set_device(device)  # nccl's collectives run on the current device
    data = _load_data(config).to(device)
    cfg = config.resolved(data.x_train.shape[0])
    amp_dtype = _amp_dtype(cfg, device)
    writer_rank = rank == 0

    torch.manual_seed(cfg.seed)  # the initial weights
    model = MLP([data.n_features, *cfg.hidden, 1], relu_grad_at_zero=cfg.relu_grad_at_zero).to(
        device
    )
    optimizer = make_optimizer(cfg.optimizer, model.parameters(), cfg.lr)
    scaler = torch.amp.GradScaler(device.type) if amp_dtype == torch.float16 else None
    shuffle = torch.Generator().manual_seed(cfg.seed)  # the order of the examples
    start_epoch, step = 0, 0

    saved = None
    if cfg.resume:
        saved = load_checkpoint(cfg.resume)  # on the CPU: load_state_dict moves what it needs
        _check_resume_matches(cfg.resume, saved["config"], cfg)
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        shuffle.set_state(saved["rng"]["shuffle"].cpu())
        torch.set_rng_state(saved["rng"]["torch"].cpu())
        if scaler is not None and "scaler" in saved:
            scaler.load_state_dict(saved["scaler"])
        start_epoch, step = int(saved["epoch"]), int(saved["step"])
        if cfg.run_name is None:  # continue in the interrupted run's directory
            cfg = dataclasses.replace(cfg, run_name=saved["config"].get("run_name"))

    run_dir = checkpoint = None
    logger = None
    if writer_rank:
        if cfg.checkpoint:
            _check_checkpoint_path(cfg.checkpoint)
            checkpoint = cfg.checkpoint
        if cfg.logdir is not None:
            run_dir = _prepare_run_dir(cfg, resuming=saved is not None)
            cfg = dataclasses.replace(cfg, run_name=os.path.basename(run_dir))
            from .tensorboard import TrainingLogger

            logger = TrainingLogger(run_dir, purge_step=step if saved else None)
            if saved is not None:  # purging hid the epoch-end metrics at `step`: restore them
                logger.log_scalars(step, saved.get("metrics", {}))

    module = model  # the plain MLP: evaluation, parity checks and checkpoints use it
    net = model
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        net = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.compile:
        net = torch.compile(net, fullgraph=True, backend=cfg.compile_backend)
        optimizer.step = compile_step(optimizer, backend=cfg.compile_backend)

    state = _LoopState(
        cfg,
        rank,
        world,
        device,
        amp_dtype,
        module,
        net,
        optimizer,
        scaler,
        shuffle,
        logger,
        checkpoint,
        step,
    )
    started = time.perf_counter()
    try:
        epoch = state.run(data, start_epoch, on_epoch)
    finally:
        if logger is not None:
            logger.flush()
    seconds = time.perf_counter() - started

    with state.autocast():
        train_loss, train_acc = evaluate(module, data.x_train, data.y_train)
        val_loss, val_acc = evaluate(module, data.x_val, data.y_val)
    if logger is not None:
        logger.log_hparams(
            _hparams(cfg, world),
            {
                "hparam/train_loss": train_loss,
                "hparam/train_accuracy": train_acc,
                "hparam/val_loss": val_loss,
                "hparam/val_accuracy": val_acc,
            },
            step=state.step,
        )
        logger.close()
    return TrainResult(
        train_loss=train_loss,
        train_accuracy=train_acc,
        val_loss=val_loss,
        val_accuracy=val_acc,
        epochs=epoch,
        steps=state.step,
        seconds=seconds,
        config=cfg,
        run_dir=run_dir,
        checkpoint=checkpoint,
        rank=rank,
        world_size=world,
        device=str(device),
        history=state.history,
        full_loss=state.full_loss,
        parity_checks=state.parity_checks,
        parity_failures=state.parity_failures,
        parity_max_diff=state.parity_max_diff,
        state_dict={k: v.detach().clone() for k, v in module.state_dict().items()},
    )


def _hparams(cfg: TrainConfig, world: int) -> dict:
    return {
        "optimizer": cfg.optimizer,
        "lr": cfg.lr,
        "batch_size": cfg.batch_size,
        "hidden": ",".join(map(str, cfg.hidden)),
        "epochs": cfg.epochs,
        "seed": cfg.seed,
        "amp": cfg.amp,
        "compile": cfg.compile,
        "world_size": world,
        "data": cfg.data or "breast_cancer",
    }


@dataclass
class _LoopState:
    """The mutable parts of one run, and the epoch/step loop over them."""

    cfg: TrainConfig
    rank: int
    world: int
    device: torch.device
    amp_dtype: torch.dtype | None
    module: torch.nn.Module  # the model itself
    net: torch.nn.Module  # what the forward calls: the model, or its DDP/compiled wrapper
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler | None  # float16 autocast only
    shuffle: torch.Generator
    logger: TrainingLogger | None  # rank 0 with a logdir only
    checkpoint: str | None  # where to write, rank 0 only
    step: int
    history: list[tuple[int, float]] = field(default_factory=list)
    full_loss: list[tuple[int, float]] = field(default_factory=list)
    parity_checks: int = 0
    parity_failures: int = 0
    parity_max_diff: float = 0.0
    written: str | None = None  # the last checkpoint this run wrote

    def _diverged(self, loss: float, **how) -> Diverged:
        lr = float(self.optimizer.param_groups[0]["lr"])
        return Diverged(self.step, loss, lr, checkpoint=self.written, **how)

    def autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def _progress(self, total: int):
        from tqdm.auto import tqdm

        return tqdm(
            total=total,
            initial=min(self.step, total),
            unit="step",
            dynamic_ncols=True,
            disable=not self.cfg.progress or self.rank != 0,
            file=sys.stderr,
            desc=f"train {self.cfg.optimizer}",
        )

    def run(self, data, start_epoch: int, on_epoch) -> int:
        """The epochs from ``start_epoch`` on; returns the number of completed epochs."""
        cfg = self.cfg
        m = data.x_train.shape[0]
        steps_per_epoch = math.ceil(m / cfg.batch_size)
        total = cfg.epochs * steps_per_epoch
        if cfg.max_steps is not None:
            total = min(total, cfg.max_steps)
        epoch = start_epoch
        if cfg.track_full_loss and self.step == 0:
            self._track_full_loss(data)
        with self._progress(total) as bar:
            while epoch < cfg.epochs and (cfg.max_steps is None or self.step < cfg.max_steps):
                order = torch.randperm(m, generator=self.shuffle).to(self.device)
                for first in range(0, m, cfg.batch_size):
                    if cfg.max_steps is not None and self.step >= cfg.max_steps:
                        return epoch  # stopped inside an epoch: no epoch end, no checkpoint
                    idx = order[first : first + cfg.batch_size]
                    last = first + cfg.batch_size >= m
                    hist = last and cfg.histograms and self._histogram_epoch(epoch + 1)
                    loss = self._step(data, idx, histograms=hist)
                    bar.update(1)
                    if self.step % 10 == 0 or last:
                        bar.set_postfix(epoch=epoch + 1, loss=f"{loss:.4f}", refresh=False)
                epoch += 1
                self._end_epoch(data, epoch, on_epoch)
        return epoch

    def _histogram_epoch(self, epoch: int) -> bool:
        """Histograms are costly: about 20 sets per run, at epoch ends, and the last one."""
        every = max(1, math.ceil(self.cfg.epochs / 20))
        return epoch % every == 0 or epoch == self.cfg.epochs

    def _step(self, data, idx: torch.Tensor, histograms: bool) -> float:
        """One update on the global batch ``idx``; this rank takes every world-th example."""
        cfg, opt = self.cfg, self.optimizer
        mine = idx[self.rank :: self.world]
        x, y = data.x_train[mine], data.y_train[mine]
        if cfg.check_parity_every and self.step % cfg.check_parity_every == 0 and len(mine):
            self._parity(x, y)
        with self.autocast():
            loss = batch_loss(self.net, x, y, scale=len(idx) / self.world)
        # the global batch's mean J (each rank holds Σ_mine J_i · world / m_B)
        global_loss = float(_all_reduce_sum(loss.detach().float(), self.world)) / self.world
        if not math.isfinite(global_loss):
            raise self._diverged(global_loss)
        opt.zero_grad(set_to_none=True)
        if self.scaler is None:
            loss.backward()
            opt.step()
        else:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(opt)  # true gradients, for the step and for the logs
            self.scaler.step(opt)
            self.scaler.update()
        self.history.append((self.step, global_loss))
        if self.logger is not None:
            self.logger.log_step(self.step, self.module, opt, global_loss, histograms=histograms)
        self.step += 1
        if cfg.track_full_loss:
            self._track_full_loss(data)
        return global_loss

    def _track_full_loss(self, data) -> None:
        with self.autocast():
            loss, _ = evaluate(self.module, data.x_train, data.y_train)
        self.full_loss.append((self.step, loss))
        if self.logger is not None:
            self.logger.log_scalars(self.step, {"train/full_loss": loss})

    def _parity(self, x: torch.Tensor, y: torch.Tensor) -> None:
        diff, tol = parity_check(self.module, x, y)
        self.parity_checks += 1
        self.parity_max_diff = max(self.parity_max_diff, diff)
        if self.logger is not None:
            self.logger.log_scalars(self.step, {"parity/max_abs_grad_diff": diff})
        if not diff <= tol:
            self.parity_failures += 1
            from tqdm.auto import tqdm

            tqdm.write(
                f"PARITY CHECK FAILED at step {self.step} (rank {self.rank}): max |grad ours - "
                f"grad torch| = {diff:.3e} > tolerance {tol:.1e} for {x.dtype}",
                file=sys.stderr,
            )

    def _end_epoch(self, data, epoch: int, on_epoch) -> None:
        with self.autocast():
            train_loss, train_acc = evaluate(self.module, data.x_train, data.y_train)
            val_loss, val_acc = evaluate(self.module, data.x_val, data.y_val)
        metrics = {
            "train/epoch_loss": train_loss,
            "train/accuracy": train_acc,
            "val/loss": val_loss,
            "val/accuracy": val_acc,
            "epoch": epoch,
        }
        if self.logger is not None:
            self.logger.log_scalars(self.step, metrics)
        self._check_finite(epoch, train_loss, val_loss)
        if self.checkpoint is not None:
            save_checkpoint(self.checkpoint, self._checkpoint_state(epoch, metrics))
            self.written = self.checkpoint
        if on_epoch is not None:
            on_epoch(epoch, metrics)

    def _check_finite(self, epoch: int, train_loss: float, val_loss: float) -> None:
        """Raise ``Diverged`` (before the epoch's checkpoint) if a loss or a weight is not
        finite: the last step of the epoch was applied and blew the weights up."""
        bad = None
        for split, loss in (("training", train_loss), ("validation", val_loss)):
            if bad is None and not math.isfinite(loss):
                bad = f"the {split} loss is {loss}"
        if bad is None and not all(bool(p.isfinite().all()) for p in self.module.parameters()):
            bad = "a weight is not finite"
        if bad is not None:
            consequence = f"epoch {epoch}'s checkpoint was not written"
            raise self._diverged(train_loss, what=bad, consequence=consequence)

    def _checkpoint_state(self, epoch: int, metrics: dict) -> dict:
        state = {
            "format": CHECKPOINT_FORMAT,
            "model": self.module.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "epoch": epoch,
            "step": self.step,
            "rng": {"shuffle": self.shuffle.get_state(), "torch": torch.get_rng_state()},
            "config": _config_record(self.cfg),
            "metrics": dict(metrics),
        }
        if self.scaler is not None:
            state["scaler"] = self.scaler.state_dict()
        return state
