"""Sweep specs and the sweep runner (DESIGN §4): validation, determinism (repeats, workers, Dask), failures.

Resuming after SIGKILL is in tests/test_crash_safety.py (the kill-and-restart harness)."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from sparsesim.experiments.spec import expand, load_spec
from sparsesim.experiments.sweep import TIMING_COLUMNS, execute_run, read_results, recorded_statuses, run_sweep, write_run
from sparsesim.errors import InputError
from sparsesim.simulator.synth import synthesize

REPO = Path(__file__).resolve().parents[1]
TINY = {"layers": 2, "d_model": 32, "d_ff": 128, "tokens": 12, "active": 0.1, "persistence": 0.6}


@pytest.fixture(scope="module")
def traces(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("traces")
    for seed in (1, 2):
        synthesize(folder / f"tiny-{seed}.parquet", seed=seed, progress=False, **TINY)
    return folder


def write_spec(folder: Path, body: dict, name: str = "spec.yaml") -> Path:
    path = folder / name
    path.write_text(yaml.safe_dump({"name": "test", **body}, sort_keys=False))
    return path


def base_spec(traces: Path, **extra) -> dict:
    return {"traces": [str(traces / "tiny-*.parquet")], "profiles": ["apple-m1-max"], **extra}


def spec_error(tmp_path: Path, body: dict) -> str:
    spec = write_spec(tmp_path, body)
    with pytest.raises(InputError) as err:
        load_spec(spec)
    message = str(err.value)
    assert "\n" not in message and str(spec) in message
    return message


def cli(*args: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "sparsesim.experiments.cli", *args], cwd=REPO, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kwargs)


# ---------------------------------------------------------------------------------------------
# Spec validation


def test_unknown_keys_are_named_with_the_closest_suggestion(tmp_path, traces):
    message = spec_error(tmp_path, base_spec(traces, grdi={"predictor": ["oracle"]}))
    assert "grdi" in message and "did you mean 'grid'?" in message
    message = spec_error(tmp_path, base_spec(traces, grid={"dram_budgt": [0.3]}))
    assert "grid.dram_budgt" in message and "did you mean 'dram_budget'?" in message
    message = spec_error(tmp_path, base_spec(traces, fixed={"storage.peak_bandwith": "2 GB/s"}))
    assert "did you mean 'storage.peak_bandwidth'?" in message
    message = spec_error(tmp_path, base_spec(traces, sample={"method": "random", "n": 2, "seeed": 1,
                                                            "ranges": {"lookahead": [1, 3]}}))
    assert "sample.seeed" in message and "did you mean 'seed'?" in message


def test_empty_grid_is_refused(tmp_path, traces):
    assert "grid: empty" in spec_error(tmp_path, base_spec(traces, grid={}))
    assert "grid.cache: empty list" in spec_error(tmp_path, base_spec(traces, grid={"cache": []}))


def test_missing_trace_is_named(tmp_path, traces):
    message = spec_error(tmp_path, {"traces": ["nowhere.parquet"], "profiles": ["apple-m1-max"]})
    assert "traces[0]" in message and "nowhere.parquet" in message
    message = spec_error(tmp_path, {"traces": ["none-*.parquet"], "profiles": ["apple-m1-max"]})
    assert "none-*.parquet" in message
    message = spec_error(tmp_path, base_spec(traces, fixed={"train_trace": "absent.parquet"}))
    assert "fixed.train_trace" in message and "absent.parquet" in message


def test_bad_values_name_the_field(tmp_path, traces):
    assert "grid.dram_budget[1]" in spec_error(tmp_path, base_spec(traces, grid={"dram_budget": [0.3, -1]}))
    message = spec_error(tmp_path, base_spec(traces, grid={"predictor": ["oracle", "orcale"]}))
    assert "grid.predictor[1]" in message and "oracle" in message
    assert "zip" in spec_error(tmp_path, base_spec(traces, zip={"cache": ["lru"], "predictor": ["oracle", "none"]}))
    assert "fixed.storage.latency" in spec_error(tmp_path, base_spec(traces, fixed={"storage.latency": "fast"}))
    assert "profiles[0]" in spec_error(tmp_path, base_spec(traces, profiles=["apple-m1-maks"]))
    message = spec_error(tmp_path, base_spec(traces, grid={"cache": ["lru"]}, fixed={"cache": "fifo"}))
    assert "cache" in message and "one of grid, zip, sample and fixed" in message


def test_zip_lists_must_have_equal_lengths(tmp_path, traces):
    message = spec_error(tmp_path, base_spec(traces, zip={"predictor": ["oracle", "none"], "cache": ["lru"]}))
    assert "zip" in message and "predictor: 2" in message and "cache: 1" in message


def test_confine_keeps_paths_inside_the_spec_directory(tmp_path, traces):
    inner = tmp_path / "inner"
    inner.mkdir()
    message = spec_error(inner, base_spec(traces, confine=True))
    assert "outside" in message and "confine" in message


def test_each_trace_may_bring_its_own_training_and_profiling_traces(tmp_path, traces):
    """A learned predictor must learn from the trace's own model and sparsity: companions per trace."""
    one, two = traces / "tiny-1.parquet", traces / "tiny-2.parquet"
    spec = write_spec(tmp_path, {"traces": [{"file": str(one), "train_trace": str(two), "profile_trace": str(two)},
                                            {"file": str(two), "train_trace": str(one)}],
                                 "profiles": ["apple-m1-max"], "grid": {"predictor": ["static-hot", "oracle"]}})
    runs = expand(load_spec(spec))
    assert len(runs) == 4
    assert {(Path(r.trace).name, Path(r.train_trace).name, r.profile_trace and Path(r.profile_trace).name)
            for r in runs} == {("tiny-1.parquet", "tiny-2.parquet", "tiny-2.parquet"),
                               ("tiny-2.parquet", "tiny-1.parquet", None)}
    assert all('"train_trace"' in r.config for r in runs)       # part of the run id
    message = spec_error(tmp_path, {"traces": [{"file": str(one), "train_trace": str(two)}],
                                    "profiles": ["apple-m1-max"], "fixed": {"train_trace": str(two)}})
    assert "traces[0].train_trace" in message and "not both" in message
    message = spec_error(tmp_path, {"traces": [{"file": str(one), "train_trace": "nowhere.parquet"}],
                                    "profiles": ["apple-m1-max"]})
    assert "traces[0].train_trace" in message and "nowhere.parquet" in message
    assert "traces[0].file: missing" in spec_error(tmp_path, {"traces": [{"train_trace": str(two)}],
                                                              "profiles": ["apple-m1-max"]})


