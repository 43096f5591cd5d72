"""Zero-enforcing hooks, mask rules and threshold calibration on real stories260K weights."""

from __future__ import annotations

import json
import math
import types

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from sparsesim.errors import InputError  # noqa: E402
from sparsesim.tracefile import popcount_rows  # noqa: E402
from sparsesim.tracing.ffn import find_ffns, model_info  # noqa: E402
from sparsesim.tracing.forward import batch_inputs, hidden_states  # noqa: E402
from sparsesim.tracing.models import LoadedModel, load_model  # noqa: E402
from sparsesim.tracing.perplexity import evaluate  # noqa: E402
from sparsesim.tracing.sparsify import SparseFFN, ThresholdRule, TopKRule  # noqa: E402
from sparsesim.tracing.text import load_text, split_tokens, tokenize  # noqa: E402
from sparsesim.tracing.checks import check_sparsity  # noqa: E402
from sparsesim.tracing.thresholds import allocate, calibrate, load_thresholds  # noqa: E402

WINDOW = 512


@pytest.fixture(scope="module")
def stories(shared_data):
    return load_model(str(shared_data / "llama2c-stories260K"))


@pytest.fixture(scope="module")
def split(stories):
    src = load_text("pydoc")
    return src, split_tokens(tokenize(stories.tokenizer, src), src, eval_tokens=1024, calib_tokens=1024, window=WINDOW)


def cal(stories, split, **kw):
    src, s = split
    return calibrate(stories, s.calibration, window=WINDOW, text={**src.describe(), "start": s.calib_start}, **kw)


def eval_batch(stories, split):
    return batch_inputs(split[1].evaluation, WINDOW, stories.bos_id)[0]


@pytest.mark.parametrize("site", ["intermediate", "gate"])
def test_percentile_hits_target_on_evaluation_tokens(stories, split, site):
    th = cal(stories, split, method="percentile", site=site, target=0.5)
    assert th.layer_targets == [0.5] * 5 and all(t > 0 for t in th.thresholds)
    _, measured = evaluate(stories, split[1].evaluation, WINDOW, th)
    assert np.allclose(measured, 0.5, atol=0.03), measured


def test_zero_enforcing_changes_downstream_activations(stories, split):
    x = eval_batch(stories, split)[:1]
    seen = {}
    spy = stories.ffns[1].down.register_forward_pre_hook(lambda m, a: seen.setdefault(len(seen), a[0].clone()))
    hidden_states(stories, x)                                   # dense
    with SparseFFN(stories.ffns, "intermediate", ThresholdRule([0.2, 0, 0, 0, 0])):
        hidden_states(stories, x)                               # layer 0 sparsified only
    spy.remove()
    dense, sparse = seen[0], seen[1]
    assert (dense - sparse).abs().max() > 1e-3                  # layer 1 sees layer 0's zeros


@pytest.mark.parametrize("site", ["intermediate", "gate"])
def test_topk_gives_exact_per_token_counts(stories, split, site):
    x = eval_batch(stories, split)
    keep = [86, 60, 100, 17, 171]
    with SparseFFN(stories.ffns, site, TopKRule(keep), record=True) as hooks:
        hidden_states(stories, x)
    counts = popcount_rows(hooks.take_packed())                 # [B x T, L]
    assert (counts == np.array(keep)).all()


def test_global_allocation_meets_target(stories, split):
    th = cal(stories, split, method="global", site="intermediate", target=0.5)
    assert math.isclose(np.mean(th.layer_targets), 0.5, abs_tol=1e-9)
    assert th.details["chosen"] in ("greedy", "uniform")
    nll = th.details["calibration_nll_per_token"]
    assert nll[th.details["chosen"]] == min(nll.values())
    _, measured = evaluate(stories, split[1].evaluation, WINDOW, th)
    assert np.allclose(measured, th.layer_targets, atol=0.04), (measured, th.layer_targets)


def test_greedy_allocation_spares_the_sensitive_layer():
    grid = np.linspace(0, 1, 51)
    errors = np.stack([grid ** 2 * 10, grid ** 2, grid ** 2])     # layer 0 is 10x more sensitive
    levels = allocate(errors, [100, 100, 100], 0.4)
    assert math.isclose(np.mean(levels), 0.4, abs_tol=1e-9)
    assert levels[0] < levels[1] and levels[0] < levels[2] and max(levels) < 1
    weighted = allocate(errors, [300, 100, 100], 0.4)            # d_ff-weighted mean
    assert math.isclose(np.average(weighted, weights=[300, 100, 100]), 0.4, abs_tol=1e-9)


def test_thresholds_json_roundtrip(stories, split, tmp_path):
    th = cal(stories, split, method="percentile", site="gate", target=0.3)
    th.save(tmp_path / "t.json")
    back = load_thresholds(tmp_path / "t.json", stories.info)
    assert back == th
    x = eval_batch(stories, split)[:1]
    outs = []
    for t in (th, back):
        with SparseFFN(stories.ffns, t.site, t.rule(), record=True) as hooks:
            hidden_states(stories, x)
        outs.append(hooks.take_packed())
    assert np.array_equal(*outs)


@pytest.mark.parametrize("edit, message", [
    (lambda d: d.update(thresholds=d["thresholds"][:4]), "'thresholds' has 4 layers, model .* has 5"),
    (lambda d: d["thresholds"].__setitem__(2, float("nan")), r"'thresholds'\[2\] is nan, expected a finite number"),
    (lambda d: d["thresholds"].__setitem__(1, -0.5), r"'thresholds'\[1\] is -0.5, expected a value in \[0"),
    (lambda d: d.update(format="other"), "not a sparsesim thresholds file"),
    (lambda d: d.update(layer_targets=[1.5] * 5), r"'layer_targets'\[0\] is 1.5"),
])
def test_thresholds_json_validation(stories, split, tmp_path, edit, message):
    doc = cal(stories, split, method="percentile", site="intermediate", target=0.3).to_dict()
    edit(doc)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(InputError, match=message) as e:
        load_thresholds(path, stories.info)
    assert str(path) in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("value", [1.0, -0.1, float("nan"), 1.5])
def test_sparsity_must_be_in_unit_interval(value):
    with pytest.raises(InputError, match=r"must be a number in \[0, 1\)"):
        check_sparsity(value)


def test_natural_sparsity_of_a_relu_model():
    """Tiny random-init OPT (ReLU): natural zeros are measured and never active at threshold 0.
    Random weights are fine: ReLU zeros half its inputs whatever the weights."""
    torch.manual_seed(0)
    cfg = transformers.OPTConfig(num_hidden_layers=2, hidden_size=32, ffn_dim=64, num_attention_heads=2,
                                 vocab_size=64, max_position_embeddings=128, word_embed_proj_dim=32)
    model = transformers.OPTForCausalLM(cfg).eval()
    ffns = find_ffns(model, "opt")
    lm = LoadedModel("opt", model, types.SimpleNamespace(bos_token_id=2, eos_token_id=2), ffns,
                     model_info(model, ffns, "opt"))
    ids = np.random.default_rng(0).integers(3, 64, 256)
    th = calibrate(lm, ids, window=64, method="percentile", site="intermediate", target=0.0, text={})
    assert all(0.3 < z < 0.7 for z in th.natural), th.natural
    x = batch_inputs(ids, 64, 2)[0]
    with SparseFFN(ffns, "intermediate", th.rule(), record=True) as hooks:
        hidden_states(lm, x)
    measured = 1 - popcount_rows(hooks.take_packed()).mean(axis=0) / 64
    assert np.allclose(measured, th.natural, atol=1e-9)
