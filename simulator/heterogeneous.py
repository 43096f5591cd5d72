"""Heterogeneous units: work split across units that run at once and share the DRAM bandwidth,
and the link to a unit with its own memory.

PowerInfer-2 computes the hot neuron clusters densely on the NPU and the cold ones sparsely on the
CPU. Each unit alone reaches its own bandwidth (OnePlus 12: CPU 43.9 GB/s, NPU 56 GB/s); together
they reach ``dram.shared_bandwidth`` (59.6 GB/s), less than the sum (PowerInfer-2 §2.3.1).

Concurrent parts: unit u must move ``b_u`` bytes and needs ``t_u`` seconds alone (its kernel time).
With constant rates r_u = b_u / T, every unit keeps within its own rate and the sum within the
shared bandwidth exactly when ``T >= t_u`` for all u and ``T >= sum b_u / shared``; so the shortest
time of the concurrent parts is::

    T = max( max_u t_u ,  sum_u b_u / shared_bandwidth )

(:func:`concurrent_time`). Splitting a bandwidth-bound stream of B bytes between two units,
:func:`best_split` gives the share of the second unit that balances them and the resulting time,
``max(B / (bw_1 + bw_2), B / shared)``.

A unit with its own memory (a discrete GPU) takes weights from host DRAM over the interconnect:
:func:`transfer_time`, ``bytes / bandwidth + transfers * latency``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence


@dataclass(frozen=True)
class Part:
    """One unit's share of concurrent work."""

    bytes: float         # bytes it streams from the shared memory
    seconds: float       # its time alone (kernel time on its unit)


def concurrent_time(parts: Sequence[Part], shared_bandwidth: float) -> float:
    """Shortest time for ``parts`` running at once on their units, sharing ``shared_bandwidth``."""
    if not parts:
        return 0.0
    return max(max(p.seconds for p in parts), sum(p.bytes for p in parts) / shared_bandwidth)


def best_split(total_bytes: float, bandwidth_a: float, bandwidth_b: float,
               shared_bandwidth: float) -> tuple[float, float]:
    """(share of ``total_bytes`` given to unit b, time) for a bandwidth-bound stream split so that
    both units finish together; the shared bandwidth caps the result."""
    share_b = bandwidth_b / (bandwidth_a + bandwidth_b)
    return share_b, max(total_bytes / (bandwidth_a + bandwidth_b), total_bytes / shared_bandwidth)


def transfer_time(nbytes: float, bandwidth: float, transfers: int = 1, latency: float = 0.0) -> float:
    """Seconds to move ``nbytes`` over an interconnect in ``transfers`` transfers."""
    return nbytes / bandwidth + (transfers * latency if nbytes else 0.0)