def test_expansion_is_ordered_deterministic_and_deduplicated(tmp_path, traces):
    body = base_spec(traces, grid={"predictor": ["oracle", "none"], "dram_budget": [0.3, 0.5]},
                     zip={"cache": ["lru", "window:k=2"], "lookahead": [1, 2]},
                     fixed={"storage.peak_bandwidth": "2 GB/s"})
    body["traces"].append(str(traces / "tiny-1.parquet"))         # listed twice: runs once
    runs = expand(load_spec(write_spec(tmp_path, body)))
    assert len(runs) == 2 * 2 * 2 * 2
    assert [r.run_id for r in runs] == [r.run_id for r in expand(load_spec(write_spec(tmp_path, body)))]
    assert len({r.run_id for r in runs}) == len(runs)
    first = runs[0]
    assert first.columns["trace_name"] == "tiny-1.parquet"
    assert (first.predictor, first.cache) == ("oracle", "lru")
    assert "storage.peak_bandwidth=2 GB/s" in first.settings and first.columns["storage.peak_bandwidth"] == 2e9


def test_latin_hypercube_sampling_is_deterministic_and_stratified(tmp_path, traces):
    n = 20
    sample = {"method": "latin-hypercube", "n": n, "seed": 7,
              "ranges": {"insert_overhead": [1e-8, 1e-6], "dram.bandwidth": {"log": ["10 GB/s", "400 GB/s"]}}}
    points = load_spec(write_spec(tmp_path, base_spec(traces, sample=sample))).points
    assert points == load_spec(write_spec(tmp_path, base_spec(traces, sample=sample))).points
    strata = sorted(int((p["insert_overhead"] - 1e-8) / (1e-6 - 1e-8) * n) for p in points)
    assert strata == list(range(n))                               # one point per stratum
    assert all(10e9 <= p["dram.bandwidth"] <= 400e9 for p in points)
    other = load_spec(write_spec(tmp_path, base_spec(traces, sample={**sample, "seed": 8}))).points
    assert other != points


