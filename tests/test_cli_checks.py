"""The command line respects the user's time: bad arguments fail before anything heavy loads, no default
that changes the answer goes unsaid, output is in human units and says where files went."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from sparsesim.experiments.cli import build_parser
from tracebuild import write_trace

REPO = Path(__file__).resolve().parents[1]

# (arguments, what the one-line error names): each must fail before torch (and so the model loader,
# whose module imports torch) is imported.
BAD = [
    (["trace", "--model", "no-such-model", "--sparsity", "0.5"], "--model no-such-model"),
    (["trace", "--text", "no-such-text.txt", "--sparsity", "0.5"], "--text no-such-text.txt"),
    (["trace", "--sparsity", "1.5"], "--sparsity 1.5"),
    (["trace", "--sparsity", "0.5", "--window", "0"], "--window 0"),
    (["trace", "--sparsity", "0.5", "--tokens", "100", "--window", "512"], "--tokens 100"),
    (["trace"], "--sparsity is required"),
    (["trace", "--sparsity", "0.5", "--thresholds", "no-such.json"], "--thresholds no-such.json"),
    (["ppl", "--model", "no-such-model"], "--model no-such-model"),
    (["ppl", "--text", "no-such-text.txt"], "--text no-such-text.txt"),
    (["ppl", "--levels", "0,1.5"], "1.5"),
    (["ppl", "--window", "0"], "--window 0"),
    (["ppl", "--method", "median"], "--method 'median'"),
]

PROBE = """
import io, json, sys, time, contextlib
from sparsesim.experiments.cli import main
results = []
for argv, out in json.loads(sys.argv[1]):
    err = io.StringIO()
    start = time.perf_counter()
    with contextlib.redirect_stderr(err):
        rc = main(argv + ["-o", out])
    results.append({"rc": rc, "stderr": err.getvalue(), "seconds": time.perf_counter() - start,
                    "torch": "torch" in sys.modules, "loader": "sparsesim.tracing.models" in sys.modules})
print(json.dumps(results))
"""


def test_bad_trace_and_ppl_arguments_fail_before_torch_or_the_model_loads(tmp_path):
    cases = [(argv, str(tmp_path / ("x.parquet" if argv[0] == "trace" else "c.csv"))) for argv, _ in BAD]
    probe = subprocess.run([sys.executable, "-c", PROBE, json.dumps(cases)], capture_output=True, text=True,
                           cwd=tmp_path, timeout=120)
    assert probe.returncode == 0, probe.stderr
    for (argv, message), result in zip(BAD, json.loads(probe.stdout)):
        lines = result["stderr"].strip().splitlines()
        assert result["rc"] == 2 and len(lines) == 1 and lines[0].startswith("sparsesim: error: "), (argv, result)
        assert message in lines[0], (argv, lines[0])
        assert not result["torch"] and not result["loader"], argv
    assert not list(tmp_path.iterdir())                        # nothing written


@pytest.fixture(scope="module")
def trace(tmp_path_factory):
    rng = np.random.default_rng(3)
    return write_trace(tmp_path_factory.mktemp("cli") / "t.parquet", rng.random((12, 3, 128)) < 0.3, d_model=64)


def sparsesim(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "sparsesim.experiments.cli", *map(str, args)], capture_output=True,
                          text=True, cwd=cwd or REPO, timeout=300)


def test_simulate_names_every_default_it_took_and_marks_bounds(trace, tmp_path):
    r = sparsesim("simulate", "--trace", trace, "--no-baselines")
    assert r.returncode == 0, r.stderr
    assert "defaults used: --profile apple-m1-max, --predictor oracle, --cache lru, --dram-budget 0.25" in r.stdout
    assert "[a bound: sees the future]" in r.stdout
    r = sparsesim("simulate", "--trace", trace, "--profile", "oneplus-12", "--predictor", "none", "--cache", "lru",
                  "--dram-budget", "0.5", "--no-baselines", "--json", tmp_path / "r.json")
    assert r.returncode == 0 and "defaults used" not in r.stdout and "a bound" not in r.stdout
    assert f"wrote {tmp_path / 'r.json'}" in r.stdout
    assert json.loads((tmp_path / "r.json").read_text())["predictor_sees_future"] is False
    r = sparsesim("simulate", "--trace", trace, "--dram-budget", "0.5", "--no-baselines", "--json", "-")
    assert json.loads(r.stdout)["profile"] == "apple-m1-max" and "defaults used: --profile" in r.stderr


def test_simulate_prints_human_units(trace):
    r = sparsesim("simulate", "--trace", trace, "--profile", "pixel-8", "--dram-budget", "0.5")
    assert r.returncode == 0, r.stderr
    assert not re.search(r"\d[eE][+-]?\d", r.stdout), r.stdout                 # no scientific notation
    for unit in (" ms  (p50", " MB  (useful", " mJ", "x / "):
        assert unit in r.stdout, unit


def test_one_default_window_for_trace_ppl_and_demo():
    from sparsesim.experiments import demo
    from sparsesim.tracing.checks import DEFAULT_WINDOW

    commands = build_parser()._subparsers._group_actions[0].choices
    helps = {name: commands[name].format_help() for name in ("trace", "ppl")}
    assert all(f"default {DEFAULT_WINDOW}" in " ".join(h.split()) for h in helps.values())
    assert demo.settings("m", 512)["window"] == DEFAULT_WINDOW == 512
    torch = pytest.importorskip("torch")   # noqa: F841 (the tracer's own default)
    from sparsesim.tracing.perplexity import resolve_window

    class Model:   # resolve_window reads only the context length
        max_positions, name = 32768, "m"
    assert resolve_window(Model(), None) == DEFAULT_WINDOW
