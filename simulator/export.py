"""A trace's needed sets as a cache request sequence, for cross-checks with other cache simulators.

``sparsesim export-requests TRACE --format csv|oracle-general -o FILE`` writes one request per
needed unit of every layer step: steps in order (``time`` = the global layer step t·L + l), each
step's units in index order. The object is the unit: ``obj_id`` = Σ d_ff of the earlier layers +
the neuron's index (so ids are dense, 0 … U-1), ``obj_size`` = the unit's bytes at ``precision``
(rows × d_model × bytes per weight). This is the demand-only request stream (predictor ``none``);
replayed through LRU, FIFO, LFU or Bélády it gives the flat-cache miss ratios that
``docs/validation.md`` compares with libCacheSim.

Formats:

* ``oracle-general``: libCacheSim's binary oracleGeneral trace, 24 bytes per request, little
  endian: ``uint32 time, uint64 obj_id, uint32 obj_size, int64 next_access_vtime``, where
  next_access_vtime is the 1-based position of the same object's next request, or -1 if none
  (libCacheSim's traceConv convention; its Bélády needs it).
* ``csv``: a header and ``time,obj_id,obj_size,next_access_vtime,layer,neuron`` per request.

The trace is read row group by row group; the requests are assembled in a file-backed array, so
memory stays bounded by one row group. Writes are atomic.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
from tqdm import tqdm

from sparsesim.atomic import atomic_path, check_writable
from sparsesim.errors import InputError, system_reason
from sparsesim.simulator.scenario import ModelFootprint, Scenario
from sparsesim.tracefile import iter_trace_blocks, read_meta
from sparsesim.traceunits import NEURON, TraceUnits

FORMATS = ("csv", "oracle-general")
ORACLE_GENERAL = np.dtype([("time", "<u4"), ("obj_id", "<u8"), ("obj_size", "<u4"), ("next_access_vtime", "<i8")])
CSV_HEADER = "time,obj_id,obj_size,next_access_vtime,layer,neuron"
CSV_CHUNK = 1 << 18   # requests formatted per write


def unit_offsets(d_ff: list[int]) -> np.ndarray:
    """obj_id of neuron 0 of each layer."""
    return np.concatenate([[0], np.cumsum(d_ff)[:-1]]).astype(np.uint64)


def export_requests(trace: str | os.PathLike, fmt: str, out: str | os.PathLike, precision: str = "fp16",
                    progress: bool = True) -> int:
    """Write ``trace``'s request sequence to ``out`` in ``fmt``; returns the number of requests."""
    if fmt not in FORMATS:
        raise InputError(f"--format {fmt!r}: unknown; known formats: {', '.join(FORMATS)}")
    out = check_writable(out)
    meta, pf = read_meta(trace)
    units = TraceUnits.from_meta(meta, str(trace))
    if units.kind != NEURON:
        raise InputError(f"{trace}: export-requests writes traces of FFN neurons; this trace's units are "
                         f"{units.kind}s, which it does not export yet")
    model = meta["model"]
    d_ff = [int(x) for x in units.count]
    size = ModelFootprint.from_meta(model, Scenario(precision=precision)).neuron_bytes
    if size != int(size):
        raise InputError(f"--precision {precision}: a unit of {Path(trace).name} is {size:g} B, not a whole "
                         f"number of bytes; choose another precision")
    n = int(pf.read(columns=["active"]).column("active").to_numpy().sum())
    with atomic_path(out) as tmp:
        try:
            if fmt == "oracle-general":
                _fill(trace, d_ff, int(size), _records(tmp, n), progress)
            else:
                with tempfile.TemporaryFile(dir=out.parent) as scratch:
                    records = _records(scratch, n)
                    _fill(trace, d_ff, int(size), records, progress)
                    _write_csv(tmp, records, d_ff)
        except OSError as e:
            raise InputError(f"{out}: cannot write the requests: {system_reason(e) or e}") from None
    return n


def _records(file, n: int) -> np.ndarray:
    if n == 0:
        return np.zeros(0, dtype=ORACLE_GENERAL)
    return np.memmap(file, dtype=ORACLE_GENERAL, mode="w+", shape=(n,))


def _fill(trace, d_ff: list[int], size: int, records: np.ndarray, progress: bool) -> None:
    """Requests in step order, units in index order; next_access_vtime linked back across blocks."""
    n_layers = len(d_ff)
    offsets = unit_offsets(d_ff)
    last = np.full(sum(d_ff), -1, dtype=np.int64)   # position of each unit's latest request so far
    position = token = 0
    blocks = iter_trace_blocks(trace)
    for block in tqdm(blocks, desc="export", unit="block", disable=None if progress else True):
        bits = np.unpackbits(block["masks"], axis=-1, bitorder="little")      # [n, L, width]
        t, layer, index = np.nonzero(bits)                                     # C order: the request order
        k = len(t)
        if position + k > len(records):
            raise InputError(f"{trace}: column 'active' disagrees with the masks (corrupt file)")
        obj = offsets[layer] + index.astype(np.uint64)
        at = position + np.arange(k, dtype=np.int64)
        chunk = records[position:position + k]
        chunk["time"] = (token + t) * n_layers + layer
        chunk["obj_id"] = obj
        chunk["obj_size"] = size
        chunk["next_access_vtime"] = -1
        # The previous request of each object: the one before it in a stable sort by object, or
        # (for its first request in this block) the latest one of earlier blocks.
        order = np.argsort(obj, kind="stable")
        by_obj, by_pos = obj[order].astype(np.int64), at[order]
        prev = last[by_obj]
        repeat = np.zeros(k, dtype=bool)
        repeat[1:] = by_obj[1:] == by_obj[:-1]
        prev[repeat] = by_pos[np.flatnonzero(repeat) - 1]
        linked = prev >= 0
        records["next_access_vtime"][prev[linked]] = by_pos[linked] + 1     # 1-based, as libCacheSim's traceConv
        final = np.ones(k, dtype=bool)
        final[:-1] = ~repeat[1:]
        last[by_obj[final]] = by_pos[final]
        position += k
        token += bits.shape[0]
    if position != len(records):
        raise InputError(f"{trace}: column 'active' disagrees with the masks (corrupt file)")


def _write_csv(path: Path, records: np.ndarray, d_ff: list[int]) -> None:
    offsets = unit_offsets(d_ff).astype(np.int64)
    with open(path, "w") as f:
        f.write(CSV_HEADER + "\n")
        for start in range(0, len(records), CSV_CHUNK):
            r = records[start:start + CSV_CHUNK]
            obj = r["obj_id"].astype(np.int64)
            layer = np.searchsorted(offsets, obj, side="right") - 1
            table = np.column_stack([r["time"], obj, r["obj_size"], r["next_access_vtime"], layer, obj - offsets[layer]])
            np.savetxt(f, table, fmt="%d", delimiter=",")
