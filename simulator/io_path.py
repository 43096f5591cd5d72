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

:class:`ReadPath` is the read path of one run, as the replay uses it (:mod:`~sparsesim.simulator.reads`,
:mod:`~sparsesim.simulator.device`, :mod:`~sparsesim.simulator.timing`): the shape of a batch's
requests and its service time under the scenario's settings (with every setting at its default,
exactly :meth:`BackingStore.batch_time`), page faults under ``memory_management=page-cache``, and
the slot time of a pipelined read.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np

from sparsesim.simulator import bitset, neuronset
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


def slot_time(store: BackingStore, size: float, depth: int = 0, thread_factor: float = 1.0) -> float:
    """Seconds one request of ``size`` bytes holds one of ``depth`` slots (0: the device's
    ``queue_depth``) when they are kept full: ``max(latency, depth * size / (f * BW(size)))`` — so the
    slots deliver the curve's bandwidth, and a lone request still pays its latency. For pipelines whose
    I/O resource is the device queue (asynchronous reads)."""
    depth = depth or store.queue_depth
    return max(store.latency, depth * size / (thread_factor * float(store.bandwidth_at(np.array([size]))[0])))


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


class ReadPath:
    """The read path of one run (scenario ``read_granularity``, ``max_request``, ``io_depth``,
    ``io_threads``, ``memory_management=page-cache``) over one backing store.

    ``shape`` turns a batch's requests into what reaches the device; ``batch_time`` times them (one
    call per storage batch); ``fault_requests`` gives the page faults of reading a unit set through
    the page cache. With every setting at its default the requests are unchanged and the time is
    :meth:`BackingStore.batch_time` itself, so the model before these settings existed is kept exactly.
    """

    def __init__(self, store: BackingStore, scenario, profile) -> None:
        self.store = store
        self.granularity = int(scenario.read_granularity)
        self.max_request = int(scenario.max_request)
        self.depth = int(scenario.io_depth) or store.queue_depth
        self.thread_factor = profile.storage.multi_thread_factor if scenario.io_threads > 1 else 1.0
        self.page_cache = scenario.memory_management == "page-cache"
        if self.page_cache:
            os_spec = profile.os
            self.window = int(os_spec.readahead or os_spec.page_size)
            self.fault_overhead = float(os_spec.fault_overhead)
        self.exact = (not self.granularity and self.depth == store.queue_depth and self.thread_factor == 1.0
                      and not self.page_cache)

    def shape(self, requests: dict[float, int]) -> dict[float, int]:
        """The requests as the device sees them: with a granularity, cut at ``max_request`` and rounded up."""
        return shape_requests(requests, self.granularity, self.max_request) if self.granularity else requests

    def batch_time(self, requests: dict[float, int]) -> float:
        """Seconds to serve one batch of (already shaped) requests; page faults add their overhead."""
        if self.exact:
            return self.store.batch_time(requests)
        seconds = batch_time(self.store, requests, self.depth, self.thread_factor)
        if self.page_cache and requests:
            seconds += math.ceil(sum(requests.values()) / self.depth) * self.fault_overhead
        return seconds

    def fault_requests(self, units: int, n_bytes: int, layer: int, d_ff: Sequence[int], row_bytes: float,
                       matrices: int, layout: str) -> dict[float, int]:
        """The page faults of touching the rows of ``units`` of ``layer`` through ``mmap``: one read of
        a readahead window per distinct window their bytes span (neighbouring rows share pages).
        Bundled records start on ``read_granularity`` boundaries (padded bundles) when it is set."""
        index = bitset.indices(neuronset.to_row(units, n_bytes), int(d_ff[layer])).astype(np.int64)
        before = sum(int(d) for d in d_ff[:layer])
        if layout == "bundled":
            record = row_bytes * matrices
            stride = math.ceil(record / self.granularity) * self.granularity if self.granularity else record
            offsets = np.floor((before + index) * stride).astype(np.int64)
            sizes = np.full(index.size, math.ceil(record), dtype=np.int64)
        else:   # one row in each matrix: matrix m of the layer holds its d_ff rows back to back
            width = int(d_ff[layer])
            starts = before * matrices + np.arange(matrices, dtype=np.int64)[:, None] * width + index
            offsets = np.floor(starts.ravel() * row_bytes).astype(np.int64)
            sizes = np.full(offsets.size, math.ceil(row_bytes), dtype=np.int64)
        n = int(fault_windows(offsets, sizes, self.window).size)
        return {float(self.window): n} if n else {}

    def slot(self, size: float) -> float:
        """Seconds one request holds one of ``depth`` slots kept full (:func:`slot_time`)."""
        return slot_time(self.store, size, self.depth, self.thread_factor)
