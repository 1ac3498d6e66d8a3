"""PyTorch references the tests compare against, and small helpers shared by test files."""

from __future__ import annotations

import torch
import torch.nn.functional as F

# Tolerances per dtype for results of the same math computed by different kernels.
TOL = {
    torch.float64: {"rtol": 1e-10, "atol": 1e-12},
    torch.float32: {"rtol": 1e-5, "atol": 1e-6},
    torch.bfloat16: {"rtol": 2e-2, "atol": 2e-2},
    torch.float16: {"rtol": 2e-3, "atol": 2e-3},
}


def torch_linear_relu(x, weight, bias=None, *, relu_grad_at_zero=1):
    """The reference hidden layer, differentiated by PyTorch's autograd.

    relu_grad_at_zero=0 is ``F.relu`` itself. For the lecture's 1{z >= 0}, ``torch.where``
    routes the gradient to z wherever the condition holds, z == 0 included.
    """
    z = F.linear(x, weight, bias)
    if relu_grad_at_zero == 0:
        return F.relu(z)
    return torch.where(z >= 0, z, torch.zeros_like(z))


def torch_sigmoid_bce_composite(z, y, weight=None, pos_weight=None, reduction="mean"):
    """BCE with logits written with torch ops, for gradients PyTorch's kernel doesn't give
    (``weight`` and ``pos_weight``). Agrees with ``F.binary_cross_entropy_with_logits``."""
    log_sig = F.logsigmoid(z)
    log_one_minus = F.logsigmoid(-z)
    pos = -y * log_sig if pos_weight is None else -pos_weight * y * log_sig
    J = pos - (1 - y) * log_one_minus
    if weight is not None:
        J = J * weight
    return {"mean": J.mean, "sum": J.sum, "none": lambda: J}[reduction]()


def grads(out: torch.Tensor, inputs, grad_out: torch.Tensor | None = None):
    """Gradients of <out, grad_out> with respect to ``inputs``; None where unused."""
    inputs = [t for t in inputs if t is not None]
    if grad_out is None:
        grad_out = torch.ones_like(out)
    return torch.autograd.grad(out, inputs, grad_out, allow_unused=True)


def leaf(t: torch.Tensor | None, requires_grad: bool = True) -> torch.Tensor | None:
    return None if t is None else t.detach().clone().requires_grad_(requires_grad)


def saved_bytes(fn) -> int:
    """Bytes saved for backward while running ``fn()``: unique storages, parameters excluded."""
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor):
        if not isinstance(t, torch.nn.Parameter):
            storage = t.untyped_storage()
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(seen.values())
