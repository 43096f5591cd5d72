"""``sparsesim report``: a sweep's results as one offline HTML page that answers the question, plus CSV tables.

The page opens with the verdict (:mod:`sparsesim.experiments.verdict`): per device, the best
realisable design at each DRAM budget and its speed-up over dense, the oracle bound, and the
predictor quality at which sparse loading breaks even — and the same summary lines ``sparsesim
demo`` prints. Then one section per device (never pooled with another, each on its own scale):
time per token vs DRAM budget with dense, no-prefetch and every predictor (oracle-type ones dashed
and labelled as bounds); flash traffic, energy and pollution per token; miss-ratio curves; the
break-even study; predictor recall and precision. Then perplexity, sensitivity to swept hardware
fields, runs and failures, and provenance.

Every point and every number comes from one record of the results table, named by its run id:
nothing is averaged across runs (seeds are shown by their median-time run). Next to the page:
``NAME-verdict.csv``, ``NAME-points.csv`` (every point drawn, with its run id) and ``NAME-runs.csv``
(every run, in human units).

Sections are plug-ins: a function ``(ReportInput) -> list[Section]`` in :data:`SECTIONS`.
"""

from __future__ import annotations

import csv
import html as html_escape
import io
import json
import math
import os
import sys
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import plotly.graph_objects as go
from plotly.subplots import make_subplots
from tqdm import tqdm

from sparsesim import human
from sparsesim.atomic import check_writable, write_text
from sparsesim.errors import InputError
from sparsesim.inputs import read_text
from sparsesim.tracefile import file_sha256

from sparsesim.experiments import verdict as vd
from sparsesim.experiments.html import Section, table_html, write_page
from sparsesim.experiments.sweep import read_results

PPL_FILE = "curve.csv"                    # what `sparsesim ppl -o RESULTS_DIR/curve.csv` writes
PPL_LEVEL_COLUMNS = ("target_sparsity", "level")
FAILURES_SHOWN = 20
MAX_DEVICE_SECTIONS = 12                  # beyond this (a sampled hardware sweep), the sensitivity section
Row = dict[str, Any]
DENSE_COLOR, NONE_COLOR = "#222222", "#8c8c8c"
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22")


# ---------------------------------------------------------------------------------------------
# What is plotted: one definition per metric, in the unit shown


@dataclass(frozen=True)
class Metric:
    title: str
    unit: str
    value: Callable[[Row], float]


METRICS = {
    "time_ms": Metric("time per token", "ms", lambda r: r["time_per_token_s"] * 1e3),
    "flash_mb": Metric("flash read per token", "MB", lambda r: r["storage_bytes_per_token"] / 1e6),
    "energy_mj": Metric("energy per token", "mJ", lambda r: r["energy_per_token_j"] * 1e3),
    "pollution_mb": Metric("pollution per token", "MB", lambda r: r["pollution_bytes"] / r["tokens"] / 1e6),
    # not resident when the FFN needs it: demand misses and late prefetches (dense prefetches everything)
    "miss_ratio": Metric("miss ratio", "", lambda r: 1 - r["hits"] / r["accesses"] if r["accesses"] else 0.0),
    "recall": Metric("predictor recall", "", lambda r: r["predictor_recall"]),
    "precision": Metric("predictor precision", "", lambda r: r["predictor_precision"]),
    "budget_pct": Metric("DRAM budget", "% of the FFN", lambda r: r["dram_budget"] * 100),
}


def csv_text(rows: Sequence[Row], columns: Sequence[str] | None = None) -> str:
    """Records as CSV (a header even when there are no rows, given ``columns``)."""
    buffer = io.StringIO()
    fields = list(columns or (rows[0] if rows else []))
    if fields:
        writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n", extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return buffer.getvalue()


# ---------------------------------------------------------------------------------------------
# The input every section receives


@dataclass
class ReportInput:
    results_dir: Path
    rows: list[Row]              # every recorded run, any status
    verdict: vd.Verdict          # includes the runs shown (one per configuration) and the traces
    ppl_csv: Path | None         # a perplexity curve from `sparsesim ppl`, if any
    stem: str                    # the page's name without .html (CSV tables are stem-*.csv)

    def shown(self, device: str | None = None) -> list[Row]:
        return [r for r in self.verdict.runs if device is None or vd.device_of(r) == device]

    def design(self, row: Row) -> str:
        return vd.design_of(row, self.verdict.varying)


