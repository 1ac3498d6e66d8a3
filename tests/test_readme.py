"""The README's code blocks run as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def _marked_blocks() -> list[tuple[str, str]]:
    """Python blocks preceded by a ``<!-- NAME: ... -->`` marker line."""
    text = README.read_text(encoding="utf-8")
    pattern = re.compile(r"<!-- (\w+):[^\n]*-->\n```python\n(.*?)```", re.S)
    return pattern.findall(text)


def test_readme_has_runnable_blocks():
    assert [name for name, _ in _marked_blocks()][:1] == ["quickstart"]


@pytest.mark.parametrize(("name", "code"), _marked_blocks(), ids=lambda v: v[:20])
def test_readme_block_runs(name, code):
    exec(compile(code, f"README.md:{name}", "exec"), {"__name__": "__readme__"})


def test_default_training_run_reaches_the_accuracy_the_readme_states():
    """README: `python -m torch_manual_bp train` with the defaults ends at 97 % validation
    accuracy on the bundled data (111 of 114 validation rows)."""
    pytest.importorskip("sklearn")
    from torch_manual_bp.train import TrainConfig, train

    result = train(TrainConfig(progress=False, logdir=None))
    assert result.val_accuracy >= 0.97
