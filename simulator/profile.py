"""Hardware profiles: what a device can compute, hold and read, with a source for every number.

A profile is a YAML file (the presets live in the ``hw_profiles`` package; reference:
``docs/hardware-profiles.md``). Every number is a leaf that says where it comes from::

    dram:
      bandwidth: {value: 400 GB/s, source: "https://... (Apple figure; V)"}
      latency:   {value: 100 ns, estimate: "no measurement collected; typical LPDDR5 load-to-use"}

Loading validates everything up front and reports the first problem as one
:class:`~sparsesim.errors.InputError` line naming the file and the dotted field. Values are
converted to base units (B, B/s, s, FLOP/s, J/B, J/FLOP) by :mod:`sparsesim.simulator.units`.

The time model's optional parts (``docs/time-model.md``) add the sections ``cpu``, ``gpu``, ``npu``
(compute units: peak rates per precision, bandwidth, dispatch overhead, kernel efficiencies),
``interconnect`` (host <-> device memory) and ``os`` (pages, faults), and the fields
``dram.shared_bandwidth`` and ``storage.multi_thread_factor``. Every field of them may be absent;
a scenario setting that needs one asks for it through :func:`require`, which names the field and
the setting in its error. Absent optional values are left out of the hash, so a profile that
gives none of them hashes as it did before they existed.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import os
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Mapping, Sequence, Union

import numpy as np
import yaml

from sparsesim.errors import InputError
from sparsesim.inputs import read_text
from sparsesim.numbers import Number
from sparsesim.simulator.units import (
    BANDWIDTH, BYTES, COUNT, ENERGY_PER_BYTE, ENERGY_PER_FLOP, FLOPS, FRACTION, TIME, format_quantity,
)

PRESET_PACKAGE = "sparsesim.hw_profiles"
# yaml.safe_load's loader, in C when PyYAML was built with libyaml (about 10x faster; sweeps load
# a profile per run).
_SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@dataclass(frozen=True)
class ComputeSpec:
    flops: float                 # sustained FLOP/s for the decode; each preset's source says which unit and utilisation
    energy_per_flop: float       # J/FLOP


@dataclass(frozen=True)
class MemorySpec:
    """DRAM, or the optional on-chip cache (SLC / L3)."""
    capacity: float              # bytes
    bandwidth: float             # B/s, sustained read
    latency: float               # s
    energy_per_byte: float       # J/B
    shared_bandwidth: float | None = None   # dram only: B/s all compute units reach streaming together


@dataclass(frozen=True)
class StorageSpec:
    kind: str                    # "nvme", "ufs", "sd", "apple-ssd", "emmc", "measured", ...
    latency: float               # s, QD1 random-read latency to first byte, per request
    peak_bandwidth: float        # B/s, large sequential reads
    queue_depth: int             # outstanding requests the device and I/O stack sustain
    energy_per_byte: float       # J/B
    read_curve: tuple[tuple[float, float], ...]  # ((request bytes, B/s), ...) at queue_depth; may be empty
    multi_thread_factor: float | None = None     # read-bandwidth factor when several cores submit reads

    def bandwidth_at(self, request_bytes: Union[float, np.ndarray]) -> Union[float, np.ndarray]:
        """Effective read bandwidth (B/s) for requests of ``request_bytes`` at full queue depth.

        With a curve: linear in log2(size) between its points, flat beyond its ends. Without one:
        the latency / queue-depth model of hw_profiles.md §4.6, ``Q·s / (latency + s / peak)``.
        Either way capped at ``peak_bandwidth``. Vectorised; a scalar in gives a float out.
        """
        sizes = np.asarray(request_bytes, dtype=float)
        if np.any(sizes <= 0):
            raise ValueError("request sizes must be > 0 bytes")
        if self.read_curve:
            points = np.asarray(self.read_curve, dtype=float)
            bandwidth = np.interp(np.log2(sizes), np.log2(points[:, 0]), points[:, 1])
        else:
            bandwidth = self.queue_depth * sizes / (self.latency + sizes / self.peak_bandwidth)
        bandwidth = np.minimum(bandwidth, self.peak_bandwidth)
        return float(bandwidth) if bandwidth.ndim == 0 else bandwidth


@dataclass(frozen=True)
class UnitSpec:
    """A compute unit (``cpu``, ``gpu``, ``npu``): what its kernels' rooflines need. Any field may
    be absent (None); :func:`require` asks for the ones a setting uses."""
    flops_fp32: float | None = None          # FLOP/s, peak at fp32
    flops_fp16: float | None = None          # FLOP/s, peak at fp16 / bf16
    ops_int8: float | None = None            # OP/s, peak of int8 (and int4, unpacked to int8) dot products
    bandwidth: float | None = None           # B/s this unit reads its weights at, alone
    capacity: float | None = None            # bytes of the unit's own memory (discrete GPU); None: shares DRAM
    dispatch: float | None = None            # s of fixed overhead per kernel call (launch, dispatch)
    dense_efficiency: float | None = None    # achieved / roofline, dense matrix-vector product
    gather_efficiency: float | None = None   # sparse row gather: the selected neurons' gate/up rows
    scatter_efficiency: float | None = None  # sparse column scatter: the selected neurons' down columns
    copy_efficiency: float | None = None     # memcpy (cache management) / bandwidth


@dataclass(frozen=True)
class InterconnectSpec:
    """The link between host DRAM and a discrete unit's memory (PCIe)."""
    bandwidth: float | None = None           # B/s, host -> device
    latency: float | None = None             # s per transfer