def _cell(text: str, metric: str, run: Row | None, dense: Row | None = None, css: str = "") -> str:
    """A table cell that names the record(s) its number comes from (checked by the tests)."""
    attrs = f" data-metric='{metric}'"
    if run is not None:
        attrs += f" data-run='{run['run_id']}'"
    if dense is not None:
        attrs += f" data-dense-run='{dense['run_id']}'"
    if css:
        attrs += f" class='{css}'"
    return f"<td{attrs}>{html_escape.escape(text)}</td>"


def _span(text: str, run: Row, dense: Row | None, css: str = "") -> str:
    """A speed-up inside a table cell, naming its run and the dense run it is measured against."""
    attrs = f" data-metric='speedup' data-run='{run['run_id']}'"
    attrs += f" data-dense-run='{dense['run_id']}'" if dense is not None else ""
    attrs += f" class='{css}'" if css else ""
    return f"<span{attrs}>{html_escape.escape(text)}</span>"


def _text_cell(text: str) -> str:
    return f"<td class='text'>{html_escape.escape(text)}</td>"


def _table(head: Sequence[str], body: Iterable[str], caption: str = "") -> str:
    cap = f"<caption>{html_escape.escape(caption)}</caption>" if caption else ""
    th = "".join(f"<th class='{'text' if i == 0 else ''}'>{html_escape.escape(h)}</th>" for i, h in enumerate(head))
    return f"<table>{cap}<thead><tr>{th}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _figure_id(section: str, name: str) -> str:
    return f"{section}-{name}".replace(" ", "-")


# ---------------------------------------------------------------------------------------------
# Section: the verdict (first screen)


def verdict_section(data: ReportInput) -> list[Section]:
    v = data.verdict
    if not v.cells:
        return [Section("Verdict", "No successful runs: nothing to conclude.", anchor="verdict")]
    summary = "<ul class='summary'>" + "".join(f"<li>{html_escape.escape(line)}</li>"
                                                 for line in vd.summary_lines(v)) + "</ul>"
    matrices = "<div class='matrices'>" + "".join(_verdict_matrix(data, d) for d in v.devices()) + "</div>"
    text = ("Speed-up of the fastest realisable design (no foresight) over dense at each DRAM budget, per device "
            "and trace; in brackets the oracle bound. Green: sparse loading wins; red: dense wins. Dense runs "
            "from DRAM where the whole FFN fits its budget and is streamed from flash where it does not. "
            "Hover a cell for the designs; every number is a record (run ids in the table below and in "
            f"{data.stem}-verdict.csv).")
    return [Section("Verdict", text, tables=[summary, matrices, _verdict_details(data)], anchor="verdict",
                    lead=True)]


def _verdict_matrix(data: ReportInput, device: str) -> str:
    v = data.verdict
    cells = v.of(device)
    budgets = sorted({c.budget for c in cells})
    head = ["trace (perplexity)", *(human.budget(b).replace(" of the FFN", "") for b in budgets)]
    body = []
    for sha in vd.trace_order(v.traces):
        mine = {c.budget: c for c in cells if c.trace == sha}
        if not mine:
            continue
        t = v.traces[sha]
        label = _trace_label(t)
        row = [_text_cell(label)]
        for b in budgets:
            c = mine.get(b)
            if c is None or not math.isfinite(c.speedup):
                row.append("<td>-</td>")
                continue
            bound = f" ({human.ratio(c.bound_speedup)})" if math.isfinite(c.bound_speedup) else ""
            css = "win" if c.speedup > 1 else "lose"
            dense = f"{human.ms(c.dense['time_per_token_s'])} ({c.dense_where})" if c.dense else c.dense_where
            tip = f"best realisable: {c.design}, {human.ms(c.best['time_per_token_s'])}; dense {dense}"
            row.append(f"<td class='{css}' title='{html_escape.escape(tip, quote=True)}'>"
                       + _span(human.ratio(c.speedup), c.best, c.dense)
                       + (_span(bound, c.bound, c.dense, "bound") if bound else "") + "</td>")
        body.append("<tr>" + "".join(row) + "</tr>")
    return (f"<div class='matrix'><h3><a href='#{_device_anchor(device)}'>{html_escape.escape(device)}</a></h3>"
            + _table(head, body) + "</div>")


def _trace_label(t: vd.TraceInfo) -> str:
    return t.level + (f", ppl {human.number(t.ppl_sparse)}" if t.ppl_sparse is not None else "")


