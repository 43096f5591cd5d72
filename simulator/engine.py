"""The replay: a simpy simulation of batch-1 decoding, token by token, layer by layer.

This module is the decode process and nothing else: it runs each layer step in the order the
residency contract fixes (``docs/simulator.md``) and wires the parts that hold each concern —
:class:`~sparsesim.simulator.schedule.PrefetchSchedule` (when predictions are issued),
:class:`~sparsesim.simulator.residency.Residency` (where units are, what is protected),
:class:`~sparsesim.simulator.timing.StepCosts` (how long each piece takes),
:class:`~sparsesim.simulator.device.StorageQueue` (the storage device) and
:class:`~sparsesim.simulator.accounting.Accounting` (what is counted).

A step: (1) predictions due now are issued as prefetch batches (after the non-FFN work with
``predict_from=attention-output``); (2) non-FFN work (a flash read first when those weights live in
flash); (3) the FFN's lookup: hits, late hits (in flight), gate hits (two-phase staged) and misses
(one demand batch) over the needed set — under ``false_negatives=drop`` the predicted set (the
residency contract's drop rule); (4) after the waits the misses are inserted; (5) the policy sees the
use, the window policy may expire units; (6) the FFN computes over the needed units (or the resident
matrix), with a hot unit's part at the same time, plus the cache-management time of every insertion
and removal since the last charge. Under ``pipeline=cluster`` the misses' reads and the FFN are one
pipelined slot timed by :meth:`StepCosts.pipelined`. One simpy timeout per batch and per compute
slot — never one per unit or per cluster.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import simpy

from sparsesim.simulator import neuronset
from sparsesim.simulator.accounting import Accounting, Counts
from sparsesim.simulator.device import DEMAND, PREFETCH, Batch, StorageQueue
from sparsesim.simulator.heterogeneous import transfer_time
from sparsesim.simulator.io_path import ReadPath
from sparsesim.simulator.predictors import CausalView, Predictor
from sparsesim.simulator.residency import Residency
from sparsesim.simulator.scenario import ModelFootprint, Scenario
from sparsesim.simulator.schedule import PrefetchSchedule
from sparsesim.simulator.storage import BackingStore, request_sizes
from sparsesim.simulator.steps import ReplaySteps
from sparsesim.simulator.timing import StepCosts
from sparsesim.tracecolumns import DECODE


@dataclass
class ReplayResult:
    """A replay's counters and per-token times over the measured tokens
    (:mod:`sparsesim.simulator.metrics` turns them into the reported metrics)."""

    counts: Counts
    n_tokens: int               # measured tokens (a prefill batch counts each of its tokens)
    n_layers: int
    token_time: np.ndarray      # [S] s per measured step row: a decode token or a prefill batch
    token_compute: np.ndarray   # [S] s
    token_stall: np.ndarray     # [S] s
    token_mm: np.ndarray        # [S] s
    prefetch_unit_bytes: float  # bytes one prefetch reads per unit (a row under two-phase loading)
    token_phase: np.ndarray     # [S] PREFILL / DECODE of each measured step row
    row_tokens: np.ndarray      # [S] tokens each measured step row stands for


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
    def __init__(self, steps: ReplaySteps, footprint: ModelFootprint, scenario: Scenario,
                 profile, store: BackingStore, residency: Residency, predictor: Predictor,
                 io_log: list[IoBatch] | None = None, lookup_log: list[tuple] | None = None,
                 model: dict | None = None, hot: list[int] | None = None):
        self.masks = masks = steps.masks
        self.steps = steps
        self.fp = footprint
        self.sc = scenario
        self.store = store
        self.res = residency
        self.policy = residency.cache.policy
        self.predictor = predictor
        self.io_log = io_log
        self.lookup_log = lookup_log
        self.T, self.L, self.nb = masks.shape
        self.schedule = PrefetchSchedule(scenario.schedule, scenario.lookahead, self.L, self.T * self.L)
        self.view = CausalView(masks, steps.tokens, allow_future=predictor.sees_future, last_masks=steps.last_masks)
        self.acc = Accounting(self.L)
        self.read_path = ReadPath(store, scenario, profile)
        self.shaped_reads = not self.read_path.exact
        self.costs = StepCosts(footprint, scenario, profile, predictor.flops, self.acc.totals, dense=predictor.dense,
                               model=model, hot_units=None if hot is None else [h.bit_count() for h in hot],
                               read_path=self.read_path)
        self.link = self._link_time(profile) if scenario.ffn_in == "flash" else None
        self.drop = scenario.false_negatives == "drop"
        self._computed: dict[int, int] = {}      # drop: target step -> the predicted set its FFN computes
        # A hot unit's units are resident outside the cache: predictions and the dense baseline skip them.
        self._cold = None if hot is None else [neuronset.full(d) & ~h for d, h in zip(footprint.d_ff, hot)]
        self._all = self._cold or [neuronset.full(d) for d in footprint.d_ff]
        self._n_all = [s.bit_count() for s in self._all] if hot is not None else list(footprint.d_ff)
        self._rows: dict[int, tuple[list[int], list[int]]] = {}   # token -> needed sets and sizes, last few tokens
        self.weight = residency.cache.weight
        self.uniform = footprint.uniform
        self._slice = [footprint.row_bytes if footprint.kind == "neuron" else footprint.slice_bytes(l)
                       for l in range(self.L)]
        self.inflight_weight = 0
        # Rows per unit one read takes (None: all); a prefetch reads only the gate row under two-phase.
        self.prefetch_rows = 1 if scenario.two_phase else None
        self.prefetch_unit_bytes = footprint.row_bytes if scenario.two_phase else footprint.unit_size
        self.prefetch_weight_bytes = footprint.row_bytes if scenario.two_phase else float(footprint.weight_bytes)
        self.pending: list[list[Batch]] = [[] for _ in range(self.L)]   # prefetch batches in flight
        self.step = 0
        self._mm_debt = 0.0

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
    def _read(self, layer: int, units: int, priority: int, on_done=None, rows: int | None = None,
              target: int | None = None, seconds: float | None = None) -> Batch:
        """Submit the reads of ``rows`` of each unit's rows (None: all). Bundled, a partial read of
        one unit is not adjacent to the next one's (the rest of its record lies between), so
        partial reads never coalesce there."""
        fp, sc = self.fp, self.sc
        if rows is None:
            requests = request_sizes(units, self._slice[layer], fp.matrices, sc.layout, sc.coalesce, sc.max_request)
        else:
            requests = request_sizes(units, self._slice[layer], rows, sc.layout, sc.coalesce and sc.layout != "bundled",
                                     sc.max_request)
        if self.shaped_reads:
            requests = self._device_requests(layer, units, requests)
        self.acc.requests(layer, requests)
        return self.device.submit(requests, priority, layer, units, on_done, self.step if target is None else target,
                                  seconds)

    def _device_requests(self, layer: int, units: int, requests: dict[float, int]) -> dict[float, int]:
        """What reaches the device for ``requests`` of ``units``: page faults through the page cache,
        or the requests shaped by the read granularity; the bytes beyond the units' own are padding."""
        read_path = self.read_path
        if read_path.page_cache:
            shaped = read_path.fault_requests(units, self.nb, layer, self.fp.d_ff, self.fp.row_bytes,
                                              self.fp.matrices, self.sc.layout)
        else:
            shaped = read_path.shape(requests)
        self.acc.totals.padding_bytes += (sum(s * n for s, n in shaped.items())
                                          - sum(s * n for s, n in requests.items()))
        return shaped

    def _link_time(self, profile):
        """Seconds to move a read batch into a discrete compute unit's own memory (None: the unit
        reads DRAM): its bytes at the compute precision over the interconnect, one transfer each."""
        spec = profile.unit(self.sc.compute_unit)
        if spec is None or spec.capacity is None:
            return None
        bandwidth, latency = profile.interconnect.bandwidth, profile.interconnect.latency or 0.0
        scale = self.costs.scale

        def link(batch: Batch) -> float:
            return transfer_time(sum(s * n for s, n in batch.requests.items()) * scale, bandwidth, 1, latency)
        return link

    def _log(self, batch: Batch) -> None:
        """The exact read schedule, for replay against real storage."""
        sizes = np.array(list(batch.requests), dtype=float)
        counts = np.array(list(batch.requests.values()), dtype=np.int64)
        units = None if batch.layer < 0 else neuronset.to_row(batch.neurons, self.nb)
        self.io_log.append(IoBatch(batch.target // self.L, batch.layer,
                                   "demand" if batch.priority == DEMAND else "prefetch", units, sizes, counts,
                                   batch.issued, batch.start, batch.end))

    def _charge_management(self, layer: int, n_inserted: int, evicted: dict[int, int], n_evicted: int) -> None:
        """Insertions into ``layer`` and the removals they caused (global: from any layer)."""
        if self.uniform:
            self._mm_debt += self.costs.management(layer, n_inserted, n_evicted)
        else:
            self._mm_debt += self.costs.management(layer, n_inserted, 0,
                                                   {l: units.bit_count() for l, units in evicted.items()})

    # -- prefetch -------------------------------------------------------------------------------
    def _issue(self, target: int) -> None:
        token, layer = divmod(target, self.L)
        pred = self.predictor.predict(self.view, token, layer)
        if pred is None:
            return
        pred = neuronset.from_row(pred)
        if self._cold is not None:
            pred &= self._cold[layer]
        truth, n_truth = self._needed(token)
        self.acc.predicted(layer, pred, truth[layer], n_truth[layer])
        self.res.predict(layer, target, pred)
        if self.drop:
            self._computed[target] = pred
        fetch = self.res.fetch_set(layer, pred)
        n = fetch.bit_count()
        dropped = no_room = 0
        if self.sc.prefetch_cap and n:
            # Bytes-in-flight cap: issue what fits now, drop the rest of this prediction.
            room = max(int(self.sc.prefetch_cap // self.prefetch_weight_bytes) - self.inflight_weight, 0) \
                // self.weight[layer]
            if room < n:
                fetch, dropped, n = neuronset.first(fetch, room), n - room, room
        if n and not self.sc.two_phase:   # gate rows go to a staging buffer, not the cache
            room = max(self.res.room_for_prefetch(layer, n), 0)
            if room < n:   # never read what the cache could not keep: the lowest-index units that fit
                fetch, no_room, n = neuronset.first(fetch, room), n - room, room
        self.acc.prefetch_sent(layer, n, dropped, no_room)
        if n == 0:
            return
        self.res.send(layer, fetch)
        self.inflight_weight += n * self.weight[layer]
        self.pending[layer].append(self._read(layer, fetch, PREFETCH, self._arrived, self.prefetch_rows, target))

    def _arrived(self, batch: Batch) -> None:
        """A prefetch batch is in: staged (two-phase gate rows) or inserted, evicting as allowed."""
        layer, fetched = batch.layer, batch.neurons
        n_fetched = fetched.bit_count()
        res = self.res
        res.land(layer, fetched)
        self.inflight_weight -= n_fetched * self.weight[layer]
        self.pending[layer].remove(batch)
        if self.sc.two_phase:  # gate rows wait in a staging buffer for the layer's input; not cached
            res.stage(layer, batch.target, fetched)
            return
        inserted, n_inserted, evicted = res.insert_prefetch(layer, self.step, fetched, n_fetched)
        n_evicted = self.acc.arrived(layer, n_fetched, inserted, n_inserted, evicted)
        self._charge_management(layer, n_inserted, evicted, n_evicted)

    # -- two-phase loading (PowerInfer-2) -------------------------------------------------------
    def _two_phase_reads(self, env: simpy.Environment, layer: int, ready: int, miss: int, late: int,
                         late_gates: list[simpy.Event]) -> list[simpy.Event]:
        """Demand reads of one FFN under two-phase loading; returns the events the FFN waits for.

        The gate of a staged unit can be evaluated only now that the layer's input exists, so the
        up/down rows of the needed ones (``ready``) are read on the critical path: together with
        the whole rows of the missed units in one batch, or, for units whose gate prefetch is
        still in flight (``late``), in a dependent batch after it lands.
        """
        up_down = self.fp.matrices - 1
        waits = []
        if miss or ready:
            fp, sc = self.fp, self.sc
            requests = request_sizes(miss, fp.row_bytes, fp.matrices, sc.layout, sc.coalesce, sc.max_request)
            for size, n in request_sizes(ready, fp.row_bytes, up_down, sc.layout,
                                         sc.coalesce and sc.layout != "bundled", sc.max_request).items():
                requests[size] = requests.get(size, 0) + n
            if self.shaped_reads:
                requests = self._device_requests(layer, miss | ready, requests)
            self.acc.requests(layer, requests)
            waits.append(self.device.completion(self.device.submit(requests, DEMAND, layer, miss | ready,
                                                                    target=self.step)))
        if late_gates:
            waits.append(env.process(self._up_down_after(late_gates, layer, late, up_down)))
        return waits

    def _up_down_after(self, gate_reads: list[simpy.Event], layer: int, late: int, rows: int):
        for gate_read in gate_reads:
            yield gate_read
        yield self.device.completion(self._read(layer, late, DEMAND, rows=rows))

    def _evaluate_gates(self, env: simpy.Environment, layer: int, step: int, need: int):
        """Every staged gate row of the layer is evaluated on this token's input: needed units
        (their up/down rows just read) enter the cache whole, the rest are dropped. Returns the
        compute seconds of evaluating the dropped rows (the kept ones are part of the FFN)."""
        kept, dropped = self.res.evaluate_staged(layer, step, need)
        n_dropped = dropped.bit_count()
        self.acc.gates_evaluated(layer, kept.bit_count(), n_dropped)
        if kept:
            _, n_kept, evicted = self.res.insert_demand(layer, step, kept, kept.bit_count())
            self._charge_management(layer, n_kept, evicted, self.acc.filled(layer, n_kept, evicted))
        if not n_dropped:
            return 0.0
        seconds = self.costs.gate_rows(n_dropped)
        yield env.timeout(seconds)
        return seconds

    # -- the decode loop ----------------------------------------------------------------------
    def _decode(self, env: simpy.Environment):
        L, acc, res, costs, policy = self.L, self.acc, self.res, self.costs, self.policy
        dense, two_phase, drop = self.predictor.dense, self.sc.two_phase, self.drop
        resident, inflight, staged = res.resident, res.inflight, res.staged
        after_attention = self.sc.predict_from == "attention-output"
        pipelined, hot = self.sc.pipeline == "cluster", costs.hot is not None
        matrix = costs.ffn_matrix
        predict_layer = self.sc.predictor_rank > 0 and not pipelined
        sizes = res.cache.size
        phases, row_tokens, token_units = self.steps.phase, self.steps.n_tokens, self.steps.token_units
        lookup_log = self.lookup_log
        positions = self.steps.positions.tolist()
        for t in range(self.T):
            if t == self.sc.warmup:
                self._snapshot = acc.snapshot()
                self._snapshot.totals.io_busy = self.device.busy
                self._snapshot.totals.link_busy = self.device.link_busy
            if phases is not None:
                acc.set_phase(int(phases[t]))
            batch = int(row_tokens[t]) if row_tokens is not None else 1   # tokens this step row computes
            start = env.now
            compute = stall = mm = 0.0
            needed, n_needed = (self._all, self._n_all) if dense else self._needed(t)
            for l in range(L):
                self.step = step = t * L + l
                if after_attention:   # 2. before 1: a layer's prediction reads its attention output
                    s, w = yield from self._dense_weights(env, costs.nonffn(l, positions[t], batch))
                    stall, compute = stall + s, compute + w
                # 1. predictions due now: their cost on the critical path (a low-rank predictor of the layer
                # with predictor_rank, inside the clusters under pipeline=cluster), then the issue
                targets = self.schedule.targets(step)
                seconds = costs.predictor(l) if predict_layer else \
                    costs.predict * len(targets) if targets and costs.predict else 0.0
                if seconds:
                    yield env.timeout(seconds)
                    compute += seconds
                self.view.frontier = step
                for target in targets:
                    self._issue(target)
                if not after_attention:   # 2. non-FFN work of this layer
                    s, w = yield from self._dense_weights(env, costs.nonffn(l, positions[t], batch))
                    stall, compute = stall + s, compute + w
                # 3. lookup: resident, in-flight and staged sets are disjoint
                need, n_need = needed[l], n_needed[l]
                if drop and step in self._computed:   # the drop rule: the FFN computes the predicted set
                    need = self._computed.pop(step)
                    acc.totals.dropped_units += (needed[l] & ~need).bit_count()
                    n_need = need.bit_count()
                res.begin_use(l, need)
                hit = need & resident[l]
                late = need & inflight[l]
                ready = need & staged[l]
                miss = need ^ hit ^ late ^ ready
                n_hit = hit.bit_count()
                n_late = late.bit_count() if late else 0
                n_ready = ready.bit_count() if ready else 0
                n_miss = n_need - n_hit - n_late - n_ready
                acc.lookup(l, n_need, n_hit, n_late, n_ready, miss, n_miss)
                if lookup_log is not None:
                    lookup_log.append((t, l, hit, late, ready, miss))
                t0 = env.now
                waits = [self.device.completion(b) for b in self.pending[l] if b.neurons & late] if late else []
                if two_phase:
                    waits = self._two_phase_reads(env, l, ready, miss, late, waits)
                elif n_miss and not pipelined:
                    waits.append(self.device.completion(self._read(l, miss, DEMAND)))
                for event in waits:
                    yield event
                stall += env.now - t0
                # 4. demand fill (late arrivals were inserted with demand rights as they landed)
                if n_miss:
                    _, n_kept, evicted = res.insert_demand(l, step, miss, n_miss)
                    self._charge_management(l, n_kept, evicted, acc.filled(l, n_kept, evicted, n_miss - n_kept))
                if two_phase:
                    compute += (yield from self._evaluate_gates(env, l, step, need))
                # 5. use; the window policy may expire units
                acc.used(l, need)
                policy.on_access(l, step, need)
                stale = res.expire(l, step)
                if stale:
                    self._charge_management(l, 0, {l: stale}, acc.expired(l, stale))
                # 6. the FFN over the needed units (or the resident matrix), plus cache management
                charge, self._mm_debt = self._mm_debt, 0.0
                if pipelined:   # the misses are read inside the FFN, cluster by cluster
                    reads = self._read(l, miss, DEMAND) if n_miss else None
                    t_ffn, busy = costs.pipelined(l, n_need, n_miss)
                    if hot:
                        t_ffn, busy = costs.with_hot(l, t_ffn, n_need), costs.with_hot(l, busy, n_need, charge=False)
                    t0 = env.now
                    yield env.timeout(t_ffn + charge)
                    if reads is not None and reads.end < 0:
                        yield self.device.completion(reads)
                    compute += busy
                    stall += max(env.now - t0 - charge - busy, 0.0)
                else:
                    n_ffn = sizes[l] if matrix else n_need
                    t_ffn = costs.ffn(l, n_ffn, (n_ffn * batch if matrix else int(token_units[t, l]))
                                      if batch > 1 else 0)
                    if hot:
                        t_ffn = costs.with_hot(l, t_ffn, n_ffn)
                    yield env.timeout(t_ffn + charge)
                    compute += t_ffn
                mm += charge
                res.end_step(l, step)
            s, w = yield from self._dense_weights(env, costs.head())   # the LM head
            stall, compute = stall + s, compute + w
            self.token_time[t] = env.now - start
            self.token_compute[t], self.token_stall[t], self.token_mm[t] = compute, stall, mm

    def _dense_weights(self, env: simpy.Environment, cost: tuple[float, float]):
        """Non-FFN weights (a layer's attention and KV cache, the LM head) of ``cost`` (bytes,
        seconds): streamed from flash first when they live there, then computed from DRAM. Returns
        (stall, compute) seconds."""
        nbytes, seconds = cost
        stall = 0.0
        if self.sc.nonffn_in == "flash":
            t0 = env.now
            yield self.device.completion(self.device.submit(self._stream_requests(nbytes), DEMAND, target=self.step))
            stall = env.now - t0
        yield env.timeout(seconds)
        return stall, seconds

    def _stream_requests(self, total: float) -> dict[float, int]:
        """Large sequential requests for non-FFN weights streamed from flash."""
        n_full, rest = divmod(total, self.sc.max_request)
        self.acc.totals.nonffn_storage_bytes += total
        requests = {float(self.sc.max_request): int(n_full)} if n_full else {}
        if rest:
            requests[float(rest)] = requests.get(float(rest), 0) + 1
        if self.read_path.granularity:
            shaped = self.read_path.shape(requests)
            self.acc.totals.padding_bytes += sum(s * n for s, n in shaped.items()) - total
            return shaped
        return requests

    def run(self) -> ReplayResult:
        env = simpy.Environment()
        self.device = StorageQueue(env, self.read_path, self._log if self.io_log is not None else None, self.link)
        self.token_time = np.zeros(self.T)
        self.token_compute = np.zeros(self.T)
        self.token_stall = np.zeros(self.T)
        self.token_mm = np.zeros(self.T)
        placed = self.res.cache.preload(self.sc.warm)
        self.acc.totals.preloaded_units = sum(placed)
        self.acc.totals.preloaded_bytes = float(sum(placed) * self.fp.unit_size if self.uniform else
                                                sum(n * b for n, b in zip(placed, self.fp.unit_bytes)))
        env.process(self._decode(env))
        env.run()
        self.acc.totals.io_busy = self.device.busy
        self.acc.totals.link_busy = self.device.link_busy
        w = self.sc.warmup
        counts = self.acc.finish(self._snapshot, self.res.staged)
        counts.totals.prompt_prefill_s = self.costs.prompt_prefill(self.fp)   # once, before the replayed tokens
        phase = self.steps.phase[w:] if self.steps.phase is not None else np.full(self.T - w, DECODE, np.int8)
        row_tokens = self.steps.n_tokens[w:] if self.steps.n_tokens is not None else np.ones(self.T - w, np.int64)
        return ReplayResult(
            counts=counts, n_tokens=int(row_tokens.sum()), n_layers=self.L,
            token_time=self.token_time[w:], token_compute=self.token_compute[w:],
            token_stall=self.token_stall[w:], token_mm=self.token_mm[w:],
            prefetch_unit_bytes=self.prefetch_unit_bytes, token_phase=phase, row_tokens=row_tokens)
