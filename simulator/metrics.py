"""The reported metrics: each registered once, by name, with its formula (``docs/metrics.md``).

A run's result is one flat record: configuration, metrics, provenance. A metric is a function of
a replay's counters (:mod:`sparsesim.simulator.accounting`) and the run's constants, registered
with :func:`metric`; ``tests/test_metrics_registry.py`` checks that every registered name has its
entry in ``docs/metrics.md``. Per-layer counters are kept as a JSON string in ``per_layer`` so that
the record stays one row of a results table.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from sparsesim.simulator.engine import ReplayResult
from sparsesim.simulator.scenario import ModelFootprint
from sparsesim.tracecolumns import DECODE, PREFILL


@dataclass(frozen=True)
class RunFigures:
    """What a metric may read: totals of every counter, per-token times and the run's constants."""

    tot: dict[str, int]
    result: ReplayResult
    b: float                 # bytes per unit (every unit's when they are all one size)
    b_prefetch: float        # bytes one prefetch reads per unit (b, or a gate row under two-phase)
    ffn_bytes: float         # bytes of the whole FFN (an expert trace: of every routed expert)
    energy_storage: float    # J/B of the backing store the FFN is read from
    energy_dram: float
    energy_cache: float
    energy_flop: float
    unit_bytes: np.ndarray | None = None   # [L] bytes per unit of each layer when sizes differ (experts)

    @property
    def T(self) -> int:
        return self.result.n_tokens

    @property
    def totals(self):
        return self.result.counts.totals

    @property
    def device_read_bytes(self) -> float:
        """What the device read: the units' bytes and the padding of read granularity or page faults."""
        return self.storage_bytes + self.totals.padding_bytes

    def units_bytes(self, counters: tuple[str, ...], per_unit: float, layer: dict[str, np.ndarray] | None = None) -> float:
        """Bytes of the units the ``counters`` count: × ``per_unit``, or × each layer's unit bytes when
        sizes differ (then a prefetch reads whole units: ``per_unit`` is b). ``layer``: one phase's counters."""
        if self.unit_bytes is None:
            n = sum(self.tot[c] for c in counters) if layer is None else sum(int(layer[c].sum()) for c in counters)
            return n * per_unit
        layer = self.result.counts.layer if layer is None else layer
        return float(sum(layer[c] for c in counters) @ self.unit_bytes)

    def ffn_read_of(self, layer: dict[str, np.ndarray] | None = None) -> float:
        """FFN bytes read, row-level: whole units on demand, what a prefetch reads per unit, and
        the up/down rows read after a two-phase gate prefetch."""
        if self.unit_bytes is not None:
            return self.units_bytes(("demand_units", "prefetch_units"), self.b, layer)
        t = self.tot if layer is None else {c: int(v.sum()) for c, v in layer.items()}
        return (t["demand_units"] * self.b + t["prefetch_units"] * self.b_prefetch
                + t["second_phase_units"] * (self.b - self.b_prefetch))

    @property
    def ffn_read(self) -> float:
        return self.ffn_read_of()

    @property
    def batched(self) -> bool:
        """Some step row stands for several tokens (a prefill batch)."""
        return bool(np.any(self.result.row_tokens > 1))

    def per_token(self, seconds: np.ndarray) -> float:
        """Mean seconds per measured token of per-step-row times."""
        return float(seconds.sum() / self.T) if self.batched else float(seconds.mean())

    def rows(self, phase: int) -> np.ndarray:
        return self.result.token_phase == phase

    def phase(self, phase: int) -> dict[str, np.ndarray]:
        return self.result.counts.phase[phase]

    def phase_tokens(self, phase: int) -> int:
        return int(self.result.row_tokens[self.rows(phase)].sum())

    def phase_hit_rate(self, phase: int) -> float:
        c = self.phase(phase)
        return _ratio(int((c["hits"] + c["late"] + c["gate_hits"]).sum()), int(c["accesses"].sum()))

    @property
    def storage_bytes(self) -> float:
        return self.ffn_read + self.totals.nonffn_storage_bytes


