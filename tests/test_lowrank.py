"""The learned low-rank predictor on real stories260K hidden states: held-out accuracy only."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from sparsesim.experiments.predictability import analyze  # noqa: E402
from sparsesim.errors import InputError  # noqa: E402
from sparsesim.tracefile import TraceWriter  # noqa: E402
from sparsesim.tracing.forward import hidden_states  # noqa: E402
from sparsesim.tracing.lowrank import (HiddenCapture, accuracy, capture_ffn_inputs, lowrank_meta, predict_lowrank,  # noqa: E402
                             train_heldout, train_lowrank)
from sparsesim.tracing.models import load_model  # noqa: E402
from sparsesim.tracing.sparsify import SparseFFN, TopKRule  # noqa: E402
from sparsesim.tracing.text import load_text, tokenize  # noqa: E402

WINDOW, WINDOWS = 256, 6            # 1536 tokens: 1024 to train on, 512 held out
RANK, EPOCHS = 16, 15


@pytest.fixture(scope="module")
def stories(shared_data):
    return load_model(str(shared_data / "llama2c-stories260K"))


@pytest.fixture(scope="module")
def sparse_pass(stories):
    """One forward of the 50 %-sparse model (top-k per token): FFN inputs and masks of the same tokens."""
    ids = tokenize(stories.tokenizer, load_text("pydoc"))[: WINDOW * WINDOWS]
    x = torch.from_numpy(ids.astype(np.int64)).reshape(WINDOWS, WINDOW)
    keep = [f.d_ff // 2 for f in stories.ffns]
    with SparseFFN(stories.ffns, "intermediate", TopKRule(keep), record=True) as hooks, \
            HiddenCapture(stories.ffns) as capture:
        hidden_states(stories, x)
        packed = hooks.take_packed()                                   # [N, L, n_bytes]
        hidden = capture.take()                                        # per layer [N, d_model]
    d_ff = stories.ffns[0].d_ff
    masks = np.unpackbits(packed, axis=-1, bitorder="little", count=d_ff).astype(bool)
    return ids, hidden, [torch.from_numpy(masks[:, l]) for l in range(len(stories.ffns))], packed


def test_capture_matches_a_plain_forward(stories, sparse_pass):
    """Without sparsity hooks the first layer's FFN input is the same function of the tokens."""
    ids, hidden, _, _ = sparse_pass
    first = capture_ffn_inputs(stories.model, torch.from_numpy(ids[:WINDOW].astype(np.int64))[None], stories.ffns)
    assert len(first) == len(stories.ffns) and first[0].shape == (WINDOW, stories.info["d_model"])
    torch.testing.assert_close(first[0], hidden[0][:WINDOW])   # layer 0's input precedes any zeroing


def test_reported_accuracy_is_on_unseen_tokens_only(sparse_pass, stories):
    _, hidden, masks, _ = sparse_pass
    n = len(masks[0])
    train_rows, eval_rows = np.arange(0, 1024), np.arange(1024, n)
    assert not set(train_rows) & set(eval_rows)
    models, report = train_heldout(hidden, masks, train_rows, eval_rows, RANK, EPOCHS, seed=0)
    for layer, (model, r) in enumerate(zip(models, report)):
        assert model.train_tokens == len(train_rows) and r["tokens"] == len(eval_rows)
        held_out = accuracy(predict_lowrank(model, hidden[layer][eval_rows]), masks[layer][eval_rows])
        assert r == held_out                             # the report is exactly the eval-token accuracy
        seen = accuracy(predict_lowrank(model, hidden[layer][train_rows]), masks[layer][train_rows])
        assert seen != held_out
        assert r["f1"] > 0.6                             # better than a coin at 50 % density
    meta = lowrank_meta(models, input_offset=0, train_rows=(0, 1024), heldout=report)
    d_model, d_ff = stories.info["d_model"], stories.ffns[0].d_ff
    assert meta["params_per_layer"][0] == d_model * RANK + RANK * d_ff + d_ff
    assert meta["flops_per_layer"] == 2 * (d_model * RANK + RANK * d_ff)
    assert meta["train_tokens"] == 1024 and meta["heldout"]["tokens"] == [len(eval_rows)] * len(models)
    with pytest.raises(InputError, match="both the training and the evaluation"):
        train_heldout(hidden, masks, np.arange(0, 600), np.arange(500, n), RANK, 1)


def test_rank_must_fit_d_model(sparse_pass, stories):
    _, hidden, masks, _ = sparse_pass
    with pytest.raises(InputError, match="d_model") as e:
        train_lowrank(hidden[0], masks[0], stories.info["d_model"] + 1, 1)
    assert "\n" not in str(e.value)


def test_stored_predictions_end_to_end(tmp_path, sparse_pass, stories):
    """The wiring the tracer uses: layer l predicted from layer l-1's FFN input (input_offset 1, so
    usable one layer ahead), trained on the first 1024 tokens, stored as ``pred:lowrank``; the
    analysis scores it on the other 512 tokens only."""
    ids, hidden, masks, packed = sparse_pass
    L, n = len(masks), len(ids)
    train = np.arange(1024)
    predicted = np.zeros_like(packed)
    models = []
    for layer in range(1, L):
        model = train_lowrank(hidden[layer - 1][train], masks[layer][train], RANK, EPOCHS, seed=layer)
        models.append(model)
        predicted[:, layer] = np.packbits(predict_lowrank(model, hidden[layer - 1]).numpy(), axis=-1,
                                          bitorder="little")
    meta = {"model": stories.info, "learned": {"lowrank": lowrank_meta(models, input_offset=1, train_rows=(0, 1024))}}
    path = tmp_path / "learned.parquet"
    with TraceWriter(path, meta, extra=("lowrank",)) as w:
        w.write(np.arange(n) // WINDOW, np.arange(n) % WINDOW, ids, packed, {"lowrank": predicted})
    result = analyze(path, tmp_path / "out", predictors=["stored:name=lowrank"])
    rows = result["tables"]["predictor_layers"]
    assert rows[0]["issued"] == 0                               # layer 0 has no earlier input
    assert all(r["issued"] == n - 1024 for r in rows[1:])       # unseen tokens only
    assert all(r["recall"] > 0.5 for r in rows[1:])
