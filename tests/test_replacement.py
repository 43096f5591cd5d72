"""One hand-computed case per replacement policy (ChampSim 4xx style), via the real engine.

Shared trace (1 layer, 8 neurons, capacity 3, no prediction, demand fills only), needed sets per
token: t0 {0,1}, t1 {2}, t2 {0,3}, t3 {1}, t4 {2,3}, t5 {1}. Victims are chosen among resident
neurons not needed at that step; ties go to the lowest index.
"""

from __future__ import annotations

import numpy as np
import pytest

from sparsesim.errors import InputError
from sparsesim.simulator.predictors import PREDICTORS, Predictor
from sparsesim.simulator.replacement import REPLACEMENT, CacheGeometry
from sparsesim.simulator.replacement.keyed import KeyedReplacement
from sparsesim.simulator.simulate import simulate
from tracebuild import write_trace

SETS = [{0, 1}, {2}, {0, 3}, {1}, {2, 3}, {1}]


def _trace(tmp_path, sets, d=8):
    active = np.zeros((len(sets), 1, d), dtype=bool)
    for t, s in enumerate(sets):
        active[t, 0, sorted(s)] = True
    return write_trace(tmp_path / "hand.parquet", active, d_model=16)


def _run(path, cache, budget=3 / 8, predictor="none", **extra):
    settings = [f"dram_budget={budget}", *[f"{k}={v}" for k, v in extra.items()]]
    return simulate(path, "apple-m1-max", predictor, cache, settings=settings, baselines=False)


@pytest.mark.parametrize("cache, hits, misses, evictions", [
    # LRU: t2 evicts 1 (last used t0) over 2 (t1); t3 evicts 2; t4 evicts 0; t5 hits 1.
    ("lru", 3, 6, 3),
    # FIFO: t2 evicts 1 (in at t0, index below 2? no: 0 and 1 entered at t0, 0 is needed) -> 1;
    # t3 evicts 0 (oldest entry); t4 hits 2 and 3; t5 hits 1.
    ("fifo", 4, 5, 2),
    # LFU: t2 evicts 1 (1 use, older than 2); t3 evicts 2 (1 use, older than 3); t4 evicts 1
    # (1 use) over 0 (2 uses); t5 misses 1.
    ("lfu", 2, 7, 4),
    # Belady starts cold: t0, t1 miss {0,1,2}; t2 hits 0, 3 evicts 2 (next use t4) over 1 (t3);
    # t3 hits 1; t4 hits 3, 2 evicts 0 (never used again) over 1 (t5); t5 hits 1.
    ("belady", 4, 5, 2),
    # static-pin: pins the hottest neuron, 1 (3 uses), preloaded; room for the largest needed set
    # (2) leaves 1 pinned slot. t0 hits 1; t2 evicts 2 (cold); t3 hits 1; t4 evicts 0; t5 hits 1.
    ("static-pin", 5, 4, 2),
])
def test_policy_by_hand(tmp_path, cache, hits, misses, evictions):
    r = _run(_trace(tmp_path, SETS), cache)
    assert (r["hits"], r["demand_misses"], r["evictions"]) == (hits, misses, evictions)


def test_window_expires_neurons_unused_for_k_tokens(tmp_path):
    """window k=2, ample capacity (8): after token t, neurons last used at <= t-2 leave.
    t2 drops 1 (used t0); t3 drops 2 (used t1); t4 drops 0 (used t2); t5 hits 1 (used t3).
    Hits: t2 0, t4 3, t5 1 = 3; misses 6; 3 expirations, no capacity evictions."""
    r = _run(_trace(tmp_path, SETS), "window:k=2", budget=1.0)
    assert (r["hits"], r["demand_misses"], r["expired"], r["evictions"]) == (3, 6, 3, 3)


def test_belady_loads_no_more_than_any_online_policy(tmp_path):
    """Demand paging: units loaded = demand misses + units placed before decoding (static-pin's
    pinned set is free knowledge of the trace, so it must count)."""
    rng = np.random.default_rng(3)
    base = rng.random((1, 2, 64)) < 0.15
    active = np.where(rng.random((60, 2, 64)) < 0.6, base, rng.random((60, 2, 64)) < 0.15)
    path = write_trace(tmp_path / "r.parquet", active, d_model=32)
    for budget in (0.3, 0.5, 0.7):
        loaded = {c: (r := _run(path, c, budget=budget))["demand_misses"] + r["preloaded_units"]
                  for c in ("lru", "fifo", "lfu", "window:k=3", "static-pin", "belady")}
        assert loaded["belady"] == min(loaded.values()), (budget, loaded)


