"""Verify your own backward pass (and optimizer) against PyTorch with torch_manual_bp.parity.

You derived the lecture's backward formulas and wrote them as a torch.autograd.Function.
Are they right? Compare them with PyTorch's autograd on the same batch, parameter by
parameter: ``compare_gradients``. This script writes such a Function with two deliberate,
classic bugs, shows the report catching each one and naming the parameter it breaks, then
the fixed version passing. Then ``backprop_trace`` shows every intermediate of the lecture's
backward pass, and ``compare_training`` catches a Momentum optimizer that forgot its (1 − β).

Run:  python examples/verify_your_backward.py
Exit status 0 when every bug was caught and every correct version passed.
"""

import torch
from torch import nn

from torch_manual_bp.nn import MLP
from torch_manual_bp.parity import backprop_trace, compare_gradients, compare_training

torch.manual_seed(0)
dtype = torch.float64  # float64: the tightest tolerance, so even small slips show

# ---------------------------------------------------------------------------------------
# 1. Your Function: A = max(0, Z), Z = A_prev Wᵀ + b, with the lecture's backward
#       dZ = dA .* 1{Z > 0}      dW = dZᵀ A_prev      db = Σᵢ dZᵢ      dA_prev = dZ W
#    and a switch for two bugs students often write.
# ---------------------------------------------------------------------------------------

BUG = None  # set below: None, "db averaged", "mask on the wrong side"


class MyLinearReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, A_prev, W, b):
        Z = A_prev @ W.T + b  # (m, out)
        ctx.save_for_backward(A_prev, W, Z)
        return Z.clamp(min=0)

    @staticmethod
    def backward(ctx, dA):
        A_prev, W, Z = ctx.saved_tensors
        # dJ/dZ = dJ/dA .* 1{Z > 0} (PyTorch's tie convention);
        # the BUG passes the gradient where the unit was OFF instead.
        dZ = dA * (Z < 0) if BUG == "mask on the wrong side" else dA * (Z > 0)
        dW = dZ.T @ A_prev  # dJ/dW = dJ/dZ · A_prevᵀ                      (out, in)
        # dJ/db = Σᵢ [dJ/dZ]ᵢ; the BUG takes the mean over the batch, not the sum.
        db = dZ.mean(0) if BUG == "db averaged" else dZ.sum(0)  #          (out,)
        dA_prev = dZ @ W  # dJ/dA_prev = Wᵀ · dJ/dZ                        (m, in)
        return dA_prev, dW, db


class MyLayer(nn.Linear):
    def forward(self, x):
        return MyLinearReLU.apply(x, self.weight, self.bias)


# A 2-layer network with your hidden layer, and its PyTorch twin with the same weights.
mine = nn.Sequential(MyLayer(4, 8), nn.Linear(8, 1)).to(dtype)
reference = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1)).to(dtype)
reference[0].load_state_dict(mine[0].state_dict())
reference[2].load_state_dict(mine[1].state_dict())

X = torch.randn(32, 4, dtype=dtype)  # a batch of m = 32 examples, as rows
Y = torch.randint(0, 2, (32, 1)).to(dtype)

# ---------------------------------------------------------------------------------------
# 2. compare_gradients: the report catches each bug and names the parameter it breaks.
#    Parameters pair up by order (mine has no nn.ReLU module, so the names differ).
# ---------------------------------------------------------------------------------------

caught = []
for BUG in ("db averaged", "mask on the wrong side", None):
    report = compare_gradients(mine, reference, X, Y)  # J = mean BCE on logits, the lecture's
    print(f"\n=== bug: {BUG} ===")
    print(report)
    failing = [row.name for row in report.rows if not row.passed]
    if BUG is None:
        caught.append(report.passed)
    else:
        print(f"-> caught: the report fails on {failing}")
        caught.append(not report.passed and "0.bias" in failing)

# ---------------------------------------------------------------------------------------
# 3. backprop_trace: the lecture's backward pass for the package's MLP, every named
#    intermediate dJ/dZ[l], dJ/dW[l], dJ/db[l], dJ/dA[l-1] against autograd's.
# ---------------------------------------------------------------------------------------

net = MLP([4, 8, 1], dtype=dtype)
trace = backprop_trace(net, X, Y)
print("\n=== backprop_trace of MLP([4, 8, 1]) ===")
print(trace)
print("dJ/dZ[2] = (Ŷ − Y)/m, first 3 examples:", trace["dJ/dZ[2]"][:3, 0].tolist())
caught.append(trace.passed)

# ---------------------------------------------------------------------------------------
# 4. compare_training: your optimizer against torch.optim, step by step. This Momentum
#    forgot the (1 − β) of m(t) = β m(t−1) + (1 − β)(−∇J); the lecture's Momentum(α, β)
#    is SGD(lr = α(1 − β), momentum = β).
# ---------------------------------------------------------------------------------------


class MyMomentum(torch.optim.Optimizer):
    def __init__(self, params, lr, momentum=0.9, forget_one_minus_beta=False):
        super().__init__(params, {"lr": lr, "momentum": momentum})
        self.bug = forget_one_minus_beta

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            alpha, beta = group["lr"], group["momentum"]
            for w in group["params"]:
                m = self.state[w].setdefault("m", torch.zeros_like(w))
                m.mul_(beta).add_(w.grad, alpha=-(1.0 if self.bug else 1 - beta))
                w.add_(m, alpha=alpha)  # w ← w + α m


batches = [(torch.randn(16, 4, dtype=dtype), torch.randint(0, 2, (16, 1)).to(dtype))]
for bug in (True, False):
    net = MLP([4, 8, 1], relu_grad_at_zero=0, dtype=dtype)
    twin = net.to_torch()
    ours = MyMomentum(net.parameters(), lr=0.1, forget_one_minus_beta=bug)
    theirs = torch.optim.SGD(twin.parameters(), lr=0.1 * (1 - 0.9), momentum=0.9)
    report = compare_training(net, ours, twin, theirs, batches, steps=5)
    print(f"\n=== MyMomentum, forgot (1 − β): {bug} ===")
    print(report)
    caught.append(report.first_divergence == 1 if bug else report.passed)

ok = all(caught)
print("\nevery bug caught, every correct version passed" if ok else "\nSOMETHING WAS MISSED")
raise SystemExit(0 if ok else 1)
