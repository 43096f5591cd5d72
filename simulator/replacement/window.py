"""LLM in a Flash's sliding window: keep the neurons used in the last ``k`` tokens.

After each layer step the neurons of that layer not used in tokens ``t-k+1 .. t`` are dropped,
so each token loads only the difference ``s_agg(k+1) - s_agg(k)`` (Alizadeh et al. 2024, §3.2).
If the window's union outgrows the capacity, the least recently used go first.
"""

from __future__ import annotations

from sparsesim.simulator.replacement import REPLACEMENT
from sparsesim.simulator.replacement.keyed import LeastRecentlyUsed


@REPLACEMENT.register("window")
class TokenWindow(LeastRecentlyUsed):
    """Keep neurons used in the last k tokens (LLM in a Flash windowing); LRU beyond capacity."""

    def __init__(self, k: int = 4):
        if not isinstance(k, int) or k < 1:
            raise ValueError(f"window k must be an integer >= 1, got {k!r}")
        self.k = k

    def setup(self, geometry):
        super().setup(geometry)
        # touched[layer][token]: neurons used, or filled, while decoding that token
        self.touched: list[dict[int, int]] = [{} for _ in range(geometry.n_layers)]

    def _touch(self, layer: int, step: int, neurons: int) -> None:
        # A prefetched neuron gets one window of grace from the token it was fetched for.
        token = step // self.geometry.n_layers
        by_token = self.touched[layer]
        by_token[token] = by_token.get(token, 0) | neurons

    def on_fill(self, layer, step, filled, prefetch):
        super().on_fill(layer, step, filled, prefetch)
        self._touch(layer, step, filled)

    def on_access(self, layer, step, used):
        super().on_access(layer, step, used)
        self._touch(layer, step, used)

    def expire(self, layer, step):
        token = step // self.geometry.n_layers
        by_token = self.touched[layer]
        kept = 0
        for t in list(by_token):
            if t <= token - self.k:
                del by_token[t]
            else:
                kept |= by_token[t]
        return self._full ^ kept
