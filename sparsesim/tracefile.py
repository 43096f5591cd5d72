"""The trace file: Parquet, one row per (sequence, position, layer), packed activation masks.

This module is the single definition of the format (reference: ``docs/trace-format.md``). The
tracer writes with :class:`TraceWriter`; the simulator reads with :func:`read_trace` (whole
file) or :func:`iter_trace_blocks` (streaming, row group by row group). Neither imports torch.

Columns, in order (rows sorted by sequence, position, layer; every token has all layers):

=========== ============================= ===============================================
``seq``      int32                         sequence (text window) id
``pos``      int32                         position of the token inside its sequence
``token``    int32                         token id
``layer``    int16                         FFN layer index, 0..n_layers-1
``mask``     fixed_size_binary(n_bytes)    ``np.packbits(active, bitorder="little")``:
                                           neuron i is byte i // 8, bit i % 8
``active``   int32                         popcount of ``mask``
``pred:X``   fixed_size_binary(n_bytes)    optional: a learned predictor's predicted mask
``phase``    int8                          optional: 0 prefill, 1 decode (the same on all of a token's rows)
``batch``    int32                         optional: the engine step that processed the token
``route``    fixed_size_list<int16>[k]     optional (experts): routed unit ids by rank, -1 padding
``route_weight`` fixed_size_list<float32>[k] optional (experts): their router weights, NaN padding
``capture:X`` fixed_size_list<number>[k]   optional (experts): per-lookup values an engine recorded
=========== ============================= ===============================================

The unit a mask bit stands for (an FFN neuron, or an expert) and the mask width come from
:mod:`sparsesim.traceunits`: ``n_bytes = ceil(max units per layer / 8)`` (``max(d_ff)`` for
neurons); layers narrower than the widest have zero padding bits. ``k`` is the largest top-k.
File metadata holds one JSON document under the key ``sparsesim``.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from sparsesim.atomic import atomic_path
from sparsesim.errors import InputError
from sparsesim.tracecolumns import check_optional_columns, optional_column, read_optional_columns
from sparsesim.traceunits import EXPERT, NEURON, TraceUnits, check_expert_rows

FORMAT_VERSION = 2           # 2: units (neuron or expert), phase/batch/route columns; version 1 still reads
READABLE_VERSIONS = (1, 2)
META_KEY = b"sparsesim"
PRED_PREFIX = "pred:"

# Keys the simulator needs to interpret a neuron trace; the reader refuses a file without them. An expert
# trace needs only name and n_layers: its units metadata sizes everything.
REQUIRED_MODEL_KEYS = ("name", "n_layers", "d_model", "d_ff", "glu", "non_ffn_params")
REQUIRED_EXPERT_MODEL_KEYS = ("name", "n_layers")
MAX_D_FF = 1 << 20   # far above any published model; guards against corrupt metadata


def os_reason(e: OSError) -> str:
    """The operating system's words for an error (pyarrow wraps them in longer messages)."""
    return os.strerror(e.errno) if e.errno else (str(e).splitlines() or ["I/O error"])[0]


def mask_bytes(d_ff: list[int] | int) -> int:
    """Bytes of one packed mask row for the widest layer."""
    widest = max(d_ff) if isinstance(d_ff, list) else d_ff
    return (int(widest) + 7) // 8


def popcount_rows(packed: np.ndarray) -> np.ndarray:
    """Number of set bits along the last axis of a uint8 array (vectorised, no unpacking)."""
    return np.bitwise_count(packed).sum(axis=-1, dtype=np.int64)


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _schema(n_bytes: int, extra: tuple[str, ...], columns: Mapping[str, pa.DataType] | None = None) -> pa.Schema:
    fields = [
        pa.field("seq", pa.int32()),
        pa.field("pos", pa.int32()),
        pa.field("token", pa.int32()),
        pa.field("layer", pa.int16()),
        pa.field("mask", pa.binary(n_bytes)),
        pa.field("active", pa.int32()),
    ]
    fields += [pa.field(PRED_PREFIX + name, pa.binary(n_bytes)) for name in extra]
    fields += [pa.field(name, t) for name, t in (columns or {}).items()]
    return pa.schema(fields)


def _binary_column(rows: np.ndarray, n_bytes: int) -> pa.Array:
    """A fixed_size_binary array over a contiguous (rows, n_bytes) uint8 buffer, zero-copy."""
    rows = np.ascontiguousarray(rows, dtype=np.uint8)
    return pa.FixedSizeBinaryArray.from_buffers(
        pa.binary(n_bytes), len(rows), [None, pa.py_buffer(rows.reshape(-1))]
    )


