"""Tracing cost: traced vs plain forward over the same tokens (target ratio <= 1.10).

*plain*: the base model's forward over one window (what a trace pass computes, without hooks).
*traced*: the same forward with zero-enforcing percentile-50 % hooks recording masks, then
packing all layers, popcounts and the Parquet row-group write — the whole per-window cost of
``sparsesim trace --no-ppl``. Runs alternate plain/traced and keep each one's fastest of
several repeats, so load from other processes on a shared machine inflates neither side alone.

``run()`` returns the results; ``python -m benchmarks.bench_tracing`` also writes
``benchmarks/results_tracing.json``.
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).with_name("results_tracing.json")
# model, window, windows per timed run, repeats (a stories260K run takes ~0.5 s: more repeats beat noise)
CASES = (("gemma-3-270m", 2048, 2, 3), ("stories260K", 512, 32, 10))


def _bench_model(name: str, window: int, n_windows: int, repeats: int) -> dict:
    import torch

    from sparsesim.tracefile import TraceWriter, popcount_rows
    from sparsesim.tracing.forward import hidden_states, windows
    from sparsesim.tracing.models import load_model
    from sparsesim.tracing.sparsify import SparseFFN
    from sparsesim.tracing.text import load_text, split_tokens, tokenize
    from sparsesim.tracing.thresholds import calibrate

    lm = load_model(name)
    source = load_text("pydoc")
    split = split_tokens(tokenize(lm.tokenizer, source), source, eval_tokens=window * n_windows,
                         calib_tokens=window, window=window)
    th = calibrate(lm, split.calibration, window=window, method="percentile", site="intermediate", target=0.5,
                   text=source.describe())
    wins = [torch.from_numpy(w.inputs)[None] for w in windows(split.evaluation, window, lm.bos_id)]
    meta = {"model": lm.info}

    def plain() -> None:
        for x in wins:
            hidden_states(lm, x)

    def traced(path: Path) -> None:
        with TraceWriter(path, meta) as writer, SparseFFN(lm.ffns, th.site, th.rule(), record=True) as hooks:
            for i, x in enumerate(wins):
                hidden_states(lm, x)
                masks = hooks.take_packed()
                popcount_rows(masks)
                n = x.shape[1]
                writer.write(np.full(n, i), np.arange(n), x[0].numpy(), masks)

    wall = {"plain": [], "traced": []}
    cpu = {"plain": [], "traced": []}

    def timed(kind: str, fn, *args) -> None:
        w, c = time.perf_counter(), time.process_time()
        fn(*args)
        wall[kind].append(time.perf_counter() - w)
        cpu[kind].append(time.process_time() - c)

    with tempfile.TemporaryDirectory() as tmp:
        plain()  # warm-up: first-call allocations and thread-pool start
        for _ in range(repeats):
            timed("plain", plain)
            timed("traced", traced, Path(tmp) / "bench.parquet")
    tokens = window * n_windows
    best = {k: min(v) for k, v in wall.items()}
    return {"tokens": tokens, "window": window, "repeats": repeats,
            "plain_s": best["plain"], "traced_s": best["traced"], "ratio": best["traced"] / best["plain"],
            "plain_tok_per_s": tokens / best["plain"], "traced_tok_per_s": tokens / best["traced"],
            # CPU seconds of this process: less sensitive than wall time to other processes' load
            "cpu_ratio": min(cpu["traced"]) / min(cpu["plain"]),
            "wall_s": wall, "cpu_s": cpu}


def run() -> dict:
    """Benchmark every case; the dict is what results_tracing.json holds."""
    import torch

    results = {name: _bench_model(name, window, n, repeats) for name, window, n, repeats in CASES}
    return {"benchmark": "tracing-cost", "target_ratio": 1.10, "cases": results,
            "torch_threads": torch.get_num_threads(), "cpus": os.cpu_count(), "machine": platform.processor()
            or platform.machine(), "load_avg_1m": os.getloadavg()[0]}


if __name__ == "__main__":
    out = run()
    RESULTS.write_text(json.dumps(out, indent=1) + "\n")
    for name, r in out["cases"].items():
        print(f"{name}: plain {r['plain_tok_per_s']:.0f} tok/s, traced {r['traced_tok_per_s']:.0f} tok/s, "
              f"ratio {r['ratio']:.3f} (CPU time {r['cpu_ratio']:.3f})")
