"""Replay of expert caches (issue 16, phase 2): capacity in bytes, prefill batches, the cliff, predictors,
and the two OnePlus 15R captures replayed against the device's own counters.

Hand-built traces (tests/tracebuild.py) check the rules case by case; the captures in
../shared/data/moe-routes check the whole against a real engine.
"""

from __future__ import annotations

import json
from fractions import Fraction

import numpy as np
import pytest

from sparsesim.errors import InputError
from sparsesim.experiments.capture import capture_check
from sparsesim.experiments.cli import main
from sparsesim.simulator.predictors import CausalityError
from sparsesim.simulator.scenario import ModelFootprint, Scenario
from sparsesim.simulator.simulate import load_trace, simulate
from sparsesim.simulator.steps import replay_steps
from sparsesim.tracefile import read_trace
from sparsesim.tracing.importers import import_file
from tracebuild import write_expert_trace

MIB = 2 ** 20
POLICIES = ("lru", "fifo", "lfu", "window:k=2", "static-pin", "belady")
# name: (summary hit %, summary MiB read during decode)
CAPTURES = {"qwen": (74.9, 20023.9), "gemma": (76.8, 15785.2)}


def _route(rows: list[list[list[int]]]) -> np.ndarray:
    return np.array(rows, dtype=np.int16)


