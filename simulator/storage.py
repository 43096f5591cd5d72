"""Where uncached FFN weights come from, and how long a batch of reads takes.

Request shaping (:func:`request_sizes`): the neurons of one layer that must be read are turned
into storage requests. Under the ``per-matrix`` layout a neuron is one row in each of its 2–3
matrices (so each run of adjacent neurons becomes one request per matrix); under ``bundled`` it
is one record of all its rows (LLM in a Flash row-column bundling, PowerInfer-2 bundles). Runs of
adjacent neurons coalesce into one request up to ``max_request`` bytes.

Service time of a batch (:meth:`BackingStore.batch_time`) — one simpy event per batch::

    t_throughput = sum_i s_i / BW(s_i)                   # the measured bandwidth-vs-size curve
    t_latency    = ceil(n / Q) * latency + max_i s_i / peak
    t_batch      = max(t_throughput, t_latency)

The first term is LLM in a Flash's "bytes / throughput(chunk)" model and PowerInfer-2's UFS
block-size curve; the second keeps a small batch from finishing faster than its requests' latency
through a queue of depth Q.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

from simulator import bitset


@dataclass(frozen=True)
class BackingStore:
    name: str
    latency: float
    peak_bandwidth: float
    queue_depth: int
    energy_per_byte: float
    bandwidth_at: Callable[[np.ndarray], np.ndarray]

    @classmethod
    def flash(cls, storage) -> "BackingStore":
        return cls("flash", storage.latency, storage.peak_bandwidth, int(storage.queue_depth),
                   storage.energy_per_byte, storage.bandwidth_at)

    @classmethod
    def dram(cls, dram) -> "BackingStore":
        bw = float(dram.bandwidth)
        return cls("dram", dram.latency, bw, 64, dram.energy_per_byte,
                   lambda s: np.full(np.shape(s), bw, dtype=float))

    def batch_time(self, sizes: np.ndarray, counts: np.ndarray) -> float:
        """Seconds to serve ``counts[i]`` requests of ``sizes[i]`` bytes each."""
        if sizes.size == 0:
            return 0.0
        t_throughput = float((counts * sizes / self.bandwidth_at(sizes)).sum())
        waves = math.ceil(int(counts.sum()) / self.queue_depth)
        t_latency = waves * self.latency + float(sizes.max()) / self.peak_bandwidth
        return max(t_throughput, t_latency)


def request_sizes(packed: np.ndarray, d_ff: int, row_bytes: float, matrices: int, layout: str,
                  coalesce: bool, max_request: int) -> tuple[np.ndarray, np.ndarray]:
    """Distinct request sizes (bytes) and how many of each, to read the neurons in ``packed``."""
    unit = row_bytes * matrices if layout == "bundled" else row_bytes
    copies = 1 if layout == "bundled" else matrices
    n = bitset.count(packed)
    if n == 0:
        return np.empty(0), np.empty(0, dtype=np.int64)
    if not coalesce:
        return np.array([unit]), np.array([n * copies])
    per_request = max(1, int(max_request // unit))
    lengths = bitset.runs(packed, d_ff)
    full = int((lengths // per_request).sum())
    rest = lengths % per_request
    rest_sizes, rest_counts = np.unique(rest[rest > 0], return_counts=True)
    sizes = np.concatenate([[per_request] if full else [], rest_sizes]) * unit
    counts = np.concatenate([[full] if full else [], rest_counts]).astype(np.int64) * copies
    return sizes.astype(float), counts