@dataclass(frozen=True)
class OsSpec:
    """What the operating system adds to reads through the page cache (mmap)."""
    page_size: float | None = None           # bytes
    fault_overhead: float | None = None      # s per page fault beyond the read itself
    readahead: float | None = None           # bytes a fault reads (read-around); >= page_size


UNIT_NAMES = ("cpu", "gpu", "npu")


@dataclass(frozen=True)
class HardwareProfile:
    name: str
    description: str
    compute: ComputeSpec
    dram: MemorySpec
    storage: StorageSpec
    cache: MemorySpec | None
    sources: dict[str, str]      # dotted field -> URL text, "estimate: <reason>", "override", ...
    path: str                    # the file it came from ("" when built from a mapping)
    sha256: str                  # of the hardware values only: renaming or re-citing keeps the hash
    cpu: UnitSpec | None = None
    gpu: UnitSpec | None = None
    npu: UnitSpec | None = None
    interconnect: InterconnectSpec | None = None
    os: OsSpec | None = None

    def to_dict(self) -> dict:
        """Resolved values in base units (plain floats), with name and hash, for result records."""
        return {"name": self.name, "sha256": self.sha256, **_hardware_values(self)}

    def unit(self, name: str) -> UnitSpec | None:
        """The compute unit ``name`` (one of :data:`UNIT_NAMES`), or None if the profile has none."""
        return getattr(self, name) if name in UNIT_NAMES else None


# ---------------------------------------------------------------------------------------------
# Schema


class _Kind:
    """``storage.kind``: a category name, not a number, so it needs no source."""


class _Curve:
    """``storage.read_curve``: {source|estimate, points: [[size, bandwidth], ...]}."""


