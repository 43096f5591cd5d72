"""The replay: a simpy simulation of batch-1 decoding, token by token, layer by layer.

This module is the decode process and nothing else: :class:`ReplayEngine` runs each layer step in
the order the residency contract fixes (``docs/simulator.md``) and wires the parts that hold each
concern —

* :class:`~sparsesim.simulator.steps.NeededSets` — each step row's needed sets as integers;
* :class:`~sparsesim.simulator.prefetcher.Prefetcher` — the predictions due at a step
  (:class:`~sparsesim.simulator.schedule.PrefetchSchedule`), issued as prefetch batches, and their
  arrivals;
* :class:`~sparsesim.simulator.residency.Residency` — where units are, what is protected;
* :class:`~sparsesim.simulator.reads.StorageReads` — unit sets and streamed weights as requests,
  submitted to the storage device (:class:`~sparsesim.simulator.device.StorageQueue`);
* :class:`~sparsesim.simulator.timing.StepCosts` — how long each piece takes, and
  :class:`~sparsesim.simulator.timing.ManagementDebt` — the cache-management time owed to the next FFN;
* :class:`~sparsesim.simulator.accounting.Accounting` — what is counted; :class:`TokenTimes` — the
  time of each step row.

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

from sparsesim.simulator.accounting import Accounting, Counts
from sparsesim.simulator.device import DEMAND
from sparsesim.simulator.io_path import ReadPath
from sparsesim.simulator.predictors import CausalView, Predictor
from sparsesim.simulator.prefetcher import Prefetcher
from sparsesim.simulator.reads import IoBatch, StorageReads
from sparsesim.simulator.residency import Residency
from sparsesim.simulator.scenario import ModelFootprint, Scenario
from sparsesim.simulator.schedule import PrefetchSchedule
from sparsesim.simulator.steps import NeededSets, ReplaySteps
from sparsesim.simulator.storage import BackingStore
from sparsesim.simulator.timing import ManagementDebt, StepCosts
from sparsesim.tracecolumns import DECODE

__all__ = ["ReplayEngine", "ReplayResult", "TokenTimes"]


@dataclass
class TokenTimes:
    """Simulated seconds of each step row (a decode token or a prefill batch): in all, computing,
    stalled on storage, managing the cache."""

    total: np.ndarray       # [S]
    compute: np.ndarray     # [S]
    stall: np.ndarray       # [S]
    management: np.ndarray  # [S]

    @classmethod
    def zeros(cls, n: int) -> "TokenTimes":
        return cls(np.zeros(n), np.zeros(n), np.zeros(n), np.zeros(n))

    def record(self, row: int, total: float, compute: float, stall: float, management: float) -> None:
        self.total[row], self.compute[row], self.stall[row], self.management[row] = total, compute, stall, management

    def since(self, row: int) -> "TokenTimes":
        """The step rows from ``row`` on (the measured ones, after the warm-up)."""
        return TokenTimes(self.total[row:], self.compute[row:], self.stall[row:], self.management[row:])


@dataclass
class ReplayResult:
    """A replay's counters and per-token times over the measured tokens
    (:mod:`sparsesim.simulator.metrics` turns them into the reported metrics)."""

    counts: Counts
    n_tokens: int               # measured tokens (a prefill batch counts each of its tokens)
    n_layers: int
    times: TokenTimes           # [S] s per measured step row: a decode token or a prefill batch
    prefetch_unit_bytes: float  # bytes one prefetch reads per unit (a row under two-phase loading)
    token_phase: np.ndarray     # [S] PREFILL / DECODE of each measured step row
    row_tokens: np.ndarray      # [S] tokens each measured step row stands for


class ReplayEngine:
    """The decode process of one replay over its parts (the module docstring lists them); :meth:`run`
    replays every step row once."""

    def __init__(self, steps: ReplaySteps, footprint: ModelFootprint, scenario: Scenario,
                 profile, store: BackingStore, residency: Residency, predictor: Predictor,
                 io_log: list[IoBatch] | None = None, lookup_log: list[tuple] | None = None,
                 model: dict | None = None, hot: list[int] | None = None):
        self.steps, self.fp, self.sc, self.res = steps, footprint, scenario, residency
        self.dense = predictor.dense
        self.lookup_log = lookup_log
        self.T, self.L = steps.masks.shape[:2]
        self.env = env = simpy.Environment()
        self.acc = acc = Accounting(self.L)
        self.needed = NeededSets(steps.masks, footprint.d_ff, hot)
        read_path = ReadPath(store, scenario, profile)
        self.costs = StepCosts(footprint, scenario, profile, predictor.flops, acc.totals, dense=predictor.dense,
                               model=model, hot_units=None if hot is None else [h.bit_count() for h in hot],
                               read_path=read_path)
        self.debt = ManagementDebt(self.costs, footprint.uniform)
        self.reads = StorageReads(env, footprint, scenario, profile, read_path, acc, self.needed.n_bytes,
                                  self.costs.scale, io_log)
        view = CausalView(steps.masks, steps.tokens, allow_future=predictor.sees_future, last_masks=steps.last_masks)
        schedule = PrefetchSchedule(scenario.schedule, scenario.lookahead, self.L, self.T * self.L)
        self.prefetch = Prefetcher(predictor, view, schedule, self.needed, footprint, scenario, residency, acc,
                                   self.reads, self.debt)
        self.times = TokenTimes.zeros(self.T)

    # -- two-phase loading (PowerInfer-2) -------------------------------------------------------
    def _two_phase_reads(self, env: simpy.Environment, layer: int, step: int, ready: int, miss: int, late: int,
                         late_gates: list[simpy.Event]) -> list[simpy.Event]:
        """Demand reads of one FFN under two-phase loading; returns the events the FFN waits for.

        The gate of a staged unit can be evaluated only now that the layer's input exists, so the
        up/down rows of the needed ones (``ready``) are read on the critical path: together with
        the whole rows of the missed units in one batch, or, for units whose gate prefetch is
        still in flight (``late``), in a dependent batch after it lands.
        """
        waits = []
        if miss or ready:
            waits.append(self.reads.device.completion(self.reads.two_phase(layer, miss, ready, step)))
        if late_gates:
            waits.append(env.process(self._up_down_after(late_gates, layer, step, late)))
        return waits

    def _up_down_after(self, gate_reads: list[simpy.Event], layer: int, step: int, late: int):
        for gate_read in gate_reads:
            yield gate_read
        yield self.reads.device.completion(self.reads.up_down(layer, late, step))

    def _evaluate_gates(self, env: simpy.Environment, layer: int, step: int, need: int):
        """Every staged gate row of the layer is evaluated on this token's input: needed units
        (their up/down rows just read) enter the cache whole, the rest are dropped. Returns the
        compute seconds of evaluating the dropped rows (the kept ones are part of the FFN)."""
        kept, dropped = self.res.evaluate_staged(layer, step, need)
        n_dropped = dropped.bit_count()
        self.acc.gates_evaluated(layer, kept.bit_count(), n_dropped)
        if kept:
            _, n_kept, evicted = self.res.insert_demand(layer, step, kept, kept.bit_count())
            self.debt.add(layer, n_kept, evicted, self.acc.filled(layer, n_kept, evicted))
        if not n_dropped:
            return 0.0
        seconds = self.costs.gate_rows(n_dropped)
        yield env.timeout(seconds)
        return seconds

    # -- the decode loop ----------------------------------------------------------------------
    def _decode(self, env: simpy.Environment):
        L, acc, res, costs, times = self.L, self.acc, self.res, self.costs, self.times
        policy = res.cache.policy
        prefetch, device = self.prefetch, self.reads.device
        due, issue, arrivals, computed = prefetch.schedule.targets, prefetch.issue, prefetch.arrivals, prefetch.computed
        read, completion, owe, take_owed = self.reads.units, device.completion, self.debt.add, self.debt.take
        dense, two_phase = self.dense, self.sc.two_phase
        every, n_every, needed_of = self.needed.every, self.needed.n_every, self.needed.of
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
                self._snapshot.totals.io_busy = device.busy
                self._snapshot.totals.link_busy = device.link_busy
            if phases is not None:
                acc.set_phase(int(phases[t]))
            batch = int(row_tokens[t]) if row_tokens is not None else 1   # tokens this step row computes
            start = env.now
            compute = stall = mm = 0.0
            needed, n_needed = (every, n_every) if dense else needed_of(t)
            for l in range(L):
                prefetch.step = step = t * L + l
                if after_attention:   # 2. before 1: a layer's prediction reads its attention output
                    s, w = yield from self._dense_weights(env, costs.nonffn(l, positions[t], batch), step)
                    stall, compute = stall + s, compute + w
                # 1. predictions due now: their cost on the critical path (a low-rank predictor of the layer
                # with predictor_rank, inside the clusters under pipeline=cluster), then the issue
                targets = due(step)
                seconds = costs.predictor(l) if predict_layer else \
                    costs.predict * len(targets) if targets and costs.predict else 0.0
                if seconds:
                    yield env.timeout(seconds)
                    compute += seconds
                if targets:
                    issue(step, targets)
                if not after_attention:   # 2. non-FFN work of this layer
                    s, w = yield from self._dense_weights(env, costs.nonffn(l, positions[t], batch), step)
                    stall, compute = stall + s, compute + w
                # 3. lookup: resident, in-flight and staged sets are disjoint
                need, n_need = needed[l], n_needed[l]
                if computed is not None and step in computed:   # the drop rule: the FFN computes the predicted set
                    need = computed.pop(step)
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
                waits = arrivals(l, late) if late else []
                if two_phase:
                    waits = self._two_phase_reads(env, l, step, ready, miss, late, waits)
                elif n_miss and not pipelined:
                    waits.append(completion(read(l, miss, DEMAND, step, count=n_miss)))
                for event in waits:
                    yield event
                stall += env.now - t0
                # 4. demand fill (late arrivals were inserted with demand rights as they landed)
                if n_miss:
                    _, n_kept, evicted = res.insert_demand(l, step, miss, n_miss)
                    owe(l, n_kept, evicted, acc.filled(l, n_kept, evicted, n_miss - n_kept))
                if two_phase:
                    compute += (yield from self._evaluate_gates(env, l, step, need))
                # 5. use; the window policy may expire units
                acc.used(l, need)
                policy.on_access(l, step, need)
                stale = res.expire(l, step)
                if stale:
                    owe(l, 0, {l: stale}, acc.expired(l, stale))
                # 6. the FFN over the needed units (or the resident matrix), plus cache management
                charge = take_owed()
                if pipelined:   # the misses are read inside the FFN, cluster by cluster
                    misses_read = read(l, miss, DEMAND, step, count=n_miss) if n_miss else None
                    t_ffn, busy = costs.pipelined(l, n_need, n_miss)
                    if hot:
                        t_ffn, busy = costs.with_hot(l, t_ffn, n_need), costs.with_hot(l, busy, n_need, charge=False)
                    t0 = env.now
                    yield env.timeout(t_ffn + charge)
                    if misses_read is not None and misses_read.end < 0:
                        yield completion(misses_read)
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
            s, w = yield from self._dense_weights(env, costs.head(), step)   # the LM head, at the last layer's step
            stall, compute = stall + s, compute + w
            times.record(t, env.now - start, compute, stall, mm)

    def _dense_weights(self, env: simpy.Environment, cost: tuple[float, float], step: int):
        """Non-FFN weights (a layer's attention and KV cache, the LM head) of ``cost`` (bytes,
        seconds) at ``step``: streamed from flash first when they live there, then computed from DRAM.
        Returns (stall, compute) seconds."""
        nbytes, seconds = cost
        stall = 0.0
        if self.sc.nonffn_in == "flash":
            t0 = env.now
            yield self.reads.device.completion(self.reads.stream(nbytes, step))
            stall = env.now - t0
        yield env.timeout(seconds)
        return stall, seconds

    def run(self) -> ReplayResult:
        env, acc, device = self.env, self.acc, self.reads.device
        placed = self.res.cache.preload(self.sc.warm)
        acc.totals.preloaded_units = sum(placed)
        acc.totals.preloaded_bytes = float(sum(placed) * self.fp.unit_size if self.fp.uniform else
                                           sum(n * b for n, b in zip(placed, self.fp.unit_bytes)))
        env.process(self._decode(env))
        env.run()
        acc.totals.io_busy = device.busy
        acc.totals.link_busy = device.link_busy
        w = self.sc.warmup
        counts = acc.finish(self._snapshot, self.res.staged)
        counts.totals.prompt_prefill_s = self.costs.prompt_prefill(self.fp)   # once, before the replayed tokens
        phase = self.steps.phase[w:] if self.steps.phase is not None else np.full(self.T - w, DECODE, np.int8)
        row_tokens = self.steps.n_tokens[w:] if self.steps.n_tokens is not None else np.ones(self.T - w, np.int64)
        return ReplayResult(
            counts=counts, n_tokens=int(row_tokens.sum()), n_layers=self.L, times=self.times.since(w),
            prefetch_unit_bytes=self.prefetch.unit_bytes, token_phase=phase, row_tokens=row_tokens)