class TraceWriter:
    """Write a trace incrementally, one row group per :meth:`write` call.

    The file is written under a temporary name and renamed only by :meth:`close` with
    ``complete=True`` (the context manager does this on success), so an interrupted trace never
    looks complete. ``meta`` may be updated until close (e.g. perplexity known only at the end).
    """

    def __init__(self, path: str | os.PathLike, meta: Mapping[str, Any], extra: tuple[str, ...] = (),
                 compression: str | None = None, columns: Mapping[str, pa.DataType] | None = None):
        model = meta["model"]
        self.n_layers = int(model["n_layers"])
        self.n_bytes = TraceUnits.from_meta(meta, str(path)).mask_bytes
        self.extra = tuple(extra)
        self.columns = dict(columns or {})     # optional columns (column_types) written by every write()
        self.meta = dict(meta)
        self.meta["format_version"] = FORMAT_VERSION
        self.rows = 0
        self.path = Path(path)
        self._atomic = atomic_path(path)
        self._tmp = self._atomic.__enter__()
        self._writer = pq.ParquetWriter(self._tmp, _schema(self.n_bytes, self.extra, self.columns),
                                        compression=compression or "none")

    def write(self, seq: np.ndarray, pos: np.ndarray, token: np.ndarray, masks: np.ndarray,
              extra: Mapping[str, np.ndarray] | None = None, columns: Mapping[str, np.ndarray] | None = None) -> None:
        """Append T tokens: ``seq/pos/token`` of shape [T], ``masks`` uint8 [T, n_layers, n_bytes];
        ``columns`` the optional columns' values, [T] for token columns and [T, n_layers, k] for lists."""
        t = len(token)
        if masks.shape != (t, self.n_layers, self.n_bytes):
            raise ValueError(f"masks shape {masks.shape} != {(t, self.n_layers, self.n_bytes)}")
        flat = masks.reshape(t * self.n_layers, self.n_bytes)
        cols = {
            "seq": pa.array(np.repeat(np.asarray(seq, np.int32), self.n_layers)),
            "pos": pa.array(np.repeat(np.asarray(pos, np.int32), self.n_layers)),
            "token": pa.array(np.repeat(np.asarray(token, np.int32), self.n_layers)),
            "layer": pa.array(np.tile(np.arange(self.n_layers, dtype=np.int16), t)),
            "mask": _binary_column(flat, self.n_bytes),
            "active": pa.array(popcount_rows(flat).astype(np.int32)),
        }
        for name in self.extra:
            cols[PRED_PREFIX + name] = _binary_column(
                np.asarray(extra[name]).reshape(t * self.n_layers, self.n_bytes), self.n_bytes)
        for name, arrow_type in self.columns.items():
            cols[name] = optional_column(np.asarray(columns[name]), arrow_type, t, self.n_layers)
        try:
            self._writer.write_table(pa.table(cols, schema=self._writer.schema))
        except OSError as e:
            raise InputError(f"{self.path}: cannot write the trace: {os_reason(e)}") from None
        self.rows += t * self.n_layers

    def close(self, complete: bool = True) -> None:
        if self._writer is None:
            return
        try:
            if complete:
                self._writer.add_key_value_metadata({META_KEY.decode(): json.dumps(self.meta)})
            self._writer.close()
        except OSError as e:
            complete = False
            raise InputError(f"{self.path}: cannot write the trace: {os_reason(e)}") from None
        finally:
            self._writer = None
            if complete:
                self._atomic.__exit__(None, None, None)
            else:
                self._atomic.__exit__(RuntimeError, RuntimeError("aborted"), None)

    def __enter__(self) -> "TraceWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(complete=exc_type is None)


@dataclass
class Trace:
    """A whole trace in memory, ready for the simulator (token-major arrays)."""

    path: Path
    meta: dict
    seq: np.ndarray            # [T] int32
    pos: np.ndarray            # [T] int32
    token: np.ndarray          # [T] int32
    masks: np.ndarray          # [T, L, n_bytes] uint8, packed little-endian bits
    active: np.ndarray         # [T, L] int32 popcounts
    extra: dict[str, np.ndarray] = field(default_factory=dict)   # name -> [T, L, n_bytes]
    sha256: str = ""
    columns: dict[str, np.ndarray] = field(default_factory=dict)  # optional columns: [T] or [T, L, k]

    @property
    def model(self) -> dict:
        return self.meta["model"]

    @property
    def n_tokens(self) -> int:
        return len(self.token)

    @property
    def n_layers(self) -> int:
        return int(self.model["n_layers"])

    @property
    def d_ff(self) -> list[int]:
        """Units per layer: FFN neurons (``model.d_ff``), or an expert trace's routed experts."""
        return [int(x) for x in self.units.count]

    @property
    def n_bytes(self) -> int:
        return self.masks.shape[-1]

    @property
    def route(self) -> np.ndarray | None:
        """Expert traces: routed unit ids [T, L, k] by rank, -1 padding (None when not recorded)."""
        return self.columns.get("route")

    @property
    def phase(self) -> np.ndarray | None:
        """[T] PREFILL (0) or DECODE (1), when recorded."""
        return self.columns.get("phase")

    @functools.cached_property
    def units(self) -> TraceUnits:
        """Unit counts, sizes, always-active units and dense layers (neurons for a format-1 trace)."""
        return TraceUnits.from_meta(self.meta, str(self.path))


