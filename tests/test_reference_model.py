"""The reference model itself: hand-computed cases and the contract's invariants.

``tests/reference_model.py`` is the yardstick of the differential tests, so it is checked on its
own first: examples worked out by hand from docs/simulator.md's residency contract, textbook
results for the flat caches, and (hypothesis) the invariants every replay must satisfy.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from reference_model import (Config, Refused, capacities, flat_min_misses, flat_replay, issue_plan,  # noqa: E402
                             replay, request_sequence, true_sets)
from test_residency_properties import make_trace, outstanding_need, smallest_budget, traces  # noqa: E402

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


def test_capacity_is_exact_rational_arithmetic():
    assert capacities(0.35, [172] * 5, "global") == {None: 301}          # 0.35 * 860 = 301, not 300
    assert capacities(0.35, [172] * 5, "per-layer") == {l: 60 for l in range(5)}   # floor(301 * 172 / 860)
    assert capacities("0.1", [10, 20], "per-layer") == {0: 1, 1: 2}
    with pytest.raises(Refused):
        capacities(0, [8], "global")


def test_schedule_as_written():
    assert issue_plan(6, 2, "layer", 1) == {0: [0, 1], 1: [2], 2: [3], 3: [4], 4: [5]}
    assert issue_plan(6, 2, "layer", 2) == {0: [0, 1, 2], 1: [3], 2: [4], 3: [5]}
    assert issue_plan(4, 2, "layer", 0) == {0: [0], 1: [1], 2: [2], 3: [3]}
    assert issue_plan(6, 3, "token", 1) == {0: [0, 1, 2], 3: [3, 4, 5]}
    assert issue_plan(6, 3, "none", 1) == {}


def units(*indices):
    return [((0, i)) for i in indices]


def test_flat_min_textbook():
    """Silberschatz's OPT example: 20 references, 3 frames, 9 page faults."""
    refs = [7, 0, 1, 2, 0, 3, 0, 4, 2, 3, 0, 3, 2, 1, 2, 0, 1, 7, 0, 1]
    seq = [(pos, (0, r)) for pos, r in enumerate(refs)]
    assert flat_min_misses(seq, 3) == 9
    assert flat_replay(seq, 3, "lru").misses == 12 and flat_replay(seq, 3, "fifo").misses == 15


def test_flat_lru_cyclic_scan_misses_everything():
    seq = [(pos, (0, pos % 4)) for pos in range(20)]
    assert flat_replay(seq, 3, "lru").misses == 20 and flat_min_misses(seq, 3) < 20


def test_flat_lfu_ties_go_to_the_earliest_to_reach_the_frequency():
    # 1 and 2 both reach frequency 2; 1 got there first, so 3's miss evicts 1
    seq = [(p, (0, r)) for p, r in enumerate([1, 2, 1, 2, 3, 1])]
    assert flat_replay(seq, 2, "lfu").misses == 4


def one_layer(sets, d=4):
    a = np.zeros((len(sets), 1, d), dtype=bool)
    for t, s in enumerate(sets):
        a[t, 0, list(s)] = True
    return make_trace(a, glu=True)


def test_demand_paging_by_hand():
    """{0,1} {1,2} {0,2} {0,1}, capacity 2, LRU: each step keeps its own set (in use) and evicts the other."""
    r = replay(one_layer([{0, 1}, {1, 2}, {0, 2}, {0, 1}]), Config("none", "lru", budget=0.5))
    p = r.per_layer
    assert (p["hits"], p["misses"], p["evictions"]) == ([3], [5], [3])


