"""Train the lecture's MLP with DistributedDataParallel over several processes.

    torchrun --standalone --nproc-per-node 2 examples/ddp_train.py
    torchrun --standalone --nproc-per-node 2 examples/ddp_train.py --zero --optimizer momentum
    torchrun --standalone --nproc-per-node 2 examples/ddp_train.py --resume runs/ddp/last.pt
    python examples/ddp_train.py            # one process, the same code

Each process holds a replica of ``torch_manual_bp.nn.MLP`` and sees its own share of every
epoch's mini-batches (``DistributedSampler``); DDP averages the gradients over the processes
during ``backward()``, so every replica takes the same optimizer step, as one process would on
the union of the batches. The backend is gloo on CPU and nccl on CUDA (one GPU per process).
Only rank 0 writes TensorBoard logs (``tensorboard --logdir runs/ddp``) and checkpoints.

``--zero`` wraps this package's optimizer in ``torch.distributed.optim.ZeroRedundancyOptimizer``:
each rank keeps the optimizer state (Adam's m and s) of only its share of the parameters;
before saving, ``consolidate_state_dict`` gathers it on rank 0.
"""

from __future__ import annotations

import argparse
import os
import warnings
from pathlib import Path

import torch
import torch.distributed as dist
from sklearn.datasets import load_breast_cancer
from sklearn.model_selection import train_test_split
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from torch_manual_bp.functional import sigmoid_bce
from torch_manual_bp.nn import MLP
from torch_manual_bp.optim import Adam, Momentum

with warnings.catch_warnings():  # torch.distributed.optim imports the deprecated torch.jit
    warnings.simplefilter("ignore", DeprecationWarning)
    from torch.distributed.optim import ZeroRedundancyOptimizer

p = argparse.ArgumentParser(description="DDP training of the lecture's MLP")
p.add_argument("--epochs", type=int, default=30)
p.add_argument("--batch-size", type=int, default=32, help="per process")
p.add_argument("--hidden", type=int, nargs="+", default=[16])
p.add_argument("--optimizer", choices=["adam", "momentum"], default="adam")
p.add_argument("--lr", type=float, default=None, help="default: 0.01 (adam), 0.05 (momentum)")
p.add_argument("--zero", action="store_true", help="shard the optimizer state (ZeRO-1)")
p.add_argument("--logdir", default="runs/ddp")
p.add_argument("--checkpoint", default=None, help="default: LOGDIR/last.pt")
p.add_argument("--resume", default=None, help="a checkpoint this script wrote")
p.add_argument("--seed", type=int, default=0)
args = p.parse_args()
checkpoint = Path(args.checkpoint or Path(args.logdir) / "last.pt")

# --- Processes: torchrun sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT ---------
local_rank = int(os.environ.get("LOCAL_RANK", "0"))
if torch.cuda.is_available():
    device, backend = torch.device("cuda", local_rank), "nccl"
    torch.cuda.set_device(device)
else:
    device, backend = torch.device("cpu"), "gloo"  # torchrun sets OMP_NUM_THREADS=1 each
if "RANK" in os.environ:
    dist.init_process_group(backend)
else:  # started as a plain script: a world of one, no network needed
    dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
rank, world = dist.get_rank(), dist.get_world_size()

# --- Data: scikit-learn's breast-cancer set, standardised with the training split's stats ---
X, y = load_breast_cancer(return_X_y=True)
X_tr, X_val, y_tr, y_val = train_test_split(X, y, test_size=0.2, stratify=y, random_state=0)
mean, std = X_tr.mean(0), X_tr.std(0)
X_tr, X_val = (X_tr - mean) / std, (X_val - mean) / std
train_set = TensorDataset(
    torch.tensor(X_tr, dtype=torch.float32), torch.tensor(y_tr, dtype=torch.float32)
)
x_val = torch.tensor(X_val, dtype=torch.float32, device=device)
y_val = torch.tensor(y_val, dtype=torch.float32, device=device)
sampler = DistributedSampler(train_set, num_replicas=world, rank=rank, seed=args.seed)
loader = DataLoader(train_set, batch_size=args.batch_size, sampler=sampler)

# --- Model and optimizer: the lecture's MLP, its Adam or Momentum --------------------------
torch.manual_seed(args.seed)  # the same initial weights everywhere (DDP also broadcasts rank 0's)
model = MLP([X.shape[1], *args.hidden, 1]).to(device)
net = DDP(model, device_ids=[local_rank] if device.type == "cuda" else None)
Optimizer, kw = {"adam": (Adam, {}), "momentum": (Momentum, {"momentum": 0.9})}[args.optimizer]
kw["lr"] = args.lr if args.lr is not None else {"adam": 0.01, "momentum": 0.05}[args.optimizer]
if args.zero:
    optimizer = ZeroRedundancyOptimizer(net.parameters(), optimizer_class=Optimizer, **kw)
else:
    optimizer = Optimizer(net.parameters(), **kw)

start_epoch = 0
if args.resume:  # every rank reads the same file
    state = torch.load(args.resume, map_location=device, weights_only=True)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    start_epoch = state["epoch"]

writer = None
if rank == 0:
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(args.logdir)


def save_checkpoint(epoch: int) -> None:
    if args.zero:  # a collective: every rank sends its shard of the state to rank 0
        optimizer.consolidate_state_dict(to=0)
    if rank == 0:
        state = {"epoch": epoch, "model": model.state_dict(), "optimizer": optimizer.state_dict()}
        checkpoint.parent.mkdir(parents=True, exist_ok=True)
        tmp = checkpoint.with_suffix(".tmp")
        torch.save(state, tmp)
        tmp.replace(checkpoint)  # atomic: a crash mid-save leaves the previous checkpoint


# --- Training ----------------------------------------------------------------------------
for epoch in range(start_epoch, args.epochs):
    sampler.set_epoch(epoch)  # a different shuffle each epoch, the same on every rank
    net.train()
    loss_sum = torch.zeros(2, device=device)  # (Σ J_i over this rank's rows, number of rows)
    for xb, yb in loader:
        xb, yb = xb.to(device), yb.to(device)
        optimizer.zero_grad(set_to_none=True)
        loss = sigmoid_bce(net(xb).squeeze(-1), yb)  # the mean over this rank's batch
        loss.backward()  # DDP all-reduces (averages) the gradients here
        optimizer.step()
        loss_sum += torch.stack([loss.detach() * len(yb), loss.new_tensor(float(len(yb)))])
    dist.all_reduce(loss_sum)  # every rank's rows
    train_loss = (loss_sum[0] / loss_sum[1]).item()

    with torch.no_grad():  # the replicas are identical: evaluate the local one
        z = model(x_val).squeeze(-1)
        val_loss = sigmoid_bce(z, y_val).item()
        val_acc = ((z > 0).float() == y_val).float().mean().item()
    save_checkpoint(epoch + 1)
    if writer is not None:
        writer.add_scalar("loss/train", train_loss, epoch + 1)
        writer.add_scalar("loss/val", val_loss, epoch + 1)
        writer.add_scalar("accuracy/val", val_acc, epoch + 1)
        print(
            f"epoch {epoch + 1:3d}  train J {train_loss:.4f}  val J {val_loss:.4f}  "
            f"val accuracy {val_acc:.3f}  (world size {world})",
            flush=True,
        )

if writer is not None:
    writer.close()
    print(f"checkpoint: {checkpoint}   logs: tensorboard --logdir {args.logdir}")
dist.destroy_process_group()
