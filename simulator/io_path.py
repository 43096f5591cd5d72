"""The read path as run settings: how many reads are in flight, from how many threads, in which units.

The storage model (:mod:`sparsesim.simulator.storage`) times a batch of requests with the profile's
bandwidth curve, measured with ``storage.queue_depth`` reads in flight. Three run settings change
what reaches the device:

* ``read_granularity`` — each request is rounded up to a multiple of it (4 KiB pages for direct I/O
  or ``mmap``; PowerInfer-2 pads a 7.5 KB INT4 bundle to 8 KB); a request longer than ``max_request``
  is cut into pieces first (PowerInfer-2 reads an 8 KB bundle as two 4 KB reads). :func:`shape_requests`.
* ``io_depth`` — reads in flight. With depth q a batch of n requests cannot finish before
  ``ceil(n / q)`` request latencies; q = 1 is a thread that waits for each read (on-demand loading).
* ``io_threads`` — submitting threads. Where the device has one command queue (UFS), several
  submitting cores lose bandwidth: the curve is scaled by ``storage.multi_thread_factor``
  (PowerInfer-2 §2.3.2: up to −40 %). :func:`batch_time`.

And reads through the page cache: a fault reads the ``os.readahead`` bytes around the faulting page
and costs ``os.fault_overhead`` besides. :func:`fault_windows` counts the distinct windows a set of
byte extents touches (vectorised); :func:`fault_time` times them.
"""

from __future__ import annotations

import math
from typing import Mapping

import numpy as np

from sparsesim.simulator.storage import BackingStore


def shape_requests(requests: Mapping[float, int], granularity: int, max_request: int) -> dict[float, int]:
    """``requests`` ({size: count}) cut at ``max_request`` and rounded up to ``granularity`` (0: exact).

    A request of s bytes becomes ``floor(s / max_request)`` pieces of ``max_request`` and one of the
    rest; every piece is then rounded up to a multiple of ``granularity`` (records are assumed to start
    on a granularity boundary, as padded bundles and page-aligned files do).
    """
    out: dict[float, int] = {}

    def add(size: float, count: int) -> None:
        if granularity:
            size = float(math.ceil(size / granularity) * granularity)
        out[size] = out.get(size, 0) + count

    for size, count in requests.items():
        whole, rest = divmod(size, max_request)
        if whole:
            add(float(max_request), int(whole) * count)
        if rest:
            add(float(rest), count)
    return out


def batch_time(store: BackingStore, requests: Mapping[float, int], depth: int = 0,
               thread_factor: float = 1.0) -> float:
    """Seconds to serve ``requests`` with ``depth`` reads in flight (0: the profile's queue depth),
    the curve's bandwidth scaled by ``thread_factor``::

        t = max( sum_i s_i / (BW(s_i) * thread_factor) ,  ceil(n / depth) * latency + max_i s_i / peak )

    With ``depth`` = queue depth and factor 1 this is exactly :meth:`BackingStore.batch_time`.
    """
    if not requests:
        return 0.0
    depth = depth or store.queue_depth
    sizes = np.fromiter(requests.keys(), dtype=float)
    counts = np.fromiter(requests.values(), dtype=float)
    bandwidth = np.asarray(store.bandwidth_at(sizes), dtype=float) * thread_factor
    t_throughput = float(np.sum(counts * sizes / bandwidth))
    t_latency = math.ceil(counts.sum() / depth) * store.latency + sizes.max() / store.peak_bandwidth
    return max(t_throughput, t_latency)


def slot_time(store: BackingStore, size: float) -> float:
    """Seconds one request of ``size`` bytes holds one of the device's ``queue_depth`` slots when the
    queue is kept full: ``max(latency, queue_depth * size / BW(size))`` — so Q slots deliver the
    curve's bandwidth, and a lone request still pays its latency. For pipelines whose I/O resource
    is the device queue (one submitting thread, asynchronous reads)."""
    return max(store.latency, store.queue_depth * size / float(store.bandwidth_at(np.array([size]))[0]))


def windows_spanned(offsets: np.ndarray, sizes: np.ndarray, window: int) -> tuple[np.ndarray, np.ndarray]:
    """(first ``window``-aligned block, number of blocks) of each byte extent [offset, offset + size)."""
    offsets = np.asarray(offsets, dtype=np.int64)
    sizes = np.asarray(sizes, dtype=np.int64)
    first = offsets // window
    return first, (offsets + sizes - 1) // window - first + 1


def fault_windows(offsets: np.ndarray, sizes: np.ndarray, window: int) -> np.ndarray:
    """Indices of the distinct ``window``-aligned blocks that byte extents [offset, offset + size) touch."""
    if np.size(offsets) == 0:
        return np.empty(0, dtype=np.int64)
    first, spans = windows_spanned(offsets, sizes, window)
    starts = np.repeat(first, spans)
    steps = np.arange(spans.sum()) - np.repeat(np.cumsum(spans) - spans, spans)
    return np.unique(starts + steps)


def fault_time(store: BackingStore, faults: int, readahead: int, fault_overhead: float, depth: int = 1,
               thread_factor: float = 1.0) -> float:
    """Seconds for ``faults`` page faults, each reading ``readahead`` bytes, ``depth`` of them at once
    (the threads that fault concurrently): the reads as one batch, plus each fault's overhead."""
    if faults == 0:
        return 0.0
    reads = batch_time(store, {float(readahead): int(faults)}, depth, thread_factor)
    return reads + math.ceil(faults / depth) * fault_overhead
