"""``sparsesim report``: a sweep's results as one offline HTML page plus CSV tables.

The page aggregates before it plots, so it stays small and quick for thousands of runs: one point
per configuration (the median over traces and seeds), one bar per policy, one line per predictor.
Sections: runs and failures; Pareto front of time per token vs DRAM budget per profile; traffic and
pollution per policy; speed-up over dense; sensitivity to each swept numeric setting; per-layer
predictor accuracy; sparsity vs perplexity (from the tracer's ``curve.csv``); provenance of every
input. Next to the page: ``<name>-summary.csv`` (one row per configuration, seeds pooled) and
``<name>-pareto.csv`` (the Pareto points).
"""

from __future__ import annotations

import csv
import functools
import io
import json
import math
import os
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any, Callable, Hashable, Iterable, Sequence

import numpy as np
import plotly.graph_objects as go

from sparsesim.atomic import check_writable, write_text
from sparsesim.errors import InputError
from sparsesim.inputs import read_text
from sparsesim.tracefile import file_sha256

from sparsesim.experiments.html import Section, table_html, write_page
from sparsesim.experiments.sweep import read_results

PPL_FILE = "curve.csv"                    # what `sparsesim ppl -o RESULTS_DIR/curve.csv` writes
PPL_LEVEL_COLUMNS = ("target_sparsity", "level")
FAILURES_SHOWN = 20
SENSITIVITY_BINS = 10
MB = 1e6
Row = dict[str, Any]


# ---------------------------------------------------------------------------------------------
# Aggregation helpers


def _finite(values: Iterable[Any]) -> np.ndarray:
    array = np.array([v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)], dtype=float)
    return array[np.isfinite(array)]


def _quantile(rows: Sequence[Row], column: str, q: float = 0.5) -> float:
    values = _finite(r.get(column) for r in rows)
    return float(np.quantile(values, q)) if values.size else float("nan")


def _per_token(rows: Sequence[Row], column: str) -> float:
    """Median over runs of a run total divided by its measured tokens."""
    return float(np.median(v)) if (v := _finite(r[column] / r["tokens"] for r in rows)).size else float("nan")


def _group(rows: Iterable[Row], key: Callable[[Row], Hashable]) -> dict[Hashable, list[Row]]:
    groups: dict[Hashable, list[Row]] = defaultdict(list)
    for row in rows:
        groups[key(row)].append(row)
    return dict(groups)


@functools.lru_cache(maxsize=1 << 16)
def _parse_config(text: str) -> dict[str, Any]:
    return json.loads(text)


def _config(row: Row) -> dict[str, Any]:
    """The run's canonical config (parsed once per distinct text; callers must not modify it)."""
    return _parse_config(row["config"])


def _settings(row: Row, *drop: str) -> dict[str, str]:
    return {k: v for k, v in _config(row)["settings"].items() if k not in drop}


def _design(row: Row) -> str:
    return f"{row['predictor']} + {row['cache']}"


def _label(row: Row, *drop: str) -> str:
    """A configuration's settings in one line: policy, then the scenario and profile settings."""
    extra = " ".join(f"{k}={v}" for k, v in _settings(row, *drop).items())
    return f"{_design(row)} {extra}".strip()


def _config_key(row: Row, *drop: str) -> str:
    """A configuration without its trace and seed (and the settings in ``drop``): what medians pool over."""
    config = {k: v for k, v in _config(row).items() if k not in ("trace", "seed", "train_trace", "profile_trace")}
    config["settings"] = _settings(row, *drop)
    return json.dumps(config, sort_keys=True)


def csv_text(rows: Sequence[Row]) -> str:
    buffer = io.StringIO()
    if rows:
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return buffer.getvalue()


def _log_axis(values: Iterable[float]) -> bool:
    values = _finite(values)
    return bool(values.size) and values.min() > 0 and values.max() / values.min() > 20


# ---------------------------------------------------------------------------------------------
# Sections


