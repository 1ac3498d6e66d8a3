"""Modules built on the lecture's Functions, up to the lecture's L-layer network (``MLP``).

``Linear`` and ``LinearReLU`` subclass ``torch.nn.Linear``: the same initialisation, the same
parameter names (``weight``, ``bias``), the same ``state_dict``; only ``forward`` differs.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from itertools import pairwise

import torch
from torch import nn

from . import functional as mbpF
from ._validation import check_reduction, check_relu_grad_at_zero

__all__ = ["BCEWithLogitsLoss", "Linear", "LinearReLU", "MLP"]


class Linear(nn.Linear):
    """Z = x Wᵀ + b with the lecture's backward (``functional.linear``).

    A drop-in ``torch.nn.Linear``: same arguments, initialisation and parameters.

    Example:
        >>> layer = Linear(30, 1)
        >>> z = layer(torch.randn(64, 30))  # (64, 1)
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return mbpF.linear(x, self.weight, self.bias)


class LinearReLU(nn.Linear):
    """A = max(0, x Wᵀ + b): a hidden layer of the lecture's network.

    Args:
        in_features, out_features, bias, device, dtype: as ``torch.nn.Linear``.
        relu_grad_at_zero: 1 for the lecture's mask 1{Z ≥ 0} (default), 0 for PyTorch's
            1{Z > 0}. See ``functional.linear_relu``.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        relu_grad_at_zero: int = 1,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        check_relu_grad_at_zero(relu_grad_at_zero)
        super().__init__(in_features, out_features, bias, device=device, dtype=dtype)
        self.relu_grad_at_zero = int(relu_grad_at_zero)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return mbpF.linear_relu(x, self.weight, self.bias, relu_grad_at_zero=self.relu_grad_at_zero)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, relu_grad_at_zero={self.relu_grad_at_zero}"


class BCEWithLogitsLoss(nn.Module):
    """J = mean of −y log σ(z) − (1 − y) log(1 − σ(z)), with backward dJ/dz = σ(z) − y.

    Same arguments and buffers as ``torch.nn.BCEWithLogitsLoss`` (see ``functional.sigmoid_bce``
    for how "mean" relates to the lecture's 1/m).
    """

    def __init__(
        self,
        weight: torch.Tensor | None = None,
        reduction: str = "mean",
        pos_weight: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        check_reduction(reduction)
        self.reduction = reduction
        self.register_buffer("weight", weight)
        self.register_buffer("pos_weight", pos_weight)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return mbpF.sigmoid_bce(logits, target, self.weight, self.pos_weight, self.reduction)

    def extra_repr(self) -> str:
        return f"reduction={self.reduction!r}"


def _check_sizes(sizes: Sequence[int]) -> list[int]:
    sizes = list(sizes)
    if len(sizes) < 2 or any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in sizes):
        raise ValueError(
            f"sizes must list at least two positive integers [in, hidden..., out], got {sizes!r}"
        )
    return sizes


class MLP(nn.Sequential):
    """The lecture's L-layer network: L − 1 hidden ``LinearReLU`` layers, then a ``Linear``.

        A[0] = X,   A[l] = max(0, A[l-1] W[l]ᵀ + b[l])  (l < L),   Z[L] = A[L-1] W[L]ᵀ + b[L]

    The output is the logits Z[L]; the sigmoid lives in the loss (``BCEWithLogitsLoss`` /
    ``functional.sigmoid_bce``), where dJ/dZ[L] = Ŷ − Y.

    Args:
        sizes: [n_in, n_1, ..., n_out]: layer widths, L = len(sizes) − 1 layers.
        bias: whether every layer has a bias.
        relu_grad_at_zero: 1 (the lecture's 1{Z ≥ 0}) or 0 (PyTorch's 1{Z > 0}).
        device, dtype: as ``torch.nn.Linear``.

    Example:
        >>> net = MLP([30, 16, 1])          # ŷ = σ(W[2] max(0, W[1] x + b[1]) + b[2])
        >>> twin = net.to_torch()            # nn.Sequential(Linear, ReLU, Linear), same weights
    """

    def __init__(
        self,
        sizes: Sequence[int],
        bias: bool = True,
        relu_grad_at_zero: int = 1,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        sizes = _check_sizes(sizes)
        check_relu_grad_at_zero(relu_grad_at_zero)
        kw = {"bias": bias, "device": device, "dtype": dtype}
        hidden = [
            LinearReLU(n_in, n_out, relu_grad_at_zero=relu_grad_at_zero, **kw)
            for n_in, n_out in pairwise(sizes[:-1])
        ]
        super().__init__(*hidden, Linear(sizes[-2], sizes[-1], **kw))
        self.sizes = sizes
        self.relu_grad_at_zero = int(relu_grad_at_zero)

    def __getitem__(self, idx):
        # A slice of the layers is a plain nn.Sequential (it need not end with a Linear).
        if isinstance(idx, slice):
            return nn.Sequential(OrderedDict(list(self._modules.items())[idx]))
        return super().__getitem__(idx)

    def to_torch(self) -> nn.Sequential:
        """The same network as ``nn.Sequential(Linear, ReLU, ..., Linear)``, weights copied."""
        layers: list[nn.Module] = []
        for layer in self:
            twin = nn.Linear(
                layer.in_features,
                layer.out_features,
                bias=layer.bias is not None,
                device=layer.weight.device,
                dtype=layer.weight.dtype,
            )
            twin.load_state_dict(layer.state_dict())
            twin.weight.requires_grad_(layer.weight.requires_grad)
            if layer.bias is not None:
                twin.bias.requires_grad_(layer.bias.requires_grad)
            layers.append(twin)
            if isinstance(layer, LinearReLU):
                layers.append(nn.ReLU())
        return nn.Sequential(*layers)

    @classmethod
    def from_torch(cls, seq: nn.Sequential, relu_grad_at_zero: int = 1) -> MLP:
        """Build an ``MLP`` from ``nn.Sequential(Linear, ReLU, ..., Linear)``, weights copied."""
        modules = list(seq)
        linears = modules[0::2]
        relus = modules[1::2]
        pattern_ok = (
            len(modules) % 2 == 1
            and all(isinstance(m, nn.Linear) for m in linears)
            and all(type(m) is nn.ReLU for m in relus)
        )
        if not pattern_ok:
            kinds = ", ".join(type(m).__name__ for m in modules)
            raise ValueError(
                "from_torch expects nn.Sequential(Linear, ReLU, Linear, ..., Linear), "
                f"got Sequential({kinds})"
            )
        has_bias = {m.bias is not None for m in linears}
        if len(has_bias) != 1:
            raise ValueError("from_torch expects every Linear to have a bias, or none to")
        for prev, nxt in pairwise(linears):
            if prev.out_features != nxt.in_features:
                raise ValueError(f"layer widths do not chain: {prev} is followed by {nxt}")
        first = linears[0].weight
        net = cls(
            [linears[0].in_features] + [m.out_features for m in linears],
            bias=has_bias.pop(),
            relu_grad_at_zero=relu_grad_at_zero,
            device=first.device,
            dtype=first.dtype,
        )
        for ours, theirs in zip(net, linears, strict=True):
            ours.load_state_dict(theirs.state_dict())
        return net

    def extra_repr(self) -> str:
        return f"sizes={self.sizes}"
