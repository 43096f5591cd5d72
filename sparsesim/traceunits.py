"""The unit a trace's masks count: an FFN neuron or a mixture-of-experts expert (``docs/trace-format.md``).

A trace's metadata may hold a ``units`` object; without one the unit is the FFN neuron and
layer ``l`` has ``model.d_ff[l]`` of them (every format-1 trace). An expert trace says so:

.. code-block:: json

    "units": {"kind": "expert",
              "count": [128, ...],          # routed experts per layer: mask bits 0..count-1; 0 = dense layer
              "top_k": [6, ...],            # routed experts per token (0 on a dense layer)
              "shared": [0, ...],           # always-active units: mask bits count..count+shared-1
              "unit_bytes": [3059712, ...], # one routed expert as stored (null: unit_params x precision)
              "unit_params": [...], "shared_bytes": [...], "shared_params": [...],
              "resident_bytes": [11953152, ...]}   # other weights the layer reads every token

:class:`TraceUnits` is the one reader of that object: per-layer unit counts, unit sizes, the
always-active units, the dense layers and the token cycle. The simulator asks it, never the JSON.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from sparsesim.errors import InputError

NEURON, EXPERT = "neuron", "expert"
KINDS = (NEURON, EXPERT)
MAX_UNITS = 1 << 20   # per layer; far above any published model (guards against corrupt metadata)
MAX_BYTES = 1e15
# Per-layer lists an expert trace may give (absent or null: unknown); the first three are counts.
COUNT_KEYS = ("count", "top_k", "shared")
SIZE_KEYS = ("unit_bytes", "unit_params", "shared_bytes", "shared_params", "resident_bytes")


@dataclass(frozen=True)
class TraceUnits:
    """What one mask bit of each layer stands for, and how big it is."""

    kind: str                                  # "neuron" or "expert"
    count: tuple[int, ...]                     # routed units per layer (mask bits 0..count-1)
    top_k: tuple[int, ...] | None              # experts: routed units per token and layer
    shared: tuple[int, ...]                    # always-active units per layer, bits after the routed ones
    unit_params: tuple[float | None, ...]      # parameters of one routed unit (None: unknown)
    unit_bytes: tuple[float | None, ...]       # stored bytes of one routed unit (None: params x precision)
    shared_params: tuple[float | None, ...]
    shared_bytes: tuple[float | None, ...]
    resident_bytes: tuple[float | None, ...]   # other weights each layer reads every token (None: unknown)

    @property
    def n_layers(self) -> int:
        return len(self.count)

    def width(self, layer: int) -> int:
        """Mask bits the layer uses: its routed units, then its always-active ones."""
        return self.count[layer] + self.shared[layer]

    @property
    def widths(self) -> np.ndarray:
        return np.asarray(self.count, np.int64) + np.asarray(self.shared, np.int64)

    @property
    def mask_bytes(self) -> int:
        """Bytes of one packed mask row: the widest layer's bits, rounded up."""
        return (int(self.widths.max()) + 7) // 8

    @property
    def dense_layers(self) -> tuple[int, ...]:
        """Layers with no routed units (an expert trace's dense FFN layers; none for neurons)."""
        return tuple(i for i, c in enumerate(self.count) if c == 0)

    def always_active(self, layer: int) -> np.ndarray:
        """Unit ids of the layer's always-active units (shared experts, a dense layer's FFN)."""
        return np.arange(self.count[layer], self.width(layer), dtype=np.int64)

    def routed_unit_bytes(self, layer: int, bytes_per_weight: float | None = None) -> float:
        """Bytes of one routed unit of ``layer``: as recorded, else its parameters x ``bytes_per_weight``."""
        return _size(self.unit_bytes[layer], self.unit_params[layer], bytes_per_weight, "unit", layer)

    def shared_unit_bytes(self, layer: int, bytes_per_weight: float | None = None) -> float:
        return _size(self.shared_bytes[layer], self.shared_params[layer], bytes_per_weight, "shared", layer)

    def cycle_bytes(self, bytes_per_weight: float | None = None) -> float:
        """One token's routed units over all layers (sum of top_k x unit bytes): the token cycle.

        Layers run in the same order every token, so a global LRU cache that cannot hold one cycle
        evicts every unit before the next token asks for it again (sequential flooding: zero hits).
        """
        k = self.top_k if self.top_k is not None else self.count
        return float(sum(k[l] * self.routed_unit_bytes(l, bytes_per_weight) for l in range(self.n_layers) if k[l]))

    def flooding_bytes(self, bytes_per_weight: float | None = None) -> float:
        """The largest cache below which a global LRU cache hits nothing at all: the token cycle less all
        but one routed unit of the layer where those are largest. Between it and the cycle, at most a few
        units of each layer's previous step survive (``docs/moe.md``, "The cliff")."""
        k = self.top_k if self.top_k is not None else self.count
        spare = max(((k[l] - 1) * self.routed_unit_bytes(l, bytes_per_weight) for l in range(self.n_layers) if k[l]),
                    default=0.0)
        return self.cycle_bytes(bytes_per_weight) - spare

    def to_meta(self) -> dict:
        """The ``units`` metadata object (lists; null for unknown sizes)."""
        if self.kind == NEURON:
            return {"kind": NEURON}
        out: dict[str, Any] = {"kind": self.kind, "count": list(self.count), "top_k": list(self.top_k or ()),
                               "shared": list(self.shared)}
        for key in SIZE_KEYS:
            values = getattr(self, key)
            if any(v is not None for v in values):
                out[key] = [_plain(v) for v in values]
        return out

    @classmethod
    def experts(cls, count, top_k, shared=None, **sizes) -> "TraceUnits":
        """An expert unit description from per-layer lists (importers and the tracer build it this way)."""
        n = len(count)
        shared = tuple(shared) if shared is not None else (0,) * n
        filled = {key: tuple(sizes.get(key) or (None,) * n) for key in SIZE_KEYS}
        return cls(kind=EXPERT, count=tuple(int(c) for c in count), top_k=tuple(int(k) for k in top_k),
                   shared=tuple(int(s) for s in shared), **filled)

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any], where: str = "trace") -> "TraceUnits":
        """Validate and read ``meta["units"]`` (one-line InputError naming ``where`` and the field)."""
        model = meta.get("model") if isinstance(meta.get("model"), Mapping) else {}
        units = meta.get("units")
        if units is None or (isinstance(units, Mapping) and units.get("kind") == NEURON and len(units) == 1):
            return _neurons(model, where)
        if not isinstance(units, Mapping):
            raise InputError(f"{where}: metadata field 'units' must be an object, got {type(units).__name__}")
        kind = units.get("kind")
        if kind not in KINDS:
            raise InputError(f"{where}: metadata field 'units.kind' must be one of {', '.join(KINDS)}, got {kind!r}")
        if kind == NEURON:
            extra = sorted(set(units) - {"kind"})
            raise InputError(f"{where}: metadata field 'units.{extra[0]}': a neuron trace takes its unit counts "
                             f"from model.d_ff and its sizes from the scenario; give only units.kind")
        unknown = sorted(set(units) - {"kind", *COUNT_KEYS, *SIZE_KEYS})
        if unknown:
            raise InputError(f"{where}: metadata field 'units.{unknown[0]}' is not a units field "
                             f"(known: kind, {', '.join(COUNT_KEYS + SIZE_KEYS)})")
        n_layers = model.get("n_layers")
        counts = {key: _int_list(units, key, n_layers, where, required=key != "shared") for key in COUNT_KEYS}
        count, top_k = counts["count"], counts["top_k"]
        shared = counts["shared"] or (0,) * len(count)
        for layer, (c, k, s) in enumerate(zip(count, top_k, shared)):
            if c > MAX_UNITS or s > MAX_UNITS:
                raise InputError(f"{where}: metadata field 'units.count[{layer}]' or 'units.shared[{layer}]' is above "
                                 f"{MAX_UNITS}")
            if not (0 < k <= c if c else k == 0):
                raise InputError(f"{where}: metadata field 'units.top_k[{layer}]' = {k} must be in 1..count[{layer}] "
                                 f"= {c} (0 on a dense layer)")
        if max(c + s for c, s in zip(count, shared)) == 0:
            raise InputError(f"{where}: metadata field 'units.count': no layer has any unit")
        sizes = {key: _size_list(units, key, len(count), where) for key in SIZE_KEYS}
        return cls(kind=EXPERT, count=count, top_k=top_k, shared=tuple(shared), **sizes)


