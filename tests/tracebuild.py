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


def write_expert_trace(path, route: np.ndarray, count: list[int], unit_bytes: list[int], phase=None, batch=None,
                       resident_bytes: list[int] | None = None, shared: list[int] | None = None,
                       shared_bytes: list[int] | None = None) -> str:
    """An expert trace from routed ids ``route`` [T, L, k] (-1: none) through the public writer."""
    from sparsesim.tracecolumns import column_types
    from sparsesim.traceunits import TraceUnits, expert_masks

    T, L, k = route.shape
    top_k = [int((route[0, l] >= 0).sum()) if count[l] else 0 for l in range(L)]
    units = TraceUnits.experts(count=count, top_k=top_k, shared=shared, unit_bytes=unit_bytes,
                               resident_bytes=resident_bytes or [1000] * L, shared_bytes=shared_bytes)
    columns, values = ["route"], {"route": route}
    if phase is not None:
        columns.append("phase")
        values["phase"] = np.asarray(phase, np.int8)
    if batch is not None:
        columns.append("batch")
        values["batch"] = np.asarray(batch, np.int32)
    with TraceWriter(path, {"model": {"name": "tiny-moe", "n_layers": L}, "units": units.to_meta()},
                     columns=column_types(tuple(columns), k)) as w:
        w.write(np.zeros(T), np.arange(T), np.arange(T) % 7, expert_masks(units, route.astype(np.int64)),
                columns=values)
    return str(path)
