"""An independent reference model of the neuron cache under the residency contract.

``docs/simulator.md``, section "Residency contract", is the specification; this file is a second,
deliberately naive implementation of it, used by ``tests/test_differential.py`` and
``tests/test_residency_properties.py`` to hold the engine to the contract. It shares no code with
``sparsesim.simulator``'s engine, cache, replacement policies or metrics: one unit at a time,
Python sets and dicts of ``(layer, index)``, explicit loops, slow on purpose. Masks are unpacked
with plain numpy. The only project code it calls is the public predictor registry (predictors are
policies, not the engine), ``simulate``'s parser of ``name:key=value`` specs and the trace reader.

Timing is "instant storage": every prefetch batch issued at the start of a step arrives during
that step's non-FFN work, in issue order, so late hits are always 0 and the contract's event
order holds exactly:

    1. issue   2. arrivals   3. lookup   4. demand fill   5. use, expire   6. FFN end

Expert units (an MoE trace's routed experts, of sizes that differ per layer) are modelled with
capacity in weight: a unit of layer l weighs its bytes over the greatest common divisor of every
layer's unit bytes (1 for every neuron), the global pool holds units whose weights sum to at most
its capacity, a per-layer partition counts its own units; the budget is a share of every unit's
bytes or, for experts, a cache size in bytes (``Config.budget_kind="cache_budget"``). Traces with
prefill batches (a ``phase`` column) are not modelled.

Not modelled: ``prefetch_cap``, ``warm``, ``warmup``, ``reorder`` (``Config`` has no field for
them), bypass by value (``lru:bypass=true``) and budgets in bytes for neuron traces
(``NotImplementedError``).
Reading choices where the contract is silent are marked ``READING`` below and listed in
``docs/validation.md``.
"""

from __future__ import annotations

import bisect
import heapq
import math
from collections import OrderedDict
from dataclasses import dataclass
from fractions import Fraction
from typing import Iterable

import numpy as np

Unit = tuple[int, int]   # (layer, index)

# Bytes per weight, as docs/simulator.md's scenario table states them (exact fractions).
BYTES_PER_WEIGHT = {"fp32": Fraction(4), "fp16": Fraction(2), "bf16": Fraction(2),
                    "int8": Fraction(34, 32), "int4": Fraction(18, 32)}

# The per-layer counters, named as the engine's record names them in its ``per_layer`` JSON.
COUNTERS = ("accesses", "hits", "late", "gate_hits", "misses", "evictions", "expired",
            "prefetch_requested", "prefetch_issued", "prefetch_no_room", "prefetch_useful", "prefetch_useless",
            "prefetch_bypassed", "prefetch_unused_at_end", "prefetch_gate_dropped", "second_phase_units",
            "pollution_units", "pollution_misses", "demand_units", "prefetch_units",
            "inserted", "pred_tp", "pred_fp", "pred_fn")

POLICIES = ("lru", "fifo", "lfu", "window", "static-pin", "belady")


class Refused(Exception):
    """The contract refuses this configuration (the engine must refuse it too)."""


# ------------------------------------------------------------------------------------------------
# Inputs: sets from packed masks, capacity from the budget


def unpack_set(row: np.ndarray, d_ff: int) -> frozenset[int]:
    """Indices set in one packed little-endian mask row (bits beyond ``d_ff`` ignored)."""
    bits = np.unpackbits(np.asarray(row, dtype=np.uint8), bitorder="little", count=d_ff)
    return frozenset(int(i) for i in np.flatnonzero(bits))


def true_sets(masks: np.ndarray, d_ff: list[int]) -> list[list[frozenset[int]]]:
    """[token][layer] -> the trace's active indices."""
    return [[unpack_set(masks[t, l], d) for l, d in enumerate(d_ff)] for t in range(masks.shape[0])]


def decimal_fraction(value) -> Fraction:
    """A budget as the decimal it was written as: 0.35 -> 7/20 (never the binary float)."""
    return Fraction(str(value))