def test_predicted_sets_are_protected_by_hand():
    """oracle, layer schedule k=1, capacity 2 = one step's need. Step 0 issues P(0) = {0,1} and
    P(1) = {1,2}: 0 and 1 claim the whole cache, so 2 is not fetched (no room). Steps 1 and 2
    likewise cannot fetch their new unit and read it on demand, evicting a predicted unit only
    because no unpredicted one is left; step 3 evicts the unpredicted 2."""
    r = replay(one_layer([{0, 1}, {1, 2}, {0, 2}, {0, 1}]), Config("oracle", "lru", budget=0.5))
    p = {k: v[0] for k, v in r.per_layer.items()}
    assert (p["hits"], p["misses"], p["evictions"]) == (5, 3, 3)
    assert (p["prefetch_issued"], p["prefetch_no_room"], p["prefetch_bypassed"], p["prefetch_useful"]) == (2, 3, 0, 2)
    assert r.ffn_storage_bytes == 5 * r.unit_bytes[0]
    room = replay(one_layer([{0, 1}, {1, 2}, {0, 2}, {0, 1}]), Config("oracle", "lru", budget=1))
    assert room.total("misses") == 0 and room.total("prefetch_no_room") == 0


def test_refusals():
    trace = one_layer([{0, 1, 2}, {1}])
    with pytest.raises(Refused):
        replay(trace, Config("none", "lru", budget=0.5))                 # 2 units < a step's 3
    with pytest.raises(Refused):
        replay(make_trace(np.ones((2, 1, 4), bool), glu=False), Config("none", "lru", budget=1, two_phase=True))


POLICIES = ("lru", "fifo", "lfu", "window:k=2", "static-pin", "belady")


@settings(max_examples=80, deadline=None)
@given(trace=traces(), predictor=st.sampled_from(("none", "oracle", "previous-token", "window", "dense",
                                                  "noisy-oracle:fn=0.2,fp=0.2")),
       cache=st.sampled_from(POLICIES), partition=st.sampled_from(("global", "per-layer")),
       budget=st.sampled_from((0.2, 0.35, 0.5, 0.75, 1)), schedule=st.sampled_from(("layer", "token", "none")),
       two_phase=st.booleans())
def test_reference_invariants(trace, predictor, cache, partition, budget, schedule, two_phase):
    config = Config(predictor, cache, partition, budget, schedule, two_phase=two_phase and trace.model["glu"])
    try:
        r = replay(trace, config)     # asserts internally: no unit computed while not resident
    except Refused:
        return
    p = r.per_layer
    for l in range(trace.n_layers):
        assert p["accesses"][l] == p["hits"][l] + p["late"][l] + p["gate_hits"][l] + p["misses"][l]
        assert p["prefetch_issued"][l] == (p["prefetch_useful"][l] + p["prefetch_useless"][l]
                                           + p["prefetch_unused_at_end"][l] + p["prefetch_bypassed"][l]
                                           + p["prefetch_gate_dropped"][l])
    assert r.total("late") == 0
    truth = true_sets(trace.masks, trace.d_ff)
    needed = [[frozenset(range(d)) for d in trace.d_ff] for _ in truth] if predictor == "dense" else truth
    read = r.total("demand_units") + r.total("second_phase_units" if config.two_phase else "prefetch_units")
    c = capacities(budget, trace.d_ff, "global")[None]
    assert read + r.preloaded_units >= flat_min_misses(request_sequence(needed), c)


@settings(max_examples=60, deadline=None)
@given(trace=traces(), cache=st.sampled_from(POLICIES), partition=st.sampled_from(("global", "per-layer")),
       schedule=st.sampled_from(("layer", "token")), two_phase=st.booleans())
def test_reference_oracle_with_room_never_misses(trace, cache, partition, schedule, two_phase):
    needed = true_sets(trace.masks, trace.d_ff)
    budget = smallest_budget(trace.d_ff, partition, outstanding_need(needed, trace.n_layers, schedule, partition))
    r = replay(trace, Config("oracle", cache, partition, budget, schedule, two_phase=two_phase and trace.model["glu"]))
    assert r.total("misses") == 0 and r.total("prefetch_no_room") == 0 and r.total("prefetch_useless") == 0
