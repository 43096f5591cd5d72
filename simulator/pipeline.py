"""Intra-layer pipelining: I/O and compute overlapped per neuron cluster inside one layer.

A layer's work is cut into clusters of neurons; every cluster passes through the same stages in
order, each stage on a resource with a number of servers. PowerInfer-2 (its neuron-cluster pipeline) has five
stages per cluster — Pred (predict the cluster's active neurons), GIO (read gate rows), GC (gate
compute), UDIO (read up/down rows of the active ones), UDC (up/down compute) — on N compute threads
and M I/O threads (it uses one I/O thread: UFS has one command queue). Without pipelining the same
stages run one after another, cluster after cluster (:func:`serial_time`).

:func:`makespan` schedules the stages exactly (non-preemptive list scheduling: a stage starts when
its cluster's previous stage has finished and a server of its resource is free, earliest-ready
first); :func:`steady_state` is the closed form it approaches with many clusters — the busiest
resource's work per server::

    steady = max over resources r of  ( sum of stage times on r, over all clusters ) / servers(r)

and every schedule also takes at least one cluster's whole path (:func:`critical_path`). With one
server per stage and C equal clusters the classic result holds exactly:
``makespan = sum(stage times) + (C - 1) * max(stage time)``.
"""

from __future__ import annotations

import functools
import heapq
from dataclasses import dataclass
from typing import Mapping, Sequence

STAGES_POWERINFER_2 = ("pred", "gate_io", "gate_compute", "updown_io", "updown_compute")


@dataclass(frozen=True)
class Stage:
    name: str
    resource: str        # e.g. "io" or "compute"; stages naming the same resource share its servers
    seconds: float       # per cluster


def powerinfer2_stages(pred: float, gate_io: float, gate_compute: float, updown_io: float,
                       updown_compute: float) -> tuple[Stage, ...]:
    """PowerInfer-2's five stages for one cluster (seconds each)."""
    times = (pred, gate_io, gate_compute, updown_io, updown_compute)
    resources = ("compute", "io", "compute", "io", "compute")
    return tuple(Stage(n, r, t) for n, r, t in zip(STAGES_POWERINFER_2, resources, times))


def _check(clusters: Sequence[Sequence[Stage]], servers: Mapping[str, int]) -> None:
    for path in clusters:
        for stage in path:
            if servers.get(stage.resource, 0) < 1:
                raise ValueError(f"stage {stage.name!r} needs resource {stage.resource!r}, which has no server")
            if not stage.seconds >= 0:
                raise ValueError(f"stage {stage.name!r}: seconds must be >= 0, got {stage.seconds}")


def serial_time(clusters: Sequence[Sequence[Stage]]) -> float:
    """No overlap: every stage of every cluster one after another."""
    return float(sum(stage.seconds for path in clusters for stage in path))


def critical_path(clusters: Sequence[Sequence[Stage]]) -> float:
    """The longest single cluster path: no schedule finishes before it."""
    return max((sum(stage.seconds for stage in path) for path in clusters), default=0.0)


def steady_state(clusters: Sequence[Sequence[Stage]], servers: Mapping[str, int]) -> float:
    """The busiest resource's total work per server: the pipeline's throughput bound."""
    _check(clusters, servers)
    work: dict[str, float] = {}
    for path in clusters:
        for stage in path:
            work[stage.resource] = work.get(stage.resource, 0.0) + stage.seconds
    return max((w / servers[r] for r, w in work.items()), default=0.0)


def makespan(clusters: Sequence[Sequence[Stage]], servers: Mapping[str, int]) -> float:
    """Seconds from the first stage's start to the last stage's end, scheduled exactly.

    Event-driven list scheduling: whenever a server is free, it starts the ready stage of the
    earliest cluster (clusters are issued in order, as a layer's neuron clusters are). One heap
    entry per stage, never per neuron; a layer has tens to hundreds of clusters.
    """
    _check(clusters, servers)
    idle = dict(servers)                                          # free servers per resource
    queues: dict[str, list[tuple[int, int]]] = {r: [] for r in servers}   # ready (cluster, stage) per resource
    for c, path in enumerate(clusters):
        if path:
            heapq.heappush(queues[path[0].resource], (c, 0))
    running: list[tuple[float, int, int]] = []                    # (finish time, cluster, stage)
    now = 0.0
    while True:
        for resource, queue in queues.items():
            while idle[resource] and queue:
                c, s = heapq.heappop(queue)
                idle[resource] -= 1
                heapq.heappush(running, (now + clusters[c][s].seconds, c, s))
        if not running:
            return now
        now, c, s = heapq.heappop(running)
        idle[clusters[c][s].resource] += 1
        if s + 1 < len(clusters[c]):
            heapq.heappush(queues[clusters[c][s + 1].resource], (c, s + 1))


@functools.lru_cache(maxsize=4096)
def _uniform_makespan(stages: tuple[Stage, ...], clusters: int, servers: tuple[tuple[str, int], ...]) -> float:
    return makespan([stages] * clusters, dict(servers))


def uniform_makespan(stages: Sequence[Stage], clusters: int, servers: Mapping[str, int]) -> float:
    """:func:`makespan` of ``clusters`` equal clusters, each through ``stages`` (memoised: a replay
    asks for the same layer shapes many times)."""
    return _uniform_makespan(tuple(stages), int(clusters), tuple(sorted(servers.items())))
