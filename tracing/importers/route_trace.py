"""``route_trace v1``: the routing CSV of BigMoeOnEdge's phone engine (the captures in shared/data/moe-routes).

Format (docs/moe.md): ``#`` header lines — ``# route_trace v1``, ``# model=PATH arch=A n_layer=L
n_expert=E n_expert_used=K`` and one ``# layer=l expert_bytes=B dense_bytes=D`` per MoE layer — then
a CSV header and one row per routed expert::

    turn,phase,step,layer,slot,expert,weight,residency,expert_bytes

``phase`` 0 prefill / 1 decode, ``slot`` the rank in the top-k, ``residency`` 1 when the expert was in
the engine's cache, ``expert_bytes`` the bytes read for it (0 on a hit or a repeat inside a batch).
The engine runs a batch (all prompt tokens, or one decoded token) layer by layer, so rows come layer-
major within a batch: a batch ends where the layer index goes down. The sibling ``NAME.metrics``
(per decode step: wall/io/compute/stall/mgmt ms, bytes read, cumulative hit %, faults, CPU ms, then
a ``# summary`` line) is kept in the trace metadata for validation.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from sparsesim.errors import InputError
from sparsesim.tracecolumns import DECODE, PREFILL
from sparsesim.tracefile import file_sha256
from sparsesim.tracing.importers.routes import Routes, group_routes, output_pruning
from sparsesim.tracing.importers.table import ends_with_newline, parse_numbers, read_lines
from sparsesim.traceunits import TraceUnits

NAME = "route_trace"
MAGIC = "# route_trace v1"
COLUMNS = ("turn", "phase", "step", "layer", "slot", "expert", "weight", "residency", "expert_bytes")
MODEL_LINE = re.compile(r"#\s*model=(\S*)\s+(.*)$")
LAYER_LINE = re.compile(r"#\s*layer=(\d+)\s+expert_bytes=(\d+)\s+dense_bytes=(\d+)\s*$")
MODEL_FIELDS = ("arch", "n_layer", "n_expert", "n_expert_used")
METRICS_SUFFIX = ".metrics"


def detect(head: str) -> bool:
    return head.startswith(MAGIC)


def read(path: Path, metrics: Path | None = None) -> Routes:
    """Parse and check a route_trace v1 file (and its metrics, by default ``NAME.metrics`` beside it)."""
    lines = read_lines(path)
    if not lines or lines[0].strip() != MAGIC:
        raise InputError(f"{path} line 1: expected '{MAGIC}'")
    header, layers, first_data = _header(path, lines)
    n_layers, n_expert, k = header["n_layer"], header["n_expert"], header["n_expert_used"]
    if lines[first_data].replace(" ", "") != ",".join(COLUMNS):
        raise InputError(f"{path} line {first_data + 1}: expected the column header {','.join(COLUMNS)}")
    body = [(i + 1, text) for i, text in enumerate(lines[first_data + 1:], start=first_data + 1) if text.strip()]
    if body and not ends_with_newline(path):
        raise InputError(f"{path} line {body[-1][0]}: the last line has no line end (file truncated?)")
    numbers = np.array([n for n, _ in body], np.int64)
    col = parse_numbers(path, [text for _, text in body], list(numbers), COLUMNS,
                        integers=tuple(c for c in COLUMNS if c != "weight"))
    layer = col["layer"].astype(np.int64)
    _check_values(path, numbers, col, n_layers, layers)
    units = TraceUnits.experts(
        count=[n_expert if l in layers else 0 for l in range(n_layers)],
        top_k=[k if l in layers else 0 for l in range(n_layers)],
        unit_bytes=[layers[l][0] if l in layers else None for l in range(n_layers)],
        resident_bytes=[layers[l][1] if l in layers else None for l in range(n_layers)])
    batch = _batches(col["turn"], layer)
    grouped = group_routes(
        path, lambda i: f"{path} line {numbers[i]}", col["turn"], col["step"], layer, col["expert"], units,
        f"the header's n_expert_used={k}", slot=col["slot"],
        per_token={"phase": col["phase"].astype(np.int8), "batch": batch},
        per_route={"weight": (col["weight"].astype(np.float32), np.float32(np.nan)),
                   "resident": (col["residency"].astype(np.int8), np.int8(-1)),
                   "read_bytes": (col["expert_bytes"].astype(np.int64), np.int64(-1))},
        skipped=output_pruning(col["turn"], col["step"], layer, batch))
    _check_steps(path, grouped["seq"], grouped["pos"], grouped["batch"])
    inputs = [path]
    capture = {"engine": "BigMoeOnEdge", "header": {"model": header["model"], **{f: header[f] for f in MODEL_FIELDS}},
               "columns": {"resident": "capture:resident (1: the expert was in the engine's cache, 0: not)",
                           "read_bytes": "capture:read_bytes (bytes the engine read for the expert; 0 on a hit "
                                         "or a repeat inside one batch)"}}
    metrics = metrics if metrics is not None else _sibling_metrics(path)
    if metrics is not None:
        capture["metrics"] = read_metrics(metrics, int((grouped["phase"] == DECODE).sum()))
        inputs.append(metrics)
    model = {"name": Path(header["model"]).name or path.name, "architecture": header["arch"], "n_layers": n_layers}
    return Routes(source=path, format="route_trace v1", model=model, units=units, seq=grouped["seq"],
                  pos=grouped["pos"], route=grouped["route"], weight=grouped["weight"], phase=grouped["phase"],
                  batch=grouped["batch"], capture={"resident": grouped["resident"],
                                                   "read_bytes": grouped["read_bytes"]},
                  capture_meta=capture, inputs=inputs)


def _header(path: Path, lines: list[str]) -> tuple[dict, dict[int, tuple[int, int]], int]:
    """The model line, the per-layer sizes {layer: (expert_bytes, dense_bytes)}, and the column header's index."""
    header: dict = {}
    layers: dict[int, tuple[int, int]] = {}
    i = 1
    while i < len(lines) and lines[i].startswith("#"):
        text = lines[i].strip()
        if text.startswith("# model=") or text.startswith("#model="):
            m = MODEL_LINE.match(text)
            if not m:
                raise InputError(f"{path} line {i + 1}: expected '# model=PATH arch=A n_layer=L n_expert=E "
                                 f"n_expert_used=K'")
            fields = dict(item.split("=", 1) for item in m.group(2).split() if "=" in item)
            missing = [f for f in MODEL_FIELDS if f not in fields]
            if missing:
                raise InputError(f"{path} line {i + 1}: model line lacks {', '.join(missing)}")
            header["model"], header["arch"] = m.group(1), fields["arch"]
            for f in MODEL_FIELDS[1:]:
                if not fields[f].isdigit() or int(fields[f]) < 1:
                    raise InputError(f"{path} line {i + 1}: {f}={fields[f]!r} must be a positive integer")
                header[f] = int(fields[f])
        elif text.startswith("# layer=") or text.startswith("#layer="):
            m = LAYER_LINE.match(text)
            if not m:
                raise InputError(f"{path} line {i + 1}: expected '# layer=L expert_bytes=B dense_bytes=D'")
            layer = int(m.group(1))
            if layer in layers:
                raise InputError(f"{path} line {i + 1}: a second header line for layer {layer}")
            if int(m.group(2)) < 1:
                raise InputError(f"{path} line {i + 1}: expert_bytes must be positive")
            layers[layer] = (int(m.group(2)), int(m.group(3)))
        i += 1
    if "model" not in header:
        raise InputError(f"{path}: no '# model=... arch=... n_layer=... n_expert=... n_expert_used=...' header line")
    if i == len(lines):
        raise InputError(f"{path}: no column header and no rows after the header (file truncated?)")
    outside = [l for l in layers if l >= header["n_layer"]]
    if outside:
        raise InputError(f"{path}: header line for layer {outside[0]}, but n_layer={header['n_layer']}")
    if not layers:
        raise InputError(f"{path}: no '# layer=L expert_bytes=B dense_bytes=D' header lines")
    if header["n_expert_used"] > header["n_expert"]:
        raise InputError(f"{path}: n_expert_used={header['n_expert_used']} exceeds n_expert={header['n_expert']}")
    return header, layers, i