def _runs_section(rows: Sequence[Row]) -> Section:
    counts = Counter(r["status"] for r in rows)
    ok = [r for r in rows if r["status"] == "ok"]
    overview = [{"what": "runs", "count": len(rows)},
                *({"what": f"status {s}", "count": n} for s, n in sorted(counts.items())),
                {"what": "traces", "count": len({r["trace_name"] for r in rows})},
                {"what": "profiles", "count": len({r["profile"] for r in rows})},
                {"what": "policies (predictor + cache)", "count": len({_design(r) for r in rows})},
                {"what": "configurations (traces and seeds pooled)", "count": len({_config_key(r) for r in ok})}]
    failures = Counter((r["status"], r["error"]) for r in rows if r["status"] != "ok")
    failed = [{"status": s, "runs": n, "error": e} for (s, e), n in failures.most_common(FAILURES_SHOWN)]
    text = ("invalid: the simulator refused the configuration (deterministic, not retried); error: an "
            "unexpected failure (retried when the sweep is run again).")
    tables = [table_html(overview)]
    if failed:
        tables.append(table_html(failed, caption=f"failures, most frequent first (at most {FAILURES_SHOWN})"))
    return Section("Runs", text, tables=tables)


def _pareto(points: list[Row]) -> list[Row]:
    """Points not dominated in (budget, time): each is faster than every point with a smaller budget."""
    front, best = [], math.inf
    for p in sorted(points, key=lambda p: (p["budget"], p["time_ms"])):
        if p["time_ms"] < best:
            front.append(p)
            best = p["time_ms"]
    return front


def _pareto_section(ok: Sequence[Row]) -> tuple[Section, list[Row]]:
    points = []
    for rows in _group(ok, _config_key).values():
        r = rows[0]
        time_ms = _quantile(rows, "time_per_token_s") * 1e3
        if math.isfinite(time_ms):
            points.append({"profile": r["profile"], "budget": r["dram_budget"], "time_ms": time_ms,
                           "runs": len(rows), "config": _label(r, "dram_budget")})
    # dram_budget <= 1 is a fraction of the FFN, > 1 total bytes of DRAM for weights (docs/simulator.md)
    kinds = {"fraction": ("DRAM neuron-cache budget (fraction of the FFN)", lambda b: b <= 1, 1.0),
             "bytes": ("DRAM for weights (GB)", lambda b: b > 1, 1e9)}
    figures, front_rows = [], []
    for kind, (axis, belongs, scale) in kinds.items():
        mine = [p for p in points if belongs(p["budget"])]
        if not mine:
            continue
        fig = go.Figure()
        for profile, ps in sorted(_group(mine, lambda p: p["profile"]).items()):
            front = _pareto(ps)
            front_rows += [{**p, "budget_kind": kind} for p in front]
            fig.add_trace(go.Scatter(x=[p["budget"] / scale for p in ps], y=[p["time_ms"] for p in ps],
                                     mode="markers", name=f"{profile} (all)", legendgroup=profile, opacity=0.35,
                                     text=[p["config"] for p in ps],
                                     hovertemplate="%{text}<br>budget %{x:.4g}<br>%{y:.4g} ms/token"))
            fig.add_trace(go.Scatter(x=[p["budget"] / scale for p in front], y=[p["time_ms"] for p in front],
                                     mode="lines+markers", line_shape="hv", name=f"{profile} Pareto front",
                                     legendgroup=profile, text=[p["config"] for p in front],
                                     hovertemplate="%{text}<br>budget %{x:.4g}<br>%{y:.4g} ms/token"))
        fig.update_layout(title=f"Time per token vs DRAM budget ({kind})", xaxis_title=axis,
                          yaxis_title="time per token (ms, median over traces and seeds)", template="plotly_white",
                          xaxis_type="log" if _log_axis(p["budget"] for p in mine) else "linear",
                          yaxis_type="log" if _log_axis(p["time_ms"] for p in mine) else "linear")
        figures.append(fig)
    text = ("One marker per configuration (median time per token over traces and seeds); the line joins the "
            "configurations no other beats with a smaller budget. Hover for the configuration.")
    return Section("Pareto front: time per token vs DRAM budget", text, figures=figures), front_rows


