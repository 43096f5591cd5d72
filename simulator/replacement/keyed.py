"""Policies that rank resident neurons and evict the lowest: LRU, FIFO (by recency class) and LFU.

Ties break towards the lowest neuron index (then lowest layer), so results are exact and
reproducible and small cases can be computed by hand.
"""

from __future__ import annotations

import bisect
from typing import Sequence

import numpy as np

from simulator import neuronset
from simulator.replacement import REPLACEMENT, CacheGeometry, ReplacementPolicy

_NEVER = np.iinfo(np.int64).max


class RecencyClasses(ReplacementPolicy):
    """Base of LRU and FIFO: resident neurons grouped by the step of their last stamp.

    A class is the set of one layer's neurons stamped (filled, or used for LRU) at one step; each
    neuron is in exactly one class. Restamping moves neurons into a new class by one integer
    AND-NOT per live class of that layer; a victim search walks classes from the oldest
    (step, then layer) and takes whole classes, cutting only the last one by neuron index — a few
    integer operations per class, whatever the number of neurons.
    """

    def setup(self, geometry: CacheGeometry) -> None:
        super().setup(geometry)
        self._full = neuronset.full(geometry.width)
        self._of_layer: list[list[list]] = [[] for _ in range(geometry.n_layers)]   # [step, layer, set], oldest first
        self._order: list[list] = []   # every class by (step, layer); emptied ones linger until the head passes
        self._head = 0

    def _stamp(self, layer: int, neurons: int, step: int) -> None:
        if not neurons:
            return
        classes = self._unstamp(layer, neurons)
        if classes and classes[-1][0] == step:
            classes[-1][2] |= neurons
            return
        cls = [step, layer, neurons]
        classes.append(cls)
        order = self._order
        if not order or (order[-1][0], order[-1][1]) <= (step, layer):
            order.append(cls)          # steps only grow: almost always the newest
        else:                          # same step, lower layer (a per-token prefetch arriving)
            bisect.insort(order, cls, lo=self._head, key=lambda c: (c[0], c[1]))

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

    def on_evict(self, layer, evicted):
        self._unstamp(layer, evicted)

    def victims(self, layer, step, n, candidates):
        out = 0
        for cls in self._of_layer[layer]:
            take = cls[2] & candidates
            size = take.bit_count()
            if size >= n:
                return out | neuronset.first(take, n)
            out |= take
            n -= size
        return out

    def global_victims(self, step: int, n: int, candidates: Sequence[int]) -> dict[int, int]:
        order, head = self._order, self._head
        while head < len(order) and not order[head][2]:
            head += 1
        if head > 4096 and 2 * head > len(order):
            del order[:head]
            head = 0
        self._head = head
        out: dict[int, int] = {}
        for i in range(head, len(order)):
            _, layer, members = order[i]
            take = members & candidates[layer]
            if not take:
                continue
            size = take.bit_count()
            if size >= n:
                out[layer] = out.get(layer, 0) | neuronset.first(take, n)
                break
            out[layer] = out.get(layer, 0) | take
            n -= size
        return out


@REPLACEMENT.register("lru")
class LeastRecentlyUsed(RecencyClasses):
    """Least recently used: evict the neurons whose last use (or fill) is oldest."""

    def on_fill(self, layer, step, filled, prefetch):
        self._stamp(layer, filled, step)

    def on_access(self, layer, step, used):
        self._stamp(layer, used, step)


@REPLACEMENT.register("fifo")
class FirstInFirstOut(RecencyClasses):
    """First in, first out: evict the neurons inserted earliest; use does not refresh them."""

    def on_fill(self, layer, step, filled, prefetch):
        self._stamp(layer, filled, step)


class KeyedReplacement(ReplacementPolicy):
    """Base of policies with an arbitrary per-neuron integer key (``self.key[layer, neuron]``):
    the candidates with the smallest keys are evicted. Evicted neurons get the key ``_NEVER``."""

    def setup(self, geometry: CacheGeometry) -> None:
        super().setup(geometry)
        self.key = np.full((geometry.n_layers, geometry.width), _NEVER, dtype=np.int64)
        self._flat_index = np.arange(geometry.n_layers * geometry.width, dtype=np.int64)
        # Composite keys stay unique: key * span + index, span > number of neurons.
        self._span = np.int64(geometry.n_layers * geometry.width)

    def _bits(self, neurons: int) -> np.ndarray:
        return neuronset.to_bool(neurons, self.geometry.width)

    def on_evict(self, layer, evicted):
        self.key[layer][self._bits(evicted)] = _NEVER

    def victims(self, layer: int, step: int, n: int, candidates: int) -> int:
        keys = np.where(self._bits(candidates), self.key[layer], _NEVER)
        return neuronset.from_bool(_smallest_by_class(keys, n))

    def global_victims(self, step: int, n: int, candidates: Sequence[int]) -> dict[int, int]:
        bits = np.stack([self._bits(c) for c in candidates])
        comp = np.where(bits, self.key * self._span + self._flat_index.reshape(bits.shape), _NEVER)
        chosen = _smallest(comp.reshape(-1), n).reshape(bits.shape)
        return {int(l): neuronset.from_bool(chosen[l]) for l in np.flatnonzero(chosen.any(axis=1))}


def _smallest_by_class(keys: np.ndarray, n: int) -> np.ndarray:
    """Boolean mask of the ``n`` smallest keys, ties to the lowest index.

    Walks the key classes from the smallest: few distinct values among the lowest keys make this
    a handful of vector passes, not a sort.
    """
    out = np.zeros(keys.shape, dtype=bool)
    keys = keys.copy()
    while n > 0:
        low = keys.min()
        if low == _NEVER:
            break
        cls = keys == low
        size = int(np.count_nonzero(cls))
        if size > n:
            cls[np.flatnonzero(cls)[n:]] = False
            size = n
        out |= cls
        keys[cls] = _NEVER
        n -= size
    return out


def _smallest(comp: np.ndarray, n: int) -> np.ndarray:
    """Boolean mask of the ``n`` smallest entries of ``comp`` (all distinct by construction)."""
    out = np.zeros(comp.shape, dtype=bool)
    if n <= 0:
        return out
    if n >= comp.size:
        out[:] = comp != _NEVER
        return out
    out[np.argpartition(comp, n - 1)[:n]] = True
    return out


@REPLACEMENT.register("lfu")
class LeastFrequentlyUsed(KeyedReplacement):
    """Least frequently used since insertion; ties go to the least recently used."""

    def setup(self, geometry):
        super().setup(geometry)
        self.uses = np.zeros_like(self.key)
        self.last = np.zeros_like(self.key)

    def _rekey(self, layer, bits):
        self.key[layer, bits] = (self.uses[layer, bits] << 32) | self.last[layer, bits]

    def on_fill(self, layer, step, filled, prefetch):
        bits = self._bits(filled)
        self.uses[layer, bits] = 0
        self.last[layer, bits] = step
        self._rekey(layer, bits)

    def on_access(self, layer, step, used):
        bits = self._bits(used)
        self.uses[layer, bits] += 1
        self.last[layer, bits] = step
        self._rekey(layer, bits)
