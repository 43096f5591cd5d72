"""``sparsesim capture-check``: replay a routing capture and hold it to the device's own counters.

An imported ``route_trace`` capture (``docs/moe.md``) records, per routed expert, whether the
device's expert cache held it at lookup (``capture:resident``), and per decoded token the device's
measurements (``capture.metrics``: wall, I/O, compute and management time, bytes read, cumulative
hit rate, then a summary line). :func:`capture_check` replays the capture as the device ran it —
global LRU over the captured cache budget, from a cold cache, no prefetch — and compares, lookup
by lookup, step by step, over the whole run, and the time per decode token with its split.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from sparsesim.errors import InputError
from sparsesim.experiments.reproductions.time_budget import relative_error
from sparsesim.simulator.simulate import load_trace, simulate
from sparsesim.simulator.steps import replay_steps
from sparsesim.tracecolumns import DECODE
from sparsesim.tracefile import Trace

MIB = 2 ** 20
RESIDENT = "capture:resident"
# How the captures computed: the CPU's decode threads (the profile's ``cpu`` unit) over Q4_K weights,
# 4.5 bits per weight as int4's 18 B / 32 weights. ``--set`` overrides either.
CAPTURE_SETTINGS = ("compute_unit=cpu", "precision=int4")
# What the check reads of the device's metrics: summary keys and per-step columns.
_SUMMARY_KEYS = ("cache_hit_pct", "read_MiB", "s/tok", "compute_s/tok", "stall_s/tok", "mgmt_s/tok", "io_s/tok",
                 "prefill_s")
_METRIC_COLUMNS = ("cache_hit_pct", "wall_ms", "compute_ms", "stall_ms", "mgmt_ms", "io_ms")


def capture_check(trace: str | Path | Trace, profile: str = "oneplus-15r", budget: str | None = None,
                  settings: Sequence[str] = ()) -> dict[str, Any]:
    """The replay against the capture: per-lookup agreement over decode lookups, the run's hit rate and
    decode MiB read against the summary line, the per-step cumulative hit rate against the metrics'
    ``cache_hit_pct``, and the time per decode token with its split against the summary."""
    trace = trace if isinstance(trace, Trace) else load_trace(trace)
    capture = trace.meta.get("capture")
    if trace.route is None or RESIDENT not in trace.columns or not isinstance(capture, dict) \
            or not isinstance(capture.get("metrics"), dict):
        raise InputError(f"{trace.path}: capture-check needs an imported capture with a route column, a "
                         f"'{RESIDENT}' column and the device's metrics (sparsesim import of a route_trace CSV "
                         f"beside its .metrics file)")
    metrics = capture["metrics"]
    summary = metrics["summary"]
    missing = [k for k in _SUMMARY_KEYS + (() if budget else ("cache_budget_MiB",)) if k not in summary]
    missing += [f"metrics column {c}" for c in _METRIC_COLUMNS if c not in metrics["columns"]]
    missing += [f"trace column {c}" for c in ("capture:read_bytes",) if c not in trace.columns]
    if missing:
        raise InputError(f"{trace.path}: the capture lacks {', '.join(missing)}, which capture-check compares with "
                         f"(the '# summary' line and columns of route_trace's .metrics file)")
    if budget is None:
        budget = f"{summary['cache_budget_MiB']}MiB"
    log: list[tuple] = []
    settings = [*CAPTURE_SETTINGS, f"cache_budget={budget}", "partition=global", *settings]
    record = simulate(trace, profile, "none", "lru", settings=settings, baselines=False, lookup_log=log)
    steps = replay_steps(trace)
    lookups = _lookups(trace, steps, log)
    decode = lookups["decode"]
    agree = lookups["ours"] == lookups["device"]
    rows = np.asarray(metrics["rows"], dtype=float)
    col = {name: i for i, name in enumerate(metrics["columns"])}
    per_step = _per_step(steps, log)
    return {
        "trace": str(trace.path), "model": trace.model.get("name"), "profile": profile, "settings": settings,
        "cache_budget_MiB": record["cache_budget"] / MIB,
        "decode_lookups": int(decode.sum()), "decode_agree": int(agree[decode].sum()),
        "decode_agreement": float(agree[decode].mean()),
        "decode_disagree": [{"step": int(s), "layer": int(l), "expert": int(e), "replay_hit": bool(o)}
                            for s, l, e, o in zip(*(lookups[k][decode & ~agree] for k in ("step", "layer", "expert",
                                                                                         "ours")))],
        "hit_rate_pct": 100 * record["hit_rate"], "device_hit_rate_pct": float(summary["cache_hit_pct"]),
        "decode_hit_rate_pct": 100 * record["decode_hit_rate"],
        "device_decode_hit_rate_pct": 100 * float(lookups["device"][decode].mean()),
        "decode_read_MiB": record["decode_ffn_storage_bytes_per_token"] * record["decode_tokens"] / MIB,
        "device_read_MiB": float(summary["read_MiB"]),
        "device_rows_read_MiB": float(np.asarray(trace.columns["capture:read_bytes"])[steps_decode_tokens(steps)].sum()
                                      / MIB),
        "step_hit_pct": per_step.tolist(), "device_step_hit_pct": rows[:, col["cache_hit_pct"]].tolist(),
        "time": _time_split(record, summary, rows, col),
        "record": record,
    }


def steps_decode_tokens(steps) -> np.ndarray:
    """Trace token indices of the decode step rows."""
    rows = steps.decode_rows()
    return rows if steps.first_token is None else steps.first_token[rows]


def _lookups(trace: Trace, steps, log: list[tuple]) -> dict[str, np.ndarray]:
    """One entry per routed expert of the capture's rows that the replay looked up: the replay's hit
    (resident at lookup) against the device's ``capture:resident``. A prefill batch's repeats of one
    expert are one lookup: the device's first row of it is the one compared."""
    route, resident = trace.route, trace.columns[RESIDENT]
    out: dict[str, list] = {k: [] for k in ("step", "layer", "expert", "ours", "device", "decode")}
    first = steps.first_token if steps.first_token is not None else np.arange(steps.n_steps)
    ends = np.append(first[1:], trace.n_tokens)
    for step, layer, hit, _late, _staged, _miss in log:
        seen = 0
        for token in range(first[step], ends[step]):
            for slot, expert in enumerate(route[token, layer].tolist()):
                if expert < 0 or (seen >> expert) & 1:
                    continue
                seen |= 1 << expert
                out["step"].append(step)
                out["layer"].append(layer)
                out["expert"].append(expert)
                out["ours"].append((hit >> expert) & 1)
                out["device"].append(int(resident[token, layer, slot]))
                out["decode"].append(steps.phase is None or steps.phase[step] == DECODE)
    return {k: np.asarray(v) for k, v in out.items()}


