"""Tracing on a GPU: a llama-2-7b-shaped model, traced vs plain forward over 4,096 tokens.

The weights are **random** (bf16): only shapes and speed are measured, not activity. The traced
pass is the tracer's own path — zero-enforcing hooks on every FFN (percentile thresholds
calibrated in-graph on one window), masks written in place into one device buffer for all
layers, packed and moved to the host once per window — so the ratio shows what tracing costs a
7B-class model. Run on a CUDA machine: ``python -m benchmarks.bench_gpu`` (prints JSON and
writes ``benchmarks/results_gpu.json``).

Where the time went on an H200 (4,096 tokens, best of 5): plain forward 124.3 ms; with
zero-enforcing hooks 127.0; recording masks into the device buffer 130.2; packing on the GPU
131.3; copying to a pinned host buffer 133.3. A pageable host copy had cost 118 ms by itself.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).with_name("results_gpu.json")


def _model(device: str):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                      num_key_value_heads=32, vocab_size=32000, max_position_embeddings=4096)
    with torch.device(device):
        model = LlamaForCausalLM(cfg).to(torch.bfloat16).eval()
    return model


def _timed(fn, device: str, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t0)
    return times


def run(tokens: int = 4096, window: int = 4096, repeats: int = 5) -> dict:
    from sparsesim.tracing.ffn import find_ffns
    from sparsesim.tracing.sparsify import CalibrateRule, SparseFFN, ThresholdRule

    device = "cuda"
    model = _model(device)
    ffns = find_ffns(model, "llama-2-7b-shaped (random bf16)")
    gen = torch.Generator(device="cpu").manual_seed(0)
    ids = torch.randint(0, 32000, (tokens // window, window), generator=gen).to(device)

    def plain() -> None:
        with torch.inference_mode():
            for row in ids:
                model.model(row[None])

    calibration = CalibrateRule([0.5] * len(ffns))
    with torch.inference_mode(), SparseFFN(ffns, "intermediate", calibration):
        model.model(ids[0][None])
    # One recorder for the whole run, as in the tracer: its device and pinned host buffers are reused.
    recorder = SparseFFN(ffns, "intermediate", ThresholdRule(calibration.thresholds), record=True)
    packed_bytes = 0

    def traced() -> None:
        nonlocal packed_bytes
        with torch.inference_mode(), recorder:
            for row in ids:
                model.model(row[None])
                packed_bytes = recorder.take_packed().nbytes   # one transfer per window, all layers

    for fn in (plain, traced):   # warm-up: kernels, allocator
        fn()
    plain_t, traced_t = [], []
    for _ in range(repeats):     # alternate so drift hits both sides alike
        plain_t += _timed(plain, device, 1)
        traced_t += _timed(traced, device, 1)
    plain_s, traced_s = min(plain_t), min(traced_t)
    out = {
        "model": "llama-2-7b-shaped LlamaForCausalLM, random weights, bf16 (shapes and speed only)",
        "device": torch.cuda.get_device_name(0), "torch": torch.__version__, "tokens": tokens, "window": window,
        "plain_s": plain_s, "traced_s": traced_s, "ratio": traced_s / plain_s,
        "plain_tok_per_s": tokens / plain_s, "traced_tok_per_s": tokens / traced_s,
        "packed_mask_bytes_per_window": packed_bytes, "all_times_s": {"plain": plain_t, "traced": traced_t},
    }
    RESULTS.write_text(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    print(json.dumps(run(), indent=1))
