"""Routing rows of any engine -> the checked per-token arrays an expert trace is written from.

Every importer turns its file into flat rows (one per routed expert: token, layer, expert, and
what else the format has, with the source line of each) and hands them to :func:`group_routes`,
which does the checks all formats share and builds ``route [tokens, layers, k]``. The checks run
before anything is written, and each names the source line (or row, or array index).
"""

from __future__ import annotations

import datetime as dt
import json
import platform
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from sparsesim.errors import InputError
from sparsesim.inputs import read_text
from sparsesim.tracecolumns import column_types
from sparsesim.tracefile import TraceWriter, file_sha256
from sparsesim.traceunits import TraceUnits, expert_masks

CHUNK_TOKENS = 8192       # tokens per Parquet row group (bounds memory on long captures)


@dataclass
class Routes:
    """One imported capture: units, per-token routes and what the engine recorded besides."""

    source: Path
    format: str                        # e.g. "route_trace v1"
    model: dict                        # trace metadata "model": at least name and n_layers
    units: TraceUnits
    seq: np.ndarray                    # [T] int32
    pos: np.ndarray                    # [T] int32
    route: np.ndarray                  # [T, L, k] int16, routed expert ids by rank, -1 padding
    weight: np.ndarray | None = None   # [T, L, k] float32 router weights, NaN padding
    phase: np.ndarray | None = None    # [T] int8, PREFILL / DECODE
    batch: np.ndarray | None = None    # [T] int32, engine step
    capture: dict[str, np.ndarray] = field(default_factory=dict)   # name -> [T, L, k] per-lookup values
    capture_meta: dict = field(default_factory=dict)                # engine header, metrics, summary
    inputs: list[Path] = field(default_factory=list)                # every file read (hashed in the metadata)

    @property
    def n_tokens(self) -> int:
        return len(self.seq)


