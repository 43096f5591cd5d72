"""Neuron sets of one layer as Python integers: bit i set = neuron i is a member.

The replay's set algebra (hits, misses, fills, evictions) and the replacement policies work on
these. On sets of a few thousand neurons CPython's big-integer ``&``, ``|`` and ``bit_count`` cost
0.1–0.7 µs, against 0.4–2 µs for the same numpy call on a packed uint8 row, whose fixed per-call
overhead dominates at this size (``BENCHMARKS.md``). Traces and predictors keep packed uint8 rows
(:mod:`sparsesim.simulator.bitset`, same bit order); :func:`from_row` and :func:`to_row` convert once per
row at that boundary.

Complement with ``full ^ s`` (one pass) rather than ``~s`` (a negative integer, three passes).
"""

from __future__ import annotations

import numpy as np

from sparsesim.simulator import bitset


def from_row(row: np.ndarray) -> int:
    """The set in a packed uint8 row (``bitorder="little"``: neuron i is byte i // 8, bit i % 8)."""
    return int.from_bytes(row.tobytes(), "little")


def to_row(s: int, n_bytes: int) -> np.ndarray:
    return np.frombuffer(s.to_bytes(n_bytes, "little"), dtype=np.uint8).copy()


def to_bool(s: int, width: int) -> np.ndarray:
    """One bool per neuron 0 .. width-1 (``width`` a multiple of 8)."""
    return np.unpackbits(np.frombuffer(s.to_bytes(width // 8, "little"), dtype=np.uint8),
                         bitorder="little").view(bool)


def from_bool(bits: np.ndarray) -> int:
    return int.from_bytes(np.packbits(bits, bitorder="little").tobytes(), "little")


def full(width: int) -> int:
    """Neurons 0 .. width-1."""
    return (1 << width) - 1


def first(s: int, n: int, total: int | None = None) -> int:
    """The ``n`` lowest-index members of ``s`` (``total``: ``s.bit_count()``, if the caller has it).

    The 64-bit word holding the n-th member is guessed from the density of ``s`` (members spread
    evenly put it at word ``n · words / total``), corrected a word at a time by popcounts, then
    found within the word byte by byte: a few integer operations on ``s``, no array."""
    if n <= 0:
        return 0
    if total is None:
        total = s.bit_count()
    if n >= total:
        return s
    w = n * ((s.bit_length() + 63) >> 6) // total
    below = total - (s >> (w << 6)).bit_count()       # members in words 0 .. w-1
    while below >= n:
        w -= 1
        below -= ((s >> (w << 6)) & _WORD).bit_count()
    while below + (c := ((word := (s >> (w << 6)) & _WORD)).bit_count()) < n:
        below += c
        w += 1
    rest, shift = n - below, 0
    while rest > (c := ((word >> shift) & 255).bit_count()):   # whole bytes of the word
        rest -= c
        shift += 8
    low = _LOWEST[((word >> shift) & 255) * 9 + rest]
    return (s & ((1 << (w << 6)) - 1)) | (((word & ((1 << shift) - 1)) | (low << shift)) << (w << 6))


def _lowest(byte: int, r: int) -> int:
    low = 0
    for _ in range(r):
        low |= byte & -byte
        byte &= byte - 1
    return low


_WORD = (1 << 64) - 1
_LOWEST = [_lowest(byte, r) for byte in range(256) for r in range(9)]   # the r lowest set bits of a byte


def run_lengths(s: int, count: int | None = None) -> dict[int, int]:
    """{length: how many runs} of consecutive members (``count``: ``s.bit_count()``, if the caller
    has it), for request coalescing.

    ``ge`` (k-th) has bit i set when members i .. i+k-1 are all present, so its popcount c_k is the
    sum over runs of max(length - k + 1, 0): runs of length >= k number c_k - c_{k+1}, of length
    exactly k c_k - 2 c_{k+1} + c_{k+2}. One shift, one AND and a popcount per length. Sets with long
    runs (reordered storage) fall back to locating each run.
    """
    if not s:
        return {}
    c, ge, k = [s.bit_count() if count is None else count], s & (s >> 1), 2
    while ge:
        c.append(ge.bit_count())
        if k == 16:
            return _run_lengths_located(s)
        ge &= s >> k
        k += 1
    c += (0, 0)
    return {k: e for k in range(1, len(c) - 1) if (e := c[k - 1] - 2 * c[k] + c[k + 1])}


def _run_lengths_located(s: int) -> dict[int, int]:
    n_bytes = (s.bit_length() + 7) // 8
    values, counts = np.unique(bitset.runs(to_row(s, n_bytes), n_bytes * 8), return_counts=True)
    return dict(zip(values.tolist(), counts.tolist()))
