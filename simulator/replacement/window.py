"""LLM in a Flash's sliding window: keep the neurons used in the last ``k`` tokens.

After each layer step the neurons of that layer not used in tokens ``t-k+1 .. t`` are dropped,
so each token loads only the difference ``s_agg(k+1) - s_agg(k)`` (Alizadeh et al. 2024, §3.2).
If the window's union outgrows the capacity, the least recently used go first.
"""

from __future__ import annotations

import numpy as np

from simulator import bitset
from simulator.replacement import REPLACEMENT
from simulator.replacement.keyed import LeastRecentlyUsed


@REPLACEMENT.register("window")
class TokenWindow(LeastRecentlyUsed):
    """Keep neurons used in the last k tokens (LLM in a Flash windowing); LRU beyond capacity."""

    def __init__(self, k: int = 4):
        if not isinstance(k, int) or k < 1:
            raise ValueError(f"window k must be an integer >= 1, got {k!r}")
        self.k = k

    def setup(self, geometry):
        super().setup(geometry)
        self.used_at = np.full((geometry.n_layers, geometry.width), -1, dtype=np.int64)

    def on_fill(self, layer, step, filled, prefetch):
        super().on_fill(layer, step, filled, prefetch)
        # A prefetched neuron gets one window of grace from the token it was fetched for.
        self.used_at[layer, self._bits(filled)] = step // self.geometry.n_layers

    def on_access(self, layer, step, used):
        super().on_access(layer, step, used)
        self.used_at[layer, self._bits(used)] = step // self.geometry.n_layers

    def expire(self, layer, step):
        token = step // self.geometry.n_layers
        stale = self.used_at[layer] <= token - self.k
        return bitset.from_bool(stale, self.geometry.n_bytes)
