"""Why ``window:k=4`` equals ``lru`` in every cell of the old demo: the setting, not a bug.

LLM in a Flash's window drops a neuron once it has gone unused for k tokens, and otherwise evicts
LRU. When the cache holds less than about k tokens' worth of misses — at 50 % sparsity a budget of
at most half the FFN holds about one token's needed set — LRU has already evicted every neuron
unused for k tokens, so the window never finds one to drop and the two replays are identical.
When the budget holds the window's union, the window drops neurons LRU keeps, and they differ.
"""

from __future__ import annotations

import numpy as np
import pytest

from sparsesim.simulator.simulate import simulate
from tracebuild import write_trace

IDENTITY = ("cache", "config")


@pytest.fixture(scope="module")
def half_sparse(tmp_path_factory):
    """50 % of each layer's neurons active per token, each keeping its state with probability 0.7."""
    rng = np.random.default_rng(7)
    T, L, d = 48, 8, 256
    active = np.zeros((T, L, d), dtype=bool)
    active[0] = rng.random((L, d)) < 0.5
    for t in range(1, T):
        active[t] = np.where(rng.random((L, d)) < 0.7, active[t - 1], rng.random((L, d)) < 0.5)
    return write_trace(tmp_path_factory.mktemp("window") / "half.parquet", active, d_model=64)


def _run(trace, predictor, cache, budget):
    return simulate(trace, "oneplus-12", predictor, cache, settings=[f"dram_budget={budget}", "warmup=4"],
                    baselines=False)


@pytest.mark.parametrize("predictor", ["none", "oracle", "previous-token"])
@pytest.mark.parametrize("budget", [0.1, 0.25, 0.5])
def test_window_keeps_what_lru_keeps_when_the_cache_holds_about_one_token(half_sparse, predictor, budget):
    window, lru = _run(half_sparse, predictor, "window:k=4", budget), _run(half_sparse, predictor, "lru", budget)
    assert window["expired"] == 0            # LRU got there first: nothing unused for 4 tokens is left
    differing = {k for k in lru if k not in IDENTITY and window[k] != lru[k]
                 and not (isinstance(lru[k], float) and np.isnan(lru[k]) and np.isnan(window[k]))}
    assert differing == set()


def test_window_drops_what_lru_keeps_when_the_budget_holds_the_window(half_sparse):
    window, lru = _run(half_sparse, "none", "window:k=4", 1.0), _run(half_sparse, "none", "lru", 1.0)
    assert window["expired"] > 0 and lru["expired"] == 0
    assert window["storage_bytes"] > lru["storage_bytes"]   # it reads again what it dropped
