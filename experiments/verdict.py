"""The verdict of a sweep: per device, what an architect takes away — computed from the records.

Vocabulary (``docs/experiments.md``, "The verdict"):

* **device** — a hardware profile together with any hardware fields the sweep changed
  (``storage.peak_bandwidth=...``): each is its own device, never pooled with another;
* **trace** — one activation trace (a model at one sparsity on one text), told apart by SHA-256;
* **budget** — the run's ``dram_budget``;
* **design** — predictor + replacement policy + every other setting the sweep varied;
* **run shown** — a design run with several seeds is shown by its median-time run (for an even
  count the faster of the two middle ones): a run that exists, never a median of columns;
* **dense** — the fastest ``dense`` run at that device, trace and budget: *in DRAM* when it read
  nothing from storage (the FFN fits), *streamed* otherwise;
* **realisable** — a run that is no bound (its predictor and its replacement policy do not see the
  future: ``bound`` is false) and is not ``dense``: ``none`` (demand loading of the active neurons)
  included;
* **bound** — the fastest run that sees the future (an oracle-type predictor, or an offline policy
  such as Bélády), noisy oracles left to the break-even study: an upper bound, never a design;
* **break-even quality** — among the ``noisy-oracle`` runs of one replacement policy, ordered from
  the best predictor (highest recall, then precision) down, the last one that is still faster than
  dense before the first that is not: how good a predictor must be for sparse loading to pay.

Speed-ups are the ratio of two records' ``time_per_token_s`` (dense / the design's); both run ids
are in the verdict table. Records written before the engine recorded ``predictor_sees_future`` and
``bound`` get them here, from the registries' ``sees_future`` class attributes.
"""

from __future__ import annotations

import functools
import json
import math
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Hashable, Iterable, Sequence

from sparsesim import human
from sparsesim.errors import InputError
from sparsesim.simulator.predictors import PREDICTORS
from sparsesim.simulator.replacement import REPLACEMENT
from sparsesim.simulator.simulate import parse_policy
from sparsesim.tracefile import file_sha256, read_meta

Row = dict[str, Any]
NOISY = "noisy-oracle"
TIME = "time_per_token_s"


# ---------------------------------------------------------------------------------------------
# Columns a record may lack


@functools.lru_cache(maxsize=None)
def _predictor_class(spec: str) -> type:
    return PREDICTORS.get(parse_policy(spec)[0])


def sees_future(row: Row) -> bool:
    """The record's ``predictor_sees_future``, or the registry's ``sees_future`` of its predictor."""
    value = row.get("predictor_sees_future")
    return bool(value) if value is not None else bool(_predictor_class(row["predictor"]).sees_future)


@functools.lru_cache(maxsize=None)
def _policy_class(spec: str) -> type:
    return REPLACEMENT.get(parse_policy(spec)[0])


def is_bound(row: Row) -> bool:
    """The record's ``bound``: its predictor or its replacement policy sees the future."""
    value = row.get("bound")
    if value is not None:
        return bool(value)
    return sees_future(row) or bool(getattr(_policy_class(row["cache"]), "sees_future", False))


def is_dense(row: Row) -> bool:
    return bool(_predictor_class(row["predictor"]).dense)


def is_noisy(row: Row) -> bool:
    return parse_policy(row["predictor"])[0] == NOISY


def with_flags(rows: Iterable[Row]) -> list[Row]:
    """The ``ok`` records, each with ``predictor_sees_future`` and ``bound`` filled in where missing."""
    return [{**r, "predictor_sees_future": sees_future(r), "bound": is_bound(r)}
            for r in rows if r.get("status", "ok") == "ok"]


@functools.lru_cache(maxsize=1 << 16)
def _settings_of(config: str) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(json.loads(config).get("settings", {}).items()))


def settings(row: Row) -> dict[str, str]:
    """The run's settings as written in its config (text values); empty for a record without one."""
    return dict(_settings_of(row["config"])) if row.get("config") else {}


def varying_settings(rows: Sequence[Row]) -> tuple[str, ...]:
    """Design settings (not the budget, not hardware fields) whose value differs between runs."""
    seen: dict[str, set] = defaultdict(set)
    for r in rows:
        for key, value in settings(r).items():
            seen[key].add(value)
    keys = {k for r in rows for k in settings(r)}
    return tuple(sorted(k for k in keys if k != "dram_budget" and "." not in k
                        and (len(seen[k]) > 1 or any(k not in settings(r) for r in rows))))


