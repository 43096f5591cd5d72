"""Neuron order in storage: place neurons that fire together next to each other (Ripple-style).

Reordering permutes each layer's neurons in the weight file; the replay then sees the same
activity with other neighbours, so more active neurons coalesce into fewer, larger requests.
Orders are computed offline from a profiling trace (or, optimistically, from the replayed trace
itself — the run record says which):

* ``frequency``: hottest first, so hot neurons form long contiguous runs;
* ``coactivation``: a greedy chain starting from the hottest neuron that always appends the
  unplaced neuron most often co-active with the last one (Ripple, ASPLOS'25, in spirit).
"""

from __future__ import annotations

import numpy as np

from sparsesim.simulator.bitset import frequency

REORDERINGS = ("none", "frequency", "coactivation")
_COACTIVATION_TOKENS = 2048   # tokens of the profiling trace used for the co-activation counts


def neuron_order(profile_masks: np.ndarray, d_ff: tuple[int, ...], method: str) -> list[np.ndarray]:
    """Per layer, the storage position -> neuron index permutation."""
    freq = frequency(profile_masks)
    orders = []
    for l, d in enumerate(d_ff):
        hot_first = np.lexsort((np.arange(d), -freq[l, :d]))
        if method == "frequency":
            orders.append(hot_first)
            continue
        x = np.unpackbits(profile_masks[:_COACTIVATION_TOKENS, l], axis=1, bitorder="little", count=d)
        co = x.T.astype(np.float32) @ x.astype(np.float32)
        np.fill_diagonal(co, -1.0)
        order = np.empty(d, dtype=np.int64)
        order[0] = hot_first[0]
        co[:, order[0]] = -np.inf
        for i in range(1, d):
            nxt = int(np.argmax(co[order[i - 1]]))
            order[i] = nxt
            co[:, nxt] = -np.inf
        orders.append(order)
    return orders


def apply_order(masks: np.ndarray, orders: list[np.ndarray], block: int = 256) -> np.ndarray:
    """Masks with bit position p of layer l holding neuron ``orders[l][p]`` (re-packed)."""
    out = np.zeros_like(masks)
    for l, order in enumerate(orders):
        for start in range(0, masks.shape[0], block):
            bits = np.unpackbits(masks[start:start + block, l], axis=1, bitorder="little", count=len(order))
            packed = np.packbits(bits[:, order], axis=1, bitorder="little")
            out[start:start + block, l, :packed.shape[1]] = packed
    return out
