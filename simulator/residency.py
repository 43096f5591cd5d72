"""Where every unit is — resident, in flight, staged — and which units may not be evicted.

This module implements the residency contract of ``docs/simulator.md``: a step's needed set is
*in use* from its lookup to the end of its FFN; a target step's predicted set is *predicted* from
the moment it is issued to the end of that step's FFN. A prefetch insertion may evict neither; a
demand insertion (units the running FFN needs) may evict predicted units when nothing else is
left, never units in use. Protection is global: under the global partition an insertion for one
layer never evicts another layer's protected units.
"""

from __future__ import annotations

from sparsesim.simulator import neuronset
from sparsesim.simulator.cache import NeuronCache


def _merge(a: dict[int, int], b: dict[int, int]) -> dict[int, int]:
    for layer, units in b.items():
        a[layer] = a.get(layer, 0) | units
    return a


class Residency:
    def __init__(self, cache: NeuronCache):
        n_layers = cache.geometry.n_layers
        self.cache = cache
        self.resident = cache.resident            # the cache's own list: resident[layer] is a set
        self.inflight = [0] * n_layers            # prefetched, read not complete
        self._inflight_layers: set[int] = set()
        self.staged = [0] * n_layers              # two-phase: gate row arrived, unit not cached
        self._staged_for: list[dict[int, int]] = [{} for _ in range(n_layers)]   # layer -> {target step: rows}
        self._by_target: list[dict[int, int]] = [{} for _ in range(n_layers)]   # layer -> {target step: P}
        self.predicted = [0] * n_layers           # union of the outstanding predicted sets
        self.in_use_layer, self.in_use = -1, 0
        self.protected: dict[int, int] = {}       # layer -> in use | predicted, only where non-empty

    # -- protection ----------------------------------------------------------------------------
    def predict(self, layer: int, target: int, units: int) -> None:
        """``units`` are predicted for ``target``: protected until its FFN ends."""
        by_target = self._by_target[layer]
        by_target[target] = by_target.get(target, 0) | units
        self.predicted[layer] |= units
        self.protected[layer] = self.protected.get(layer, 0) | units

    def begin_use(self, layer: int, need: int) -> None:
        self.in_use_layer, self.in_use = layer, need
        if need:
            self.protected[layer] = self.protected.get(layer, 0) | need

    def end_step(self, layer: int, step: int) -> None:
        """The FFN of ``step`` (a step of ``layer``) ended: its needed and predicted sets are free."""
        by_target = self._by_target[layer]
        if by_target.pop(step, None) is not None:
            union = 0
            for units in by_target.values():
                union |= units
            self.predicted[layer] = union
        self.in_use_layer, self.in_use = -1, 0
        if self.predicted[layer]:
            self.protected[layer] = self.predicted[layer]
        else:
            self.protected.pop(layer, None)

    # -- movement ------------------------------------------------------------------------------
    def fetch_set(self, layer: int, predicted: int) -> int:
        """The predicted units that must be read: neither resident, in flight nor staged."""
        present = self.resident[layer] | self.inflight[layer] | self.staged[layer]
        return predicted & ~present

    def room_for_prefetch(self, layer: int, n_fetch: int) -> int:
        """How many of ``n_fetch`` units just predicted for ``layer`` (and already counted in its
        protected set) the cache could keep: capacity less every other unit that is protected or
        in flight in the partition, whether resident yet or not — those claims came first. In the
        global pool claims and capacity are weights; the answer is in units of ``layer``."""
        cache = self.cache
        if cache.global_pool:
            inflight, weight, claimed = self.inflight, cache.weight, 0
            for l, units in self.protected.items():
                claimed += (units | inflight[l]).bit_count() * weight[l]
            for l in self._inflight_layers:
                if l not in self.protected:
                    claimed += inflight[l].bit_count() * weight[l]
            return (cache.capacity[0] - claimed) // weight[layer] + n_fetch
        claimed = (self.protected.get(layer, 0) | self.inflight[layer]).bit_count()
        return cache.capacity[layer] - claimed + n_fetch

    def send(self, layer: int, units: int) -> None:
        """A prefetch of ``units`` was issued."""
        self.inflight[layer] |= units
        self._inflight_layers.add(layer)

    def land(self, layer: int, units: int) -> None:
        """A prefetch read of ``units`` completed (the caller stages or inserts them)."""
        self.inflight[layer] ^= units
        if not self.inflight[layer]:
            self._inflight_layers.discard(layer)

    def stage(self, layer: int, target: int, units: int) -> None:
        """Two-phase: gate rows of ``units`` arrived for ``target``; they wait for its FFN."""
        self.staged[layer] |= units
        by_target = self._staged_for[layer]
        by_target[target] = by_target.get(target, 0) | units

    def evaluate_staged(self, layer: int, step: int, need: int) -> tuple[int, int]:
        """Two-phase, at the FFN of ``step``: staged units it needs are kept (their up/down rows were
        just read), whatever step they were staged for; rows staged for this step or an earlier one
        that it does not need are dropped; rows staged for a later step wait for it. Returns
        (kept, dropped)."""
        kept = self.staged[layer] & need
        dropped = 0
        by_target = self._staged_for[layer]
        for target in [h for h in by_target if h <= step]:
            dropped |= by_target.pop(target)
        dropped &= ~need
        if kept:
            for target, rows in list(by_target.items()):
                rows &= ~kept
                if rows:
                    by_target[target] = rows
                else:
                    del by_target[target]
        self.staged[layer] ^= kept | dropped
        return kept, dropped

    def insert_prefetch(self, layer: int, step: int, units: int, n_units: int) -> tuple[int, int, dict[int, int]]:
        """An arrival of ``units`` (``n_units`` of them): units the running FFN needs are inserted
        with demand rights; the rest may displace only unprotected units, after the policy's
        ``admit``; what does not fit is bypassed (lowest index first kept). Returns (inserted, how
        many, evicted)."""
        cache = self.cache
        urgent = units & self.in_use if layer == self.in_use_layer else 0
        n_urgent = urgent.bit_count() if urgent else 0
        optional = units ^ urgent if urgent else units
        free = cache.free(layer)
        if n_units > free:
            optional = cache.policy.admit(layer, step, optional, True, free)
        n_optional = optional.bit_count() if optional is not units else n_units
        evicted = cache.make_room(layer, step, n_urgent + n_optional, self.protected) if n_urgent + n_optional > free \
            else {}
        free = cache.free(layer)
        if n_urgent > free:
            _merge(evicted, cache.make_room(layer, step, n_urgent, {layer: self.in_use}))
            free = cache.free(layer)
        room = free - n_urgent
        if n_optional > room:
            optional, n_optional = neuronset.first(optional, room), room
        inserted = urgent | optional
        if inserted:
            cache.add(layer, step, inserted, True, n_urgent + n_optional)
        return inserted, n_urgent + n_optional, evicted

    def insert_demand(self, layer: int, step: int, units: int, n: int) -> tuple[int, int, dict[int, int]]:
        """Units the running FFN needs (``n`` of them): evict unprotected units first, then predicted
        ones, never units in use. Returns (inserted, how many, evicted). Every unit is inserted when
        the partition holds the step's needed set, which the run guarantees for every decode step; a
        prefill batch's larger set streams the rest (lowest index first kept: read, used, not cached)."""
        cache = self.cache
        evicted = cache.make_room(layer, step, n, self.protected) if n > cache.free(layer) else {}
        if n > cache.free(layer):
            _merge(evicted, cache.make_room(layer, step, n, {self.in_use_layer: self.in_use}))
        free = cache.free(layer)
        if n > free:
            units, n = neuronset.first(units, free), free
        if n:
            cache.add(layer, step, units, False, n)
        return units, n, evicted

    def expire(self, layer: int, step: int) -> int:
        """Units the policy drops now (the window policy), except protected ones."""
        stale = self.cache.policy.expire(layer, step)
        if stale:
            stale &= self.resident[layer] & ~self.protected.get(layer, 0)
            if stale:
                self.cache.remove(layer, stale)
        return stale
