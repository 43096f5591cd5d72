"""The time model through the replay engine (docs/time-model.md): each part on a tiny hand-built
trace and a profile with round numbers, where the expected time can be computed by hand — compute
kernels (roofline / efficiency + dispatch, compute precision), the KV cache, predictor cost, memory
management, the read path (depth, granularity, page faults), the cluster pipeline, a hot unit
sharing DRAM, a discrete unit behind the interconnect, the drop rule and prefill; and bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from sparsesim.errors import InputError
from sparsesim.simulator.simulate import simulate
from tracebuild import sliding, write_expert_trace, write_trace

L, D_FF, D_MODEL = 2, 64, 32
ROW = D_MODEL * 2                 # fp16 row: 64 B
UNIT = 3 * ROW                    # gate, up, down: 192 B
ATTENTION = 4 * D_MODEL * D_MODEL  # parameters per layer (write_trace's default)
US = 1e-6

PROFILE = {
    "name": "round-numbers", "description": "a profile whose every number is round, for hand-computed times",
    "compute": {"flops": {"value": "1 TFLOP/s", "estimate": "test"},
                "energy_per_flop": {"value": "1 pJ/FLOP", "estimate": "test"}},
    "dram": {"capacity": {"value": "16 GiB", "estimate": "test"}, "bandwidth": {"value": "1 GB/s", "estimate": "test"},
             "latency": {"value": "100 ns", "estimate": "test"}, "energy_per_byte": {"value": "1 pJ/B", "estimate": "test"},
             "shared_bandwidth": {"value": "1.5 GB/s", "estimate": "test"}},
    "storage": {"kind": "test", "latency": {"value": "100 us", "estimate": "test"},
                "peak_bandwidth": {"value": "1 GB/s", "estimate": "test"},
                "queue_depth": {"value": 4, "estimate": "test"},
                "energy_per_byte": {"value": "1 nJ/B", "estimate": "test"},
                "read_curve": {"estimate": "flat", "points": [["64 B", "1 GB/s"], ["1 MiB", "1 GB/s"]]},
                "multi_thread_factor": {"value": 0.5, "estimate": "test"}},
    "cpu": {"flops_fp16": {"value": "1 TFLOP/s", "estimate": "t"}, "flops_fp32": {"value": "1 TFLOP/s", "estimate": "t"},
            "bandwidth": {"value": "1 GB/s", "estimate": "t"}, "dispatch": {"value": "1 us", "estimate": "t"},
            "dense_efficiency": {"value": 0.5, "estimate": "t"}, "gather_efficiency": {"value": 0.25, "estimate": "t"},
            "scatter_efficiency": {"value": 0.5, "estimate": "t"}, "copy_efficiency": {"value": 0.5, "estimate": "t"}},
    "npu": {"flops_fp16": {"value": "1 TFLOP/s", "estimate": "t"}, "bandwidth": {"value": "1 GB/s", "estimate": "t"}},
    "gpu": {"flops_fp16": {"value": "100 TFLOP/s", "estimate": "t"}, "bandwidth": {"value": "10 GB/s", "estimate": "t"},
            "capacity": {"value": "1 GiB", "estimate": "t"}},
    "interconnect": {"bandwidth": {"value": "2 GB/s", "estimate": "t"}, "latency": {"value": "10 us", "estimate": "t"}},
    "os": {"page_size": {"value": "4 KiB", "estimate": "t"}, "fault_overhead": {"value": "2 us", "estimate": "t"}},
}

# Per-unit kernel times on the cpu unit (memory-bound everywhere: 1 GB/s against 1 TFLOP/s).
GATHER_ROW = ROW / 1e9 / 0.25     # 256 ns
SCATTER_ROW = ROW / 1e9 / 0.5     # 128 ns
SPARSE_UNIT = 2 * GATHER_ROW + SCATTER_ROW
NONFFN = ATTENTION * 2 / 1e9 / 0.5 + 4 * US    # one layer's attention, 4 calls
HEAD = 1 * US                                   # no LM head weights; one call


@pytest.fixture(scope="module")
def profile(tmp_path_factory):
    path = tmp_path_factory.mktemp("profile") / "round.yaml"
    path.write_text(yaml.safe_dump(PROFILE))
    return str(path)


def run(trace, profile, predictor="none", cache="lru", settings=()):
    return simulate(trace, profile, predictor, cache, settings=list(settings), baselines=False)


@pytest.fixture(scope="module")
def resident(tmp_path_factory):
    """Every token needs units 0 .. 9 of each layer; with the whole FFN warm nothing is read."""
    active = np.zeros((4, L, D_FF), dtype=bool)
    active[:, :, :10] = True
    return write_trace(tmp_path_factory.mktemp("t") / "resident.parquet", active, d_model=D_MODEL)


WARM = ["dram_budget=1.0", "warm=true", "compute_unit=cpu"]


# --- compute kernels -----------------------------------------------------------------------------


def test_kernels_on_the_compute_unit_are_roofline_over_efficiency_plus_dispatch(resident, profile):
    r = run(resident, profile, settings=WARM)
    ffn = 10 * SPARSE_UNIT + 3 * US           # gate and up gathered, down scattered: 3 calls
    assert r["demand_misses"] == 0 and r["io_stall_per_token_s"] == 0
    assert r["time_per_token_s"] == pytest.approx(L * (NONFFN + ffn) + HEAD, rel=1e-12)
    assert r["compute_per_token_s"] == pytest.approx(r["time_per_token_s"], rel=1e-12)


def test_compute_precision_sets_the_dram_copy_and_the_peak(resident, profile):
    fp16 = run(resident, profile, settings=WARM)
    fp32 = run(resident, profile, settings=WARM + ["compute_precision=fp32"])
    # Every byte the kernels stream doubles; the calls stay (memory-bound: time = bytes / BW / eff + calls).
    calls = L * (4 + 3) * US + HEAD
    assert fp32["time_per_token_s"] - calls == pytest.approx(2 * (fp16["time_per_token_s"] - calls), rel=1e-12)


def test_a_dense_product_over_the_resident_matrix(resident, profile):
    r = run(resident, profile, settings=WARM + ["partition=per-layer", "ffn_compute=matrix"])
    ffn = D_FF * UNIT / 1e9 / 0.5 + 3 * US    # all 64 resident units, dense kernel (efficiency 0.5)
    assert r["time_per_token_s"] == pytest.approx(L * (NONFFN + ffn) + HEAD, rel=1e-12)


def test_kv_reads_grow_with_the_position(resident, profile):
    base = run(resident, profile, settings=WARM)
    kv = run(resident, profile, settings=WARM + ["kv_cache=true", "kv_dim=16", "prompt_tokens=100"])
    per_position = 2 * 16 * 2 / 1e9 / 0.5     # K and V rows of 16 fp16 values, dense kernel
    mean_position = 100 + 1.5                 # tokens 0 .. 3
    assert kv["time_per_token_s"] - base["time_per_token_s"] == pytest.approx(
        L * (mean_position * per_position + 2 * US), rel=1e-9)
    assert kv["time_per_token_p99_s"] > kv["time_per_token_p50_s"]   # later tokens read more


def test_a_low_rank_predictor_costs_its_two_kernels_per_layer_step(resident, profile):
    base = run(resident, profile, settings=WARM)
    ranked = run(resident, profile, settings=WARM + ["predictor_rank=8"])
    predictor = 8 * (D_MODEL + D_FF) * 2 / 1e9 / 0.5 + 2 * US
    assert ranked["time_per_token_s"] - base["time_per_token_s"] == pytest.approx(L * predictor, rel=1e-9)


def test_prefill_is_reported_apart_from_the_tokens(resident, profile):
    r = run(resident, profile, settings=WARM + ["kv_cache=true", "kv_dim=16", "prompt_tokens=10"])
    params = L * (D_FF * 3 * D_MODEL + ATTENTION)
    assert r["prompt_prefill_s"] == pytest.approx(params * 2 / 1e9 / 0.5, rel=1e-12)   # weights read once
    assert run(resident, profile, settings=WARM)["prompt_prefill_s"] == 0


# --- memory management ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def slide(tmp_path_factory):
    """Token t needs units [8t, 8t + 8) of each layer: every step misses 8 new units."""
    return write_trace(tmp_path_factory.mktemp("t") / "slide.parquet", sliding(6, L, D_FF, 8, 8), d_model=D_MODEL)


# Per-layer slices of 16 units: after the first two tokens every step inserts 8 and evicts 8.
SLIDE = ["dram_budget=0.25", "partition=per-layer", "warmup=2", "coalesce=false", "compute_unit=cpu"]


@pytest.mark.parametrize("scheme, per_step", [
    ("matrix", 16 * (2 * UNIT / (1e9 * 0.5) + 100e-9) + 6 * US),   # copies at the copy bandwidth, 3 calls each way
    ("segmented", 16 * 100e-9),                                     # bookkeeping only
    ("none", 0.0),
])
def test_management_per_scheme(slide, profile, scheme, per_step):
    r = run(slide, profile, settings=SLIDE + [f"memory_management={scheme}"])
    assert r["demand_misses"] == r["accesses"] and r["evictions"] == r["accesses"]
    assert r["cache_mgmt_per_token_s"] == pytest.approx(L * per_step, rel=1e-9)


# --- the read path ---------------------------------------------------------------------------------


@pytest.mark.parametrize("depth, latencies", [(1, 24), (4, 6), (0, 6)])
def test_reads_in_flight(slide, profile, depth, latencies):
    # 8 missed units x 3 rows of 64 B each step: 24 requests, one latency per `depth` of them.
    r = run(slide, profile, settings=SLIDE + [f"io_depth={depth}"])
    assert r["io_time_per_token_s"] == pytest.approx(L * (latencies * 100 * US + ROW / 1e9), rel=1e-9)


def test_read_granularity_rounds_each_request_up(slide, profile):
    r = run(slide, profile, settings=SLIDE + ["read_granularity=4096", "io_depth=1"])
    assert r["read_amplification"] == pytest.approx(4096 / ROW)
    assert r["device_read_bytes"] == pytest.approx(r["storage_bytes"] * 4096 / ROW)
    assert r["io_time_per_token_s"] == pytest.approx(L * (24 * 100 * US + 4096 / 1e9), rel=1e-9)


def test_io_threads_pay_the_multi_thread_factor(slide, profile):
    # Bandwidth-bound batches (granularity 1 MiB: 24 MiB per step): the curve halves.
    one = run(slide, profile, settings=SLIDE + ["read_granularity=1048576"])
    two = run(slide, profile, settings=SLIDE + ["read_granularity=1048576", "io_threads=2"])
    assert two["io_time_per_token_s"] == pytest.approx(2 * one["io_time_per_token_s"], rel=1e-9)


def test_page_faults_read_the_pages_the_rows_touch(slide, profile):
    # One matrix of a layer is 64 rows x 64 B = one 4 KiB page: any missed set touches 3 pages per
    # layer step; synchronous faults pay a latency and the fault overhead each.
    r = run(slide, profile, settings=SLIDE + ["memory_management=page-cache", "io_depth=1"])
    assert r["device_read_bytes"] / r["tokens"] == pytest.approx(L * 3 * 4096)
    assert r["io_time_per_token_s"] == pytest.approx(L * (3 * 100 * US + 4096 / 1e9 + 3 * 2 * US), rel=1e-9)


# --- the cluster pipeline ----------------------------------------------------------------------------


def test_a_pipeline_without_reads_is_the_ffn_plus_a_dispatch_per_cluster(resident, profile):
    plain = run(resident, profile, settings=WARM)
    piped = run(resident, profile, settings=WARM + ["pipeline=cluster", "cluster_neurons=2"])
    clusters = 5                              # 10 needed units in clusters of 2
    assert piped["time_per_token_s"] - plain["time_per_token_s"] == pytest.approx(L * (clusters - 1) * 3 * US,
                                                                                  rel=1e-9)


BUNDLE = ["layout=bundled", "max_request=128", "read_granularity=128", "memory_management=segmented"]


def test_one_cluster_runs_its_five_stages_in_series(slide, profile):
    # A 192 B bundle is read as two 128 B pieces (gate, then up/down); 8 misses per step in one
    # cluster: each read phase holds the queue's 4 slots twice (100 us each).
    r = run(slide, profile, settings=SLIDE + BUNDLE + ["pipeline=cluster"])
    gate_compute = 8 * GATHER_ROW + US
    updown_compute = 8 * (GATHER_ROW + SCATTER_ROW) + 2 * US
    ffn = 200 * US + gate_compute + 200 * US + updown_compute
    assert r["time_per_token_s"] == pytest.approx(L * (NONFFN + ffn) + HEAD + r["cache_mgmt_per_token_s"], rel=1e-9)
    assert r["io_stall_per_token_s"] == pytest.approx(L * 400 * US, rel=1e-9)   # the reads nothing overlapped


def test_many_clusters_overlap_to_the_busiest_resource(slide, profile):
    # Clusters of 1 unit: 8 per step. The reads (2 phases, 1 slot each, 4 slots: 4 clusters in flight)
    # take 8 x 2 x 100 us / 4 = 400 us in steady state, the compute far less: the FFN approaches the
    # I/O alone instead of the 400 us + compute of one cluster.
    r = run(slide, profile, settings=SLIDE + BUNDLE + ["pipeline=cluster", "cluster_neurons=1"])
    ffn = (r["time_per_token_s"] - HEAD - r["cache_mgmt_per_token_s"]) / L - NONFFN
    io_steady = 8 * 2 * 100 * US / 4
    compute = 8 * (2 * GATHER_ROW + SCATTER_ROW + 3 * US)
    assert io_steady <= ffn <= io_steady + 2 * 100 * US + compute / 8 + 1e-12
    assert ffn < 400 * US + compute                  # serial would be the I/O plus every cluster's compute


# --- heterogeneous units ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hot_trace(tmp_path_factory):
    """Units 0 .. 55 active in every token: the hottest 32 (ties to the lower index) go to the hot unit."""
    active = np.zeros((3, L, D_FF), dtype=bool)
    active[:, :, :56] = True
    return write_trace(tmp_path_factory.mktemp("t") / "hot.parquet", active, d_model=D_MODEL)


def test_a_hot_unit_shares_dram_bandwidth_with_the_compute_unit(hot_trace, profile):
    fast_cpu = ["cpu.gather_efficiency=1", "cpu.scatter_efficiency=1", "cpu.dispatch=1 ps"]
    r = run(hot_trace, profile, settings=WARM + fast_cpu + ["hot_unit=npu", "hot_share=0.5"])
    hot_bytes, cold_bytes = 32 * UNIT, 24 * UNIT
    hot, cold = hot_bytes / 1e9, cold_bytes / 1e9           # 6.1 us and 4.6 us alone ...
    ffn = (hot_bytes + cold_bytes) / 1.5e9                  # ... 7.2 us together: the shared 1.5 GB/s binds
    assert ffn > max(hot, cold)
    nonffn = ATTENTION * 2 / 1e9 / 0.5 + 4e-12               # the dispatch is 1 ps here
    assert r["time_per_token_s"] == pytest.approx(L * (nonffn + ffn) + 1e-12, rel=1e-9)
    assert r["hot_activation_share"] == pytest.approx(32 / 56) and r["accesses"] == 3 * L * 24
    assert r["hot_set_sees_future"] and r["bound"]


def test_hot_units_are_taken_from_the_budget(hot_trace, profile):
    with pytest.raises(InputError, match=r"^scenario field 'hot_share': the hot units \(64, resident in DRAM\)"):
        run(hot_trace, profile, settings=["dram_budget=0.25", "compute_unit=cpu", "hot_unit=npu", "hot_share=0.5"])


def test_a_hot_unit_needs_the_trace_in_memory(hot_trace, profile):
    with pytest.raises(InputError, match=r"scenario field 'hot_unit' needs the trace in memory \(it is streamed\)$"):
        simulate(hot_trace, profile, "none", "lru", settings=WARM + ["hot_unit=npu", "hot_share=0.5"],
                 baselines=False, stream=True)


def test_a_discrete_unit_waits_for_the_interconnect_after_each_read(slide, profile):
    r = run(slide, profile, settings=SLIDE[:-1] + ["compute_unit=gpu"])
    batch = 6 * 100 * US + ROW / 1e9                        # 24 requests at depth 4
    link = 8 * UNIT / 2e9 + 10 * US                         # the batch over 2 GB/s, one transfer
    assert r["interconnect_time_per_token_s"] == pytest.approx(L * link, rel=1e-9)
    assert r["io_stall_per_token_s"] == pytest.approx(L * (batch + link), rel=1e-9)


# --- the drop rule -----------------------------------------------------------------------------------


def test_dropped_false_negatives_are_never_read_and_bytes_stay_conserved(tmp_path, profile):
    rng = np.random.default_rng(3)
    trace = write_trace(tmp_path / "r.parquet", rng.random((12, L, D_FF)) < 0.3, d_model=D_MODEL)
    predictor = "noisy-oracle:fn=0.3,fp=0.1,seed=1"
    fetch = run(trace, profile, predictor, settings=["dram_budget=0.5"])
    drop = run(trace, profile, predictor, settings=["dram_budget=0.5", "false_negatives=drop"])
    assert drop["dropped_units"] > 0
    # The FFN computes the predicted set: every lookup is a predicted unit, every miss of the mask dropped.
    tot = {k: sum(v) for k, v in json.loads(drop["per_layer"]).items()}
    assert drop["accesses"] == tot["pred_tp"] + tot["pred_fp"]
    assert drop["dropped_units"] == tot["pred_fn"]
    assert drop["hits"] + drop["late_hits"] + drop["gate_hits"] + drop["demand_misses"] == drop["accesses"]
    assert drop["useful_bytes"] + drop["wasted_bytes"] == pytest.approx(drop["ffn_storage_bytes"])
    assert drop["demand_misses"] < fetch["demand_misses"] and fetch["dropped_units"] == 0


# --- expert traces and prefill batches -----------------------------------------------------------


@pytest.fixture(scope="module")
def experts(tmp_path_factory):
    """Two layers of 4 experts, 300 B and 200 B each, 1000 B of resident weights per layer; every token
    routes to expert 0 and 1 of each layer. 4 prompt tokens in one batch, then 3 decode tokens."""
    route = np.tile(np.array([[0, 1], [0, 1]], dtype=np.int16), (7, 1, 1))
    return write_expert_trace(tmp_path_factory.mktemp("e") / "experts.parquet", route, count=[4, 4],
                              unit_bytes=[300, 200], phase=[0] * 4 + [1] * 3, batch=[0, 0, 0, 0, 1, 2, 3])


EXPERT_NONFFN = 1000 / 1e9 / 0.5 + 4 * US     # a layer's resident weights, 4 calls


def test_an_expert_is_a_dense_kernel_with_its_own_layer_bytes(experts, profile):
    r = run(experts, profile, settings=["cache_budget=2000", "warm=true", "compute_unit=cpu"])
    # decode: two experts per layer, each a dense product over its own bytes (efficiency 0.5), 3 calls
    ffn = [2 * 300 / 1e9 / 0.5 + 3 * US, 2 * 200 / 1e9 / 0.5 + 3 * US]
    assert r["demand_misses"] == 0
    assert r["decode_time_per_token_s"] == pytest.approx(2 * EXPERT_NONFFN + sum(ffn) + HEAD, rel=1e-12)
    # the prefill batch reads every weight once for its 4 tokens (memory-bound: the same time)
    assert r["prefill_time_s"] == pytest.approx(2 * EXPERT_NONFFN + sum(ffn) + HEAD, rel=1e-12)


def test_management_charges_each_layer_its_own_expert_bytes(experts, profile):
    r = run(experts, profile, settings=["cache_budget=2000", "compute_unit=cpu", "insert_overhead=0"])
    # cold: the prefill batch inserts 2 experts per layer, one operation of 3 calls per layer
    copy = 2 * (2 * 300 + 2 * 200) / (1e9 * 0.5)
    assert r["evictions"] == 0 and r["demand_misses"] == 4
    assert r["cache_mgmt_per_token_s"] * r["tokens"] == pytest.approx(copy + 2 * 3 * US, rel=1e-12)


def test_kv_of_a_prefill_batch_is_read_once_and_decode_positions_follow_it(experts, profile):
    base = run(experts, profile, settings=["cache_budget=2000", "warm=true", "compute_unit=cpu"])
    kv = run(experts, profile, settings=["cache_budget=2000", "warm=true", "compute_unit=cpu", "kv_cache=true",
                                         "kv_dim=16", "prompt_tokens=10"])
    per_position = 2 * 16 * 2 / 1e9 / 0.5     # K and V rows of 16 fp16 values, dense kernel
    # the batch: positions 10 .. 13, the KV up to its last position read once; decode at 14, 15, 16
    assert kv["prefill_time_s"] - base["prefill_time_s"] == pytest.approx(2 * (13 * per_position + 2 * US), rel=1e-9)
    assert kv["decode_time_per_token_s"] - base["decode_time_per_token_s"] == pytest.approx(
        2 * (15 * per_position + 2 * US), rel=1e-9)


@pytest.mark.parametrize("settings, problem", [
    (["pipeline=cluster"], "scenario field 'pipeline': cluster splits a token's FFN into neurons"),
    (["hot_unit=npu", "hot_share=0.5"], "scenario field 'hot_unit': npu splits a token's FFN into neurons"),
])
def test_neuron_only_parts_are_refused_on_an_expert_trace(experts, profile, settings, problem):
    with pytest.raises(InputError, match=problem):
        run(experts, profile, settings=["cache_budget=2000"] + settings)


def test_neuron_only_parts_are_refused_on_prefill_batches(tmp_path, profile):
    from sparsesim.tracecolumns import column_types
    from sparsesim.tracefile import TraceWriter
    active = sliding(4, L, D_FF, 8, 8)
    model = {"name": "hand-built", "architecture": "test", "n_layers": L, "d_model": D_MODEL, "d_ff": [D_FF] * L,
             "glu": True, "activation": "test", "attention_params": ATTENTION * L, "non_ffn_params": ATTENTION * L}
    path = tmp_path / "batched.parquet"
    with TraceWriter(path, {"kind": "synthetic", "model": model}, columns=column_types(("phase",))) as w:
        w.write(np.zeros(4, np.int32), np.arange(4), np.arange(4), np.packbits(active, axis=-1, bitorder="little"),
                columns={"phase": np.array([0, 0, 1, 1], np.int8)})
    with pytest.raises(InputError, match="scenario field 'pipeline': cluster times one token's FFN; this trace "
                                         "replays its prompt in prefill batches"):
        run(str(path), profile, settings=["pipeline=cluster"])


# --- bad input -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("settings, problem", [
    (["ffn_compute=matrix", "memory_management=segmented"], "scenario field 'ffn_compute'"),
    (["two_phase=true", "pipeline=cluster"], "scenario field 'two_phase'"),
    (["pipeline=cluster", "memory_management=page-cache"], "scenario field 'pipeline'"),
    (["ffn_in=dram", "pipeline=cluster"], "apply with ffn_in=flash"),
    (["false_negatives=drop"], "scenario field 'false_negatives': drop computes the predicted set"),
    (["hot_unit=npu", "hot_share=nan"], "scenario field 'hot_share'"),
    (["hot_unit=npu", "hot_share=inf"], "scenario field 'hot_share'"),
    (["io_depth=-1"], "scenario field 'io_depth'"),
    (["read_granularity=nan"], "scenario field 'read_granularity'"),
    (["predictor_rank=inf"], "scenario field 'predictor_rank'"),
    (["cluster_neurons=-4", "pipeline=cluster"], "scenario field 'cluster_neurons'"),
    (["compute_threads=0", "pipeline=cluster"], "scenario field 'compute_threads'"),
    (["prompt_tokens=-1"], "scenario field 'prompt_tokens'"),
])
def test_bad_settings_are_one_line_errors(slide, profile, settings, problem):
    with pytest.raises(InputError) as caught:
        run(slide, profile, settings=settings)
    message = str(caught.value)
    assert len(message.splitlines()) == 1 and problem in message, message


def test_a_setting_missing_its_profile_field_names_both(slide):
    with pytest.raises(InputError, match=r"^profile apple-m1-max: npu.bandwidth is missing; scenario field "
                                         r"'hot_unit' = npu needs it"):
        run(slide, "apple-m1-max", settings=["hot_unit=npu", "hot_share=0.5", "dram_budget=0.9"])