def _verdict_details(data: ReportInput) -> str:
    v = data.verdict
    head = ["device", "trace", "budget", "dense ms/token", "dense", "best realisable design", "ms/token",
            "speed-up", "oracle bound ms/token", "bound speed-up", "break-even predictor (noisy oracle)"]
    body = []
    for c in v.cells:
        t = v.traces[c.trace]
        row = [_text_cell(c.device), _text_cell(_trace_label(t)), _text_cell(human.budget(c.budget))]
        row.append(_cell(human.number(c.dense["time_per_token_s"] * 1e3), "time_ms", c.dense)
                   if c.dense else "<td>-</td>")
        row.append(_text_cell(c.dense_where))
        row.append(_text_cell(c.design or "-"))
        row.append(_cell(human.number(c.best["time_per_token_s"] * 1e3), "time_ms", c.best) if c.best else "<td>-</td>")
        row.append(_cell(human.ratio(c.speedup), "speedup", c.best, c.dense,
                         "win" if c.speedup > 1 else "lose") if math.isfinite(c.speedup) else "<td>-</td>")
        row.append(_cell(human.number(c.bound["time_per_token_s"] * 1e3), "time_ms", c.bound)
                   if c.bound else "<td>-</td>")
        row.append(_cell(human.ratio(c.bound_speedup), "speedup", c.bound, c.dense)
                   if math.isfinite(c.bound_speedup) else "<td>-</td>")
        row.append(_text_cell(c.break_even.describe() if c.break_even else "no noisy-oracle runs"))
        body.append("<tr>" + "".join(row) + "</tr>")
    return ("<details><summary>Every setting: designs, times and break-even</summary>"
            + _table(head, body) + "</details>")


# ---------------------------------------------------------------------------------------------
# Sections: one per device


def _device_anchor(device: str) -> str:
    return "device-" + "".join(ch if ch.isalnum() else "-" for ch in device)


def _colors(rows: Sequence[Row]) -> dict[str, str]:
    names = sorted({r["predictor"] for r in rows if not vd.is_dense(r) and r["predictor"] != "none"})
    colors = {name: PALETTE[i % len(PALETTE)] for i, name in enumerate(names)}
    return {**colors, "none": NONE_COLOR}


def _series(runs: Sequence[Row], data: ReportInput) -> dict[str, list[Row]]:
    """Lines of the time chart: per predictor (noisy oracles excluded), its fastest run at each budget.
    A realisable predictor's runs under a policy that sees the future (Bélády) are a line of their own."""
    by: dict[str, dict[float, list[Row]]] = defaultdict(lambda: defaultdict(list))
    for r in runs:
        if not vd.is_noisy(r):
            name = r["predictor"] if r["predictor_sees_future"] or not r["bound"] else f"{r['predictor']} + {r['cache']}"
            by[name][r["dram_budget"]].append(r)
    return {p: [vd.fastest(rs) for _, rs in sorted(budgets.items())] for p, budgets in by.items()}


def _series_order(name: str, runs: Sequence[Row]) -> tuple:
    r = runs[0]
    return (0 if vd.is_dense(r) else 1 if name == "none" else 3 if r["bound"] else 2, name)


def _style(name: str, runs: Sequence[Row], colors: dict[str, str]) -> tuple[str, dict]:
    r = runs[0]
    if vd.is_dense(r):
        return "dense (in DRAM where it fits, else streamed)", {"color": DENSE_COLOR, "width": 3}
    if name == "none":
        return "no prefetch (demand loading)", {"color": NONE_COLOR, "width": 2}
    if r["bound"]:
        color = colors.get(name, colors.get(r["predictor"], NONE_COLOR))
        return f"{name}: bound (sees the future)", {"color": color, "dash": "dash", "width": 2}
    return name, {"color": colors[name], "width": 2}


def _hover(metric: str) -> str:
    m = METRICS[metric]
    unit = f" {m.unit}" if m.unit else ""
    return f"%{{text}}<br>{m.title}: %{{y:.3~f}}{unit}<br>run %{{customdata}}<extra></extra>"


def _add_line(fig: go.Figure, runs: Sequence[Row], data: ReportInput, metric: str, name: str, line: dict,
              x: str = "budget_pct", show_legend: bool = True, row: int | None = None, col: int | None = None,
              group: str | None = None) -> None:
    trace = go.Scatter(
        x=[METRICS[x].value(r) for r in runs], y=[METRICS[metric].value(r) for r in runs],
        mode="lines+markers", name=name, legendgroup=group or name, showlegend=show_legend, line=line,
        text=[f"{data.design(r)}<br>{human.budget(r['dram_budget'])}"
              + (" (dense in DRAM)" if vd.is_dense(r) and r["storage_bytes_per_token"] == 0 else
                 " (dense streamed)" if vd.is_dense(r) else "") for r in runs],
        customdata=[r["run_id"] for r in runs], hovertemplate=_hover(metric),
        meta={"metric": metric, "x": x})
    if row is None:
        fig.add_trace(trace)
    else:
        fig.add_trace(trace, row=row, col=col)


