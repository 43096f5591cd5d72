"""LLM in a Flash (Alizadeh et al., ACL 2024), Table 2: I/O latency per token, OPT-6.7B fp16, M1 Max.

Published rows (ms per token, I/O only): naive 2196, hybrid 1090, + predictor 738, + windowing 164,
+ row-column bundling 87. Reproduced on a synthetic OPT-6.7B-shaped trace with the
``apple-m1-max`` profile. What is taken from the paper, and why each setting:

* model shape OPT-6.7B (32 layers, d_model 4096, d_ff 16384, ReLU FFN: 2 rows per neuron), fp16;
* the predictor flags ~10 % of the FFN per token (paper §3.1) — the trace's masks are that flagged
  set (``active = 0.1``) and the predictor is ``oracle`` on it;
* windowing with k = 4 loads 2.4 % of the FFN per token (paper App. C): persistence 0.737 is the
  value for which the sticky-neuron generator gives that ratio at 10 % activity (derived, not
  measured on OPT);
* DRAM: 6.7 GB (hybrid), 4.8 GB (predictor), 6.5 GB (window, bundle) total, as in the table;
  "naive" streams everything including attention from flash through a one-layer buffer;
* storage: the profile's read curve (8 KiB → 1.25 GB/s, 16 KiB → 2.25 GB/s, 1 MiB → 6.1 GB/s);
  naive and hybrid read whole matrices sequentially (coalesced into 1 MiB requests), the sparse
  rows read one 8 KiB row (16 KiB bundle) per neuron as the paper's loader does (no coalescing);
* hybrid keeps a fixed part of the FFN resident (``static-pin``) and streams the rest;
* the windowed rows keep one preallocated matrix per layer (``partition=per-layer``), as the paper's
  memory management does.

The simulator's I/O time per token is the storage device's busy time, averaged after 8 warm-up
tokens (the window needs k tokens to fill).
"""

from __future__ import annotations

from sparsesim.simulator.simulate import simulate
from sparsesim.simulator.synth import synthesize

PUBLISHED_MS = {"naive": 2196, "hybrid": 1090, "predictor": 738, "window": 164, "bundling": 87}

ROWS: dict[str, tuple[str, str, list[str]]] = {
    "naive": ("dense", "lru", ["nonffn_in=flash", "dram_budget=0.0313", "partition=global"]),
    "hybrid": ("dense", "static-pin", ["dram_budget=6.7 GB", "partition=global"]),
    "predictor": ("oracle", "lru", ["coalesce=false", "dram_budget=4.8 GB", "partition=global"]),
    "window": ("oracle", "window:k=4", ["coalesce=false", "dram_budget=6.5 GB", "partition=per-layer"]),
    "bundling": ("oracle", "window:k=4", ["coalesce=false", "dram_budget=6.5 GB", "layout=bundled",
                                          "partition=per-layer"]),
}
COMMON = ["precision=fp16", "warmup=8"]


def make_trace(path: str, tokens: int = 24, seed: int = 0) -> str:
    return synthesize(path, shape="opt-6.7b", tokens=tokens, active=0.1, persistence=0.737, seed=seed,
                      progress=False)


def run(trace: str) -> list[dict]:
    """One record per row with the published and simulated I/O latency (ms per token)."""
    out = []
    for name, (predictor, cache, settings) in ROWS.items():
        r = simulate(trace, "apple-m1-max", predictor, cache, settings=COMMON + settings, baselines=False)
        simulated = r["io_time_per_token_s"] * 1e3
        out.append({"row": name, "published_ms": PUBLISHED_MS[name], "simulated_ms": simulated,
                    "error": simulated / PUBLISHED_MS[name] - 1,
                    "flash_gb_per_token": r["storage_bytes_per_token"] / 1e9,
                    "ffn_share_loaded": r["ffn_share_loaded_per_token"]})
    return out