def read_meta(path: str | os.PathLike) -> tuple[dict, pq.ParquetFile]:
    """Open ``path``, check it is a sparsesim trace of this format version, return its metadata."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"{p}: trace file not found")
    if p.is_dir():
        raise InputError(f"{p}: is a directory, expected a trace .parquet file")
    try:
        pf = pq.ParquetFile(p)
    except Exception as e:  # pyarrow raises several types for truncated/foreign files
        raise InputError(f"{p}: not a readable Parquet file ({type(e).__name__}: "
                         f"{str(e).splitlines()[0] if str(e) else 'truncated?'})") from None
    kv = pf.metadata.metadata or {}
    if META_KEY not in kv:
        raise InputError(f"{p}: Parquet file has no '{META_KEY.decode()}' metadata: not a sparsesim trace")
    try:
        meta = json.loads(kv[META_KEY])
    except ValueError:
        raise InputError(f"{p}: metadata key '{META_KEY.decode()}' is not valid JSON") from None
    if not isinstance(meta, dict):
        raise InputError(f"{p}: metadata '{META_KEY.decode()}' must be a JSON object")
    version = meta.get("format_version")
    if isinstance(version, bool) or version not in READABLE_VERSIONS:
        raise InputError(f"{p}: trace format_version {version!r} is not supported "
                         f"(this sparsesim reads versions {', '.join(map(str, READABLE_VERSIONS))})")
    _validate_meta(p, meta, pf)
    return meta, pf


def _validate_meta(p: Path, meta: dict, pf: pq.ParquetFile) -> None:
    model = meta.get("model")
    if not isinstance(model, dict):
        raise InputError(f"{p}: metadata field 'model' missing or not an object")
    if meta.get("format_version") == 1 and "units" in meta:
        raise InputError(f"{p}: metadata field 'units' needs format_version 2 (this file says 1)")
    neurons = not isinstance(meta.get("units"), dict) or meta["units"].get("kind", NEURON) == NEURON
    for key in REQUIRED_MODEL_KEYS if neurons else REQUIRED_EXPERT_MODEL_KEYS:
        if key not in model:
            raise InputError(f"{p}: metadata field 'model.{key}' is missing")
    n_layers = model["n_layers"]
    if not isinstance(n_layers, int) or isinstance(n_layers, bool) or not 0 < n_layers <= 4096:
        raise InputError(f"{p}: metadata field 'model.n_layers' must be a positive integer, got {n_layers!r}")
    d_ff = model.get("d_ff")
    if (neurons or d_ff is not None) and (
            not isinstance(d_ff, list) or len(d_ff) != n_layers
            or not all(isinstance(x, int) and not isinstance(x, bool) and 0 <= x <= MAX_D_FF for x in d_ff)
            or (neurons and min(d_ff) == 0)):
        raise InputError(f"{p}: metadata field 'model.d_ff' must list {n_layers} integers in 1..{MAX_D_FF}")
    d_model = model.get("d_model")
    if (neurons or d_model is not None) and (
            not isinstance(d_model, int) or isinstance(d_model, bool) or not 0 < d_model < 1 << 31):
        raise InputError(f"{p}: metadata field 'model.d_model' must be a positive 32-bit integer, got {d_model!r}")
    if (neurons or "glu" in model) and not isinstance(model.get("glu"), bool):
        raise InputError(f"{p}: metadata field 'model.glu' must be true or false, got {model.get('glu')!r}")
    for key in ("non_ffn_params", "attention_params", "embedding_params", "lm_head_params"):
        value = model.get(key, 0)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1e15:
            raise InputError(f"{p}: metadata field 'model.{key}' must be a parameter count >= 0, got {value!r}")
    units = TraceUnits.from_meta(meta, str(p))
    schema = pf.schema_arrow
    expected = _schema(units.mask_bytes, ())
    for f in expected:
        if f.name not in schema.names:
            raise InputError(f"{p}: column '{f.name}' is missing")
        if schema.field(f.name).type != f.type:
            raise InputError(f"{p}: column '{f.name}' has type {schema.field(f.name).type}, expected {f.type} "
                             f"(mask width must be ceil(max units per layer / 8) = {units.mask_bytes} bytes)")
    check_optional_columns(p, schema, units)
    if pf.metadata.num_rows % n_layers:
        raise InputError(f"{p}: {pf.metadata.num_rows} rows is not a multiple of {n_layers} layers")


def _mask_array(col: pa.ChunkedArray | pa.Array, n_bytes: int) -> np.ndarray:
    """uint8 [rows, n_bytes] view of a fixed_size_binary column (copying only across chunks)."""
    chunks = col.chunks if isinstance(col, pa.ChunkedArray) else [col]
    parts = []
    for c in chunks:
        buf = c.buffers()[1]
        parts.append(np.frombuffer(buf, dtype=np.uint8, count=len(c) * n_bytes,
                                   offset=c.offset * n_bytes).reshape(len(c), n_bytes))
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


def _table_to_arrays(p: Path, table: pa.Table, n_layers: int, n_bytes: int, extra: list[str]) -> dict:
    rows = table.num_rows
    t = rows // n_layers
    layer = table.column("layer").to_numpy()
    if not np.array_equal(layer.reshape(t, n_layers), np.broadcast_to(np.arange(n_layers), (t, n_layers))):
        raise InputError(f"{p}: column 'layer' is not 0..{n_layers - 1} repeated per token (rows out of order?)")
    out = {
        "seq": table.column("seq").to_numpy()[::n_layers].astype(np.int32),
        "pos": table.column("pos").to_numpy()[::n_layers].astype(np.int32),
        "token": table.column("token").to_numpy()[::n_layers].astype(np.int32),
        "masks": _mask_array(table.column("mask"), n_bytes).reshape(t, n_layers, n_bytes),
        "active": table.column("active").to_numpy().reshape(t, n_layers).astype(np.int32),
        "extra": {name: _mask_array(table.column(PRED_PREFIX + name), n_bytes).reshape(t, n_layers, n_bytes)
                  for name in extra},
        "columns": read_optional_columns(p, table, n_layers),
    }
    return out


def extra_columns(pf: pq.ParquetFile) -> list[str]:
    return [n[len(PRED_PREFIX):] for n in pf.schema_arrow.names if n.startswith(PRED_PREFIX)]


def read_trace(path: str | os.PathLike, *, verify: bool = True) -> Trace:
    """Load a whole trace. ``verify`` checks that ``active`` matches the masks' popcounts and an expert
    trace's rows against its units (:func:`check_expert_rows`)."""
    p = Path(path)
    meta, pf = read_meta(p)
    n_layers = int(meta["model"]["n_layers"])
    units = TraceUnits.from_meta(meta, str(p))
    extra = extra_columns(pf)
    try:
        table = pf.read()
    except Exception as e:
        raise read_failure(p, "trace data", e) from None
    arrays = _table_to_arrays(p, table, n_layers, units.mask_bytes, extra)
    if verify and not np.array_equal(popcount_rows(arrays["masks"]), arrays["active"]):
        raise InputError(f"{p}: column 'active' disagrees with the popcount of 'mask' (corrupt file)")
    if verify and units.kind == EXPERT:
        check_expert_rows(p, units, arrays["masks"], arrays["active"], arrays["columns"].get("route"))
    return Trace(path=p, meta=meta, sha256=file_sha256(p), **arrays)


def read_failure(path: Path, what: str, error: Exception) -> InputError:
    """The one line for a failed read: out of memory (say so, and how to avoid it), or damage."""
    if isinstance(error, (MemoryError, pa.ArrowMemoryError)):
        return InputError(f"{path}: not enough memory to read {what} ({type(error).__name__}); replay it "
                          f"streamed, row group by row group (sparsesim simulate --stream)")
    return InputError(f"{path}: cannot read {what} ({type(error).__name__}); file truncated or corrupt")


def iter_trace_blocks(path: str | os.PathLike) -> Iterator[dict]:
    """Stream a trace row group by row group (bounded memory); yields dicts like :class:`Trace`'s fields."""
    p = Path(path)
    meta, pf = read_meta(p)
    n_layers = int(meta["model"]["n_layers"])
    n_bytes = TraceUnits.from_meta(meta, str(p)).mask_bytes
    extra = extra_columns(pf)
    for i in range(pf.num_row_groups):
        try:
            table = pf.read_row_group(i)
        except Exception as e:
            raise read_failure(p, f"row group {i}", e) from None
        if table.num_rows % n_layers:
            raise InputError(f"{p}: row group {i} has {table.num_rows} rows, not a multiple of {n_layers} layers")
        yield _table_to_arrays(p, table, n_layers, n_bytes, extra)
