"""Policies that rank resident units by recency: LRU and FIFO (by recency class), the bypass record
every online policy may use, and :class:`KeyedReplacement`, the simplest base for a new policy.

Ties break towards the lowest neuron index (then lowest layer), so results are exact and
reproducible and small cases can be computed by hand.
"""

from __future__ import annotations

import bisect
from typing import Sequence

import numpy as np

from sparsesim.simulator import neuronset
from sparsesim.simulator.replacement import REPLACEMENT, CacheGeometry, ReplacementPolicy, take_weight

_NEVER = np.iinfo(np.int64).max
_RECORD_MAX = 3   # bypass: a neuron's prefetch record saturates at +-3 (a 3-bit counter, as in SHiP)


class PrefetchRecord(ReplacementPolicy):
    """Bypass by value (``bypass=true``), SHiP-style: each neuron's own prefetch track record.

    The record is a saturating count (+-_RECORD_MAX) of the neuron's prefetches used (+1) or
    evicted unused after a whole token (-1). A prefetched neuron with a negative record is not
    inserted when it would displace a resident; it may take only the free room the others leave
    (lowest index first). An exact predictor never triggers it; ``docs/policies.md`` says why the
    simpler "compare with the victim's rank" rule is useless for LRU and FIFO.
    """

    bypass = False   # subclasses with their own parameters (window, static-pin) never bypass

    def __init__(self, bypass: bool = False):
        if not isinstance(bypass, bool):
            raise ValueError(f"bypass must be true or false, got {bypass!r}")
        self.bypass = bypass

    def setup(self, geometry: CacheGeometry) -> None:
        super().setup(geometry)
        if self.bypass:  # per neuron: filled by a prefetch and not used yet; prefetch track record
            shape = (geometry.n_layers, geometry.width)
            self.speculative = np.zeros(shape, dtype=bool)
            self.record = np.zeros(shape, dtype=np.int8)
            self.filled_at = np.zeros(shape, dtype=np.int64)
            self._now = -1   # the latest step seen (on_evict has none)

    def _track_fill(self, layer: int, filled: int, prefetch: bool, step: int) -> None:
        bits = neuronset.to_bool(filled, self.geometry.width)
        self.speculative[layer][bits] = prefetch
        self.filled_at[layer][bits] = step
        self._now = max(self._now, step)

    def _track_use(self, layer: int, used: int, step: int) -> None:
        self._now = max(self._now, step)
        confirmed = neuronset.to_bool(used, self.geometry.width) & self.speculative[layer]
        self.record[layer][confirmed] = np.minimum(self.record[layer][confirmed] + 1, _RECORD_MAX)
        self.speculative[layer][confirmed] = False

    def _track_evict(self, layer: int, evicted: int) -> None:
        # Unused for a whole token counts against the neuron; evicted sooner, the replacement policy
        # (not the prediction) decided, since a prefetch is at most one token ahead of its use.
        dead = neuronset.to_bool(evicted, self.geometry.width) & self.speculative[layer] \
            & (self.filled_at[layer] <= self._now - self.geometry.n_layers)
        self.record[layer][dead] = np.maximum(self.record[layer][dead] - 1, -_RECORD_MAX)
        self.speculative[layer][dead] = False

    def admit(self, layer, step, filled, prefetch, free):
        if not (self.bypass and prefetch) or filled.bit_count() <= free:
            return filled
        bits = neuronset.to_bool(filled, self.geometry.width)
        doubtful = bits & (self.record[layer] < 0)
        if not doubtful.any():
            return filled
        trusted = neuronset.from_bool(bits & ~doubtful)
        spare = free - trusted.bit_count()   # room the trusted ones leave over
        return trusted | neuronset.first(neuronset.from_bool(doubtful), spare)


