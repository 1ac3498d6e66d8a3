"""Mixed precision: bf16 autocast on CPU (fp16 + GradScaler on CUDA) reaches the float32
run's accuracy on the default data."""

import pytest
import torch

pytest.importorskip("sklearn")

from torch_manual_bp.train import TrainConfig, train

QUIET = {"progress": False, "logdir": None}
ONE_EXAMPLE = 1 / 114  # the validation split has 114 rows


def _pair(device: str, **kw):
    fp32 = train(TrainConfig(device=device, **kw, **QUIET))
    amp = train(TrainConfig(device=device, amp=True, **kw, **QUIET))
    return fp32, amp


@pytest.mark.parametrize("name", ["adam", "momentum"])
def test_bf16_autocast_on_cpu_converges_like_float32(name):
    fp32, amp = _pair("cpu", optimizer=name, epochs=10)
    assert fp32.val_accuracy > 0.9
    assert abs(amp.val_accuracy - fp32.val_accuracy) <= ONE_EXAMPLE + 1e-9
    assert abs(amp.train_accuracy - fp32.train_accuracy) <= 2 / 455 + 1e-9
    assert amp.val_loss == pytest.approx(fp32.val_loss, abs=0.02)
    # the run really was mixed: bf16 rounding moves the weights a little, not a lot
    diffs = [(amp.state_dict[k] - w).abs().max() for k, w in fp32.state_dict.items()]
    assert 0 < max(diffs) < 0.05
    assert all(w.dtype == torch.float32 for w in amp.state_dict.values())


def test_fp16_with_grad_scaler_on_cpu_runs():
    """The GradScaler path (CUDA's default), exercised on CPU with --amp-dtype float16."""
    fp32 = train(TrainConfig(optimizer="adam", epochs=5, **QUIET))
    amp = train(TrainConfig(optimizer="adam", epochs=5, amp=True, amp_dtype="float16", **QUIET))
    assert abs(amp.val_accuracy - fp32.val_accuracy) <= 2 * ONE_EXAMPLE + 1e-9


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_fp16_grad_scaler_on_cuda_converges_like_float32():
    fp32, amp = _pair("cuda", optimizer="adam", epochs=10)
    assert abs(amp.val_accuracy - fp32.val_accuracy) <= ONE_EXAMPLE + 1e-9