def capacities(budget, d_ff: list[int], partition: str, weights: list[int] | None = None,
               cache_bytes: Fraction | None = None, weight_bytes: Fraction = Fraction(1)) -> dict:
    """Capacity per partition. With W = Σ U_l · w_l (every unit's weight; w = 1 for neurons):
    C = floor(b · W), or for a cache size in bytes C = min(floor(bytes / weight_bytes), W), a weight;
    per-layer C_l = floor(C · U_l / W) units of layer l. Keys: None for the global pool, else the layer."""
    weights = weights or [1] * len(d_ff)
    total = sum(d * w for d, w in zip(d_ff, weights))
    if cache_bytes is not None:
        c = min(math.floor(cache_bytes / weight_bytes), total)
    else:
        b = decimal_fraction(budget)
        if b <= 0:
            raise Refused(f"dram_budget {budget}: must be > 0")
        if b > 1:
            raise NotImplementedError("budgets in bytes (> 1) are not modelled")
        c = math.floor(b * total)
    if partition == "global":
        return {None: c}
    if partition == "per-layer":
        return {l: (c * d) // total for l, d in enumerate(d_ff)}
    raise ValueError(partition)


def unit_weights(unit_bytes: list[Fraction], d_ff: list[int]) -> tuple[list[int], Fraction]:
    """Each layer's unit weight and the bytes of one weight: the gcd of the layers' unit bytes."""
    sizes = [b for b, d in zip(unit_bytes, d_ff) if d]
    den = math.lcm(*(b.denominator for b in sizes))
    g = Fraction(math.gcd(*(int(b * den) for b in sizes)), den)
    return [int(b / g) if d else 1 for b, d in zip(unit_bytes, d_ff)], g


# ------------------------------------------------------------------------------------------------
# The schedule, as the contract writes it


def issue_plan(n_steps: int, n_layers: int, schedule: str, lookahead: int) -> dict[int, list[int]]:
    """step g -> targets h whose prediction is issued at the start of g, in increasing order."""
    plan: dict[int, list[int]] = {}
    if schedule == "none":
        return plan
    for h in range(n_steps):
        if schedule == "layer":
            g = max(h - lookahead, 0)
        elif schedule == "token":
            g = (h // n_layers) * n_layers
        else:
            raise ValueError(schedule)
        plan.setdefault(g, []).append(h)
    return {g: sorted(hs) for g, hs in plan.items()}


# ------------------------------------------------------------------------------------------------
# The model


@dataclass
class Entry:
    """A resident unit's history, all a policy key needs."""

    fill: int                  # step of the fill (-1: preloaded)
    last: int                  # step of the last fill or use
    uses: int = 0              # uses since the fill
    prefetched_unused: bool = False


@dataclass
class Result:
    per_layer: dict[str, list[int]]
    capacity: dict
    unit_bytes: list[Fraction]          # per layer
    gate_row_bytes: list[Fraction]      # per layer: what one prefetch reads of a unit
    preloaded_units: int = 0

    def total(self, name: str) -> int:
        return sum(self.per_layer[name])

    @property
    def ffn_storage_bytes(self) -> Fraction:
        """(demand + prefetched) x unit bytes; with two-phase a prefetch reads a gate row and the
        second phase the rest of the unit (docs/metrics.md, ffn_storage_bytes)."""
        return sum((self.layer_bytes(l) for l in range(len(self.unit_bytes))), Fraction(0))

    def layer_bytes(self, layer: int) -> Fraction:
        p = self.per_layer
        b, g = self.unit_bytes[layer], self.gate_row_bytes[layer]
        return p["demand_units"][layer] * b + p["prefetch_units"][layer] * g + p["second_phase_units"][layer] * (b - g)


class ReferenceCache:
    """The residency contract, one unit at a time."""

    def __init__(self, n_layers: int, d_ff: list[int], needed: list[list[frozenset[int]]], truth,
                 policy: str, params: dict, partition: str, capacity: dict, two_phase: bool,
                 pinned: frozenset[Unit] = frozenset(), weights: list[int] | None = None):
        self.L = n_layers
        self.d_ff = d_ff
        self.weights = weights or [1] * n_layers
        self.needed = needed            # [t][l] -> indices the FFN computes (every unit for dense)
        self.truth = truth              # [t][l] -> the trace's mask (predictor accuracy)
        self.policy = policy
        self.window_k = int(params.get("k", 4))
        self.partition = partition
        self.capacity = capacity
        self.two_phase = two_phase
        self.pinned = pinned
        self.resident: dict[Unit, Entry] = {}
        self.staged: dict[Unit, int] = {}    # gate row arrived, unit not cached -> its target step
        self.predicted: dict[int, frozenset[Unit]] = {}   # target step -> P(h), until h's FFN ends
        self.in_use: frozenset[Unit] = frozenset()
        self.displaced_by_prefetch: set[Unit] = set()
        self.counts = {name: [0] * n_layers for name in COUNTERS}
        self._uses_at: dict[Unit, list[int]] = {}      # for belady: the steps needing each unit
        if policy == "belady":
            for t, row in enumerate(needed):
                for l, s in enumerate(row):
                    for i in s:
                        self._uses_at.setdefault((l, i), []).append(t * n_layers + l)

    # -- bookkeeping -----------------------------------------------------------------------------

    def count(self, name: str, layer: int, n: int = 1) -> None:
        self.counts[name][layer] += n

    def part(self, unit: Unit):
        return None if self.partition == "global" else unit[0]

    def residents_of(self, part) -> list[Unit]:
        return [u for u in self.resident if self.part(u) == part]

    def size(self, unit: Unit) -> int:
        """What a unit takes of its partition: its layer's weight in the global pool, 1 in a layer's own."""
        return self.weights[unit[0]] if self.partition == "global" else 1

    def taken(self, units) -> int:
        return sum(self.size(u) for u in units)

    def free_room(self, part) -> int:
        return self.capacity[part] - self.taken(self.residents_of(part))

    def evict_in_order(self, order: list[Unit], room: int, by_prefetch: bool) -> None:
        """Evict from the front of ``order`` until their sizes add up to ``room``."""
        freed = 0
        for victim in order:
            if freed >= room:
                break
            self.evict(victim, by_prefetch)
            freed += self.size(victim)

    def predicted_units(self) -> set[Unit]:
        out: set[Unit] = set()
        for s in self.predicted.values():
            out |= s
        return out

    def step_needs(self, g: int) -> frozenset[Unit]:
        t, l = divmod(g, self.L)
        return frozenset((l, i) for i in self.needed[t][l])

    # -- the policy's order (smallest key evicted first) -----------------------------------------

    def key(self, unit: Unit, g: int) -> tuple:
        e = self.resident[unit]
        layer, index = unit
        if self.policy in ("lru", "window"):
            return (e.last, layer, index)
        if self.policy == "fifo":
            return (e.fill, layer, index)
        if self.policy == "lfu":
            return (e.uses, e.last, layer, index)
        if self.policy == "static-pin":
            return (1, layer, index) if unit in self.pinned else (0, e.last, layer, index)
        if self.policy == "belady":
            return (-self.next_use(unit, g), -layer, index)
        raise ValueError(self.policy)

    def next_use(self, unit: Unit, g: int) -> float:
        """First step >= g needing the unit. READING: g's FFN has not started when any victim of
        step g is chosen, so g itself counts (it matters for an arrival evicting a unit that g
        needs but did not predict)."""
        steps = self._uses_at.get(unit, [])
        i = bisect.bisect_left(steps, g)
        return steps[i] if i < len(steps) else math.inf

    # -- insertion and eviction ------------------------------------------------------------------

    def evict(self, unit: Unit, by_prefetch: bool) -> None:
        assert unit not in self.in_use, f"{unit} evicted while in use"
        e = self.resident.pop(unit)
        self.count("evictions", unit[0])     # READING: attributed to the evicted unit's layer
        # READING: "a predicted unit evicted [by a demand insertion] is a prefetch evicted unused
        # (pollution)" counts only units a prefetch brought in and nothing used since, so that
        # prefetch_issued = useful + useless + unused at end + bypassed + gate-dropped holds.
        if e.prefetched_unused:
            self.count("prefetch_useless", unit[0])
            self.count("pollution_units", unit[0])
        if by_prefetch:
            self.displaced_by_prefetch.add(unit)

    def insert_prefetch(self, layer: int, units: list[int], g: int) -> None:
        """An arrival: may evict only units neither in use nor predicted; bypasses what cannot fit."""
        part = self.part((layer, 0))
        free = self.free_room(part)
        protected = self.in_use | self.predicted_units()
        candidates = [u for u in self.residents_of(part) if u not in protected]
        w = self.size((layer, 0))
        need = len(units) * w - free
        if need > self.taken(candidates):
            fit = (free + self.taken(candidates)) // w
            self.count("prefetch_bypassed", layer, len(units) - fit)
            units = sorted(units)[:fit]
            need = self.taken(candidates)
        self.evict_in_order(sorted(candidates, key=lambda u: self.key(u, g)), need, by_prefetch=True)
        for i in units:
            self.resident[(layer, i)] = Entry(fill=g, last=g, uses=0, prefetched_unused=True)
        self.count("inserted", layer, len(units))

    def insert_demand(self, layer: int, units: list[int], g: int, prefetched: bool = False) -> None:
        """Units the FFN needs now: evict units not in use, unpredicted ones first."""
        part = self.part((layer, 0))
        need = len(units) * self.size((layer, 0)) - self.free_room(part)
        if need > 0:
            predicted = self.predicted_units()
            free_tier = [u for u in self.residents_of(part) if u not in self.in_use and u not in predicted]
            predicted_tier = [u for u in self.residents_of(part) if u not in self.in_use and u in predicted]
            order = (sorted(free_tier, key=lambda u: self.key(u, g))
                     + sorted(predicted_tier, key=lambda u: self.key(u, g)))
            if self.taken(order) < need:
                raise AssertionError(f"step {g}: a demand insertion of {len(units)} units cannot make room "
                                     f"(capacity {self.capacity[part]}); the budget check should have refused")
            self.evict_in_order(order, need, by_prefetch=False)
        for i in units:
            self.resident[(layer, i)] = Entry(fill=g, last=g, uses=0, prefetched_unused=False)
        self.count("inserted", layer, len(units))

    # -- one step --------------------------------------------------------------------------------

    def issue(self, g: int, h: int, p_indices: frozenset[int] | None, batches: list) -> None:
        """P(h) is predicted (and protected from now on); of the units neither resident, in flight
        nor staged, only as many as the partition could keep are issued: K = capacity - |claims|
        + |fetch|, claims = the partition's protected or in-flight units, P(h) included."""
        t, l = divmod(h, self.L)
        p = frozenset((l, i) for i in (p_indices or ()))
        if p_indices is not None:
            truth = self.truth[t][l]
            self.count("pred_tp", l, len(p_indices & truth))
            self.count("pred_fp", l, len(p_indices - truth))
            self.count("pred_fn", l, len(truth - p_indices))
        self.predicted[h] = p
        self.count("prefetch_requested", l, len(p))
        in_flight = {(bl, i) for _, bl, units in batches for i in units}
        fetch = sorted(i for (_, i) in p if (l, i) not in self.resident and (l, i) not in in_flight
                       and (l, i) not in self.staged)
        if not self.two_phase:   # gate rows go to the staging buffer, which the capacity does not bound
            part = self.part((l, 0))
            claims = {u for u in self.in_use | self.predicted_units() | in_flight if self.part(u) == part}
            # K = floor((capacity - claims) / w) + |fetch| (claims include P(h), so its fetch set too)
            keep = max((self.capacity[part] - self.taken(claims)) // self.size((l, 0)) + len(fetch), 0)
            self.count("prefetch_no_room", l, len(fetch[keep:]))
            fetch = fetch[:keep]
        self.count("prefetch_issued", l, len(fetch))
        self.count("prefetch_units", l, len(fetch))
        if fetch:
            batches.append((h, l, fetch))

    def arrive(self, g: int, batches: list) -> None:
        for h, layer, units in batches:
            if self.two_phase:
                self.staged.update({(layer, i): h for i in units})
            else:
                self.insert_prefetch(layer, units, g)

    def compute(self, g: int) -> None:
        """Lookup, demand fill, use, expiry and the end of the FFN of step g."""
        t, l = divmod(g, self.L)
        need = self.step_needs(g)
        self.in_use = need
        misses, gate_hits = [], []
        for unit in sorted(need):
            self.count("accesses", l)
            if unit in self.resident:
                self.count("hits", l)
                e = self.resident[unit]
                if e.prefetched_unused:
                    self.count("prefetch_useful", l)
                    e.prefetched_unused = False
            elif unit in self.staged:
                self.count("gate_hits", l)
                self.count("prefetch_useful", l)
                self.count("second_phase_units", l)
                gate_hits.append(unit[1])
            else:
                self.count("misses", l)
                self.count("demand_units", l)
                if unit in self.displaced_by_prefetch:
                    self.count("pollution_misses", l)
                misses.append(unit[1])
            self.displaced_by_prefetch.discard(unit)
        self.insert_demand(l, misses, g)
        if self.two_phase:
            self.insert_demand(l, gate_hits, g)
            # The contract (step 4): a staged gate row is evaluated at the FFN of its target step,
            # or at the first FFN of its layer after that (it landed late), and dropped there if
            # inactive; one staged for a later step of this layer (lookahead >= L) waits for it.
            for unit in need:
                self.staged.pop(unit, None)
            dropped = [u for u, h in self.staged.items() if h <= g and u[0] == l]
            self.count("prefetch_gate_dropped", l, len(dropped))
            for unit in dropped:
                del self.staged[unit]
        for unit in need:   # on_access: a use stamped with this step
            e = self.resident[unit]     # KeyError here = a unit computed while not resident
            e.last = g
            e.uses += 1
        if self.policy == "window":
            protected = self.in_use | self.predicted_units()
            # READING: "filled or used in tokens t-k+1 .. t" reads the step of the last fill or use.
            for unit in [u for u in self.resident if u[0] == l]:
                if unit not in protected and self.resident[unit].last // self.L < t - self.window_k + 1:
                    self.count("expired", l)
                    self.evict(unit, by_prefetch=False)
        self.in_use = frozenset()
        self.predicted.pop(g, None)

    def finish(self) -> None:
        for unit, e in self.resident.items():
            if e.prefetched_unused:
                self.count("prefetch_unused_at_end", unit[0])
        for unit in self.staged:
            self.count("prefetch_unused_at_end", unit[0])


# ------------------------------------------------------------------------------------------------
# Configuration and the replay


@dataclass(frozen=True)
class Config:
    predictor: str = "oracle"
    cache: str = "lru"
    partition: str = "global"
    budget: float | str = 0.25
    schedule: str = "layer"
    lookahead: int = 1
    two_phase: bool = False
    precision: str = "fp16"
    seed: int = 0
    budget_kind: str = "dram_budget"     # or "cache_budget": the cache's size in bytes (expert traces)

    def settings(self) -> list[str]:
        """The same configuration as ``simulate(settings=...)`` overrides."""
        return [f"{self.budget_kind}={self.budget}", f"partition={self.partition}", f"schedule={self.schedule}",
                f"lookahead={self.lookahead}", f"two_phase={str(self.two_phase).lower()}",
                f"precision={self.precision}"]


def make_predictor(trace, spec: str, train=None, seed: int = 0):
    """A registered predictor set up exactly as ``simulate()`` sets one up."""
    from sparsesim.simulator.predictors import PREDICTORS, PredictorContext
    from sparsesim.simulator.simulate import parse_policy

    name, params = parse_policy(spec)
    pred = PREDICTORS.create(name, params)
    pred.setup(PredictorContext.of(trace, train, seed))
    return pred


def causal_view(trace, predictor):
    """The predictor's view of the trace; ``frontier`` is set to the issue step before each call."""
    from sparsesim.simulator.predictors import CausalView

    return CausalView(trace.masks, trace.token, allow_future=predictor.sees_future)


def pinned_set(profile_masks: np.ndarray, d_ff: list[int], capacity: dict, need: dict, share,
               weights: list[int] | None = None) -> frozenset[Unit]:
    """READING of static-pin: the hottest units of the profiling masks (count of tokens active,
    ties to the lowest (layer, index), never-active units not pinned) fill
    floor(share x (capacity - largest needed set of one step)) of each partition; in the global
    pool sizes are weights, and the hottest are taken while they fit."""
    weights = weights or [1] * len(d_ff)
    share = decimal_fraction(share)
    counts = {}
    for l, d in enumerate(d_ff):
        bits = np.unpackbits(profile_masks[:, l], axis=-1, bitorder="little", count=d).sum(axis=0)
        for i in range(d):
            counts[(l, i)] = int(bits[i])
    pinned = set()
    for part, cap in capacity.items():
        room = math.floor(share * (cap - need[part]))
        pool = [u for u in counts if (part is None or u[0] == part) and counts[u] > 0]
        pool.sort(key=lambda u: (-counts[u], u))
        taken = 0
        for u in pool:
            size = weights[u[0]] if part is None else 1
            if taken + size > room:
                break
            pinned.add(u)
            taken += size
    return frozenset(pinned)


def replay(trace, config: Config, *, train=None, profile_trace=None) -> Result:
    """Replay ``trace`` (a :class:`sparsesim.tracefile.Trace`) under ``config`` by the contract."""
    model = trace.model
    L, d_ff = trace.n_layers, trace.d_ff
    w = BYTES_PER_WEIGHT[config.precision]
    units = trace.units
    if units.kind == "expert":   # routed experts as recorded (or their parameters x precision)
        if config.two_phase:
            raise Refused("two_phase: an expert is read whole")
        if trace.phase is not None:
            raise NotImplementedError("prefill batches are not modelled")
        unit_bytes = [Fraction(units.unit_bytes[l]) if units.unit_bytes[l] is not None
                      else Fraction(units.unit_params[l]) * w if d_ff[l] else Fraction(0) for l in range(L)]
        gate_row_bytes = unit_bytes
    else:
        d_model, glu = int(model["d_model"]), bool(model.get("glu", True))
        rows = 3 if glu else 2
        unit_bytes = [rows * d_model * w] * L
        gate_row_bytes = [d_model * w] * L if config.two_phase else unit_bytes
        if config.two_phase and not glu:
            raise Refused("two_phase needs a gated FFN")
    weights, weight_bytes = unit_weights(unit_bytes, d_ff)
    from sparsesim.simulator.simulate import parse_policy

    cache_name, cache_params = parse_policy(config.cache)
    if cache_name not in POLICIES:
        raise NotImplementedError(f"policy {config.cache}")
    if cache_params.get("bypass"):
        raise NotImplementedError("bypass by value is not modelled")

    pred = make_predictor(trace, config.predictor, train, config.seed)
    truth = true_sets(np.asarray(trace.masks), d_ff)
    T = len(truth)
    needed = [[frozenset(range(d)) for d in d_ff] for _ in range(T)] if pred.dense else truth

    cache_bytes = decimal_fraction(config.budget) if config.budget_kind == "cache_budget" else None
    capacity = capacities(config.budget, d_ff, config.partition, weights, cache_bytes, weight_bytes)
    if config.partition == "global":
        need = {None: max(len(s) * weights[l] for row in needed for l, s in enumerate(row))}
    else:
        need = {l: max(len(needed[t][l]) for t in range(T)) for l in range(L)}
    for part, cap in capacity.items():
        if cap < need[part]:
            raise Refused(f"partition {part}: capacity {cap} < largest needed set {need[part]}")

    pinned = frozenset()
    if cache_name == "static-pin":
        source = profile_trace if profile_trace is not None else trace
        pinned = pinned_set(np.asarray(source.masks), d_ff, capacity, need, cache_params.get("share", 1.0), weights)
    cache = ReferenceCache(L, d_ff, needed, truth, cache_name, cache_params, config.partition, capacity,
                           config.two_phase, pinned, weights)
    for unit in sorted(pinned):
        cache.resident[unit] = Entry(fill=-1, last=-1)

    view = causal_view(trace, pred)
    plan = issue_plan(T * L, L, config.schedule, config.lookahead)
    for g in range(T * L):
        batches: list = []
        for h in plan.get(g, ()):
            view.frontier = g
            t_h, l_h = divmod(h, L)
            row = pred.predict(view, t_h, l_h)       # CausalityError (an InputError) refuses the run
            p = frozenset(range(d_ff[l_h])) if pred.dense else (
                None if row is None else unpack_set(row, d_ff[l_h]))
            cache.issue(g, h, p, batches)
        cache.arrive(g, batches)
        cache.compute(g)
    cache.finish()
    return Result(per_layer=cache.counts, capacity=capacity, unit_bytes=unit_bytes,
                  gate_row_bytes=gate_row_bytes, preloaded_units=len(pinned))


# ------------------------------------------------------------------------------------------------
# Flat caches over the request sequence (no steps, no protection): the bound and libCacheSim's view


def request_sequence(sets: list[list[frozenset[int]]]) -> list[tuple[int, Unit]]:
    """(step, unit) for every needed unit: steps in order, each step's units in index order."""
    L = len(sets[0]) if sets else 0
    return [(t * L + l, (l, i)) for t, row in enumerate(sets) for l, s in enumerate(row) for i in sorted(s)]


def flat_min_misses(requests: list[tuple[int, Unit]], capacity: int) -> int:
    """Bélády's MIN under demand paging from a cold cache (the bound of every loading schedule)."""
    return flat_replay(requests, capacity, "belady").misses


def next_request_positions(units: list[Unit]) -> list[float]:
    """For each position, the position of the same unit's next request (inf: none)."""
    out = [math.inf] * len(units)
    last: dict[Unit, int] = {}
    for pos in range(len(units) - 1, -1, -1):
        out[pos] = last.get(units[pos], math.inf)
        last[units[pos]] = pos
    return out


@dataclass
class FlatResult:
    misses: int
    requests: int
    same_step_evictions: int = 0   # a victim that its own step requests (a protected cache never does this)


def flat_replay(requests: list[tuple[int, Unit]], capacity: int, policy: str) -> FlatResult:
    """A textbook flat cache of ``capacity`` units: lru, fifo, lfu (ties: least recently
    used/promoted, as libCacheSim's LFU) or belady (MIN). One request at a time, no protection."""
    if policy == "belady":
        return _flat_belady(requests, capacity)
    step_units = _step_units(requests)
    order: OrderedDict[Unit, None] = OrderedDict()    # lru/fifo: eviction order, front first
    freq: dict[Unit, int] = {}
    stamp: dict[Unit, int] = {}                       # lfu tie order: when its frequency last changed
    heap: list[tuple[int, int, Unit]] = []            # lfu: (freq, stamp, unit), stale entries skipped
    out = FlatResult(misses=0, requests=len(requests))
    for clock, (step, unit) in enumerate(requests):
        hit = unit in order if policy in ("lru", "fifo") else unit in freq
        if hit:
            if policy == "lru":
                order.move_to_end(unit)
            elif policy == "lfu":
                freq[unit] += 1
                stamp[unit] = clock
                heapq.heappush(heap, (freq[unit], clock, unit))
            continue
        out.misses += 1
        size = len(order) if policy in ("lru", "fifo") else len(freq)
        if size >= capacity:
            if policy in ("lru", "fifo"):
                victim, _ = order.popitem(last=False)
            else:
                while True:   # the smallest (freq, stamp) still current
                    f, s, victim = heapq.heappop(heap)
                    if freq.get(victim) == f and stamp[victim] == s:
                        break
                del freq[victim], stamp[victim]
            if victim in step_units[step]:
                out.same_step_evictions += 1
        if policy in ("lru", "fifo"):
            order[unit] = None
        else:
            freq[unit] = 1
            stamp[unit] = clock
            heapq.heappush(heap, (1, clock, unit))
    return out


def _flat_belady(requests: list[tuple[int, Unit]], capacity: int) -> FlatResult:
    """On a miss with the cache full, evict the resident unit whose next request is farthest
    (never again: first)."""
    nxt = next_request_positions([u for _, u in requests])
    step_units = _step_units(requests)
    resident: dict[Unit, int] = {}
    heap: list[tuple[float, Unit]] = []
    out = FlatResult(misses=0, requests=len(requests))
    for pos, (step, unit) in enumerate(requests):
        if unit not in resident:
            out.misses += 1
            if len(resident) >= capacity:
                while True:   # lazy deletion: skip stale heap entries
                    neg_next, victim = heapq.heappop(heap)
                    if resident.get(victim) == -neg_next:
                        del resident[victim]
                        break
                if victim in step_units[step]:
                    out.same_step_evictions += 1
        resident[unit] = nxt[pos]
        heapq.heappush(heap, (-nxt[pos], unit))
    return out


def _step_units(requests: list[tuple[int, Unit]]) -> dict[int, set[Unit]]:
    out: dict[int, set[Unit]] = {}
    for step, unit in requests:
        out.setdefault(step, set()).add(unit)
    return out


def units_of(sets: Iterable[Iterable[frozenset[int]]]) -> int:
    return sum(len(s) for row in sets for s in row)
