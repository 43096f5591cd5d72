"""``sparsesim trace | inspect`` as a user runs them (subprocess): success, and bad input handled as
one line on stderr, exit status 2 and no output file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

REPO = Path(__file__).resolve().parents[1]


def sparsesim(*args: str, shared_data: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "SPARSESIM_STORIES260K": str(shared_data / "llama2c-stories260K")}
    return subprocess.run([sys.executable, "-m", "sparsesim.experiments.cli", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)


def assert_clean_failure(result: subprocess.CompletedProcess, message: str, out: Path | None = None) -> None:
    """Exit 2, exactly one ``sparsesim: error:`` line naming the problem, no output (not even a temp file)."""
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sparsesim: error: ") and message in lines[0], result.stderr
    if out is not None:
        assert not out.exists()
        if out.parent.is_dir():
            assert not list(out.parent.glob(f".{out.name}*"))


def test_trace_then_inspect(shared_data, tmp_path):
    out = tmp_path / "t.parquet"
    r = sparsesim("trace", "--model", "stories260K", "--text", "pydoc", "--sparsity", "0.5", "--tokens", "512",
                  "--calib-tokens", "512", "-o", str(out), shared_data=shared_data)
    assert r.returncode == 0, r.stderr
    assert "measured sparsity" in r.stdout and out.exists()
    r = sparsesim("inspect", str(out), "--json", shared_data=shared_data)
    info = json.loads(r.stdout)
    assert info["tokens"] == 512 and info["model"]["n_layers"] == 5 and abs(info["measured_sparsity_mean"] - 0.5) < 0.03


@pytest.fixture(scope="module")
def unknown_arch_dir(tmp_path_factory, shared_data):
    """A saved tiny Mamba (random init: only its structure matters — it has no FFN at all)."""
    d = tmp_path_factory.mktemp("mamba")
    cfg = transformers.MambaConfig(num_hidden_layers=2, hidden_size=16, state_size=4, vocab_size=512)
    transformers.MambaForCausalLM(cfg).save_pretrained(d)
    from sparsesim.tracing.llama2c import load_llama2c
    load_llama2c(shared_data / "llama2c-stories260K")[1].save_pretrained(d)
    return d


BAD_TRACE_ARGS = {   # flags overriding the good command line; None drops a flag
    "missing model": ({"--model": "/nonexistent/model"}, "no such file or directory"),
    "unknown architecture": ({"--model": "{mamba}"}, "unknown FFN structure"),
    "text shorter than a window": ({"--text": "{short}"}, "too short for 512 evaluation tokens"),
    "sparsity 1": ({"--sparsity": "1.0"}, "--sparsity 1.0: must be a number in [0, 1)"),
    "sparsity negative": ({"--sparsity": "-0.1"}, "--sparsity -0.1: must be a number in [0, 1)"),
    "unwritable output": ({"-o": "{blocker}/t.parquet"}, "is not writable"),
    "NaN threshold": ({"--sparsity": None, "--thresholds": "{nan_json}"}, "expected a finite number"),
}


@pytest.mark.parametrize("case", BAD_TRACE_ARGS)
def test_trace_bad_input(case, shared_data, tmp_path, unknown_arch_dir):
    (tmp_path / "short.txt").write_text("Once upon a time there was a tiny text.\n")
    (tmp_path / "blocker").write_text("a file where a directory is expected")
    (tmp_path / "nan.json").write_text(json.dumps({
        "format": "sparsesim-thresholds", "version": 1, "method": "percentile", "site": "intermediate",
        "target": 0.5, "layer_targets": [0.5] * 5, "thresholds": [0.1, float("nan"), 0.1, 0.1, 0.1],
        "d_ff": [172] * 5}))
    fill = {"mamba": str(unknown_arch_dir), "short": str(tmp_path / "short.txt"),
            "blocker": str(tmp_path / "blocker"), "nan_json": str(tmp_path / "nan.json")}
    override, message = BAD_TRACE_ARGS[case]
    flags = {"--model": "stories260K", "--text": "pydoc", "--sparsity": "0.5", "--tokens": "512",
             "-o": str(tmp_path / "t.parquet"), **override}
    argv = [part for key, value in flags.items() if value is not None for part in (key, value.format(**fill))]
    r = sparsesim("trace", *argv, shared_data=shared_data)
    assert_clean_failure(r, message, Path(flags["-o"].format(**fill)))


def test_inspect_truncated_and_foreign_parquet(shared_data, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "cut.parquet").write_bytes(b"PAR1" + b"\0" * 100)
    pq.write_table(pa.table({"a": [1, 2]}), tmp_path / "foreign.parquet")
    assert_clean_failure(sparsesim("inspect", str(tmp_path / "cut.parquet"), shared_data=shared_data),
                         "not a readable Parquet file")
    assert_clean_failure(sparsesim("inspect", str(tmp_path / "foreign.parquet"), shared_data=shared_data),
                         "not a sparsesim trace")
