"""The training loop: reproducibility, checkpoints, exact resume, divergence, parity checks,
and the logged values checked against values recomputed from the checkpointed weights."""

import math
import os
import re

import pytest
import torch

pytest.importorskip("sklearn")
pytest.importorskip("tensorboard")

import torch_manual_bp as mbp
from torch_manual_bp.data import load_breast_cancer
from torch_manual_bp.tensorboard import read_hparams, read_scalars
from torch_manual_bp.train import (
    ConfigError,
    Diverged,
    TrainConfig,
    load_checkpoint,
    save_checkpoint,
    train,
)

QUIET = {"progress": False, "logdir": None}

# Cheap settings per optimizer: a few steps per epoch on the 455 training rows.
FAST = {
    "gd": {"optimizer": "gd"},
    "sgd": {"optimizer": "sgd", "batch_size": 128},
    "momentum": {"optimizer": "momentum", "batch_size": 128},
    "adam": {"optimizer": "adam", "batch_size": 128},
}


def _equal_state(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _recomputed_loss(checkpoint: dict, x: torch.Tensor, y: torch.Tensor) -> float:
    sizes = checkpoint["config"]["hidden"]
    net = mbp.nn.MLP([x.shape[1], *sizes, 1])
    net.load_state_dict(checkpoint["model"])
    with torch.no_grad():
        return float(mbp.functional.sigmoid_bce(net(x).squeeze(-1), y))


@pytest.mark.parametrize("name", list(FAST))
def test_same_seed_same_numbers(name):
    a = train(TrainConfig(**FAST[name], epochs=2, seed=3, **QUIET))
    b = train(TrainConfig(**FAST[name], epochs=2, seed=3, **QUIET))
    c = train(TrainConfig(**FAST[name], epochs=2, seed=4, **QUIET))
    assert a.history == b.history and _equal_state(a.state_dict, b.state_dict)
    assert a.history != c.history


@pytest.mark.parametrize("name", list(FAST))
def test_resume_is_bit_identical(tmp_path, name):
    ckpt = str(tmp_path / "ckpt.pt")
    whole = train(TrainConfig(**FAST[name], epochs=3, **QUIET))
    train(TrainConfig(**FAST[name], epochs=2, checkpoint=ckpt, **QUIET))  # "killed" after 2
    resumed = train(TrainConfig(**FAST[name], epochs=3, resume=ckpt, checkpoint=ckpt, **QUIET))
    assert resumed.steps == whole.steps and resumed.epochs == 3
    assert _equal_state(resumed.state_dict, whole.state_dict)
    assert resumed.history == whole.history[-len(resumed.history) :]
    final = load_checkpoint(ckpt)
    assert final["epoch"] == 3 and _equal_state(final["model"], whole.state_dict)


def test_checkpoint_contents_load_with_weights_only(tmp_path):
    ckpt = tmp_path / "sub" / "c.pt"  # the directory is created
    result = train(TrainConfig(optimizer="adam", batch_size=128, epochs=1, checkpoint=str(ckpt),
                               **QUIET))  # fmt: skip
    state = torch.load(ckpt, weights_only=True)
    assert {"model", "optimizer", "epoch", "step", "rng", "config", "metrics"} <= set(state)
    assert _equal_state(state["model"], result.state_dict)
    assert state["epoch"] == 1 and state["step"] == 4
    assert {"m", "s", "step"} <= set(state["optimizer"]["state"][0])  # the lecture's Adam state
    assert os.listdir(ckpt.parent) == ["c.pt"]  # no temporary file left behind


def test_interrupted_checkpoint_write_keeps_the_previous_file(tmp_path, monkeypatch):
    path = str(tmp_path / "c.pt")
    save_checkpoint(path, {"format": 1, "epoch": 1, "w": torch.ones(3)})

    def crash(obj, f, *args, **kwargs):
        f.write(b"partial")
        raise KeyboardInterrupt  # killed in the middle of the write

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, {"format": 1, "epoch": 2, "w": torch.zeros(3)})
    monkeypatch.undo()
    assert load_checkpoint(path)["epoch"] == 1
    assert os.listdir(tmp_path) == ["c.pt"]


