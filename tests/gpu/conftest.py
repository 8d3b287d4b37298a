"""The GPU suite: run by ``make test-gpu`` only (it sets ``VIDSHARD_GPU_TESTS=1``), never by ``make test``.

Without a CUDA device it stops the run with "no CUDA device" and a non-zero exit status, so it can
never be mistaken for a pass. See docs/gpu.md.
"""

from __future__ import annotations

import os

import pytest
import torch

ENABLED = os.environ.get("VIDSHARD_GPU_TESTS") == "1"
NO_GPU = ("no CUDA device: the GPU suite checks the CUDA, bf16, flash-attn and NCCL paths and needs a GPU "
          "(see docs/gpu.md)")

if not ENABLED:
    collect_ignore_glob = ["test_*.py"]  # `make test` / a plain `pytest` never runs the GPU suite


def pytest_sessionstart(session: pytest.Session) -> None:
    if ENABLED and not torch.cuda.is_available():
        pytest.exit(NO_GPU, returncode=3)


@pytest.fixture(scope="session", autouse=True)
def cuda_device() -> torch.device:
    """The GPU the suite runs on (also refuses to run without one, should the hook above not run)."""
    if not torch.cuda.is_available():
        pytest.exit(NO_GPU, returncode=3)
    return torch.device("cuda", 0)
