"""The straightforward simulator a newcomer would write: one simpy event per neuron load.

Kept only as the speed reference for the benchmark (issue: "≥ 100× the per-neuron reference").
Same semantics as the product for the oracle predictor with LRU and no prefetch overlap: each
needed neuron not in the cache is fetched with its own simpy request/timeout on a storage
resource with ``queue_depth`` slots, and an ``OrderedDict`` keeps LRU order.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import simpy


def replay_per_neuron(masks: np.ndarray, d_ff: int, capacity_per_layer: int, neuron_seconds: float,
                      queue_depth: int = 32) -> float:
    """Simulated seconds for the whole trace; masks uint8 [T, L, n_bytes]."""
    env = simpy.Environment()
    device = simpy.Resource(env, capacity=queue_depth)
    caches = [OrderedDict() for _ in range(masks.shape[1])]

    def load(neuron):
        with device.request() as req:
            yield req
            yield env.timeout(neuron_seconds)

    def decode():
        for t in range(masks.shape[0]):
            for l, cache in enumerate(caches):
                needed = np.flatnonzero(np.unpackbits(masks[t, l], bitorder="little", count=d_ff)).tolist()
                needed_set = set(needed)
                loads = []
                for n in needed:
                    if n in cache:
                        cache.move_to_end(n)
                    else:
                        loads.append(env.process(load(n)))
                        cache[n] = True
                        if len(cache) > capacity_per_layer:
                            for victim in list(cache):
                                if victim not in needed_set:
                                    del cache[victim]
                                    break
                if loads:
                    yield simpy.AllOf(env, loads)

    env.process(decode())
    env.run()
    return env.now
