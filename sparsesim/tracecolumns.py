"""The trace's optional columns: ``phase`` and ``batch`` per token, and per (token, layer) row of an
expert trace the ``route`` (routed unit ids by rank), ``route_weight`` and ``capture:NAME`` lists
(docs/trace-format.md). Their Arrow types, how the writer fills them and the reader checks them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pyarrow as pa

from sparsesim.errors import InputError
from sparsesim.traceunits import EXPERT, TraceUnits

CAPTURE_PREFIX = "capture:"
TOKEN_COLUMNS = {"phase": pa.int8(), "batch": pa.int32()}           # one value per token, on each of its rows
ROUTE_COLUMNS = {"route": pa.int16(), "route_weight": pa.float32()}  # a top-k list per (token, layer) row
PREFILL, DECODE = 0, 1


def column_types(names: tuple[str, ...], route_width: int = 0,
                 capture: Mapping[str, Any] | None = None) -> dict[str, pa.DataType]:
    """Arrow types of optional columns: ``names`` from TOKEN_COLUMNS and ROUTE_COLUMNS, and ``capture``
    (name without the prefix -> numpy dtype) as ``capture:NAME`` lists of ``route_width``."""
    out: dict[str, pa.DataType] = {}
    for name in names:
        if name in TOKEN_COLUMNS:
            out[name] = TOKEN_COLUMNS[name]
        elif name in ROUTE_COLUMNS:
            out[name] = pa.list_(ROUTE_COLUMNS[name], route_width)
        else:
            raise ValueError(f"unknown optional column {name!r}")
    for name, dtype in (capture or {}).items():
        out[CAPTURE_PREFIX + name] = pa.list_(pa.from_numpy_dtype(np.dtype(dtype)), route_width)
    return out


def optional_column(values: np.ndarray, arrow_type: pa.DataType, t: int, n_layers: int) -> pa.Array:
    """The writer's column for ``values``: [T] repeated on every layer's row, or [T, L, k] as lists."""
    if pa.types.is_fixed_size_list(arrow_type):
        width = arrow_type.list_size
        flat = values.reshape(t * n_layers * width).astype(arrow_type.value_type.to_pandas_dtype())
        return pa.FixedSizeListArray.from_arrays(pa.array(flat, arrow_type.value_type), width)
    return pa.array(np.repeat(values.reshape(t).astype(arrow_type.to_pandas_dtype()), n_layers), arrow_type)


def optional_columns(schema: pa.Schema) -> list[str]:
    """Names of the optional columns present in ``schema``."""
    return [n for n in schema.names if n in TOKEN_COLUMNS or n in ROUTE_COLUMNS or n.startswith(CAPTURE_PREFIX)]


def check_optional_columns(p: Path, schema: pa.Schema, units: TraceUnits) -> None:
    """Types of the phase/batch/route/capture columns; routes belong to expert traces only."""
    width = max(units.top_k) if units.kind == EXPERT else 0
    for name in optional_columns(schema):
        got = schema.field(name).type
        if name in TOKEN_COLUMNS:
            expected = TOKEN_COLUMNS[name]
        elif units.kind != EXPERT:
            raise InputError(f"{p}: column '{name}' belongs to expert traces; this trace's unit is {units.kind}")
        elif name in ROUTE_COLUMNS:
            expected = pa.list_(ROUTE_COLUMNS[name], width)
        else:
            ok = pa.types.is_fixed_size_list(got) and got.list_size == width and (
                pa.types.is_integer(got.value_type) or pa.types.is_floating(got.value_type))
            expected = got if ok else f"fixed_size_list<number>[{width}]"
        if not _same_type(got, expected):
            raise InputError(f"{p}: column '{name}' has type {got}, expected {expected}"
                             + (f" (k = max units.top_k = {width})" if width else ""))


def _same_type(got: pa.DataType, expected: pa.DataType | str) -> bool:
    """Types equal, ignoring a list's item field name (writers call it "item" or "element")."""
    if isinstance(expected, str):
        return False
    if pa.types.is_fixed_size_list(got) and pa.types.is_fixed_size_list(expected):
        return got.list_size == expected.list_size and got.value_type == expected.value_type
    return got == expected


def read_optional_columns(p: Path, table: pa.Table, n_layers: int) -> dict[str, np.ndarray]:
    """Token columns as [T] (checked equal on a token's rows), list columns as [T, L, k]."""
    rows = table.num_rows
    t = rows // n_layers
    out = {}
    for name in optional_columns(table.schema):
        col = table.column(name)
        if name in TOKEN_COLUMNS:
            values = col.to_numpy().reshape(t, n_layers)
            if not np.array_equal(values, np.broadcast_to(values[:, :1], values.shape)):
                raise InputError(f"{p}: column '{name}' differs between the layers of one token")
            out[name] = values[:, 0].copy()
        else:
            out[name] = _list_array(col, rows).reshape(t, n_layers, -1)
    phase = out.get("phase")
    if phase is not None and not np.isin(phase, (PREFILL, DECODE)).all():
        raise InputError(f"{p}: column 'phase' holds values other than {PREFILL} (prefill) and {DECODE} (decode)")
    return out


def _list_array(col: pa.ChunkedArray, rows: int) -> np.ndarray:
    """[rows, k] values of a fixed_size_list column."""
    flat = pa.concat_arrays([c.flatten() for c in col.chunks]) if col.num_chunks else pa.array([])
    return flat.to_numpy(zero_copy_only=False).reshape(rows, col.type.list_size)
