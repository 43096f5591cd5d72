"""Text and JSON views of hardware profiles: what ``sparsesim profiles list|show`` print."""

from __future__ import annotations

import dataclasses
import json
from typing import Sequence

from sparsesim.simulator.profile import UNIT_NAMES, HardwareProfile, format_field, list_profiles, load_profile

_SECTIONS = ("compute", "dram", "cache", "storage")
_OPTIONAL_SECTIONS = (*UNIT_NAMES, "interconnect", "os")   # shown only when the profile has them


def profiles_table() -> str:
    """One line per shipped preset: name, storage kind, DRAM bandwidth, flash peak bandwidth."""
    rows = [("NAME", "STORAGE", "DRAM BW", "FLASH PEAK BW")]
    for name in list_profiles():
        profile = load_profile(name)
        rows.append((profile.name, profile.storage.kind,
                     format_field("dram.bandwidth", profile.dram.bandwidth),
                     format_field("storage.peak_bandwidth", profile.storage.peak_bandwidth)))
    return _columns(rows)


def show_profile(name_or_path: str, overrides: Sequence[str] = (), as_json: bool = False) -> str:
    """A profile's resolved values with units and the source of each (or JSON in base units)."""
    profile = load_profile(name_or_path, overrides)
    return profile_json(profile) if as_json else profile_text(profile)


def profile_json(profile: HardwareProfile) -> str:
    record = {**profile.to_dict(), "description": profile.description, "path": profile.path,
              "sources": profile.sources}
    return json.dumps(record, indent=2, ensure_ascii=False)


def profile_text(profile: HardwareProfile) -> str:
    rows = [("FIELD", "VALUE", "SOURCE")]
    for section in (*_SECTIONS, *_OPTIONAL_SECTIONS):
        spec = getattr(profile, section)
        if spec is None:
            if section in _SECTIONS:
                rows.append((section, "none", ""))
            continue
        for field in dataclasses.fields(spec):
            dotted = f"{section}.{field.name}"
            value = getattr(spec, field.name)
            if value is None:   # an optional field the profile does not give
                continue
            rows.append((dotted, format_field(dotted, value), profile.sources.get(dotted, "")))
            if field.name == "read_curve":
                rows += [(key, "", text) for key, text in profile.sources.items()
                         if key.startswith(f"{dotted}.points[")]
    header = [f"{profile.name}: {profile.description}" if profile.description else profile.name,
              f"file:   {profile.path or '(not from a file)'}",
              f"sha256: {profile.sha256}", ""]
    return "\n".join(header) + _columns(rows)


def _columns(rows: list[tuple[str, ...]]) -> str:
    """Left-aligned columns; the last column is not padded (sources are long)."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    return "\n".join("  ".join([*(cell.ljust(w) for cell, w in zip(row, widths)), row[-1]]).rstrip()
                     for row in rows)
