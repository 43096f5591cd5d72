"""Fuzzing sweep specs and threshold files through their loaders and the CLI (figures in docs/reliability.md).

Random YAML/JSON documents, structural mutations of the shipped specs and of a real thresholds
file (stories260K calibration), and byte-level damage (truncation, bit flips, spliced garbage):
each case either loads / runs correctly or ends in one InputError line naming the file — never a
traceback, a hang or a partial output. Case counts are the ``max_examples`` below.
"""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sparsesim.experiments.cli import main
from sparsesim.experiments.spec import SETTINGS, SPEC_KEYS, SweepSpec, load_spec
from fuzzing import damage_bytes, mutate, yamlish
from sparsesim.errors import InputError
from tracebuild import write_trace

REPO = Path(__file__).resolve().parents[1]
SHIPPED_SPECS = sorted((REPO / "experiments" / "specs").glob("*.yaml"))
# derandomize: the same cases on every run (reproducible failures, stable figures for the doc)
FUZZ = settings(derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
SPEC_VALUES = yamlish([*SPEC_KEYS, *SETTINGS, "synth", "method", "n", "seed", "ranges", "log", "layers", "tokens"],
                      extra=["tiny.parquet", "*.parquet", "window:k=4", "noisy-oracle:fn=0.1,fp=x", "latin-hypercube",
                             "/etc/passwd", "../../outside.parquet", "!!python/object:os.system"])


OUTCOMES: Counter = Counter()     # (input kind, "ok" | "error") over the cases this module tried


def assert_one_line_naming(error: str, path: Path) -> None:
    lines = error.strip().splitlines()
    assert len(lines) == 1, error
    assert str(path) in lines[0], (str(path), lines[0])


def fresh_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("case", numbered=True)


# ---------------------------------------------------------------------------------------------
# Sweep specs: the loader


def load_or_explain(spec: Path) -> SweepSpec | None:
    try:
        loaded = load_spec(spec)
    except InputError as e:
        assert_one_line_naming(str(e), spec)
        OUTCOMES["spec", "error"] += 1
        return None
    OUTCOMES["spec", "ok"] += 1
    return loaded


@pytest.fixture(scope="module")
def spec_dir(tmp_path_factory) -> Path:
    """A directory with one tiny trace, where fuzzed specs are written."""
    folder = tmp_path_factory.mktemp("specs")
    write_trace(folder / "tiny.parquet", np.random.default_rng(0).random((8, 2, 64)) < 0.2, d_model=16)
    return folder


def write_yaml(folder: Path, data, name: str = "fuzz.yaml") -> Path:
    path = folder / name
    path.write_text(yaml.safe_dump(data, allow_unicode=True, sort_keys=False))
    return path


@settings(FUZZ, max_examples=300)
@given(st.dictionaries(st.sampled_from(SPEC_KEYS) | st.text(max_size=8), SPEC_VALUES, max_size=8),
       st.booleans())
def test_random_spec_documents_load_or_fail_with_one_line(spec_dir, data, complete):
    if complete:    # give the required keys a chance to be right, so the deeper checks are reached
        data = {"name": "fuzz", "traces": ["tiny.parquet"], "profiles": ["oneplus-12"], **data}
    load_or_explain(write_yaml(spec_dir, data))


@settings(FUZZ, max_examples=150)
@given(st.sampled_from(SHIPPED_SPECS), st.data())
def test_mutated_shipped_specs_load_or_fail_with_one_line(spec_dir, shipped, draw):
    data = mutate(yaml.safe_load(shipped.read_text()), draw, SPEC_VALUES)
    load_or_explain(write_yaml(spec_dir, data, shipped.name))


@settings(FUZZ, max_examples=100)
@given(st.sampled_from(SHIPPED_SPECS), st.data())
def test_damaged_spec_bytes_load_or_fail_with_one_line(spec_dir, shipped, draw):
    path = spec_dir / shipped.name
    path.write_bytes(damage_bytes(shipped.read_bytes(), draw))
    load_or_explain(path)


def test_spec_loader_refuses_paths_it_cannot_use_and_runaway_sizes(spec_dir):
    """Cases the fuzzers found or that they reach too rarely: each is one line, none hangs."""
    base = {"name": "fuzz", "traces": ["tiny.parquet"], "profiles": ["oneplus-12"]}
    cases = {
        "NUL byte in a trace path": {**base, "traces": ["ti\0ny.parquet"]},
        "file name too long": {**base, "traces": ["x" * 300 + ".parquet"]},
        "profile name too long": {**base, "profiles": ["p" * 300 + ".yaml"]},
        "NUL byte in root": {**base, "root": "a\0b"},
        "a billion samples": {**base, "sample": {"method": "random", "n": 10 ** 9, "ranges": {"lookahead": [1, 4]}}},
        "a grid of 10^12 points": {**base, "grid": {"lookahead": list(range(1000)), "seed": list(range(1000)),
                                                    "warmup": list(range(1000)), "prefetch_cap": list(range(1, 1001))}},
    }
    for label, body in cases.items():
        spec = write_yaml(spec_dir, body)
        with pytest.raises(InputError) as err:
            load_spec(spec)
        assert_one_line_naming(str(err.value), spec)


# ---------------------------------------------------------------------------------------------
# Sweep specs: the CLI (runs the sweep when the mutated spec is still valid)

TINY_SPEC = {"name": "cli-fuzz", "traces": ["tiny.parquet"], "profiles": ["oneplus-12"],
             "grid": {"predictor": ["oracle", "previous-token"], "dram_budget": [0.5]},
             "fixed": {"warmup": 1}, "baselines": False}


@settings(FUZZ, max_examples=25)
@given(st.data())
def test_mutated_specs_through_the_sweep_command(spec_dir, tmp_path_factory, capsys, draw):
    spec = write_yaml(spec_dir, mutate(json.loads(json.dumps(TINY_SPEC)), draw, SPEC_VALUES), "cli.yaml")
    out = fresh_dir(tmp_path_factory) / "results"
    capsys.readouterr()
    rc = main(["sweep", str(spec), "-o", str(out), "--workers", "1", "--no-progress"])
    err = capsys.readouterr().err
    assert rc in (0, 2), err          # 1 would mean a run failed with an unexpected exception (a bug)
    OUTCOMES["sweep command", "ok" if rc == 0 else "error"] += 1
    if rc == 2:
        assert_one_line_naming(err, spec)
        assert err.startswith("sparsesim: error: ")
        assert not (out / "results.parquet").exists()
    else:
        table = pq.read_table(out / "results.parquet")
        assert table.num_rows == len(set(table.column("run_id").to_pylist())) >= 1
    shutil.rmtree(out.parent)


# ---------------------------------------------------------------------------------------------
# Threshold files


@pytest.fixture(scope="module")
def stories(shared_data, tmp_path_factory):
    """A real thresholds file from stories260K calibration, and the model metadata it must match."""
    pytest.importorskip("torch")
    from sparsesim.tracefile import read_meta
    from sparsesim.tracing.trace import trace_model

    folder = tmp_path_factory.mktemp("thresholds")
    model = str(shared_data / "llama2c-stories260K")
    trace_model(out=folder / "t.parquet", model=model, text="pydoc", sparsity=0.5, tokens=64, window=64,
                calib_tokens=128, ppl=False, save_thresholds=folder / "real.json")
    meta, _ = read_meta(folder / "t.parquet")
    return {"model_dir": model, "file": folder / "real.json", "doc": json.loads((folder / "real.json").read_text()),
            "info": meta["model"], "folder": folder}


THRESHOLD_KEYS = ["format", "version", "method", "site", "target", "layer_targets", "thresholds", "model", "d_ff",
                  "calibration", "natural", "details", "start", "sha256", "tokens", "window", "name"]
THRESHOLD_VALUES = yamlish(THRESHOLD_KEYS, extra=["sparsesim-thresholds", "percentile", "global", "topk",
                                                  "intermediate", "gate", 1, 0.5, [0.5] * 5, [512] * 5])


def load_thresholds_or_explain(path: Path, info: dict):
    from sparsesim.tracing.thresholds import Thresholds, load_thresholds

    try:
        assert isinstance(load_thresholds(path, info), Thresholds)
        OUTCOMES["thresholds", "ok"] += 1
    except InputError as e:
        assert_one_line_naming(str(e), path)
        assert str(e).startswith(f"--thresholds {path}: ")
        OUTCOMES["thresholds", "error"] += 1


@settings(FUZZ, max_examples=300)
@given(st.dictionaries(st.sampled_from(THRESHOLD_KEYS) | st.text(max_size=6), THRESHOLD_VALUES, max_size=10),
       st.booleans())
def test_random_threshold_documents_load_or_fail_with_one_line(stories, data, complete):
    if complete:
        data = {"format": "sparsesim-thresholds", "version": 1, **data}
    path = stories["folder"] / "random.json"
    path.write_text(json.dumps(data))
    load_thresholds_or_explain(path, stories["info"])


@settings(FUZZ, max_examples=400)
@given(st.data())
def test_mutated_real_threshold_files_load_or_fail_with_one_line(stories, draw):
    path = stories["folder"] / "mutated.json"
    if draw.draw(st.integers(0, 3)) == 0:
        path.write_bytes(damage_bytes(stories["file"].read_bytes(), draw))
    else:
        path.write_text(json.dumps(mutate(json.loads(json.dumps(stories["doc"])), draw, THRESHOLD_VALUES)))
    load_thresholds_or_explain(path, stories["info"])


@settings(FUZZ, max_examples=30)
@given(st.data())
def test_mutated_threshold_files_through_the_trace_command(stories, tmp_path_factory, capsys, draw):
    path = stories["folder"] / "cli.json"
    if draw.draw(st.integers(0, 3)) == 0:
        path.write_bytes(damage_bytes(stories["file"].read_bytes(), draw))
    else:
        path.write_text(json.dumps(mutate(json.loads(json.dumps(stories["doc"])), draw, THRESHOLD_VALUES)))
    out = fresh_dir(tmp_path_factory) / "t.parquet"
    capsys.readouterr()
    rc = main(["trace", "--model", stories["model_dir"], "--text", "pydoc", "--thresholds", str(path), "--tokens", "64",
               "--window", "64", "--calib-tokens", "128", "--no-ppl", "-o", str(out)])
    err = capsys.readouterr().err
    assert rc in (0, 2), err
    OUTCOMES["trace command", "ok" if rc == 0 else "error"] += 1
    if rc == 2:
        assert err.startswith("sparsesim: error: ")
        assert_one_line_naming(err, path)
        assert not out.exists()
    else:
        from sparsesim.tracefile import read_trace

        assert read_trace(out).n_tokens == 64
    assert [p.name for p in out.parent.iterdir() if p.name != "t.parquet"] == []   # no temporary left
    shutil.rmtree(out.parent)


def test_the_real_threshold_file_round_trips(stories, tmp_path):
    """The unmutated file loads, so the fuzzers start from a valid document."""
    from sparsesim.tracing.thresholds import load_thresholds

    th = load_thresholds(stories["file"], stories["info"])
    assert th.method == "percentile" and len(th.thresholds) == stories["info"]["n_layers"]


def test_the_fuzzers_reach_both_outcomes():
    """Each fuzzed input kind produced valid cases and refused ones (else the fuzzer tests nothing)."""
    kinds = {kind for kind, _ in OUTCOMES}
    if not kinds:
        pytest.skip("run with the fuzz tests above")
    print(f"fuzz outcomes: {dict(sorted(OUTCOMES.items()))}")
    for kind in kinds:
        assert OUTCOMES[kind, "ok"] > 0 and OUTCOMES[kind, "error"] > 0, dict(OUTCOMES)