def _per_step(steps, log: list[tuple]) -> np.ndarray:
    """Cumulative hit rate (%) after each decode step row, prefill lookups included (the device's
    ``cache_hit_pct`` column)."""
    hits = np.zeros(steps.n_steps)
    looked = np.zeros(steps.n_steps)
    for step, _layer, hit, late, staged, miss in log:
        hits[step] += hit.bit_count() + late.bit_count() + staged.bit_count()
        looked[step] += hit.bit_count() + late.bit_count() + staged.bit_count() + miss.bit_count()
    cumulative = 100 * np.cumsum(hits) / np.maximum(np.cumsum(looked), 1)
    return cumulative[steps.decode_rows()]


def _time_split(record: dict, summary: dict, rows: np.ndarray, col: dict[str, int]) -> dict[str, dict[str, float]]:
    """Seconds per decode token, the replay's against the device's: total, compute, I/O stall, management,
    and storage busy time (the device sums 4 lanes' busy time; per lane-equivalent it is that / lanes)."""
    ms = {name: float(rows[:, col[name]].mean()) / 1e3 for name in ("wall_ms", "compute_ms", "stall_ms", "mgmt_ms",
                                                                    "io_ms")}
    return {
        "total": {"replay": record["decode_time_per_token_s"], "device": float(summary["s/tok"]),
                  "device_mean_wall": ms["wall_ms"]},
        "compute": {"replay": record["decode_compute_per_token_s"], "device": float(summary["compute_s/tok"])},
        "io_stall": {"replay": record["decode_io_stall_per_token_s"], "device": float(summary["stall_s/tok"])},
        "management": {"replay": record["decode_cache_mgmt_per_token_s"], "device": float(summary["mgmt_s/tok"])},
        "io_busy_lane_sum": {"device": float(summary["io_s/tok"])},
        "prefill": {"replay": record["prefill_time_s"], "device": float(summary["prefill_s"])},
    }


