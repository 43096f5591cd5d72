"""The neuron cache: which units are resident, with capacity enforced per layer or globally.

State is one unit set per layer (:mod:`sparsesim.simulator.neuronset`) plus occupancy counts; the
replacement policy ranks victims. The cache never chooses on its own and knows nothing of
protection: :mod:`sparsesim.simulator.residency` tells it which units may not go.
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

    def preload(self, warm: bool) -> int:
        """Fill the cache before decoding (counted, not timed): the policy's preload set, and with
        ``warm`` the lowest-index units of each layer up to capacity. Returns the units placed."""
        chosen = self.policy.preload()
        if chosen is None and not warm:
            return 0
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
        return self.total

    def free(self, layer: int) -> int:
        if self.global_pool:
            return self.capacity[0] - self.total
        return self.capacity[layer] - self.size[layer]

    def add(self, layer: int, step: int, units: int, prefetch: bool, n: int) -> None:
        """Insert ``units`` (``n`` of them, not resident; the caller made room)."""
        self.resident[layer] |= units
        self.size[layer] += n
        self.total += n
        self.policy.on_fill(layer, step, units, prefetch)

    def remove(self, layer: int, units: int) -> None:
        n = units.bit_count()
        self.resident[layer] ^= units
        self.size[layer] -= n
        self.total -= n
        self.policy.on_evict(layer, units)

    def evict(self, layer: int, step: int, n: int, keep: dict[int, int]) -> dict[int, int]:
        """Evict up to ``n`` units to make room in ``layer``'s partition, never one in ``keep``
        ({layer: set}). Returns {layer: evicted set}; fewer than ``n`` only when too few candidates
        exist."""
        if n <= 0:
            return {}
        if self.global_pool:
            candidates = list(self.resident)
            kept = 0
            for l, units in keep.items():
                taken = candidates[l] & units
                if taken:
                    candidates[l] ^= taken
                    kept += taken.bit_count()
            n = min(n, self.total - kept)
            chosen = self.policy.global_victims(step, n, candidates) if n > 0 else {}
        else:
            candidates = self.resident[layer]
            taken = candidates & keep.get(layer, 0)
            candidates ^= taken
            n = min(n, self.size[layer] - taken.bit_count())
            chosen = {layer: self.policy.victims(layer, step, n, candidates)} if n > 0 else {}
        for l, victims in chosen.items():
            self.remove(l, victims)
        return chosen
