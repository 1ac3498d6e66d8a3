"""Shared fixtures: every test that takes ``device`` runs on CPU and on CUDA."""

import pytest
import torch

_CUDA = torch.cuda.is_available()


@pytest.fixture(
    params=[
        "cpu",
        pytest.param(
            "cuda",
            marks=[
                pytest.mark.cuda,
                pytest.mark.skipif(not _CUDA, reason="no CUDA device on this machine"),
            ],
        ),
    ]
)
def device(request) -> torch.device:
    return torch.device(request.param)


@pytest.fixture(autouse=True)
def _seed_torch():
    """Every test starts from the same global RNG state: failures reproduce."""
    torch.manual_seed(0)