def _check_values(path: Path, numbers: np.ndarray, col: dict, n_layers: int, layers: dict) -> None:
    """Row fields the format defines: phase 0/1, layer with a header line, residency 0/1, bytes 0 or the layer's."""
    def first(bad: np.ndarray) -> int:
        return int(np.flatnonzero(bad)[0])

    layer = col["layer"].astype(np.int64)
    for name in ("turn", "step", "slot"):
        bad = col[name] < 0
        if bad.any():
            raise InputError(f"{path} line {numbers[first(bad)]}: field '{name}' must be >= 0")
    bad = ~np.isin(col["phase"], (PREFILL, DECODE))
    if bad.any():
        i = first(bad)
        raise InputError(f"{path} line {numbers[i]}: phase {col['phase'][i]:g} is neither {PREFILL} (prefill) nor "
                         f"{DECODE} (decode)")
    bad = (layer < 0) | (layer >= n_layers)
    if bad.any():
        i = first(bad)
        raise InputError(f"{path} line {numbers[i]}: layer {layer[i]} outside 0..{n_layers - 1} (n_layer={n_layers})")
    has_header = np.zeros(n_layers, bool)
    has_header[list(layers)] = True
    bad = ~has_header[layer]
    if bad.any():
        i = first(bad)
        raise InputError(f"{path} line {numbers[i]}: layer {layer[i]} has no '# layer={layer[i]} expert_bytes=... "
                         f"dense_bytes=...' header line")
    unused = sorted(set(layers) - set(np.unique(layer).tolist()))
    if unused:
        raise InputError(f"{path}: layer {unused[0]} has a header line but no rows (file truncated?)")
    bad = ~np.isin(col["residency"], (0, 1))
    if bad.any():
        i = first(bad)
        raise InputError(f"{path} line {numbers[i]}: residency {col['residency'][i]:g} is neither 0 nor 1")
    size = np.zeros(n_layers)
    for l, (expert_bytes, _) in layers.items():
        size[l] = expert_bytes
    bad = (col["expert_bytes"] != 0) & (col["expert_bytes"] != size[layer])
    if bad.any():
        i = first(bad)
        raise InputError(f"{path} line {numbers[i]}: expert_bytes {col['expert_bytes'][i]:.0f} is neither 0 nor "
                         f"the layer's expert_bytes {size[layer[i]]:.0f} from its header line")
    bad = (col["residency"] == 1) & (col["expert_bytes"] != 0)
    if bad.any():
        raise InputError(f"{path} line {numbers[first(bad)]}: a resident expert (residency 1) read expert_bytes > 0")


