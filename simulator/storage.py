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
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from sparsesim.simulator import bitset, neuronset
from sparsesim.errors import InputError


@dataclass(frozen=True)
class BackingStore:
    name: str
    latency: float
    peak_bandwidth: float
    queue_depth: int
    energy_per_byte: float
    bandwidth_at: Callable[[np.ndarray], np.ndarray]
    # seconds of one request of each size seen so far: the curve is evaluated once per size
    _request_seconds: dict[float, float] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def flash(cls, storage) -> "BackingStore":
        return cls("flash", storage.latency, storage.peak_bandwidth, int(storage.queue_depth),
                   storage.energy_per_byte, storage.bandwidth_at)

    @classmethod
    def dram(cls, dram) -> "BackingStore":
        bw = float(dram.bandwidth)
        return cls("dram", dram.latency, bw, 64, dram.energy_per_byte,
                   lambda s: np.full(np.shape(s), bw, dtype=float))

    def batch_time(self, requests: dict[float, int]) -> float:
        """Seconds to serve ``requests`` ({size in bytes: how many}) as one batch."""
        if not requests:
            return 0.0
        t_throughput, n = 0.0, 0
        for size, count in requests.items():
            t = self._request_seconds.get(size)
            if t is None:
                t = self._request_seconds[size] = size / float(self.bandwidth_at(np.array([size]))[0])
            t_throughput += count * t
            n += count
        t_latency = math.ceil(n / self.queue_depth) * self.latency + max(requests) / self.peak_bandwidth
        return max(t_throughput, t_latency)


def _request_shape(row_bytes: float, matrices: int, layout: str, coalesce: bool,
                   max_request: int) -> tuple[float, int, int]:
    """(bytes of one neuron in one request, copies of each run, most neurons per request)."""
    unit = row_bytes * matrices if layout == "bundled" else row_bytes
    copies = 1 if layout == "bundled" else matrices
    per_request = max(1, int(max_request // unit)) if coalesce else 1
    return unit, copies, per_request


def request_sizes(neurons: int, row_bytes: float, matrices: int, layout: str, coalesce: bool,
                  max_request: int, count: int | None = None) -> dict[float, int]:
    """{request size in bytes: how many} to read the neuron set ``neurons`` (:mod:`sparsesim.simulator.neuronset`;
    ``count``: its size, if the caller has it)."""
    unit, copies, per_request = _request_shape(row_bytes, matrices, layout, coalesce, max_request)
    n = neurons.bit_count() if count is None else count
    if n == 0:
        return {}
    if not coalesce:
        return {unit: n * copies}
    out: dict[float, int] = {}
    full = 0
    for length, runs in neuronset.run_lengths(neurons, n).items():
        whole, rest = divmod(length, per_request)
        full += whole * runs
        if rest:
            out[rest * unit] = out.get(rest * unit, 0) + runs * copies
    if full:
        out[per_request * unit] = out.get(per_request * unit, 0) + full * copies
    return out


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
