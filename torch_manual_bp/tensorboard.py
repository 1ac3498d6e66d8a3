"""TensorBoard logging for any training loop: loss, gradients, and the optimizer's own m̂, ŝ.

``TrainingLogger`` writes one run directory and nothing beside it (hparams included, which
``SummaryWriter.add_hparams`` would put in a sub-directory). Tags, per step ``t``:

    train/loss                     the batch loss J(w(t))
    lr                             α of the first parameter group
    grad_norm/<layer>              ‖∇J‖₂ over the layer's parameters
    optim/m_hat_norm/<layer>       ‖m̂(t)‖₂              m̂ = m / (1 − β₁ᵗ)
    optim/s_hat_mean/<layer>       mean of ŝ(t)          ŝ = s / (1 − β₂ᵗ)     (Adam)
    optim/update_norm/<layer>      ‖Δw‖₂ of the step the rule takes:
                                       Adam      Δw = α m̂ / (√ŝ + ε)
                                       Momentum  Δw = α m̂   (m̂ = m without bias correction)
                                       SGD       Δw = −α g
    weights/<param>, grads/<param>, optim/m_hat/<param>, ... histograms (when asked)

The optimizer quantities are read from the state the lecture's optimizers keep
(``torch_manual_bp.optim``: ``m`` = the average of the NEGATIVE gradient, ``s``, ``step``);
``torch.optim.Adam``/``AdamW`` (``exp_avg`` = −m) and ``torch.optim.SGD`` are understood too.
The update excludes weight decay (it is the rule's own step).

``<layer>`` is the module that owns the parameter; the MLP's ``Sequential`` children 0, 1, ...
are named ``layer1``, ``layer2``, ... as the lecture numbers W[1], W[2], ...

Example:
    >>> with TrainingLogger("runs/demo") as tb:
    ...     for t, (x, y) in enumerate(batches):
    ...         loss = sigmoid_bce(net(x).squeeze(-1), y)
    ...         opt.zero_grad(); loss.backward(); opt.step()
    ...         tb.log_step(t, net, opt, loss)

Only this module (of the logging side) needs the ``tensorboard`` package.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import torch
from torch import nn

from .optim import adam_step_direction, momentum_step_direction

__all__ = ["TrainingLogger", "layer_name", "optimizer_quantities", "read_hparams", "read_scalars"]


def layer_name(param_name: str) -> str:
    """The layer owning a parameter: ``"0.weight"`` → ``"layer1"``, ``"fc.bias"`` → ``"fc"``."""
    owner = param_name.rsplit(".", 1)[0] if "." in param_name else param_name
    owner = owner.removeprefix("module.").removeprefix("_orig_mod.")  # DDP / compile wrappers
    return f"layer{int(owner) + 1}" if owner.isdigit() else owner


def _clean_param_name(name: str) -> str:
    for prefix in ("module.", "_orig_mod."):
        name = name.removeprefix(prefix)
    return name


def _bias_correction(beta: float, t: float) -> float:
    return 1.0 - beta**t


def _adam_like(p: torch.Tensor, state: Mapping, group: Mapping) -> dict[str, torch.Tensor]:
    """m̂, ŝ and Δw = α m̂ / (√ŝ + ε) from an Adam state (ours, or torch's).

    Ours: Δw is ``lr * adam_step_direction(...)``, the optimizer's own step (0 where ŝ = 0
    and ε = 0). torch's: its formula, which gives NaN there, as its step does.
    """
    beta1, beta2 = group["betas"]
    t = float(state["step"])
    if "m" in state:  # the lecture's m: average of −∇J
        m = state["m"]
        s = state["s_max"] if group.get("amsgrad") and "s_max" in state else state["s"]
        direction = adam_step_direction(m, s, state["step"], (beta1, beta2), group["eps"])
    else:  # torch.optim.Adam: exp_avg = average of +∇J = −m
        m = -state["exp_avg"]
        s = state["max_exp_avg_sq"] if group.get("amsgrad") else state["exp_avg_sq"]
        direction = None
    m_hat = m / _bias_correction(beta1, t)
    s_hat = s / _bias_correction(beta2, t)
    if direction is None:
        direction = m_hat / (s_hat.sqrt() + group["eps"])
    return {"m_hat": m_hat, "s_hat": s_hat, "update": float(group["lr"]) * direction}


def _momentum_like(p: torch.Tensor, state: Mapping, group: Mapping) -> dict[str, torch.Tensor]:
    """m̂ and Δw = α m̂ from a Momentum state (ours: m; torch SGD: momentum_buffer b)."""
    lr, beta = float(group["lr"]), float(group.get("momentum", 0.0))
    if "m" in state:  # the lecture's m = −(1 − β) b
        bias_correction = bool(group.get("bias_correction"))
        m_hat = momentum_step_direction(state["m"], state["step"], beta, bias_correction)
        return {"m_hat": m_hat, "update": lr * m_hat}
    b = state.get("momentum_buffer")
    if b is None:  # plain SGD: Δw = −α g
        return {"update": -lr * p.grad} if p.grad is not None else {}
    # torch SGD: w ← w − lr b; b = −m / (1 − β) in the lecture's terms
    return {"m_hat": -(1.0 - beta) * b, "update": -lr * b}


def optimizer_quantities(
    optimizer: torch.optim.Optimizer, named_params: Mapping[str, torch.Tensor]
) -> dict[str, dict[str, torch.Tensor]]:
    """Per parameter name: the tensors m̂, ŝ (Adam) and ``update`` = Δw of the rule's step.

    Reads the optimizer's state after ``step()``; parameters without state are left out.
    """
    group_of = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    out: dict[str, dict[str, torch.Tensor]] = {}
    with torch.no_grad():
        for name, p in named_params.items():
            group, state = group_of.get(id(p)), optimizer.state.get(p, {})
            if group is None:
                continue
            if "betas" in group and ("s" in state or "exp_avg_sq" in state):
                q = _adam_like(p, state, group)
            elif "betas" not in group and (state or p.grad is not None):
                q = _momentum_like(p, state, group)
            else:
                continue
            if q:
                out[_clean_param_name(name)] = q
    return out


def _group_by_layer(per_param: Mapping[str, torch.Tensor]) -> dict[str, list[torch.Tensor]]:
    layers: dict[str, list[torch.Tensor]] = {}
    for name, t in per_param.items():
        layers.setdefault(layer_name(name), []).append(t)
    return layers


def _norm(ts: list[torch.Tensor]) -> torch.Tensor:
    """‖(t₁, t₂, ...)‖₂ as a 0-dim float32 tensor on the tensors' device (no host sync)."""
    return torch.stack([torch.linalg.vector_norm(t.detach().float()) for t in ts]).norm()