def _neurons(model: Mapping[str, Any], where: str) -> TraceUnits:
    """Neuron units: ``model.d_ff`` of them per layer, each owning one row of every FFN matrix."""
    d_ff = model.get("d_ff")
    if not isinstance(d_ff, list) or not all(isinstance(d, int) and not isinstance(d, bool) for d in d_ff):
        raise InputError(f"{where}: metadata field 'model.d_ff' must list one integer per layer")
    n = len(d_ff)
    d_model = model.get("d_model")
    params = (3 if model.get("glu") else 2) * d_model if isinstance(d_model, int) else None
    none = (None,) * n
    return TraceUnits(kind=NEURON, count=tuple(d_ff), top_k=None, shared=(0,) * n, unit_params=(params,) * n,
                      unit_bytes=none, shared_params=none, shared_bytes=none, resident_bytes=none)


def _int_list(units: Mapping, key: str, n_layers: Any, where: str, required: bool) -> tuple[int, ...] | None:
    values = units.get(key)
    if values is None and not required:
        return None
    if (not isinstance(values, list) or len(values) != n_layers
            or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values)):
        raise InputError(f"{where}: metadata field 'units.{key}' must list {n_layers} integers >= 0 "
                         f"(one per layer of model.n_layers)")
    return tuple(values)


