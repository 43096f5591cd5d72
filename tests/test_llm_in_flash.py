"""LLM in a Flash Table 2 reproduced within 10 % per row (see experiments/reproductions/llm_in_flash.py)."""

import numpy as np
import pytest

from sparsesim.experiments.reproductions import llm_in_flash


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


@pytest.mark.parametrize("persistence, hot_skew, source", [
    (0.737, 0.0, "derived from LLM in a Flash's own 10 % -> 2.4 % (OPT-6.7B, ReLU), neurons alike"),
    (0.322, 0.0, "Gemma 3 270M's persistence alone, neurons alike: 5.3 %"),
    (0.322, 0.62, "Gemma 3 270M at 90 % sparsity (WikiText-2, 1024 tokens, mean over 18 layers), persistence "
                  "and hot-neuron skew both measured by sparsesim.simulator.synth.measure: 4.8 %"),
])
def test_window_share_follows_persistence(tmp_path, persistence, hot_skew, source):
    """A sticky neuron with base rate pi and copy probability c is active at t and inactive at
    t-1 .. t-k with probability pi (1 - c)(1 - pi) q^(k-1), q = c + (1 - c)(1 - pi) (a two-state
    chain is reversible). Window k loads the mean of that over the neurons. With neurons alike
    (pi = a = 10 %) P = 0.737 gives the paper's 2.4 %; Gemma's far less persistent thresholded
    GeGLU activity gives 5.3 %, and its measured skew (a few hot neurons active most of the time,
    which stay in the window) brings that to 4.8 % — the skew is real but is not the gap."""
    from sparsesim.simulator.simulate import simulate
    from sparsesim.simulator.synth import _base_rates, _copy_probability, synthesize

    a, k = 0.1, 4
    pi = _base_rates(np.random.default_rng(0), 16384, a, hot_skew)
    c = _copy_probability(pi, persistence)
    q = c + (1 - c) * (1 - pi)
    expected = float(np.mean(pi * (1 - c) * (1 - pi) * q ** (k - 1)))
    trace = synthesize(tmp_path / "opt.parquet", shape="opt-6.7b", tokens=20, active=a, persistence=persistence,
                       hot_skew=hot_skew, seed=1, progress=False)
    r = simulate(trace, "apple-m1-max", "oracle", f"window:k={k}",
                 settings=["coalesce=false", "dram_budget=0.6", "partition=per-layer", "warmup=8"], baselines=False)
    assert r["ffn_share_loaded_per_token"] == pytest.approx(expected, rel=0.05), source


def test_measured_hot_skew_recovers_the_generator_exponent(tmp_path):
    """fit_hot_skew matches E[pi^2]/E[pi]; on a generated trace it must find the exponent used
    (1500 tokens. Near 0 the moment is flat in the exponent, so sampling noise in the frequencies
    alone reads as a skew of about 0.1 there; from 0.5 up it is resolved)."""
    from sparsesim.simulator.synth import measure, synthesize
    from sparsesim.tracefile import read_trace

    for skew in (0.6, 1.0):
        path = synthesize(tmp_path / f"s{skew}.parquet", layers=2, d_model=64, d_ff=1024, tokens=1500, active=0.1,
                          persistence=0.6, hot_skew=skew, seed=3, progress=False)
        fitted = measure(read_trace(path))["hot_skew"]
        assert fitted == pytest.approx([skew, skew], abs=0.06), skew
