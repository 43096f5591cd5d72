"""Policies that rank neurons by one integer key and evict the smallest: LRU, FIFO, LFU.

Ties break towards the lowest neuron index (then lowest layer), so results are exact and
reproducible and small cases can be computed by hand.
"""

from __future__ import annotations

import numpy as np

from simulator import bitset
from simulator.replacement import REPLACEMENT, CacheGeometry, ReplacementPolicy

_NEVER = np.iinfo(np.int64).max


class KeyedReplacement(ReplacementPolicy):
    """Base: ``self.key[layer, neuron]``; the candidates with the smallest keys are evicted."""

    def setup(self, geometry: CacheGeometry) -> None:
        super().setup(geometry)
        self.key = np.zeros((geometry.n_layers, geometry.width), dtype=np.int64)
        w = geometry.width
        self._index = np.arange(w, dtype=np.int64)
        self._flat_index = np.arange(geometry.n_layers * w, dtype=np.int64)
        # Composite keys stay unique: key * span + index, span > number of neurons.
        self._span = np.int64(geometry.n_layers * w)

    def _bits(self, packed: np.ndarray) -> np.ndarray:
        return np.unpackbits(packed, bitorder="little").view(bool)

    def victims(self, layer: int, step: int, n: int, candidates: np.ndarray) -> np.ndarray:
        bits = self._bits(candidates)
        comp = np.where(bits, self.key[layer] * self._span + self._index, _NEVER)
        return bitset.from_bool(_smallest(comp, n), self.geometry.n_bytes)

    def global_victims(self, step: int, n: int, candidates: np.ndarray) -> np.ndarray:
        bits = self._bits(candidates.reshape(-1)).reshape(candidates.shape[0], -1)
        comp = np.where(bits, self.key * self._span + self._flat_index.reshape(bits.shape), _NEVER)
        chosen = _smallest(comp.reshape(-1), n).reshape(bits.shape)
        return np.packbits(chosen, axis=1, bitorder="little")


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

    def on_fill(self, layer, step, filled, prefetch):
        self.key[layer, self._bits(filled)] = step

    def on_access(self, layer, step, used):
        self.key[layer, self._bits(used)] = step


@REPLACEMENT.register("fifo")
class FirstInFirstOut(KeyedReplacement):
    """First in, first out: evict the neurons inserted earliest; use does not refresh them."""

    def on_fill(self, layer, step, filled, prefetch):
        self.key[layer, self._bits(filled)] = step


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
