"""Hardware profiles: the shipped presets, the storage bandwidth model, inheritance, overrides,
and one-line errors for every kind of bad input (loader, ``--set`` and the CLI)."""

from __future__ import annotations

import copy
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fuzzing import mutate, yamlish
from sparsesim.errors import InputError
from sparsesim.simulator.profile import (
    SETTABLE_FIELDS, HardwareProfile, StorageSpec, list_profiles, load_profile, profile_from_dict,
)
from sparsesim.simulator.units import BANDWIDTH, BYTES, ENERGY_PER_BYTE, TIME, format_quantity, parse_quantity

REPO = Path(__file__).resolve().parents[1]
REQUIRED_PRESETS = {
    "apple-m1-max", "oneplus-12", "oneplus-ace-2", "raspberry-pi-5-sd", "raspberry-pi-5-nvme",
    "jetson-orin-nano", "jetson-agx-orin", "pixel-8", "iphone-15-pro", "laptop-nvme",
}
KiB = 1024


def preset_data(name: str) -> dict:
    return yaml.safe_load((REPO / "hw_profiles" / f"{name}.yaml").read_text(encoding="utf-8"))


def write(tmp_path: Path, text: str, name: str = "user.yaml") -> str:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


def assert_one_line_error(error: InputError, origin: str, field: str) -> None:
    message = str(error)
    assert len(message.splitlines()) == 1, message
    assert message.startswith(f"{origin}: "), message
    assert field in message, message


# --- shipped presets ---------------------------------------------------------------------------


def test_the_required_presets_are_shipped():
    assert REQUIRED_PRESETS <= set(list_profiles())


@pytest.mark.parametrize("name", list_profiles())
def test_every_preset_loads_with_a_source_for_every_number(name):
    profile = load_profile(name)
    assert profile.name == name                          # file name and profile name agree
    assert Path(profile.path).name == f"{name}.yaml"
    assert len(profile.sha256) == 64
    json.dumps(profile.to_dict(), allow_nan=False)       # result records need plain JSON
    for field in SETTABLE_FIELDS:
        section_name, key = field.split(".")
        section = getattr(profile, section_name)
        given = section is not None and getattr(section, key) is not None
        if field != "storage.kind" and given:
            assert profile.sources.get(field), f"{name}: {field} has no source"
    if profile.storage.read_curve:
        assert profile.sources.get("storage.read_curve")


@pytest.mark.parametrize("name", list_profiles())
def test_preset_latency_and_queue_depth_do_not_undercut_its_curve(name):
    # A batch cannot finish faster than its requests' first-byte latency through the queue (Q requests
    # per latency). If Q*s/latency fell below the measured curve, the latency estimate would override
    # the measurement.
    storage = load_profile(name).storage
    for size, bandwidth in storage.read_curve:
        assert storage.queue_depth * size / storage.latency >= bandwidth, (name, size)


def test_apple_m1_max_reproduces_llm_in_a_flash_table_2():
    profile = load_profile("apple-m1-max")
    storage = profile.storage
    assert storage.bandwidth_at(8 * KiB) == 1.25e9       # predicted fp16 rows
    assert storage.bandwidth_at(16 * KiB) == 2.25e9      # row-column bundles
    assert storage.bandwidth_at(1 << 20) == 6.1e9
    assert storage.peak_bandwidth == 6.1e9
    assert storage.queue_depth == 32
    assert profile.sources["storage.read_curve.points[2]"].startswith("estimate: ")


def test_oneplus_12_curve_is_the_powerinfer_2_measurement():
    storage = load_profile("oneplus-12").storage
    assert storage.bandwidth_at(4 * KiB) == pytest.approx(1076.10e6)
    assert storage.bandwidth_at(512 * KiB) == pytest.approx(3.5e9)
    assert storage.queue_depth == 32


def test_importing_the_profile_module_does_not_import_torch():
    code = "import sys, sparsesim.simulator.profile, sparsesim.simulator.cli; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)


# --- the storage bandwidth model ---------------------------------------------------------------


def storage(read_curve=(), peak=10e9, latency=100e-6, queue_depth=4) -> StorageSpec:
    return StorageSpec(kind="nvme", latency=latency, peak_bandwidth=peak, queue_depth=queue_depth,
                       energy_per_byte=1e-9, read_curve=tuple(read_curve))


def test_curve_interpolates_linearly_in_log2_of_the_size():
    spec = storage([(8 * KiB, 1e9), (32 * KiB, 3e9)])
    assert spec.bandwidth_at(16 * KiB) == pytest.approx(2e9)            # halfway in log2
    assert spec.bandwidth_at(8 * KiB * 2**0.5) == pytest.approx(1.5e9)  # a quarter of the way