_POSITIVE_BYTES = Number(minimum=0.0, inclusive=False, dim=BYTES)
_POSITIVE_BANDWIDTH = Number(minimum=0.0, inclusive=False, dim=BANDWIDTH)
_LATENCY = Number(minimum=0.0, dim=TIME)
_MEMORY = {
    "capacity": _POSITIVE_BYTES,
    "bandwidth": _POSITIVE_BANDWIDTH,
    "latency": _LATENCY,
    "energy_per_byte": Number(minimum=0.0, dim=ENERGY_PER_BYTE),
}
_POSITIVE_FLOPS = Number(minimum=0.0, inclusive=False, dim=FLOPS)
_POSITIVE_TIME = Number(minimum=0.0, inclusive=False, dim=TIME)
_EFFICIENCY = Number(minimum=0.0, inclusive=False, maximum=1.0, dim=FRACTION)   # a share of the roofline: (0, 1]
_UNIT = {
    "flops_fp32": _POSITIVE_FLOPS,
    "flops_fp16": _POSITIVE_FLOPS,
    "ops_int8": _POSITIVE_FLOPS,
    "bandwidth": _POSITIVE_BANDWIDTH,
    "capacity": _POSITIVE_BYTES,
    "dispatch": _POSITIVE_TIME,
    "dense_efficiency": _EFFICIENCY,
    "gather_efficiency": _EFFICIENCY,
    "scatter_efficiency": _EFFICIENCY,
    "copy_efficiency": _EFFICIENCY,
}
_SCHEMA: dict[str, dict[str, Union[Number, _Kind, _Curve]]] = {
    "compute": {
        "flops": _POSITIVE_FLOPS,
        "energy_per_flop": Number(minimum=0.0, dim=ENERGY_PER_FLOP),
    },
    "dram": {**_MEMORY, "shared_bandwidth": _POSITIVE_BANDWIDTH},
    "cache": _MEMORY,
    "storage": {
        "kind": _Kind(),
        "latency": _LATENCY,
        "peak_bandwidth": _POSITIVE_BANDWIDTH,
        # NVMe allows 64K; validate-io replays with this many reader threads, so an absurd depth is refused
        "queue_depth": Number(minimum=1, maximum=4096, integer=True, dim=COUNT),
        "energy_per_byte": Number(minimum=0.0, dim=ENERGY_PER_BYTE),
        "read_curve": _Curve(),
        "multi_thread_factor": _EFFICIENCY,
    },
    **{unit: _UNIT for unit in UNIT_NAMES},
    "interconnect": {"bandwidth": _POSITIVE_BANDWIDTH, "latency": _POSITIVE_TIME},
    "os": {
        "page_size": Number(minimum=0.0, inclusive=False, integer=True, dim=BYTES),
        "fault_overhead": _POSITIVE_TIME,
        "readahead": Number(minimum=0.0, inclusive=False, integer=True, dim=BYTES),
    },
}
# Sections whose every field may be absent: the time model's optional parts.
_PARTIAL_SECTIONS = (*UNIT_NAMES, "interconnect", "os")
# May be absent or null (null drops an inherited one).
_OPTIONAL = {"cache", "storage.read_curve", "dram.shared_bandwidth", "storage.multi_thread_factor",
             *_PARTIAL_SECTIONS,
             *(f"{section}.{field}" for section in _PARTIAL_SECTIONS for field in _SCHEMA[section])}
_TOP_LEVEL = ("name", "description", "extends", *_SCHEMA)
_LEAF_KEYS = ("value", "source", "estimate")
_CURVE_KEYS = ("points", "source", "estimate")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,63}")
_KIND = re.compile(r"[a-z0-9][a-z0-9._-]{0,31}")
# Every character str.splitlines() breaks on: an error message must stay one line.
_LINE_BREAKS = re.compile("[\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029]+")
_CURVE_FORMAT = "{source: <URL>, points: [[size, bandwidth], ...]} (or estimate: <reason> for source:)"

# Fields that --set can change: every number, and the storage kind.
SETTABLE_FIELDS: dict[str, Union[Number, _Kind]] = {
    f"{section}.{field}": spec
    for section, fields in _SCHEMA.items() for field, spec in fields.items()
    if not isinstance(spec, _Curve)
}


# ---------------------------------------------------------------------------------------------
# Public API


def list_profiles() -> list[str]:
    """Names of the shipped presets (the YAML files of the ``hw_profiles`` package)."""
    folder = resources.files(PRESET_PACKAGE)
    return sorted(entry.name[:-5] for entry in folder.iterdir() if entry.name.endswith(".yaml"))


def load_profile(name_or_path: str, overrides: Sequence[str] = ()) -> HardwareProfile:
    """Load a preset by name, or a YAML file by path; apply ``--set``-style ``overrides`` last.

    A preset name wins over a file of the same name in the working directory (write ``./name``).
    """
    name_or_path = os.fspath(name_or_path)
    if name_or_path in list_profiles():
        origin, path, data = _read_preset(name_or_path)
        chain: tuple[str, ...] = (name_or_path,)
    else:
        origin, path = name_or_path, Path(name_or_path)
        data = _read_yaml(path, origin, _preset_hint(name_or_path))
        chain = ()
    name, description, values, sources = _resolve(_with_base(data, origin, chain), origin)
    _apply_overrides(values, sources, overrides)
    return _assemble(name, description, values, sources, str(Path(path).resolve()))


