"""PowerInfer-2's two-phase load (``two_phase=true``): a prefetch reads gate rows only; the up/down
rows of the truly active neurons follow on the critical path, once the layer's input exists."""

from __future__ import annotations

import numpy as np
import pytest

from sparsesim.errors import InputError
from sparsesim.simulator.predictors import PREDICTORS, Predictor
from sparsesim.simulator.simulate import simulate
from tracebuild import write_trace


class TruthPlusExtra(Predictor):
    """The true mask plus fixed false positives per token: t0 {8}, t1 {8, 10, 12, 14}."""

    sees_future = True
    EXTRA = {0: [8], 1: [8, 10, 12, 14]}

    def predict(self, view, token, layer):
        guess = view.mask(token, layer).copy()
        for i in self.EXTRA[token]:
            guess[i // 8] |= np.uint8(1 << (i % 8))
        return guess


if "test-truth-plus-extra" not in PREDICTORS.names():
    PREDICTORS.register("test-truth-plus-extra")(TruthPlusExtra)

# Storage with no read curve, queue depth 1: a batch of requests s_i takes sum_i (100 us + s_i / P),
# P = 32 B/us, so a 32 B row costs 101 us. Compute 32 MFLOP/s: a neuron's FFN (2 * 3 * 16 FLOPs)
# is 3 us, an evaluated gate row (2 * 16) 1 us, a layer's non-FFN work (2 * 8000 FLOPs) 500 us.
SERIAL_FLASH = """
extends: apple-m1-max
name: serial-flash
storage:
  read_curve: null
"""
SETTINGS = ["storage.latency=100 us", "storage.peak_bandwidth=3.2e7 B/s", "storage.queue_depth=1",
            "compute.flops=32e6 FLOP/s", "dram.bandwidth=1e18 B/s", "insert_overhead=0", "dram_budget=1.0",
            "lookahead=0"]


def _hand(tmp_path, two_phase):
    active = np.zeros((2, 1, 16), dtype=bool)
    active[0, 0, [0, 1]] = True
    active[1, 0, [0, 2]] = True
    path = write_trace(tmp_path / "hand.parquet", active, d_model=16, attention_params=8000)
    profile = tmp_path / "serial.yaml"
    profile.write_text(SERIAL_FLASH)
    return simulate(path, str(profile), "test-truth-plus-extra", "lru",
                    settings=SETTINGS + [f"two_phase={str(two_phase).lower()}"], baselines=False)


def test_two_phase_by_hand(tmp_path):
    """1 layer, d_ff 16, d_model 16, fp16: a row is 32 B, a neuron 96 B. Needed t0 {0,1}, t1 {0,2};
    predicted t0 {0,1,8}, t1 {0,2,8,10,12,14}; issued at each token's start (lookahead 0).

    One phase (whole neurons, 3 requests per run of adjacent neurons):
      t0 @0: fetch {0,1},{8}: 3x64 B + 3x32 B = 6 requests, 600+6+3 = 609 us. Non-FFN ends 500;
         the FFN waits for the late batch until 609 (stall 109), computes 2 neurons (6 us): 615.
      t1 @615: {0,1,8} resident; fetch {2},{10},{12},{14}: 12 x 32 B = 1212 us, lands 1827. Non-FFN
         ends 1115; 0 hits, 2 is late: stall 712; compute 6: 1833.
      Mean 916.5 us, stall 410.5 us; 18 requests; 7 neurons = 672 B, useful 3 x 96 = 288 B,
      wasted 384 B (8, 10, 12, 14 never used). Hits 1, late 3.
    Two phase (gate rows first; up/down rows = 2 requests per run after the gate):
      t0 @0: gate rows {0,1},{8}: 64 B + 32 B = 203 us, staged. At 500 the gate of 0, 1 is in
         (2 gate hits): up/down of {0,1}, 2 x 64 B = 204 us: 704 (stall 204). Gate 8 evaluated
         and dropped (1 us), compute 6: 711.
      t1 @711: {0,1} resident; gate rows of {2},{8},{10},{12},{14}: 5 x 101 = 505 us, lands 1216.
         Non-FFN ends 1211; 2 is late: after its gate lands, up/down of {2}: 2 x 32 B = 202 us:
         1418 (stall 207). 4 gates dropped (4 us), compute 6: 1428.
      Mean 714 us, stall 205.5 us; 2+2+5+2 = 11 requests; 8 gate rows (256 B) + 3 up/down
      pairs (192 B) = 448 B, useful 288 B, wasted 5 dropped gate rows = 160 B.
      Hits 1, late 1, gate hits 2; issued 8 = useful 3 + gate-dropped 5.
    """
    one, two = _hand(tmp_path, False), _hand(tmp_path, True)
    us = 1e-6
    assert one["time_per_token_s"] == pytest.approx(916.5 * us)
    assert one["io_stall_per_token_s"] == pytest.approx(410.5 * us)
    assert (one["requests"], one["ffn_storage_bytes"], one["useful_bytes"], one["wasted_bytes"]) == (18, 672, 288, 384)
    assert (one["hits"], one["late_hits"], one["gate_hits"]) == (1, 3, 0)
    assert two["time_per_token_s"] == pytest.approx(714 * us)
    assert two["io_stall_per_token_s"] == pytest.approx(205.5 * us)
    assert two["compute_per_token_s"] == pytest.approx((500 + 1 + 6 + 500 + 4 + 6) / 2 * us)
    assert (two["requests"], two["ffn_storage_bytes"], two["useful_bytes"], two["wasted_bytes"]) == (11, 448, 288, 160)
    assert (two["hits"], two["late_hits"], two["gate_hits"], two["demand_misses"]) == (1, 1, 2, 0)
    assert (two["prefetch_issued"], two["prefetch_useful"], two["prefetch_gate_dropped"],
            two["second_phase_units"]) == (8, 3, 5, 3)


@pytest.fixture(scope="module")
def random_trace(tmp_path_factory):
    rng = np.random.default_rng(0)
    base = rng.random((1, 3, 256)) < 0.2
    active = np.where(rng.random((40, 3, 256)) < 0.7, base, rng.random((40, 3, 256)) < 0.2)
    return write_trace(tmp_path_factory.mktemp("tp") / "r.parquet", active, d_model=128)


@pytest.mark.parametrize("cache", ["lru", "window:k=3", "belady"])
def test_two_phase_saves_bytes_on_false_positives_and_costs_stall_when_exact(random_trace, cache):
    def run(predictor, two_phase):
        return simulate(random_trace, "apple-m1-max", predictor, cache,
                        settings=["dram_budget=0.5", f"two_phase={two_phase}"], baselines=False)

    noisy = "noisy-oracle:fn=0.05,fp=0.1"
    one, two = run(noisy, "false"), run(noisy, "true")
    assert two["ffn_storage_bytes"] < one["ffn_storage_bytes"]
    # Conservation holds row by row.
    assert two["useful_bytes"] + two["wasted_bytes"] == pytest.approx(two["ffn_storage_bytes"])
    assert two["hits"] + two["late_hits"] + two["gate_hits"] + two["demand_misses"] == two["accesses"]
    assert two["prefetch_useful"] + two["prefetch_useless"] + two["prefetch_unused_at_end"] \
        + two["prefetch_bypassed"] + two["prefetch_gate_dropped"] == two["prefetch_issued"]
    # An exact predictor wastes nothing either way, so the second, dependent I/O phase is pure cost.
    one, two = run("oracle", "false"), run("oracle", "true")
    assert two["ffn_storage_bytes"] == pytest.approx(one["ffn_storage_bytes"])
    assert two["io_stall_per_token_s"] > one["io_stall_per_token_s"]


def test_two_phase_needs_a_gated_ffn(tmp_path):
    active = np.ones((2, 1, 8), dtype=bool)
    path = write_trace(tmp_path / "relu.parquet", active, d_model=16, glu=False)
    with pytest.raises(InputError, match="scenario field 'two_phase': needs a gated FFN"):
        simulate(path, "apple-m1-max", "oracle", "lru", settings=["two_phase=true"], baselines=False)
