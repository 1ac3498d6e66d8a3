"""The same loop with a ``torch.optim.lr_scheduler`` and mixed precision (``torch.amp``).

    python examples/train_loop_scheduler_amp.py --epochs 30
    tensorboard --logdir runs

On CPU, autocast runs the layers in bfloat16; on CUDA in float16, with a ``GradScaler`` that
scales the loss so small gradients survive float16 and unscales them before the step. The
parameters and Adam's m and s stay float32. The learning rate follows a cosine schedule,
which any ``torch.optim`` scheduler applies to this package's optimizers as to torch's.
"""

import argparse

import torch

import torch_manual_bp as mbp
from torch_manual_bp.data import load_breast_cancer
from torch_manual_bp.tensorboard import TrainingLogger

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--epochs", type=int, default=30)
parser.add_argument("--batch-size", type=int, default=32)
parser.add_argument("--lr", type=float, default=1e-2)
parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
parser.add_argument("--logdir", default="runs/example-scheduler-amp")
args = parser.parse_args()

device = torch.device(args.device)
amp_dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
torch.manual_seed(0)
data = load_breast_cancer(seed=0).to(device)
x, y = data.x_train, data.y_train  # (455, 30), (455,)

net = mbp.nn.MLP([data.n_features, 16, 1]).to(device)
opt = mbp.optim.Adam(net.parameters(), lr=args.lr)
steps_per_epoch = -(-len(x) // args.batch_size)
sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=args.epochs * steps_per_epoch)
scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
shuffle = torch.Generator().manual_seed(0)

step = 0
with TrainingLogger(args.logdir) as tb:
    for _epoch in range(args.epochs):
        for idx in torch.randperm(len(x), generator=shuffle).to(device).split(args.batch_size):
            with torch.autocast(device.type, dtype=amp_dtype):
                z = net(x[idx]).squeeze(-1)  # linear layers in amp_dtype
                loss = mbp.functional.sigmoid_bce(z, y[idx])  # the loss in float32
            opt.zero_grad()
            scaler.scale(loss).backward()
            scaler.unscale_(opt)  # true gradients for the step and the logs
            scaler.step(opt)
            scaler.update()
            tb.log_step(step, net, opt, loss)  # also logs lr as the schedule moves it
            sched.step()
            step += 1
        with torch.no_grad(), torch.autocast(device.type, dtype=amp_dtype):
            z_val = net(data.x_val).squeeze(-1).float()
        val_acc = float(((z_val > 0).float() == data.y_val).float().mean())
        tb.log_scalars(step, {"val/accuracy": val_acc})

final_lr = sched.get_last_lr()[0]
print(f"epochs {args.epochs} ({amp_dtype}): val accuracy {val_acc:.2%}, final lr {final_lr:.2e}")
print(f"logs in {args.logdir}")