def _log_axis(values: Iterable[float]) -> bool:
    values = [v for v in values if isinstance(v, (int, float)) and math.isfinite(v) and v > 0]
    return bool(values) and max(values) / min(values) > 20


def _trace_columns(data: ReportInput, runs: Sequence[Row]) -> list[str]:
    present = {r["trace_sha256"] for r in runs}
    return [sha for sha in vd.trace_order(data.verdict.traces) if sha in present]


def _subplots(data: ReportInput, traces: list[str], rows: int = 1, titles: Sequence[str] = ()) -> go.Figure:
    names = [_trace_label(data.verdict.traces[s]) for s in traces]
    subtitles = [f"{t}: {n}" if t else n for t in (titles or [""]) for n in names]
    return make_subplots(rows=rows, cols=len(traces), subplot_titles=subtitles, shared_xaxes=True,
                         horizontal_spacing=0.06, vertical_spacing=0.09 if rows > 1 else 0.0)


def _budget_ticks(fig: go.Figure, runs: Sequence[Row]) -> None:
    """Ticks at the budgets swept (few, unevenly spaced)."""
    budgets = sorted({METRICS["budget_pct"].value(r) for r in runs})
    if len(budgets) <= 8:
        fig.update_xaxes(tickvals=budgets, ticktext=[human.number(b, 2) for b in budgets])


def _time_figure(data: ReportInput, device: str, runs: Sequence[Row], traces: list[str],
                 colors: dict[str, str]) -> go.Figure:
    fig = _subplots(data, traces)
    shown = set()
    for col, sha in enumerate(traces, start=1):
        series = _series([r for r in runs if r["trace_sha256"] == sha], data)
        for name, line_runs in sorted(series.items(), key=lambda kv: _series_order(*kv)):
            label, line = _style(name, line_runs, colors)
            _add_line(fig, line_runs, data, "time_ms", label, line, show_legend=label not in shown, row=1, col=col)
            shown.add(label)
    log = _log_axis(METRICS["time_ms"].value(r) for r in runs)
    fig.update_yaxes(type="log" if log else "linear", matches="y")
    fig.update_yaxes(title_text="time per token (ms" + (", log scale)" if log else ")"), row=1, col=1)
    fig.update_xaxes(title_text="DRAM budget (% of the FFN)")
    _budget_ticks(fig, runs)
    fig.update_layout(title=f"{device}: time per token vs DRAM budget", template="plotly_white", height=460,
                      legend={"orientation": "h", "y": -0.22}, margin={"t": 80})
    return fig


def _cost_figure(data: ReportInput, device: str, runs: Sequence[Row], traces: list[str],
                 colors: dict[str, str]) -> go.Figure:
    metrics = ("flash_mb", "energy_mj", "pollution_mb")
    fig = _subplots(data, traces, rows=len(metrics), titles=[METRICS[m].title for m in metrics])
    shown = set()
    for col, sha in enumerate(traces, start=1):
        series = _series([r for r in runs if r["trace_sha256"] == sha], data)
        for row, metric in enumerate(metrics, start=1):
            for name, line_runs in sorted(series.items(), key=lambda kv: _series_order(*kv)):
                label, line = _style(name, line_runs, colors)
                _add_line(fig, line_runs, data, metric, label, line, show_legend=label not in shown, row=row, col=col)
                shown.add(label)
    for row, metric in enumerate(metrics, start=1):
        fig.update_yaxes(title_text=f"{METRICS[metric].unit}/token", row=row, col=1)
    fig.update_xaxes(title_text="DRAM budget (% of the FFN)", row=len(metrics))
    _budget_ticks(fig, runs)
    fig.update_layout(title=f"{device}: flash traffic, energy and pollution per token (the runs of the time chart)",
                      template="plotly_white", height=820, legend={"orientation": "h", "y": -0.08})
    return fig