class FixedGuess(Predictor):
    """Predicts neurons 6 and 7 for token 0 only (for the pollution accounting test)."""

    def predict(self, view, token, layer):
        return np.array([0b11000000], dtype=np.uint8) if token == 0 else None


if "test-fixed-guess" not in PREDICTORS.names():
    PREDICTORS.register("test-fixed-guess")(FixedGuess)


def test_useless_prefetch_and_pollution(tmp_path):
    """Capacity 4, lookahead 0, needed t0 {0,1}, t1 {0,2}, t2 {0,1}; prediction {6,7} for t0 only.
    t0: prefetch {6,7} is served first and fills; demand {0,1} fills (cache {0,1,6,7}, stamps 0).
    t1: {6,7} are no longer protected (t0's FFN ended); 2 misses and evicts 1 (all stamps 0, lowest index).
    t2: 1 misses and evicts 6 (stamp 0, lowest index; 2 has 1), a prefetch never used: useless,
    pollution. At the end 7 is still unused. Hits: t1 0, t2 0."""
    path = _trace(tmp_path, [{0, 1}, {0, 2}, {0, 1}])
    r = _run(path, "lru", budget=0.5, predictor="test-fixed-guess", lookahead=0)
    assert (r["hits"], r["demand_misses"], r["evictions"]) == (2, 4, 2)
    assert (r["prefetch_issued"], r["prefetch_useful"], r["prefetch_useless"], r["prefetch_unused_at_end"]) \
        == (2, 0, 1, 1)
    assert r["pollution_bytes"] == pytest.approx(1 * 3 * 16 * 2.0)   # one neuron: 3 rows of 16 fp16
    assert r["wasted_bytes"] == pytest.approx(2 * 3 * 16 * 2.0)


def test_window_of_zero_is_refused(tmp_path):
    with pytest.raises(InputError, match="window k must be an integer >= 1"):
        _run(_trace(tmp_path, SETS), "window:k=0")


def test_budget_too_small_names_the_minimum(tmp_path):
    with pytest.raises(InputError, match=r"minimum for this trace and predictor is 0\.2500 of the FFN"):
        _run(_trace(tmp_path, SETS), "lru", budget=0.125)


def test_unknown_policy_lists_the_known_ones(tmp_path):
    with pytest.raises(InputError, match="unknown replacement policy 'lruu'.*did you mean 'lru'.*known: belady"):
        _run(_trace(tmp_path, SETS), "lruu")


class PlainLRU(KeyedReplacement):
    """LRU by a per-neuron last-use key and a selection over every candidate: the reference the
    recency classes of ``lru`` must match exactly (same tie rules: layer, then index)."""

    def on_fill(self, layer, step, filled, prefetch):
        self.key[layer][self._bits(filled)] = step

    def on_access(self, layer, step, used):
        self.key[layer][self._bits(used)] = step


if "test-plain-lru" not in REPLACEMENT.names():
    REPLACEMENT.register("test-plain-lru")(PlainLRU)


@pytest.mark.parametrize("predictor", ["none", "oracle", "noisy-oracle:fn=0.2,fp=0.3"])
@pytest.mark.parametrize("partition", ["global", "per-layer"])
def test_lru_recency_classes_match_a_per_neuron_key(tmp_path, predictor, partition):
    """Small budgets and non-FFN weights streamed from flash make prefetches arrive late or be
    bypassed, so needed neurons are used while not resident: where a class structure can go stale."""
    rng = np.random.default_rng(5)
    base = rng.random((1, 4, 96)) < 0.2
    active = np.where(rng.random((50, 4, 96)) < 0.5, base, rng.random((50, 4, 96)) < 0.2)
    path = write_trace(tmp_path / "g.parquet", active, d_model=32)
    for budget in ((0.15, 0.4) if partition == "global" else (0.35, 0.5)):
        for extra in ({}, {"warm": True, "nonffn_in": "flash"}):
            fast = _run(path, "lru", budget=budget, predictor=predictor, partition=partition, **extra)
            plain = _run(path, "test-plain-lru", budget=budget, predictor=predictor, partition=partition, **extra)
            for key in ("hits", "demand_misses", "evictions", "prefetch_bypassed", "time_per_token_s", "per_layer"):
                assert fast[key] == plain[key], (key, budget, extra)


