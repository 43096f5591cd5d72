"""Replaying traces larger than memory: masks read row group by row group.

:func:`open_streamed` returns a :class:`~sparsesim.tracefile.Trace` whose ``masks`` (and stored
predictor columns) are :class:`StreamedMasks`: an array-like ``[T, L, n_bytes]`` that loads the
row groups a replay touches and keeps only the most recent ones — about ``history`` tokens
behind the newest token read, which bounds what a predictor may look back on. The small
per-token columns (ids, popcounts) are read whole. Offline policies that need the whole future
(``belady``, ``static-pin`` or ``reorder`` without a profiling trace) materialise the masks;
use them on traces that fit in memory.
"""

from __future__ import annotations

import bisect
import os
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from sparsesim.errors import InputError
from sparsesim.tracefile import (PRED_PREFIX, Trace, _mask_array, check_padding, extra_columns, file_sha256,
                                 popcount_rows, read_failure, read_meta, row_groups, verify_columns)
from sparsesim.traceunits import TraceUnits


class StreamedMasks:
    """Array-like view of one mask column, indexed ``[token, layer]``, ``[start:stop, layer]`` or
    ``[start:stop]`` (whole tokens)."""

    ndim = 3
    dtype = np.dtype(np.uint8)

    def __init__(self, path: Path, pf: pq.ParquetFile, meta: dict, column: str, history: int, verify: bool):
        self.path, self._pf, self._meta, self._column = path, pf, meta, column
        self._units = TraceUnits.from_meta(meta, str(path))
        n_layers, n_bytes = self._units.n_layers, self._units.mask_bytes
        self._n_layers, self._n_bytes = n_layers, n_bytes
        rows = [pf.metadata.row_group(i).num_rows for i in range(pf.num_row_groups)]
        for i, r in enumerate(rows):
            if r % n_layers:
                raise InputError(f"{path}: row group {i} has {r} rows, not a multiple of {n_layers} layers")
        self._starts = list(np.cumsum([0] + [r // n_layers for r in rows]))
        self.shape = (int(self._starts[-1]), n_layers, n_bytes)
        self._history = history
        self._verify = verify and column == "mask"
        self._groups: OrderedDict[int, np.ndarray] = OrderedDict()
        self.max_groups_held = 0

    def __len__(self) -> int:
        return self.shape[0]

    def _group(self, g: int) -> np.ndarray:
        if g in self._groups:
            return self._groups[g]
        try:
            table = self._pf.read_row_group(g, columns=[self._column] + (["active"] if self._verify else []))
        except Exception as e:
            raise read_failure(self.path, f"row group {g}", e) from None
        verify_columns(self.path, self._meta, table, [(g, table.num_rows)])
        masks = _mask_array(table.column(self._column), self._n_bytes).reshape(-1, self._n_layers, self._n_bytes)
        check_padding(self.path, self._column, masks, self._units)
        if self._verify and not np.array_equal(popcount_rows(masks),
                                               table.column("active").to_numpy().reshape(masks.shape[:2])):
            raise InputError(f"{self.path}: column 'active' disagrees with the popcount of 'mask' in row group {g}")
        self._groups[g] = masks
        # Keep the groups that hold the last `history` tokens before this group's start.
        keep_from = self._starts[g] - self._history
        for old in [k for k in self._groups if self._starts[k + 1] <= keep_from and k != g]:
            del self._groups[old]
        self.max_groups_held = max(self.max_groups_held, len(self._groups))
        return masks

    def _row(self, t: int) -> np.ndarray:
        if not 0 <= t < self.shape[0]:
            raise IndexError(t)
        g = bisect.bisect_right(self._starts, t) - 1
        return self._group(g)[t - self._starts[g]]

    def __getitem__(self, key):
        if isinstance(key, slice):   # whole tokens [start:stop]: [n, L, n_bytes] (a streamed pass reads blocks)
            start, stop, step = key.indices(self.shape[0])
            if step != 1:
                raise IndexError("streamed masks take contiguous token ranges only")
            rows = [self._row(i) for i in range(start, stop)]
            return np.stack(rows) if rows else np.empty((0,) + self.shape[1:], np.uint8)
        t, layer = key
        if isinstance(t, slice):
            start, stop, _ = t.indices(self.shape[0])
            if stop <= start:
                return np.empty((0, self._n_bytes), dtype=np.uint8)
            return np.stack([self._row(i)[layer] for i in range(start, stop)])
        return self._row(int(t))[layer]

    def __array__(self, dtype=None, copy=None):
        """Materialise the whole column (what offline policies need)."""
        out = np.concatenate([self._group(g) for g in range(len(self._starts) - 1)]) if self.shape[0] else \
            np.empty(self.shape, np.uint8)
        return out if dtype is None else out.astype(dtype)


def open_streamed(path: str | os.PathLike, history: int = 256, verify: bool = True) -> Trace:
    """A trace whose masks are read lazily (bounded memory); see the module docstring."""
    p = Path(path)
    meta, pf = read_meta(p)
    n_layers = int(meta["model"]["n_layers"])
    try:
        small = pf.read(columns=["seq", "pos", "token", "layer", "active"])
    except Exception as e:
        raise read_failure(p, "trace data", e) from None
    verify_columns(p, meta, small, row_groups(pf))
    t = small.num_rows // n_layers
    layer = small.column("layer").to_numpy()
    if not np.array_equal(layer.reshape(t, n_layers), np.broadcast_to(np.arange(n_layers), (t, n_layers))):
        raise InputError(f"{p}: column 'layer' is not 0..{n_layers - 1} repeated per token (rows out of order?)")

    def streamed(column: str) -> StreamedMasks:
        return StreamedMasks(p, pf, meta, column, history, verify)

    return Trace(path=p, meta=meta, sha256=file_sha256(p),
                 seq=small.column("seq").to_numpy()[::n_layers].astype(np.int32),
                 pos=small.column("pos").to_numpy()[::n_layers].astype(np.int32),
                 token=small.column("token").to_numpy()[::n_layers].astype(np.int32),
                 masks=streamed("mask"),
                 active=small.column("active").to_numpy().reshape(t, n_layers).astype(np.int32),
                 extra={name: streamed(PRED_PREFIX + name) for name in extra_columns(pf)})