def profile_from_dict(data: Any, origin: str) -> HardwareProfile:
    """Validate a profile mapping (as read from YAML; ``extends`` allowed). ``origin`` names it in errors."""
    name, description, values, sources = _resolve(_with_base(data, origin, ()), origin)
    return _assemble(name, description, values, sources, "")


def require(profile: HardwareProfile, field: str, needed_by: str) -> Any:
    """The value of dotted ``field``, or a one-line error naming it and the setting that needs it.

    ``needed_by`` names the setting, e.g. ``"scenario field 'hot_unit' = npu"``.
    """
    section, _, key = field.partition(".")
    if field not in SETTABLE_FIELDS:
        raise ValueError(f"no profile field {field!r}")   # a caller bug, not input
    spec = getattr(profile, section)
    value = getattr(spec, key) if spec is not None else None
    if value is None:
        raise InputError(_LINE_BREAKS.sub(" ", (
            f"profile {profile.name}: {field} is missing; {needed_by} needs it (give it in a YAML file "
            f"that extends the profile, or --set '{field}=...')")))
    return value


def format_field(field: str, value: Any) -> str:
    """A resolved value of the dotted ``field`` with its unit, e.g. ``format_field("dram.bandwidth", 4e11)``."""
    spec = SETTABLE_FIELDS.get(field)
    if isinstance(spec, Number):
        return format_quantity(value, spec.dim)
    if field == "storage.read_curve":
        return ", ".join(f"{format_quantity(size, BYTES)}: {format_quantity(bandwidth, BANDWIDTH)}"
                         for size, bandwidth in value) or "none"
    return str(value)


# ---------------------------------------------------------------------------------------------
# Reading and inheritance


def _fail(origin: str, field: str, problem: str) -> InputError:
    where = f"{origin}: {field}: " if field else f"{origin}: "
    return InputError(_LINE_BREAKS.sub(" ", where + problem))


def _show(value: Any) -> str:
    """A short one-line rendering of a user value for an error message."""
    if isinstance(value, bool) or value is None:
        text = {True: "true", False: "false", None: "null"}[value]
    elif isinstance(value, Mapping):
        text = "a mapping"
    elif isinstance(value, list):
        text = "a list"
    elif isinstance(value, str):
        text = value if value.strip() else "an empty string"
    elif isinstance(value, int) and value.bit_length() > 64:
        text = f"an integer of {value.bit_length()} bits"   # str() refuses more than 4300 digits
    else:
        text = str(value)
    text = " ".join(_LINE_BREAKS.sub(" ", text).split())
    return text if len(text) <= 60 else text[:57] + "..."


def _suggest(word: Any, known: Sequence[str]) -> str:
    close = difflib.get_close_matches(str(word), list(known), n=1)
    return f"; did you mean '{close[0]}'?" if close else f" (known: {', '.join(known)})"


def _read_preset(name: str) -> tuple[str, Any, Any]:
    origin = f"{PRESET_PACKAGE}/{name}.yaml"
    file = resources.files(PRESET_PACKAGE) / f"{name}.yaml"
    return origin, file, _read_yaml(file, origin, "")


def _preset_hint(name_or_path: str) -> str:
    looks_like_name = "/" not in name_or_path and not name_or_path.endswith((".yaml", ".yml"))
    if not looks_like_name:
        return ""
    return f" and not a preset{_suggest(name_or_path, list_profiles())}"


def _read_yaml(file: Any, origin: str, not_found_hint: str) -> Any:
    """A preset (package resource, trusted) or a user's file (through sparsesim.inputs: regular files only)."""
    if isinstance(file, Path):
        if not_found_hint and not os.path.lexists(file):
            raise _fail(origin, "", f"no such file{not_found_hint}")
        text = read_text(file, origin)
    else:
        text = file.read_text(encoding="utf-8")
    try:
        return yaml.load(text, Loader=_SAFE_LOADER)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark
        at = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise _fail(origin, "", f"not valid YAML: {at}{e.problem}") from None
    # PyYAML raises ValueError for impossible dates (2024-13-01) and recurses on deep nesting.
    except (yaml.YAMLError, ValueError, RecursionError) as e:
        raise _fail(origin, "", f"not valid YAML: {e}") from None


