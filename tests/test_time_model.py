"""The time model's parts, each against an analytic case (docs/time-model.md): kernel rooflines,
memory-management cost, pipeline overlap (= max of stages in steady state), the shared-bandwidth
split, the read path, predictor cost, the KV cache; and the settings' validation."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math

import numpy as np
import pytest
import yaml

from sparsesim.errors import InputError
from sparsesim.simulator import context, heterogeneous, io_path, memory_management, pipeline, predictor_cost
from sparsesim.simulator.kernels import Unit, Work, ffn_dense, ffn_neurons, matvec
from sparsesim.simulator.profile import SETTABLE_FIELDS, load_profile, profile_from_dict
from sparsesim.simulator.requirements import check_time_model
from sparsesim.simulator.scenario import Scenario
from sparsesim.simulator.storage import BackingStore
from sparsesim.simulator.synth import SHAPES, shape_model

KiB = 1024


# --- kernels: a roofline per kernel ------------------------------------------------------------


def test_roofline_is_the_larger_of_memory_and_compute_time():
    unit = Unit("u", bandwidth=100e9, peak=1e12)
    memory_bound = matvec(4096, 4096, 2.0)              # 32 MiB, 33.6 MFLOP: 0.336 ms vs 0.0336 ms
    assert unit.roofline(memory_bound) == pytest.approx(4096 * 4096 * 2 / 100e9)
    assert unit.bound(memory_bound) == "memory"
    compute_bound = Work(bytes=1e6, flops=1e10)          # 10 us of bytes, 10 ms of FLOPs
    assert unit.roofline(compute_bound) == pytest.approx(1e-2)
    assert unit.bound(compute_bound) == "compute"


def test_efficiency_and_dispatch_apply_per_kind():
    unit = Unit("u", bandwidth=100e9, peak=1e12, dispatch=10e-6, efficiency={"gather": 0.25})
    work = Work(bytes=1e9, flops=0.0, calls=3)
    assert unit.time("dense", work) == pytest.approx(1e9 / 100e9 + 3 * 10e-6)        # efficiency 1: roofline
    assert unit.time("gather", work) == pytest.approx(1e9 / 100e9 / 0.25 + 3 * 10e-6)
    assert unit.copy_bandwidth() == 100e9
    with pytest.raises(ValueError):
        unit.time("convolution", work)


def test_ffn_work_splits_into_gather_and_scatter_and_adds_up_to_the_dense_ffn():
    d, d_ff, w = 4096, 14336, 2.0
    parts = ffn_neurons(d_ff, d, 3, w)                   # every neuron selected
    dense = ffn_dense(d_ff, d, 3, w)
    assert parts["gather"].bytes + parts["scatter"].bytes == pytest.approx(dense.bytes)
    assert parts["gather"].flops + parts["scatter"].flops == pytest.approx(dense.flops)
    assert parts["gather"].bytes == 2 * parts["scatter"].bytes   # gate + up rows vs down columns


def test_default_unit_is_the_model_before_units_existed():
    from sparsesim.simulator.accounting import Totals
    from sparsesim.simulator.scenario import ModelFootprint
    from sparsesim.simulator.timing import StepCosts

    profile, scenario = load_profile("oneplus-12"), Scenario()
    unit = Unit.from_profile(profile, "default", "fp16", "test")
    assert (unit.bandwidth, unit.peak, unit.dispatch, unit.efficiency) == (
        profile.dram.bandwidth, profile.compute.flops, 0.0, {})
    # The engine's attention step today is this unit's dense kernel over one layer's attention weights.
    footprint = ModelFootprint.from_meta(shape_model("mistral-7b", *SHAPES["mistral-7b"]), scenario)
    _, engine_seconds = StepCosts(footprint, scenario, profile, 0.0, Totals()).nonffn(0, 0)
    attention = Work(footprint.layer_nonffn_bytes[0], 2 * footprint.layer_nonffn_bytes[0] / footprint.bytes_per_weight, 1)
    assert unit.time("dense", attention) == pytest.approx(engine_seconds)


def test_a_unit_takes_its_peak_for_the_compute_precision():
    profile = load_profile("oneplus-12")
    assert Unit.from_profile(profile, "cpu", "fp32", "t").peak == profile.cpu.flops_fp32
    assert Unit.from_profile(profile, "cpu", "int4", "t").peak == profile.cpu.ops_int8
    with pytest.raises(InputError, match=r"^profile oneplus-12: npu.flops_fp16 is missing; hot_unit=npu "
                                         r"\(fp16 arithmetic\) needs it"):
        Unit.from_profile(profile, "npu", "fp16", "hot_unit=npu")


def test_llm_in_flash_cpu_calibration_reproduces_its_row():
    """apple-m1-max's cpu.dense_efficiency was calibrated on LLM in a Flash Table 3, OPT-6.7B CPU
    Naive (986 ms of compute): the fp32 decode of the model at the mean KV position gives it back."""
    from sparsesim.simulator.roofline import decode_kernels

    unit = Unit.from_profile(load_profile("apple-m1-max"), "cpu", "fp32", "t")
    model = shape_model("opt-6.7b", *SHAPES["opt-6.7b"])
    seconds = sum(unit.time(kind, work) for _, kind, work in decode_kernels(model, 4.0, context=255.5))
    assert seconds == pytest.approx(0.986, rel=0.005)


# --- memory management --------------------------------------------------------------------------


def test_matrix_management_moves_each_inserted_and_removed_neuron_once():
    b, bw, overhead = 32 * KiB, 20e9, 100e-9
    cost = memory_management.management_cost("matrix", 1000, 800, b, bw, overhead)
    assert cost.bytes == 2 * b * 1800                               # read + write per move
    assert cost.seconds == pytest.approx(2 * b * 1800 / bw + 1800 * overhead)


@pytest.mark.parametrize("scheme, seconds", [("segmented", 1800 * 100e-9), ("page-cache", 0.0), ("none", 0.0)])
def test_other_schemes_copy_nothing(scheme, seconds):
    cost = memory_management.management_cost(scheme, 1000, 800, 32 * KiB, 20e9, 100e-9)
    assert cost.bytes == 0 and cost.seconds == pytest.approx(seconds)


def test_matrix_management_at_the_default_unit_is_the_engines_formula():
    # The engine's timing part charges (inserted + removed) x (2 b / DRAM bandwidth + insert_overhead).
    from sparsesim.simulator.accounting import Totals
    from sparsesim.simulator.scenario import ModelFootprint
    from sparsesim.simulator.timing import StepCosts

    profile, scenario = load_profile("apple-m1-max"), Scenario()
    footprint = ModelFootprint.from_meta(shape_model("opt-6.7b", *SHAPES["opt-6.7b"]), scenario)
    engine = StepCosts(footprint, scenario, profile, 0.0, Totals())
    unit = Unit.from_profile(profile, "default", scenario.arithmetic_precision, "t")
    cost = memory_management.management_cost("matrix", 7, 5, footprint.neuron_bytes, unit.copy_bandwidth(),
                                             scenario.insert_overhead)
    assert cost.seconds == pytest.approx(engine.management(0, 7, 5))
    assert cost.bytes == pytest.approx(engine.totals.dram_bytes)


# --- intra-layer pipeline: overlap = max of stages in steady state -----------------------------


def test_classic_pipeline_makespan():
    stages = [pipeline.Stage("a", "r1", 1.0), pipeline.Stage("b", "r2", 3.0), pipeline.Stage("c", "r3", 2.0)]
    for clusters in (1, 2, 10):
        assert pipeline.makespan([stages] * clusters, {"r1": 1, "r2": 1, "r3": 1}) == 6.0 + (clusters - 1) * 3.0


def test_steady_state_is_the_busiest_resource_per_server():
    stages = pipeline.powerinfer2_stages(pred=0.1, gate_io=0.5, gate_compute=0.3, updown_io=0.7, updown_compute=0.9)
    clusters = [stages] * 400
    for servers, per_cluster in (({"io": 1, "compute": 1}, 1.3),   # compute 0.1+0.3+0.9 = 1.3 > io 1.2
                                 ({"io": 1, "compute": 2}, 1.2),   # io 0.5+0.7 = 1.2 > 1.3 / 2
                                 ({"io": 2, "compute": 4}, 0.6)):
        assert pipeline.steady_state(clusters, servers) == pytest.approx(400 * per_cluster)
        span = pipeline.makespan(clusters, servers)
        assert span >= pipeline.steady_state(clusters, servers) - 1e-9
        assert span >= pipeline.critical_path(clusters)
        assert span / 400 == pytest.approx(per_cluster, rel=0.01)   # fill and drain amortised
    assert pipeline.serial_time(clusters) == pytest.approx(400 * 2.5)


def test_pipeline_refuses_a_stage_without_a_server():
    with pytest.raises(ValueError, match="no server"):
        pipeline.makespan([[pipeline.Stage("x", "npu", 1.0)]], {"io": 1})


# --- heterogeneous units: the shared-bandwidth split -------------------------------------------


def test_concurrent_parts_are_bounded_by_each_unit_and_by_the_shared_bandwidth():
    # PowerInfer-2 §2.3.1: CPU alone 43.9 GB/s, NPU alone 56 GB/s, both 59.6 GB/s.
    cpu, npu, shared = 43.9e9, 56e9, 59.6e9
    parts = [heterogeneous.Part(2e9, 2e9 / cpu), heterogeneous.Part(2e9, 2e9 / npu)]
    assert heterogeneous.concurrent_time(parts, shared) == pytest.approx(4e9 / shared)   # the shared cap binds
    lopsided = [heterogeneous.Part(3.9e9, 3.9e9 / cpu), heterogeneous.Part(0.1e9, 0.1e9 / npu)]
    assert heterogeneous.concurrent_time(lopsided, shared) == pytest.approx(3.9e9 / cpu)  # the CPU part binds
    share, seconds = heterogeneous.best_split(4e9, cpu, npu, shared)
    assert share == pytest.approx(56 / 99.9)
    assert seconds == pytest.approx(4e9 / shared)
    # Constant rates b / T respect every cap: the bound is achievable.
    rates = [p.bytes / seconds for p in parts]
    assert rates[0] <= cpu and rates[1] <= npu and sum(rates) <= shared * (1 + 1e-12)


def test_transfer_time_over_the_interconnect():
    assert heterogeneous.transfer_time(32e9, 32e9, transfers=10, latency=10e-6) == pytest.approx(1.0 + 1e-4)
    assert heterogeneous.transfer_time(0, 32e9, transfers=10, latency=10e-6) == 0.0


# --- the read path -----------------------------------------------------------------------------


def test_requests_are_cut_at_max_request_and_rounded_to_the_granularity():
    # PowerInfer-2: a 7.5 KB INT4 bundle padded to 8 KB and read as two 4 KB reads.
    assert io_path.shape_requests({7680.0: 10}, 4 * KiB, 4 * KiB) == {4096.0: 20}
    assert io_path.shape_requests({7680.0: 10}, 4 * KiB, 1 << 20) == {8192.0: 10}
    assert io_path.shape_requests({2304.0: 3, 5000.0: 1}, 0, 4096) == {2304.0: 3, 4096.0: 1, 904.0: 1}


@pytest.mark.parametrize("name", ["apple-m1-max", "oneplus-12", "raspberry-pi-5-sd", "laptop-nvme"])
def test_batch_time_at_full_depth_is_the_storage_models(name):
    store = BackingStore.flash(load_profile(name).storage)
    requests = {4096.0: 300, 16384.0: 17, float(1 << 20): 2}
    assert io_path.batch_time(store, requests) == pytest.approx(store.batch_time(requests))
    assert io_path.batch_time(store, requests, depth=store.queue_depth) == pytest.approx(store.batch_time(requests))


def test_synchronous_reads_pay_a_latency_each():
    store = BackingStore.flash(load_profile("oneplus-12").storage)
    n = 1000
    t = io_path.batch_time(store, {4096.0: n}, depth=1)
    assert t == pytest.approx(n * store.latency + 4096 / store.peak_bandwidth)
    slower = io_path.batch_time(store, {float(1 << 20): 10}, thread_factor=0.6)
    assert slower == pytest.approx(io_path.batch_time(store, {float(1 << 20): 10}) / 0.6)


def test_fault_windows_count_distinct_pages_touched():
    # Rows of 2304 B (int4, d_model 4096) back to back: rows 0..3 span bytes 0..9215 -> pages 0, 1, 2.
    offsets = np.array([0, 2304, 4608, 6912])
    assert io_path.fault_windows(offsets, np.full(4, 2304), 4096).tolist() == [0, 1, 2]
    assert io_path.fault_windows(offsets, np.full(4, 2304), 128 * KiB).tolist() == [0]
    assert io_path.fault_windows(np.array([4095]), np.array([2]), 4096).tolist() == [0, 1]
    assert io_path.fault_windows(np.array([], dtype=np.int64), np.array([], dtype=np.int64), 4096).size == 0


def test_fault_time_is_synchronous_reads_plus_overhead():
    store = BackingStore.flash(load_profile("oneplus-12").storage)
    t = io_path.fault_time(store, 100, 4096, 2e-6, depth=1)
    assert t == pytest.approx(io_path.batch_time(store, {4096.0: 100}, depth=1) + 100 * 2e-6)


# --- predictor cost and false negatives --------------------------------------------------------


def test_llm_in_flash_opt_predictors_are_under_2_4_percent_of_the_weights():
    """Ranks 128 and 1024 in the last 4 layers (mean 240): 157 M weights, 2.44 % of the 6.44 B
    non-embedding weights; LLM in a Flash states "under 2.4 %" (§3.1), so its count must differ
    slightly (biases, or the embedding counted in the denominator)."""
    ranks = [128] * 28 + [1024] * 4
    assert predictor_cost.mean_rank(ranks) == 240
    per_layer = predictor_cost.low_rank_work(4096, 16384, 240, 1.0)
    params = 32 * per_layer.bytes
    assert params == 32 * 240 * (4096 + 16384)
    model = shape_model("opt-6.7b", *SHAPES["opt-6.7b"])
    share = params / (model["attention_params"] + model["ffn_params"])
    assert share == pytest.approx(0.0244, abs=0.0001)
    assert per_layer.flops == 2 * per_layer.bytes and per_layer.calls == 2


def test_false_negatives_are_fetched_or_dropped():
    true, predicted = 0b1110, 0b0111       # neuron 3 missed (false negative), neuron 0 a false positive
    assert predictor_cost.computed_set(true, predicted, "fetch") == true
    assert predictor_cost.computed_set(true, predicted, "drop") == predicted


# --- KV cache and prefill ----------------------------------------------------------------------


@pytest.mark.parametrize("shape, kv", [("opt-6.7b", 4096), ("llama-2-7b", 4096), ("mistral-7b", 1024),
                                       ("falcon-7b", 64)])
def test_kv_width_from_the_attention_parameters(shape, kv):
    assert context.kv_dim_from_meta(shape_model(shape, *SHAPES[shape])) == kv


def test_kv_width_of_a_traced_model_must_be_given():
    # Gemma 3 270M: the arithmetic would give 640 (= d_model) for a true 256; it is not applied.
    model = {"name": "gemma-3-270m", "architecture": "Gemma3ForCausalLM", "d_model": 640, "n_layers": 18,
             "attention_params": 18 * (640 * 1024 * 2 + 640 * 256 * 2 + 512)}
    with pytest.raises(InputError, match="does not record its KV width; give scenario field 'kv_dim'"):
        context.kv_dim_from_meta(model)
    assert context.kv_dim_from_meta({**model, "kv_dim": 256}) == 256
    odd = {**shape_model("opt-6.7b", *SHAPES["opt-6.7b"]), "attention_params": 32 * 4096 * 4096}
    with pytest.raises(InputError, match="do not fit"):
        context.kv_dim_from_meta(odd)


def test_kv_reads_grow_linearly_with_the_context():
    one = context.kv_work(1, 32, 4096, 1024, 2.0)
    assert one.bytes == 2 * 1024 * 2.0 * 32
    assert context.kv_work(500, 32, 4096, 1024, 2.0).bytes == pytest.approx(500 * one.bytes)
    assert context.kv_work(0, 32, 4096, 1024, 2.0).bytes == 0


def test_prefill_reads_weights_once_and_is_compute_bound():
    unit = Unit("cpu", bandwidth=43.9e9, peak=1.4e12)
    work = context.prefill_work(7e9, 512, 32, 4096, 0.5625)
    assert work.bytes == 7e9 * 0.5625
    assert work.flops == pytest.approx(2 * 7e9 * 512 + 2 * 512 ** 2 * 4096 * 32)
    assert unit.bound(work) == "compute"


# --- settings: validation, requirements, no silent ignore --------------------------------------

NEW_FIELDS = [f for f in SETTABLE_FIELDS if f.split(".")[0] in ("cpu", "gpu", "npu", "interconnect", "os")
              or f in ("dram.shared_bandwidth", "storage.multi_thread_factor")]


@pytest.mark.parametrize("field", NEW_FIELDS)
@pytest.mark.parametrize("value, problem", [("-1", "must be >"), ("0", "must be >"), (".nan", "finite"),
                                            (".inf", "finite")])
def test_every_new_field_refuses_negative_zero_nan_and_infinite(tmp_path, field, value, problem):
    section, key = field.split(".")
    path = tmp_path / "p.yaml"
    path.write_text(f"extends: pixel-8\nname: bad\n{section}:\n  {key}: {{value: {value}, source: x}}\n")
    with pytest.raises(InputError) as caught:
        load_profile(str(path))
    message = str(caught.value)
    assert len(message.splitlines()) == 1 and field in message and problem in message, message


@pytest.mark.parametrize("field", [f for f in NEW_FIELDS if f.endswith(("efficiency", "multi_thread_factor"))])
def test_efficiencies_are_at_most_one(field):
    with pytest.raises(InputError, match=rf"^--set: {field}: must be <= 1, got 1.5$"):
        load_profile("pixel-8", [f"{field}=1.5"])


def test_readahead_below_the_page_size_is_refused():
    with pytest.raises(InputError, match="os.readahead: must be >= os.page_size"):
        load_profile("oneplus-12", ["os.readahead=1 KiB"])


def test_an_empty_time_model_section_is_refused(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("extends: pixel-8\nname: bad\nnpu: {}\n")
    with pytest.raises(InputError, match="npu: is empty"):
        load_profile(str(path))


def test_a_profile_without_the_new_fields_hashes_as_before():
    data = yaml.safe_load(load_profile("pixel-8").path and open(load_profile("pixel-8").path).read())
    for section in ("cpu", "gpu", "npu", "interconnect", "os"):
        data.pop(section, None)
    profile = profile_from_dict(data, "old")
    old = {"compute": dataclasses.asdict(profile.compute),
           "dram": {k: getattr(profile.dram, k) for k in ("capacity", "bandwidth", "latency", "energy_per_byte")},
           "cache": None,
           "storage": {k: getattr(profile.storage, k) for k in ("kind", "latency", "peak_bandwidth", "queue_depth",
                                                               "energy_per_byte")}
           | {"read_curve": [list(p) for p in profile.storage.read_curve]}}
    canonical = json.dumps(old, sort_keys=True, separators=(",", ":"), allow_nan=False)
    assert profile.sha256 == hashlib.sha256(canonical.encode()).hexdigest()


@pytest.mark.parametrize("settings, field, setting", [
    ({"compute_unit": "npu"}, "npu.bandwidth", "'compute_unit' = npu"),
    ({"hot_unit": "npu", "hot_share": 0.5}, "npu.bandwidth", "'hot_unit' = npu"),
    ({"memory_management": "page-cache"}, "os.page_size", "'memory_management' = page-cache"),
    ({"io_threads": 2}, "storage.multi_thread_factor", "'io_threads' = 2"),
])
def test_a_missing_profile_field_names_the_field_and_the_setting(settings, field, setting):
    with pytest.raises(InputError) as caught:
        check_time_model(Scenario(**settings), load_profile("raspberry-pi-5-nvme"))
    message = str(caught.value)
    assert len(message.splitlines()) == 1
    assert message.startswith(f"profile raspberry-pi-5-nvme: {field} is missing; scenario field {setting}")


def test_a_hot_unit_sharing_dram_needs_the_shared_bandwidth():
    profile = load_profile("oneplus-12", [])
    check_time_model(Scenario(hot_unit="npu", hot_share=0.5, precision="int4"), profile)   # all present
    no_shared = dataclasses.replace(profile, dram=dataclasses.replace(profile.dram, shared_bandwidth=None))
    with pytest.raises(InputError, match="dram.shared_bandwidth is missing; scenario field 'hot_unit' = npu"):
        check_time_model(Scenario(hot_unit="npu", hot_share=0.5, precision="int4"), no_shared)


def test_io_depth_beyond_the_devices_queue_is_refused():
    with pytest.raises(InputError, match="'io_depth': 64 reads in flight.*queue_depth = 32"):
        check_time_model(Scenario(io_depth=64), load_profile("oneplus-12"))


@pytest.mark.parametrize("settings, problem", [
    ({"compute_unit": "tpu"}, "not one of default, cpu, gpu, npu"),
    ({"compute_precision": "fp8"}, "'compute_precision'"),
    ({"hot_unit": "npu"}, "give both"),
    ({"hot_unit": "npu", "hot_share": 1.0}, "[0, 1)"),
    ({"hot_unit": "npu", "hot_share": math.nan}, "[0, 1)"),
    ({"hot_unit": "npu", "hot_share": math.inf}, "[0, 1)"),
    ({"hot_unit": "npu", "hot_share": -0.1}, "[0, 1)"),
    ({"io_depth": -1}, "integer >= 0"),
    ({"io_threads": 0}, "integer >= 1"),
    ({"read_granularity": 4.5}, "integer >= 0"),
    ({"predictor_rank": -3}, "integer >= 0"),
    ({"cluster_neurons": 64}, "apply to pipeline=cluster"),
    ({"kv_dim": 128}, "applies with kv_cache=true"),
    ({"false_negatives": "ignore"}, "fetch, drop"),
])
def test_bad_time_model_settings_are_one_line_errors(settings, problem):
    with pytest.raises(InputError) as caught:
        Scenario(**settings)
    assert len(str(caught.value).splitlines()) == 1 and problem in str(caught.value), str(caught.value)


def test_time_model_fields_default_to_the_model_as_it_was():
    assert Scenario().compute_bytes_per_weight == Scenario().bytes_per_weight
    assert Scenario(precision="fp16", compute_precision="fp32").compute_bytes_per_weight == 4.0


def test_a_full_queue_of_slots_delivers_the_curve_bandwidth():
    store = BackingStore.flash(load_profile("oneplus-12").storage)
    slot = io_path.slot_time(store, 4096.0)
    assert store.queue_depth * 4096 / slot == pytest.approx(1076.10e6)   # PI2 Table 1: 4 KB at 1,076 MB/s
    assert slot >= store.latency
    fast = BackingStore.flash(load_profile("oneplus-12", ["storage.latency=1 ms"]).storage)
    assert io_path.slot_time(fast, 4096.0) == 1e-3                     # a lone request still pays its latency


# --- the roofline view -------------------------------------------------------------------------


def test_roofline_rows_add_up_per_unit_and_every_profile_is_listed():
    from sparsesim.simulator.profile import list_profiles
    from sparsesim.simulator.roofline import roofline_rows

    model = shape_model("llama-2-7b", *SHAPES["llama-2-7b"])
    rows = roofline_rows(list_profiles(), model, "fp16", context=256)
    assert {r["profile"] for r in rows} == set(list_profiles())
    by_unit: dict[tuple, list] = {}
    for r in rows:
        by_unit.setdefault((r["profile"], r["unit"]), []).append(r)
    for (profile, unit), group in by_unit.items():
        *kernels, total = group
        assert total["kernel"] == "total" and len(kernels) == 4
        assert total["gbytes"] == pytest.approx(sum(k["gbytes"] for k in kernels))
        assert total["roofline_ms"] == pytest.approx(sum(k["roofline_ms"] for k in kernels))
        for k in kernels:
            assert k["roofline_ms"] == pytest.approx(max(k["memory_ms"], k["compute_ms"]))
            assert k["expected_ms"] >= k["roofline_ms"] * (1 - 1e-12)   # efficiencies <= 1 only slow it down
    # 13.48 GB of fp16 weights and KV at 400 GB/s
    m1 = next(r for r in rows if r["profile"] == "apple-m1-max" and r["unit"] == "default" and r["kernel"] == "total")
    assert m1["roofline_ms"] == pytest.approx(m1["gbytes"] / 400 * 1e3)


def test_roofline_command_writes_csv(tmp_path):
    import subprocess
    import sys

    out = tmp_path / "r.csv"
    result = subprocess.run([sys.executable, "-m", "sparsesim.experiments.cli", "roofline", "--profile", "oneplus-12",
                             "--shape", "mistral-7b", "--precision", "int4", "--csv", str(out)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    lines = out.read_text().splitlines()
    assert lines[0].startswith("profile,unit,kernel,bound") and len(lines) == 1 + 3 * 4   # default, cpu, npu
