"""The backing store as a simpy server: one batch at a time, demand before prefetch.

Batches of one priority class are served first come, first served; a queued demand batch goes
before every queued prefetch, but never interrupts the batch being served (non-preemptive). A
prefetch that finds the device idle starts at the end of the current instant, so that a demand
read issued at the same simulated time goes first.
Each batch costs one simpy timeout — never one event per neuron or per request. A process that
must wait for a batch yields :meth:`StorageQueue.completion`.

A batch's service time comes from the run's read path (:class:`~sparsesim.simulator.io_path.ReadPath`).
For a compute unit with its own memory (a discrete GPU) a completed read still crosses the
interconnect: ``link`` gives the seconds of a batch's transfer, served one batch at a time after its
read and overlapping the device's next read (one more timeout per batch); the batch completes when
its transfer does.
"""

from __future__ import annotations

from collections import deque
from typing import Callable

import simpy

from sparsesim.simulator.io_path import ReadPath

DEMAND, PREFETCH = 0, 1


class Batch:
    """One storage batch: its requests ({size in bytes: count}) and, for FFN reads, the layer, the
    unit set it brings in (``count`` units, -1 where not counted) and the step it is read for (the
    target of a prefetch)."""

    __slots__ = ("requests", "priority", "layer", "neurons", "count", "on_done", "issued", "start", "end", "_done",
                 "target")

    def __init__(self, requests: dict[float, int], priority: int, layer: int, neurons: int,
                 on_done: Callable[["Batch"], None] | None, issued: float, target: int, count: int = -1):
        self.requests, self.priority, self.layer, self.neurons, self.count = requests, priority, layer, neurons, count
        self.on_done, self.issued, self.target = on_done, issued, target
        self.start = self.end = -1.0
        self._done: simpy.Event | None = None


class StorageQueue:
    def __init__(self, env: simpy.Environment, read_path: ReadPath,
                 on_finish: Callable[[Batch], None] | None = None, link: Callable[[Batch], float] | None = None):
        self.env = env
        self.batch_time = read_path.store.batch_time if read_path.exact else read_path.batch_time
        self.on_finish = on_finish          # sees every batch when it completes (the I/O log)
        self.link = link                    # seconds of a batch's transfer to a unit's own memory, if any
        self._waiting = (deque(), deque())  # by priority
        self._serving: Batch | None = None
        self._kick_pending = False
        self.busy = 0.0                     # s spent serving batches
        self.link_busy = 0.0                # s the interconnect spent on transfers
        self._link_free = 0.0               # when the interconnect finishes its last transfer

    def submit(self, requests: dict[float, int], priority: int, layer: int = -1, neurons: int = 0,
               on_done: Callable[[Batch], None] | None = None, target: int = -1, count: int = -1) -> Batch:
        """Queue a batch, timed by the read path when it starts."""
        batch = Batch(requests, priority, layer, neurons, on_done, self.env.now, target, count)
        if self._serving is None and priority == DEMAND:
            self._start(batch)
        else:
            self._waiting[priority].append(batch)
            if self._serving is None and not self._kick_pending:
                self._kick_pending = True
                self.env.timeout(0).callbacks.append(self._kick)
        return batch

    def _kick(self, _event: simpy.Event) -> None:
        self._kick_pending = False
        if self._serving is None:
            self._start_next()

    def _start_next(self) -> None:
        waiting = self._waiting[0] or self._waiting[1]
        if waiting:
            self._start(waiting.popleft())

    def completion(self, batch: Batch) -> simpy.Event:
        """An event that fires when ``batch`` is done (already fired if it is)."""
        if batch._done is None:
            batch._done = self.env.event()
            if batch.end >= 0:
                batch._done.succeed()
        return batch._done

    def _start(self, batch: Batch) -> None:
        self._serving = batch
        batch.start = self.env.now
        seconds = self.batch_time(batch.requests)
        self.busy += seconds
        self.env.timeout(seconds).callbacks.append(self._finish)

    def _finish(self, _event: simpy.Event, batch: Batch | None = None) -> None:
        """The batch being served is read (``batch`` None): the next one starts; with a link, the
        batch completes after its transfer (this method again, with ``batch``)."""
        if batch is None:
            batch, self._serving = self._serving, None
            self._start_next()
            if self.link is not None:   # after its read, behind the interconnect's earlier transfers
                transfer = self.link(batch)
                self.link_busy += transfer
                self._link_free = max(self.env.now, self._link_free) + transfer
                self.env.timeout(self._link_free - self.env.now).callbacks.append(
                    lambda event, b=batch: self._finish(event, b))
                return
        batch.end = self.env.now
        if batch.on_done is not None:
            batch.on_done(batch)
        if self.on_finish is not None:
            self.on_finish(batch)
        if batch._done is not None:
            batch._done.succeed()