def test_capacity_is_counted_in_weight_so_a_byte_budget_is_exact():
    """Qwen3-30B-A3B's two expert sizes: weight unit = their gcd, each expert its bytes over it."""
    units = read_units(count=[128, 128], unit_bytes=[3059712, 2654208])
    fp = ModelFootprint.from_meta({"name": "q", "n_layers": 2}, Scenario(), units)
    assert fp.weight_bytes == Fraction(36864) and fp.weights == (83, 72) and not fp.uniform
    assert fp.cache_units(Scenario(cache_budget="500MiB")).tolist() == [500 * MIB // 36864] == [14222]
    # per layer: each layer keeps the same share of its units, ⌊C·U_l/W⌋ = ⌊14222·128/19840⌋
    assert fp.cache_units(Scenario(cache_budget="500MiB", partition="per-layer")).tolist() == [91, 91]
    assert fp.cache_units(Scenario(cache_budget="4000MiB")).tolist() == [128 * (83 + 72)]   # the whole bank
    # a neuron trace's units all weigh 1: capacity in units, exactly as before
    neurons = ModelFootprint.from_meta({"n_layers": 2, "d_model": 64, "d_ff": [430, 430], "glu": True,
                                        "non_ffn_params": 0}, Scenario())
    assert neurons.weights == (1, 1) and neurons.cache_units(Scenario(dram_budget=0.35)).tolist() == [301]


def read_units(count, unit_bytes):
    from sparsesim.traceunits import TraceUnits
    return TraceUnits.experts(count=count, top_k=[2] * len(count), unit_bytes=unit_bytes)


def test_global_lru_over_experts_of_two_sizes_by_hand(tmp_path):
    """Layer 0's experts are 300 B (weight 3), layer 1's 200 B (weight 2); the cache holds 700 B.

    (0,0) miss L0e0 [3]  (0,1) miss L1e0 [5]  (1,0) miss L0e1: 2 free, evict L0e0 (oldest) [5]
    (1,1) hit L1e0       (2,0) miss L0e0: evict L0e1 (last used at step 2; L1e0 at 3) [5]
    (2,1) miss L1e1: 2 free, fits [7]. A cache counting units (2 of them) would evict L1e0 there too.
    """
    path = write_expert_trace(tmp_path / "e.parquet", _route([[[0], [0]], [[1], [0]], [[0], [1]]]),
                              count=[4, 4], unit_bytes=[300, 200])
    log = []
    r = simulate(path, "oneplus-15r", "none", "lru", settings=["cache_budget=700"], baselines=False, lookup_log=log)
    assert (r["hits"], r["demand_misses"], r["evictions"]) == (1, 5, 2)
    assert r["ffn_storage_bytes"] == 300 + 200 + 300 + 300 + 200 and r["cache_capacity_bytes"] == 700
    assert [(t, l, h) for t, l, h, *_ in log if h] == [(1, 1, 1)]
    assert r["cycle_bytes"] == 500 and not r["budget_below_cycle"]
    # the generic per-unit-key base (KeyedReplacement) chooses by weight the same way
    plain = simulate(path, "oneplus-15r", "none", "test-plain-lru", settings=["cache_budget=700"], baselines=False)
    assert (plain["hits"], plain["evictions"]) == (1, 2)


def _register_plain_lru():
    from test_replacement import PlainLRU   # noqa: F401  (registers test-plain-lru)


_register_plain_lru()


def _prefill_trace(tmp_path, **kw):
    """4 prompt tokens in one batch, then 6 decode tokens; 2 layers of 8 experts, top-2, 100 B each."""
    rng = np.random.default_rng(3)
    route = np.stack([np.stack([rng.choice(8, 2, replace=False) for _ in range(2)]) for _ in range(10)])
    phase = [0] * 4 + [1] * 6
    path = write_expert_trace(tmp_path / "p.parquet", route.astype(np.int16), count=[8, 8], unit_bytes=[100, 100],
                              phase=phase, batch=[0, 0, 0, 0, 1, 2, 3, 4, 5, 6], **kw)
    return path, route


def test_a_prefill_batch_is_one_step_per_layer_with_one_lookup_per_distinct_expert(tmp_path):
    path, route = _prefill_trace(tmp_path)
    log = []
    r = simulate(path, "oneplus-15r", "none", "lru", settings=["cache_budget=100000"], baselines=False,
                 lookup_log=log)
    union = [len(set(route[:4, l].ravel().tolist())) for l in range(2)]
    prefill = [entry for entry in log if entry[0] == 0]
    assert [(h | late | s | m).bit_count() for _, _, h, late, s, m in prefill] == union
    assert r["prefill_tokens"] == 4 and r["decode_tokens"] == 6 and r["tokens"] == 10
    assert r["accesses"] == sum(union) + 6 * 2 * 2 and r["prefill_hit_rate"] == 0.0   # cold: the batch misses all
    steps = replay_steps(read_trace(path))
    assert steps.n_tokens.tolist() == [4, 1, 1, 1, 1, 1, 1] and steps.token_units[0].tolist() == [8, 8]
    # decode metrics are the decode rows' alone
    decode = [e for e in log if e[0] > 0]
    hits = sum(e[2].bit_count() for e in decode)
    assert r["decode_hit_rate"] == hits / (6 * 2 * 2)


def test_a_prefill_batch_over_the_partition_streams_the_rest_but_a_decode_step_never(tmp_path):
    path, route = _prefill_trace(tmp_path)
    union = max(len(set(route[:4, l].ravel().tolist())) for l in range(2))
    assert union > 3
    r = simulate(path, "oneplus-15r", "none", "lru", settings=["cache_budget=300"], baselines=False)
    assert r["demand_streamed"] > 0 and r["hits"] + r["demand_misses"] == r["accesses"]
    assert json.loads(r["per_layer"])["demand_streamed"] == [max(len(set(route[:4, l].ravel().tolist())) - 3, 0)
                                                             for l in range(2)]
    with pytest.raises(InputError, match="cannot hold one layer step's needed set.*200 B"):
        simulate(path, "oneplus-15r", "none", "lru", settings=["cache_budget=150"], baselines=False)


@pytest.mark.parametrize("partition", ["global", "per-layer"])
@pytest.mark.parametrize("cache", POLICIES)
def test_every_policy_runs_on_experts_and_keeps_the_books(tmp_path, cache, partition):
    path, _ = _prefill_trace(tmp_path)
    for predictor in ("none", "previous-token", "oracle"):
        r = simulate(path, "oneplus-15r", predictor, cache, settings=["cache_budget=800", f"partition={partition}"],
                     baselines=False)
        assert r["hits"] + r["late_hits"] + r["demand_misses"] == r["accesses"]
        assert r["useful_bytes"] + r["wasted_bytes"] == pytest.approx(r["ffn_storage_bytes"])
        assert r["cache_capacity_bytes"] <= 800


def test_shared_experts_and_dense_layers_stay_resident_outside_the_cache(tmp_path):
    route = _route([[[-1, -1], [0, 1]], [[-1, -1], [1, 2]], [[-1, -1], [2, 3]]])
    path = write_expert_trace(tmp_path / "s.parquet", route, count=[0, 4], unit_bytes=[None, 100],
                              shared=[1, 1], shared_bytes=[5000, 700], resident_bytes=[10, 20])
    trace = load_trace(path)
    assert trace.active[:, 1].tolist() == [3, 3, 3]          # the mask holds the shared expert too
    log = []
    r = simulate(trace, "oneplus-15r", "none", "lru", settings=["cache_budget=200"], baselines=False, lookup_log=log)
    assert r["accesses"] == 6 and all(l == 1 or (h | m) == 0 for _, l, h, _, _, m in log)   # routed units only
    fp = ModelFootprint.from_meta(trace.model, Scenario(), trace.units)
    assert fp.layer_nonffn_bytes == (10 + 5000, 20 + 700)


def test_static_hot_from_the_prompt_predicts_decode_only_and_never_before_the_prompt_ran(tmp_path):
    path, route = _prefill_trace(tmp_path)
    r = simulate(path, "oneplus-15r", "static-hot:source=prompt,topk=2", "lru", settings=["cache_budget=800"],
                 baselines=False)
    counts = np.zeros((2, 8), int)
    for l in range(2):
        np.add.at(counts[l], route[:4, l].ravel(), 1)
    assert not r["predictor_sees_future"] and r["prefetch_requested"] == 6 * 2 * 2   # decode steps only
    # 2 layers, lookahead 2 = L: the first decode step's prediction would be issued before the prompt's layer ran
    with pytest.raises(CausalityError, match="does not exist yet"):
        simulate(path, "oneplus-15r", "static-hot:source=prompt,topk=2", "lru", baselines=False,
                 settings=["cache_budget=800", "lookahead=2"])
    run = simulate(path, "oneplus-15r", "static-hot:source=run,topk=2", "lru", settings=["cache_budget=800"],
                   baselines=False)
    assert run["predictor_sees_future"] and run["bound"]
    neuron_trace = write_expert_trace(tmp_path / "n.parquet", route.astype(np.int16), count=[8, 8],
                                      unit_bytes=[100, 100])
    with pytest.raises(InputError, match="source=prompt needs a trace whose prompt"):
        simulate(neuron_trace, "oneplus-15r", "static-hot:source=prompt", "lru", settings=["cache_budget=800"],
                 baselines=False)


def test_previous_token_after_a_prefill_batch_is_the_last_prompt_token(tmp_path):
    path, route = _prefill_trace(tmp_path)
    r = simulate(path, "oneplus-15r", "previous-token", "lru", settings=["cache_budget=800"], baselines=False)
    # exactly k = 2 experts predicted for every decode step (not the prompt's union)
    assert r["prefetch_requested"] == 6 * 2 * 2
    assert r["decode_predictor_precision"] == r["decode_predictor_recall"]


# -- the OnePlus 15R captures ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def captures(shared_data, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("captures")
    paths = {}
    for name in CAPTURES:
        import_file(shared_data / "moe-routes" / f"{name}.route.csv", out / f"{name}.parquet")
        paths[name] = load_trace(out / f"{name}.parquet")
    return paths


@pytest.mark.parametrize("name", CAPTURES)
def test_replay_agrees_with_the_phone_lookup_by_lookup(name, captures):
    """Must-show 1: global LRU at the captured 4000 MiB, cold, no prefetch."""
    hit_pct, read_mib = CAPTURES[name]
    r = capture_check(captures[name])
    assert r["cache_budget_MiB"] == 4000.0 and r["decode_lookups"] == 128 * captures[name].n_layers * 6
    assert r["decode_agreement"] >= 0.99
    assert abs(r["hit_rate_pct"] - hit_pct) <= 1.0 and r["device_hit_rate_pct"] == hit_pct
    assert abs(r["decode_read_MiB"] - read_mib) / read_mib <= 0.03 and r["device_read_MiB"] == read_mib
    # the per-step cumulative hit rate follows the device's column
    assert np.max(np.abs(np.subtract(r["step_hit_pct"], r["device_step_hit_pct"]))) < 1.0
    # Must-show 3: time per decode token on the phone's CPU (one rate fitted on Qwen's compute): the total
    # and the prompt's prefill within 25 % on both captures, compute within 25 % on Gemma (Qwen's is the fit)
    t = r["time"]
    for part in ("total", "compute", "prefill"):
        assert abs(t[part]["replay"] / t[part]["device"] - 1) <= 0.25, (part, t[part])
    # the decode is compute-bound: at the memory bound (the profile's default compute) it is far too fast
    memory_bound = capture_check(captures[name], settings=["compute_unit=default"])["time"]["total"]["replay"]
    assert memory_bound < 0.6 * t["total"]["device"]


@pytest.mark.parametrize("name", CAPTURES)
def test_the_cliff_lru_hits_nothing_below_the_cycle_and_belady_bounds_every_policy(name, captures):
    """Must-show 2 on the captures: below one token cycle global LRU's hit rate is exactly 0; under demand
    paging Bélády's MIN hits at least as often as every online policy at every budget."""
    trace = captures[name]
    cycle = trace.units.cycle_bytes()
    largest = max(trace.units.unit_bytes)
    # every layer's top-k minus all but one expert of a layer: no expert of the last step can survive
    edge = cycle - (max(trace.units.top_k) - 1) * largest
    for budget in (250 * MIB, 500 * MIB, int(edge) - 1):
        r = simulate(trace, "oneplus-15r", "none", "lru", settings=[f"cache_budget={budget}"], baselines=False)
        assert r["budget_below_cycle"] and r["hits"] == 0 and r["late_hits"] == 0
    for mib in (1000, 4000):
        runs = {cache: simulate(trace, "oneplus-15r", "none", cache, baselines=False,
                                settings=[f"cache_budget={mib}MiB", f"partition={part}"])
                for cache, part in (("lru", "global"), ("fifo", "global"), ("lfu", "global"), ("belady", "global"),
                                    ("lru", "per-layer"))}
        best = max(r["hits"] for c, r in runs.items() if c != "belady")
        assert runs["belady"]["hits"] >= best and runs["belady"]["decode_hit_rate"] > runs["lru"]["decode_hit_rate"]


def test_the_cli_warns_below_the_cycle_in_one_line(captures, capsys):
    path = str(captures["gemma"].path)
    assert main(["simulate", "--trace", path, "--profile", "oneplus-15r", "--predictor", "none",
                 "--cache-budget", "500MiB", "--no-baselines"]) == 0
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("warning: the expert cache (500.0 MiB) is below one token cycle")
    assert main(["simulate", "--trace", path, "--profile", "oneplus-15r", "--predictor", "none",
                 "--cache-budget", "4000MiB", "--no-baselines"]) == 0
    assert capsys.readouterr().err == ""


def test_capture_check_cli(captures, capsys, tmp_path):
    assert main(["capture-check", str(captures["qwen"].path), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out[0]["decode_agreement"] >= 0.99 and set(out[0]["time"]) >= {"total", "compute", "io_stall"}
    assert main(["capture-check", str(tmp_path / "missing.parquet")]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_capture_check_names_what_the_capture_lacks(captures):
    import copy
    import dataclasses

    trace = captures["qwen"]
    meta = copy.deepcopy(trace.meta)
    del meta["capture"]["metrics"]["summary"]["prefill_s"]
    with pytest.raises(InputError, match=r"the capture lacks prefill_s, which capture-check compares"):
        capture_check(dataclasses.replace(trace, meta=meta))


def test_capture_check_plot(captures, tmp_path):
    # kaleido comes with `make install` (the plots extra) and renders in the Chromium .ci/run provides
    from sparsesim.experiments.capture import plot_step_hit_rate

    png = plot_step_hit_rate([capture_check(captures["gemma"])], tmp_path / "hit.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_max_tokens_cuts_the_phase_and_batch_columns_too(tmp_path):
    path, _ = _prefill_trace(tmp_path)
    r = simulate(path, "oneplus-15r", "none", "lru", settings=["cache_budget=800", "max_tokens=6"], baselines=False)
    assert (r["prefill_tokens"], r["decode_tokens"]) == (4, 2)
