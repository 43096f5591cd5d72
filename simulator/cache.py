"""The neuron cache: which FFN neurons are resident, with capacity enforced per layer or globally.

State is one neuron set per layer (:mod:`sparsesim.simulator.neuronset`) plus occupancy counts; the
replacement policy decides victims. The cache never chooses on its own — it asks the policy for
exactly as many victims as it needs, among the resident neurons that are not protected (the set
the FFN is using now).
"""

from __future__ import annotations

from sparsesim.simulator import neuronset
from sparsesim.simulator.replacement import CacheGeometry, ReplacementPolicy


class NeuronCache:
    def __init__(self, geometry: CacheGeometry, policy: ReplacementPolicy):
        self.geometry = geometry
        self.policy = policy
        self.global_pool = geometry.partition == "global"
        self.resident = [0] * geometry.n_layers
        self.size = [0] * geometry.n_layers
        self.total = 0
        self.capacity = [int(c) for c in geometry.capacity]
        policy.setup(geometry)

    def preload(self, warm: bool) -> None:
        """Fill the cache before decoding (no I/O charged): the policy's preload set, and with
        ``warm`` the lowest-index neurons of each layer up to capacity."""
        chosen = self.policy.preload()
        if chosen is None and not warm:
            return
        g = self.geometry
        chosen = [0] * g.n_layers if chosen is None else [neuronset.from_row(row) for row in chosen]
        if warm:
            taken = sum(c.bit_count() for c in chosen)
            free = ([cap - c.bit_count() for cap, c in zip(self.capacity, chosen)] if not self.global_pool else
                    [(self.capacity[0] - taken) // g.n_layers] * g.n_layers)
            for l, d in enumerate(g.d_ff):
                chosen[l] |= neuronset.first(neuronset.full(d) ^ (chosen[l] & neuronset.full(d)), free[l])
        for l in range(g.n_layers):
            self.resident[l] = chosen[l]
            self.size[l] = chosen[l].bit_count()
            self.policy.on_fill(l, -1, chosen[l], False)
        self.total = sum(self.size)

    def free(self, layer: int) -> int:
        if self.global_pool:
            return self.capacity[0] - self.total
        return self.capacity[layer] - self.size[layer]

    def _remove(self, layer: int, neurons: int) -> None:
        n = neurons.bit_count()
        self.resident[layer] ^= neurons
        self.size[layer] -= n
        self.total -= n
        self.policy.on_evict(layer, neurons)

    def make_room(self, layer: int, step: int, n: int, protect: int) -> dict[int, int]:
        """Evict up to ``n`` neurons (never from ``protect``, which belongs to ``layer``).

        Returns {layer: evicted set}; fewer than ``n`` are evicted only when too few candidates
        exist (the caller then bypasses part of the fill).
        """
        if n <= 0:
            return {}
        if self.global_pool:
            candidates = list(self.resident)
            candidates[layer] &= ~protect
            available = self.total - (self.resident[layer] & protect).bit_count()
            chosen = self.policy.global_victims(step, min(n, available), candidates)
        else:
            candidates = self.resident[layer] & ~protect
            if not candidates:
                return {}
            chosen = {layer: self.policy.victims(layer, step, min(n, candidates.bit_count()), candidates)}
        for l, victims in chosen.items():
            self._remove(l, victims)
        return chosen

    def insert(self, layer: int, step: int, neurons: int, prefetch: bool, protect: int) -> tuple[int, dict[int, int]]:
        """Insert ``neurons`` (not yet resident), evicting as needed. Returns (inserted, evicted)."""
        # Neurons the FFN needs right now are not offered for bypass: it computes from DRAM.
        neurons = self.policy.admit(layer, step, neurons & ~protect, prefetch) | (neurons & protect)
        n = neurons.bit_count()
        if n == 0:
            return 0, {}
        evicted = self.make_room(layer, step, n - self.free(layer), protect | neurons)
        room = self.free(layer)
        if room < n:  # bypass what does not fit: protected (needed now) first, then lowest index
            urgent = neurons & protect
            neurons = urgent | neuronset.first(neurons & ~protect, room - urgent.bit_count())
            n = neurons.bit_count()
        self.resident[layer] |= neurons
        self.size[layer] += n
        self.total += n
        self.policy.on_fill(layer, step, neurons, prefetch)
        return neurons, evicted

    def expire(self, layer: int, step: int) -> int:
        stale = self.policy.expire(layer, step) & self.resident[layer]
        if stale:
            self._remove(layer, stale)
        return stale
