"""Simulator throughput (layer-steps/s on one core), the read-and-popcount floor, and the ratio
to a per-neuron-event simpy reference — each measured side by side in one run."""

from __future__ import annotations

import os
import statistics
import tempfile
import time


from benchmarks.per_neuron_reference import replay_per_neuron
from sparsesim.simulator.simulate import simulate
from sparsesim.simulator.synth import synthesize
from sparsesim.tracefile import popcount_rows, read_trace


def median_time(fn, repeats: int) -> tuple[float, float, float]:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), min(times), max(times)


def throughput(trace_path: str, predictor: str, cache: str, budget: float, repeats: int = 3,
               settings: tuple[str, ...] = ()) -> dict:
    """Layer-steps per second of one replay (median of ``repeats``)."""
    trace = read_trace(trace_path)
    steps = trace.n_tokens * trace.n_layers
    med, lo, hi = median_time(lambda: simulate(trace, "apple-m1-max", predictor, cache,
                                                settings=[f"dram_budget={budget}", *settings], baselines=False), repeats)
    return {"predictor": predictor, "cache": cache, "settings": list(settings), "budget": budget,
            "tokens": trace.n_tokens, "layers": trace.n_layers, "d_ff": trace.d_ff[0], "layer_steps_per_s": steps / med,
            "spread_steps_per_s": [steps / hi, steps / lo], "seconds": med}


# (predictor, cache, scenario settings): every replacement policy and the main scenario options.
POLICY_RUNS = (
    ("oracle", "lru", ()), ("none", "lru", ()), ("previous-token", "lru", ()),
    ("noisy-oracle:fn=0.05,fp=0.07", "lru", ()), ("oracle", "fifo", ()), ("oracle", "lfu", ()),
    ("oracle", "window:k=4", ()), ("oracle", "static-pin", ()), ("oracle", "belady", ()),
    ("oracle", "lru", ("partition=per-layer",)), ("oracle", "lfu", ("partition=per-layer",)),
    ("oracle", "belady", ("partition=per-layer",)), ("oracle", "lru", ("two_phase=true",)),
    ("noisy-oracle:fn=0.05,fp=0.07", "lru:bypass=true", ()),
)


def floor(trace_path: str, repeats: int = 3) -> dict:
    """Read the masks and popcount them: the least any replay must do."""
    def read_and_count():
        t = read_trace(trace_path, verify=False)
        popcount_rows(t.masks)
    trace = read_trace(trace_path)
    med, lo, hi = median_time(read_and_count, repeats)
    return {"layer_steps_per_s": trace.n_tokens * trace.n_layers / med, "seconds": med}


def reference_ratio(trace_path: str, tokens: int = 8) -> dict:
    """Product vs one-event-per-neuron simpy reference on the same first ``tokens`` tokens."""
    trace = read_trace(trace_path)
    masks = trace.masks[:tokens]
    d = trace.d_ff[0]
    capacity = int(0.25 * d)
    t0 = time.perf_counter()
    replay_per_neuron(masks, d, capacity, neuron_seconds=3 * trace.model["d_model"] * 2 / 2e9)
    ref = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:
        from sparsesim.tracefile import TraceWriter
        sub = os.path.join(tmp, "sub.parquet")
        with TraceWriter(sub, trace.meta) as w:
            w.write(trace.seq[:tokens], trace.pos[:tokens], trace.token[:tokens], masks)
        product = throughput(sub, "none", "lru", 0.25, repeats=3)["seconds"]
    steps = tokens * trace.n_layers
    return {"tokens": tokens, "reference_layer_steps_per_s": steps / ref,
            "product_layer_steps_per_s": steps / product, "ratio": ref / product}


def run(tokens: int = 256, tmp: str | None = None) -> dict:
    tmp = tmp or tempfile.mkdtemp(prefix="sparsesim-bench-")
    path = os.path.join(tmp, "llama7b.parquet")
    synthesize(path, shape="llama-2-7b", tokens=tokens, active=0.1, persistence=0.5, seed=0, progress=False)
    out = {"trace": "synthetic llama-2-7b (32 x 11008), 10 % active, persistence 0.5", "runs": []}
    for predictor, cache, settings in POLICY_RUNS:
        out["runs"].append(throughput(path, predictor, cache, 0.25, settings=settings))
    out["floor"] = floor(path)
    main = out["runs"][0]["layer_steps_per_s"]
    out["simulator_over_floor"] = out["floor"]["layer_steps_per_s"] / main
    out["per_neuron_reference"] = reference_ratio(path)
    return out


if __name__ == "__main__":
    import json
    print(json.dumps(run(tokens=int(os.environ.get("BENCH_TOKENS", "128"))), indent=2))
