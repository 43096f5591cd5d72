"""Gemma 3 270M (the default model), real weights: a small trace at 50 % sparsity.

The model comes from conftest's session fixture ``gemma_model`` (loaded once per session; the
first load ever dequantizes the GGUF into the user cache, ~60 s).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

pytest.importorskip("torch")
pd = pytest.importorskip("pandas")

from sparsesim.tracing.trace import trace_model  # noqa: E402

pytestmark = pytest.mark.gemma


def test_gemma_metadata(gemma_model):
    info = gemma_model.info
    assert (info["architecture"], info["n_layers"], info["d_model"], info["d_ff"]) == (
        "Gemma3ForCausalLM", 18, 640, [2048] * 18)
    assert info["glu"] and info["activation"] == "gelu_pytorch_tanh" and info["tied_embeddings"]
    assert info["lm_head_params"] == info["embedding_params"] == 262_144 * 640
    assert info["ffn_params"] == 18 * 3 * 640 * 2048
    assert info["ffn_params"] + info["non_ffn_params"] == info["total_params"] == 268_098_176


def test_gemma_trace_hits_target_on_evaluation_tokens(gemma_model, shared_data, tmp_path):
    out = tmp_path / "g.parquet"
    meta = trace_model(out=out, model=gemma_model, text=str(shared_data / "wikitext-2-raw" / "wiki.test.raw"),
                       sparsity=0.5, tokens=512, window=512, calib_tokens=1024)
    measured = np.asarray(meta["sparsity"]["measured"])
    assert np.all(np.abs(measured - 0.5) <= 0.03), measured
    df = pd.read_parquet(out, columns=["layer", "active"])
    assert len(df) == 512 * 18
    assert np.allclose(1 - df.groupby("layer")["active"].mean().to_numpy() / 2048, measured)
    ppl = meta["perplexity"]
    assert math.isfinite(ppl["dense"]) and 5 < ppl["dense"] < 100 and ppl["sparse"] > ppl["dense"]