def test_logged_values_equal_values_recomputed_from_the_checkpoint(tmp_path):
    """GD, killed after 2 epochs and resumed: every train/loss logged at step t is J(w(t))."""
    data = load_breast_cancer(seed=0)
    ckpt = str(tmp_path / "c.pt")
    cfg = {"optimizer": "gd", "logdir": str(tmp_path / "runs"), "run_name": "r",
           "checkpoint": ckpt, "progress": False}  # fmt: skip
    train(TrainConfig(**cfg, epochs=2))
    at_2 = load_checkpoint(ckpt)
    train(TrainConfig(**cfg, epochs=3, resume=ckpt))
    assert os.listdir(tmp_path / "runs") == ["r"]
    scalars = read_scalars(tmp_path / "runs" / "r")
    loss_at = dict(scalars["train/loss"])
    assert sorted(loss_at) == [0, 1, 2]  # the resumed run continued the same curve
    J2 = _recomputed_loss(at_2, data.x_train, data.y_train)
    assert loss_at[2] == pytest.approx(J2, rel=1e-6)  # full batch: J over the training split
    assert dict(scalars["train/epoch_loss"])[2] == pytest.approx(J2, rel=1e-6)
    val_J2 = _recomputed_loss(at_2, data.x_val, data.y_val)
    assert dict(scalars["val/loss"])[2] == pytest.approx(val_J2, rel=1e-6)
    hparams, metrics = read_hparams(tmp_path / "runs" / "r")
    assert hparams["optimizer"] == "gd" and hparams["lr"] == 0.5
    assert "hparam/val_accuracy" in metrics


def test_tensorboard_tags_of_a_run(tmp_path):
    train(TrainConfig(optimizer="adam", batch_size=128, epochs=2, logdir=str(tmp_path),
                      run_name="r", check_parity_every=2, progress=False))  # fmt: skip
    assert os.listdir(tmp_path) == ["r"]
    tags = set(read_scalars(tmp_path / "r"))
    for layer in ("layer1", "layer2"):
        assert {f"grad_norm/{layer}", f"optim/m_hat_norm/{layer}", f"optim/s_hat_mean/{layer}",
                f"optim/update_norm/{layer}"} <= tags  # fmt: skip
    assert {"train/loss", "val/loss", "val/accuracy", "lr", "parity/max_abs_grad_diff"} <= tags


def test_parity_checks_pass_and_are_logged(tmp_path):
    r = train(TrainConfig(optimizer="gd", epochs=3, check_parity_every=1, logdir=str(tmp_path),
                          run_name="p", progress=False))  # fmt: skip
    assert r.parity_checks == 3 and r.parity_failures == 0
    diffs = read_scalars(tmp_path / "p")["parity/max_abs_grad_diff"]
    assert [s for s, _ in diffs] == [0, 1, 2]
    assert all(0 <= v < 1e-5 for _, v in diffs)


def test_parity_failure_is_reported_loudly(monkeypatch, capsys):
    real_to_torch = mbp.nn.MLP.to_torch

    def broken_twin(self):  # a twin whose weights differ: the gradients cannot agree
        twin = real_to_torch(self)
        with torch.no_grad():
            twin[0].weight.add_(0.5)
        return twin

    monkeypatch.setattr(mbp.nn.MLP, "to_torch", broken_twin)
    r = train(TrainConfig(optimizer="gd", epochs=2, check_parity_every=1, **QUIET))
    assert r.parity_failures == 2
    assert "PARITY CHECK FAILED at step 0" in capsys.readouterr().err


def _finite_checkpoint(path: str) -> dict:
    """The checkpoint at ``path``, asserted good: every metric and every weight finite."""
    kept = load_checkpoint(path)
    assert all(math.isfinite(v) for v in kept["metrics"].values()), kept["metrics"]
    assert math.isfinite(kept["metrics"]["train/epoch_loss"])
    assert all(torch.isfinite(v).all() for v in kept["model"].values())
    return kept


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    """gd with α = 1e5 (seed 0): J at the epoch ends is ~5e8, ~8e18, ~2e29, then NaN after
    step 3: epoch 4's checkpoint must not replace epoch 3's."""
    ckpt = str(tmp_path / "c.pt")
    with pytest.raises(Diverged) as info:
        train(TrainConfig(optimizer="gd", lr=1e5, epochs=6, checkpoint=ckpt, **QUIET))
    err = info.value
    assert err.step == 4 and "at step 4" in str(err) and "lower learning rate" in str(err)
    assert "epoch 4's checkpoint was not written" in str(err)
    assert err.checkpoint == ckpt
    assert _finite_checkpoint(ckpt)["epoch"] == 3


def test_divergence_in_the_first_epoch_writes_no_checkpoint(tmp_path):
    """α = 1e30: step 0 leaves weights ~1e29 whose loss is NaN; no checkpoint is good."""
    ckpt = tmp_path / "c.pt"
    with pytest.raises(Diverged) as info:
        train(TrainConfig(optimizer="gd", lr=1e30, epochs=5, checkpoint=str(ckpt), **QUIET))
    assert info.value.step == 1 and "the training loss is nan at step 1" in str(info.value)
    assert info.value.checkpoint is None and not ckpt.exists()


