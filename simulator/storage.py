"""Where uncached FFN weights come from, and how long a batch of reads takes.

Request shaping (:func:`request_sizes`): the neurons of one layer that must be read are turned
into storage requests. Under the ``per-matrix`` layout a neuron is one row in each of its 2–3
matrices (so each run of adjacent neurons becomes one request per matrix); under ``bundled`` it
is one record of all its rows (LLM in a Flash row-column bundling, PowerInfer-2 bundles). Runs of
adjacent neurons coalesce into one request up to ``max_request`` bytes. :func:`request_extents`
places the same requests at byte offsets of a weight file, for replay against real storage.

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
from typing import Callable, Sequence

import numpy as np

from simulator import bitset
from simulator.errors import InputError


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


def _request_shape(row_bytes: float, matrices: int, layout: str, coalesce: bool,
                   max_request: int) -> tuple[float, int, int]:
    """(bytes of one neuron in one request, copies of each run, most neurons per request)."""
    unit = row_bytes * matrices if layout == "bundled" else row_bytes
    copies = 1 if layout == "bundled" else matrices
    per_request = max(1, int(max_request // unit)) if coalesce else 1
    return unit, copies, per_request


def request_sizes(packed: np.ndarray, d_ff: int, row_bytes: float, matrices: int, layout: str,
                  coalesce: bool, max_request: int) -> tuple[np.ndarray, np.ndarray]:
    """Distinct request sizes (bytes) and how many of each, to read the neurons in ``packed``."""
    unit, copies, per_request = _request_shape(row_bytes, matrices, layout, coalesce, max_request)
    n = bitset.count(packed)
    if n == 0:
        return np.empty(0), np.empty(0, dtype=np.int64)
    if not coalesce:
        return np.array([unit]), np.array([n * copies])
    lengths = bitset.runs(packed, d_ff)
    full = int((lengths // per_request).sum())
    rest = np.bincount(lengths % per_request)     # run lengths are small integers: count, don't sort
    rest_sizes = np.flatnonzero(rest[1:]) + 1
    sizes = np.concatenate([[per_request] if full else [], rest_sizes]) * unit
    counts = np.concatenate([[full] if full else [], rest[rest_sizes]]).astype(np.int64) * copies
    return sizes.astype(float), counts


def request_extents(packed: np.ndarray, layer: int, d_ff: Sequence[int], row_bytes: float, matrices: int,
                    layout: str, coalesce: bool, max_request: int) -> tuple[np.ndarray, np.ndarray]:
    """Byte offsets and sizes, in file order, of the requests :func:`request_sizes` counts.

    The weight file holds the FFN layer after layer. Within a layer, ``per-matrix``: each matrix's
    ``d_ff[layer]`` rows contiguous, matrix after matrix (gate, up, down-transposed); ``bundled``:
    one record of all of a neuron's rows per neuron, in neuron order. Requests are cut exactly as
    in :func:`request_sizes` (the multiset of sizes is the same), so real reads of these extents
    are the reads the simulator timed.
    """
    if row_bytes != int(row_bytes):
        raise InputError(f"a row of {row_bytes} bytes is not a whole number of bytes: this precision and "
                         f"d_model have no byte-addressable file layout")
    row, width = int(row_bytes), int(d_ff[layer])
    unit, copies, per_request = _request_shape(row, matrices, layout, coalesce, max_request)
    unit = int(unit)
    layer_base = sum(int(d) for d in d_ff[:layer]) * matrices * row
    lengths = bitset.runs(packed, width)
    if lengths.size == 0:
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64)
    members = bitset.indices(packed, width)
    run_first = members[np.cumsum(lengths) - lengths]
    pieces = -(-lengths // per_request)                       # requests per run
    run = np.repeat(np.arange(lengths.size), pieces)
    k = np.arange(run.size) - np.repeat(np.cumsum(pieces) - pieces, pieces)   # piece index within its run
    first = run_first[run] + k * per_request
    count = np.minimum(per_request, lengths[run] - k * per_request)
    copy_base = layer_base + np.arange(copies, dtype=np.int64)[:, None] * (width * row)  # matrix m of the layer
    offsets = (copy_base + first.astype(np.int64) * unit).ravel()
    sizes = np.broadcast_to(count.astype(np.int64) * unit, (copies, count.size)).ravel()
    return offsets, sizes.copy()