class PlainBelady(KeyedReplacement):
    """Bélády by a per-unit key from a next-use table ``nu[t, l, i]`` (the first token >= t that
    needs unit i of layer l, T if none) and a selection over every candidate: the reference the
    next-use table of ``belady`` must match exactly. Key -(next use · L + layer): the farthest use
    goes first, the later layer first within a token, then the lowest index (the selection's tie rule)."""

    sees_future = True

    def __init__(self):
        super().__init__()

    def setup(self, geometry):
        super().setup(geometry)
        masks = np.unpackbits(np.asarray(geometry.masks), axis=-1, bitorder="little").astype(bool)
        T, L, W = masks.shape
        self.nu = np.full((T + 1, L, W), T, dtype=np.int64)
        for t in range(T - 1, -1, -1):
            self.nu[t] = np.where(masks[t], t, self.nu[t + 1])
        self.masks, self.done = masks, [-1] * L

    def _refile(self, layer, bits, token):
        self.key[layer][bits] = -(self.nu[token, layer][bits] * self.geometry.n_layers + layer)

    def on_fill(self, layer, step, filled, prefetch):
        self._refile(layer, self._bits(filled), self.done[layer] + 1)

    def on_access(self, layer, step, used):
        token = step // self.geometry.n_layers
        self.done[layer] = token
        # every resident unit whose next use was this FFN, computed or not, and every used one
        due = self.masks[token, layer] & (self.key[layer] != np.iinfo(np.int64).max)
        self._refile(layer, self._bits(used) | due, token + 1)


if "test-plain-belady" not in REPLACEMENT.names():
    REPLACEMENT.register("test-plain-belady")(PlainBelady)


@pytest.mark.parametrize("partition", ["global", "per-layer"])
@pytest.mark.parametrize("false_negatives", ["fetch", "drop"])
@pytest.mark.parametrize("tokens", [5, 37])
def test_belady_next_use_table_matches_a_per_unit_key(tmp_path, partition, false_negatives, tokens):
    """Under false_negatives=drop an FFN computes the predicted set: units it needed but did not
    compute keep a next use after it, and must stay evictable (the table once lost them). The
    table files by spans of 8 tokens: 5 tokens are one span, 37 end in a partial one."""
    rng = np.random.default_rng(7 + tokens)
    base = rng.random((1, 4, 96)) < 0.2
    active = np.where(rng.random((tokens, 4, 96)) < 0.5, base, rng.random((tokens, 4, 96)) < 0.2)
    path = write_trace(tmp_path / "b.parquet", active, d_model=32)
    for budget in ((0.15, 0.4) if partition == "global" else (0.35, 0.5)):
        args = dict(budget=budget, predictor="noisy-oracle:fn=0.3,fp=0.3", partition=partition,
                    false_negatives=false_negatives)
        fast, plain = _run(path, "belady", **args), _run(path, "test-plain-belady", **args)
        for key in ("hits", "demand_misses", "evictions", "prefetch_bypassed", "time_per_token_s", "per_layer"):
            assert fast[key] == plain[key], (key, budget)


class SometimesSeven(Predictor):
    """Predicts neuron 7, which is never needed, for tokens 0, 3 and 4 (for the bypass test)."""

    def predict(self, view, token, layer):
        return np.array([0b10000000], dtype=np.uint8) if token in (0, 3, 4) else None


if "test-sometimes-seven" not in PREDICTORS.names():
    PREDICTORS.register("test-sometimes-seven")(SometimesSeven)