class ChosenVictims(PrefetchRecord):
    """Base of policies that cut their victims out of their own order as they choose them (a victim
    search returns them in ``_chosen``): ``on_evict`` then finds them gone. A removal the policy did
    not choose (the window policy's expiry) goes through :meth:`_forget`, which the subclass
    implements from its own per-unit state."""

    def setup(self, geometry: CacheGeometry) -> None:
        super().setup(geometry)
        self._chosen: dict[int, int] = {}

    def on_evict(self, layer, evicted):
        if self.bypass:
            self._track_evict(layer, evicted)
        if self._chosen.get(layer) == evicted:
            del self._chosen[layer]
        else:
            self._forget(layer, evicted)

    def _forget(self, layer: int, units: int) -> None:
        raise NotImplementedError


class RecencyClasses(ChosenVictims):
    """Base of LRU and FIFO: resident neurons grouped by the step of their last stamp.

    A class is the set of one layer's neurons stamped (filled, or used for LRU) at one step; each
    neuron is in at most one class (a needed neuron that a full cache bypassed is stamped by its
    use without being resident: victim searches take only candidates). Restamping moves neurons into a new class by one integer
    AND-NOT per live class of that layer; a victim search walks classes from the oldest
    (step, then layer) and takes whole classes, cutting only the last one by neuron index — a few
    integer operations per class, whatever the number of neurons.
    """

    def setup(self, geometry: CacheGeometry) -> None:
        super().setup(geometry)
        self._full = neuronset.full(geometry.width)
        self._of_layer: list[list[list]] = [[] for _ in range(geometry.n_layers)]   # [step, layer, set], oldest first
        self._order: list[list] = []   # every class by (step, layer); emptied ones linger until compacted
        self._head = 0
        self._compact_at = 4096

    def _stamp(self, layer: int, neurons: int, step: int) -> None:
        """Move ``neurons`` into the class of ``step``. Even a fill must unstamp: ``on_access`` also
        stamps needed neurons that a full cache bypassed, which are in a class but not resident."""
        if not neurons:
            return
        classes = self._unstamp(layer, neurons)
        if classes and classes[-1][0] == step:   # _unstamp leaves no emptied class behind
            classes[-1][2] |= neurons
            return
        cls = [step, layer, neurons]
        classes.append(cls)
        order = self._order
        if not order or (order[-1][0], order[-1][1]) <= (step, layer):
            order.append(cls)          # steps only grow: almost always the newest
        else:                          # same step, lower layer (a per-token prefetch arriving)
            bisect.insort(order, cls, lo=self._head, key=lambda c: (c[0], c[1]))
        if len(order) > self._compact_at:   # drop emptied classes: memory stays bounded by the live ones
            self._order = [c for c in order[self._head:] if c[2]]
            self._head = 0
            self._compact_at = 2 * len(self._order) + 4096

    def _unstamp(self, layer: int, neurons: int) -> list[list]:
        keep = self._full ^ neurons
        classes = self._of_layer[layer]
        emptied = False
        for cls in classes:
            cls[2] &= keep
            emptied = emptied or not cls[2]
        if emptied:
            classes[:] = [cls for cls in classes if cls[2]]
        return classes

    def _forget(self, layer, units):
        self._unstamp(layer, units)

    def victims(self, layer, step, n, candidates):
        out, emptied = 0, False
        classes = self._of_layer[layer]
        for cls in classes:
            take, n = take_weight(cls[2] & candidates, n, 1)
            cls[2] ^= take   # cut as chosen (on_evict finds them gone)
            emptied = emptied or not cls[2]
            out |= take
            if n == 0:
                break
        if emptied:
            classes[:] = [cls for cls in classes if cls[2]]
        self._chosen = {layer: out}
        return out

    def global_victims(self, step: int, n: int, candidates: Sequence[int]) -> dict[int, int]:
        order, head = self._order, self._head
        while head < len(order) and not order[head][2]:
            head += 1
        self._head = head
        weight = self.geometry.weight
        out: dict[int, int] = {}
        emptied = set()
        for i in range(head, len(order)):
            cls = order[i]
            _, layer, members = cls
            take = members & candidates[layer]
            if not take:
                continue
            take, n = take_weight(take, n, weight[layer])
            cls[2] = members ^ take   # cut as chosen (on_evict finds them gone)
            if not cls[2]:
                emptied.add(layer)
            out[layer] = out.get(layer, 0) | take
            if n == 0:
                break
        for layer in emptied:   # the order keeps emptied classes until it is compacted; a layer's list does not
            self._of_layer[layer][:] = [cls for cls in self._of_layer[layer] if cls[2]]
        self._chosen = out
        return dict(out)


