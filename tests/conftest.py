"""Fixtures shared by the test modules."""

from __future__ import annotations

from pathlib import Path

import pytest

# CI runs on a fresh clone with the read-only ../shared directory beside the repository.
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data``: real weights (llama2.c stories260K) and text (WikiText-2 raw test)."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} not found (it lives beside the repository)")
    return SHARED_DATA