@dataclass(frozen=True)
class Metric:
    name: str
    definition: str
    compute: Callable[[RunFigures], Any]


METRICS: dict[str, Metric] = {}


def metric(name: str, definition: str) -> Callable[[Callable[[RunFigures], Any]], Callable[[RunFigures], Any]]:
    """Register a reported metric: ``definition`` is the one-line formula ``docs/metrics.md`` expands."""
    def add(fn: Callable[[RunFigures], Any]) -> Callable[[RunFigures], Any]:
        if name in METRICS:
            raise ValueError(f"metric {name!r} registered twice")
        METRICS[name] = Metric(name, definition, fn)
        return fn
    return add


def _ratio(a: float, b: float) -> float:
    return float(a) / float(b) if b else float("nan")


def _count(name: str, counter: str, definition: str) -> None:
    metric(name, definition)(lambda f: f.tot[counter])


# -- time ----------------------------------------------------------------------------------------
metric("tokens", "measured tokens T")(lambda f: f.T)
metric("layers", "FFN layers L")(lambda f: f.result.n_layers)
metric("time_per_token_s", "mean simulated time per measured token")(lambda f: f.per_token(f.result.times.total))
for _p in (50, 90, 99):
    metric(f"time_per_token_p{_p}_s", f"{_p}th percentile of the per-token times (decode tokens when batched)")(
        lambda f, p=_p: float(np.percentile(f.result.times.total[f.rows(DECODE)] if f.batched and f.rows(DECODE).any()
                                            else f.result.times.total, p)))
metric("tokens_per_s", "1 / time_per_token_s")(lambda f: _ratio(1.0, f.per_token(f.result.times.total)))
metric("compute_per_token_s", "mean compute time per token")(lambda f: f.per_token(f.result.times.compute))
metric("io_stall_per_token_s", "mean time per token the FFN waited for weights")(
    lambda f: f.per_token(f.result.times.stall))
metric("cache_mgmt_per_token_s", "mean cache-management time per token")(lambda f: f.per_token(f.result.times.management))
metric("io_time_per_token_s", "storage busy time / T")(lambda f: f.totals.io_busy / f.T)
metric("interconnect_time_per_token_s", "interconnect busy time / T (a discrete compute unit's transfers)")(
    lambda f: f.totals.link_busy / f.T)
metric("prompt_prefill_s", "the analytic prefill of the prompt_tokens positions before the trace, on the "
       "compute unit (0 without)")(lambda f: f.totals.prompt_prefill_s)

# -- traffic -------------------------------------------------------------------------------------
metric("storage_bytes", "FFN bytes read + streamed non-FFN bytes")(lambda f: float(f.storage_bytes))
metric("storage_bytes_per_token", "storage_bytes / T")(lambda f: f.storage_bytes / f.T)
metric("ffn_storage_bytes", "demand units·b + prefetched units·b_p + second-phase units·(b − b_p)")(
    lambda f: float(f.ffn_read))
metric("useful_bytes", "demand units·b + useful prefetches·b_p + second-phase units·(b − b_p)")(
    lambda f: float(f.units_bytes(("demand_units",), f.b) + f.units_bytes(("prefetch_useful",), f.b_prefetch)
                    + f.tot["second_phase_units"] * (f.b - f.b_prefetch)))
metric("wasted_bytes", "(useless + unused at end + bypassed + gate-dropped prefetches)·b_p")(
    lambda f: float(f.units_bytes(("prefetch_useless", "prefetch_unused_at_end", "prefetch_bypassed",
                                   "prefetch_gate_dropped"), f.b_prefetch)))
metric("device_read_bytes", "storage_bytes + padding: what the device read (read granularity, page faults)")(
    lambda f: f.device_read_bytes)
metric("read_amplification", "device_read_bytes / storage_bytes")(
    lambda f: _ratio(f.device_read_bytes, f.storage_bytes))
