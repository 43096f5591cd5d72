"""The traces of the differential and libCacheSim tests (not a test module).

Tiny synthetic traces (``sparsesim.simulator.synth``), hand-made ones that stress ties and full
caches (``tracebuild.write_trace``), expert traces whose experts differ in size per layer, with
budgets in bytes (``tracebuild.write_expert_trace``), and a real stories260K trace (``trace_model``
on Python docs, with a stored low-rank predictor column). Each comes with a training/profiling trace of other
text or another seed, for the predictors that learn offline and for ``static-pin``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from tracebuild import write_expert_trace, write_trace

from sparsesim.simulator.synth import synthesize

PROFILE = Path(__file__).resolve().parent / "fixtures" / "instant-storage.yaml"
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@dataclasses.dataclass(frozen=True)
class TraceCase:
    """A trace of the grid, its training/profiling trace (other text or another seed) and budgets."""

    name: str
    budgets: tuple[float, ...]
    glu: bool
    stored: bool = False      # has a pred:<name> column for the `stored` predictor
    budget_kind: str = "dram_budget"   # expert traces: "cache_budget", the cache's size in bytes


def _sliding(tokens: int, layers: int, d_ff: int, size: int, stride: int) -> np.ndarray:
    """Token t, layer l uses [t*stride + 5l, + size) mod d_ff: equal-sized, overlapping sets
    whose recency and frequency keys tie often (the tie order decides)."""
    a = np.zeros((tokens, layers, d_ff), dtype=bool)
    for t in range(tokens):
        for l in range(layers):
            a[t, l, (t * stride + 5 * l + np.arange(size)) % d_ff] = True
    return a


def _fixed_size(tokens: int, layers: int, d_ff: int, size: int, seed: int) -> np.ndarray:
    """Every step needs exactly ``size`` units, drawn from a small pool so that reuse is frequent."""
    rng = np.random.default_rng(seed)
    a = np.zeros((tokens, layers, d_ff), dtype=bool)
    for t in range(tokens):
        for l in range(layers):
            a[t, l, rng.choice(d_ff // 2 + size, size, replace=False)] = True
    return a


# Budgets: one where the per-layer slices cannot hold a step (refused there, runs globally) and two
# that run in both partitions. "full" at 0.0834 holds exactly one step's need in the global pool
# (floor(0.0834 * 48) = 4): every arrival meets a full cache.
TRACES = (
    TraceCase("synth-glu", (0.2, 0.35, 0.6), glu=True),
    TraceCase("synth-plain", (0.2, 0.4, 0.7), glu=False),
    TraceCase("ties", (0.2, 0.4, 0.75), glu=True),
    TraceCase("full", (0.0834, 0.25, 0.5), glu=True),
    TraceCase("stories260K", (0.15, 0.35, 0.7), glu=True, stored=True),
    # Experts of 300 / 200 / 500 B (weights 3, 2, 5): 1700 B is below the token cycle (2500 B) and too
    # small for the per-layer slices; 4550 B leaves a remainder no expert fits.
    TraceCase("experts", (1700, 3000, 4550), glu=False, budget_kind="cache_budget"),
    # 600 B holds exactly one step of layer 0 (two 300 B experts): every arrival meets a full cache.
    TraceCase("experts-full", (600, 1000, 1700), glu=False, budget_kind="cache_budget"),
)
# The libCacheSim comparison: a larger synthetic trace (reuse at many distances) and stories260K;
# budgets here are the flat caches' capacities as a share of all units.
LIBCACHESIM_TRACES = (
    TraceCase("synth-lcs", (0.3, 0.6, 0.9), glu=True),
    TraceCase("stories260K", (0.3, 0.6, 0.9), glu=True, stored=True),
)


# name: (experts per layer, top-k, bytes per expert, (tokens, training tokens), (seed, training seed))
EXPERTS = {
    "experts": ([8, 6, 8], [2, 2, 3], [300, 200, 500], (14, 20), (11, 12)),
    "experts-full": ([6, 6], [2, 2], [300, 200], (16, 20), (13, 14)),
}


def _routes(count: list[int], top_k: list[int], tokens: int, seed: int) -> np.ndarray:
    """[tokens, layers, k] routed ids, from about half of each layer's experts so that reuse is frequent."""
    rng = np.random.default_rng(seed)
    route = np.full((tokens, len(count), max(top_k)), -1, np.int16)
    for t in range(tokens):
        for l, (c, k) in enumerate(zip(count, top_k)):
            route[t, l, :k] = rng.choice(c // 2 + k, k, replace=False)
    return route


# name: (generator shape, (tokens, training tokens), (seed, training seed))
SYNTHETIC = {
    "synth-glu": (dict(layers=3, d_model=16, d_ff=32, active=0.25, persistence=0.5, hot_skew=0.5), (16, 32), (1, 2)),
    "synth-plain": (dict(layers=2, d_model=16, d_ff=48, glu=False, active=0.2, persistence=0.6), (24, 32), (3, 4)),
    "synth-lcs": (dict(layers=4, d_model=16, d_ff=64, active=0.15, persistence=0.6, hot_skew=0.6), (64, 32), (7, 8)),
}


def build_trace(case: TraceCase, directory: Path) -> tuple[Path, Path]:
    """Write ``case``'s trace and its training/profiling trace into ``directory``."""
    out, train = directory / f"{case.name}.parquet", directory / f"{case.name}-train.parquet"
    if case.name in SYNTHETIC:
        shape, (tokens, train_tokens), (seed, train_seed) = SYNTHETIC[case.name]
        synthesize(out, **shape, tokens=tokens, seed=seed, progress=False)
        synthesize(train, **shape, tokens=train_tokens, seed=train_seed, progress=False)
    elif case.name in EXPERTS:
        count, top_k, unit_bytes, (tokens, train_tokens), (seed, train_seed) = EXPERTS[case.name]
        write_expert_trace(out, _routes(count, top_k, tokens, seed), count, unit_bytes)
        write_expert_trace(train, _routes(count, top_k, train_tokens, train_seed), count, unit_bytes)
    elif case.name == "ties":
        write_trace(out, _sliding(12, 2, 16, 6, 3), d_model=16)
        write_trace(train, _sliding(16, 2, 16, 6, 5), d_model=16)
    elif case.name == "full":
        write_trace(out, _fixed_size(10, 3, 16, 4, seed=5), d_model=16)
        write_trace(train, _fixed_size(16, 3, 16, 4, seed=6), d_model=16)
    elif case.name == "stories260K":
        from sparsesim.tracing.models import load_model
        from sparsesim.tracing.trace import trace_model

        lm = load_model(str(SHARED_DATA / "llama2c-stories260K"))
        # 40 tokens of Python docs with the low-rank predictor's column; training text: WikiText-2.
        trace_model(out=out, model=lm, text="pydoc", sparsity=0.5, tokens=40, window=40, calib_tokens=256,
                    ppl=False, learned_rank=8, learned_epochs=5)
        trace_model(out=train, model=lm, text=str(SHARED_DATA / "wikitext-2-raw" / "wiki.test.raw"),
                    sparsity=0.5, tokens=128, window=64, calib_tokens=256, ppl=False)
    else:
        raise ValueError(case.name)
    return out, train
