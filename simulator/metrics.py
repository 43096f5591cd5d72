"""Turn a replay's raw counters into the reported metrics (definitions: ``docs/metrics.md``).

A run's result is one flat record: configuration, metrics, provenance. Per-layer arrays are kept
as a JSON string in ``per_layer`` so that the record stays one row of a results table.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from sparsesim import human
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


def _summary(r: dict[str, Any]) -> list[tuple[str, str]]:
    """The lines ``sparsesim simulate`` prints, in human units: per-token values say /token, totals are
    over the measured tokens (after the warm-up)."""
    n = r["tokens"]
    lines = [
        ("time per token", f"{human.ms(r['time_per_token_s'])}  (p50 {human.ms(r['time_per_token_p50_s'])}, "
                           f"p90 {human.ms(r['time_per_token_p90_s'])}, p99 {human.ms(r['time_per_token_p99_s'])})"),
        ("  compute / I/O stall / cache mgmt", f"{human.ms(r['compute_per_token_s'])} / "
                                               f"{human.ms(r['io_stall_per_token_s'])} / "
                                               f"{human.ms(r['cache_mgmt_per_token_s'])} per token"),
        ("tokens/s", human.number(r["tokens_per_s"])),
        ("flash read per token", f"{human.mb(r['storage_bytes_per_token'])}  (useful "
                                 f"{human.mb(r['useful_bytes'] / n)}, wasted {human.mb(r['wasted_bytes'] / n)} per token)"),
        ("requests per token", f"{human.number(r['requests'] / n)}  (mean {human.size(r['mean_request_bytes'])} each)"),
        ("cache", f"hit rate {r['hit_rate']:.1%}  (over {n} tokens: {r['hits']} hits, {r['late_hits']} late, "
                  f"{r['demand_misses']} demand misses)"),
        ("prefetches", f"over {n} tokens: issued {r['prefetch_issued']}, useful {r['prefetch_useful']}, useless "
                       f"{r['prefetch_useless']}, unused at end {r['prefetch_unused_at_end']}"),
        ("pollution per token", f"{human.mb(r['pollution_bytes'] / n)} evicted unused  "
                                f"({human.number(r['pollution_misses'] / n)} misses on displaced neurons per token)"),
        ("predictor", f"precision {human.number(r['predictor_precision'])}, recall "
                      f"{human.number(r['predictor_recall'])}, over-prediction {human.number(r['over_prediction'])}"),
        ("energy per token", human.mj(r["energy_per_token_j"])),
    ]
    if "speedup_vs_dense" in r:
        lines.append(("speed-up vs dense / vs none", f"{human.ratio(r['speedup_vs_dense'])} / "
                                                     f"{human.ratio(r['speedup_vs_none'])}"))
    return lines


def format_summary(record: dict[str, Any]) -> str:
    bound = " (sees the future: a bound, not a design)" if record.get("predictor_sees_future") else ""
    head = (f"{record['trace_name']} on {record['profile']} | predictor {record['predictor']}{bound} | "
            f"cache {record['cache']} | budget {human.budget(record['dram_budget'])} | "
            f"{record['precision']} {record['layout']}")
    return "\n".join([head, *(f"  {label:<34} {text}" for label, text in _summary(record))])