def _batches(turn: np.ndarray, layer: np.ndarray) -> np.ndarray:
    """Engine step of each row: a new one starts where the layer index goes down or the turn changes."""
    new = np.r_[True, (layer[1:] < layer[:-1]) | (turn[1:] != turn[:-1])]
    return (np.cumsum(new) - 1).astype(np.int32)


def _check_steps(path: Path, seq: np.ndarray, pos: np.ndarray, batch: np.ndarray) -> None:
    """Tokens of one sequence in increasing position, batches in token order (no interleaving)."""
    if np.any(np.diff(batch) < 0):
        i = int(np.flatnonzero(np.diff(batch) < 0)[0]) + 1
        raise InputError(f"{path}: turn {seq[i]} step {pos[i]} was processed before an earlier step "
                         f"(rows out of order)")


def _sibling_metrics(path: Path) -> Path | None:
    name = path.name
    stem = name[:-len(".route.csv")] if name.endswith(".route.csv") else path.stem
    candidate = path.with_name(stem + METRICS_SUFFIX)
    return candidate if candidate.is_file() else None


def read_metrics(path: Path, decode_tokens: int) -> dict:
    """The engine's per-decode-step measurements and its ``# summary`` line, checked against the trace."""
    lines = read_lines(path)
    if not lines:
        raise InputError(f"{path}: empty metrics file")
    columns = tuple(c.strip() for c in lines[0].split(","))
    if not columns or columns[0] != "step":
        raise InputError(f"{path} line 1: expected a CSV header starting with 'step'")
    body = [(i + 1, t) for i, t in enumerate(lines[1:], start=1) if t.strip() and not t.startswith("#")]
    values = parse_numbers(path, [t for _, t in body], [n for n, _ in body], columns, integers=("step",))
    summary_lines = [(i + 1, t) for i, t in enumerate(lines) if t.startswith("# summary")]
    if len(summary_lines) != 1:
        raise InputError(f"{path}: expected one '# summary' line, found {len(summary_lines)} (file truncated?)")
    number, text = summary_lines[0]
    summary = {}
    for item in text[len("# summary"):].split():
        key, eq, value = item.partition("=")
        try:
            summary[key] = float(value)
        except ValueError:
            raise InputError(f"{path} line {number}: summary item {item!r} is not key=number") from None
    steps = len(body)
    if steps != decode_tokens:
        raise InputError(f"{path}: {steps} decode steps, but the route trace has {decode_tokens} decode tokens")
    if "tokens" in summary and summary["tokens"] != steps:
        raise InputError(f"{path} line {number}: summary tokens={summary['tokens']:g}, but {steps} step rows")
    return {"file": path.name, "sha256": file_sha256(path), "columns": list(columns),
            "rows": [[float(values[c][i]) for c in columns] for i in range(steps)], "summary": summary}