def _miss_ratio_figure(data: ReportInput, device: str, runs: Sequence[Row], traces: list[str]) -> go.Figure | None:
    curves = [r for r in runs if r["predictor"] == "none" or vd.is_dense(r)]
    if not curves:
        return None
    fig = _subplots(data, traces)
    policies = sorted({data.design(r).split(" + ", 1)[1] for r in curves})
    colors = {p: PALETTE[i % len(PALETTE)] for i, p in enumerate(policies)}
    shown = set()
    for col, sha in enumerate(traces, start=1):
        groups: dict[tuple[str, str], list[Row]] = defaultdict(list)
        for r in curves:
            if r["trace_sha256"] == sha:
                groups[("dense" if vd.is_dense(r) else "no prefetch", data.design(r).split(" + ", 1)[1])].append(r)
        for (kind, policy), line_runs in sorted(groups.items()):
            line_runs.sort(key=lambda r: r["dram_budget"])
            label = f"{kind}, {policy}"
            _add_line(fig, line_runs, data, "miss_ratio", label,
                      {"color": colors[policy], "dash": "dot" if kind == "dense" else "solid"},
                      show_legend=label not in shown, row=1, col=col)
            shown.add(label)
    fig.update_yaxes(title_text="not resident when needed / accesses", row=1, col=1)
    fig.update_yaxes(range=[0, 1.05])
    fig.update_xaxes(title_text="DRAM budget (% of the FFN)")
    _budget_ticks(fig, curves)
    fig.update_layout(title=f"{device}: miss-ratio curves of no prefetch and dense, per replacement policy "
                            f"(misses + late prefetches)",
                      template="plotly_white", height=420, legend={"orientation": "h", "y": -0.25})
    return fig


def _break_even_figure(data: ReportInput, device: str, runs: Sequence[Row], traces: list[str]) -> go.Figure | None:
    noisy = [r for r in runs if vd.is_noisy(r)]
    if not noisy:
        return None
    fig = _subplots(data, traces)
    budgets = sorted({r["dram_budget"] for r in noisy})
    colors = {b: PALETTE[i % len(PALETTE)] for i, b in enumerate(budgets)}
    shown = set()
    for col, sha in enumerate(traces, start=1):
        mine = [r for r in runs if r["trace_sha256"] == sha]
        for budget in budgets:
            line_runs = sorted((r for r in mine if vd.is_noisy(r) and r["dram_budget"] == budget),
                               key=lambda r: (r["predictor_recall"], r["run_id"]))
            if not line_runs:
                continue
            for policy, family in sorted(_by(line_runs, lambda r: data.design(r).split(" + ", 1)[1]).items()):
                label = f"noisy oracle, {policy}, budget {human.budget(budget)}"
                _add_line(fig, family, data, "time_ms", label, {"color": colors[budget]}, x="recall",
                          show_legend=label not in shown, row=1, col=col)
                shown.add(label)
            dense = vd.fastest(r for r in mine if vd.is_dense(r) and r["dram_budget"] == budget)
            if dense is not None:   # dense as a flat line across the recall range: the same run at both ends
                ends = [min(r["predictor_recall"] for r in line_runs), 1.0]
                label = f"dense, budget {human.budget(budget)}"
                fig.add_trace(go.Scatter(
                    x=ends, y=[METRICS["time_ms"].value(dense)] * 2, mode="lines", name=label, legendgroup=label,
                    showlegend=label not in shown, line={"color": colors[budget], "dash": "dot"},
                    text=[data.design(dense)] * 2, customdata=[dense["run_id"]] * 2,
                    hovertemplate=_hover("time_ms"), meta={"metric": "time_ms", "x": None}), row=1, col=col)
                shown.add(label)
    log = _log_axis(METRICS["time_ms"].value(r) for r in runs)
    fig.update_yaxes(type="log" if log else "linear", matches="y")
    fig.update_yaxes(title_text="time per token (ms)", row=1, col=1)
    fig.update_xaxes(title_text="predictor recall (noisy oracle: fn = fp as swept)")
    fig.update_layout(title=f"{device}: how good must a predictor be? (noisy oracle vs dense, per budget)",
                      template="plotly_white", height=440, legend={"orientation": "h", "y": -0.25})
    return fig


def _by(rows: Iterable[Row], key: Callable[[Row], Any]) -> dict[Any, list[Row]]:
    out: dict[Any, list[Row]] = defaultdict(list)
    for r in rows:
        out[key(r)].append(r)
    return out


def _accuracy_table(data: ReportInput, runs: Sequence[Row], traces: list[str]) -> str:
    """Recall and precision per trace and predictor, from the predictor's run at the largest budget."""
    body = []
    for sha in traces:
        t = data.verdict.traces[sha]
        predictors = _by((r for r in runs if r["trace_sha256"] == sha and not vd.is_dense(r)
                          and r["predictor"] != "none"), lambda r: r["predictor"])
        for name, rs in sorted(predictors.items(), key=lambda kv: (kv[1][0]["predictor_sees_future"], kv[0])):
            top = max(r["dram_budget"] for r in rs)
            r = vd.fastest(x for x in rs if x["dram_budget"] == top)
            bound = " (sees the future)" if r["predictor_sees_future"] else ""
            body.append("<tr>" + _text_cell(_trace_label(t)) + _text_cell(name + bound)
                        + _cell(f"{r['predictor_recall']:.3f}", "recall", r)
                        + _cell(f"{r['predictor_precision']:.3f}", "precision", r)
                        + _text_cell(r["run_id"]) + "</tr>")
    if not body:
        return "<p class='note'>No predictor runs.</p>"
    return _table(["trace", "predictor", "recall", "precision", "run"], body,
                  caption="predictor accuracy (the run at the largest budget; it does not depend on the budget)")