def device_of(row: Row) -> str:
    """The profile name, with the hardware fields the sweep set on it."""
    hardware = [f"{k}={v}" for k, v in settings(row).items() if "." in k]
    return " ".join([row["profile"], *hardware])


def design_of(row: Row, varying: Sequence[str] = ()) -> str:
    extra = [f"{k}={settings(row).get(k, '-')}" for k in varying]
    return " ".join([f"{row['predictor']} + {row['cache']}", *extra])


# ---------------------------------------------------------------------------------------------
# Traces


@dataclass(frozen=True)
class TraceInfo:
    name: str
    sha256: str
    model: str
    sparsity: float | None           # measured mean FFN sparsity (None: not recorded)
    target: float | None
    ppl_dense: float | None
    ppl_sparse: float | None
    ppl_tokens: int | None
    window: int | None
    text: str | None

    @property
    def level(self) -> str:
        """``50 % sparsity``, or the file name of a trace without a sparsity target."""
        return f"{human.percent(self.target)} sparsity" if self.target is not None else self.name


def trace_info(rows: Sequence[Row]) -> dict[str, TraceInfo]:
    """Per trace SHA-256: sparsity and perplexity from the trace file's metadata (when it is readable)."""
    out: dict[str, TraceInfo] = {}
    for r in rows:
        sha = r["trace_sha256"]
        if sha in out:
            continue
        meta: dict = {}
        try:   # the file as it is now must be the one the runs replayed
            if file_sha256(r["trace"]) == sha:
                meta, _ = read_meta(r["trace"])
        except (InputError, OSError, KeyError, TypeError):
            pass   # moved or deleted since the sweep: the report still stands on the records
        sparsity = meta.get("sparsity") or {}
        ppl = meta.get("perplexity") or {}
        evaluation = (meta.get("text") or {}).get("evaluation") or {}
        out[sha] = TraceInfo(name=r["trace_name"], sha256=sha, model=r.get("model") or "",
                             sparsity=sparsity.get("measured_mean"), target=sparsity.get("target"),
                             ppl_dense=ppl.get("dense"), ppl_sparse=ppl.get("sparse"), ppl_tokens=ppl.get("tokens"),
                             window=ppl.get("window", evaluation.get("window")), text=evaluation.get("name"))
    return out


def trace_order(traces: dict[str, TraceInfo]) -> list[str]:
    """Trace hashes by sparsity target (then name)."""
    return sorted(traces, key=lambda s: (traces[s].target if traces[s].target is not None else math.inf,
                                         traces[s].name))


# ---------------------------------------------------------------------------------------------
# Runs shown