def group_routes(where: Path, locate: Callable[[int], str], seq: np.ndarray, pos: np.ndarray,
                 layer: np.ndarray, expert: np.ndarray, units: TraceUnits, top_k_from: str,
                 slot: np.ndarray | None = None, per_token: Mapping[str, np.ndarray] | None = None,
                 per_route: Mapping[str, tuple[np.ndarray, Any]] | None = None,
                 skipped: Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray] | None = None) -> dict[str, Any]:
    """Check flat routing rows and group them into per-token arrays.

    ``locate(i)`` names row i's place in the source ("FILE line 12"); ``slot`` the rank inside the
    token's top-k when the format records it (else the rows' order); ``per_token`` values that must be
    equal on all of a token's rows (phase, batch); ``per_route`` name -> (values, fill) kept per slot.
    Returns ``seq, pos, route`` and the grouped extras. ``top_k_from`` names where the top-k came from.
    ``skipped(seq, pos, layer)`` says which tokens' wholly absent layers the engine did not run (they stay
    empty rows); any other absent or short layer is an error.
    """
    n_layers = units.n_layers
    rows = len(expert)
    if rows == 0:
        raise InputError(f"{where}: no routing rows")
    count = np.asarray(units.count)
    top_k = np.asarray(units.top_k)
    layer = layer.astype(np.int64)
    expert = expert.astype(np.int64)

    at = locate
    bad = np.flatnonzero((layer < 0) | (layer >= n_layers))
    if len(bad):
        raise InputError(f"{at(bad[0])}: layer {layer[bad[0]]} outside 0..{n_layers - 1}")
    dense = np.flatnonzero(count[layer] == 0)
    if len(dense):
        raise InputError(f"{at(dense[0])}: layer {layer[dense[0]]} has no routed experts (a dense layer) "
                         f"but this row routes one")
    bad = np.flatnonzero((expert < 0) | (expert >= count[layer]))
    if len(bad):
        i = bad[0]
        raise InputError(f"{at(i)}: expert {expert[i]} is not below the expert count {count[layer[i]]} "
                         f"of layer {layer[i]}")
    key = seq.astype(np.int64) << 32 | pos.astype(np.int64)
    tokens, token = np.unique(key, return_inverse=True)
    t = len(tokens)
    order = np.lexsort((np.arange(rows), layer, token))     # stable: the file order inside a group
    group = token * n_layers + layer
    sorted_group = group[order]
    starts = np.flatnonzero(np.r_[True, sorted_group[1:] != sorted_group[:-1]])
    if slot is None:
        rank = np.empty(rows, np.int64)
        rank[order] = np.arange(rows) - np.repeat(starts, np.diff(np.r_[starts, rows]))
    else:
        rank = slot.astype(np.int64)
    bad = np.flatnonzero((rank < 0) | (rank >= top_k[layer]))
    if len(bad):
        i = bad[0]
        what = f"slot {rank[i]}" if slot is not None else f"expert number {rank[i] + 1}"
        raise InputError(f"{at(i)}: {what} of a token in layer {layer[i]}, but the top-k is {top_k[layer[i]]} "
                         f"({top_k_from})")
    width = int(top_k.max())
    cell = group * width + rank
    seen, first = np.unique(cell, return_index=True)
    if len(seen) < rows:
        dup = np.setdiff1d(np.arange(rows), first)[0]
        raise InputError(f"{at(dup)}: slot {rank[dup]} of this token and layer {layer[dup]} appears twice")
    route = np.full((t * n_layers * width,), -1, np.int64)
    route[cell] = expert
    route = route.reshape(t, n_layers, width)
    filled = (route >= 0).sum(axis=-1)
    short = np.argwhere(filled != top_k[None, :])
    if len(short) and skipped is not None:
        absent = short[filled[short[:, 0], short[:, 1]] == 0]
        excused = skipped((tokens[absent[:, 0]] >> 32), tokens[absent[:, 0]] & 0xFFFFFFFF, absent[:, 1])
        excused_set = {tuple(x) for x in absent[excused]}
        short = np.array([x for x in short if tuple(x) not in excused_set]).reshape(-1, 2)
    if len(short):
        tok, lay = short[0]
        present = np.flatnonzero(group == tok * n_layers + lay)
        seq_t, pos_t = int(tokens[tok] >> 32), int(tokens[tok] & 0xFFFFFFFF)
        if len(present):
            last = "; file truncated?" if tok == t - 1 else ""
            raise InputError(f"{at(present[0])}: token (seq {seq_t}, position {pos_t}) routes {filled[tok, lay]} "
                             f"experts in layer {lay}, but the top-k is {top_k[lay]} ({top_k_from}{last})")
        raise InputError(f"{where}: token (seq {seq_t}, position {pos_t}) has no rows for layer {lay} "
                         f"(file truncated?)")
    ordered = np.sort(route, axis=-1)
    twice = np.argwhere((ordered[..., 1:] == ordered[..., :-1]) & (ordered[..., 1:] >= 0))
    if len(twice):
        tok, lay, _ = twice[0]
        i = np.flatnonzero(group == tok * n_layers + lay)[-1]
        raise InputError(f"{at(i)}: one token routes the same expert twice in layer {lay}")
    out: dict[str, Any] = {"seq": (tokens >> 32).astype(np.int32), "pos": (tokens & 0xFFFFFFFF).astype(np.int32),
                           "route": route.astype(np.int16)}
    for name, values in (per_token or {}).items():
        value = np.zeros(t, values.dtype)
        value[token] = values
        differ = np.flatnonzero(value[token] != values)
        if len(differ):
            raise InputError(f"{at(differ[0])}: field '{name}' differs between the rows of one token")
        out[name] = value
    for name, (values, fill) in (per_route or {}).items():
        grouped = np.full(t * n_layers * width, fill, dtype=values.dtype)
        grouped[cell] = values
        out[name] = grouped.reshape(t, n_layers, width)
    return out


def output_pruning(seq: np.ndarray, pos: np.ndarray, layer: np.ndarray, batch: np.ndarray):
    """The ``skipped`` rule of :func:`group_routes` for engines that batch tokens: a token may lack a layer
    that the last token of its batch has. llama.cpp runs the last layer of a batch only for the tokens
    whose logits it outputs (normally the last prompt token); every other layer runs for every token."""
    key = (seq.astype(np.int64) << 32 | pos.astype(np.int64)).tolist()
    token_batch = dict(zip(key, batch.tolist()))
    last: dict[int, int] = {}
    for k, b in token_batch.items():
        last[b] = max(last.get(b, k), k)
    layers_of: dict[int, set] = {}
    for k, l in zip(key, layer.tolist()):
        layers_of.setdefault(k, set()).add(l)

    def skipped(seq_: np.ndarray, pos_: np.ndarray, layer_: np.ndarray) -> np.ndarray:
        keys = (seq_.astype(np.int64) << 32 | pos_.astype(np.int64)).tolist()
        return np.array([k in token_batch and l in layers_of[last[token_batch[k]]]
                         for k, l in zip(keys, layer_.tolist())], dtype=bool)
    return skipped