def test_curve_is_flat_beyond_its_ends():
    spec = storage([(8 * KiB, 1e9), (32 * KiB, 3e9)])
    assert spec.bandwidth_at(512) == 1e9
    assert spec.bandwidth_at(1 << 30) == 3e9


def test_curve_is_capped_by_peak_bandwidth():
    spec = storage([(8 * KiB, 1e9), (32 * KiB, 3e9)], peak=2.5e9)
    assert spec.bandwidth_at(32 * KiB) == 2.5e9
    assert spec.bandwidth_at(8 * KiB) == 1e9


def test_without_a_curve_the_latency_queue_depth_model_applies():
    spec = storage(peak=1e9, latency=100e-6, queue_depth=4)
    # 4 x 4096 B / (100 us + 4096 B / 1 GB/s) = 16384 / 104.096e-6 s
    assert spec.bandwidth_at(4096) == pytest.approx(157_393_175.5, rel=1e-9)
    assert spec.bandwidth_at(1 << 30) == 1e9                               # capped


def test_bandwidth_at_is_vectorised():
    spec = storage([(8 * KiB, 1e9), (32 * KiB, 3e9)])
    sizes = np.array([4 * KiB, 16 * KiB, 64 * KiB])
    result = spec.bandwidth_at(sizes)
    assert isinstance(result, np.ndarray) and result.shape == (3,)
    np.testing.assert_allclose(result, [1e9, 2e9, 3e9])
    assert isinstance(spec.bandwidth_at(16 * KiB), float)


def test_bandwidth_at_rejects_non_positive_sizes():
    with pytest.raises(ValueError):
        storage().bandwidth_at(np.array([4096, 0]))


# --- units -------------------------------------------------------------------------------------


@pytest.mark.parametrize("text, dim, expected", [
    ("8 KiB", BYTES, 8192.0),
    ("4 KB", BYTES, 4000.0),
    ("1.25 GB/s", BANDWIDTH, 1.25e9),
    ("6.1 GB/s", BANDWIDTH, 6.1e9),
    ("4 GiB/s", BANDWIDTH, 4 * 2.0**30),
    ("50 us", TIME, 50e-6),
    ("50 µs", TIME, 50e-6),
    ("5 pJ/bit", ENERGY_PER_BYTE, 40e-12),
    ("0.25 nJ/B", ENERGY_PER_BYTE, 0.25e-9),
    (1e9, BANDWIDTH, 1e9),                               # a plain number is in base units
])
def test_units_parse_exactly(text, dim, expected):
    assert parse_quantity(text, dim) == expected


def test_format_quantity_round_trips():
    for value, dim in [(1.25e9, BANDWIDTH), (48 * 2**20, BYTES), (75e-6, TIME), (40e-12, ENERGY_PER_BYTE)]:
        assert parse_quantity(format_quantity(value, dim), dim) == pytest.approx(value)


def test_quantities_stay_finite():
    # 1e999 GB would overflow a float product; it must be reported, not turned into inf.
    with pytest.raises(ValueError, match="finite"):
        parse_quantity("1e999 GB/s", BANDWIDTH)
    assert math.isfinite(parse_quantity("1e-999 GB/s", BANDWIDTH))
    with pytest.raises(ValueError, match="finite"):
        parse_quantity(10**5000, BANDWIDTH)              # too many digits even for str()


# --- extends, overrides, hashing ---------------------------------------------------------------


def test_extends_inherits_every_field_it_does_not_change(tmp_path):
    path = write(tmp_path, """
extends: oneplus-12
name: my-phone
dram:
  bandwidth: {value: 30 GB/s, estimate: slower memory}
""")
    base, mine = load_profile("oneplus-12"), load_profile(path)
    assert mine.name == "my-phone" and mine.path == str(Path(path).resolve())
    assert mine.dram.bandwidth == 30e9
    assert mine.sources["dram.bandwidth"] == "estimate: slower memory"
    assert mine.dram.capacity == base.dram.capacity
    assert mine.sources["dram.capacity"] == base.sources["dram.capacity"]
    assert mine.storage == base.storage and mine.compute == base.compute
    assert mine.sha256 != base.sha256


def test_extends_can_drop_the_cache_and_the_curve(tmp_path):
    path = write(tmp_path, """
extends: apple-m1-max
name: no-extras
cache: null
storage:
  read_curve: null
""")
    profile = load_profile(path)
    assert profile.cache is None and profile.storage.read_curve == ()
    s = 8 * KiB  # now the latency / queue-depth model
    assert profile.storage.bandwidth_at(s) == pytest.approx(32 * s / (100e-6 + s / 6.1e9))


