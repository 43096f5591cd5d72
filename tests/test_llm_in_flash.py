"""LLM in a Flash Table 2 reproduced within 10 % per row (see experiments/reproductions/llm_in_flash.py)."""

import pytest

from experiments.reproductions import llm_in_flash


@pytest.fixture(scope="module")
def rows(tmp_path_factory):
    trace = llm_in_flash.make_trace(str(tmp_path_factory.mktemp("lif") / "opt.parquet"))
    return {r["row"]: r for r in llm_in_flash.run(trace)}


@pytest.mark.parametrize("row", list(llm_in_flash.PUBLISHED_MS))
def test_table2_row_within_10_percent(rows, row):
    assert abs(rows[row]["error"]) <= 0.10, rows[row]


def test_window_loads_the_published_share(rows):
    # LLM in a Flash: windowing cuts the per-token load from ~10 % of the FFN to 2.4 %.
    assert rows["predictor"]["ffn_share_loaded"] == pytest.approx(0.10, abs=0.005)
    assert rows["window"]["ffn_share_loaded"] == pytest.approx(0.024, abs=0.003)


@pytest.mark.parametrize("persistence, source", [
    (0.737, "derived from LLM in a Flash's own 10 % -> 2.4 % (OPT-6.7B, ReLU)"),
    (0.322, "measured on Gemma 3 270M at 90 % sparsity (WikiText-2, 1024 tokens, mean over 18 layers)"),
])
def test_window_share_follows_persistence(tmp_path, persistence, source):
    """With a = 10 % active and copy probability c = (P - a) / (1 - a), the sticky-neuron model
    predicts that window k loads (1 - a) (1 - c) a q^(k-1) of the FFN per token, q = c + (1 - c)(1 - a).
    The replay must load that share: 2.4 % at P = 0.737 (the paper's value) and 5.4 % at the
    persistence measured on Gemma, whose thresholded GeGLU activity is far less persistent."""
    from simulator.simulate import simulate
    from simulator.synth import synthesize

    a, k = 0.1, 4
    c = (persistence - a) / (1 - a)
    q = c + (1 - c) * (1 - a)
    expected = (1 - a) * (1 - c) * a * q ** (k - 1)
    trace = synthesize(tmp_path / "opt.parquet", shape="opt-6.7b", tokens=20, active=a, persistence=persistence,
                       seed=1, progress=False)
    r = simulate(trace, "apple-m1-max", "oracle", f"window:k={k}",
                 settings=["coalesce=false", "dram_budget=0.6", "partition=per-layer", "warmup=8"], baselines=False)
    assert r["ffn_share_loaded_per_token"] == pytest.approx(expected, rel=0.05), source
