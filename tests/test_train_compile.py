"""``--compile``: the model and the optimizer step each compile to whole graphs (no graph
break), and the compiled run gives the eager run's weights within float32 tolerance."""

import pytest
import torch
from torch._dynamo.utils import counters

pytest.importorskip("sklearn")

from torch_manual_bp.train import TrainConfig, compile_step, train

QUIET = {"progress": False, "logdir": None, "epochs": 3}

# optimizer → graphs: the model's forward+backward is one graph (full batch, one shape); the
# step is one graph, plus one more for optimizers whose first step creates their state (the
# guards on the empty state fail on the second call). A graph break would raise
# (fullgraph=True) and would also show in counters["graph_break"].
GRAPHS = {"gd": 2, "momentum": 3, "adam": 3}


@pytest.fixture
def fresh_dynamo():
    torch._dynamo.reset()
    counters.clear()
    yield
    torch._dynamo.reset()


CASES = [(name, False) for name in GRAPHS] + [("adam", True)]  # True: bf16 autocast too


@pytest.mark.parametrize(("name", "amp"), CASES)
def test_compiled_run_has_no_graph_break_and_matches_eager(fresh_dynamo, name, amp):
    batch = {"batch_size": 455, "amp": amp}  # the whole split: one input shape
    eager = train(TrainConfig(optimizer=name, **batch, **QUIET))
    compiled = train(
        TrainConfig(optimizer=name, **batch, compile=True, compile_backend="aot_eager", **QUIET)
    )
    assert dict(counters["graph_break"]) == {}
    assert counters["stats"]["unique_graphs"] == GRAPHS[name]
    for key, w in eager.state_dict.items():
        torch.testing.assert_close(compiled.state_dict[key], w, rtol=1e-5, atol=1e-6)
    losses = [[J for _, J in r.history] for r in (compiled, eager)]
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)


def test_torch_optimizers_step_compiles_without_its_deliberate_graph_break(fresh_dynamo):
    """torch.optim's step calls torch._dynamo.graph_break(); compile_step avoids it."""
    w = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.SGD([w], lr=0.5)
    step = compile_step(opt, backend="aot_eager")
    w.grad = torch.full((3,), 2.0)
    step()
    torch.testing.assert_close(w.detach(), torch.zeros(3))
    assert dict(counters["graph_break"]) == {}


@pytest.mark.slow
def test_inductor_compiled_run_matches_eager(fresh_dynamo):
    eager = train(TrainConfig(optimizer="adam", batch_size=455, **QUIET))
    compiled = train(TrainConfig(optimizer="adam", batch_size=455, compile=True, **QUIET))
    assert dict(counters["graph_break"]) == {}
    for key, w in eager.state_dict.items():
        torch.testing.assert_close(compiled.state_dict[key], w, rtol=1e-4, atol=1e-5)