def test_divergence_on_the_last_epoch_is_not_a_result(tmp_path):
    """α = 1e3: J overflows only at the end of epoch 6, the last one; no result with J = inf."""
    ckpt = str(tmp_path / "c.pt")
    with pytest.raises(Diverged, match="the training loss is inf at step 6"):
        train(TrainConfig(optimizer="gd", lr=1e3, epochs=6, checkpoint=ckpt, **QUIET))
    assert _finite_checkpoint(ckpt)["epoch"] == 5


def test_a_weight_that_is_not_finite_stops_the_run(tmp_path, monkeypatch):
    """Even if both losses were finite, a non-finite weight is not a good checkpoint."""

    def finite_loss_but_an_inf_weight(model, x, y):
        with torch.no_grad():
            model[0].bias[0] = math.inf
        return 0.5, 1.0

    monkeypatch.setattr("torch_manual_bp.train.evaluate", finite_loss_but_an_inf_weight)
    ckpt = tmp_path / "c.pt"
    with pytest.raises(Diverged, match="a weight is not finite at step 1"):
        train(TrainConfig(optimizer="gd", epochs=2, checkpoint=str(ckpt), **QUIET))
    assert not ckpt.exists()


@pytest.mark.parametrize("lr", [3.5e38, 1e39, math.inf, math.nan, 0.0, -1.0])
def test_an_lr_float32_cannot_hold_is_refused(lr):
    with pytest.raises(ConfigError, match=r"--lr must be a positive number at most 3\.40282e\+38"):
        train(TrainConfig(optimizer="gd", lr=lr, epochs=1, **QUIET))


RESUME_ERRORS = [
    ({"optimizer": "sgd"}, "trained with --optimizer 'gd'"),
    ({"hidden": [8]}, "trained with --hidden [16]"),
    ({"seed": 1}, "trained with --seed 0"),
]


@pytest.mark.parametrize(("change", "message"), RESUME_ERRORS)
def test_resume_with_other_settings_is_refused(tmp_path, change, message):
    ckpt = str(tmp_path / "c.pt")
    train(TrainConfig(optimizer="gd", epochs=1, checkpoint=ckpt, **QUIET))
    cfg = {"optimizer": "gd", "epochs": 2, **change}
    with pytest.raises(ConfigError, match=re.escape(message)):
        train(TrainConfig(**cfg, resume=ckpt, **QUIET))


def test_bad_checkpoints_and_paths(tmp_path):
    with pytest.raises(ConfigError, match="no such checkpoint file"):
        train(TrainConfig(resume=str(tmp_path / "nope.pt"), **QUIET))
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match=r"junk\.pt: not a readable checkpoint"):
        train(TrainConfig(resume=str(junk), **QUIET))
    with pytest.raises(ConfigError, match="cannot write the log directory"):
        train(TrainConfig(optimizer="gd", epochs=1, logdir=str(junk / "runs"), progress=False))
    with pytest.raises(ConfigError, match="cannot write the checkpoint"):
        train(TrainConfig(optimizer="gd", epochs=1, checkpoint=str(junk / "c.pt"), **QUIET))
    (tmp_path / "runs" / "taken").mkdir(parents=True)
    (tmp_path / "runs" / "taken" / "f").write_text("x")
    with pytest.raises(ConfigError, match="run directory already exists"):
        train(TrainConfig(optimizer="gd", epochs=1, logdir=str(tmp_path / "runs"),
                          run_name="taken", progress=False))  # fmt: skip


def test_default_run_names_never_collide(tmp_path):
    kw = {"optimizer": "gd", "epochs": 1, "logdir": str(tmp_path), "progress": False}
    a, b = train(TrainConfig(**kw)), train(TrainConfig(**kw))
    assert a.run_dir != b.run_dir
    assert sorted(os.listdir(tmp_path)) == sorted(os.path.basename(r.run_dir) for r in (a, b))


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [("lr", -1.0, "--lr"), ("batch_size", 0, "--batch-size"), ("hidden", [], "--hidden"),
     ("optimizer", "rmsprop", "unknown optimizer"), ("val_fraction", 1.5, "--val-fraction"),
     ("data", "x.csv", "--target"), ("run_name", "a/b", "--run-name")],
)  # fmt: skip
def test_bad_config_values(field, value, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        train(TrainConfig(**{field: value}, **QUIET))


def test_trains_on_a_users_csv(tmp_path):
    data = load_breast_cancer(seed=0)
    rows = ["f0,f1,f2,diagnosis"] + [
        f"{x[0]:.5f},{x[1]:.5f},{x[2]:.5f},{'M' if y == 0 else 'B'}".replace("M", "2").replace(
            "B", "5"
        )
        for x, y in zip(data.x_train.tolist(), data.y_train.tolist(), strict=True)
    ]
    path = tmp_path / "mine.csv"
    path.write_text("\n".join(rows))
    r = train(TrainConfig(optimizer="gd", epochs=20, data=str(path), target="diagnosis", **QUIET))
    assert r.val_accuracy > 0.8
