"""Prefetch issue and arrival: step 1 of the residency contract and the arrivals that interleave with
steps 2–6 (``docs/simulator.md``, "Residency contract").

:class:`Prefetcher` issues the predictions due at a step (:class:`~sparsesim.simulator.schedule.PrefetchSchedule`)
through the predictor's causal view: each prediction, less a hot unit's units, is scored against the
trace, protected (:class:`~sparsesim.simulator.residency.Residency`), kept for its target's FFN under
``false_negatives=drop``, cut to the bytes-in-flight cap (``prefetch_cap``) and to what the cache
could keep (``prefetch_no_room``), then read as one prefetch batch
(:class:`~sparsesim.simulator.reads.StorageReads`). When a batch lands its units are staged (two-phase
gate rows) or inserted, evicting as the contract allows, and the cache-management time they cost is
owed to the next FFN. It keeps the batches in flight per layer, so that a late hit waits for the
batch that brings it.
"""

from __future__ import annotations

import simpy

from sparsesim.simulator import neuronset
from sparsesim.simulator.accounting import Accounting
from sparsesim.simulator.device import PREFETCH, Batch
from sparsesim.simulator.predictors import CausalView, Predictor
from sparsesim.simulator.reads import StorageReads
from sparsesim.simulator.residency import Residency
from sparsesim.simulator.scenario import ModelFootprint, Scenario
from sparsesim.simulator.schedule import PrefetchSchedule
from sparsesim.simulator.steps import NeededSets
from sparsesim.simulator.timing import ManagementDebt


class Prefetcher:
    def __init__(self, predictor: Predictor, view: CausalView, schedule: PrefetchSchedule, needed: NeededSets,
                 footprint: ModelFootprint, scenario: Scenario, residency: Residency, acc: Accounting,
                 reads: StorageReads, debt: ManagementDebt):
        self.predictor, self.view, self.schedule = predictor, view, schedule
        self.res, self.acc, self.reads, self.debt = residency, acc, reads, debt
        self.n_layers = schedule.n_layers
        self._needed, self._cold = needed.of, needed.cold
        self.weight = residency.cache.weight
        self.cap, self.two_phase = scenario.prefetch_cap, scenario.two_phase
        # false_negatives=drop: target step -> the predicted set its FFN computes (None: not dropping)
        self.computed: dict[int, int] | None = {} if scenario.false_negatives == "drop" else None
        # Rows per unit one read takes (None: all); a prefetch reads only the gate row under two-phase.
        self.rows = 1 if scenario.two_phase else None
        self.unit_bytes = footprint.row_bytes if scenario.two_phase else footprint.unit_size
        self.weight_bytes = footprint.row_bytes if scenario.two_phase else float(footprint.weight_bytes)
        self.inflight_weight = 0
        self.pending: list[list[Batch]] = [[] for _ in range(self.n_layers)]   # batches in flight, per layer
        self.step = 0   # the decode's current step: what an arrival's insertion is stamped with

    def issue(self, step: int, targets: range) -> None:
        """Issue the predictions of ``targets`` at the start of ``step`` (the view's frontier), in order."""
        self.view.frontier = step
        for target in targets:
            self._issue(target)

    def _issue(self, target: int) -> None:
        token, layer = divmod(target, self.n_layers)
        pred = self.predictor.predict(self.view, token, layer)
        if pred is None:
            return
        pred = neuronset.from_row(pred)
        if self._cold is not None:
            pred &= self._cold[layer]
        truth, n_truth = self._needed(token)
        self.acc.predicted(layer, pred, truth[layer], n_truth[layer])
        self.res.predict(layer, target, pred)
        if self.computed is not None:
            self.computed[target] = pred
        fetch = self.res.fetch_set(layer, pred)
        n = fetch.bit_count()
        dropped = no_room = 0
        if self.cap and n:
            # Bytes-in-flight cap: issue what fits now, drop the rest of this prediction.
            room = max(int(self.cap // self.weight_bytes) - self.inflight_weight, 0) // self.weight[layer]
            if room < n:
                fetch, dropped, n = neuronset.first(fetch, room), n - room, room
        if n and not self.two_phase:   # gate rows go to a staging buffer, not the cache
            room = max(self.res.room_for_prefetch(layer, n), 0)
            if room < n:   # never read what the cache could not keep: the lowest-index units that fit
                fetch, no_room, n = neuronset.first(fetch, room), n - room, room
        self.acc.prefetch_sent(layer, n, dropped, no_room)
        if n == 0:
            return
        self.res.send(layer, fetch)
        self.inflight_weight += n * self.weight[layer]
        self.pending[layer].append(self.reads.units(layer, fetch, PREFETCH, target, self._arrived, self.rows, n))

    def _arrived(self, batch: Batch) -> None:
        """A prefetch batch is in: staged (two-phase gate rows) or inserted, evicting as allowed."""
        layer, fetched, n_fetched = batch.layer, batch.neurons, batch.count
        res = self.res
        res.land(layer, fetched)
        self.inflight_weight -= n_fetched * self.weight[layer]
        self.pending[layer].remove(batch)
        if self.two_phase:  # gate rows wait in a staging buffer for the layer's input; not cached
            res.stage(layer, batch.target, fetched)
            return
        inserted, n_inserted, evicted = res.insert_prefetch(layer, self.step, fetched, n_fetched)
        n_evicted = self.acc.arrived(layer, n_fetched, inserted, n_inserted, evicted)
        self.debt.add(layer, n_inserted, evicted, n_evicted)

    def arrivals(self, layer: int, units: int) -> list[simpy.Event]:
        """Completion events of the batches in flight for ``layer`` that bring any of ``units``."""
        completion = self.reads.device.completion
        return [completion(b) for b in self.pending[layer] if b.neurons & units]