def write_trace(routes: Routes, out: str | Path, config: Mapping[str, Any]) -> dict:
    """Write ``routes`` as an expert trace at ``out`` (atomically); returns its metadata."""
    units = routes.units
    width = routes.route.shape[-1]
    names = ("route",) + (("route_weight",) if routes.weight is not None else ()) + \
        (("phase",) if routes.phase is not None else ()) + (("batch",) if routes.batch is not None else ())
    columns = column_types(names, width, {name: v.dtype for name, v in routes.capture.items()})
    meta = {
        "model": routes.model,
        "units": units.to_meta(),
        "source": {"format": routes.format,
                   "files": [{"name": p.name, "sha256": file_sha256(p), "bytes": p.stat().st_size}
                             for p in routes.inputs]},
        "capture": routes.capture_meta,
        "tools": _tools(),
        "config": {**config, "argv": sys.argv},
        "created_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    per_token = {"phase": routes.phase, "batch": routes.batch}
    per_route = {"route": routes.route, "route_weight": routes.weight,
                 **{f"capture:{name}": v for name, v in routes.capture.items()}}
    with TraceWriter(out, meta, columns=columns) as writer:
        for start in range(0, routes.n_tokens, CHUNK_TOKENS):
            part = slice(start, start + CHUNK_TOKENS)
            values = {name: (per_token.get(name) if name in per_token else per_route[name])[part]
                      for name in columns}
            route = routes.route[part].astype(np.int64)
            writer.write(routes.seq[part], routes.pos[part], np.full(len(route), -1, np.int32),
                         expert_masks(units, route), columns=values)
        meta = writer.meta
    return meta


def _tools() -> dict:
    import pyarrow

    from sparsesim import __version__
    return {"sparsesim": __version__, "numpy": np.__version__, "pyarrow": pyarrow.__version__,
            "python": platform.python_version()}


# --- the shape file: what the routing arrays of vLLM / SGLang / llama.cpp / generic CSVs do not say ---

SHAPE_KEYS = {
    "model": "model name", "architecture": "architecture name",
    "n_experts": "routed experts per MoE layer (an integer, or a list per MoE layer)",
    "expert_bytes": "bytes of one routed expert as stored (an integer, or a list per MoE layer)",
    "top_k": "experts routed per token (an integer, or a list per MoE layer); checked against the data",
    "n_layers": "decoder layers of the model (default: the highest MoE layer + 1)",
    "moe_layers": "model layer index of each MoE layer, in order (default 0, 1, ...)",
    "prompt_tokens": "the first this many tokens of each sequence are prefill, the rest decode",
    "shared_experts": "always-active (shared) experts per MoE layer (default 0)",
    "shared_expert_bytes": "bytes of one shared expert",
    "resident_bytes": "bytes of each layer's other weights, read every token (a list per model layer)",
}


@dataclass(frozen=True)
class Shape:
    """A shape file (JSON): the sizes a bare routing array does not carry (docs/moe.md)."""

    path: Path | None
    doc: dict

    @classmethod
    def load(cls, path: Path | None) -> "Shape":
        if path is None:
            return cls(None, {})
        try:
            doc = json.loads(read_text(path, f"--shape {path}"))
        except (ValueError, RecursionError) as e:
            raise InputError(f"--shape {path}: not JSON ({e})") from None
        if not isinstance(doc, dict):
            raise InputError(f"--shape {path}: must be a JSON object with keys {', '.join(SHAPE_KEYS)}")
        unknown = sorted(set(doc) - set(SHAPE_KEYS))
        if unknown:
            raise InputError(f"--shape {path}: unknown key '{unknown[0]}' (known: {', '.join(SHAPE_KEYS)})")
        return cls(path, doc)

    def where(self, key: str) -> str:
        return f"--shape {self.path} field '{key}'" if self.path else f"shape field '{key}' (give --shape FILE)"

    def integer(self, key: str, default: int | None = None, minimum: int = 0) -> int | None:
        value = self.doc.get(key, default)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < minimum):
            raise InputError(f"{self.where(key)}: must be an integer >= {minimum}, got {value!r}")
        return value

    def per_layer(self, key: str, n: int, required: bool, minimum: int = 0) -> list[int] | None:
        """An integer or a list of ``n`` integers (one per MoE layer); None when absent and optional."""
        value = self.doc.get(key)
        if value is None:
            if required:
                raise InputError(f"{self.where(key)} is required: {SHAPE_KEYS[key]}")
            return None
        values = value if isinstance(value, list) else [value] * n
        if len(values) != n or not all(isinstance(v, int) and not isinstance(v, bool) and v >= minimum
                                       for v in values):
            raise InputError(f"{self.where(key)}: must be an integer >= {minimum} or a list of {n} of them "
                             f"(one per MoE layer), got {value!r}")
        return values

    def moe_layers(self, n_moe: int, observed: list[int] | None = None) -> list[int]:
        """Model layer index of each MoE layer: the shape file's, else ``observed`` (formats whose rows
        name model layers), else 0..n_moe-1; given both, they must agree."""
        layers = self.doc.get("moe_layers", observed if observed is not None else list(range(n_moe)))
        if (not isinstance(layers, list) or len(layers) != n_moe
                or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in layers)
                or sorted(set(layers)) != layers):
            raise InputError(f"{self.where('moe_layers')}: must list {n_moe} increasing layer indices, got {layers!r}")
        if observed is not None and layers != observed:
            raise InputError(f"{self.where('moe_layers')}: {layers} disagrees with the layers the rows route in "
                             f"({observed})")
        return layers

    def units(self, moe_layers: list[int], top_k: list[int], n_layers: int | None = None) -> tuple[TraceUnits, int]:
        """The expert units over all model layers (dense ones with none) and the model's layer count."""
        n_moe = len(moe_layers)
        n_layers = self.integer("n_layers", n_layers if n_layers is not None else moe_layers[-1] + 1, minimum=1)
        if moe_layers[-1] >= n_layers:
            raise InputError(f"{self.where('n_layers')}: {n_layers} layers, but MoE layer {moe_layers[-1]} is routed")
        given_k = self.per_layer("top_k", n_moe, required=False, minimum=1)
        if given_k is not None and given_k != top_k:
            layer = next(i for i, (a, b) in enumerate(zip(given_k, top_k)) if a != b)
            raise InputError(f"{self.where('top_k')}: says {given_k[layer]} for MoE layer {moe_layers[layer]}, but "
                             f"the data routes {top_k[layer]} experts per token there")
        experts = self.per_layer("n_experts", n_moe, required=True, minimum=1)
        sizes = self.per_layer("expert_bytes", n_moe, required=True, minimum=1)
        shared = self.per_layer("shared_experts", n_moe, required=False) or [0] * n_moe
        shared_bytes = self.per_layer("shared_expert_bytes", n_moe, required=any(shared), minimum=1)
        resident = self.doc.get("resident_bytes")
        if resident is not None and (not isinstance(resident, list) or len(resident) != n_layers):
            raise InputError(f"{self.where('resident_bytes')}: must list {n_layers} sizes (one per model layer)")
        full = {"count": [0] * n_layers, "top_k": [0] * n_layers, "shared": [0] * n_layers}
        unit_bytes: list[int | None] = [None] * n_layers
        shared_full: list[int | None] = [None] * n_layers
        for i, layer in enumerate(moe_layers):
            full["count"][layer], full["top_k"][layer], full["shared"][layer] = experts[i], top_k[i], shared[i]
            unit_bytes[layer] = sizes[i]
            shared_full[layer] = shared_bytes[i] if shared_bytes else None
        bad = next((i for i, (k, c) in enumerate(zip(top_k, experts)) if k > c), None)
        if bad is not None:
            raise InputError(f"{self.where('n_experts')}: MoE layer {moe_layers[bad]} has {experts[bad]} experts, "
                             f"fewer than the {top_k[bad]} it routes per token")
        units = TraceUnits.experts(**full, unit_bytes=unit_bytes, shared_bytes=shared_full, resident_bytes=resident)
        TraceUnits.from_meta({"model": {"n_layers": n_layers}, "units": units.to_meta()},
                             str(self.path or "shape"))   # the same validation the reader applies
        return units, n_layers

    def model(self, n_layers: int, default_name: str) -> dict:
        out = {"name": str(self.doc.get("model", default_name)), "n_layers": n_layers}
        if "architecture" in self.doc:
            out["architecture"] = str(self.doc["architecture"])
        return out
