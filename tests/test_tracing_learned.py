"""``sparsesim trace --learned-rank`` and ``--perturb`` on stories260K, as a user runs them (subprocess)."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")

from sparsesim.simulator.simulate import simulate  # noqa: E402
from sparsesim.tracefile import read_trace  # noqa: E402

REPO = Path(__file__).resolve().parents[1]

TRACE = ("--model", "stories260K", "--text", "pydoc", "--sparsity", "0.5", "--tokens", "512", "--window", "256",
         "--calib-tokens", "768", "--no-ppl")


def sparsesim(*args: str, shared_data: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "SPARSESIM_STORIES260K": str(shared_data / "llama2c-stories260K")}
    return subprocess.run([sys.executable, "-m", "sparsesim.experiments.cli", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)


def assert_clean_failure(result: subprocess.CompletedProcess, message: str, out: Path) -> None:
    """Exit 2, one ``sparsesim: error:`` line naming the problem, no output file."""
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sparsesim: error: ") and message in lines[0], result.stderr
    assert not out.exists() and not list(out.parent.glob(f".{out.name}*"))


def unpack(packed: np.ndarray) -> np.ndarray:
    return np.unpackbits(packed, axis=-1, bitorder="little").astype(bool)


@pytest.fixture(scope="module")
def learned(tmp_path_factory, shared_data) -> Path:
    out = tmp_path_factory.mktemp("learned") / "lr.parquet"
    r = sparsesim("trace", *TRACE, "--learned-rank", "8", "--learned-epochs", "5", "-o", str(out),
                  shared_data=shared_data)
    assert r.returncode == 0, r.stderr
    assert "pred:lowrank rank 8" in r.stdout
    return out


def test_learned_rank_writes_a_stored_prediction_trained_off_the_evaluation_span(learned, shared_data, tmp_path):
    trace = read_trace(learned)
    assert set(trace.extra) == {"lowrank"} and trace.extra["lowrank"].shape == trace.masks.shape
    assert not trace.extra["lowrank"][:, 0].any()                    # layer 0 has no earlier input
    assert trace.extra["lowrank"][:, 1:].any()
    lr, text = trace.meta["learned"]["lowrank"], trace.meta["text"]
    assert lr["kind"] == "lowrank-mlp" and lr["rank"] == 8 and lr["epochs"] == 5 and lr["input_offset"] == 1
    assert lr["train_rows"] is None and len(lr["d_ff"]) == trace.n_layers - 1
    # trained on the calibration span: same text, tokens [start, start + n), all after the evaluation span
    train, evaluation = lr["train_text"], text["evaluation"]
    assert train == text["calibration"] and train["sha256"] == evaluation["sha256"]
    assert train["tokens"] == lr["train_tokens"] == 768
    assert train["start"] >= evaluation["start"] + evaluation["tokens"] == 512
    assert lr["heldout"]["tokens"] == [512] * (trace.n_layers - 1)
    # the masks are exactly those of a plain trace (the predictor only reads the hidden states)
    from sparsesim.tracing.models import load_model
    from sparsesim.tracing.trace import trace_model

    plain = tmp_path / "plain.parquet"
    trace_model(out=plain, model=load_model(str(shared_data / "llama2c-stories260K")), text="pydoc", sparsity=0.5,
                tokens=512, window=256, calib_tokens=768, ppl=False)
    assert np.array_equal(read_trace(plain).masks, trace.masks) and not read_trace(plain).extra
    assert "learned" not in read_trace(plain).meta

    result = simulate(learned, predictor="stored", baselines=False)
    assert 0 < result["predictor_precision"] <= 1 and 0 < result["predictor_recall"] <= 1
    # the recorded held-out accuracy is that of the stored column against the evaluation masks
    for i, layer in enumerate(range(1, trace.n_layers)):
        truth, pred = unpack(trace.masks[:, layer]), unpack(trace.extra["lowrank"][:, layer])
        tp = int((truth & pred).sum())
        assert math.isclose(lr["heldout"]["precision"][i], tp / pred.sum())
        assert math.isclose(lr["heldout"]["recall"][i], tp / truth.sum())


def test_learned_rank_larger_than_d_model_is_one_line(shared_data, tmp_path):
    out = tmp_path / "t.parquet"
    r = sparsesim("trace", *TRACE, "--learned-rank", "65", "-o", str(out), shared_data=shared_data)
    assert_clean_failure(r, "--learned-rank 65: must be an integer in [1, d_model = 64]", out)


def test_perturb_aligns_with_its_base(learned, shared_data, tmp_path):
    out = tmp_path / "p.parquet"
    r = sparsesim("trace", "--perturb", str(learned), "--fraction", "0.2", "--seed", "3", "-o", str(out),
                  shared_data=shared_data)
    assert r.returncode == 0, r.stderr
    base, perturbed = read_trace(learned), read_trace(out)
    assert perturbed.n_tokens == base.n_tokens == 512
    assert np.array_equal(perturbed.seq, base.seq) and np.array_equal(perturbed.pos, base.pos)
    changed = perturbed.token != base.token
    assert changed.sum() == perturbed.meta["perturbation"]["replaced_tokens"] == round(0.2 * (512 - 2))
    assert not changed[base.pos == 0].any()
    p = perturbed.meta
    assert p["perturbation"]["fraction"] == 0.2 and p["perturbation"]["seed"] == 3
    assert p["sparsity"]["thresholds"] == base.meta["sparsity"]["thresholds"]
    assert "learned" not in p and not perturbed.extra            # the base's stored predictions are not re-traced
    measured = 1 - unpack(perturbed.masks).sum(axis=(0, 2)) / (512 * np.asarray(perturbed.d_ff))
    assert np.allclose(p["sparsity"]["measured"], measured)             # its own sparsity, not the base's


@pytest.mark.parametrize("args, message", [
    (("--perturb", "{base}", "--fraction", "0.2", "--sparsity", "0.5"), "it takes no --sparsity"),
    (("--perturb", "{base}"), "--perturb needs --fraction"),
    (("--perturb", "{base}", "--fraction", "1.5"), "--fraction 1.5: must be a number in [0, 1]"),
    (("--perturb", "{missing}", "--fraction", "0.2"), "no such file"),
    (("--model", "stories260K", "--sparsity", "0.5", "--seed", "1"), "--seed: only used with --perturb"),
    (("--model", "stories260K", "--sparsity", "0.5", "--learned-epochs", "3"), "--learned-epochs needs --learned-rank"),
])
def test_flag_conflicts_are_one_line(args, message, shared_data, tmp_path):
    """Checked before torch loads: fast."""
    base = tmp_path / "base.parquet"
    base.write_bytes(b"not read")
    out = tmp_path / "o.parquet"
    fill = {"base": str(base), "missing": str(tmp_path / "missing.parquet")}
    r = sparsesim("trace", *(a.format(**fill) for a in args), "-o", str(out), shared_data=shared_data)
    assert_clean_failure(r, message, out)