def device_sections(data: ReportInput) -> list[Section]:
    devices = data.verdict.devices()
    if len(devices) > MAX_DEVICE_SECTIONS:
        return [Section("Devices", f"{len(devices)} devices (profiles with swept hardware fields): too many for a "
                                   f"section each. The verdict above covers every one; see the sensitivity section "
                                   f"and {data.stem}-points.csv.", anchor="devices")]
    sections = []
    colors = _colors(data.shown())
    for device in devices:
        runs = data.shown(device)
        traces = _trace_columns(data, runs)
        figures = [_time_figure(data, device, runs, traces, colors), _cost_figure(data, device, runs, traces, colors)]
        figures += [f for f in (_miss_ratio_figure(data, device, runs, traces),
                                _break_even_figure(data, device, runs, traces)) if f is not None]
        text = ("Each line is one predictor; each marker is that predictor's fastest run at that budget over the "
                "replacement policies swept (hover for the design and its run id). Dashed lines see the future: "
                "upper bounds, not designs. Dense runs from DRAM where the FFN fits the budget and is streamed from "
                "flash where it does not. Pollution: bytes brought into DRAM and evicted unused (docs/metrics.md).")
        sections.append(Section(f"Device: {device}", text, figures=figures,
                                tables=[_accuracy_table(data, runs, traces)], anchor=_device_anchor(device)))
    return sections


# ---------------------------------------------------------------------------------------------
# Section: perplexity


def quality_section(data: ReportInput) -> list[Section]:
    if data.ppl_csv is not None:
        return [_ppl_curve_section(data.ppl_csv)]
    traces = [data.verdict.traces[s] for s in vd.trace_order(data.verdict.traces)]
    traces = [t for t in traces if t.ppl_sparse is not None and t.sparsity is not None]
    if not traces:
        return []
    fig = go.Figure(go.Scatter(
        x=[0.0, *(100 * t.sparsity for t in traces)], y=[traces[0].ppl_dense, *(t.ppl_sparse for t in traces)],
        mode="lines+markers", name="perplexity", customdata=["dense", *(t.name for t in traces)],
        hovertemplate="%{customdata}<br>sparsity %{x:.1f} %<br>perplexity %{y:.2f}<extra></extra>"))
    t0 = traces[0]
    fig.update_layout(title=f"Sparsity vs perplexity: {t0.model} on {t0.text} ({t0.ppl_tokens} tokens, window "
                            f"{t0.window})", xaxis_title="measured FFN activation sparsity (%)",
                      yaxis_title="perplexity", template="plotly_white", height=400)
    table = table_html([{"trace": t.name, "target sparsity": human.percent(t.target),
                         "measured sparsity": human.percent(t.sparsity, 1),
                         "perplexity dense": human.number(t.ppl_dense), "perplexity sparse": human.number(t.ppl_sparse),
                         "tokens": t.ppl_tokens, "window": t.window} for t in traces])
    return [Section("Sparsity vs perplexity", "From each trace's own metadata (dense and zero-enforced sparse "
                                              "perplexity on the trace's evaluation tokens).", figures=[fig],
                    tables=[table], anchor="perplexity")]


def _ppl_curve_section(path: Path) -> Section:
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
    for method, ps in sorted(_by(points, lambda p: p[0]).items()):
        ps.sort(key=lambda p: p[1])
        fig.add_trace(go.Scatter(x=[p[1] for p in ps], y=[p[2] for p in ps], mode="lines+markers",
                                 name=method or "ppl"))
    model = rows[0].get("model", "")
    window = rows[0].get("window", "")
    fig.update_layout(title=f"Sparsity vs perplexity {model}".strip() + (f" (window {window})" if window else ""),
                      xaxis_title="FFN activation sparsity target (%)", yaxis_title="perplexity",
                      template="plotly_white", height=400)
    return Section("Sparsity vs perplexity", f"From {path} (sha256 {file_sha256(path)[:16]}).", figures=[fig],
                   anchor="perplexity")


# ---------------------------------------------------------------------------------------------
# Section: swept hardware and other numeric settings (every run a point)


def _number(text: str) -> float | None:
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


