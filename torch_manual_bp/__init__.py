"""torch_manual_bp: the lecture "Backpropagation and the Adam optimizer" as PyTorch components.

- ``functions``: ``torch.autograd.Function``s whose backward passes are the lecture's formulas;
- ``functional``: the validated entry points (``linear``, ``linear_relu``, ``sigmoid_bce``);
- ``nn``: modules built on them, up to the lecture's L-layer ``MLP``;
- ``optim``: ``Momentum`` and ``Adam`` as ``torch.optim.Optimizer``s;
- ``parity``: compare gradients, training runs and the lecture's backward pass with PyTorch.

The training command, TensorBoard logging and data loading (``train``, ``tensorboard``,
``data``, ``cli``) need the ``[train]`` extra and are imported on their own.
"""

from . import functional, functions, nn, optim, parity

__version__ = "0.1.0"

__all__ = ["__version__", "functional", "functions", "nn", "optim", "parity"]