def _traffic_section(ok: Sequence[Row]) -> Section:
    table = []
    for design, rows in sorted(_group(ok, _design).items()):
        table.append({"policy": design, "runs": len(rows),
                      "storage MB/token": _quantile(rows, "storage_bytes_per_token") / MB,
                      "useful MB/token": _per_token(rows, "useful_bytes") / MB,
                      "wasted MB/token": _per_token(rows, "wasted_bytes") / MB,
                      "pollution MB/token": _per_token(rows, "pollution_bytes") / MB,
                      "pollution misses/token": _per_token(rows, "pollution_misses"),
                      "hit rate": _quantile(rows, "hit_rate")})
    names = [t["policy"] for t in table]
    traffic = go.Figure([go.Bar(name=part, x=names, y=[t[f"{part} MB/token"] for t in table])
                         for part in ("useful", "wasted")])
    traffic.update_layout(barmode="stack", title="Flash traffic per token (median over runs)",
                          yaxis_title="MB per token", template="plotly_white")
    pollution = go.Figure(go.Bar(x=names, y=[t["pollution MB/token"] for t in table],
                                 customdata=[t["pollution misses/token"] for t in table],
                                 hovertemplate="%{x}<br>%{y:.4g} MB/token evicted unused<br>"
                                               "%{customdata:.4g} misses on displaced neurons/token"))
    pollution.update_layout(title="Cache pollution per token (bytes brought in and evicted unused; median)",
                            yaxis_title="MB per token", template="plotly_white")
    text = ("Useful bytes were used by the token that needed them; wasted bytes were prefetched and never used. "
            "Definitions: docs/metrics.md.")
    return Section("Traffic and pollution per policy", text, figures=[traffic, pollution], tables=[table_html(table)])


def _speedup_section(ok: Sequence[Row]) -> Section:
    if not _finite(r.get("speedup_vs_dense") for r in ok).size:
        return Section("Speed-up over dense", "No speed-ups recorded: the sweep ran with baselines: false, or the "
                                              "dense baseline could not run at any budget swept.")
    fig = go.Figure()
    table = []
    designs = sorted({_design(r) for r in ok})
    for profile, rows in sorted(_group(ok, lambda r: r["profile"]).items()):
        by_design = _group(rows, _design)
        stats = {d: [_quantile(by_design.get(d, []), "speedup_vs_dense", q) for q in (0.1, 0.5, 0.9)]
                 for d in designs}
        fig.add_trace(go.Bar(name=profile, x=designs, y=[stats[d][1] for d in designs],
                             error_y={"type": "data", "symmetric": False,
                                      "array": [stats[d][2] - stats[d][1] for d in designs],
                                      "arrayminus": [stats[d][1] - stats[d][0] for d in designs]}))
        table += [{"profile": profile, "policy": d, "runs": len(by_design[d]),
                   "speed-up vs dense (median)": stats[d][1], "p10": stats[d][0], "p90": stats[d][2],
                   "speed-up vs no prefetch (median)": _quantile(by_design[d], "speedup_vs_none")}
                  for d in designs if d in by_design]
    fig.update_layout(barmode="group", title="Speed-up over dense (median, whiskers p10-p90)",
                      yaxis_title="time per token of dense / of the policy", template="plotly_white")
    text = ("Dense: no sparsity on the same profile and budget. Missing bars: the dense baseline cannot run at "
            "that budget (not even as one global pool).")
    return Section("Speed-up over dense", text, figures=[fig], tables=[table_html(table)])


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _setting_value(row: Row, key: str) -> float:
    """A numeric setting of a run: dotted profile fields from their resolved column (base units)."""
    return row[key] if "." in key else float(_config(row)["settings"][key])