metric("ffn_bytes_used_per_token", "accesses·b / T")(lambda f: f.units_bytes(("accesses",), f.b) / f.T)
metric("ffn_share_loaded_per_token", "ffn_storage_bytes / T / FFN bytes")(lambda f: _ratio(f.ffn_read / f.T, f.ffn_bytes))
metric("preloaded_bytes", "units placed before decoding (static-pin, warm) · b; counted, not timed")(
    lambda f: float(f.totals.preloaded_bytes))
_count("requests", "requests", "storage requests issued")
metric("mean_request_bytes", "requested bytes / requests")(lambda f: _ratio(f.tot["request_bytes"], f.tot["requests"]))

# -- cache ---------------------------------------------------------------------------------------
_count("accesses", "accesses", "Σ|N|: needed units looked up")
_count("hits", "hits", "needed units resident at lookup")
_count("late_hits", "late", "needed units in flight at lookup")
_count("gate_hits", "gate_hits", "two-phase: needed units whose gate row was staged at lookup")
_count("demand_misses", "misses", "needed units read on demand")
metric("hit_rate", "(hits + late_hits + gate_hits) / accesses: needed units not read on demand")(
    lambda f: _ratio(f.tot["hits"] + f.tot["late"] + f.tot["gate_hits"], f.tot["accesses"]))
metric("timely_hit_rate", "hits / accesses: resident when needed")(lambda f: _ratio(f.tot["hits"], f.tot["accesses"]))
metric("miss_ratio", "demand_misses / accesses")(lambda f: _ratio(f.tot["misses"], f.tot["accesses"]))
metric("byte_miss_ratio", "demand-missed bytes / accessed bytes")(
    lambda f: _ratio(f.units_bytes(("misses",), f.b), f.units_bytes(("accesses",), f.b)))
_count("evictions", "evictions", "units removed from the cache (replacement and expiry)")
_count("expired", "expired", "units a policy dropped voluntarily (window)")
_count("demand_streamed", "demand_streamed", "units read on demand and used but not cached (a prefill batch over the partition)")
metric("preloaded_units", "units placed before decoding")(lambda f: f.totals.preloaded_units)
metric("dropped_units", "false_negatives=drop: needed units outside the predicted set, never read or computed")(
    lambda f: f.totals.dropped_units)
metric("hot_accesses", "needed units a hot unit computed densely (hot_unit), outside the cache")(
    lambda f: f.totals.hot_accesses)
metric("hot_activation_share", "hot_accesses / (hot_accesses + accesses)")(
    lambda f: _ratio(f.totals.hot_accesses, f.totals.hot_accesses + f.tot["accesses"]))

# -- prefetching ---------------------------------------------------------------------------------
for _name, _definition in (
        ("prefetch_requested", "Σ|P|: units the predictor asked for"),
        ("prefetch_issued", "Σ|P \\ (R ∪ F ∪ S)| sent to storage"),
        ("prefetch_useful", "prefetched units used before leaving the cache"),
        ("prefetch_useless", "prefetched units evicted or expired unused"),
        ("prefetch_unused_at_end", "prefetched units resident (or staged) and unused at the end"),
        ("prefetch_bypassed", "prefetched units read but not inserted"),
        ("prefetch_dropped", "predicted units not issued because of prefetch_cap"),
        ("prefetch_no_room", "predicted units not issued: the cache could not have kept them"),
        ("prefetch_gate_dropped", "two-phase: staged gate rows of inactive units dropped"),
        ("second_phase_units", "two-phase: up/down rows read after a gate prefetch")):
    _count(_name, _name, _definition)
_count("prefetch_late", "late", "= late_hits")

# -- pollution -----------------------------------------------------------------------------------
metric("pollution_bytes", "prefetched units evicted unused · b")(lambda f: float(f.units_bytes(("pollution_units",), f.b)))
_count("pollution_misses", "pollution_misses", "misses on units a prefetch fill displaced")

# -- predictor accuracy --------------------------------------------------------------------------
metric("predictor_precision", "TP / (TP + FP)")(
    lambda f: _ratio(f.tot["pred_tp"], f.tot["pred_tp"] + f.tot["pred_fp"]))
