"""The unit cache: which units are resident, with capacity enforced per layer or globally.

State is one unit set per layer (:mod:`sparsesim.simulator.neuronset`) plus occupancy; the
replacement policy ranks victims. The cache never chooses on its own and knows nothing of
protection: :mod:`sparsesim.simulator.residency` tells it which units may not go.

Capacity is counted in *weight* (``docs/simulator.md``, "Capacity"): a unit of layer l weighs
``geometry.weight[l]`` — 1 for every neuron, an expert's bytes over the common divisor of all
layers' expert bytes — so experts of different sizes share one byte budget exactly. The global
pool holds ``capacity[0]`` weight; a per-layer partition holds ``capacity[l]`` units of its layer.
"""

from __future__ import annotations

from sparsesim.simulator import neuronset
from sparsesim.simulator.replacement import CacheGeometry, ReplacementPolicy


class NeuronCache:
    def __init__(self, geometry: CacheGeometry, policy: ReplacementPolicy):
        self.geometry = geometry
        self.policy = policy
        self.global_pool = geometry.partition == "global"
        self.weight = list(geometry.weight)
        self.resident = [0] * geometry.n_layers
        self.size = [0] * geometry.n_layers       # units per layer
        self.total = 0                            # weight of every resident unit
        self.capacity = [int(c) for c in geometry.capacity]
        policy.setup(geometry)

    def preload(self, warm: bool) -> list[int]:
        """Fill the cache before decoding (counted, not timed): the policy's preload set, and with
        ``warm`` the lowest-index units of each layer up to capacity. Returns the units placed per layer."""
        chosen = self.policy.preload()
        g = self.geometry
        if chosen is None and not warm:
            return [0] * g.n_layers
        chosen = [0] * g.n_layers if chosen is None else [neuronset.from_row(row) for row in chosen]
        if warm:
            if self.global_pool:   # the room left, shared equally by the layers, in their own units
                room = (self.capacity[0] - sum(c.bit_count() * w for c, w in zip(chosen, self.weight))) // g.n_layers
                free = [room // w for w in self.weight]
            else:
                free = [cap - c.bit_count() for cap, c in zip(self.capacity, chosen)]
            for l, d in enumerate(g.d_ff):
                cacheable = neuronset.full(d) if g.outside is None else neuronset.full(d) & ~neuronset.from_row(g.outside[l])
                chosen[l] |= neuronset.first(cacheable & ~chosen[l], free[l])
        for l in range(g.n_layers):
            self.resident[l] = chosen[l]
            self.size[l] = chosen[l].bit_count()
            self.policy.on_fill(l, -1, chosen[l], False)
        self.total = sum(n * w for n, w in zip(self.size, self.weight))
        return list(self.size)

    def free(self, layer: int) -> int:
        """How many more units of ``layer`` fit now."""
        if self.global_pool:
            return (self.capacity[0] - self.total) // self.weight[layer]
        return self.capacity[layer] - self.size[layer]

    def add(self, layer: int, step: int, units: int, prefetch: bool, n: int) -> None:
        """Insert ``units`` (``n`` of them, not resident; the caller made room)."""
        self.resident[layer] |= units
        self.size[layer] += n
        self.total += n * self.weight[layer]
        self.policy.on_fill(layer, step, units, prefetch)

    def remove(self, layer: int, units: int) -> None:
        n = units.bit_count()
        self.resident[layer] ^= units
        self.size[layer] -= n
        self.total -= n * self.weight[layer]
        self.policy.on_evict(layer, units)

    def make_room(self, layer: int, step: int, n: int, keep: dict[int, int]) -> dict[int, int]:
        """Evict so that ``n`` units of ``layer`` fit in its partition, never a unit in ``keep``
        ({layer: set}). Returns {layer: evicted set}; less room than asked only when too few
        candidates exist."""
        if self.global_pool:
            weight = self.weight
            short = n * weight[layer] - (self.capacity[0] - self.total)
            if short <= 0:
                return {}
            candidates = list(self.resident)
            kept = []
            for l, units in keep.items():
                taken = candidates[l] & units
                if taken:
                    candidates[l] ^= taken
                    kept.append((l, taken))
            # Fewer candidates than wanted only if the kept units outweigh the rest: count them only
            # when their layers' whole residency could (a popcount costs more than the set algebra).
            if short > self.total - sum(self.size[l] * weight[l] for l, _ in kept):
                short = min(short, self.total - sum(taken.bit_count() * weight[l] for l, taken in kept))
            chosen = self.policy.global_victims(step, short, candidates) if short > 0 else {}
        else:
            short = n - (self.capacity[layer] - self.size[layer])
            if short <= 0:
                return {}
            candidates = self.resident[layer]
            taken = candidates & keep.get(layer, 0)
            candidates ^= taken
            short = min(short, self.size[layer] - taken.bit_count())
            chosen = {layer: self.policy.victims(layer, step, short, candidates)} if short > 0 else {}
        for l, victims in chosen.items():
            self.remove(l, victims)
        return chosen