def shown_run(runs: Sequence[Row]) -> Row:
    """The median-time run of one configuration's seeds (the faster middle one for an even count)."""
    ordered = sorted(runs, key=lambda r: (r[TIME], r.get("run_id", "")))
    return ordered[(len(ordered) - 1) // 2]


def shown_runs(rows: Sequence[Row], varying: Sequence[str]) -> list[Row]:
    """One run per (device, trace, design, budget)."""
    groups: dict[Hashable, list[Row]] = defaultdict(list)
    for r in rows:
        if isinstance(r.get(TIME), (int, float)) and math.isfinite(r[TIME]):
            groups[(device_of(r), r["trace_sha256"], design_of(r, varying), r["dram_budget"])].append(r)
    return [shown_run(g) for _, g in sorted(groups.items(), key=lambda kv: str(kv[0]))]


def fastest(runs: Iterable[Row]) -> Row | None:
    """The fastest run; on a tie the simpler design (no prefetch first, then by name), then the lower run id."""
    return min(runs, key=lambda r: (r[TIME], r["predictor"] != "none", r["predictor"], r["cache"],
                                    r.get("run_id", "")), default=None)


# ---------------------------------------------------------------------------------------------
# The verdict


@dataclass
class BreakEven:
    family: str                 # the replacement policy and settings of the noisy-oracle runs
    last_win: Row | None        # the lowest-quality run still faster than dense (None: even the best loses)
    first_loss: Row | None      # the best run that is not (None: every run swept wins)

    def describe(self) -> str:
        def quality(r: Row) -> str:
            return f"recall {r['predictor_recall']:.2f}, precision {r['predictor_precision']:.2f}"
        if self.last_win is None:
            return f"never: even the best noisy oracle swept ({quality(self.first_loss)}) is slower than dense"
        if self.first_loss is None:
            return f"wins at every quality swept, down to {quality(self.last_win)}"
        return f"needs {quality(self.last_win)} or better (at {quality(self.first_loss)} it loses)"


@dataclass
class Cell:
    """One (device, trace, budget) of the verdict."""
    device: str
    trace: str                  # SHA-256
    budget: float
    dense: Row | None
    best: Row | None            # fastest realisable run
    bound: Row | None           # fastest oracle-type run
    break_even: BreakEven | None
    design: str = ""            # label of ``best``

    @property
    def speedup(self) -> float:
        return _speedup(self.dense, self.best)

    @property
    def bound_speedup(self) -> float:
        return _speedup(self.dense, self.bound)

    @property
    def dense_where(self) -> str:
        if self.dense is None:
            return BASELINE if math.isfinite(self.speedup) else ""
        return "in DRAM" if self.dense["storage_bytes_per_token"] == 0 else "streamed"


BASELINE = "each run's own dense baseline"


def _speedup(dense: Row | None, other: Row | None) -> float:
    """Dense's time / the run's; without dense runs, the run's own ``speedup_vs_dense`` (a sweep with
    ``baselines: true``: dense on the same profile, budget and replacement policy)."""
    if other is None:
        return float("nan")
    if dense is not None:
        return dense[TIME] / other[TIME]
    value = other.get("speedup_vs_dense")
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else float("nan")


@dataclass
class Verdict:
    cells: list[Cell]
    traces: dict[str, TraceInfo]
    varying: tuple[str, ...]
    runs: list[Row] = field(default_factory=list)        # the runs shown (one per configuration)

    def devices(self) -> list[str]:
        return list(dict.fromkeys(c.device for c in self.cells))

    def of(self, device: str) -> list[Cell]:
        return [c for c in self.cells if c.device == device]


def _break_even(noisy: Sequence[Row], dense: Row | None, varying: Sequence[str]) -> BreakEven | None:
    if not noisy or not all(math.isfinite(_speedup(dense, r)) for r in noisy):
        return None
    families: dict[str, list[Row]] = defaultdict(list)
    for r in noisy:
        families[design_of(r, varying).split(" + ", 1)[1]].append(r)
    results = []
    for family, runs in sorted(families.items()):
        ordered = sorted(runs, key=lambda r: (-_finite(r.get("predictor_recall")),
                                              -_finite(r.get("predictor_precision")), r.get("run_id", "")))
        last_win = first_loss = None
        for r in ordered:
            if _speedup(dense, r) > 1:
                last_win = r
            else:
                first_loss = r
                break
        results.append(BreakEven(family, last_win, first_loss))
    # the family that lets the worst predictor win (a policy that never breaks even ranks last)
    return min(results, key=lambda b: _finite(b.last_win["predictor_recall"]) if b.last_win else math.inf)


def _finite(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else -1.0


def compute(rows: Iterable[Row]) -> Verdict:
    """The verdict of a sweep's records (any status; only ``ok`` runs count)."""
    ok = with_flags(rows)
    varying = varying_settings(ok)
    runs = shown_runs(ok, varying)
    traces = trace_info(runs)
    cells: dict[tuple, list[Row]] = defaultdict(list)
    for r in runs:
        cells[(device_of(r), r["trace_sha256"], r["dram_budget"])].append(r)
    order = {sha: i for i, sha in enumerate(trace_order(traces))}
    out = []
    for (device, sha, budget), mine in sorted(cells.items(), key=lambda kv: (kv[0][0], order[kv[0][1]], kv[0][2])):
        dense = fastest(r for r in mine if is_dense(r))
        best = fastest(r for r in mine if not is_dense(r) and not r["bound"])
        bound = fastest(r for r in mine if r["bound"] and not is_noisy(r)) or fastest(r for r in mine if r["bound"])
        out.append(Cell(device, sha, budget, dense, best, bound,
                        _break_even([r for r in mine if is_noisy(r)], dense, varying),
                        design=design_of(best, varying) if best else ""))
    return Verdict(out, traces, varying, runs)


# ---------------------------------------------------------------------------------------------
# Words


def verdict_rows(verdict: Verdict) -> list[Row]:
    """The verdict as a table: one row per device, trace and budget (``NAME-verdict.csv``)."""
    rows = []
    for c in verdict.cells:
        t = verdict.traces[c.trace]
        be = c.break_even
        rows.append({
            "device": c.device, "trace": t.name, "sparsity_target": t.target, "sparsity_measured": t.sparsity,
            "ppl_dense": t.ppl_dense, "ppl_sparse": t.ppl_sparse, "dram_budget": c.budget,
            "dense_ms": _ms(c.dense), "dense_where": c.dense_where, "dense_run": _id(c.dense),
            "best_design": c.design, "best_ms": _ms(c.best), "best_run": _id(c.best),
            "speedup_vs_dense": c.speedup,
            "bound_design": design_of(c.bound, verdict.varying) if c.bound else "", "bound_ms": _ms(c.bound),
            "bound_run": _id(c.bound), "bound_speedup_vs_dense": c.bound_speedup,
            "break_even_policy": be.family if be else "",
            "break_even_recall": be.last_win["predictor_recall"] if be and be.last_win else None,
            "break_even_precision": be.last_win["predictor_precision"] if be and be.last_win else None,
            "break_even_run": _id(be.last_win) if be else "",
            "loses_at_recall": be.first_loss["predictor_recall"] if be and be.first_loss else None,
            "loses_run": _id(be.first_loss) if be else "",
        })
    return rows


def _ms(row: Row | None) -> float | None:
    return row[TIME] * 1e3 if row is not None else None


def _id(row: Row | None) -> str:
    return row.get("run_id", "") if row is not None else ""


def headline(verdict: Verdict, device: str) -> Cell | None:
    """The device's cell where the best realisable design gains most over dense."""
    cells = [c for c in verdict.of(device) if math.isfinite(c.speedup)]
    return max(cells, key=lambda c: (c.speedup, -c.budget), default=None)


def summary_lines(verdict: Verdict) -> list[str]:
    """The closing summary: perplexity per trace, then one line per device (the demo prints these;
    the report shows them first)."""
    lines = []
    traces = [verdict.traces[s] for s in trace_order(verdict.traces)]
    with_ppl = [t for t in traces if t.ppl_sparse is not None]
    if with_ppl:
        t0 = with_ppl[0]
        levels = "; ".join(f"{t.level} {human.number(t.ppl_sparse)}" for t in with_ppl)
        lines.append(f"Perplexity of {t0.model} on {t0.text} ({t0.ppl_tokens} tokens, window {t0.window}): dense "
                     f"{human.number(t0.ppl_dense)}; {levels}.")
    for device in verdict.devices():
        cells = verdict.of(device)
        comparable = [c for c in cells if math.isfinite(c.speedup)]
        wins = [c for c in comparable if c.speedup > 1]
        best = headline(verdict, device)
        if best is None:
            lines.append(f"{device}: no setting has both a dense and a realisable sparse run to compare.")
            continue
        t = verdict.traces[best.trace]
        dense = (f"dense {human.ms(best.dense[TIME])} ({best.dense_where})" if best.dense is not None
                 else f"dense: {best.dense_where}")
        line = (f"{device}: sparse loading beats dense in {len(wins)} of {len(comparable)} settings. Best realisable: "
                f"{best.design} at {t.level}{_quality(t)}, budget {human.budget(best.budget)}: "
                f"{human.ms(best.best[TIME])}/token vs {dense}, {human.ratio(best.speedup)}")
        if best.bound is not None and math.isfinite(best.bound_speedup):
            line += f"; oracle bound there {human.ms(best.bound[TIME])} ({human.ratio(best.bound_speedup)})"
        if best.break_even is not None:
            line += f"; break-even predictor {best.break_even.describe()}"
        lines.append(line + ".")
    return lines


def _quality(t: TraceInfo) -> str:
    """`` (perplexity 17.4, dense 15.1)``: what the sparsity costs in quality, when the trace says."""
    if t.ppl_sparse is None or t.ppl_dense is None:
        return ""
    return f" (perplexity {human.number(t.ppl_sparse)}, dense {human.number(t.ppl_dense)})"