def _swept_numeric(ok: Sequence[Row]) -> list[str]:
    """Settings that vary across runs and are numbers (DRAM budget has its own section)."""
    seen: dict[str, set] = defaultdict(set)
    for r in ok:
        for key, value in _config(r)["settings"].items():
            seen[key].add(value)
    return [key for key, values in sorted(seen.items())
            if len(values) > 1 and key != "dram_budget"
            and ("." in key and all(isinstance(r.get(key), (int, float)) for r in ok if key in r)
                 or "." not in key and all(_number(v) is not None for v in values))]


def _binned(by_value: dict[float, list[float]]) -> tuple[list[float], list[float]]:
    """Median per value; a sampled (continuous) setting is pooled into equal-count bins first."""
    xs = sorted(by_value)
    if len(xs) <= SENSITIVITY_BINS:
        return xs, [float(np.median(by_value[x])) for x in xs]
    bins = np.array_split(np.array(xs), SENSITIVITY_BINS)
    return ([float(np.median(b)) for b in bins],
            [float(np.median([v for x in b for v in by_value[x]])) for b in bins])


def _sensitivity_section(ok: Sequence[Row]) -> Section:
    figures = []
    for key in _swept_numeric(ok):
        rows = [r for r in ok if key in _config(r)["settings"]]
        # main effect: each run relative to the median of its policy on its profile and trace, so that
        # grids and sampled (Latin-hypercube) designs read the same way and profiles are comparable
        reference = {k: _quantile(g, "time_per_token_s")
                     for k, g in _group(rows, lambda r: (_design(r), r["profile"], r["trace_sha256"])).items()}
        ratios: dict[str, dict[float, list[float]]] = defaultdict(lambda: defaultdict(list))
        for r in rows:
            ratios[_design(r)][_setting_value(r, key)].append(
                r["time_per_token_s"] / reference[(_design(r), r["profile"], r["trace_sha256"])])
        fig = go.Figure()
        for design, by_value in sorted(ratios.items()):
            xs, ys = _binned(by_value)
            fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines+markers", name=design))
        fig.update_layout(title=f"Sensitivity to {key}", xaxis_title=f"{key} (base units)",
                          yaxis_title="time per token / the policy's median", template="plotly_white",
                          xaxis_type="log" if _log_axis(_setting_value(r, key) for r in rows) else "linear")
        figures.append(fig)
    text = ("Main effect of each swept numeric setting: time per token relative to the median of the same policy on "
            "the same profile and trace, as a median over everything else (sampled values pooled into "
            f"{SENSITIVITY_BINS} equal-count bins). Hardware fields are in base units (B/s, s, B, FLOP/s)."
            if figures else "No numeric setting other than the DRAM budget was swept.")
    return Section("Sensitivity to swept parameters", text, figures=figures)


def _layer_accuracy_section(ok: Sequence[Row]) -> Section:
    totals: dict[tuple[str, str], dict[str, np.ndarray]] = {}
    for r in ok:
        layers = json.loads(r["per_layer"])
        if not sum(layers["pred_tp"]) + sum(layers["pred_fp"]):
            continue   # predicted nothing (e.g. "none"): precision undefined, recall zero everywhere
        acc = totals.setdefault((r["predictor"], r["model"]), {k: 0 for k in ("pred_tp", "pred_fp", "pred_fn")})
        for k in acc:
            acc[k] = acc[k] + np.asarray(layers[k], dtype=np.int64)
    fig = go.Figure()
    several_models = len({model for _, model in totals}) > 1
    for (predictor, model), acc in sorted(totals.items()):
        name = f"{predictor} @ {model}" if several_models else predictor
        layer = list(range(len(acc["pred_tp"])))
        with np.errstate(invalid="ignore", divide="ignore"):
            recall = acc["pred_tp"] / (acc["pred_tp"] + acc["pred_fn"])
            precision = acc["pred_tp"] / (acc["pred_tp"] + acc["pred_fp"])
        fig.add_trace(go.Scatter(x=layer, y=recall, mode="lines+markers", name=f"{name} recall", legendgroup=name))
        fig.add_trace(go.Scatter(x=layer, y=precision, mode="lines+markers", line_dash="dot",
                                 name=f"{name} precision", legendgroup=name))
    fig.update_layout(title="Predictor accuracy per layer (pooled over runs)", xaxis_title="layer",
                      yaxis_title="recall (solid) / precision (dotted)", yaxis_range=[0, 1.05], template="plotly_white")
    text = "Recall: share of truly active neurons predicted; precision: share of predicted neurons truly active."
    return Section("Per-layer predictor accuracy", text, figures=[fig] if totals else [])