def _require_mapping(data: Any, origin: str) -> Mapping:
    if data is None:
        raise _fail(origin, "", "is empty, expected a profile mapping (name, compute, dram, storage)")
    if not isinstance(data, Mapping):
        raise _fail(origin, "", f"must be a mapping of profile fields, got {_show(data)}")
    return data


def _with_base(data: Any, origin: str, chain: tuple[str, ...]) -> Mapping:
    """``data`` with its ``extends:`` preset filled in underneath, field by field within sections."""
    data = _require_mapping(data, origin)
    if "extends" not in data:
        return data
    base_name = data["extends"]
    presets = list_profiles()
    if not isinstance(base_name, str) or base_name not in presets:
        raise _fail(origin, "extends", f"unknown preset {_show(base_name)}{_suggest(base_name, presets)}")
    if base_name in chain:
        raise _fail(origin, "extends", f"cycle: {' -> '.join((*chain, base_name))}")
    base_origin, _, base_data = _read_preset(base_name)
    merged = dict(_with_base(base_data, base_origin, (*chain, base_name)))
    merged.pop("extends", None)
    for key, value in data.items():
        if key == "extends":
            continue
        inherited = merged.get(key)
        if key in _SCHEMA and isinstance(value, Mapping) and isinstance(inherited, Mapping):
            merged[key] = {**inherited, **value}
        else:
            merged[key] = value
    return merged


# ---------------------------------------------------------------------------------------------
# Validation


def _check_keys(mapping: Mapping, known: Sequence[str], origin: str, prefix: str) -> None:
    for key in mapping:
        if key not in known:
            field = f"{prefix}.{_show(key)}" if prefix else _show(key)
            raise _fail(origin, field, f"unknown key{_suggest(key, known)}")


def _provenance(leaf: Mapping, origin: str, field: str) -> str:
    """The source text of a leaf: its ``source``, or ``"estimate: <reason>"``."""
    has_source, has_estimate = "source" in leaf, "estimate" in leaf
    if has_source == has_estimate:
        problem = "has both source and estimate" if has_source else "has no source"
        raise _fail(origin, field, f"{problem}; give exactly one: source: <URL> or estimate: <reason>")
    key = "source" if has_source else "estimate"
    text = leaf[key]
    if not isinstance(text, str) or not text.strip():
        raise _fail(origin, f"{field}.{key}", f"must be a non-empty string, got {_show(text)}")
    text = " ".join(text.split())
    return text if has_source else f"estimate: {text}"


def _quantity(raw: Any, spec: Number, origin: str, field: str) -> float:
    try:
        value = spec.check(raw, f"{origin}: {field}")
    except InputError as e:
        raise InputError(_LINE_BREAKS.sub(" ", str(e))) from None
    return int(value) if spec.integer else float(value)   # base units as floats: the profile's hash depends on it


def _kind(raw: Any, origin: str, field: str) -> str:
    if not isinstance(raw, str) or not _KIND.fullmatch(raw):
        raise _fail(origin, field, f"must be a short lowercase name such as nvme, ufs, sd, apple-ssd, "
                                   f"emmc or measured, got {_show(raw)}")
    return raw


def _number_leaf(raw: Any, spec: Number, origin: str, field: str) -> tuple[float, str]:
    if not isinstance(raw, Mapping):
        raise _fail(origin, field, f"must be {{value: {spec.dim.example}, source: <URL>}} or "
                                   f"{{value: ..., estimate: <reason>}}, got bare {_show(raw)}")
    _check_keys(raw, _LEAF_KEYS, origin, field)
    if "value" not in raw:
        raise _fail(origin, f"{field}.value", "missing")
    source = _provenance(raw, origin, field)
    return _quantity(raw["value"], spec, origin, field), source