def _mean(ts: list[torch.Tensor]) -> torch.Tensor:
    """The mean over all elements of t₁, t₂, ..., as a 0-dim tensor."""
    total = torch.stack([t.detach().float().sum() for t in ts]).sum()
    return total / max(1, sum(t.numel() for t in ts))


def _to_floats(scalars: Mapping[str, torch.Tensor | float]) -> dict[str, float]:
    """Tensors become floats with ONE device-to-host copy per device, not one per scalar."""
    out = {k: float(v) for k, v in scalars.items() if not isinstance(v, torch.Tensor)}
    by_device: dict[torch.device, list[str]] = {}
    for k, v in scalars.items():
        if isinstance(v, torch.Tensor):
            by_device.setdefault(v.device, []).append(k)
    for tags in by_device.values():
        values = torch.stack([scalars[k].detach().float().reshape(()) for k in tags]).tolist()
        out.update(zip(tags, values, strict=True))
    return {k: out[k] for k in scalars}


class TrainingLogger:
    """One TensorBoard run directory: ``log_step`` after each optimizer step, then ``close``.

    Args:
        log_dir: the run's directory (created; nothing is written beside it).
        purge_step: on a resumed run, the step to continue from; events at or after it
            from the interrupted run are hidden by TensorBoard.
        flush_secs: how often events reach the disk.
    """

    def __init__(
        self, log_dir: str | os.PathLike, *, purge_step: int | None = None, flush_secs: int = 10
    ) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.log_dir = os.fspath(log_dir)
        self.writer = SummaryWriter(
            log_dir=self.log_dir, purge_step=purge_step, flush_secs=flush_secs
        )

    # -- per step ------------------------------------------------------------------------
    def log_step(
        self,
        step: int,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None = None,
        loss: torch.Tensor | float | None = None,
        *,
        histograms: bool = False,
    ) -> None:
        """Log ``train/loss``, ``lr``, ``grad_norm/<layer>`` and the optimizer's m̂, ŝ, Δw.

        Call it after ``optimizer.step()`` and before ``zero_grad()`` (the gradients are
        read from ``.grad``). ``histograms=True`` adds the per-parameter histograms.
        """
        scalars: dict[str, torch.Tensor | float] = {}
        if loss is not None:
            scalars["train/loss"] = loss.detach() if isinstance(loss, torch.Tensor) else loss
        if optimizer is not None:
            scalars["lr"] = optimizer.param_groups[0]["lr"]
        named = dict(model.named_parameters())
        grads = {n: p.grad for n, p in named.items() if p.grad is not None}
        for layer, gs in _group_by_layer(grads).items():
            scalars[f"grad_norm/{layer}"] = _norm(gs)
        if optimizer is not None:
            scalars.update(self._optimizer_scalars(step, optimizer, named, histograms))
        self.log_scalars(step, _to_floats(scalars))
        if histograms:
            self.log_histograms(step, model)

    def _optimizer_scalars(self, step: int, optimizer, named, histograms: bool) -> dict:
        quantities = optimizer_quantities(optimizer, named)
        scalars = {}
        for key, reduce, tag in (
            ("m_hat", _norm, "m_hat_norm"),
            ("s_hat", _mean, "s_hat_mean"),
            ("update", _norm, "update_norm"),
        ):
            per_param = {n: q[key] for n, q in quantities.items() if key in q}
            for layer, ts in _group_by_layer(per_param).items():
                scalars[f"optim/{tag}/{layer}"] = reduce(ts)
            if histograms:
                for n, t in per_param.items():
                    self.writer.add_histogram(f"optim/{key}/{n}", t.detach().float().cpu(), step)
        return scalars

    def log_histograms(self, step: int, model: nn.Module) -> None:
        """Histograms ``weights/<param>`` and ``grads/<param>`` of every parameter."""
        for name, p in model.named_parameters():
            name = _clean_param_name(name)
            self.writer.add_histogram(f"weights/{name}", p.detach().float().cpu(), step)
            if p.grad is not None:
                self.writer.add_histogram(f"grads/{name}", p.grad.detach().float().cpu(), step)

    def log_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
        """Any scalars, e.g. ``{"val/loss": 0.1, "val/accuracy": 0.97}``."""
        for tag, value in scalars.items():
            self.writer.add_scalar(tag, float(value), step)

    # -- per run -------------------------------------------------------------------------
    def log_hparams(
        self, hparams: Mapping[str, object], metrics: Mapping[str, float], step: int = 0
    ) -> None:
        """The run's hyperparameters and final metrics, in THIS run's directory.

        The metric values are also written as scalars under their own tags (TensorBoard's
        HParams tab reads them from there). Values that are not bool/int/float/str are
        written as their ``str``.
        """
        from torch.utils.tensorboard.summary import hparams as hparams_summary

        clean = {
            k: v if isinstance(v, (bool, int, float, str)) else str(v) for k, v in hparams.items()
        }
        for summary in hparams_summary(clean, dict(metrics)):
            self.writer.file_writer.add_summary(summary)
        self.log_scalars(step, metrics)

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()

    def __enter__(self) -> TrainingLogger:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# --------------------------------------------------------------------------------------
# Reading a run back (tests, notebooks)
# --------------------------------------------------------------------------------------


def _accumulator(run_dir: str | os.PathLike):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(os.fspath(run_dir), size_guidance={"scalars": 0, "histograms": 0})
    acc.Reload()
    return acc


def read_scalars(run_dir: str | os.PathLike) -> dict[str, list[tuple[int, float]]]:
    """Every scalar of a run directory: ``{tag: [(step, value), ...]}`` in step order."""
    acc = _accumulator(run_dir)
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def read_hparams(run_dir: str | os.PathLike) -> tuple[dict[str, object], list[str]]:
    """(hyperparameters, metric tags) written by ``TrainingLogger.log_hparams``."""
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

    content = _accumulator(run_dir).PluginTagToContent("hparams")
    start = HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    experiment = HParamsPluginData.FromString(content["_hparams_/experiment"])
    hparams = {}
    for key, value in start.session_start_info.hparams.items():
        kind = value.WhichOneof("kind")
        hparams[key] = getattr(value, kind)
    metrics = [m.name.tag for m in experiment.experiment.metric_infos]
    return hparams, metrics
