"""Trace writing, perplexity and inspect end to end on real stories260K weights (in-process)."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pd = pytest.importorskip("pandas")

import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from sparsesim.errors import InputError  # noqa: E402
from sparsesim.inspect_trace import format_summary, inspect_trace  # noqa: E402
from sparsesim.tracefile import read_trace  # noqa: E402
from sparsesim.tracing.forward import hidden_states, nll_sum, windows  # noqa: E402
from sparsesim.tracing.models import load_model  # noqa: E402
from sparsesim.tracing.perplexity import evaluate, ppl_curve  # noqa: E402
from sparsesim.tracing.text import load_text, split_tokens, tokenize  # noqa: E402
from sparsesim.tracing.trace import trace_model  # noqa: E402

WINDOW = 512
TOKENS = 2 * WINDOW + 100        # two full windows and a partial one


@pytest.fixture(scope="module")
def stories(shared_data):
    return load_model(str(shared_data / "llama2c-stories260K"))


@pytest.fixture(scope="module", params=["intermediate", "gate"])
def traced(request, stories, tmp_path_factory):
    tmp = tmp_path_factory.mktemp(request.param)
    meta = trace_model(out=tmp / "t.parquet", model=stories, text="pydoc", sparsity=0.5, site=request.param,
                       tokens=TOKENS, window=WINDOW, calib_tokens=1024, save_thresholds=tmp / "th.json")
    return tmp, meta


def reference_masks(lm, inputs: np.ndarray, thresholds: list[float], site: str) -> np.ndarray:
    """Independent re-implementation: plain hooks, keep |v| >= T, zero the rest by multiplication."""
    masks = []

    def apply(v, t):
        keep = v.abs() >= t if t > 0 else v != 0
        masks.append(keep[0].numpy().copy())
        return v * keep

    if site == "gate":
        handles = [f.act.register_forward_hook(lambda m, a, out, t=t: apply(out, t))
                   for f, t in zip(lm.ffns, thresholds)]
    else:
        handles = [f.down.register_forward_pre_hook(lambda m, a, t=t: (apply(a[0], t),))
                   for f, t in zip(lm.ffns, thresholds)]
    hidden_states(lm, torch.from_numpy(inputs)[None])
    for h in handles:
        h.remove()
    return np.packbits(np.stack(masks, axis=1), axis=-1, bitorder="little")


def test_trace_masks_equal_recomputation(traced, stories):
    tmp, meta = traced
    trace = read_trace(tmp / "t.parquet")
    src = load_text("pydoc")
    ids = split_tokens(tokenize(stories.tokenizer, src), src, eval_tokens=TOKENS, calib_tokens=1024,
                       window=WINDOW).evaluation
    wins = windows(ids, WINDOW, stories.bos_id)
    assert [len(w.inputs) for w in wins] == [512, 512, 100] and trace.n_tokens == TOKENS
    for w in wins:
        rows = trace.seq == w.index
        assert np.array_equal(trace.token[rows], w.inputs) and np.array_equal(trace.pos[rows], np.arange(len(w.inputs)))
        expect = reference_masks(stories, w.inputs, meta["sparsity"]["thresholds"], meta["sparsity"]["site"])
        assert np.array_equal(trace.masks[rows], expect)


def test_trace_metadata_and_pandas(traced, stories):
    tmp, meta = traced
    df = pd.read_parquet(tmp / "t.parquet")
    assert list(df.columns) == ["seq", "pos", "token", "layer", "mask", "active"] and len(df) == TOKENS * 5
    per_layer = 1 - df.groupby("layer")["active"].mean().to_numpy() / 172
    assert np.allclose(per_layer, meta["sparsity"]["measured"]) and np.allclose(per_layer, 0.5, atol=0.03)
    for key in ("name", "architecture", "n_layers", "d_model", "d_ff", "activation", "glu", "ffn_params",
                "non_ffn_params", "attention_params", "embedding_params", "lm_head_params", "vocab_size"):
        assert key in meta["model"]
    cal, ev = meta["text"]["calibration"], meta["text"]["evaluation"]
    assert cal["sha256"] == ev["sha256"] == load_text("pydoc").sha256
    assert ev["start"] + ev["tokens"] <= cal["start"] and (ev["window"], cal["window"]) == (WINDOW, WINDOW)
    assert {"sparsesim", "torch", "transformers"} <= set(meta["tools"])
    assert meta["config"]["sparsity"] == 0.5 and meta["sparsity"]["method"] == "percentile"
    ppl = meta["perplexity"]
    src = load_text("pydoc")
    ids = tokenize(stories.tokenizer, src)[:TOKENS]
    dense, _ = evaluate(stories, ids, WINDOW)
    assert math.isclose(ppl["dense"], dense.ppl, rel_tol=1e-6) and math.isfinite(ppl["sparse"])
    assert ppl["sparse"] != ppl["dense"]


def test_saved_thresholds_reproduce_the_trace(traced, stories):
    tmp, meta = traced
    again = trace_model(out=tmp / "again.parquet", model=stories, text="pydoc", tokens=TOKENS, window=WINDOW,
                        calib_tokens=1024, thresholds=tmp / "th.json", ppl=False)
    assert again["sparsity"]["thresholds"] == meta["sparsity"]["thresholds"] and again["perplexity"] is None
    assert np.array_equal(read_trace(tmp / "again.parquet").masks, read_trace(tmp / "t.parquet").masks)
    with pytest.raises(InputError, match="disagrees with --thresholds"):
        trace_model(out=tmp / "x.parquet", model=stories, sparsity=0.7, thresholds=tmp / "th.json", window=WINDOW)
    # Evaluating on the whole text would reuse the calibration tokens as evaluation tokens.
    with pytest.raises(InputError, match="overlap the evaluation span"):
        trace_model(out=tmp / "x.parquet", model=stories, tokens=None, calib_tokens=10, window=WINDOW,
                    thresholds=tmp / "th.json")
    assert not (tmp / "x.parquet").exists()


def test_chunked_head_nll_equals_full_logits(stories):
    ids = tokenize(stories.tokenizer, load_text("pydoc"))[:600]
    w = windows(ids, 600, stories.bos_id)[0]
    x, y = torch.from_numpy(w.inputs)[None], torch.from_numpy(w.targets)[None]
    with torch.inference_mode():
        full = torch.nn.functional.cross_entropy(stories.model(input_ids=x[:, :512]).logits[0], y[0, :512],
                                                 reduction="sum")
    assert math.isclose(nll_sum(stories, hidden_states(stories, x[:, :512]), y[:, :512]), float(full), rel_tol=1e-5)


def test_ppl_curve_csv_and_offline_html(stories, tmp_path):
    rows = ppl_curve(model=stories, text="pydoc", levels=[0.0, 0.5], methods=["percentile", "topk"],
                     window=WINDOW, tokens=1024, calib_tokens=1024, out=tmp_path / "curve.csv")
    with open(tmp_path / "curve.csv") as f:
        table = list(csv.DictReader(f))
    assert [(r["method"], float(r["target_sparsity"])) for r in table] == [
        ("percentile", 0.0), ("percentile", 0.5), ("topk", 0.0), ("topk", 0.5)]
    assert float(table[0]["ppl"]) == float(table[2]["ppl"]) < float(table[1]["ppl"])
    assert math.isclose(rows[3]["measured_sparsity"], 86 / 172)       # topk: exact
    html = (tmp_path / "curve.html").read_text()
    assert "plotly" in html and 'src="https://' not in html           # plotly.js inlined: works offline


def test_inspect_summary(traced):
    tmp, meta = traced
    info = inspect_trace(tmp / "t.parquet")
    assert info["tokens"] == TOKENS and info["sequences"] == 3 and info["mask_bytes"] == 22
    assert np.allclose(info["measured_sparsity"], meta["sparsity"]["measured"])
    text = format_summary(info)
    assert "LlamaForCausalLM" in text and "perplexity dense" in text and len(text.splitlines()) > 5 + 5


def test_inspect_rejects_truncated_and_foreign_files(traced, tmp_path):
    good = (traced[0] / "t.parquet").read_bytes()
    (tmp_path / "cut.parquet").write_bytes(good[: len(good) // 2])
    with pytest.raises(InputError, match="not a readable Parquet file"):
        inspect_trace(tmp_path / "cut.parquet")
    pq.write_table(pa.table({"a": [1, 2]}), tmp_path / "foreign.parquet")
    with pytest.raises(InputError, match="not a sparsesim trace"):
        inspect_trace(tmp_path / "foreign.parquet")
