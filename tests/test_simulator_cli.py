"""`sparsesim simulate / synth / policies` end to end, and bad input answered in one line."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest

from tracebuild import write_trace


def sparsesim(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "sparsesim.experiments.cli", *map(str, args)], capture_output=True,
                          text=True, cwd=cwd, timeout=300)


@pytest.fixture(scope="module")
def trace(tmp_path_factory):
    rng = np.random.default_rng(1)
    active = rng.random((16, 2, 128)) < 0.15
    return write_trace(tmp_path_factory.mktemp("cli") / "t.parquet", active, d_model=64)


def one_line_error(result, *fragments):
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sparsesim: error: "), result.stderr
    for f in fragments:
        assert f in lines[0], lines[0]
    assert "Traceback" not in result.stderr


def test_simulate_prints_summary_and_writes_json(trace, tmp_path):
    out = tmp_path / "r.json"
    r = sparsesim("simulate", "--trace", trace, "--profile", "oneplus-12", "--predictor", "oracle",
                  "--cache", "lru", "--dram-budget", "0.5", "--json", out)
    assert r.returncode == 0, r.stderr
    assert "time per token" in r.stdout and "hit rate" in r.stdout
    record = json.loads(out.read_text())
    assert record["profile"] == "oneplus-12" and record["dram_budget"] == 0.5
    assert record["speedup_vs_dense"] > 0


def test_synth_then_simulate(tmp_path):
    out = tmp_path / "s.parquet"
    r = sparsesim("synth", "--layers", "2", "--d-model", "64", "--d-ff", "256", "--tokens", "20",
                  "--active", "0.1", "--persistence", "0.6", "--seed", "3", "-o", out)
    assert r.returncode == 0, r.stderr
    meta = json.loads(pq.ParquetFile(out).metadata.metadata[b"sparsesim"])
    assert meta["kind"] == "synthetic" and meta["synthetic"]["seed"] == 3
    r = sparsesim("simulate", "--trace", out, "--dram-budget", "0.5", "--no-baselines", "--json", "-")
    assert r.returncode == 0 and json.loads(r.stdout)["trace_kind"] == "synthetic"


def test_policies_lists_registries():
    r = sparsesim("policies")
    assert r.returncode == 0
    for name in ("oracle", "dense", "none", "lru", "belady", "window"):
        assert name in r.stdout


def test_bad_profile_negative_bandwidth(trace, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("extends: oneplus-12\nstorage:\n  peak_bandwidth: {value: -1 GB/s, source: x}\n")
    one_line_error(sparsesim("simulate", "--trace", trace, "--profile", bad), "bad.yaml", "storage.peak_bandwidth")


def test_bad_profile_unknown_key(trace, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("extends: oneplus-12\nstorage:\n  peak_bandwith: {value: 1 GB/s, source: x}\n")
    one_line_error(sparsesim("simulate", "--trace", trace, "--profile", bad), "bad.yaml", "peak_bandwith")


def test_bad_profile_missing_field(trace, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ndescription: y\n")
    one_line_error(sparsesim("simulate", "--trace", trace, "--profile", bad), "bad.yaml")


def test_budget_below_resident_weights(trace):
    one_line_error(sparsesim("simulate", "--trace", trace, "--dram-budget", "1 KB"), "dram_budget",
                   "non-FFN")


def test_budget_of_zero(trace):
    one_line_error(sparsesim("simulate", "--trace", trace, "--dram-budget", "0"), "dram_budget", "> 0")


def test_trace_of_another_format_version(trace, tmp_path):
    table = pq.read_table(trace)
    meta = json.loads(table.schema.metadata[b"sparsesim"]) if table.schema.metadata and \
        b"sparsesim" in table.schema.metadata else json.loads(pq.ParquetFile(trace).metadata.metadata[b"sparsesim"])
    meta["format_version"] = 99
    other = tmp_path / "v99.parquet"
    pq.write_table(table.replace_schema_metadata({"sparsesim": json.dumps(meta)}), other)
    one_line_error(sparsesim("simulate", "--trace", other), "v99.parquet", "format_version 99")


def test_unknown_setting_and_predictor(trace):
    one_line_error(sparsesim("simulate", "--trace", trace, "--set", "budgett=3"), "budgett")
    one_line_error(sparsesim("simulate", "--trace", trace, "--predictor", "orcale"), "did you mean 'oracle'")
