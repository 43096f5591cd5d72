"""Tracing mixture-of-experts models by structure (tracing/moe.py, tracing/expert_trace.py).

No pretrained MoE model installs offline, so every family here is a tiny RANDOM-INITIALISED model
built from transformers' own config classes (tests/moebuild.py): these tests are about shapes and
plumbing only. They check that each family's expert banks, shared experts and dense layers are
found by structure, and that the trace records exactly the experts the model's own router chose:
the recorded top-k is compared with the model's ``router_logits`` (``output_router_logits=True``).
The text is real (WikiText-2) and tokenized with the stories260K tokenizer.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from moebuild import FAMILIES, tiny_moe  # noqa: E402

from sparsesim.errors import InputError  # noqa: E402
from sparsesim.tracefile import read_trace  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TOKENS, WINDOW = 96, 32


@pytest.fixture(scope="module")
def tokenizer(shared_data):
    from sparsesim.tracing.llama2c import load_llama2c

    return load_llama2c(shared_data / "llama2c-stories260K")[1]


@pytest.fixture(scope="module")
def wikitext(shared_data) -> str:
    return str(shared_data / "wikitext-2-raw" / "wiki.test.raw")


def reference_topk(family: str, model, moe_layer: int, logits: torch.Tensor, k: int) -> torch.Tensor:
    """The experts each token should run, from the model's own router_logits [tokens, experts].

    Softmax, sigmoid and Gemma 4's probabilities are monotone in the logits, so the top-k of the
    logits is the choice; DeepSeek-V3 picks from the best groups, ranking sigmoid + correction bias.
    """
    if family != "deepseek_v3":
        return torch.topk(logits, k, dim=-1).indices
    gate = model.model.layers[moe_layer].mlp.gate
    scores = logits.sigmoid() + gate.e_score_correction_bias
    groups = scores.view(len(scores), gate.num_group, -1)
    best = torch.topk(groups.topk(2, dim=-1).values.sum(-1), gate.topk_group, dim=-1).indices
    allowed = torch.zeros_like(groups[..., 0], dtype=torch.bool).scatter_(1, best, True)
    masked = scores.masked_fill(~allowed.repeat_interleave(groups.shape[-1], dim=1), float("-inf"))
    return torch.topk(masked, k, dim=-1).indices


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_trace_records_the_routers_top_k(family, tokenizer, wikitext, tmp_path):
    from sparsesim.tracing.models import describe
    from sparsesim.tracing.trace import trace_model

    _, count, top_k, shared = FAMILIES[family]
    model = tiny_moe(family)
    lm = describe(model, tokenizer, family)
    assert [l.n_experts for l in lm.moe] == count and lm.info["top_k"] == top_k
    assert [len(l.shared) for l in lm.moe] == shared
    out = tmp_path / f"{family}.parquet"
    trace_model(out=out, model=lm, text=wikitext, tokens=TOKENS, window=WINDOW, ppl=False)
    trace = read_trace(out)
    units = trace.units
    assert units.kind == "expert" and list(units.count) == count and list(units.top_k) == top_k
    assert list(units.shared) == shared and units.dense_layers == tuple(i for i, c in enumerate(count) if c == 0)
    assert trace.n_tokens == TOKENS and trace.route.shape == (TOKENS, 3, max(top_k))
    weights = trace.columns["route_weight"]
    for layer, k in enumerate(top_k):
        if k:   # rank order: weights never increase along a token's top-k
            assert np.all(np.diff(weights[:, layer, :k], axis=-1) <= 0)
            assert units.routed_unit_bytes(layer, bytes_per_weight=2) == 2 * lm.moe[layer].expert_params
    moe_layers = [i for i, c in enumerate(count) if c]
    checked = 0
    for s in np.unique(trace.seq):
        rows = trace.seq == s
        ids = torch.from_numpy(trace.token[rows].astype(np.int64))[None]
        with torch.inference_mode():
            router_logits = model(input_ids=ids, output_router_logits=True, use_cache=False).router_logits
        assert len(router_logits) == len(moe_layers)
        for logits, layer in zip(router_logits, moe_layers):
            expected = reference_topk(family, model, layer, logits.float(), top_k[layer]).sort(dim=-1).values
            recorded = np.sort(trace.route[rows, layer, :top_k[layer]], axis=-1)
            assert np.array_equal(recorded, expected.numpy()), (family, s, layer)
            checked += int(rows.sum())
    assert checked == TOKENS * len(moe_layers)


def test_dense_tracing_refuses_expert_layers(tokenizer):
    """The neuron tracer never mistakes a shared expert for the layer's FFN."""
    from sparsesim.tracing.ffn import find_ffns

    with pytest.raises(InputError, match="mixture-of-experts layers .*model.layers.1.mlp.experts"):
        find_ffns(tiny_moe("qwen2_moe"), "qwen2_moe")


@pytest.fixture(scope="module")
def saved_moe(tmp_path_factory, tokenizer) -> Path:
    """A tiny random Qwen2-MoE saved as a Hugging Face directory: what a user's checkpoint looks like."""
    d = tmp_path_factory.mktemp("qwen2moe")
    tiny_moe("qwen2_moe").save_pretrained(d)
    tokenizer.save_pretrained(d)
    return d