def _ppl_section(path: Path) -> tuple[Section, dict[str, str]]:
    rows = list(csv.DictReader(io.StringIO(read_text(path, f"--ppl {path}"), newline="")))
    columns = set(rows[0]) if rows else set()
    level = next((c for c in PPL_LEVEL_COLUMNS if c in columns), None)
    if level is None or "ppl" not in columns:
        raise InputError(f"--ppl {path}: expected columns ppl and one of {', '.join(PPL_LEVEL_COLUMNS)} "
                         f"(as written by sparsesim ppl), got {', '.join(sorted(columns)) or 'none'}")
    try:
        points = [(r.get("method") or "", 100 * float(r[level]), float(r["ppl"])) for r in rows]
    except ValueError as e:
        raise InputError(f"--ppl {path}: not a number: {e}") from None
    fig = go.Figure()
    for method, ps in _group(points, lambda p: p[0]).items():
        ps.sort(key=lambda p: p[1])
        fig.add_trace(go.Scatter(x=[p[1] for p in ps], y=[p[2] for p in ps], mode="lines+markers",
                                 name=method or "ppl"))
    model = rows[0].get("model", "")
    fig.update_layout(title=f"Sparsity vs perplexity {model}".strip(), xaxis_title="FFN activation sparsity (%)",
                      yaxis_title="perplexity", template="plotly_white")
    return Section("Sparsity vs perplexity", f"From {path}.", figures=[fig]), \
        {"file": str(path), "sha256": file_sha256(path)}


def _provenance_section(rows: Sequence[Row]) -> Section:
    traces = {(r["trace_name"], r.get("trace_sha256"), r.get("trace_kind"), r.get("model"))
              for r in rows if r["status"] == "ok"}
    profiles: dict[tuple[str, str], set] = defaultdict(set)   # base profile -> hashes after swept overrides
    for r in rows:
        base = _config(r)["profile"]
        profiles[(base["name"], base["sha256"])].add(r.get("profile_sha256"))
    companions = {(kind, r.get(kind), r.get(f"{kind}_sha256")) for r in rows
                  for kind in ("train_trace", "profile_trace") if r.get(f"{kind}_sha256")}
    tables = [table_html([{"trace": t, "sha256": s, "kind": k, "model": m} for t, s, k, m in sorted(traces, key=str)],
                         caption="traces"),
              table_html([{"profile": name, "sha256 (hardware values)": sha,
                           "variants run (swept fields)": len(variants - {None})}
                          for (name, sha), variants in sorted(profiles.items())], caption="hardware profiles")]
    if companions:
        tables.append(table_html([{"role": k, "trace": t, "sha256": s} for k, t, s in sorted(companions, key=str)],
                                 caption="training and profiling traces"))
    return Section("Inputs", "Every input of the runs, by content hash (each run's own hashes are in the "
                             "results table).", tables=tables)


# ---------------------------------------------------------------------------------------------
# CSV tables


