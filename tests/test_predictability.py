"""``sparsesim analyze``: metrics by hand on a tiny trace, the report and its CSVs, bad input."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from sparsesim.experiments import cli
from sparsesim.experiments.predictability import analyze, hot_fraction, perturbation_rows, similarity_rows, split_predictors
from sparsesim.errors import InputError
from sparsesim.simulator.synth import synthesize
from sparsesim.tracefile import read_trace
from tracebuild import write_trace

D = 8
LAYER0 = [{0, 1, 2}, {1, 2, 3}, {0, 1, 6}, {2, 3}]
LAYER1 = [{4, 5}, {5, 6}, {4, 7}, {4, 5, 6}]
IDS = [5, 7, 5, 5]


def active_of(layers: list[list[set[int]]]) -> np.ndarray:
    out = np.zeros((len(layers[0]), len(layers), D), dtype=bool)
    for l, sets in enumerate(layers):
        for t, members in enumerate(sets):
            out[t, l, list(members)] = True
    return out


@pytest.fixture
def small(tmp_path):
    return write_trace(tmp_path / "small.parquet", active_of([LAYER0, LAYER1]), d_model=16, tokens=np.array(IDS))


def test_similarity_by_hand(small):
    """Layer 0, consecutive pairs: |{1,2}|/|{0,1,2,3}| = .5, |{1}|/|{0,1,2,3,6}| = .2, 0/5 = 0 -> mean .7/3.
    Same id at positions > 0: only id 5 at tokens 2, 3: layer 0 0/5 = 0; layer 1 |{4}|/|{4,5,6,7}| = .25.
    Hot neurons, layer 0: counts n1 3, n2 3, n0 2, n3 2, n6 1 (11 in all); 80 % = 8.8 needs 3+3+2+2,
    i.e. 4 of 8 neurons = .5. Layer 1: n4 3, n5 3, n6 2, n7 1 (9); 7.2 needs 3+3+2: 3 of 8."""
    rows = similarity_rows(read_trace(small))
    assert rows[0]["consecutive_jaccard"] == pytest.approx(0.7 / 3)
    assert rows[0]["same_id_jaccard"] == 0.0 and rows[1]["same_id_jaccard"] == pytest.approx(0.25)
    assert rows[0]["hot_fraction_80"] == 0.5 and rows[1]["hot_fraction_80"] == 3 / 8
    assert rows[0]["density"] == pytest.approx(11 / 32)
    assert rows[0]["next_layer_jaccard"] == 0.0      # layer 0 and layer 1 never share an index here
    assert hot_fraction(np.array([5, 0, 0, 0])) == 0.25


def test_perturbation_match_rate_by_hand(tmp_path, small):
    """Token 2 replaced (id 9) and its layer-0 set {0,1,6} became {0,1}: Jaccard 2/3 there, 1 elsewhere.
    Layer 0: all positions (1+1+2/3+1)/4, replaced 2/3, unchanged 1; layer 1 unchanged: 1."""
    layers = [list(LAYER0), LAYER1]
    layers[0][2] = {0, 1}
    other = write_trace(tmp_path / "p.parquet", active_of(layers), d_model=16, tokens=np.array([5, 7, 9, 5]))
    rows = perturbation_rows(read_trace(small), [read_trace(other)])
    assert rows[0]["match_rate"] == pytest.approx((3 + 2 / 3) / 4)
    assert rows[0]["match_rate_replaced"] == pytest.approx(2 / 3)
    assert rows[0]["match_rate_unchanged"] == 1.0 and rows[1]["match_rate"] == 1.0
    assert rows[0]["replaced_tokens"] == 1 and rows[0]["fraction"] == 0.25
    shorter = write_trace(tmp_path / "short.parquet", active_of([LAYER0[:3], LAYER1[:3]]), d_model=16)
    with pytest.raises(InputError, match="does not align"):
        perturbation_rows(read_trace(small), [read_trace(shorter)])


def test_split_predictors():
    assert split_predictors("window:k=4,threshold=0.5,previous-token,noisy-oracle:fn=0.1,fp=0.2") == \
        ["window:k=4,threshold=0.5", "previous-token", "noisy-oracle:fn=0.1,fp=0.2"]
    with pytest.raises(InputError):
        split_predictors("k=4,window")


def read_csv(path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


def floats(values) -> np.ndarray:
    return np.array([float(v) for v in values])


def test_report_renders_and_plots_its_tables(tmp_path):
    common = dict(layers=3, d_model=32, d_ff=64, tokens=120, active=0.25, persistence=0.6, hot_skew=0.5,
                  progress=False)
    trace = synthesize(tmp_path / "eval.parquet", seed=1, **common)
    train = synthesize(tmp_path / "train.parquet", seed=2, **common)
    result = analyze(trace, tmp_path / "out", train=train, perturbed=[train])
    html = (tmp_path / "out" / "report.html").read_text()
    assert html.count("plotly-graph-div") >= 6 and "<table>" in html and "Perturbation match rate" in html
    assert html.count("plotly.js v") == 1          # plotly.js inlined exactly once, nothing from a CDN
    figs = result["figures"]
    layers = read_csv(result["paths"]["predictor_layers"])
    assert {r["predictor"] for r in layers} == {"dense", "previous-token", "window:k=4", "token-lookup", "static-hot",
                                                "layer-ahead", "first-layer", "pattern-codebook"}
    for name, column in (("precision", "precision"), ("recall", "recall")):
        for line in figs[name].data:
            rows = [r for r in layers if r["predictor"] == line.name]
            np.testing.assert_array_equal(floats(line.y), floats(r[column] for r in rows))
    summary = read_csv(result["paths"]["predictors"])
    for bar, column in zip(figs["predictors"].data, ("precision_mean", "recall_mean", "f1_mean")):
        assert list(bar.x) == [r["predictor"] for r in summary]
        np.testing.assert_array_equal(floats(bar.y), floats(r[column] for r in summary))
    similarity = read_csv(result["paths"]["similarity"])
    for line in figs["similarity"].data:
        np.testing.assert_array_equal(floats(line.y), floats(r[line.name] for r in similarity))
    np.testing.assert_array_equal(floats(figs["concentration"].data[0].y),
                                  floats(r["hot_fraction_80"] for r in similarity))
    perturbation = read_csv(result["paths"]["perturbation"])
    np.testing.assert_array_equal(floats(figs["perturbation"].data[0].y), floats(r["match_rate"] for r in perturbation))
    dense = next(r for r in summary if r["predictor"] == "dense")
    assert float(dense["recall_mean"]) == 1.0
    # Bytes per token: every neuron of 3 layers x 64 at 3 matrices x 32 weights x 2 bytes (fp16).
    assert float(dense["fetch_bytes_per_token"]) == 3 * 64 * 3 * 32 * 2


def one_line_error(excinfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    return message


def test_bad_inputs_are_one_line_errors(tmp_path, small):
    other_shape = write_trace(tmp_path / "other.parquet", np.zeros((4, 3, 16), dtype=bool), d_model=16)
    with pytest.raises(InputError, match="another model shape") as e:
        analyze(small, tmp_path / "out", train=other_shape)
    one_line_error(e)
    empty = write_trace(tmp_path / "empty.parquet", np.zeros((0, 2, D), dtype=bool), d_model=16)
    with pytest.raises(InputError, match="no tokens") as e:
        analyze(empty, tmp_path / "out")
    one_line_error(e)
    with pytest.raises(InputError, match="training") as e:
        analyze(small, tmp_path / "out", predictors=["static-hot"])
    one_line_error(e)


def test_cli_exits_2_with_one_line(tmp_path, small, monkeypatch, capsys):
    monkeypatch.setattr(cli, "COMMAND_MODULES", ("sparsesim.experiments.predictability",))
    empty = write_trace(tmp_path / "empty.parquet", np.zeros((0, 2, D), dtype=bool), d_model=16)
    assert cli.main(["analyze", empty, "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no tokens" in err
    assert cli.main(["analyze", small, "--predictors", "previous-token,window:k=2", "-o", str(tmp_path / "ok")]) == 0
    assert (tmp_path / "ok" / "report.html").exists()


def test_perturbation_traces_of_stories260k(tmp_path, shared_data):
    """Real model: re-traced unchanged tokens match exactly; a causal model's masks before the first
    replaced position of a window are identical; the replaced share is as asked."""
    pytest.importorskip("torch")
    from sparsesim.tracing.models import load_model
    from sparsesim.tracing.perturb import trace_perturbed
    from sparsesim.tracing.trace import trace_model

    stories = load_model(str(shared_data / "llama2c-stories260K"))
    base = tmp_path / "base.parquet"
    trace_model(out=base, model=stories, text="pydoc", sparsity=0.5, tokens=512, window=256, calib_tokens=512,
                ppl=False)
    same, perturbed = tmp_path / "p0.parquet", tmp_path / "p20.parquet"
    trace_perturbed(base, same, 0.0, model=stories)
    meta = trace_perturbed(base, perturbed, 0.2, seed=1, model=stories)
    assert meta["perturbation"]["replaced_tokens"] == round(0.2 * (512 - 2))   # BOS of both windows kept
    rows = {r["perturbed"]: r for r in analyze(base, tmp_path / "out", predictors=["previous-token"],
                                               perturbed=[same, perturbed])["tables"]["perturbation"]
            if r["layer"] == 0}
    assert rows["p0.parquet"]["match_rate"] == 1.0
    assert rows["p20.parquet"]["match_rate"] < 1.0 and rows["p20.parquet"]["fraction"] == 0.2
    original, changed = read_trace(base), read_trace(perturbed)
    first_change = np.flatnonzero(changed.token != original.token)[0]
    assert np.array_equal(original.masks[:first_change], changed.masks[:first_change])