metric("predictor_recall", "TP / (TP + FN)")(lambda f: _ratio(f.tot["pred_tp"], f.tot["pred_tp"] + f.tot["pred_fn"]))
metric("over_prediction", "(TP + FP) / (TP + FN)")(
    lambda f: _ratio(f.tot["pred_tp"] + f.tot["pred_fp"], f.tot["pred_tp"] + f.tot["pred_fn"]))

# -- energy --------------------------------------------------------------------------------------
metric("energy_per_token_j", "(device read bytes·E_store + DRAM bytes·E_dram + on-chip bytes·E_cache + FLOPs·E_flop) / T")(
    lambda f: (f.device_read_bytes * f.energy_storage + f.totals.dram_bytes * f.energy_dram
               + f.totals.cache_bytes * f.energy_cache + f.totals.flops * f.energy_flop) / f.T)

# -- decode and prefill ------------------------------------------------------------------------
metric("decode_tokens", "measured decode tokens")(lambda f: f.phase_tokens(DECODE))
metric("prefill_tokens", "measured prompt tokens, replayed in batches")(lambda f: f.phase_tokens(PREFILL))
metric("decode_time_per_token_s", "mean simulated time of a decode token")(
    lambda f: float(f.result.times.total[f.rows(DECODE)].mean()) if f.rows(DECODE).any() else float("nan"))
for _name, _attr, _what in (("compute", "compute", "compute"), ("io_stall", "stall", "I/O stall"),
                            ("cache_mgmt", "management", "cache-management")):
    metric(f"decode_{_name}_per_token_s", f"mean {_what} time of a decode token")(
        lambda f, a=_attr: float(getattr(f.result.times, a)[f.rows(DECODE)].mean()) if f.rows(DECODE).any() else float("nan"))
metric("prefill_time_s", "simulated time of every measured prefill batch")(
    lambda f: float(f.result.times.total[f.rows(PREFILL)].sum()))
metric("decode_hit_rate", "hit_rate over decode steps")(lambda f: f.phase_hit_rate(DECODE))
metric("prefill_hit_rate", "hit_rate over prefill batch steps")(lambda f: f.phase_hit_rate(PREFILL))
metric("decode_ffn_storage_bytes_per_token", "ffn_storage_bytes of decode steps / decode tokens")(
    lambda f: _ratio(f.ffn_read_of(f.phase(DECODE)), f.phase_tokens(DECODE)))
metric("prefill_ffn_storage_bytes", "ffn_storage_bytes of prefill batch steps")(lambda f: f.ffn_read_of(f.phase(PREFILL)))
metric("decode_predictor_precision", "predictor_precision over predictions for decode steps")(
    lambda f: _ratio(int(f.phase(DECODE)["pred_tp"].sum()),
                     int((f.phase(DECODE)["pred_tp"] + f.phase(DECODE)["pred_fp"]).sum())))
metric("decode_predictor_recall", "predictor_recall over predictions for decode steps")(
    lambda f: _ratio(int(f.phase(DECODE)["pred_tp"].sum()),
                     int((f.phase(DECODE)["pred_tp"] + f.phase(DECODE)["pred_fn"]).sum())))

metric("per_layer", "every per-layer counter, as JSON")(
    lambda f: json.dumps({k: v.tolist() for k, v in f.result.counts.layer.items()}))


def summarize(result: ReplayResult, fp: ModelFootprint, profile, store_energy_per_byte: float) -> dict[str, Any]:
    figures = RunFigures(
        tot={k: int(v.sum()) for k, v in result.counts.layer.items()}, result=result, b=fp.unit_size,
        b_prefetch=result.prefetch_unit_bytes, ffn_bytes=fp.ffn_bytes, energy_storage=store_energy_per_byte,
        energy_dram=profile.dram.energy_per_byte,
        energy_cache=profile.cache.energy_per_byte if profile.cache is not None else 0.0,
        energy_flop=profile.compute.energy_per_flop,
        unit_bytes=None if fp.uniform else np.asarray(fp.unit_bytes, dtype=float))
    return {name: m.compute(figures) for name, m in METRICS.items()}


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:,.2f} ms"