def sensitivity_section(data: ReportInput) -> list[Section]:
    runs = data.shown()
    keys = sorted({k for r in runs for k in vd.settings(r)} - {"dram_budget"})
    swept = [k for k in keys if len({vd.settings(r).get(k) for r in runs}) > 1
             and all(_value(r, k) is not None for r in runs if k in vd.settings(r))]
    figures = []
    for key in swept:
        fig = go.Figure()
        groups = _by((r for r in runs if key in vd.settings(r)),
                     lambda r: f"{r['profile']}: {r['predictor']} + {r['cache']}")
        for name, rs in sorted(groups.items()):
            fig.add_trace(go.Scatter(x=[_value(r, key) for r in rs], y=[METRICS["time_ms"].value(r) for r in rs],
                                     mode="markers", name=name, customdata=[r["run_id"] for r in rs],
                                     text=[f"{data.design(r)}, {human.budget(r['dram_budget'])}" for r in rs],
                                     hovertemplate=_hover("time_ms"), meta={"metric": "time_ms", "x": key}))
        fig.update_layout(title=f"Time per token vs {key} (every run)", xaxis_title=f"{key} (base units)",
                          yaxis_title="time per token (ms)", template="plotly_white", height=420,
                          xaxis_type="log" if _log_axis(_value(r, key) for r in runs) else "linear")
        figures.append(fig)
    if not figures:
        return []
    return [Section("Sensitivity to swept settings", "Every run is a point (no medians): time per token against each "
                                                      "swept numeric setting other than the budget. Hardware fields "
                                                      "are in base units (B/s, s, B, FLOP/s).",
                    figures=figures, anchor="sensitivity")]


def _value(row: Row, key: str) -> float | None:
    """A numeric setting of a run: dotted profile fields from their resolved column (base units)."""
    value = row.get(key) if "." in key else _number(vd.settings(row).get(key))
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


# ---------------------------------------------------------------------------------------------
# Sections: runs and inputs


def runs_section(data: ReportInput) -> list[Section]:
    rows = data.rows
    counts = Counter(r["status"] for r in rows)
    overview = [{"what": "runs", "count": len(rows)},
                *({"what": f"status {s}", "count": n} for s, n in sorted(counts.items())),
                {"what": "traces", "count": len({r["trace_name"] for r in rows})},
                {"what": "devices (profiles with their swept hardware fields)",
                 "count": len({vd.device_of(r) for r in rows})},
                {"what": "designs (predictor + cache + varied settings)", "count": len({data.design(r) for r in rows})},
                {"what": "runs shown (one per configuration; seeds by their median-time run)",
                 "count": len(data.verdict.runs)}]
    failures = Counter((r["status"], r["error"]) for r in rows if r["status"] != "ok")
    failed = [{"status": s, "runs": n, "error": e} for (s, e), n in failures.most_common(FAILURES_SHOWN)]
    text = ("invalid: the simulator refused the configuration (deterministic, not retried); error: an "
            "unexpected failure (retried when the sweep is run again).")
    tables = [table_html(overview)]
    if failed:
        tables.append(table_html(failed, caption=f"failures, most frequent first (at most {FAILURES_SHOWN})"))
    return [Section("Runs", text, tables=tables, anchor="runs")]


def inputs_section(data: ReportInput) -> list[Section]:
    rows = data.rows
    traces = {(r["trace_name"], r.get("trace_sha256"), r.get("trace_kind"), r.get("model"))
              for r in rows if r["status"] == "ok"}
    profiles: dict[tuple[str, str], set] = defaultdict(set)   # base profile -> hashes after swept overrides
    for r in rows:
        base = json.loads(r["config"])["profile"]
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
    return [Section("Inputs", "Every input of the runs, by content hash (each run's own hashes are in the "
                              "results table).", tables=tables, anchor="inputs")]


def moe_sections(data: ReportInput) -> list[Section]:
    """Expert caches (experiments/report_moe.py), when the sweep replayed expert traces."""
    from sparsesim.experiments.report_moe import expert_rows, moe_section

    return [moe_section(data.rows)[0]] if expert_rows(data.rows) else []


# The page, in order. A new section is a function (ReportInput) -> list[Section] added here.
SECTIONS: list[Callable[[ReportInput], list[Section]]] = [
    verdict_section, device_sections, moe_sections, quality_section, sensitivity_section, runs_section,
    inputs_section,
]


# ---------------------------------------------------------------------------------------------
# CSV tables


RUN_COLUMNS = ("run_id", "status", "device", "trace", "design", "dram_budget", "predictor_sees_future", "bound",
               "time_ms", "flash_mb", "energy_mj", "pollution_mb", "miss_ratio", "recall", "precision", "error")