def _cli(*args) -> subprocess.CompletedProcess:
    env = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "sparsesim.experiments.cli", *map(str, args)], capture_output=True,
                          text=True, env=env, cwd=REPO, timeout=600)


def test_trace_cli_on_a_checkpoint_directory(saved_moe, wikitext, tmp_path):
    out = tmp_path / "t.parquet"
    r = _cli("trace", "--model", saved_moe, "--text", wikitext, "--tokens", TOKENS, "--window", WINDOW, "-o", out)
    assert r.returncode == 0, r.stderr
    assert "experts" in r.stdout and "top-2" in r.stdout and "pred:router-ahead for layers 2;" in r.stdout
    trace = read_trace(out)
    assert trace.units.kind == "expert" and trace.n_tokens == TOKENS
    assert trace.meta["perplexity"]["dense"] == trace.meta["perplexity"]["sparse"] > 1
    info = json.loads(_cli("inspect", out, "--json").stdout)
    assert info["units"]["count"] == [0, 8, 8] and info["dense_layers"] == [0]


def test_neuron_flags_on_an_moe_model_are_one_line_errors(saved_moe, wikitext, tmp_path):
    r = _cli("trace", "--model", saved_moe, "--text", wikitext, "--sparsity", "0.5", "-o", tmp_path / "t.parquet")
    assert r.returncode == 2 and r.stderr.count("\n") == 1
    assert "mixture-of-experts model" in r.stderr and "--sparsity" in r.stderr
    assert not (tmp_path / "t.parquet").exists()


@pytest.mark.parametrize("family", ["qwen3_moe", "mixtral", "olmoe", "deepseek_v3", "gemma4"])
def test_router_ahead_is_the_next_layers_router_on_this_layers_moe_input(family, tokenizer, wikitext, tmp_path):
    """The stored pred:router-ahead row of layer l is the top-k of layer l's router on the hidden state that
    entered layer l-1's MoE block, recomputed here from hooks and the router weights (a plain linear router:
    Qwen3-MoE, Mixtral, OLMoE; DeepSeek-V3's grouped router is checked through its own gate). Gemma 4 routes
    inside the decoder layer: no prediction is stored. Random weights: plumbing only."""
    from sparsesim.simulator.simulate import simulate
    from sparsesim.tracing.models import describe
    from sparsesim.tracing.trace import trace_model

    model = tiny_moe(family)
    lm = describe(model, tokenizer, family)
    out = tmp_path / f"{family}.parquet"
    trace_model(out=out, model=lm, text=wikitext, tokens=TOKENS, window=WINDOW, ppl=False)
    trace = read_trace(out)
    if family == "gemma4":
        assert "router-ahead" not in trace.extra and "learned" not in trace.meta
        return
    learned = trace.meta["learned"]["router-ahead"]
    moe = [i for i, c in enumerate(FAMILIES[family][1]) if c]
    assert learned["input_offset"] == 1 and learned["train_rows"] is None
    assert learned["layers"] == [l for l in moe if l - 1 in moe]
    k = trace.units.top_k
    for s in np.unique(trace.seq):
        rows = trace.seq == s
        inputs = {}
        hooks = [model.model.layers[l].mlp.register_forward_pre_hook(
            lambda m, a, l=l: inputs.__setitem__(l, a[0].reshape(-1, a[0].shape[-1]))) for l in moe]
        with torch.inference_mode():
            model(input_ids=torch.from_numpy(trace.token[rows].astype(np.int64))[None], use_cache=False)
        for h in hooks:
            h.remove()
        for layer in learned["layers"]:
            gate = model.model.layers[layer].mlp.gate
            x = inputs[layer - 1].float()
            with torch.inference_mode():
                logits = torch.nn.functional.linear(x, gate.weight.float())
                expected = (reference_topk(family, model, layer, logits, k[layer]) if family == "deepseek_v3"
                            else torch.topk(logits, k[layer], dim=-1).indices)
            bits = np.unpackbits(trace.extra["router-ahead"][rows, layer], axis=-1, bitorder="little")
            assert np.array_equal(bits[:, :trace.units.count[layer]],
                                  np.eye(trace.units.count[layer], dtype=np.uint8)[expected.numpy()].sum(1)), (s, layer)
        assert not trace.extra["router-ahead"][rows][:, [l for l in range(3) if l not in learned["layers"]]].any()
    r = simulate(trace, "oneplus-15r", "stored:name=router-ahead", "lru", settings=["cache_budget=1MiB", "precision=fp32"],
                 baselines=False)
    assert r["prefetch_requested"] == sum(k[l] for l in learned["layers"]) * TOKENS and not r["predictor_sees_future"]
    with pytest.raises(InputError, match="use a lookahead <= 1"):
        simulate(trace, "oneplus-15r", "stored:name=router-ahead", "lru", baselines=False,
                 settings=["cache_budget=1MiB", "precision=fp32", "lookahead=2"])