def _mb(nbytes: float) -> str:
    return f"{nbytes / 1e6:,.2f} MB"


SUMMARY_LINES: tuple[tuple[str, Callable[[dict[str, Any]], str]], ...] = (
    ("time per token", lambda r: f"{_ms(r['time_per_token_s'])}  (p50 {_ms(r['time_per_token_p50_s'])}, "
                                 f"p90 {_ms(r['time_per_token_p90_s'])}, p99 {_ms(r['time_per_token_p99_s'])})"),
    ("  compute / I/O stall / cache mgmt", lambda r: f"{_ms(r['compute_per_token_s'])} / "
                                                     f"{_ms(r['io_stall_per_token_s'])} / {_ms(r['cache_mgmt_per_token_s'])}"),
    ("tokens/s", lambda r: f"{r['tokens_per_s']:,.2f}"),
    ("storage read per token", lambda r: f"{_mb(r['storage_bytes_per_token'])}  (useful "
                                         f"{_mb(r['useful_bytes'] / r['tokens'])}, wasted {_mb(r['wasted_bytes'] / r['tokens'])})"),
    ("requests per token", lambda r: f"{r['requests'] / r['tokens']:,.1f}  (mean {r['mean_request_bytes'] / 1e3:,.1f} kB)"),
    ("cache", lambda r: f"hit rate {r['hit_rate']:.3f} (timely {r['timely_hit_rate']:.3f}), miss ratio "
                        f"{r['miss_ratio']:.3f}  (hits {r['hits']:,}, late {r['late_hits']:,}, misses {r['demand_misses']:,})"),
    ("prefetches", lambda r: f"issued {r['prefetch_issued']:,}, useful {r['prefetch_useful']:,}, useless "
                             f"{r['prefetch_useless']:,}, bypassed {r['prefetch_bypassed']:,}, unused at end "
                             f"{r['prefetch_unused_at_end']:,}"),
    ("pollution per token", lambda r: f"{_mb(r['pollution_bytes'] / r['tokens'])} evicted unused; "
                                      f"{r['pollution_misses']:,} misses on displaced units in total"),
    ("predictor", lambda r: f"precision {r['predictor_precision']:.3f}, recall {r['predictor_recall']:.3f}, "
                            f"over-prediction {r['over_prediction']:.2f}"),
    ("decode (per token) / prefill", lambda r: (
        f"{_ms(r['decode_time_per_token_s'])} (hit rate {r['decode_hit_rate']:.3f}) over {r['decode_tokens']:,} "
        f"tokens / {r['prefill_time_s']:,.2f} s (hit rate {r['prefill_hit_rate']:.3f}) over {r['prefill_tokens']:,} "
        f"prompt tokens") if r.get("prefill_tokens") else None),
    ("energy per token", lambda r: f"{r['energy_per_token_j'] * 1e3:,.2f} mJ"),
    ("speed-up vs dense / vs none", lambda r: f"{r['speedup_vs_dense']:.2f}x / {r['speedup_vs_none']:.2f}x"),
)


def format_summary(record: dict[str, Any]) -> str:
    bound = "  [a bound: sees the future]" if record.get("bound") else ""
    budget = (f"cache {record['cache_budget'] / 2**20:,.1f} MiB" if record.get("cache_budget")
              else f"budget {record['dram_budget']}")
    head = (f"{record['trace_name']} on {record['profile']} | predictor {record['predictor']} | "
            f"cache {record['cache']} | {budget} | {record['precision']} {record['layout']}{bound}")
    lines = [head]
    for label, fmt in SUMMARY_LINES:
        try:
            line = fmt(record)
        except KeyError:   # e.g. no baselines were run
            continue
        if line is not None:
            lines.append(f"  {label:<34} {line}")
    return "\n".join(lines)