POINT_COLUMNS = ("figure", "series", "x_metric", "x", "y_metric", "y", "run_id")


def run_rows(data: ReportInput) -> list[Row]:
    """Every run, one row each (nothing pooled), the metrics in the units the page shows."""
    flagged = {r["run_id"]: r for r in vd.with_flags(data.rows)}
    out = []
    for r in data.rows:
        row = {"run_id": r["run_id"], "status": r["status"], "device": vd.device_of(r), "trace": r["trace_name"],
               "design": data.design(r), "dram_budget": vd.settings(r).get("dram_budget", r.get("dram_budget")),
               "error": r.get("error") or ""}
        if r["run_id"] in flagged:
            ok = flagged[r["run_id"]]
            row.update(predictor_sees_future=ok["predictor_sees_future"], bound=ok["bound"])
            row.update({name: METRICS[name].value(ok) for name in
                        ("time_ms", "flash_mb", "energy_mj", "pollution_mb", "miss_ratio", "recall", "precision")})
        out.append(row)
    return out


def point_rows(sections: Sequence[Section]) -> list[Row]:
    """Every point of every figure that names its run."""
    out = []
    for section in sections:
        for fig in section.figures:
            title = fig.layout.title.text or section.title
            for trace in fig.data:
                meta = trace.meta if isinstance(trace.meta, dict) else {}
                if "metric" not in meta:
                    continue
                for x, y, run in zip(trace.x, trace.y, trace.customdata):
                    out.append({"figure": title, "series": trace.name, "x_metric": meta.get("x") or "", "x": x,
                                "y_metric": meta["metric"], "y": y, "run_id": run})
    return out


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


def build(results_dir: str | os.PathLike, ppl_csv: str | os.PathLike | None = None,
          stem: str = "report", progress: bool = False) -> tuple[ReportInput, list[Section]]:
    """The report's input and sections, without writing anything (the tests read the figures)."""
    results_dir = Path(results_dir)
    rows = read_results(results_dir).to_pylist()
    ppl_path = Path(ppl_csv) if ppl_csv else results_dir / PPL_FILE
    data = ReportInput(results_dir=results_dir, rows=rows, verdict=vd.compute(rows),
                       ppl_csv=ppl_path if ppl_csv or ppl_path.is_file() else None, stem=stem)
    builders = tqdm(SECTIONS, desc="report", unit="section", disable=None if progress else True, file=sys.stderr)
    sections = [s for builder in builders for s in builder(data)]
    return data, sections


def make_report(results_dir: str | os.PathLike, out_html: str | os.PathLike,
                ppl_csv: str | os.PathLike | None = None, progress: bool = False) -> dict[str, str]:
    """Write the page and its CSV tables; returns their paths (keys page, verdict, points, runs)."""
    results_dir, out_html = Path(results_dir), check_writable(out_html)
    stem = out_html.with_suffix("")
    data, sections = build(results_dir, ppl_csv, stem.name, progress)
    paths = {"verdict": f"{stem}-verdict.csv", "points": f"{stem}-points.csv", "runs": f"{stem}-runs.csv"}
    verdict_table = vd.verdict_rows(data.verdict)
    write_text(paths["verdict"], csv_text(verdict_table, list(verdict_table[0]) if verdict_table else ["device"]))
    write_text(paths["points"], csv_text(point_rows(sections), POINT_COLUMNS))
    write_text(paths["runs"], csv_text(run_rows(data), RUN_COLUMNS))
    sweep_file = results_dir / "sweep.json"
    sweep = _sweep_record(sweep_file) if sweep_file.is_file() else {}
    ok = [r for r in data.rows if r["status"] == "ok"]
    provenance = {"results_dir": str(results_dir.resolve()), "sweep": sweep.get("name"),
                  "spec_file": sweep.get("spec_file"), "spec_sha256": sweep.get("spec_sha256"),
                  "environment": sweep.get("environment"),
                  "perplexity_curve": None if data.ppl_csv is None else
                  {"file": str(data.ppl_csv), "sha256": file_sha256(data.ppl_csv)},
                  "sparsesim_versions": sorted({str(r.get("sparsesim_version")) for r in ok})}
    title = f"sparsesim: {sweep.get('name') or results_dir.name}"
    intro = (f"{len(data.rows)} runs ({len(ok)} ok) from {results_dir}. Every number on this page is one run's "
             f"record (named by its run id); tables: {stem.name}-verdict.csv, {stem.name}-points.csv, "
             f"{stem.name}-runs.csv.")
    paths = {"page": write_page(out_html, title, sections, provenance, intro), **paths}
    return paths
