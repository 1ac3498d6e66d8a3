"""Momentum and Adam as the lecture writes them, as ``torch.optim.Optimizer``s.

- :class:`Momentum`: m(t) ← β m(t−1) + (1 − β)(−∇J), w ← w + α m (or α m̂, slide 2);
  the trajectory of ``torch.optim.SGD(lr=α(1 − β), momentum=β)``.
- :class:`Adam`: m ← β₁ m − (1 − β₁) ∇J, s ← β₂ s + (1 − β₂) ∇J², w ← w + α m̂/(√ŝ + ε);
  the trajectory of ``torch.optim.Adam``.

m is the running average of the NEGATIVE gradient (``m == -exp_avg`` of PyTorch's Adam).
State keys: ``step`` (0-dim tensor), ``m``, and for Adam ``s`` (and ``s_max`` with amsgrad).

To show the step an optimizer took (TensorBoard, parity tools), use the pure helpers of
:mod:`.rules`, re-exported here:

- ``adam_step_direction(m, s, step, betas, eps)`` → m̂/(√ŝ + ε); the update was
  ``lr *`` that (pass ``s_max`` for ``s`` when ``amsgrad``);
- ``momentum_step_direction(m, step, momentum, bias_correction)`` → m or m̂.

The update rules themselves are the small functions ``rules.adam_update_`` and
``rules.momentum_update_`` (and their ``_foreach_`` twins). Paths: ``foreach=False`` (a loop
of per-tensor ops), ``foreach=True`` / ``None`` (multi-tensor ``torch._foreach_*``), and
``fused=True`` (one pass per tensor in a C++ kernel built on first use, CPU only).
docs/optim.md has the equivalences, the options and the benchmark figures.
"""

from . import rules
from ._fused import FusedUnavailableError
from .adam import Adam
from .momentum import Momentum
from .rules import adam_step_direction, momentum_step_direction

__all__ = [
    "Adam",
    "FusedUnavailableError",
    "Momentum",
    "adam_step_direction",
    "momentum_step_direction",
    "rules",
]