def _curve_leaf(raw: Any, origin: str, field: str) -> tuple[tuple[tuple[float, float], ...], dict[str, str]]:
    if not isinstance(raw, Mapping):
        raise _fail(origin, field, f"must be {_CURVE_FORMAT}, got {_show(raw)}")
    _check_keys(raw, _CURVE_KEYS, origin, field)
    sources = {field: _provenance(raw, origin, field)}
    points = raw.get("points")
    if not isinstance(points, list) or not points:
        raise _fail(origin, f"{field}.points", "must be a non-empty list of [size, bandwidth] pairs, "
                                               "e.g. [['8 KiB', '1.25 GB/s']]; read_curve: null drops the curve")
    curve: list[tuple[float, float]] = []
    for i, point in enumerate(points):
        where = f"{field}.points[{i}]"
        if not isinstance(point, list) or len(point) not in (2, 3):
            raise _fail(origin, where, f"must be [size, bandwidth] or [size, bandwidth, {{estimate: <reason>}}], "
                                       f"got {_show(point)}")
        size = _quantity(point[0], _POSITIVE_BYTES, origin, f"{where}[0]")
        bandwidth = _quantity(point[1], _POSITIVE_BANDWIDTH, origin, f"{where}[1]")
        if len(point) == 3:
            # A point of different provenance from the rest, e.g. a placement that is an estimate.
            note = point[2]
            if not isinstance(note, Mapping):
                raise _fail(origin, f"{where}[2]", f"must be {{source: <URL>}} or {{estimate: <reason>}}, "
                                                   f"got {_show(note)}")
            _check_keys(note, ("source", "estimate"), origin, f"{where}[2]")
            sources[where] = _provenance(note, origin, f"{where}[2]")
        if curve and size <= curve[-1][0]:
            raise _fail(origin, where, f"sizes must increase from point to point: {_show(point[0])} "
                                       f"after {format_quantity(curve[-1][0], BYTES)}")
        if curve and bandwidth < curve[-1][1]:
            raise _fail(origin, where, f"bandwidth must not fall as requests grow: {_show(point[1])} "
                                       f"after {format_quantity(curve[-1][1], BANDWIDTH)}")
        curve.append((size, bandwidth))
    return tuple(curve), sources


def _text(data: Mapping, key: str, origin: str, pattern: re.Pattern | None) -> str:
    value = data[key]
    if not isinstance(value, str) or (pattern is not None and not pattern.fullmatch(value)):
        expected = "a name of letters, digits, '.', '_', '+' or '-'" if pattern else "a string"
        raise _fail(origin, key, f"must be {expected}, got {_show(value)}")
    return value


def _resolve(data: Mapping, origin: str) -> tuple[str, str, dict[str, Any], dict[str, str]]:
    """Validate a merged profile mapping into (name, description, values, sources) keyed by dotted field."""
    _check_keys(data, _TOP_LEVEL, origin, "")
    if "name" not in data:
        raise _fail(origin, "name", "missing")
    name = _text(data, "name", origin, _NAME)
    description = _text(data, "description", origin, None) if "description" in data else ""
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for section, fields in _SCHEMA.items():
        raw_section = data.get(section)
        if raw_section is None and section in _OPTIONAL:
            continue
        if raw_section is None:
            raise _fail(origin, section, f"missing; expected a mapping of {', '.join(fields)}")
        if not isinstance(raw_section, Mapping):
            raise _fail(origin, section, f"must be a mapping of {', '.join(fields)}, got {_show(raw_section)}")
        _check_keys(raw_section, list(fields), origin, section)
        if section in _PARTIAL_SECTIONS and not raw_section:
            raise _fail(origin, section, f"is empty; give at least one of {', '.join(fields)} or drop the section")
        for key, spec in fields.items():
            field = f"{section}.{key}"
            raw = raw_section.get(key)
            if raw is None and field in _OPTIONAL:
                continue
            if raw is None:
                raise _fail(origin, field, "missing")
            if isinstance(spec, _Kind):
                values[field] = _kind(raw, origin, field)
            elif isinstance(spec, _Curve):
                values[field], curve_sources = _curve_leaf(raw, origin, field)
                sources.update(curve_sources)
            else:
                values[field], sources[field] = _number_leaf(raw, spec, origin, field)
    _check_consistency(values, origin)
    return name, description, values, sources