# ---------------------------------------------------------------------------------------------
# Runner


def test_failed_runs_are_recorded_and_only_errors_are_retried(tmp_path, traces, monkeypatch):
    # budget 0.01 cannot hold one layer's active set: the simulator refuses it (status invalid)
    spec = write_spec(tmp_path, base_spec(traces, grid={"dram_budget": [0.01, 0.5]}, baselines=False))
    results = tmp_path / "results"
    summary = run_sweep(spec, results, workers=1, progress=False)
    assert (summary["ok"], summary["invalid"], summary["error"]) == (2, 2, 0)
    rows = read_results(results).to_pylist()
    invalid = [r for r in rows if r["status"] == "invalid"]
    assert all("dram_budget" in r["error"] for r in invalid)

    ok_id = next(r["run_id"] for r in rows if r["status"] == "ok")
    ok_run = next(r for r in expand(load_spec(spec)) if r.run_id == ok_id)
    monkeypatch.setattr("sparsesim.experiments.sweep.simulate", lambda *a, **k: 1 / 0)
    crashed = execute_run(ok_run)
    assert crashed["status"] == "error" and crashed["error"].startswith("ZeroDivisionError")
    write_run(results, crashed)
    monkeypatch.undo()
    summary = run_sweep(spec, results, workers=1, progress=False)
    assert (summary["skipped"], summary["ok"]) == (3, 1)          # the error is retried, invalid runs are not
    assert set(recorded_statuses(results).values()) == {"ok", "invalid"}
    statuses = read_results(results).column("status").to_pylist()    # the compaction saw the retried part
    assert sorted(statuses) == ["invalid", "invalid", "ok", "ok"]


def test_records_are_identical_across_repeats_worker_counts_and_dask(tmp_path, traces):
    """Bit-identical tables (timing excepted) from 1 worker, 1 worker again, 2 workers and local Dask,
    with a seeded random predictor, so equality means the seed, not luck, fixes the result."""
    spec = write_spec(tmp_path, base_spec(traces, grid={"predictor": ["oracle", "noisy-oracle:fn=0.2,fp=0.1"],
                                                        "dram_budget": [0.01, 0.4]},
                                          fixed={"storage.latency": "80 us"}, zip={"seed": [0, 3]}))
    executions = {"pool-1": {"workers": 1}, "pool-1-again": {"workers": 1}, "pool-2": {"workers": 2},
                  "dask-2": {"workers": 2, "dask_local": True}}
    tables = {}
    for label, kwargs in executions.items():
        summary = run_sweep(spec, tmp_path / label, progress=False, **kwargs)
        assert summary["runs"] == 16 and summary["invalid"] == 8
        tables[label] = read_results(tmp_path / label).drop_columns(list(TIMING_COLUMNS)).to_pandas()
    import pandas.testing

    for label in ("pool-1-again", "pool-2", "dask-2"):
        pandas.testing.assert_frame_equal(tables["pool-1"], tables[label], check_exact=True)
    noisy = tables["pool-1"].query("predictor != 'oracle' and status == 'ok'")
    by_seed = noisy.groupby("seed")["storage_bytes"].sum()
    assert by_seed.loc[0] != by_seed.loc[3]      # the seed changes the noisy predictor's choices


def test_unreachable_scheduler_fails_fast_with_one_line(tmp_path, traces):
    spec = write_spec(tmp_path, base_spec(traces))
    with socket.socket() as s:      # a loopback port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    start = time.monotonic()
    run = cli("sweep", str(spec), "-o", str(tmp_path / "r"), "--scheduler", f"tcp://127.0.0.1:{port}")
    out, err = run.communicate(timeout=30)
    assert run.returncode == 2, err
    assert time.monotonic() - start < 10
    assert err.count("\n") == 1 and err.startswith("sparsesim: error: --scheduler") and str(port) in err