def test_overrides_apply_last_and_are_recorded(tmp_path):
    base = load_profile("oneplus-12")
    changed = load_profile("oneplus-12", ["dram.bandwidth=50 GB/s", "storage.queue_depth = 8",
                                          "storage.kind=measured"])
    assert changed.dram.bandwidth == 50e9
    assert changed.storage.queue_depth == 8 and isinstance(changed.storage.queue_depth, int)
    assert changed.storage.kind == "measured"
    assert changed.sources["dram.bandwidth"] == "override"
    assert changed.sources["storage.queue_depth"] == "override"
    assert changed.sha256 != base.sha256
    assert load_profile("oneplus-12").dram.bandwidth == base.dram.bandwidth   # nothing shared


def test_hash_ignores_key_order_name_and_sources():
    data = preset_data("laptop-nvme")
    reordered = {key: data[key] for key in reversed(list(data))}
    renamed = {**copy.deepcopy(data), "name": "other", "description": "same hardware"}
    renamed["dram"]["bandwidth"]["source"] = "https://example.org"
    renamed["dram"]["bandwidth"].pop("estimate")
    sha = profile_from_dict(data, "a").sha256
    assert profile_from_dict(reordered, "b").sha256 == sha
    assert profile_from_dict(renamed, "c").sha256 == sha
    assert load_profile("laptop-nvme").sha256 == sha
    bumped = copy.deepcopy(data)
    bumped["dram"]["bandwidth"]["value"] = "90 GB/s"
    assert profile_from_dict(bumped, "d").sha256 != sha


# --- bad input: one line naming file and field -------------------------------------------------

BAD_FILES = [
    ("negative bandwidth", "storage:\n  peak_bandwidth: {value: -1 GB/s, source: x}\n",
     "storage.peak_bandwidth", "must be > 0, got -1 GB/s"),
    ("zero queue depth", "storage:\n  queue_depth: {value: 0, source: x}\n", "storage.queue_depth", ">= 1"),
    ("unknown key", "storage:\n  peak_bandwith: {value: 1 GB/s, source: x}\n",
     "storage.peak_bandwith", "did you mean 'peak_bandwidth'"),
    ("unknown section", "stroage: {}\n", "stroage", "did you mean 'storage'"),
    ("bare number", "dram:\n  bandwidth: 50\n", "dram.bandwidth", "source"),
    ("no source", "dram:\n  bandwidth: {value: 50 GB/s}\n", "dram.bandwidth", "has no source"),
    ("both source and estimate", "dram:\n  bandwidth: {value: 5 GB/s, source: x, estimate: y}\n",
     "dram.bandwidth", "exactly one"),
    ("bad unit", "dram:\n  bandwidth: {value: 50 GB, source: x}\n", "dram.bandwidth", "did you mean 'GB/s'"),
    ("nan", "dram:\n  latency: {value: .nan, source: x}\n", "dram.latency", "finite"),
    ("inf", "dram:\n  capacity: {value: .inf, source: x}\n", "dram.capacity", "finite"),
    ("falling curve", "storage:\n  read_curve: {source: x, points: [[8 KiB, 2 GB/s], [16 KiB, 1 GB/s]]}\n",
     "storage.read_curve.points[1]", "must not fall"),
    ("unsorted curve", "storage:\n  read_curve: {source: x, points: [[16 KiB, 1 GB/s], [8 KiB, 2 GB/s]]}\n",
     "storage.read_curve.points[1]", "must increase"),
    ("non-positive curve point", "storage:\n  read_curve: {source: x, points: [[0 KiB, 1 GB/s]]}\n",
     "storage.read_curve.points[0][0]", "> 0"),
    ("unknown preset", "extends: oneplus12\n", "extends", "did you mean 'oneplus-12'"),
]


@pytest.mark.parametrize("label, body, field, problem", BAD_FILES, ids=[case[0] for case in BAD_FILES])
def test_bad_profile_files_give_one_line_naming_file_and_field(tmp_path, label, body, field, problem):
    extends = "" if body.startswith("extends") else "extends: oneplus-12\n"
    path = write(tmp_path, f"{extends}name: bad\n{body}")
    with pytest.raises(InputError) as caught:
        load_profile(path)
    assert_one_line_error(caught.value, path, field)
    assert problem in str(caught.value)


def test_missing_field_is_named(tmp_path):
    data = preset_data("pixel-8")
    del data["dram"]["latency"]
    path = write(tmp_path, yaml.safe_dump(data))
    with pytest.raises(InputError) as caught:
        load_profile(path)
    assert_one_line_error(caught.value, path, "dram.latency: missing")


