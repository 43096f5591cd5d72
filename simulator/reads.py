"""The replay's reads from the backing store: unit sets and streamed weights as storage batches.

:class:`StorageReads` turns what the replay must read — a unit set of one layer (whole units, or some
of each unit's rows: a two-phase gate row, the up/down rows after it), or a number of non-FFN bytes
streamed from flash — into requests (:func:`~sparsesim.simulator.storage.request_sizes`), shapes them
as the read path delivers them (:class:`~sparsesim.simulator.io_path.ReadPath`: read granularity, page
faults), counts them (requests, request bytes, padding bytes, non-FFN storage bytes) and submits
them as one batch to the storage device (:class:`~sparsesim.simulator.device.StorageQueue`). It owns
the device, the interconnect transfer of a discrete compute unit, and the I/O log. *When* a read is
issued and who waits for it is the decode process's and the prefetcher's business.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import simpy

from sparsesim.simulator import neuronset
from sparsesim.simulator.accounting import Accounting
from sparsesim.simulator.device import DEMAND, Batch, StorageQueue
from sparsesim.simulator.heterogeneous import transfer_time
from sparsesim.simulator.io_path import ReadPath
from sparsesim.simulator.scenario import ModelFootprint, Scenario
from sparsesim.simulator.storage import request_sizes


@dataclass
class IoBatch:
    """One storage batch as scheduled: ``neurons`` is None for streamed non-FFN weights."""

    token: int
    layer: int
    kind: str                   # "demand" | "prefetch"
    neurons: np.ndarray | None  # packed set read for ``layer``
    sizes: np.ndarray           # distinct request sizes (bytes) ...
    counts: np.ndarray          # ... and how many of each
    issued: float               # simulated s
    start: float
    end: float


class StorageReads:
    """Reads of one replay. ``scale`` is the compute precision's bytes per stored byte (what crosses
    the interconnect to a discrete unit); ``io_log``, if a list, receives every batch as it completes."""

    def __init__(self, env: simpy.Environment, footprint: ModelFootprint, scenario: Scenario, profile,
                 read_path: ReadPath, acc: Accounting, n_bytes: int, scale: float,
                 io_log: list[IoBatch] | None = None):
        self.fp, self.sc, self.acc, self.read_path = footprint, scenario, acc, read_path
        self.n_bytes, self.n_layers = n_bytes, footprint.n_layers
        self.shaped = not read_path.exact
        # bytes of one row of a unit of each layer (an expert: its share of a matrix)
        self._slice = [footprint.row_bytes if footprint.kind == "neuron" else footprint.slice_bytes(l)
                       for l in range(footprint.n_layers)]
        # Bundled, a partial read of one unit is not adjacent to the next one's (the rest of its record
        # lies between), so partial reads never coalesce there.
        self._coalesce_rows = scenario.coalesce and scenario.layout != "bundled"
        self.io_log = io_log
        link = self._link_time(profile, scale) if scenario.ffn_in == "flash" else None
        self.device = StorageQueue(env, read_path, self._log if io_log is not None else None, link)

    def units(self, layer: int, units: int, priority: int, target: int,
              on_done: Callable[[Batch], None] | None = None, rows: int | None = None, count: int | None = None) -> Batch:
        """Read ``rows`` of each of ``units``' rows (None: all) for step ``target``, as one batch
        (``count``: how many units, if the caller has it)."""
        sc = self.sc
        if count is None:
            count = units.bit_count()
        if rows is None:
            requests = request_sizes(units, self._slice[layer], self.fp.matrices, sc.layout, sc.coalesce,
                                     sc.max_request, count)
        else:
            requests = request_sizes(units, self._slice[layer], rows, sc.layout, self._coalesce_rows, sc.max_request,
                                     count)
        return self._submit(layer, units, requests, priority, target, on_done, count)

    def up_down(self, layer: int, units: int, target: int) -> Batch:
        """Two-phase: the up/down rows of ``units`` whose gate rows are in, on demand."""
        return self.units(layer, units, DEMAND, target, rows=self.fp.matrices - 1)

    def two_phase(self, layer: int, miss: int, ready: int, target: int) -> Batch:
        """Two-phase, one demand batch: the whole rows of the missed units and the up/down rows of the
        staged ones the FFN needs (``ready``)."""
        fp, sc = self.fp, self.sc
        requests = request_sizes(miss, self._slice[layer], fp.matrices, sc.layout, sc.coalesce, sc.max_request)
        for size, n in request_sizes(ready, self._slice[layer], fp.matrices - 1, sc.layout, self._coalesce_rows,
                                     sc.max_request).items():
            requests[size] = requests.get(size, 0) + n
        return self._submit(layer, miss | ready, requests, DEMAND, target)

    def stream(self, total: float, target: int) -> Batch:
        """Non-FFN weights of ``total`` bytes streamed from flash on demand: large sequential requests."""
        sc = self.sc
        n_full, rest = divmod(total, sc.max_request)
        self.acc.totals.nonffn_storage_bytes += total
        requests = {float(sc.max_request): int(n_full)} if n_full else {}
        if rest:
            requests[float(rest)] = requests.get(float(rest), 0) + 1
        if self.read_path.granularity:
            shaped = self.read_path.shape(requests)
            self.acc.totals.padding_bytes += sum(s * n for s, n in shaped.items()) - total
            requests = shaped
        return self.device.submit(requests, DEMAND, target=target)

    def _submit(self, layer: int, units: int, requests: dict[float, int], priority: int, target: int,
                on_done: Callable[[Batch], None] | None = None, count: int = -1) -> Batch:
        if self.shaped:
            requests = self._device_requests(layer, units, requests)
        self.acc.requests(layer, requests)
        return self.device.submit(requests, priority, layer, units, on_done, target, count)

    def _device_requests(self, layer: int, units: int, requests: dict[float, int]) -> dict[float, int]:
        """What reaches the device for ``requests`` of ``units``: page faults through the page cache,
        or the requests shaped by the read granularity; the bytes beyond the units' own are padding."""
        read_path = self.read_path
        if read_path.page_cache:
            shaped = read_path.fault_requests(units, self.n_bytes, layer, self.fp.d_ff, self.fp.row_bytes,
                                              self.fp.matrices, self.sc.layout)
        else:
            shaped = read_path.shape(requests)
        self.acc.totals.padding_bytes += (sum(s * n for s, n in shaped.items())
                                          - sum(s * n for s, n in requests.items()))
        return shaped

    def _link_time(self, profile, scale: float) -> Callable[[Batch], float] | None:
        """Seconds to move a read batch into a discrete compute unit's own memory (None: the unit
        reads DRAM): its bytes at the compute precision over the interconnect, one transfer each."""
        spec = profile.unit(self.sc.compute_unit)
        if spec is None or spec.capacity is None:
            return None
        bandwidth, latency = profile.interconnect.bandwidth, profile.interconnect.latency or 0.0

        def link(batch: Batch) -> float:
            return transfer_time(sum(s * n for s, n in batch.requests.items()) * scale, bandwidth, 1, latency)
        return link

    def _log(self, batch: Batch) -> None:
        """The exact read schedule, for replay against real storage."""
        sizes = np.array(list(batch.requests), dtype=float)
        counts = np.array(list(batch.requests.values()), dtype=np.int64)
        units = None if batch.layer < 0 else neuronset.to_row(batch.neurons, self.n_bytes)
        self.io_log.append(IoBatch(batch.target // self.n_layers, batch.layer,
                                   "demand" if batch.priority == DEMAND else "prefetch", units, sizes, counts,
                                   batch.issued, batch.start, batch.end))