@pytest.mark.parametrize("cache, expected", [
    ("lru", (1, 9, 2, 1, 1, 0)),
    ("lru:bypass=true", (2, 8, 3, 1, 0, 2)),
])
def test_bypass_refuses_a_neuron_whose_prefetches_died_unused(tmp_path, cache, expected):
    """Capacity 3, lookahead 0, prediction {7} (never needed) for t0, t3, t4; needed t0 {0,1},
    t1 {2,3}, t2 {0,1}, t3 {0,2}, t4 {1,3}. Every token has a miss, so a prefetch lands while the
    FFN waits (its needed set in use, the prediction protected). LRU keys are steps (1 layer:
    step = token); ties to the lowest index.
    t0: 7 lands in free room, {0,1} fill: {0,1,7}, all keys 0.
    t1: nothing predicted, so 7 is unprotected; 2, 3 evict 0, 1 (keys 0, lowest index): {2,3,7}.
    t2: 0, 1 evict 7 (key 0) and 2 (key 1): 7 was prefetched at step 0 and left unused for a whole
        token, so its prefetch record drops to -1. {0,1,3}.
    t3: 7 is prefetched again into a full cache. Plain LRU evicts 3 (key 1; 0 is in use) for it,
        then 2 evicts 1 (key 2): {0,2,7}. With bypass, 7's record is negative: bypassed; 2 evicts
        3: {0,1,2}.
    t4: plain: 7 resident and protected, 1 and 3 miss and evict 0, 2 (keys 3): hits 1 in all,
        misses 9; 7 left unused at the end. Bypass: 7 prefetched and bypassed again; 1 hits, 3
        evicts 0 (key 3, lowest index): hits 2, misses 8, 3 prefetches issued, 2 bypassed. Both:
        the t0 prefetch of 7 was useless.
    (hits, misses, issued, useless, unused at end, bypassed)."""
    path = _trace(tmp_path, [{0, 1}, {2, 3}, {0, 1}, {0, 2}, {1, 3}])
    r = _run(path, cache, predictor="test-sometimes-seven", lookahead=0)
    assert (r["hits"], r["demand_misses"], r["prefetch_issued"], r["prefetch_useless"],
            r["prefetch_unused_at_end"], r["prefetch_bypassed"]) == expected


def test_bypass_is_refused_where_it_has_no_meaning(tmp_path):
    with pytest.raises(InputError, match="unknown parameter 'bypass'"):
        _run(_trace(tmp_path, SETS), "belady:bypass=true")


class PlainLFU(KeyedReplacement):
    """LFU by a per-unit key (uses since the fill, then the step of the last fill or use)."""

    def on_fill(self, layer, step, filled, prefetch):
        self.key[layer][self._bits(filled)] = step + 1

    def on_access(self, layer, step, used):
        bits = self._bits(used)
        self.key[layer][bits] = ((self.key[layer][bits] >> 40) + 1 << 40) | (step + 1)


@pytest.mark.parametrize("name, plain", [("lru", PlainLRU), ("lfu", PlainLFU), ("belady", PlainBelady)])
@pytest.mark.parametrize("partition", ["global", "per-layer"])
def test_a_removal_the_policy_did_not_choose_is_forgotten(name, plain, partition):
    """The hook contract lets the engine remove units the policy did not choose (an expiry). A policy
    that cuts its victims out of its own order must not choose such units by their old place when
    they come back (LFU files a fill without looking for the unit elsewhere; LRU's stamp and
    Bélády's next use move or equal it anyway): removed, filled again, then chosen one at a time,
    the units go in the order of a per-unit key that forgets them by construction."""
    rng = np.random.default_rng(3)
    masks = np.packbits(rng.random((20, 2, 16)) < 0.4, axis=-1, bitorder="little")
    capacity = np.array([32]) if partition == "global" else np.array([16, 16])
    everything = (1 << 16) - 1

    def replay(policy) -> list[tuple[int, int]]:
        policy.setup(CacheGeometry(n_layers=2, d_ff=(16, 16), n_bytes=2, n_tokens=20, capacity=capacity,
                                   partition=partition, masks=masks))
        for layer in (0, 1):
            policy.on_fill(layer, -1, everything, False)
        for step in range(6):   # three tokens of use
            policy.on_access(step % 2, step, int.from_bytes(masks[step // 2, step % 2].tobytes(), "little"))
        policy.on_evict(1, 0b1111111000)   # units 3 .. 9 of layer 1 leave unchosen, then come back
        policy.on_fill(1, 6, 0b1111111000, False)
        left, chosen = [everything, everything], []
        for i in range(32):     # one unit at a time, until every unit has gone
            if partition == "global":
                (layer, unit), = policy.global_victims(7, 1, list(left)).items()
            else:
                layer = i % 2
                unit = policy.victims(layer, 7, 1, left[layer])
            policy.on_evict(layer, unit)
            left[layer] ^= unit
            chosen.append((layer, unit.bit_length() - 1))
        return chosen

    assert replay(REPLACEMENT.create(name)) == replay(plain())


