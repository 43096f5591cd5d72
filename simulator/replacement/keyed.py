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
_RECORD_MAX = 3   # bypass: a neuron's prefetch record saturates at +-3 (a 3-bit counter, as in SHiP)


class KeyedReplacement(ReplacementPolicy):
    """Base: ``self.key[layer, neuron]``; the candidates with the smallest keys are evicted.

    Evicted neurons get the key ``_NEVER``. Policies whose keys are the step of a fill or use
    (``stamped``: LRU, FIFO and their relatives) also keep an index from each key to the layers
    holding it, so a global eviction visits only the oldest few (key, layer) classes instead of
    every neuron of every layer.
    """

    stamped = False
    bypass = False   # subclasses with their own parameters (window, static-pin) never bypass

    def __init__(self, bypass: bool = False):
        if not isinstance(bypass, bool):
            raise ValueError(f"bypass must be true or false, got {bypass!r}")
        self.bypass = bypass

    def setup(self, geometry: CacheGeometry) -> None:
        super().setup(geometry)
        self.key = np.full((geometry.n_layers, geometry.width), _NEVER, dtype=np.int64)
        if self.bypass:  # per neuron: filled by a prefetch and not used yet; prefetch track record
            self.speculative = np.zeros(self.key.shape, dtype=bool)
            self.record = np.zeros(self.key.shape, dtype=np.int8)
            self.filled_at = np.zeros(self.key.shape, dtype=np.int64)
            self._now = -1   # the latest step seen (on_evict has none)
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
        if self.bypass:
            self._track_evict(layer, evicted)
        self.key[layer][self._bits(evicted)] = _NEVER

    # -- bypass by value (SHiP-style: each neuron's own prefetch track record) -----------------
    def _track_fill(self, layer: int, filled: np.ndarray, prefetch: bool, step: int) -> None:
        bits = self._bits(filled)
        self.speculative[layer][bits] = prefetch
        self.filled_at[layer][bits] = step
        self._now = max(self._now, step)

    def _track_use(self, layer: int, used: np.ndarray, step: int) -> None:
        self._now = max(self._now, step)
        confirmed = self._bits(used) & self.speculative[layer]
        self.record[layer][confirmed] = np.minimum(self.record[layer][confirmed] + 1, _RECORD_MAX)
        self.speculative[layer][confirmed] = False

    def _track_evict(self, layer: int, evicted: np.ndarray) -> None:
        # Unused for a whole token counts against the neuron; evicted sooner, the replacement policy
        # (not the prediction) decided, since a prefetch is at most one token ahead of its use.
        dead = self._bits(evicted) & self.speculative[layer] \
            & (self.filled_at[layer] <= self._now - self.geometry.n_layers)
        self.record[layer][dead] = np.maximum(self.record[layer][dead] - 1, -_RECORD_MAX)
        self.speculative[layer][dead] = False

    def admit(self, layer, step, filled, prefetch):
        """With ``bypass``: a prefetched neuron whose earlier prefetches more often left the cache
        unused than used (record < 0) is not inserted when it would displace a resident; it may
        take only the free room the others leave (lowest index first). The record is a saturating
        count (+-_RECORD_MAX) of this neuron's prefetches used (+1) or evicted unused after a whole
        token (-1), so an exact predictor never triggers it. ``docs/policies.md`` says why."""
        if not (self.bypass and prefetch):
            return filled
        keys = self.key if self.geometry.partition == "global" else self.key[layer]
        capacity = self.geometry.capacity[0 if self.geometry.partition == "global" else layer]
        room = max(int(capacity) - int(np.count_nonzero(keys != _NEVER)), 0)
        bits = self._bits(filled)
        doubtful = bits & (self.record[layer] < 0)
        if int(np.count_nonzero(bits)) <= room or not doubtful.any():
            return filled
        spare = room - int(np.count_nonzero(bits & ~doubtful))   # room the trusted ones leave over
        keep = bits & ~doubtful
        if spare > 0:
            keep[np.flatnonzero(doubtful)[:spare]] = True
        return bitset.from_bool(keep, self.geometry.n_bytes)

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
        if self.bypass:
            self._track_fill(layer, filled, prefetch, step)
        self._stamp(layer, self._bits(filled), step)

    def on_access(self, layer, step, used):
        if self.bypass:
            self._track_use(layer, used, step)
        self._stamp(layer, self._bits(used), step)


@REPLACEMENT.register("fifo")
class FirstInFirstOut(KeyedReplacement):
    """First in, first out: evict the neurons inserted earliest; use does not refresh them."""

    stamped = True

    def on_fill(self, layer, step, filled, prefetch):
        if self.bypass:
            self._track_fill(layer, filled, prefetch, step)
        self._stamp(layer, self._bits(filled), step)

    def on_access(self, layer, step, used):
        if self.bypass:   # use does not refresh FIFO's order; it only confirms a prefetch
            self._track_use(layer, used, step)


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
        if self.bypass:
            self._track_fill(layer, filled, prefetch, step)
        bits = self._bits(filled)
        self.uses[layer, bits] = 0
        self.last[layer, bits] = step
        self._rekey(layer, bits)

    def on_access(self, layer, step, used):
        if self.bypass:
            self._track_use(layer, used, step)
        bits = self._bits(used)
        self.uses[layer, bits] += 1
        self.last[layer, bits] = step
        self._rekey(layer, bits)
