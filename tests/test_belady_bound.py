"""Bélády's MIN bounds demand paging: with no prefetch, no online replacement policy loads fewer
units than it (units read on demand plus units placed before decoding, as static-pin pins its hot
set), at any budget, on a synthetic llama-2-7b-shaped trace and on a real Gemma 3 270M trace."""

from __future__ import annotations

import dataclasses

import pytest

from sparsesim.simulator.simulate import simulate
from sparsesim.simulator.synth import synthesize
from sparsesim.tracefile import read_trace

ONLINE = ("lru", "fifo", "lfu", "window:k=4", "static-pin")
BUDGETS = (0.1, 0.25, 0.5)


def loaded_units(trace, budget):
    runs = {cache: simulate(trace, "oneplus-12", "none", cache, settings=[f"dram_budget={budget}"], baselines=False)
            for cache in (*ONLINE, "belady")}
    return {cache: r["demand_misses"] + r["preloaded_units"] for cache, r in runs.items()}


@pytest.fixture(scope="module")
def llama7b(tmp_path_factory):
    path = tmp_path_factory.mktemp("l7") / "llama7b.parquet"
    return synthesize(path, shape="llama-2-7b", tokens=12, active=0.1, persistence=0.6, hot_skew=0.5,
                      seed=0, progress=False)


@pytest.mark.parametrize("budget", BUDGETS)
def test_belady_bounds_online_policies_on_llama7b_shape(llama7b, budget):
    loaded = loaded_units(llama7b, budget)
    assert loaded["belady"] <= min(loaded[c] for c in ONLINE), loaded


@pytest.mark.gemma
@pytest.mark.parametrize("budget", BUDGETS)
def test_belady_bounds_online_policies_on_gemma(gemma_trace, budget):
    full = read_trace(gemma_trace)
    first = dataclasses.replace(full, masks=full.masks[:192], token=full.token[:192], seq=full.seq[:192],
                                pos=full.pos[:192], active=full.active[:192])   # 192 tokens keep it quick
    loaded = loaded_units(first, budget)
    assert loaded["belady"] <= min(loaded[c] for c in ONLINE), loaded