def plot_step_hit_rate(results: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """A PNG of the replay's cumulative hit rate per decode step against the device's ``cache_hit_pct``
    (plotly; the image needs kaleido and a Chromium)."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    from sparsesim.atomic import atomic_path

    fig = make_subplots(rows=1, cols=len(results), subplot_titles=[r["model"] for r in results],
                        shared_yaxes=True)
    for i, r in enumerate(results, start=1):
        x = np.arange(1, len(r["step_hit_pct"]) + 1)
        fig.add_trace(go.Scatter(x=x, y=r["device_step_hit_pct"], name="device (cache_hit_pct)",
                                 line=dict(color="#444", width=4), showlegend=i == 1), row=1, col=i)
        fig.add_trace(go.Scatter(x=x, y=r["step_hit_pct"], name="replay: global LRU, cold, no prefetch",
                                 line=dict(color="#e4572e", width=1.5, dash="dot"), showlegend=i == 1), row=1, col=i)
        fig.update_xaxes(title_text="decode step", row=1, col=i)
    fig.update_yaxes(title_text="cumulative hit rate (%)", row=1, col=1)
    fig.update_layout(width=1000, height=420, margin=dict(l=60, r=20, t=60, b=50), template="plotly_white",
                      title=f"Expert cache of {results[0]['cache_budget_MiB']:,.0f} MiB on the phone vs the replay",
                      legend=dict(orientation="h", y=-0.2))
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.write_image(str(tmp), format="png")
    return path


def format_check(r: dict[str, Any]) -> str:
    t = r["time"]
    lines = [f"{r['model']}: global LRU, {r['cache_budget_MiB']:,.1f} MiB, cold, no prefetch ({r['profile']}; "
             f"{', '.join(s for s in r['settings'] if not s.startswith(('cache_budget=', 'partition=')))})",
             f"  decode lookups agreeing with capture:resident  {r['decode_agree']:,} / {r['decode_lookups']:,} "
             f"= {100 * r['decode_agreement']:.2f} %",
             f"  hit rate, whole run                           {r['hit_rate_pct']:.2f} %  (device {r['device_hit_rate_pct']} %)",
             f"  hit rate, decode                              {r['decode_hit_rate_pct']:.2f} %  (device rows "
             f"{r['device_decode_hit_rate_pct']:.2f} %)",
             f"  read during decode                            {r['decode_read_MiB']:,.1f} MiB  (device "
             f"{r['device_read_MiB']:,.1f} MiB; its per-expert rows {r['device_rows_read_MiB']:,.1f} MiB)",
             "  per decode token (s)                            replay   device   error"]
    for part in ("total", "compute", "io_stall", "management", "prefill"):
        replay, device = t[part]["replay"], t[part]["device"]
        name = "prompt prefill, whole (s)" if part == "prefill" else part
        lines.append(f"    {name:<44}{replay:.4f}   {device:.3f}   {100 * relative_error(replay, device):+.1f} %")
    return "\n".join(lines)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("capture-check", help="replay an imported routing capture against the device's own counters",
                       description="Replay a route_trace capture (sparsesim import) with global LRU at the captured "
                                   "cache budget from a cold cache, and compare each lookup with the capture's "
                                   "residency column, the hit rate and bytes with its summary line, and the time "
                                   "per decode token with its metrics (docs/moe.md).")
    p.add_argument("traces", nargs="+", metavar="TRACE", help="imported capture .parquet")
    p.add_argument("--profile", default="oneplus-15r")
    p.add_argument("--budget", metavar="SIZE", help="cache budget (default: the capture's own)")
    p.add_argument("--set", dest="settings", action="append", default=[], metavar="KEY=VALUE",
                   help="a scenario or dotted profile field, as for simulate")
    p.add_argument("--plot", metavar="PNG", help="write the per-step hit rate against the device's")
    p.add_argument("--json", action="store_true", help="print JSON (without the full records)")
    p.set_defaults(func=_capture_check)


def _capture_check(args: argparse.Namespace) -> int:
    from sparsesim.atomic import check_writable

    if args.plot:
        check_writable(args.plot)
    results = [capture_check(t, args.profile, args.budget, args.settings) for t in args.traces]
    if args.json:
        print(json.dumps([{k: v for k, v in r.items() if k != "record"} for r in results], indent=1))
    else:
        print("\n".join(format_check(r) for r in results))
    if args.plot:
        print(f"wrote {plot_step_hit_rate(results, args.plot)}")
    return 0