def summary_rows(rows: Sequence[Row]) -> list[Row]:
    """One row per configuration and trace (seeds pooled): medians of the headline metrics."""
    out = []
    for group in _group(rows, lambda r: (_config_key(r), r["trace_name"])).values():
        r, ok = group[0], [g for g in group if g["status"] == "ok"]
        out.append({
            "trace": r["trace_name"], "profile": r["profile"], "predictor": r["predictor"], "cache": r["cache"],
            "settings": " ".join(f"{k}={v}" for k, v in _settings(r).items()),
            "runs": len(group), "ok": len(ok),
            "time_per_token_ms": _quantile(ok, "time_per_token_s") * 1e3,
            "tokens_per_s": _quantile(ok, "tokens_per_s"),
            "speedup_vs_dense": _quantile(ok, "speedup_vs_dense"),
            "speedup_vs_none": _quantile(ok, "speedup_vs_none"),
            "storage_mb_per_token": _quantile(ok, "storage_bytes_per_token") / MB,
            "wasted_mb_per_token": _per_token(ok, "wasted_bytes") / MB,
            "pollution_mb_per_token": _per_token(ok, "pollution_bytes") / MB,
            "hit_rate": _quantile(ok, "hit_rate"), "recall": _quantile(ok, "predictor_recall"),
            "energy_per_token_j": _quantile(ok, "energy_per_token_j"),
            "error": "" if ok else r["error"],
        })
    return sorted(out, key=lambda s: (s["trace"], s["profile"], s["predictor"], s["cache"], s["settings"]))


# ---------------------------------------------------------------------------------------------
# The page


def _sweep_record(path: Path) -> dict[str, Any]:
    try:
        record = json.loads(read_text(path))
    except (ValueError, RecursionError):
        raise InputError(f"{path}: not valid JSON (sweep.json is written by sparsesim sweep)") from None
    if not isinstance(record, dict):
        raise InputError(f"{path}: expected a JSON object (sweep.json is written by sparsesim sweep)")
    return record


def make_report(results_dir: str | os.PathLike, out_html: str | os.PathLike,
                ppl_csv: str | os.PathLike | None = None) -> str:
    """Write the report page and its CSV tables; returns the page's path."""
    results_dir, out_html = Path(results_dir), check_writable(out_html)
    rows = read_results(results_dir).to_pylist()
    ok = [r for r in rows if r["status"] == "ok"]
    sweep_file = results_dir / "sweep.json"
    sweep = _sweep_record(sweep_file) if sweep_file.is_file() else {}
    sections = [_runs_section(rows)]
    front: list[Row] = []
    if ok:
        pareto, front = _pareto_section(ok)
        sections += [pareto, _traffic_section(ok), _speedup_section(ok), _sensitivity_section(ok),
                     _layer_accuracy_section(ok)]
    ppl_path = Path(ppl_csv) if ppl_csv else results_dir / PPL_FILE
    ppl_input = None
    if ppl_csv or ppl_path.is_file():
        section, ppl_input = _ppl_section(ppl_path)
        sections.append(section)
    sections.append(_provenance_section(rows))
    stem = out_html.with_suffix("")
    write_text(f"{stem}-summary.csv", csv_text(summary_rows(rows)))
    write_text(f"{stem}-pareto.csv", csv_text(front))
    provenance = {"results_dir": str(results_dir.resolve()), "sweep": sweep.get("name"),
                  "spec_file": sweep.get("spec_file"), "spec_sha256": sweep.get("spec_sha256"),
                  "environment": sweep.get("environment"), "perplexity_curve": ppl_input,
                  "sparsesim_versions": sorted({str(r.get("sparsesim_version")) for r in ok})}
    title = f"sparsesim sweep report: {sweep.get('name') or results_dir.name}"
    intro = (f"{len(rows)} runs ({len(ok)} ok) from {results_dir}. Figures aggregate (medians) so the page stays "
             f"light for large sweeps; per-configuration numbers are in {stem.name}-summary.csv.")
    return write_page(out_html, title, sections, provenance, intro)
