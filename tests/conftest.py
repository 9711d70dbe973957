"""Shared test helpers.

``SHARED`` is the read-only data folder next to the repository (``../shared``: real maze episodes,
TFRecord sample, reference files). Tests that need it use the ``requires_shared`` marker, so that a
fresh clone without it skips them with a clear reason instead of failing::

    from tests.conftest import SHARED, requires_shared

    @requires_shared
    def test_something():
        ...
"""

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = REPO_ROOT.parent / "shared"
SHARED_MAZES = SHARED / "mazes"

requires_shared = pytest.mark.skipif(
    not SHARED.is_dir(), reason=f"needs the shared data folder {SHARED} (real maze episodes), which is absent"
)


@pytest.fixture
def shared_dir() -> Path:
    """The ../shared folder; skips the test when it is absent."""
    if not SHARED.is_dir():
        pytest.skip(f"needs the shared data folder {SHARED}, which is absent")
    return SHARED
