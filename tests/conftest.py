"""Shared test helpers.

**Real data.** Tests that need DeepMind's real maze episodes (``train/*.pt``, the TFRecord sample in
``tfrecord/``) find them through one fixture, ``real_mazes``, which returns the folder named by one
environment variable::

    GEN_REAL_MAZES=/path/to/mazes python -m pytest -q      # default: ../shared/mazes next to the repository

On a user's machine without that folder the tests skip, saying which folder they looked for and how to
point them at one. Under CI (``CI=true``, as GitHub Actions and ``.ci/run`` set it) a missing folder
makes them fail instead: a CI run whose real-data tests all skipped would prove nothing about real data.
Request the fixture, or mark a test with ``requires_shared`` (the same fixture, for tests that only need
the folder to be there)::

    def test_something(real_mazes):
        episodes = real_mazes / "train"

``SHARED_MAZES`` (= the same folder) and ``SHARED`` (its parent) are kept for modules that build paths at
import time; their tests must still use the fixture or the marker, which decides between running,
skipping and failing.

**Hypothesis** runs derandomized (the same examples on every run and machine) and prints the falsifying
example and its reproduction blob when a property fails: the ``repo`` profile, loaded here. Another
profile can be chosen with ``--hypothesis-profile``.

The ``device`` fixture runs a test on the CPU and, where there is one, on a CUDA GPU.
"""

import os
from pathlib import Path

import pytest
import torch
from hypothesis import Verbosity, settings

REPO_ROOT = Path(__file__).resolve().parents[1]

REAL_MAZES_ENV = "GEN_REAL_MAZES"
# A relative value is taken relative to the current directory, as any path on a command line.
REAL_MAZES = Path(os.environ.get(REAL_MAZES_ENV) or REPO_ROOT.parent / "shared" / "mazes").absolute()
SHARED_MAZES = REAL_MAZES  # older name, for modules that build paths at import time
SHARED = REAL_MAZES.parent


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


@pytest.fixture(scope="session")
def real_mazes() -> Path:
    """The real maze episodes' folder (``$GEN_REAL_MAZES``, default ``../shared/mazes``): ``train/*.pt``
    and ``tfrecord/``. Skips the test when the folder is absent, except under CI, where it fails.
    Session-scoped, so that it is decided before any module-scoped fixture starts to use the data."""
    train = REAL_MAZES / "train"
    if train.is_dir() and any(train.glob("*.pt")):
        return REAL_MAZES
    reason = (f"needs the real maze episodes in {train} (set {REAL_MAZES_ENV} to the folder holding train/ "
              f"and tfrecord/), which are absent")
    if in_ci():
        pytest.fail(f"CI={os.environ['CI']}: {reason}; CI must run the real-data tests", pytrace=False)
    pytest.skip(reason)


requires_shared = pytest.mark.usefixtures("real_mazes")
requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here")

settings.register_profile("repo", derandomize=True, print_blob=True, verbosity=Verbosity.normal)
settings.load_profile("repo")


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
