"""The generic routing table: CSV (with a header line) or Parquet, one row per routed expert.

Columns (docs/moe.md, "Generic routing tables"), in any order:

========== ======== ==============================================================
``token``   integer  the token's position in its sequence (0, 1, ...)
``layer``   integer  model layer index
``expert``  integer  routed expert id, ``0 .. n_experts-1``
``weight``  number   optional: the router weight
``phase``   text/int optional: ``prefill``/``decode`` (or 0/1), the same on a token's rows
``seq``     integer  optional: sequence id (default 0)
``batch``   integer  optional: the engine step that processed the token
========== ======== ==============================================================

A token's rows in one layer are its top-k in rank order (the file's order). Every token routes in
every MoE layer, except where a ``batch`` column shows output pruning (a token may lack a layer that
its batch's last token has, as llama.cpp's last layer does). The shape file gives
``n_experts`` and ``expert_bytes`` (and optionally ``top_k``, checked against the rows).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from sparsesim.errors import InputError, system_reason
from sparsesim.tracecolumns import DECODE, PREFILL
from sparsesim.tracing.importers.routes import Routes, Shape, group_routes, output_pruning
from sparsesim.tracing.importers.table import parse_numbers, read_lines

NAME = "generic"
REQUIRED = ("token", "layer", "expert")
OPTIONAL = ("weight", "phase", "seq", "batch")
PHASES = {"prefill": PREFILL, "decode": DECODE, str(PREFILL): PREFILL, str(DECODE): DECODE}


def detect(head: str) -> bool:
    first = {c.strip() for c in (head.splitlines() or [""])[0].split(",")}
    return set(REQUIRED) <= first


def read(path: Path, shape: Shape) -> Routes:
    if path.suffix == ".parquet":
        columns, locate = _parquet(path)
    else:
        columns, locate = _csv(path)
    n = len(columns["expert"])
    if n == 0:
        raise InputError(f"{path}: no routing rows")
    for name in ("token", "layer", "expert", "seq", "batch"):
        if name in columns and np.any(columns[name] < 0):
            raise InputError(f"{locate(int(np.flatnonzero(columns[name] < 0)[0]))}: field '{name}' must be >= 0")
    layer = columns["layer"].astype(np.int64)
    observed = sorted(set(layer.tolist()))
    moe_layers = shape.moe_layers(len(observed), observed)
    top_k = _top_k(columns, layer, observed, locate)
    units, n_layers = shape.units(moe_layers, top_k)
    seq = columns.get("seq", np.zeros(n)).astype(np.int64)
    per_token = {name: columns[name].astype(np.int8 if name == "phase" else np.int32)
                 for name in ("phase", "batch") if name in columns}
    per_route = {"weight": (columns["weight"].astype(np.float32), np.float32(np.nan))} if "weight" in columns else {}
    grouped = group_routes(path, locate, seq, columns["token"].astype(np.int64), layer, columns["expert"], units,
                           "the number of rows per token and layer" if shape.doc.get("top_k") is None
                           else f"the shape file's top_k={shape.doc['top_k']}",
                           per_token=per_token, per_route=per_route,
                           skipped=None if "batch" not in columns else
                           output_pruning(seq, columns["token"], layer, columns["batch"]))
    return Routes(source=path, format="generic " + ("parquet" if path.suffix == ".parquet" else "csv"),
                  model=shape.model(n_layers, path.stem), units=units, seq=grouped["seq"], pos=grouped["pos"],
                  route=grouped["route"], weight=grouped.get("weight"), phase=grouped.get("phase"),
                  batch=grouped.get("batch"), capture_meta={"columns": sorted(columns)},
                  inputs=[path] + ([shape.path] if shape.path else []))


def _top_k(columns: dict, layer: np.ndarray, observed: list[int], locate) -> list[int]:
    """Experts per token in each MoE layer, from the rows: every token of a layer must route the same number."""
    seq = columns.get("seq", np.zeros(len(layer)))
    key = np.stack([seq, columns["token"], layer], axis=1)
    groups, first, counts = np.unique(key, axis=0, return_index=True, return_counts=True)
    out = []
    for l in observed:
        mine = groups[:, 2] == l
        usual = int(np.bincount(counts[mine]).argmax())
        odd = np.flatnonzero(mine & (counts != usual))
        if len(odd):
            g = odd[0]
            raise InputError(f"{locate(int(first[g]))}: token {int(groups[g, 1])} routes {counts[g]} experts in layer "
                             f"{l}, but the layer's other tokens route {usual} (the top-k must not vary)")
        out.append(usual)
    return out


def _csv(path: Path):
    lines = read_lines(path)
    if not lines:
        raise InputError(f"{path}: empty file")
    names = tuple(c.strip() for c in lines[0].split(","))
    _check_names(path, names, "line 1")
    body = [(i + 1, t) for i, t in enumerate(lines[1:], start=1) if t.strip()]
    texts, numbers = [t for _, t in body], [n for n, _ in body]
    if "phase" in names:
        texts = [_phase_as_number(path, t, names.index("phase"), n) for t, n in zip(texts, numbers)]
    integer = tuple(n for n in names if n != "weight")
    columns = parse_numbers(path, texts, numbers, names, integers=integer)
    return columns, lambda i: f"{path} line {numbers[i]}"


def _phase_as_number(path: Path, text: str, index: int, number: int) -> str:
    fields = text.split(",")
    if len(fields) > index:
        value = fields[index].strip().lower()
        if value not in PHASES:
            raise InputError(f"{path} line {number}: phase {fields[index].strip()!r} is neither prefill nor decode")
        fields[index] = str(PHASES[value])
    return ",".join(fields)


def _parquet(path: Path):
    try:
        table = pq.read_table(path)
    except Exception as e:  # pyarrow raises several types for damaged files
        if system_reason(e):
            raise InputError(f"{path}: cannot read: {system_reason(e)}") from None
        raise InputError(f"{path}: not a readable Parquet file ({type(e).__name__}); truncated or corrupt?") from None
    names = tuple(table.column_names)
    _check_names(path, names, "schema")
    columns = {}
    for name in REQUIRED + OPTIONAL:
        if name not in names:
            continue
        col = table.column(name)
        if name == "phase" and (pa.types.is_string(col.type) or pa.types.is_large_string(col.type)):
            text = np.char.lower(np.asarray(col.to_pylist(), dtype=str))
            bad = np.flatnonzero(~np.isin(text, list(PHASES)))
            if len(bad):
                raise InputError(f"{path} row {bad[0] + 1}: phase {text[bad[0]]!r} is neither prefill nor decode")
            columns[name] = np.vectorize(PHASES.get, otypes=[np.int64])(text)
            continue
        if col.null_count:
            raise InputError(f"{path} row {int(np.flatnonzero(col.is_null().to_numpy(zero_copy_only=False))[0]) + 1}: "
                             f"column '{name}' is null")
        if not (pa.types.is_integer(col.type) or (name == "weight" and pa.types.is_floating(col.type))):
            raise InputError(f"{path}: column '{name}' has type {col.type}; expected "
                             f"{'a number' if name == 'weight' else 'integers'}")
        columns[name] = col.to_numpy()
    if "phase" in columns and not np.isin(columns["phase"], (PREFILL, DECODE)).all():
        bad = int(np.flatnonzero(~np.isin(columns["phase"], (PREFILL, DECODE)))[0])
        raise InputError(f"{path} row {bad + 1}: phase {columns['phase'][bad]} is neither {PREFILL} nor {DECODE}")
    return columns, lambda i: f"{path} row {i + 1}"


def _check_names(path: Path, names: tuple[str, ...], where: str) -> None:
    missing = [n for n in REQUIRED if n not in names]
    unknown = [n for n in names if n not in REQUIRED + OPTIONAL]
    if missing or unknown or len(set(names)) != len(names):
        raise InputError(f"{path} {where}: columns {','.join(names)}; expected {', '.join(REQUIRED)} and optionally "
                         f"{', '.join(OPTIONAL)}, each once")
