"""The neuron cache: which FFN neurons are resident, with capacity enforced per layer or globally.

State is one packed row per layer plus per-layer occupancy counts; the replacement policy decides
victims. The cache never chooses on its own — it asks the policy for exactly as many victims as
it needs, among the resident neurons that are not protected (the set the FFN is using now).
"""

from __future__ import annotations

import numpy as np

from simulator import bitset
from simulator.replacement import CacheGeometry, ReplacementPolicy


class NeuronCache:
    def __init__(self, geometry: CacheGeometry, policy: ReplacementPolicy):
        self.geometry = geometry
        self.policy = policy
        self.global_pool = geometry.partition == "global"
        self.resident = np.zeros((geometry.n_layers, geometry.n_bytes), dtype=np.uint8)
        self.size = np.zeros(geometry.n_layers, dtype=np.int64)
        self.capacity = geometry.capacity
        policy.setup(geometry)

    def preload(self, warm: bool) -> None:
        """Fill the cache before decoding (no I/O charged): the policy's preload set, and with
        ``warm`` the lowest-index neurons of each layer up to capacity."""
        chosen = self.policy.preload()
        if chosen is None and not warm:
            return
        g = self.geometry
        chosen = np.zeros((g.n_layers, g.n_bytes), np.uint8) if chosen is None else chosen.copy()
        if warm:
            free = (self.capacity - np.bitwise_count(chosen).sum(axis=1) if not self.global_pool else
                    np.full(g.n_layers, (self.capacity[0] - int(np.bitwise_count(chosen).sum())) // g.n_layers))
            for l, d in enumerate(g.d_ff):
                rest = bitset.full(d, g.n_bytes) & ~chosen[l]
                chosen[l] |= bitset.first(rest, int(free[l]), g.width)
        for l in range(g.n_layers):
            self.resident[l] = chosen[l]
            self.size[l] = bitset.count(chosen[l])
            self.policy.on_fill(l, -1, chosen[l], False)

    def free(self, layer: int) -> int:
        if self.global_pool:
            return int(self.capacity[0] - self.size.sum())
        return int(self.capacity[layer] - self.size[layer])

    def _remove(self, layer: int, packed: np.ndarray) -> None:
        self.resident[layer] &= ~packed
        self.size[layer] -= bitset.count(packed)
        self.policy.on_evict(layer, packed)

    def make_room(self, layer: int, step: int, n: int, protect: np.ndarray) -> dict[int, np.ndarray]:
        """Evict up to ``n`` neurons (never from ``protect``, which belongs to ``layer``).

        Returns {layer: evicted packed set}; fewer than ``n`` are evicted only when too few
        candidates exist (the caller then bypasses part of the fill).
        """
        if n <= 0:
            return {}
        if self.global_pool:
            candidates = self.resident.copy()
            candidates[layer] &= ~protect
            available = int(np.bitwise_count(candidates).sum())
            chosen = self.policy.global_victims(step, min(n, available), candidates)
            out = {}
            for l in np.flatnonzero(chosen.any(axis=1)):
                out[int(l)] = chosen[l]
                self._remove(int(l), chosen[l])
            return out
        candidates = self.resident[layer] & ~protect
        available = bitset.count(candidates)
        if available == 0:
            return {}
        chosen = self.policy.victims(layer, step, min(n, available), candidates)
        self._remove(layer, chosen)
        return {layer: chosen}

    def insert(self, layer: int, step: int, packed: np.ndarray, prefetch: bool,
               protect: np.ndarray) -> tuple[np.ndarray, dict[int, np.ndarray]]:
        """Insert ``packed`` (not yet resident), evicting as needed. Returns (inserted, evicted)."""
        # Neurons the FFN needs right now are not offered for bypass: it computes from DRAM.
        packed = self.policy.admit(layer, step, packed & ~protect, prefetch) | (packed & protect)
        n = bitset.count(packed)
        if n == 0:
            return packed, {}
        evicted = self.make_room(layer, step, n - self.free(layer), protect | packed)
        room = self.free(layer)
        if room < n:  # bypass what does not fit: protected (needed now) first, then lowest index
            urgent = packed & protect
            packed = urgent | bitset.first(packed & ~protect, room - bitset.count(urgent), self.geometry.width)
            n = bitset.count(packed)
        self.resident[layer] |= packed
        self.size[layer] += n
        self.policy.on_fill(layer, step, packed, prefetch)
        return packed, evicted

    def expire(self, layer: int, step: int) -> np.ndarray | None:
        stale = self.policy.expire(layer, step)
        if stale is None:
            return None
        stale = stale & self.resident[layer]
        if not bitset.nonempty(stale):
            return None
        self._remove(layer, stale)
        return stale