def _size_list(units: Mapping, key: str, n: int, where: str) -> tuple[float | None, ...]:
    values = units.get(key)
    if values is None:
        return (None,) * n
    if not isinstance(values, list) or len(values) != n:
        raise InputError(f"{where}: metadata field 'units.{key}' must list {n} sizes (one per layer; null: unknown)")
    for i, v in enumerate(values):
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v < MAX_BYTES
                              or not math.isfinite(v)):
            raise InputError(f"{where}: metadata field 'units.{key}[{i}]' must be a size >= 0 or null, got {v!r}")
    return tuple(values)


def _size(recorded: float | None, params: float | None, bytes_per_weight: float | None, what: str,
          layer: int) -> float:
    if recorded is not None:
        return float(recorded)
    if params is not None and bytes_per_weight is not None:
        return float(params) * bytes_per_weight
    raise InputError(f"units: layer {layer} records no {what}_bytes" +
                     ("" if params is None else " and no precision was given to size its parameters"))


def _plain(v: float | None) -> float | int | None:
    return int(v) if isinstance(v, float) and v.is_integer() else v


def expert_masks(units: TraceUnits, route: np.ndarray) -> np.ndarray:
    """Packed masks uint8 [T, L, n_bytes] of routed ids ``route`` [T, L, k] (-1: none) plus the
    always-active units (the mask an expert trace stores for those routes)."""
    t, n_layers, _ = route.shape
    bits = np.zeros((t, n_layers, units.mask_bytes * 8), dtype=bool)
    tok, layer, slot = np.nonzero(route >= 0)
    bits[tok, layer, route[tok, layer, slot]] = True
    ran = skipped_rows(units, route) == 0
    for layer in range(n_layers):
        bits[ran[:, layer], layer, units.count[layer]:units.width(layer)] = True
    return np.packbits(bits, axis=-1, bitorder="little")


def skipped_rows(units: TraceUnits, route: np.ndarray) -> np.ndarray:
    """uint8 [T, L]: 1 where a routed layer routed nothing for the token, i.e. the engine did not run it
    (llama.cpp runs the last layer of a prefill batch only for the tokens whose logits it outputs)."""
    return ((route < 0).all(axis=-1) & (np.asarray(units.count) > 0)[None, :]).astype(np.uint8)


def check_expert_rows(p: Path, units: TraceUnits, masks: np.ndarray, active: np.ndarray,
                      route: np.ndarray | None) -> None:
    """An expert trace's rows against its units: top-k + shared units per row (or none: a layer the engine
    skipped for that token), the always-active units set, no bit past a layer's width, the mask equal to
    the ``route`` column."""
    expected = np.asarray(units.top_k) + np.asarray(units.shared)
    skippable = np.asarray(units.count) > 0
    bad = np.argwhere((active != expected) & ~((active == 0) & skippable))
    if len(bad):
        t, layer = bad[0]
        raise InputError(f"{p}: token row {t} layer {layer} has {active[t, layer]} active units; units.top_k + "
                         f"units.shared = {expected[layer]} (or 0 where the layer did not run)")
    width = units.mask_bytes * 8
    allowed = np.zeros((units.n_layers, width), dtype=bool)
    always = np.zeros_like(allowed)
    for layer in range(units.n_layers):
        allowed[layer, :units.width(layer)] = True
        always[layer, units.always_active(layer)] = True
    packed_allowed = np.packbits(allowed, axis=-1, bitorder="little")
    packed_always = np.packbits(always, axis=-1, bitorder="little")
    outside = np.argwhere((masks & ~packed_allowed).any(axis=-1))
    if len(outside):
        t, layer = outside[0]
        raise InputError(f"{p}: token row {t} layer {layer} sets a unit >= the layer's {units.width(layer)} units")
    missing = np.argwhere(((masks & packed_always) != packed_always).any(axis=-1) & (active > 0))
    if len(missing):
        t, layer = missing[0]
        raise InputError(f"{p}: token row {t} layer {layer} lacks an always-active (shared) unit")
    if route is not None:
        count = np.asarray(units.count)[None, :, None]
        if np.any((route < -1) | (route >= np.maximum(count, 1))):
            t, layer, _ = np.argwhere((route < -1) | (route >= np.maximum(count, 1)))[0]
            raise InputError(f"{p}: column 'route': token row {t} layer {layer} names unit ids outside "
                             f"0..{units.count[layer] - 1}")
        differ = np.argwhere((expert_masks(units, route.astype(np.int64)) != masks).any(axis=-1))
        if len(differ):
            t, layer = differ[0]
            raise InputError(f"{p}: column 'route' disagrees with 'mask' at token row {t} layer {layer}")
