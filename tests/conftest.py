"""Shared test helpers.

``SHARED`` is the read-only data folder next to the repository (``../shared``: real maze episodes,
TFRecord sample, reference files). Tests that need it use the ``requires_shared`` marker, so that a
fresh clone without it skips them with a clear reason instead of failing (the ``device`` fixture likewise
runs a test on the CPU and, where there is one, on a CUDA GPU)::

    from tests.conftest import SHARED, requires_shared

    @requires_shared
    def test_something():
        ...
"""

from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = REPO_ROOT.parent / "shared"
SHARED_MAZES = SHARED / "mazes"

requires_shared = pytest.mark.skipif(
    not SHARED.is_dir(), reason=f"needs the shared data folder {SHARED} (real maze episodes), which is absent"
)
requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here")


@pytest.fixture
def shared_dir() -> Path:
    """The ../shared folder; skips the test when it is absent."""
    if not SHARED.is_dir():
        pytest.skip(f"needs the shared data folder {SHARED}, which is absent")
    return SHARED


@pytest.fixture(params=["cpu", pytest.param("cuda", marks=requires_cuda)])
def device(request) -> torch.device:
    """Each device the test should pass on. On CUDA, TF32 is switched off for the test: the comparisons
    are of float32 arithmetic."""
    if request.param == "cpu":
        yield torch.device("cpu")
        return
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield torch.device("cuda")
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved
