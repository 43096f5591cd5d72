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
neurons); layers narrower than the widest have zero padding bits (a reader refuses a set bit
beyond a layer's width). ``k`` is the largest top-k. File metadata holds one JSON document under
the key ``sparsesim``; its field ``checksum`` holds SHA-256 digests of that document and of every
column of every row group, verified whenever the data is read (section "Integrity" below).
Traces written before checksums existed carry none and stay readable, reported as unverified.
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
import pyarrow.compute as pc
import pyarrow.parquet as pq

from sparsesim.atomic import atomic_path
from sparsesim.errors import InputError, system_reason
from sparsesim.inputs import regular_file
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
MAX_LAYERS = 4096
MAX_TOKENS = 2 ** 31 - 1   # positions and sequence ids are int32
ROW_GROUP_ROWS = 1 << 20   # rows per row group at most (Arrow's default), cut at whole tokens


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
        self.path = Path(path)
        self.meta = {k: v for k, v in meta.items() if k != CHECKSUM}   # a copied trace's checksum is not ours
        self.meta["format_version"] = FORMAT_VERSION
        validate_model(self.path, self.meta)   # never write what the reader would refuse
        self.n_layers = int(model["n_layers"])
        self.units = TraceUnits.from_meta(meta, str(path))
        self.n_bytes = self.units.mask_bytes
        self.extra = tuple(extra)
        self.columns = dict(columns or {})     # optional columns (column_types) written by every write()
        self.rows = 0
        self._digests: dict[str, list[str]] = {}
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
        if t == 0:
            return
        step = max(ROW_GROUP_ROWS // self.n_layers, 1)
        if t > step:   # one row group per call, cut at whole tokens (the reader needs all layers of a token)
            for s in range(0, t, step):
                self.write(seq[s:s + step], pos[s:s + step], token[s:s + step], masks[s:s + step],
                           {k: np.asarray(v)[s:s + step] for k, v in (extra or {}).items()},
                           {k: np.asarray(v)[s:s + step] for k, v in (columns or {}).items()})
            return
        check_padding(self.path, "mask", masks, self.units)
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
            predicted = np.asarray(extra[name]).reshape(t, self.n_layers, self.n_bytes)
            check_padding(self.path, PRED_PREFIX + name, predicted, self.units)
            cols[PRED_PREFIX + name] = _binary_column(predicted.reshape(t * self.n_layers, self.n_bytes), self.n_bytes)
        for name, arrow_type in self.columns.items():
            cols[name] = optional_column(np.asarray(columns[name]), arrow_type, t, self.n_layers)
        table = pa.table(cols, schema=self._writer.schema)
        try:
            self._writer.write_table(table, row_group_size=table.num_rows)
        except OSError as e:
            raise InputError(f"{self.path}: cannot write the trace: {system_reason(e) or e}") from None
        for name, digest in table_digests(table).items():
            self._digests.setdefault(name, []).append(digest)
        self.rows += t * self.n_layers

    def close(self, complete: bool = True) -> None:
        if self._writer is None:
            return
        try:
            if complete:
                self.meta[CHECKSUM] = make_checksum(self.meta, {f.name: self._digests.get(f.name, [])
                                                                for f in self._writer.schema})
                self._writer.add_key_value_metadata({META_KEY.decode(): json.dumps(self.meta)})
            self._writer.close()
        except OSError as e:
            complete = False
            raise InputError(f"{self.path}: cannot write the trace: {system_reason(e) or e}") from None
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
    if not os.path.lexists(p):
        raise InputError(f"{p}: trace file not found")
    regular_file(p)
    try:
        pf = pq.ParquetFile(p)
    except Exception as e:  # pyarrow raises several types for truncated/foreign files
        if system_reason(e):
            raise InputError(f"{p}: cannot read: {system_reason(e)}") from None
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
    verify_metadata(p, meta, pf)
    units = validate_model(p, meta)
    n_layers = meta["model"]["n_layers"]
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


def validate_model(p: Path, meta: dict) -> TraceUnits:
    """The model and units metadata a reader needs, checked alike before writing and after reading."""
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
    if not isinstance(n_layers, int) or isinstance(n_layers, bool) or not 0 < n_layers <= MAX_LAYERS:
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
    vocab = model.get("vocab_size", 1)
    if isinstance(vocab, bool) or not isinstance(vocab, int) or not 0 < vocab <= MAX_TOKENS:
        raise InputError(f"{p}: metadata field 'model.vocab_size' must be a positive 32-bit integer, got {vocab!r}")
    for key in ("non_ffn_params", "attention_params", "embedding_params", "lm_head_params"):
        value = model.get(key, 0)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1e15:
            raise InputError(f"{p}: metadata field 'model.{key}' must be a parameter count >= 0, got {value!r}")
    return TraceUnits.from_meta(meta, str(p))


def _mask_array(col: pa.ChunkedArray | pa.Array, n_bytes: int) -> np.ndarray:
    """uint8 [rows, n_bytes] view of a fixed_size_binary column (copying only across chunks)."""
    chunks = col.chunks if isinstance(col, pa.ChunkedArray) else [col]
    parts = []
    for c in chunks:
        buf = c.buffers()[1]
        parts.append(np.frombuffer(buf, dtype=np.uint8, count=len(c) * n_bytes,
                                   offset=c.offset * n_bytes).reshape(len(c), n_bytes))
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


@functools.lru_cache(maxsize=16)
def _padding(widths: tuple[int, ...], n_bytes: int) -> tuple[int, np.ndarray]:
    """(first byte with a padding bit, [L, n_bytes] rows of the bits beyond each layer's width)."""
    beyond = np.arange(n_bytes * 8)[None, :] >= np.array(widths)[:, None]
    return min(widths) // 8, np.packbits(beyond, axis=1, bitorder="little")


def check_padding(p: Path, column: str, masks: np.ndarray, units: TraceUnits) -> None:
    """Refuse a mask [T, L, n_bytes] that sets a bit beyond its layer's width (a unit that does not exist)."""
    widths = tuple(int(w) for w in units.widths)
    first, pad = _padding(widths, masks.shape[-1])
    if first >= masks.shape[-1] or not masks.size:
        return
    stray = np.any(masks[..., first:] & pad[:, first:], axis=(0, 2))
    if stray.any():
        layer = int(np.argmax(stray))
        raise InputError(f"{p}: column '{column}' sets a bit beyond layer {layer}'s width ({widths[layer]} "
                         f"{units.kind}s): a unit that does not exist")


def _table_to_arrays(p: Path, table: pa.Table, meta: dict, extra: list[str], groups: list[tuple[int, int]]) -> dict:
    """Arrays of a table read from the row groups ``groups`` ((index, rows) in order), verified."""
    verify_columns(p, meta, table, groups)
    units = TraceUnits.from_meta(meta, str(p))
    n_layers, n_bytes = units.n_layers, units.mask_bytes
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
    if units.kind == NEURON:   # an expert trace's rows are checked whole by check_expert_rows (widths included)
        check_padding(p, "mask", out["masks"], units)
        for name, predicted in out["extra"].items():
            check_padding(p, PRED_PREFIX + name, predicted, units)
    return out


def extra_columns(pf: pq.ParquetFile) -> list[str]:
    return [n[len(PRED_PREFIX):] for n in pf.schema_arrow.names if n.startswith(PRED_PREFIX)]


def read_trace(path: str | os.PathLike, *, verify: bool = True) -> Trace:
    """Load a whole trace. ``verify`` checks that ``active`` matches the masks' popcounts and an expert
    trace's rows against its units (:func:`check_expert_rows`)."""
    p = Path(path)
    meta, pf = read_meta(p)
    units = TraceUnits.from_meta(meta, str(p))
    try:
        table = pf.read()
    except Exception as e:
        raise read_failure(p, "trace data", e) from None
    arrays = _table_to_arrays(p, table, meta, extra_columns(pf), row_groups(pf))
    if verify and not np.array_equal(popcount_rows(arrays["masks"]), arrays["active"]):
        raise InputError(f"{p}: column 'active' disagrees with the popcount of 'mask' (corrupt file)")
    if verify and units.kind == EXPERT:
        check_expert_rows(p, units, arrays["masks"], arrays["active"], arrays["columns"].get("route"))
    return Trace(path=p, meta=meta, sha256=file_sha256(p), **arrays)


def row_groups(pf: pq.ParquetFile) -> list[tuple[int, int]]:
    """(index, rows) of every row group, in file order."""
    return [(g, pf.metadata.row_group(g).num_rows) for g in range(pf.num_row_groups)]


def read_failure(path: Path, what: str, error: Exception) -> InputError:
    """The one line for a failed read: the machine's limit in its own words (out of memory: how
    to avoid it), or damage."""
    if isinstance(error, MemoryError):
        return InputError(f"{path}: not enough memory to read {what} ({type(error).__name__}); replay it "
                          f"streamed, row group by row group (sparsesim simulate --stream)")
    if system_reason(error):
        return InputError(f"{path}: cannot read {what}: {system_reason(error)}")
    return InputError(f"{path}: cannot read {what} ({type(error).__name__}); file truncated or corrupt")


def iter_trace_blocks(path: str | os.PathLike) -> Iterator[dict]:
    """Stream a trace row group by row group (bounded memory); yields dicts like :class:`Trace`'s fields."""
    p = Path(path)
    meta, pf = read_meta(p)
    n_layers = int(meta["model"]["n_layers"])
    extra = extra_columns(pf)
    for i in range(pf.num_row_groups):
        try:
            table = pf.read_row_group(i)
        except Exception as e:
            raise read_failure(p, f"row group {i}", e) from None
        if table.num_rows % n_layers:
            raise InputError(f"{p}: row group {i} has {table.num_rows} rows, not a multiple of {n_layers} layers")
        yield _table_to_arrays(p, table, meta, extra, [(i, table.num_rows)])


# ---------------------------------------------------------------------------------------------
# Integrity: SHA-256 of the metadata and of every column of every row group
#
# Written by TraceWriter.close() as the metadata field ``checksum``; checked by every reader, so a
# flipped bit anywhere in the data or in the footer's JSON is one clear error, never a different
# answer. Generic on purpose: it covers whatever columns the schema has (pred:X, or any column a
# later format adds) and the whole metadata document whatever its keys, so extending the format
# needs no change here. Results tables (experiments/sweep.py) use the same digests.

CHECKSUM = "checksum"
CHECKSUM_ALGORITHM = "sha256"
CHECKSUM_KEY = b"sparsesim.checksum"   # Parquet key-value entry for tables other than traces (results)


def meta_digest(meta: Mapping[str, Any]) -> str:
    """Digest of a metadata document without its ``checksum`` field, in canonical JSON (sorted keys,
    no spaces): a flip that leaves the JSON valid changes a value, and so the digest."""
    body = json.loads(json.dumps({k: v for k, v in meta.items() if k != CHECKSUM}))   # as a reader parses it
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode()).hexdigest()


def make_checksum(meta: Mapping[str, Any], columns: Mapping[str, list[str]]) -> dict[str, Any]:
    """The ``checksum`` field: the metadata's digest and, per column, one digest per row group."""
    return {"algorithm": CHECKSUM_ALGORITHM, "metadata": meta_digest(meta), "columns": dict(columns)}


class _ColumnDigest:
    """SHA-256 of one column's values, independent of how Arrow chunks, slices or pads them.

    Each part of a value (validity, fixed-width bytes, lengths, nested children, struct fields)
    feeds its own stream, so a column read back in other chunks hashes the same; null slots
    contribute only their validity. Types without a fixed layout fall back to each value's repr.
    """

    def __init__(self, field: pa.Field):
        self.type = _type_name(field.type)
        self.streams: dict[str, Any] = {}

    def _stream(self, path: str):
        return self.streams.setdefault(path, hashlib.sha256())

    def feed(self, array: pa.Array, path: str = "") -> None:
        if pa.types.is_dictionary(array.type):
            array = array.dictionary_decode()
        t = array.type
        valid = array.is_valid()
        self._stream(path + "/valid").update(valid.to_numpy(zero_copy_only=False).view(np.uint8))
        if array.null_count:
            array = array.filter(valid)
        if pa.types.is_null(t) or not len(array):
            return
        if pa.types.is_boolean(t):
            self._stream(path).update(array.to_numpy(zero_copy_only=False).view(np.uint8))
        elif (pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_fixed_size_binary(t)
              or pa.types.is_temporal(t) or pa.types.is_decimal(t)):
            width = t.bit_width // 8
            self._stream(path).update(np.frombuffer(array.buffers()[1], np.uint8, count=len(array) * width,
                                                    offset=array.offset * width))
        elif pa.types.is_binary(t) or pa.types.is_string(t) or pa.types.is_large_binary(t) or pa.types.is_large_string(t):
            large = pa.types.is_large_binary(t) or pa.types.is_large_string(t)
            offset_type = np.dtype(np.int64 if large else np.int32)
            offsets = np.frombuffer(array.buffers()[1], offset_type, count=len(array) + 1,
                                    offset=array.offset * offset_type.itemsize)
            self._stream(path + "/len").update(np.diff(offsets).astype(np.int64))
            self._stream(path).update(np.frombuffer(array.buffers()[2] or b"", np.uint8,
                                                    count=int(offsets[-1] - offsets[0]), offset=int(offsets[0])))
        elif pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
            self._stream(path + "/len").update(pc.list_value_length(array).to_numpy().astype(np.int64))
            self.feed(array.flatten(), path + "/item")
        elif pa.types.is_struct(t):
            for i, child in enumerate(array.flatten()):
                self.feed(child, f"{path}/{i}:{t.field(i).name}")
        else:
            stream = self._stream(path + "/repr")
            for value in array.to_pylist():
                stream.update(repr(value).encode() + b"\0")

    def hexdigest(self) -> str:
        h = hashlib.sha256(self.type.encode())
        for path in sorted(self.streams):
            h.update(path.encode() + b"\0" + self.streams[path].digest())
        return h.hexdigest()


def _type_name(t: pa.DataType) -> str:
    """A type as its values are read, without the names writers give a list's item field
    ("item" in Arrow, "element" back from Parquet)."""
    if pa.types.is_fixed_size_list(t):
        return f"fixed_size_list<{_type_name(t.value_type)}>[{t.list_size}]"
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        return f"list<{_type_name(t.value_type)}>"
    return str(t)


def table_digests(table: pa.Table) -> dict[str, str]:
    """Column name -> digest of its values (see :class:`_ColumnDigest`)."""
    out = {}
    for field, column in zip(table.schema, table.columns):
        digest = _ColumnDigest(field)
        for chunk in column.chunks:
            digest.feed(chunk)
        out[field.name] = digest.hexdigest()
    return out


def verify_metadata(p: Path, meta: dict, pf: pq.ParquetFile) -> None:
    """Check the metadata against its digest and that every column of the file has one digest per
    row group. A trace written before checksums existed has none and is accepted as it is."""
    checksum = meta.get(CHECKSUM)
    if checksum is None:
        return
    columns = checksum.get("columns") if isinstance(checksum, dict) else None
    if (not isinstance(columns, dict) or checksum.get("algorithm") != CHECKSUM_ALGORITHM
            or not all(isinstance(v, list) and all(isinstance(d, str) for d in v) for v in columns.values())):
        raise InputError(f"{p}: metadata field 'checksum' is damaged (expected algorithm {CHECKSUM_ALGORITHM} "
                         f"with digests per column)")
    if checksum.get("metadata") != meta_digest(meta):
        raise InputError(f"{p}: checksum mismatch in the metadata: the file was changed or damaged after it was written")
    names = pf.schema_arrow.names
    if sorted(columns) != sorted(names):
        raise InputError(f"{p}: checksum covers columns {sorted(columns)}, the file has {sorted(names)}: "
                         f"the file was changed or damaged after it was written")
    for name, digests in columns.items():
        if len(digests) != pf.num_row_groups:
            raise InputError(f"{p}: checksum lists {len(digests)} row groups for column '{name}', the file has "
                             f"{pf.num_row_groups}: the file was changed or damaged after it was written")


def verify_columns(p: Path, meta: dict, table: pa.Table, groups: list[tuple[int, int]]) -> None:
    """Check every column of ``table`` (read from row groups ``groups``, (index, rows) in order)
    against the digests :func:`verify_metadata` has already checked the shape of."""
    checksum = meta.get(CHECKSUM)
    if checksum is None:
        return
    start = 0
    for g, rows in groups:
        for name, digest in table_digests(table.slice(start, rows)).items():
            if checksum["columns"][name][g] != digest:
                raise InputError(f"{p}: checksum mismatch in column '{name}', row group {g}: the file was "
                                 f"changed or damaged after it was written")
        start += rows


def write_checked_table(table: pa.Table, path: str | os.PathLike, **options: Any) -> None:
    """Write ``table`` as Parquet (``options`` as for ``pq.ParquetWriter``) with its columns' digests
    in the file's key-value metadata (a results table; :func:`verify_table` checks them)."""
    checksum = {"algorithm": CHECKSUM_ALGORITHM, "columns": table_digests(table)}
    with pq.ParquetWriter(path, table.schema, **options) as writer:
        writer.write_table(table)
        writer.add_key_value_metadata({CHECKSUM_KEY.decode(): json.dumps(checksum)})


def verify_table(p: Path, table: pa.Table) -> pa.Table:
    """``table`` as read from ``p``, checked against the digests :func:`write_checked_table` stored (a table
    written without them is accepted as it is); the checksum entry is dropped from the result."""
    metadata = dict(table.schema.metadata or {})
    stored = metadata.pop(CHECKSUM_KEY, None)
    if stored is None:
        return table
    try:
        checksum = json.loads(stored)
        columns = checksum["columns"]
        ok = checksum["algorithm"] == CHECKSUM_ALGORITHM and isinstance(columns, dict)
    except (ValueError, TypeError, KeyError):
        ok = False
    if not ok:
        raise InputError(f"{p}: Parquet metadata '{CHECKSUM_KEY.decode()}' is damaged")
    if sorted(columns) != sorted(table.column_names) or columns != table_digests(table):
        raise InputError(f"{p}: checksum mismatch: the file was changed or damaged after it was written")
    return table.replace_schema_metadata(metadata or None)


def checksum_status(meta: dict) -> str:
    """How a trace's integrity is known, in words (``inspect`` shows it)."""
    if meta.get(CHECKSUM) is None:
        return "no checksum (written before traces carried one; read as it is, unverified)"
    columns = meta[CHECKSUM]["columns"]
    groups = len(next(iter(columns.values()), []))
    return f"{CHECKSUM_ALGORITHM} verified: metadata and {len(columns)} columns x {groups} row groups"