def _check_consistency(values: Mapping[str, Any], origin: str) -> None:
    """Relations between fields that each look valid alone."""
    page, readahead = values.get("os.page_size"), values.get("os.readahead")
    if page is not None and readahead is not None and readahead < page:
        raise _fail(origin, "os.readahead", f"must be >= os.page_size ({format_quantity(page, BYTES)}): a fault "
                                            f"reads at least the page, got {format_quantity(readahead, BYTES)}")


def _apply_overrides(values: dict[str, Any], sources: dict[str, str], overrides: Sequence[str]) -> None:
    """Apply ``FIELD=VALUE`` strings (the CLI's ``--set``); each is recorded with source "override"."""
    for item in overrides:
        if not isinstance(item, str) or "=" not in item:
            raise _fail("--set", _show(item), "expected FIELD=VALUE, e.g. 'dram.bandwidth=50 GB/s'")
        field, raw = (part.strip() for part in item.split("=", 1))
        spec = SETTABLE_FIELDS.get(field)
        if spec is None:
            raise _fail("--set", _show(field), f"unknown field{_suggest(field, list(SETTABLE_FIELDS))}")
        if field.startswith("cache.") and "cache.capacity" not in values:
            raise _fail("--set", field, "this profile has no cache; add one in a YAML file that extends it")
        if not raw:
            raise _fail("--set", field, "missing value after '='")
        values[field] = _kind(raw, "--set", field) if isinstance(spec, _Kind) else _quantity(raw, spec, "--set", field)
        sources[field] = "override"
    if overrides:
        _check_consistency(values, "--set")


# ---------------------------------------------------------------------------------------------
# Assembly


def _spec_values(spec: Any) -> dict[str, Any]:
    """A section's values; absent optional ones are left out, so adding an optional field to the
    schema does not change the hash of a profile that does not give it."""
    values = {key: value for key, value in dataclasses.asdict(spec).items() if value is not None}
    if "read_curve" in values:
        values["read_curve"] = [list(point) for point in values["read_curve"]]
    return values


_EXTRA_SECTIONS = (*UNIT_NAMES, "interconnect", "os")


def _hardware_values(profile: HardwareProfile) -> dict[str, Any]:
    values = {"compute": _spec_values(profile.compute), "dram": _spec_values(profile.dram),
              "cache": _spec_values(profile.cache) if profile.cache is not None else None,
              "storage": _spec_values(profile.storage)}
    values.update({name: _spec_values(getattr(profile, name)) for name in _EXTRA_SECTIONS
                   if getattr(profile, name) is not None})
    return values


_SECTION_TYPES = {**{unit: UnitSpec for unit in UNIT_NAMES}, "interconnect": InterconnectSpec, "os": OsSpec}


def _assemble(name: str, description: str, values: Mapping[str, Any], sources: Mapping[str, str],
              path: str) -> HardwareProfile:
    def section(prefix: str, cls: type) -> Any:
        return cls(**{f.name: values.get(f"{prefix}.{f.name}") for f in dataclasses.fields(cls)
                      if f"{prefix}.{f.name}" in values or f.default is dataclasses.MISSING})

    def partial(prefix: str, cls: type) -> Any:
        given = any(key.startswith(f"{prefix}.") for key in values)
        return section(prefix, cls) if given else None

    compute = section("compute", ComputeSpec)
    dram = section("dram", MemorySpec)
    cache = section("cache", MemorySpec) if "cache.capacity" in values else None
    storage = StorageSpec(
        kind=values["storage.kind"], latency=values["storage.latency"],
        peak_bandwidth=values["storage.peak_bandwidth"], queue_depth=values["storage.queue_depth"],
        energy_per_byte=values["storage.energy_per_byte"], read_curve=values.get("storage.read_curve", ()),
        multi_thread_factor=values.get("storage.multi_thread_factor"))
    extras = {key: partial(key, cls) for key, cls in _SECTION_TYPES.items()}
    profile = HardwareProfile(name=name, description=description, compute=compute, dram=dram,
                              storage=storage, cache=cache, sources=dict(sources), path=path, sha256="", **extras)
    canonical = json.dumps(_hardware_values(profile), sort_keys=True, separators=(",", ":"), allow_nan=False)
    return dataclasses.replace(profile, sha256=hashlib.sha256(canonical.encode()).hexdigest())
