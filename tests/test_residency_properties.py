"""Property-based tests (hypothesis) of the residency contract on random tiny traces through
``simulate()`` on near-instant storage (``tests/fixtures/instant-storage.yaml``).

For every drawn trace × predictor × policy × partition × budget × schedule × two-phase:

* accesses = hits + late hits + gate hits + misses, per layer and in total;
* bytes are conserved: useful + wasted = read;
* units read + units preloaded >= Bélády's MIN under demand paging from a cold cache with the
  same capacity (no loading schedule reads fewer);
* every unit an FFN uses was read before it computes, and the units that must be resident at
  once never exceed the capacity. The public API has no residency hook, so this is checked from
  ``io_log``: a unit used at steps g1 < g2 with no read of it in between must stay resident over
  [g1, g2], as must a unit from its read to its next use; at any FFN the count of such units in
  a partition must fit in it. A hit on a unit the cache had to evict ("phantom hit") breaks this
  whenever the eviction was forced by a full cache;
* ``oracle`` with a budget that holds the needed sets of every step whose prediction is
  outstanding at once has zero demand misses, in every policy and partition.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))

from reference_model import capacities, flat_min_misses, issue_plan, request_sequence, true_sets  # noqa: E402

from sparsesim.errors import InputError  # noqa: E402
from sparsesim.simulator.simulate import simulate  # noqa: E402
from sparsesim.tracefile import Trace, popcount_rows  # noqa: E402

POLICIES = ("lru", "fifo", "lfu", "window:k=2", "static-pin", "belady")
PREDICTORS = ("none", "oracle", "previous-token", "window", "noisy-oracle:fn=0.2,fp=0.2", "dense")
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                          HealthCheck.function_scoped_fixture])


def make_trace(active: np.ndarray, glu: bool) -> Trace:
    """An in-memory trace (no file): ``active`` bool [T, L, d_ff], d_model 8."""
    T, L, d = active.shape
    masks = np.packbits(active, axis=-1, bitorder="little")
    model = {"name": "hypothesis", "architecture": "test", "n_layers": L, "d_model": 8, "d_ff": [d] * L, "glu": glu,
             "activation": "test", "attention_params": 4 * 64 * L, "embedding_params": 0, "lm_head_params": 0,
             "non_ffn_params": 4 * 64 * L}
    return Trace(path=Path("hypothesis-trace"), meta={"kind": "synthetic", "model": model},
                 seq=np.zeros(T, np.int32), pos=np.arange(T, dtype=np.int32), token=np.arange(T, dtype=np.int32) % 5,
                 masks=masks, active=popcount_rows(masks.reshape(T * L, -1)).reshape(T, L).astype(np.int32),
                 sha256=f"hypothesis-{hash(masks.tobytes())}")


@st.composite
def traces(draw):
    T = draw(st.integers(3, 8))
    L = draw(st.integers(1, 3))
    d = draw(st.integers(6, 20))
    density = draw(st.floats(0.1, 0.6))
    seed = draw(st.integers(0, 2**16))
    active = np.random.default_rng(seed).random((T, L, d)) < density
    active[:, :, 0] |= ~active.any(axis=2)     # every step needs at least one unit
    return make_trace(active, glu=draw(st.booleans()))


@st.composite
def runs(draw):
    trace = draw(traces())
    two_phase = trace.model["glu"] and draw(st.booleans())
    return dict(trace=trace, predictor=draw(st.sampled_from(PREDICTORS)), cache=draw(st.sampled_from(POLICIES)),
                partition=draw(st.sampled_from(("global", "per-layer"))), budget=draw(st.sampled_from(
                    (0.2, 0.35, 0.5, 0.75, 1))), schedule=draw(st.sampled_from(("layer", "token", "none"))),
                two_phase=two_phase)


def run(profile, trace, predictor, cache, partition, budget, schedule, two_phase, io_log=None):
    settings_ = [f"dram_budget={budget}", f"partition={partition}", f"schedule={schedule}",
                 f"two_phase={str(two_phase).lower()}"]
    return simulate(trace, profile, predictor, cache, settings=settings_, baselines=False, io_log=io_log)


def unpack(row, d) -> set[int]:
    return set(np.flatnonzero(np.unpackbits(np.asarray(row), bitorder="little", count=d)).tolist())


def necessary_residency(trace, needed, io_log, two_phase) -> tuple[dict[int, set], set]:
    """(step -> units that must be resident at its FFN, units used before any read), from the
    uses and the reads in io_log. A unit used before any read must have been preloaded (resident
    from the start, as ``static-pin`` and ``warm`` do).

    A demand batch is read at its step. A prefetch batch's (token, layer) names its target step
    (the io_log names the token a prefetch is for); issued at most a token ahead (lookahead <= L),
    its read is placed anywhere from the token before the target's to the one after it
    (conservative: it may break a residency interval).
    Under two_phase a prefetch reads gate rows only and makes nothing resident.
    """
    L = trace.n_layers
    reads: dict[tuple[int, int], list[tuple[int, int]]] = {}     # unit -> [(first, last) step it may be read at]
    for batch in io_log:
        if batch.neurons is None or (two_phase and batch.kind == "prefetch"):
            continue
        step = batch.token * L + batch.layer
        window = ((batch.token - 1) * L, (batch.token + 2) * L - 1) if batch.kind == "prefetch" else (step, step)
        for i in unpack(batch.neurons, trace.d_ff[batch.layer]):
            reads.setdefault((batch.layer, i), []).append(window)
    uses: dict[tuple[int, int], list[int]] = {}
    for t, row in enumerate(needed):
        for l, s in enumerate(row):
            for i in s:
                uses.setdefault((l, i), []).append(t * L + l)
    must: dict[int, set] = {}
    unread: set = set()
    for unit, steps in uses.items():
        windows = reads.get(unit, [])
        if not windows or min(lo for lo, _ in windows) > steps[0]:
            unread.add(unit)
            windows = [(-1, -1)] + windows
        for g in steps:
            must.setdefault(g, set()).add(unit)
        for g1, g2 in zip(steps, steps[1:]):
            if not any(lo <= g2 and hi > g1 for lo, hi in windows):    # no read can fall in (g1, g2]
                for g in range(g1, g2 + 1):
                    must.setdefault(g, set()).add(unit)
    return must, unread


def replayed(profile, case):
    """(record, per-layer counters, io_log), or None when the configuration is refused."""
    io_log: list = []
    try:
        record = run(profile, io_log=io_log, **case)
    except InputError:
        return None    # a budget below one step's need: refused, nothing to check
    return record, json.loads(record["per_layer"]), io_log


def needed_sets(case) -> list[list[frozenset[int]]]:
    trace = case["trace"]
    truth = true_sets(trace.masks, trace.d_ff)
    return [[frozenset(range(d)) for d in trace.d_ff] for _ in truth] if case["predictor"] == "dense" else truth


@SETTINGS
@given(case=runs())
def test_every_access_is_a_hit_late_hit_gate_hit_or_miss(instant_profile, case):
    if (out := replayed(instant_profile, case)) is None:
        return
    record, per, _ = out
    assert record["accesses"] == record["hits"] + record["late_hits"] + record["gate_hits"] + record["demand_misses"]
    assert record["accesses"] == sum(len(s) for row in needed_sets(case) for s in row)
    for l in range(case["trace"].n_layers):
        assert per["accesses"][l] == per["hits"][l] + per["late"][l] + per["gate_hits"][l] + per["misses"][l]


@SETTINGS
@given(case=runs())
def test_bytes_are_conserved(instant_profile, case):
    if (out := replayed(instant_profile, case)) is None:
        return
    record, _, _ = out
    assert record["useful_bytes"] + record["wasted_bytes"] == pytest.approx(record["ffn_storage_bytes"], rel=1e-12)


@SETTINGS
@given(case=runs())
def test_no_schedule_reads_fewer_units_than_belady_min(instant_profile, case):
    if (out := replayed(instant_profile, case)) is None:
        return
    record, per, _ = out
    trace = case["trace"]
    c = capacities(case["budget"], trace.d_ff, "global")[None]   # a per-layer split holds no more than C
    read = per_total(per, "demand_units") + per_total(
        per, "second_phase_units" if case["two_phase"] else "prefetch_units")
    assert read + record["preloaded_units"] >= flat_min_misses(request_sequence(needed_sets(case)), c)


@SETTINGS
@given(case=runs())
def test_every_unit_is_resident_when_its_ffn_computes(instant_profile, case):
    if (out := replayed(instant_profile, case)) is None:
        return
    record, _, io_log = out
    trace = case["trace"]
    caps = capacities(case["budget"], trace.d_ff, case["partition"])
    must, unread = necessary_residency(trace, needed_sets(case), io_log, case["two_phase"])
    assert len(unread) <= record["preloaded_units"], f"units used, never read nor preloaded: {sorted(unread)}"
    for g, units in must.items():
        for part, cap in caps.items():
            n = sum(1 for u in units if part is None or u[0] == part)
            assert n <= cap, f"step {g}: {n} units must be resident in partition {part} of {cap}"


def per_total(per: dict, name: str) -> int:
    return sum(per[name])


def outstanding_need(needed, n_layers: int, schedule: str, partition: str) -> dict:
    """Per partition, the most units the predicted sets outstanding at one instant hold (oracle:
    P = N): at step g, every target issued by g whose FFN has not ended."""
    plan = issue_plan(len(needed) * n_layers, n_layers, schedule, 1)
    issued_at = {h: g for g, hs in plan.items() for h in hs}
    worst: dict = {}
    for g in range(len(needed) * n_layers):
        load: dict = {}
        for h, s in issued_at.items():
            if s <= g <= h:
                t, l = divmod(h, n_layers)
                key = None if partition == "global" else l
                load[key] = load.get(key, 0) + len(needed[t][l])
        for key, n in load.items():
            worst[key] = max(worst.get(key, 0), n)
    return worst


def smallest_budget(d_ff: list[int], partition: str, need: dict) -> str:
    """The smallest budget in thousandths whose capacities hold ``need`` in every partition."""
    for k in range(1, 1001):
        b = f"{k / 1000:.3f}"
        caps = capacities(b, d_ff, partition)
        if all(caps[key] >= n for key, n in need.items()):
            return b
    return "1"


@SETTINGS
@given(trace=traces(), cache=st.sampled_from(POLICIES), partition=st.sampled_from(("global", "per-layer")),
       schedule=st.sampled_from(("layer", "token")), two_phase=st.booleans())
def test_oracle_with_room_for_outstanding_predictions_never_misses(instant_profile, trace, cache, partition, schedule,
                                                                    two_phase):
    two_phase = two_phase and trace.model["glu"]
    needed = true_sets(trace.masks, trace.d_ff)
    need = outstanding_need(needed, trace.n_layers, schedule, partition)
    budget = smallest_budget(trace.d_ff, partition, need)
    record = run(instant_profile, trace, "oracle", cache, partition, budget, schedule, two_phase)
    assert record["demand_misses"] == 0, (budget, need)
    assert math.isclose(record["ffn_storage_bytes"], record["useful_bytes"])
