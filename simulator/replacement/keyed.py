"""Policies that rank neurons by one integer key and evict the smallest: LRU, FIFO, LFU.

Ties break towards the lowest neuron index (then lowest layer), so results are exact and
reproducible and small cases can be computed by hand.
"""

from __future__ import annotations

import heapq

import numpy as np

from simulator import bitset
from simulator.replacement import REPLACEMENT, CacheGeometry, ReplacementPolicy

_NEVER = np.iinfo(np.int64).max


class KeyedReplacement(ReplacementPolicy):
    """Base: ``self.key[layer, neuron]``; the candidates with the smallest keys are evicted.

    Evicted neurons get the key ``_NEVER``. Policies whose keys are the step of a fill or use
    (``stamped``: LRU, FIFO and their relatives) also keep an index from each key to the layers
    holding it, so a global eviction visits only the oldest few (key, layer) classes instead of
    every neuron of every layer.
    """

    stamped = False

    def setup(self, geometry: CacheGeometry) -> None:
        super().setup(geometry)
        self.key = np.full((geometry.n_layers, geometry.width), _NEVER, dtype=np.int64)
        w = geometry.width
        self._flat_index = np.arange(geometry.n_layers * w, dtype=np.int64)
        # Composite keys stay unique: key * span + index, span > number of neurons.
        self._span = np.int64(geometry.n_layers * w)
        self._indexed = self.stamped and geometry.partition == "global"
        self._layers_of: dict[int, set[int]] = {}
        self._keys: list[int] = []   # heap of the keys in _layers_of

    def _bits(self, packed: np.ndarray) -> np.ndarray:
        return np.unpackbits(packed, bitorder="little").view(bool)

    def _stamp(self, layer: int, bits: np.ndarray, value: int) -> None:
        self.key[layer][bits] = value   # row view first: 2x faster than key[layer, bits]
        if self._indexed:
            layers = self._layers_of.get(value)
            if layers is None:
                layers = self._layers_of[value] = set()
                heapq.heappush(self._keys, value)
            layers.add(layer)

    def on_evict(self, layer, evicted):
        self.key[layer][self._bits(evicted)] = _NEVER

    def victims(self, layer: int, step: int, n: int, candidates: np.ndarray) -> np.ndarray:
        keys = np.where(self._bits(candidates), self.key[layer], _NEVER)
        return bitset.from_bool(_smallest_by_class(keys, n), self.geometry.n_bytes)

    def global_victims(self, step: int, n: int, candidates: np.ndarray) -> np.ndarray:
        if not self._indexed:
            bits = self._bits(candidates.reshape(-1)).reshape(candidates.shape[0], -1)
            comp = np.where(bits, self.key * self._span + self._flat_index.reshape(bits.shape), _NEVER)
            chosen = _smallest(comp.reshape(-1), n).reshape(bits.shape)
            return np.packbits(chosen, axis=1, bitorder="little")
        return self._oldest_classes(n, candidates)

    def _oldest_classes(self, n: int, candidates: np.ndarray) -> np.ndarray:
        """Walk (key, layer) classes from the oldest key, lowest layer first, lowest index first."""
        chosen = np.zeros(candidates.shape[:1] + (self.geometry.width,), dtype=bool)
        rows: dict[int, np.ndarray] = {}
        popped = []
        while n > 0 and self._keys:
            k = heapq.heappop(self._keys)
            popped.append(k)
            for layer in sorted(self._layers_of[k]):
                same = self.key[layer] == k
                if not same.any():           # every neuron of this class was re-keyed or evicted
                    self._layers_of[k].discard(layer)
                    continue
                if layer not in rows:
                    rows[layer] = self._bits(candidates[layer]) & ~chosen[layer]
                cls = same & rows[layer]
                size = int(np.count_nonzero(cls))
                if size > n:
                    cls[np.flatnonzero(cls)[n:]] = False
                    size = n
                chosen[layer] |= cls
                rows[layer] &= ~cls
                n -= size
                if n == 0:
                    break
        for k in popped:
            if self._layers_of[k]:
                heapq.heappush(self._keys, k)
            else:
                del self._layers_of[k]
        return np.packbits(chosen, axis=1, bitorder="little")


def _smallest_by_class(keys: np.ndarray, n: int) -> np.ndarray:
    """Boolean mask of the ``n`` smallest keys, ties to the lowest index.

    Walks the key classes from the smallest: step-valued keys (LRU, FIFO) have few distinct
    values among the oldest residents, so this is a handful of vector passes, not a sort.
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


@REPLACEMENT.register("lru")
class LeastRecentlyUsed(KeyedReplacement):
    """Least recently used: evict the neurons whose last use (or fill) is oldest."""

    stamped = True

    def on_fill(self, layer, step, filled, prefetch):
        self._stamp(layer, self._bits(filled), step)

    def on_access(self, layer, step, used):
        self._stamp(layer, self._bits(used), step)


@REPLACEMENT.register("fifo")
class FirstInFirstOut(KeyedReplacement):
    """First in, first out: evict the neurons inserted earliest; use does not refresh them."""

    stamped = True

    def on_fill(self, layer, step, filled, prefetch):
        self._stamp(layer, self._bits(filled), step)


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
