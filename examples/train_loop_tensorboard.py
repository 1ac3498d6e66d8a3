"""A plain PyTorch training loop with this package's layers, optimizer and TensorBoard logger.

    pip install "torch-manual-bp[train]"
    python examples/train_loop_tensorboard.py --epochs 30
    tensorboard --logdir runs

Everything here is ordinary PyTorch: ``MLP`` is an ``nn.Sequential`` whose layers run the
lecture's backward formulas, ``Adam`` is a ``torch.optim.Optimizer``, and ``TrainingLogger``
writes the loss, the gradient norms and Adam's own m̂, ŝ and step per layer.
"""

import argparse

import torch

import torch_manual_bp as mbp
from torch_manual_bp.data import load_breast_cancer
from torch_manual_bp.tensorboard import TrainingLogger

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--epochs", type=int, default=30)
parser.add_argument("--batch-size", type=int, default=32)
parser.add_argument("--lr", type=float, default=3e-3)
parser.add_argument("--logdir", default="runs/example-tensorboard")
args = parser.parse_args()

torch.manual_seed(0)
data = load_breast_cancer(seed=0)  # standardised, stratified split; examples as rows
x, y = data.x_train, data.y_train  # (455, 30), (455,)

net = mbp.nn.MLP([data.n_features, 16, 1])  # ŷ = σ(W[2] max(0, W[1] x + b[1]) + b[2])
opt = mbp.optim.Adam(net.parameters(), lr=args.lr)
shuffle = torch.Generator().manual_seed(0)

step = 0
with TrainingLogger(args.logdir) as tb:
    for _epoch in range(args.epochs):
        for idx in torch.randperm(len(x), generator=shuffle).split(args.batch_size):
            z = net(x[idx]).squeeze(-1)  # (m_B,) logits Z[L]
            loss = mbp.functional.sigmoid_bce(z, y[idx])  # J, with dJ/dZ = Ŷ − Y
            opt.zero_grad()
            loss.backward()
            opt.step()
            tb.log_step(step, net, opt, loss)  # train/loss, grad_norm/*, optim/*
            step += 1
        with torch.no_grad():
            z_val = net(data.x_val).squeeze(-1)
            val_loss = float(mbp.functional.sigmoid_bce(z_val, data.y_val))
            val_acc = float(((z_val > 0).float() == data.y_val).float().mean())
        tb.log_scalars(step, {"val/loss": val_loss, "val/accuracy": val_acc})
        tb.log_histograms(step, net)
    tb.log_hparams({"lr": args.lr, "batch_size": args.batch_size},
                   {"hparam/val_accuracy": val_acc}, step=step)  # fmt: skip

print(f"epochs {args.epochs}: val loss {val_loss:.4f}, val accuracy {val_acc:.2%}")
print(f"logs in {args.logdir}")
