"""The replay: a simpy simulation of batch-1 decoding, token by token, layer by layer.

Timing model per (token, layer) — DESIGN §3, long form with formulas in ``docs/metrics.md``:

1. prefetches due at this step are issued (predictor cost, if any, is charged first);
2. non-FFN work: ``max(bytes / DRAM bandwidth, FLOPs / throughput)`` (or a flash read first when
   the non-FFN weights live in flash);
3. the FFN waits until every neuron it needs is resident: hits cost nothing, in-flight prefetches
   cost only their remaining time (late prefetch), the rest is one demand batch (a stall);
4. the FFN computes over the needed neurons only; filling/evicting the DRAM cache costs
   memory-management time.

Storage is one simpy ``PriorityResource``: one batch is served at a time, demand before prefetch
(non-preemptive), and one simpy event pair per batch — never per neuron. All neuron sets are
packed bit rows; counts are popcounts.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import simpy

from simulator import bitset
from simulator.cache import NeuronCache
from simulator.predictors import CausalView, Predictor
from simulator.scenario import ModelFootprint, Scenario
from simulator.storage import BackingStore, request_sizes

LAYER_COUNTERS = (
    "accesses", "hits", "late", "misses", "prefetch_requested", "prefetch_issued", "prefetch_useful",
    "prefetch_useless", "prefetch_unused_at_end", "evictions", "pollution_neurons", "pollution_misses",
    "demand_neurons", "prefetch_neurons", "requests", "request_bytes", "pred_tp", "pred_fp", "pred_fn",
    "inserted", "expired", "prefetch_bypassed", "prefetch_dropped",
    "gate_hits", "second_phase_neurons", "prefetch_gate_dropped",   # two-phase loading only
)


def ffn_read_bytes(c: dict[str, np.ndarray | int], neuron_bytes: float, prefetch_neuron_bytes: float):
    """FFN bytes read from storage, row-level: whole neurons on demand, what one prefetch reads per
    neuron (the whole neuron, or its gate row under two-phase loading) and the up/down rows read
    after a gate prefetch."""
    return (c["demand_neurons"] * neuron_bytes + c["prefetch_neurons"] * prefetch_neuron_bytes
            + c["second_phase_neurons"] * (neuron_bytes - prefetch_neuron_bytes))


@dataclass
class ReplayStats:
    """Raw counters of one replay; :mod:`simulator.metrics` turns them into the reported metrics."""

    n_tokens: int
    n_layers: int
    token_time: np.ndarray      # [T] s
    token_compute: np.ndarray   # [T] s
    token_stall: np.ndarray     # [T] s
    token_mm: np.ndarray        # [T] s
    layer: dict[str, np.ndarray] = field(default_factory=dict)   # counter -> [L]
    dram_bytes: float = 0.0     # DRAM traffic for compute and cache management
    storage_bytes: float = 0.0  # everything read from the backing store (FFN + streamed non-FFN)
    nonffn_storage_bytes: float = 0.0
    flops: float = 0.0
    io_busy: float = 0.0        # s the storage device spent serving batches
    prefetch_neuron_bytes: float = 0.0   # bytes one prefetch reads per neuron (0: the whole neuron)


@dataclass
class IoBatch:
    """One storage batch as scheduled: ``neurons`` is None for streamed non-FFN weights."""

    token: int
    layer: int
    kind: str                   # "demand" | "prefetch"
    neurons: np.ndarray | None  # packed set read for ``layer``
    sizes: np.ndarray           # distinct request sizes (bytes) ...
    counts: np.ndarray          # ... and how many of each
    issued: float               # simulated s
    start: float
    end: float


class ReplayEngine:
    def __init__(self, masks: np.ndarray, tokens: np.ndarray, footprint: ModelFootprint, scenario: Scenario,
                 profile, store: BackingStore, cache: NeuronCache, predictor: Predictor,
                 io_log: list[IoBatch] | None = None):
        self.masks = masks
        self.tokens = tokens
        self.fp = footprint
        self.sc = scenario
        self.profile = profile
        self.store = store
        self.cache = cache
        self.predictor = predictor
        self.io_log = io_log
        self.T, self.L, self.nb = masks.shape
        self.view = CausalView(masks, tokens, allow_future=predictor.sees_future)
        self._all = [bitset.full(d, self.nb) for d in footprint.d_ff]
        zeros = lambda: np.zeros((self.L, self.nb), dtype=np.uint8)  # noqa: E731
        self.inflight = zeros()         # neurons being fetched by a prefetch
        self.pf_unused = zeros()        # prefetched, not used yet
        self.displaced = zeros()        # evicted to make room for a prefetch
        self.protect = zeros()          # the set an FFN is using right now
        self.gate_rows = zeros()        # two-phase: gate rows prefetched and staged, not yet evaluated
        self.prefetch_rows = 1 if scenario.two_phase else None   # rows per neuron a prefetch reads (None: all)
        self.prefetch_neuron_bytes = footprint.row_bytes if scenario.two_phase else footprint.neuron_bytes
        self.pending: list[list[tuple[simpy.Process, np.ndarray]]] = [[] for _ in range(self.L)]
        self.c = {name: np.zeros(self.L, dtype=np.int64) for name in LAYER_COUNTERS}
        self.step = 0
        self.dram_bytes = 0.0
        self.flops = 0.0
        self.nonffn_storage_bytes = 0.0
        # Compute-side constants.
        dram_bw = profile.dram.bandwidth
        if scenario.ffn_in == "dram":
            self.cache_read_bw = profile.cache.bandwidth if profile.cache else dram_bw
        else:
            self.cache_read_bw = dram_bw
        self.flop_rate = profile.compute.flops
        self.t_nonffn = max(footprint.layer_nonffn_bytes / dram_bw,
                            2 * footprint.layer_nonffn_bytes / footprint.bytes_per_weight / self.flop_rate)
        self.t_head = max(footprint.head_bytes / dram_bw,
                          2 * footprint.head_bytes / footprint.bytes_per_weight / self.flop_rate)
        self.t_predict = predictor.flops / self.flop_rate if predictor.flops else 0.0
        self.neuron_flops = 2 * footprint.matrices * footprint.d_model

    # -- storage ------------------------------------------------------------------------------
    def _request(self, layer: int, packed: np.ndarray, rows: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Requests for ``rows`` of each neuron's rows (None: all). Bundled, a partial read of one
        neuron is not adjacent to the next neuron's (the rest of its record lies between), so
        partial reads never coalesce there."""
        whole = rows is None
        sizes, counts = request_sizes(packed, self.fp.d_ff[layer], self.fp.row_bytes,
                                      self.fp.matrices if whole else rows, self.sc.layout,
                                      self.sc.coalesce and (whole or self.sc.layout != "bundled"), self.sc.max_request)
        self.c["requests"][layer] += int(counts.sum())
        self.c["request_bytes"][layer] += int(round(float((sizes * counts).sum())))
        return sizes, counts

    def _read(self, env: simpy.Environment, sizes: np.ndarray, counts: np.ndarray, priority: int,
              layer: int = -1, neurons: np.ndarray | None = None):
        issued = env.now
        with self.device.request(priority=priority) as req:
            yield req
            busy = self.store.batch_time(sizes, counts)
            self.io_busy += busy
            start = env.now
            yield env.timeout(busy)
        if self.io_log is not None:  # the exact read schedule, for replay against real storage
            self.io_log.append(IoBatch(self.step // self.L, layer, "demand" if priority == 0 else "prefetch",
                                       None if neurons is None else neurons.copy(), sizes, counts,
                                       issued, start, env.now))

    def _prefetch(self, env: simpy.Environment, layer: int, packed: np.ndarray, sizes, counts):
        yield from self._read(env, sizes, counts, 1, layer, packed)
        self.inflight[layer] &= ~packed
        self.pending[layer] = [(p, s) for p, s in self.pending[layer] if p is not env.active_process]
        if self.sc.two_phase:  # gate rows wait in a staging buffer for the layer's input; not cached
            self.gate_rows[layer] |= packed
            return
        inserted, evicted = self.cache.insert(layer, self.step, packed, True, self.protect[layer])
        n_inserted = bitset.count(inserted)
        self.c["inserted"][layer] += n_inserted
        self.c["prefetch_bypassed"][layer] += bitset.count(packed) - n_inserted
        self.pf_unused[layer] |= inserted
        self._account_evictions(evicted, by_prefetch=True)
        self._mm_debt += self._mm_time(bitset.count(inserted) + sum(bitset.count(v) for v in evicted.values()))

    # -- accounting ---------------------------------------------------------------------------
    def _account_evictions(self, evicted: dict[int, np.ndarray], by_prefetch: bool) -> None:
        for l, victims in evicted.items():
            n = bitset.count(victims)
            self.c["evictions"][l] += n
            useless = bitset.count(victims & self.pf_unused[l])
            self.c["prefetch_useless"][l] += useless
            self.c["pollution_neurons"][l] += useless
            self.pf_unused[l] &= ~victims
            if by_prefetch:
                self.displaced[l] |= victims

    def _mm_time(self, neurons: int) -> float:
        if self.sc.ffn_in != "flash" or neurons == 0:
            return 0.0
        moved = neurons * self.fp.neuron_bytes
        self.dram_bytes += 2 * moved  # copy = read + write
        return 2 * moved / self.profile.dram.bandwidth + neurons * self.sc.insert_overhead

    # -- prefetch issue -----------------------------------------------------------------------
    def _issue(self, env: simpy.Environment, token: int, layer: int) -> None:
        self.view.frontier = self.step
        pred = self.predictor.predict(self.view, token, layer)
        if pred is None:
            return
        truth = self.masks[token, layer]
        self.c["pred_tp"][layer] += bitset.count(pred & truth)
        self.c["pred_fp"][layer] += bitset.count(pred & ~truth)
        self.c["pred_fn"][layer] += bitset.count(truth & ~pred)
        fetch = pred & ~self.cache.resident[layer] & ~self.inflight[layer] & ~self.gate_rows[layer]
        self.c["prefetch_requested"][layer] += bitset.count(pred)
        n = bitset.count(fetch)
        if self.sc.prefetch_cap and n:
            # Bytes-in-flight cap: issue what fits now, drop the rest of this prediction.
            room = int(self.sc.prefetch_cap // self.prefetch_neuron_bytes) - int(np.bitwise_count(self.inflight).sum())
            if room < n:
                fetch = bitset.first(fetch, max(room, 0), self.nb * 8)
                self.c["prefetch_dropped"][layer] += n - max(room, 0)
                n = max(room, 0)
        if n == 0:
            return
        self.c["prefetch_issued"][layer] += n
        self.c["prefetch_neurons"][layer] += n
        self.inflight[layer] |= fetch
        sizes, counts = self._request(layer, fetch, self.prefetch_rows)
        proc = env.process(self._prefetch(env, layer, fetch, sizes, counts))
        self.pending[layer].append((proc, fetch))

    def _targets(self, token: int, layer: int) -> list[tuple[int, int]]:
        """(token, layer) pairs whose prefetch is issued at the start of this layer step."""
        if self.sc.schedule == "none":
            return []
        if self.sc.schedule == "token":
            return [(token, l) for l in range(self.L)] if layer == 0 else []
        k = self.sc.lookahead
        g = token * self.L + layer + k
        first = token * self.L + layer == 0
        targets = []
        if first:  # the first steps have nobody k layers earlier to issue them
            targets = [divmod(s, self.L) for s in range(0, min(k, self.T * self.L))]
        if g < self.T * self.L:
            targets.append(divmod(g, self.L))
        return targets

    # -- two-phase loading (PowerInfer-2) -------------------------------------------------------
    def _two_phase_reads(self, env: simpy.Environment, layer: int, need: np.ndarray, miss: np.ndarray,
                         late: np.ndarray, late_procs: list) -> list:
        """Demand reads of one FFN under two-phase loading; returns the processes the FFN waits for.

        The gate of a staged neuron can be evaluated only now that the layer's input exists, so the
        up/down rows of the needed ones are read on the critical path: together with the whole
        rows of the missed neurons in one batch, or, for neurons whose gate prefetch is still in
        flight, in a dependent batch after it lands.
        """
        ready = need & self.gate_rows[layer]
        up_down = self.fp.matrices - 1
        self.c["demand_neurons"][layer] += bitset.count(miss)
        self.c["gate_hits"][layer] += bitset.count(ready)
        parts = [self._request(layer, miss)] if bitset.nonempty(miss) else []
        if bitset.nonempty(ready):
            parts.append(self._request(layer, ready, up_down))
        waits = []
        if parts:
            sizes, counts = (np.concatenate(x) for x in zip(*parts))
            waits.append(env.process(self._read(env, sizes, counts, 0, layer, miss | ready)))
        if late_procs:
            waits.append(env.process(self._up_down_after(env, late_procs, layer, late, up_down)))
        return waits

    def _up_down_after(self, env: simpy.Environment, gate_reads: list, layer: int, late: np.ndarray, rows: int):
        yield simpy.AllOf(env, gate_reads)
        yield from self._read(env, *self._request(layer, late, rows), 0, layer, late)

    def _evaluate_gates(self, env: simpy.Environment, layer: int, need: np.ndarray):
        """Every staged gate row of the layer is evaluated on this token's input: active neurons
        (their up/down rows just read) enter the cache whole, the rest are dropped. Returns the
        compute seconds of evaluating the dropped rows (the kept ones are part of the FFN)."""
        staged = self.gate_rows[layer]
        kept, dropped = staged & need, staged & ~need
        n_kept, n_dropped = bitset.count(kept), bitset.count(dropped)
        self.gate_rows[layer] = 0
        self.c["second_phase_neurons"][layer] += n_kept
        self.c["prefetch_useful"][layer] += n_kept
        self.c["prefetch_gate_dropped"][layer] += n_dropped
        if n_kept:  # a demand fill: the neurons are needed now, so never bypassed
            inserted, evicted = self.cache.insert(layer, self.step, kept, False, need)
            self.c["inserted"][layer] += bitset.count(inserted)
            self._account_evictions(evicted, by_prefetch=False)
            self._mm_debt += self._mm_time(n_kept + sum(bitset.count(v) for v in evicted.values()))
        if not n_dropped:
            return 0.0
        gate_bytes, gate_flops = n_dropped * self.fp.row_bytes, 2 * n_dropped * self.fp.d_model
        seconds = max(gate_bytes / self.cache_read_bw, gate_flops / self.flop_rate)
        self.dram_bytes += gate_bytes
        self.flops += gate_flops
        yield env.timeout(seconds)
        return seconds

    # -- the decode loop ----------------------------------------------------------------------
    def _decode(self, env: simpy.Environment):
        fp, L = self.fp, self.L
        for t in range(self.T):
            if t == self.sc.warmup:
                self._snapshot = self._totals()
            start = env.now
            compute = stall = mm = 0.0
            for l in range(L):
                self.step = t * L + l
                targets = self._targets(t, l)
                if targets and self.t_predict:
                    yield env.timeout(self.t_predict * len(targets))
                    compute += self.t_predict * len(targets)
                for tt, ll in targets:
                    self._issue(env, tt, ll)
                # Non-FFN work of this layer.
                s, c = yield from self._dense_weights(env, fp.layer_nonffn_bytes, self.t_nonffn)
                stall, compute = stall + s, compute + c
                # FFN: wait for what it needs.
                need = self._all[l] if self.predictor.dense else self.masks[t, l]
                self.protect[l] = need
                resident = self.cache.resident[l]
                hit = need & resident
                late = need & self.inflight[l]
                miss = need & ~resident & ~self.inflight[l] & ~self.gate_rows[l]
                n_need, n_hit, n_late, n_miss = (bitset.count(x) for x in (need, hit, late, miss))
                self.c["accesses"][l] += n_need
                self.c["hits"][l] += n_hit
                self.c["late"][l] += n_late
                self.c["misses"][l] += n_miss
                self.c["pollution_misses"][l] += bitset.count(miss & self.displaced[l])
                self.displaced[l] &= ~need
                t0 = env.now
                waits = [p for p, s in self.pending[l] if n_late and bitset.nonempty(s & late)]
                if self.sc.two_phase:
                    waits = self._two_phase_reads(env, l, need, miss, late, waits)
                if n_miss and not self.sc.two_phase:
                    self.c["demand_neurons"][l] += n_miss
                    waits.append(env.process(self._read(env, *self._request(l, miss), 0, l, miss)))
                if waits:
                    yield simpy.AllOf(env, waits)
                stall += env.now - t0
                if n_miss:
                    inserted, evicted = self.cache.insert(l, self.step, miss, False, need)
                    self.c["inserted"][l] += bitset.count(inserted)
                    self._account_evictions(evicted, by_prefetch=False)
                    self._mm_debt += self._mm_time(n_miss + sum(bitset.count(v) for v in evicted.values()))
                if self.sc.two_phase:
                    compute += (yield from self._evaluate_gates(env, l, need))
                used_prefetch = need & self.pf_unused[l]
                self.c["prefetch_useful"][l] += bitset.count(used_prefetch)
                self.pf_unused[l] &= ~need
                self.cache.policy.on_access(l, self.step, need)
                stale = self.cache.expire(l, self.step)
                if stale is not None:
                    n_stale = bitset.count(stale)
                    self.c["expired"][l] += n_stale
                    self._account_evictions({l: stale}, by_prefetch=False)
                    self._mm_debt += self._mm_time(n_stale)
                # FFN compute over the needed neurons only.
                ffn_bytes = n_need * fp.neuron_bytes
                t_ffn = max(ffn_bytes / self.cache_read_bw, n_need * self.neuron_flops / self.flop_rate)
                self.dram_bytes += ffn_bytes
                self.flops += n_need * self.neuron_flops
                # Cache management (this step's and any prefetch arrivals' since the last charge).
                charge, self._mm_debt = self._mm_debt, 0.0
                yield env.timeout(t_ffn + charge)
                compute += t_ffn
                mm += charge
                self.protect[l] = 0
            s, c = yield from self._dense_weights(env, fp.head_bytes, self.t_head)   # the LM head
            stall, compute = stall + s, compute + c
            self.token_time[t] = env.now - start
            self.token_compute[t], self.token_stall[t], self.token_mm[t] = compute, stall, mm

    def _dense_weights(self, env: simpy.Environment, nbytes: float, seconds: float):
        """Non-FFN weights (a layer's attention, the LM head): streamed from flash first when they
        live there, then computed from DRAM. Returns (stall, compute) seconds."""
        stall = 0.0
        if self.sc.nonffn_in == "flash":
            t0 = env.now
            yield from self._read(env, *self._stream_requests(nbytes), priority=0)
            stall = env.now - t0
        yield env.timeout(seconds)
        self.dram_bytes += nbytes
        self.flops += 2 * nbytes / self.fp.bytes_per_weight
        return stall, seconds

    def _stream_requests(self, total: float) -> tuple[np.ndarray, np.ndarray]:
        """Large sequential requests for non-FFN weights streamed from flash."""
        n_full, rest = divmod(total, self.sc.max_request)
        sizes = np.array([self.sc.max_request] + ([rest] if rest else []), dtype=float)
        counts = np.array([int(n_full)] + ([1] if rest else []), dtype=np.int64)
        keep = counts > 0
        self.nonffn_storage_bytes += total
        return sizes[keep], counts[keep]

    def _totals(self) -> dict:
        return {"c": {k: v.copy() for k, v in self.c.items()}, "dram": self.dram_bytes, "flops": self.flops,
                "io": self.io_busy, "nonffn": self.nonffn_storage_bytes}

    def run(self) -> ReplayStats:
        env = simpy.Environment()
        self.device = simpy.PriorityResource(env, capacity=1)
        self.token_time = np.zeros(self.T)
        self.token_compute = np.zeros(self.T)
        self.token_stall = np.zeros(self.T)
        self.token_mm = np.zeros(self.T)
        self._mm_debt = 0.0
        self.io_busy = 0.0
        self.cache.preload(self.sc.warm)
        env.process(self._decode(env))
        env.run()
        self.c["prefetch_unused_at_end"] += np.bitwise_count(self.pf_unused).sum(axis=1, dtype=np.int64)
        self.c["prefetch_unused_at_end"] += np.bitwise_count(self.gate_rows).sum(axis=1, dtype=np.int64)
        # Metrics cover the tokens after the warm-up only.
        s, w = self._snapshot, self.sc.warmup
        c = {k: v - s["c"][k] for k, v in self.c.items()}
        nonffn = self.nonffn_storage_bytes - s["nonffn"]
        storage = float(ffn_read_bytes(c, self.fp.neuron_bytes, self.prefetch_neuron_bytes).sum())
        return ReplayStats(
            n_tokens=self.T - w, n_layers=self.L, token_time=self.token_time[w:],
            token_compute=self.token_compute[w:], token_stall=self.token_stall[w:], token_mm=self.token_mm[w:],
            layer=c, dram_bytes=self.dram_bytes - s["dram"], storage_bytes=storage + nonffn,
            nonffn_storage_bytes=nonffn, flops=self.flops - s["flops"], io_busy=self.io_busy - s["io"],
            prefetch_neuron_bytes=self.prefetch_neuron_bytes,
        )
