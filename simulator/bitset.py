"""Packed neuron sets: uint8 rows, neuron i = byte i // 8, bit i % 8 (``bitorder="little"``).

The format of traces and predictions, handled with numpy a row or a block of rows at a time. The
replay itself works on :mod:`sparsesim.simulator.neuronset` integers (same bit order), converted once per row.
"""

from __future__ import annotations

import numpy as np


def full(d_ff: int, n_bytes: int) -> np.ndarray:
    """The set of all ``d_ff`` neurons in a row of ``n_bytes`` (padding bits stay clear)."""
    bits = np.zeros(n_bytes * 8, dtype=bool)
    bits[:d_ff] = True
    return np.packbits(bits, bitorder="little")


def to_bool(packed: np.ndarray, d_ff: int) -> np.ndarray:
    return np.unpackbits(packed, bitorder="little", count=d_ff).view(bool)


def from_bool(bits: np.ndarray, n_bytes: int) -> np.ndarray:
    out = np.packbits(bits, bitorder="little")
    if out.size < n_bytes:
        out = np.concatenate([out, np.zeros(n_bytes - out.size, np.uint8)])
    return out


def indices(packed: np.ndarray, d_ff: int) -> np.ndarray:
    return np.flatnonzero(to_bool(packed, d_ff))


def runs(packed: np.ndarray, d_ff: int) -> np.ndarray:
    """Lengths of the runs of consecutive members, in neuron order (for request coalescing)."""
    idx = np.flatnonzero(to_bool(packed, d_ff))
    if idx.size == 0:
        return idx
    breaks = np.flatnonzero(np.diff(idx) != 1)
    return np.diff(np.concatenate(([-1], breaks, [idx.size - 1])))


def frequency(masks: np.ndarray, block: int = 256) -> np.ndarray:
    """How often each neuron is set over the first axis of ``masks`` [T, ..., n_bytes] -> [..., n_bytes*8].

    Unpacks ``block`` rows at a time so memory stays bounded on long traces.
    """
    total = np.zeros(masks.shape[1:-1] + (masks.shape[-1] * 8,), dtype=np.int64)
    for start in range(0, masks.shape[0], block):
        total += np.unpackbits(masks[start:start + block], axis=-1, bitorder="little").sum(axis=0, dtype=np.int64)
    return total
