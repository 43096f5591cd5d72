"""Turn a replay's raw counters into the reported metrics (definitions: ``docs/metrics.md``).

A run's result is one flat record: configuration, metrics, provenance. Per-layer arrays are kept
as a JSON string in ``per_layer`` so that the record stays one row of a results table.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from sparsesim.simulator.engine import ReplayStats, ffn_read_bytes
from sparsesim.simulator.scenario import ModelFootprint


def _ratio(a: float, b: float) -> float:
    return float(a) / float(b) if b else float("nan")


def summarize(stats: ReplayStats, fp: ModelFootprint, profile) -> dict[str, Any]:
    c = {k: v.astype(np.int64) for k, v in stats.layer.items()}
    tot = {k: int(v.sum()) for k, v in c.items()}
    T = stats.n_tokens
    nb = fp.neuron_bytes
    times = stats.token_time
    pf = stats.prefetch_neuron_bytes or nb   # a prefetch reads a whole neuron, or its gate row (two-phase)
    useful = tot["demand_neurons"] * nb + tot["prefetch_useful"] * pf + tot["second_phase_neurons"] * (nb - pf)
    wasted = (tot["prefetch_useless"] + tot["prefetch_unused_at_end"] + tot["prefetch_bypassed"]
              + tot["prefetch_gate_dropped"]) * pf
    ffn_read = ffn_read_bytes(tot, nb, pf)
    energy = (stats.storage_bytes * profile.storage.energy_per_byte
              + stats.dram_bytes * profile.dram.energy_per_byte
              + stats.flops * profile.compute.energy_per_flop)
    out: dict[str, Any] = {
        "tokens": T,
        "layers": stats.n_layers,
        "time_per_token_s": float(times.mean()),
        "time_per_token_p50_s": float(np.percentile(times, 50)),
        "time_per_token_p90_s": float(np.percentile(times, 90)),
        "time_per_token_p99_s": float(np.percentile(times, 99)),
        "tokens_per_s": _ratio(1.0, times.mean()),
        "compute_per_token_s": float(stats.token_compute.mean()),
        "io_stall_per_token_s": float(stats.token_stall.mean()),
        "cache_mgmt_per_token_s": float(stats.token_mm.mean()),
        "io_time_per_token_s": stats.io_busy / T,
        "storage_bytes": float(stats.storage_bytes),
        "storage_bytes_per_token": stats.storage_bytes / T,
        "ffn_storage_bytes": float(ffn_read),
        "useful_bytes": float(useful),
        "wasted_bytes": float(wasted),
        "ffn_bytes_used_per_token": tot["accesses"] * nb / T,
        "ffn_share_loaded_per_token": _ratio(ffn_read / T, fp.ffn_bytes),
        "requests": tot["requests"],
        "mean_request_bytes": _ratio(tot["request_bytes"], tot["requests"]),
        "accesses": tot["accesses"],
        "hits": tot["hits"],
        "late_hits": tot["late"],
        "demand_misses": tot["misses"],
        "gate_hits": tot["gate_hits"],
        "hit_rate": _ratio(tot["hits"], tot["accesses"]),
        "prefetch_requested": tot["prefetch_requested"],
        "prefetch_issued": tot["prefetch_issued"],
        "prefetch_useful": tot["prefetch_useful"],
        "prefetch_useless": tot["prefetch_useless"],
        "prefetch_late": tot["late"],
        "prefetch_unused_at_end": tot["prefetch_unused_at_end"],
        "prefetch_bypassed": tot["prefetch_bypassed"],
        "prefetch_dropped": tot["prefetch_dropped"],
        "prefetch_gate_dropped": tot["prefetch_gate_dropped"],
        "second_phase_neurons": tot["second_phase_neurons"],
        "evictions": tot["evictions"],
        "expired": tot["expired"],
        "pollution_bytes": float(tot["pollution_neurons"] * nb),
        "pollution_misses": tot["pollution_misses"],
        "predictor_precision": _ratio(tot["pred_tp"], tot["pred_tp"] + tot["pred_fp"]),
        "predictor_recall": _ratio(tot["pred_tp"], tot["pred_tp"] + tot["pred_fn"]),
        "over_prediction": _ratio(tot["pred_tp"] + tot["pred_fp"], tot["pred_tp"] + tot["pred_fn"]),
        "energy_per_token_j": energy / T,
        "per_layer": json.dumps({k: v.tolist() for k, v in c.items()}),
    }
    return out


SUMMARY_LINES = (
    ("time per token", "time_per_token_s", "{:.4g} s  (p50 {time_per_token_p50_s:.4g}, p90 {time_per_token_p90_s:.4g}, p99 {time_per_token_p99_s:.4g})"),
    ("  compute / I/O stall / cache mgmt", "compute_per_token_s", "{:.4g} / {io_stall_per_token_s:.4g} / {cache_mgmt_per_token_s:.4g} s"),
    ("tokens/s", "tokens_per_s", "{:.4g}"),
    ("storage read per token", "storage_bytes_per_token", "{:.4g} B  (useful {useful_bytes:.4g} B, wasted {wasted_bytes:.4g} B in total)"),
    ("requests", "requests", "{}  (mean {mean_request_bytes:.4g} B)"),
    ("cache", "hit_rate", "hit rate {:.4f}  (hits {hits}, late {late_hits}, demand misses {demand_misses})"),
    ("prefetches", "prefetch_issued", "issued {}, useful {prefetch_useful}, useless {prefetch_useless}, unused at end {prefetch_unused_at_end}"),
    ("pollution", "pollution_bytes", "{:.4g} B evicted unused, {pollution_misses} misses on displaced neurons"),
    ("predictor", "predictor_precision", "precision {:.4f}, recall {predictor_recall:.4f}, over-prediction {over_prediction:.3f}"),
    ("energy per token", "energy_per_token_j", "{:.4g} J"),
    ("speed-up vs dense / vs none", "speedup_vs_dense", "{:.3f}x / {speedup_vs_none:.3f}x"),
)


def format_summary(record: dict[str, Any]) -> str:
    head = (f"{record['trace_name']} on {record['profile']} | predictor {record['predictor']} | "
            f"cache {record['cache']} | budget {record['dram_budget']} | {record['precision']} {record['layout']}")
    lines = [head]
    for label, key, fmt in SUMMARY_LINES:
        if key in record:
            lines.append(f"  {label:<34} " + fmt.format(record[key], **record))
    return "\n".join(lines)
