"""Tiny hand-built traces for simulator tests (not a test module)."""

from __future__ import annotations

import numpy as np

from sparsesim.tracefile import TraceWriter


def write_trace(path, active: np.ndarray, d_model: int = 64, glu: bool = True, tokens=None,
                attention_params: int | None = None, **model) -> str:
    """``active``: bool [T, L, d_ff]. Returns the path of a valid trace file."""
    T, L, d = active.shape
    meta_model = {
        "name": "hand-built", "architecture": "test", "n_layers": L, "d_model": d_model, "d_ff": [d] * L,
        "glu": glu, "activation": "test", "attention_params": attention_params if attention_params is not None
        else 4 * d_model * d_model * L, "embedding_params": 0, "lm_head_params": 0,
    }
    meta_model["non_ffn_params"] = meta_model["attention_params"]
    meta_model.update(model)
    with TraceWriter(path, {"kind": "synthetic", "model": meta_model}) as w:
        w.write(np.zeros(T, np.int32), np.arange(T), np.arange(T) if tokens is None else tokens,
                np.packbits(active, axis=-1, bitorder="little"))
    return str(path)


def sliding(T: int, L: int, d: int, k: int, stride: int) -> np.ndarray:
    """Token t uses neurons [t*stride, t*stride + k) mod d in every layer."""
    a = np.zeros((T, L, d), dtype=bool)
    for t in range(T):
        a[t, :, (t * stride + np.arange(k)) % d] = True
    return a
