"""static-pin: a policy that uses offline knowledge, a frequency profile (Bélády is in ``belady.py``)."""

from __future__ import annotations

import numpy as np

from sparsesim.simulator import bitset, neuronset
from sparsesim.simulator.replacement import REPLACEMENT, CacheGeometry, take_weight
from sparsesim.simulator.replacement.keyed import LeastRecentlyUsed


@REPLACEMENT.register("static-pin")
class StaticPin(LeastRecentlyUsed):
    """Pin the hottest neurons of a profiling trace, LRU for the rest (PowerInfer-2 hot/cold regions).

    The pinned set fills ``share`` of the capacity that is left after keeping room for the largest
    needed set of a layer step; it is resident from the start and evicted (lowest layer and index
    first) only if nothing else can go. Frequencies come from the profiling trace (``--profile-trace``); without one, from the
    replayed trace itself, which is optimistic (the run record says which).
    """

    def __init__(self, share: float = 1.0):
        if not 0 <= share <= 1:
            raise ValueError(f"share must be in [0, 1], got {share!r}")
        self.share = share

    def setup(self, geometry: CacheGeometry) -> None:
        super().setup(geometry)
        self.sees_future = geometry.profile_masks is None   # profiled on the replayed trace itself: a bound
        source = geometry.profile_masks if geometry.profile_masks is not None else geometry.masks
        freq = bitset.frequency(np.asarray(source)).astype(float)          # [L, width]
        for l, d in enumerate(geometry.d_ff):
            freq[l, d:] = 0.0                                  # padding bits are never active
        need = geometry.need_max if geometry.need_max is not None else np.zeros(geometry.n_layers, int)
        pinned = np.zeros(freq.shape, dtype=bool)
        if geometry.partition == "global":   # hottest first, as many as their weights fit
            weight = np.asarray(geometry.weight)
            room = int(max(geometry.capacity[0] - (need * weight).max(), 0) * self.share)
            order = _hottest(freq.reshape(-1))
            reach = np.cumsum(np.repeat(weight, freq.shape[1])[order])
            pinned.reshape(-1)[order[:int(np.searchsorted(reach, room, side="right"))]] = True
        else:
            for l in range(geometry.n_layers):
                n = int(max(geometry.capacity[l] - need[l], 0) * self.share)
                pinned[l, _hottest(freq[l])[:n]] = True
        self.packed_pinned = np.packbits(pinned, axis=1, bitorder="little")
        self.pinned = [neuronset.from_bool(row) for row in pinned]
        self._cold = [self._full ^ p for p in self.pinned]

    def preload(self) -> np.ndarray:
        return self.packed_pinned

    def _stamp(self, layer, neurons, step):
        # Pinned neurons stay out of the LRU order: they leave only when nothing cold can.
        super()._stamp(layer, neurons & self._cold[layer], step)

    def victims(self, layer, step, n, candidates):
        cold = candidates & self._cold[layer]
        n_cold = cold.bit_count()
        if n_cold >= n:
            return super().victims(layer, step, n, cold)
        return cold | neuronset.first(candidates & self.pinned[layer], n - n_cold)

    def global_victims(self, step, n, candidates):
        weight = self.geometry.weight
        cold = [c & k for c, k in zip(candidates, self._cold)]
        n_cold = sum(c.bit_count() * w for c, w in zip(cold, weight))
        if n_cold >= n:
            return super().global_victims(step, n, cold)
        out, need = {l: c for l, c in enumerate(cold) if c}, n - n_cold
        for layer, c in enumerate(candidates):   # pinned units go lowest layer, lowest index first
            take, need = take_weight(c & self.pinned[layer], need, weight[layer])
            if take:
                out[layer] = out.get(layer, 0) | take
            if need <= 0:
                break
        return out


def _hottest(freq: np.ndarray) -> np.ndarray:
    """Indices of the units ever active, most often first, ties to the lower index (never-active
    units are never pinned: the contract's "Policies' order")."""
    order = np.lexsort((np.arange(freq.size), -freq))
    return order[freq[order] > 0]