@REPLACEMENT.register("lru")
class LeastRecentlyUsed(RecencyClasses):
    """Least recently used: evict the neurons whose last use (or fill) is oldest."""

    def on_fill(self, layer, step, filled, prefetch):
        if self.bypass:
            self._track_fill(layer, filled, prefetch, step)
        self._stamp(layer, filled, step)

    def on_access(self, layer, step, used):
        if self.bypass:
            self._track_use(layer, used, step)
        self._stamp(layer, used, step)


@REPLACEMENT.register("fifo")
class FirstInFirstOut(RecencyClasses):
    """First in, first out: evict the neurons inserted earliest; use does not refresh them."""

    def on_fill(self, layer, step, filled, prefetch):
        if self.bypass:
            self._track_fill(layer, filled, prefetch, step)
        self._stamp(layer, filled, step)

    def on_access(self, layer, step, used):
        if self.bypass:   # use does not refresh FIFO's order; it only confirms a prefetch
            self._track_use(layer, used, step)


class KeyedReplacement(PrefetchRecord):
    """Base of policies with an arbitrary per-neuron integer key (``self.key[layer, neuron]``):
    the candidates with the smallest keys are evicted. Evicted neurons get the key ``_NEVER``."""

    def setup(self, geometry: CacheGeometry) -> None:
        super().setup(geometry)
        self.key = np.full((geometry.n_layers, geometry.width), _NEVER, dtype=np.int64)

    def _bits(self, neurons: int) -> np.ndarray:
        return neuronset.to_bool(neurons, self.geometry.width)

    def on_evict(self, layer, evicted):
        if self.bypass:
            self._track_evict(layer, evicted)
        self.key[layer][self._bits(evicted)] = _NEVER

    def _smallest(self, flat: np.ndarray, n: int) -> np.ndarray:
        """The ``n`` of ``flat`` (ascending indices into ``key``) with the smallest keys; ties at the
        cut go to the lowest index. A partition, not a sort."""
        if n >= flat.size:
            return flat
        keys = self.key.reshape(-1)[flat]
        cut = np.partition(keys, n - 1)[n - 1]
        below = flat[keys < cut]
        return np.concatenate([below, flat[keys == cut][:n - below.size]])

    def victims(self, layer: int, step: int, n: int, candidates: int) -> int:
        width = self.geometry.width
        chosen = self._smallest(layer * width + np.flatnonzero(self._bits(candidates)), n) - layer * width
        bits = np.zeros(width, dtype=bool)
        bits[chosen] = True
        return neuronset.from_bool(bits)

    def global_victims(self, step: int, n: int, candidates: Sequence[int]) -> dict[int, int]:
        """Over all layers, ties at the cut to the lowest layer, then the lowest index; ``n`` is a weight."""
        width = self.geometry.width
        flat = np.flatnonzero(np.concatenate([self._bits(c) for c in candidates]))
        if self.geometry.unit_weights:
            flat = self._smallest(flat, n)
        else:   # the smallest keys, in key order, until their weights reach n
            flat = flat[np.lexsort((flat, self.key.reshape(-1)[flat]))]
            reach = np.cumsum(np.asarray(self.geometry.weight)[flat // width])
            flat = np.sort(flat[:int(np.searchsorted(reach, n)) + 1])
        chosen = np.zeros(len(candidates) * width, dtype=bool)
        chosen[flat] = True
        chosen = chosen.reshape(len(candidates), width)
        return {int(l): neuronset.from_bool(chosen[l]) for l in np.unique(flat // width)}
