"""The replay: a simpy simulation of batch-1 decoding, token by token, layer by layer.

Timing model per (token, layer) — DESIGN §3, long form with formulas in ``docs/metrics.md``:

1. prefetches due at this step are issued (predictor cost, if any, is charged first);
2. non-FFN work: ``max(bytes / DRAM bandwidth, FLOPs / throughput)`` (or a flash read first when
   the non-FFN weights live in flash);
3. the FFN waits until every neuron it needs is resident: hits cost nothing, in-flight prefetches
   cost only their remaining time (late prefetch), the rest is one demand batch (a stall);
4. the FFN computes over the needed neurons only; filling/evicting the DRAM cache costs
   memory-management time.

Storage is a :class:`sparsesim.simulator.device.StorageQueue`: one batch served at a time, demand before
prefetch (non-preemptive), one simpy timeout per batch — never per neuron. Neuron sets are Python
integers (:mod:`sparsesim.simulator.neuronset`); counts are popcounts.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import simpy

from sparsesim.simulator import neuronset
from sparsesim.simulator.cache import NeuronCache
from sparsesim.simulator.device import DEMAND, PREFETCH, Batch, StorageQueue
from sparsesim.simulator.predictors import CausalView, Predictor
from sparsesim.simulator.scenario import ModelFootprint, Scenario
from sparsesim.simulator.storage import BackingStore, request_sizes

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
    """Raw counters of one replay; :mod:`sparsesim.simulator.metrics` turns them into the reported metrics."""

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
        self._full = neuronset.full(self.nb * 8)
        self._all = [neuronset.full(d) for d in footprint.d_ff]
        self._n_all = list(footprint.d_ff)
        self._rows: dict[int, tuple[list[int], list[int]]] = {}   # token -> needed sets and sizes, last few tokens
        self.inflight = [0] * self.L        # neurons being fetched by a prefetch
        self.n_inflight = 0
        self.pf_unused = [0] * self.L       # prefetched, not used yet
        self.displaced = [0] * self.L       # evicted to make room for a prefetch
        self.protect = [0] * self.L         # the set an FFN is using right now
        self.gate_rows = [0] * self.L       # two-phase: gate rows prefetched and staged, not yet evaluated
        self.prefetch_rows = 1 if scenario.two_phase else None   # rows per neuron a prefetch reads (None: all)
        self.prefetch_neuron_bytes = footprint.row_bytes if scenario.two_phase else footprint.neuron_bytes
        self.pending: list[list[Batch]] = [[] for _ in range(self.L)]   # prefetch batches in flight
        self.c = {name: [0] * self.L for name in LAYER_COUNTERS}
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
        self.request_shape = (footprint.row_bytes, footprint.matrices, scenario.layout, scenario.coalesce,
                              scenario.max_request)

    def _needed(self, token: int) -> tuple[list[int], list[int]]:
        """The trace's needed sets of ``token`` and their sizes, per layer (converted once per token)."""
        rows = self._rows.get(token)
        if rows is None:
            if len(self._rows) > 4:
                self._rows.pop(min(self._rows))
            packed, nb = np.ascontiguousarray(self.masks[token, :]), self.nb
            data = packed.tobytes()
            rows = self._rows[token] = ([int.from_bytes(data[i * nb:(i + 1) * nb], "little") for i in range(self.L)],
                                        np.bitwise_count(packed).sum(axis=1).tolist())
        return rows

    # -- storage ------------------------------------------------------------------------------
    def _requests(self, layer: int, neurons: int, rows: int | None = None) -> dict[float, int]:
        """Requests reading ``rows`` of each neuron's rows (None: all), counted. Bundled, a partial
        read of one neuron is not adjacent to the next neuron's (the rest of its record lies
        between), so partial reads never coalesce there."""
        if rows is None:
            requests = request_sizes(neurons, *self.request_shape)
        else:
            row_bytes, _, layout, coalesce, max_request = self.request_shape
            requests = request_sizes(neurons, row_bytes, rows, layout, coalesce and layout != "bundled", max_request)
        self.c["requests"][layer] += sum(requests.values())
        self.c["request_bytes"][layer] += int(round(sum(s * n for s, n in requests.items())))
        return requests

    def _read(self, layer: int, neurons: int, priority: int, on_done=None, rows: int | None = None) -> Batch:
        return self.device.submit(self._requests(layer, neurons, rows), priority, layer, neurons, on_done)

    def _log(self, batch: Batch) -> None:
        """The exact read schedule, for replay against real storage."""
        sizes = np.array(list(batch.requests), dtype=float)
        counts = np.array(list(batch.requests.values()), dtype=np.int64)
        neurons = None if batch.layer < 0 else neuronset.to_row(batch.neurons, self.nb)
        self.io_log.append(IoBatch(self.step // self.L, batch.layer,
                                   "demand" if batch.priority == DEMAND else "prefetch", neurons, sizes, counts,
                                   batch.issued, batch.start, batch.end))

    def _arrived(self, batch: Batch) -> None:
        """A prefetch batch is in: insert it (evicting as needed) and charge its cache management."""
        layer, fetched = batch.layer, batch.neurons
        self.inflight[layer] ^= fetched
        n_fetched = fetched.bit_count()
        self.n_inflight -= n_fetched
        self.pending[layer].remove(batch)
        if self.sc.two_phase:  # gate rows wait in a staging buffer for the layer's input; not cached
            self.gate_rows[layer] |= fetched
            return
        inserted, evicted = self.cache.insert(layer, self.step, fetched, True, self.protect[layer])
        n_inserted = inserted.bit_count()
        self.c["inserted"][layer] += n_inserted
        self.c["prefetch_bypassed"][layer] += n_fetched - n_inserted
        self.pf_unused[layer] |= inserted
        n_evicted = self._account_evictions(evicted, by_prefetch=True)
        self._mm_debt += self._mm_time(n_inserted + n_evicted)

    # -- accounting ---------------------------------------------------------------------------
    def _account_evictions(self, evicted: dict[int, int], by_prefetch: bool) -> int:
        """Count evictions and the unused prefetches among them; returns how many were evicted."""
        total = 0
        for l, victims in evicted.items():
            n = victims.bit_count()
            total += n
            self.c["evictions"][l] += n
            unused = victims & self.pf_unused[l]
            if unused:
                useless = unused.bit_count()
                self.c["prefetch_useless"][l] += useless
                self.c["pollution_neurons"][l] += useless
                self.pf_unused[l] ^= unused
            if by_prefetch:
                self.displaced[l] |= victims
        return total

    def _mm_time(self, neurons: int) -> float:
        if self.sc.ffn_in != "flash" or neurons == 0:
            return 0.0
        moved = neurons * self.fp.neuron_bytes
        self.dram_bytes += 2 * moved  # copy = read + write
        return 2 * moved / self.profile.dram.bandwidth + neurons * self.sc.insert_overhead

    # -- prefetch issue -----------------------------------------------------------------------
    def _issue(self, token: int, layer: int) -> None:
        self.view.frontier = self.step
        pred = self.predictor.predict(self.view, token, layer)
        if pred is None:
            return
        pred = neuronset.from_row(pred)
        sets, sizes = self._needed(token)
        c = self.c
        n_pred, tp = pred.bit_count(), (pred & sets[layer]).bit_count()
        c["pred_tp"][layer] += tp
        c["pred_fp"][layer] += n_pred - tp
        c["pred_fn"][layer] += sizes[layer] - tp
        c["prefetch_requested"][layer] += n_pred
        fetch = pred & (self._full ^ (self.cache.resident[layer] | self.inflight[layer] | self.gate_rows[layer]))
        n = fetch.bit_count()
        if self.sc.prefetch_cap and n:
            # Bytes-in-flight cap: issue what fits now, drop the rest of this prediction.
            room = max(int(self.sc.prefetch_cap // self.prefetch_neuron_bytes) - self.n_inflight, 0)
            if room < n:
                fetch = neuronset.first(fetch, room)
                c["prefetch_dropped"][layer] += n - room
                n = room
        if n == 0:
            return
        c["prefetch_issued"][layer] += n
        c["prefetch_neurons"][layer] += n
        self.inflight[layer] |= fetch
        self.n_inflight += n
        self.pending[layer].append(self._read(layer, fetch, PREFETCH, self._arrived, self.prefetch_rows))

    def _targets(self, token: int, layer: int) -> list[tuple[int, int]]:
        """(token, layer) pairs whose prefetch is issued at the start of this layer step."""
        if self.sc.schedule == "none":
            return []
        if self.sc.schedule == "token":
            return [(token, l) for l in range(self.L)] if layer == 0 else []
        step, k, end = token * self.L + layer, self.sc.lookahead, self.T * self.L
        # The first step also issues the first k steps: nobody k layers earlier could.
        targets = [divmod(s, self.L) for s in range(min(k, end))] if step == 0 else []
        if step + k < end:
            targets.append(divmod(step + k, self.L))
        return targets

    # -- two-phase loading (PowerInfer-2) -------------------------------------------------------
    def _two_phase_reads(self, env: simpy.Environment, layer: int, ready: int, miss: int, late: int,
                         late_gates: list[simpy.Event]) -> list[simpy.Event]:
        """Demand reads of one FFN under two-phase loading; returns the events the FFN waits for.

        The gate of a staged neuron can be evaluated only now that the layer's input exists, so the
        up/down rows of the needed ones (``ready``) are read on the critical path: together with
        the whole rows of the missed neurons in one batch, or, for neurons whose gate prefetch is
        still in flight (``late``), in a dependent batch after it lands.
        """
        up_down = self.fp.matrices - 1
        self.c["demand_neurons"][layer] += miss.bit_count()
        self.c["gate_hits"][layer] += ready.bit_count()
        waits = []
        if miss or ready:
            requests = self._requests(layer, miss) if miss else {}
            if ready:
                for size, n in self._requests(layer, ready, up_down).items():
                    requests[size] = requests.get(size, 0) + n
            waits.append(self.device.completion(self.device.submit(requests, DEMAND, layer, miss | ready)))
        if late_gates:
            waits.append(env.process(self._up_down_after(late_gates, layer, late, up_down)))
        return waits

    def _up_down_after(self, gate_reads: list[simpy.Event], layer: int, late: int, rows: int):
        for gate_read in gate_reads:
            yield gate_read
        yield self.device.completion(self._read(layer, late, DEMAND, rows=rows))

    def _evaluate_gates(self, env: simpy.Environment, layer: int, need: int):
        """Every staged gate row of the layer is evaluated on this token's input: active neurons
        (their up/down rows just read) enter the cache whole, the rest are dropped. Returns the
        compute seconds of evaluating the dropped rows (the kept ones are part of the FFN)."""
        staged = self.gate_rows[layer]
        kept = staged & need
        dropped = staged ^ kept
        n_kept, n_dropped = kept.bit_count(), dropped.bit_count()
        self.gate_rows[layer] = 0
        self.c["second_phase_neurons"][layer] += n_kept
        self.c["prefetch_useful"][layer] += n_kept
        self.c["prefetch_gate_dropped"][layer] += n_dropped
        if n_kept:  # a demand fill: the neurons are needed now, so never bypassed
            inserted, evicted = self.cache.insert(layer, self.step, kept, False, need)
            self.c["inserted"][layer] += inserted.bit_count()
            self._mm_debt += self._mm_time(n_kept + self._account_evictions(evicted, by_prefetch=False))
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
        fp, L, c, cache = self.fp, self.L, self.c, self.cache
        dense, two_phase = self.predictor.dense, self.sc.two_phase
        for t in range(self.T):
            if t == self.sc.warmup:
                self._snapshot = self._totals()
            start = env.now
            compute = stall = mm = 0.0
            needed, n_needed = (self._all, self._n_all) if dense else self._needed(t)
            for l in range(L):
                self.step = step = t * L + l
                targets = self._targets(t, l)
                if targets and self.t_predict:
                    yield env.timeout(self.t_predict * len(targets))
                    compute += self.t_predict * len(targets)
                for tt, ll in targets:
                    self._issue(tt, ll)
                # Non-FFN work of this layer.
                s, w = yield from self._dense_weights(env, fp.layer_nonffn_bytes, self.t_nonffn)
                stall, compute = stall + s, compute + w
                # FFN: wait for what it needs. Resident, in-flight and staged sets are disjoint.
                need, n_need = needed[l], n_needed[l]
                self.protect[l] = need
                hit = need & cache.resident[l]
                late = need & self.inflight[l]
                ready = need & self.gate_rows[l]
                miss = need ^ hit ^ late ^ ready
                n_hit = hit.bit_count()
                n_late = late.bit_count() if late else 0
                n_miss = n_need - n_hit - n_late - (ready.bit_count() if ready else 0)
                c["accesses"][l] += n_need
                c["hits"][l] += n_hit
                c["late"][l] += n_late
                c["misses"][l] += n_miss
                if self.displaced[l]:
                    c["pollution_misses"][l] += (miss & self.displaced[l]).bit_count()
                    self.displaced[l] &= self._full ^ need
                t0 = env.now
                waits = [self.device.completion(b) for b in self.pending[l] if b.neurons & late] if late else []
                if two_phase:
                    waits = self._two_phase_reads(env, l, ready, miss, late, waits)
                elif n_miss:
                    c["demand_neurons"][l] += n_miss
                    waits.append(self.device.completion(self._read(l, miss, DEMAND)))
                for event in waits:
                    yield event
                stall += env.now - t0
                if n_miss:
                    inserted, evicted = cache.insert(l, step, miss, False, need)
                    c["inserted"][l] += inserted.bit_count()
                    self._mm_debt += self._mm_time(n_miss + self._account_evictions(evicted, by_prefetch=False))
                if two_phase:
                    compute += (yield from self._evaluate_gates(env, l, need))
                used_prefetch = need & self.pf_unused[l]
                if used_prefetch:
                    c["prefetch_useful"][l] += used_prefetch.bit_count()
                    self.pf_unused[l] ^= used_prefetch
                cache.policy.on_access(l, step, need)
                stale = cache.expire(l, step)
                if stale:
                    n_stale = stale.bit_count()
                    c["expired"][l] += n_stale
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
            s, w = yield from self._dense_weights(env, fp.head_bytes, self.t_head)   # the LM head
            stall, compute = stall + s, compute + w
            self.token_time[t] = env.now - start
            self.token_compute[t], self.token_stall[t], self.token_mm[t] = compute, stall, mm

    def _dense_weights(self, env: simpy.Environment, nbytes: float, seconds: float):
        """Non-FFN weights (a layer's attention, the LM head): streamed from flash first when they
        live there, then computed from DRAM. Returns (stall, compute) seconds."""
        stall = 0.0
        if self.sc.nonffn_in == "flash":
            t0 = env.now
            yield self.device.completion(self.device.submit(self._stream_requests(nbytes), DEMAND))
            stall = env.now - t0
        yield env.timeout(seconds)
        self.dram_bytes += nbytes
        self.flops += 2 * nbytes / self.fp.bytes_per_weight
        return stall, seconds

    def _stream_requests(self, total: float) -> dict[float, int]:
        """Large sequential requests for non-FFN weights streamed from flash."""
        n_full, rest = divmod(total, self.sc.max_request)
        self.nonffn_storage_bytes += total
        requests = {float(self.sc.max_request): int(n_full)} if n_full else {}
        if rest:
            requests[float(rest)] = requests.get(float(rest), 0) + 1
        return requests

    def _totals(self) -> dict:
        return {"c": {k: list(v) for k, v in self.c.items()}, "dram": self.dram_bytes, "flops": self.flops,
                "io": self.device.busy, "nonffn": self.nonffn_storage_bytes}

    def run(self) -> ReplayStats:
        env = simpy.Environment()
        self.device = StorageQueue(env, self.store, self._log if self.io_log is not None else None)
        self.token_time = np.zeros(self.T)
        self.token_compute = np.zeros(self.T)
        self.token_stall = np.zeros(self.T)
        self.token_mm = np.zeros(self.T)
        self._mm_debt = 0.0
        self.cache.preload(self.sc.warm)
        env.process(self._decode(env))
        env.run()
        for l, (unused, staged) in enumerate(zip(self.pf_unused, self.gate_rows)):
            self.c["prefetch_unused_at_end"][l] += unused.bit_count() + staged.bit_count()
        # Metrics cover the tokens after the warm-up only.
        s, w = self._snapshot, self.sc.warmup
        c = {k: np.array(v, dtype=np.int64) - np.array(s["c"][k], dtype=np.int64) for k, v in self.c.items()}
        nonffn = self.nonffn_storage_bytes - s["nonffn"]
        storage = float(ffn_read_bytes(c, self.fp.neuron_bytes, self.prefetch_neuron_bytes).sum())
        return ReplayStats(
            n_tokens=self.T - w, n_layers=self.L, token_time=self.token_time[w:],
            token_compute=self.token_compute[w:], token_stall=self.token_stall[w:], token_mm=self.token_mm[w:],
            layer=c, dram_bytes=self.dram_bytes - s["dram"], storage_bytes=storage + nonffn,
            nonffn_storage_bytes=nonffn, flops=self.flops - s["flops"], io_busy=self.device.busy - s["io"],
            prefetch_neuron_bytes=self.prefetch_neuron_bytes,
        )
