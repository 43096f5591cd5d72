"""Memory management: what it costs to put fetched neurons into DRAM and take them out again.

Four schemes (scenario ``memory_management``), each with a cost per inserted and per removed neuron
of ``b`` bytes (``b`` at the compute precision: what lives in DRAM):

``matrix``      LLM in a Flash's preallocated per-layer matrix (§3.3, Fig. 7): an inserted neuron
                is copied in after the used rows; a removed one is replaced by moving the last used
                row into its hole, so the used rows stay one contiguous block that a dense kernel can
                read. Each insertion and each removal moves one neuron: ``2·b`` bytes (read + write)
                at the unit's copy bandwidth, plus ``overhead`` of bookkeeping (pointer, bias, count
                and last-k-active arrays). The model before the time model existed is this scheme
                with the DRAM bandwidth as copy bandwidth.
``segmented``   PowerInfer-2's segmented neuron cache: fixed slots per region (hot clusters, cold
                neurons) managed by LRU lists; a read lands in its slot and an eviction drops the
                slot's contents (never written back), so nothing is copied: bookkeeping only.
``page-cache``  weights read through ``mmap``: the kernel inserts and drops pages itself; that cost
                is part of each page fault (``os.fault_overhead``, charged on the read path by
                :mod:`sparsesim.simulator.io_path`), none here.
``none``        weights streamed into a fixed buffer and used in place (the naive baseline): none.

Kernel calls (:func:`management_calls`): the matrix scheme keeps three arrays in step — the weight
matrix, the bias and the pointer from each row to its neuron (§3.3) — and moves each with one
vectorised operation per insertion and per deletion, so a step that inserts and deletes makes six
calls on the compute unit, each paying its dispatch cost (``U.dispatch``; absent on CPUs, the eager
per-operation cost on a GPU). The other schemes call nothing on the compute unit.
"""

from __future__ import annotations

from dataclasses import dataclass

from sparsesim.simulator.scenario import MEMORY_MANAGEMENT as SCHEMES


@dataclass(frozen=True)
class Management:
    seconds: float
    bytes: float      # DRAM traffic of the copies (read + write)


def management_cost(scheme: str, inserted: int, removed: int, neuron_bytes: float, copy_bandwidth: float,
                    overhead: float) -> Management:
    """Cost of inserting ``inserted`` and removing ``removed`` neurons of ``neuron_bytes`` each.

    ``copy_bandwidth`` is B/s of read + write traffic (``Unit.copy_bandwidth``); ``overhead`` is the
    bookkeeping per inserted or removed neuron (the scenario's ``insert_overhead``).
    """
    if scheme not in SCHEMES:
        raise ValueError(f"unknown memory-management scheme {scheme!r}")   # a caller bug, not input
    moves = inserted + removed
    if scheme == "matrix":
        moved = 2.0 * neuron_bytes * moves
        return Management(moved / copy_bandwidth + moves * overhead, moved)
    if scheme == "segmented":
        return Management(moves * overhead, 0.0)
    return Management(0.0, 0.0)


CALLS_PER_OPERATION = {"matrix": 3, "segmented": 0, "page-cache": 0, "none": 0}


def management_calls(scheme: str, inserted: int, removed: int) -> int:
    """Kernel calls of one insertion of ``inserted`` and one deletion of ``removed`` units."""
    return CALLS_PER_OPERATION[scheme] * ((inserted > 0) + (removed > 0))