@pytest.mark.parametrize("text, problem", [
    ("name: [unclosed\n", "not valid YAML: line 2"),
    ("- a\n- b\n", "must be a mapping"),
    ("", "is empty"),
])
def test_unreadable_or_non_mapping_files(tmp_path, text, problem):
    path = write(tmp_path, text)
    with pytest.raises(InputError) as caught:
        load_profile(path)
    assert_one_line_error(caught.value, path, problem)


def test_a_missing_file_or_unknown_preset_is_one_line():
    with pytest.raises(InputError, match=r"^oneplu: no such file and not a preset; did you mean 'oneplus-12'\?$"):
        load_profile("oneplu")


@pytest.mark.parametrize("override, field, problem", [
    ("dram.bandwidth", "dram.bandwidth", "expected FIELD=VALUE"),
    ("dram.bandwith=5 GB/s", "dram.bandwith", "did you mean 'dram.bandwidth'"),
    ("dram.bandwidth=5 GB", "dram.bandwidth", "did you mean 'GB/s'"),
    ("dram.bandwidth=-5 GB/s", "dram.bandwidth", "must be > 0"),
    ("storage.queue_depth=2.5", "storage.queue_depth", "whole number"),
    ("storage.read_curve=1", "storage.read_curve", "unknown field"),
    ("cache.capacity=1 MiB", "cache.capacity", "no cache"),
    ("dram.bandwidth=", "dram.bandwidth", "missing value"),
])
def test_bad_overrides(override, field, problem):
    with pytest.raises(InputError) as caught:
        load_profile("pixel-8", [override])
    assert_one_line_error(caught.value, "--set", field)
    assert problem in str(caught.value)


# --- CLI ---------------------------------------------------------------------------------------


def sparsesim(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sparsesim.experiments.cli", "profiles", *args],
                          cwd=REPO, capture_output=True, text=True, timeout=60)


def test_cli_list_has_one_line_per_preset():
    result = sparsesim("list")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 1 + len(list_profiles())
    apple = next(line for line in lines if line.startswith("apple-m1-max "))
    assert apple.split()[1:] == ["apple-ssd", "400", "GB/s", "6.1", "GB/s"]


def test_cli_show_prints_values_units_and_sources():
    result = sparsesim("show", "apple-m1-max", "--set", "dram.bandwidth=100 GB/s")
    assert result.returncode == 0, result.stderr
    assert "8 KiB: 1.25 GB/s, 16 KiB: 2.25 GB/s" in result.stdout
    assert any(line.startswith("dram.bandwidth") and "100 GB/s" in line and line.endswith("override")
               for line in result.stdout.splitlines())


def test_cli_show_json_is_the_resolved_profile():
    result = sparsesim("show", "oneplus-12", "--json")
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout)
    assert record["sha256"] == load_profile("oneplus-12").sha256
    assert record["storage"]["read_curve"][0] == [4096.0, 1076.1e6]
    assert record["sources"]["storage.queue_depth"].startswith("https://arxiv.org/abs/2410.19274")


def test_cli_bad_file_exits_2_with_one_line(tmp_path):
    path = write(tmp_path, "extends: oneplus-12\nname: bad\ndram:\n  bandwidth: {value: -1 GB/s, source: x}\n")
    result = sparsesim("show", path)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.splitlines() == [f"sparsesim: error: {path}: dram.bandwidth: must be > 0, got -1 GB/s"]


def test_cli_bad_override_exits_2_with_one_line():
    result = sparsesim("show", "pixel-8", "--set", "dram.bandwith=1 GB/s")
    assert result.returncode == 2
    assert len(result.stderr.splitlines()) == 1 and "did you mean 'dram.bandwidth'" in result.stderr


# --- fuzzing: anything YAML can produce gives a profile or an InputError -----------------------

KEYS = ["name", "description", "extends", "compute", "dram", "cache", "storage", "flops",
        "energy_per_flop", "capacity", "bandwidth", "latency", "energy_per_byte", "kind",
        "peak_bandwidth", "queue_depth", "read_curve", "points", "value", "source", "estimate"]
YAMLISH = yamlish(KEYS, extra=["10 pJ/FLOP", "oneplus-12", "nvme"])


def build(data, origin: str = "fuzz.yaml") -> None:
    try:
        assert isinstance(profile_from_dict(data, origin), HardwareProfile)
    except InputError as e:
        assert len(str(e).splitlines()) == 1 and str(e).startswith(f"{origin}: ")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(YAMLISH)
def test_random_mappings_give_a_profile_or_an_input_error(data):
    build(data)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(sorted(REQUIRED_PRESETS)), st.data())
def test_mutated_presets_give_a_profile_or_an_input_error(name, draw):
    data = mutate(preset_data(name), draw, YAMLISH)
    build(data)
    build(yaml.safe_load(yaml.safe_dump(data, allow_unicode=True)))
