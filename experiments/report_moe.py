"""The report's mixture-of-experts section, from a sweep's result records (expert traces only).

:func:`moe_section` takes result records (dicts, any status; rows of other traces are ignored) and
returns one :class:`~sparsesim.experiments.html.Section` and the numbers it shows:

* **hit rate vs cache budget per replacement policy** under demand paging (predictor ``none``), decode
  steps, with Bélády's MIN dashed as the bound and the token cycle marked (below it global LRU hits
  nothing: ``docs/moe.md``, "The cliff");
* **per-layer routing concentration**: the share of each layer's decode activations its 8 most-used
  experts carry (:func:`sparsesim.experiments.routing.routing_report` on the trace each record names);
* **predictor accuracy at a budget of k experts per layer**: decode precision and recall of each
  predictor that names k experts per layer (oracle-type rows are bounds);
* **time per decode token vs budget** for each predictor prefetching into a global LRU cache.

Every number is one record's (nothing is averaged). ``python -m sparsesim.experiments.report_moe
RESULTS_DIR -o moe.html`` writes the section as a page of its own; ``--markdown`` prints the tables
``docs/moe.md`` quotes.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any, Sequence

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from sparsesim.experiments.html import Section, table_html

MIB = 2 ** 20
DEMAND = "none"                 # the predictor of demand paging
BOUND_POLICY = "belady"
HOT = 8
Row = dict[str, Any]
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf")


def policy_name(row: Row) -> str:
    """A replacement policy with its partition, as the tables name it."""
    return row["cache"] if row.get("partition", "global") == "global" else f"{row['cache']} ({row['partition']})"


def expert_rows(rows: Sequence[Row]) -> list[Row]:
    """Successful runs on expert traces with a cache budget in bytes."""
    return [r for r in rows if r.get("status", "ok") == "ok" and r.get("trace_unit") == "expert"
            and r.get("cache_budget")]


def _budget(row: Row) -> int:
    """The cache budget in bytes: the key of every table (shown in MiB)."""
    return int(row["cache_budget"])


def _by_trace(rows: Sequence[Row]) -> dict[str, list[Row]]:
    out: dict[str, list[Row]] = {}
    for r in rows:
        out.setdefault(r["model"], []).append(r)
    return out


def hit_rate_table(rows: Sequence[Row]) -> dict[str, dict[str, dict[int, float]]]:
    """model -> policy -> budget (bytes) -> decode hit rate (%), demand paging only."""
    out: dict[str, dict[str, dict[int, float]]] = {}
    for model, runs in _by_trace(expert_rows(rows)).items():
        for r in runs:
            if r["predictor"] == DEMAND:
                out.setdefault(model, {}).setdefault(policy_name(r), {})[_budget(r)] = 100 * r["decode_hit_rate"]
    return out


def cycles(rows: Sequence[Row]) -> dict[str, float]:
    """model -> token cycle (MiB)."""
    return {r["model"]: r["cycle_bytes"] / MIB for r in expert_rows(rows)}


def predictor_accuracy(rows: Sequence[Row]) -> dict[str, dict[str, dict[str, Any]]]:
    """model -> predictor -> decode precision and recall (%), whether it is a bound. Accuracy does not
    depend on the cache, so the run at the largest budget of the global LRU cache is the one shown."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for model, runs in _by_trace(expert_rows(rows)).items():
        chosen: dict[str, Row] = {}
        for r in runs:
            if r["predictor"] == DEMAND or r["cache"] != "lru" or r.get("partition") != "global":
                continue
            if r["predictor"] not in chosen or r["cache_budget"] > chosen[r["predictor"]]["cache_budget"]:
                chosen[r["predictor"]] = r
        out[model] = {p: {"precision": 100 * r["decode_predictor_precision"],
                          "recall": 100 * r["decode_predictor_recall"], "bound": bool(r["predictor_sees_future"]),
                          "run_id": r.get("run_id", "")} for p, r in sorted(chosen.items())}
    return out


def time_table(rows: Sequence[Row]) -> dict[str, dict[str, dict[int, float]]]:
    """model -> predictor -> budget (bytes) -> time per decode token (ms), global LRU."""
    out: dict[str, dict[str, dict[int, float]]] = {}
    for model, runs in _by_trace(expert_rows(rows)).items():
        for r in runs:
            if r["cache"] == "lru" and r.get("partition") == "global":
                out.setdefault(model, {}).setdefault(r["predictor"], {})[_budget(r)] = 1e3 * r["decode_time_per_token_s"]
    return out


def concentration(rows: Sequence[Row]) -> dict[str, list[dict[str, Any]]]:
    """model -> per MoE layer: experts touched and the hot-8 share (%) of its decode activations, from the
    trace file each record names (traces not found are left out)."""
    from sparsesim.experiments.routing import routing_report
    from sparsesim.tracefile import read_trace

    out: dict[str, list[dict[str, Any]]] = {}
    for model, runs in _by_trace(expert_rows(rows)).items():
        path = Path(runs[0]["trace"])
        if not path.is_file():
            continue
        report = routing_report(read_trace(path), hot=HOT)
        out[model] = [{"layer": l["layer"], "touched": l["touched"], "hot_share": 100 * l["hot_share"]}
                      for l in report["layers"]]
    return out


def moe_section(rows: Sequence[Row]) -> tuple[Section, dict[str, Any]]:
    """The section and the numbers it shows (``hit_rate``, ``cycle_MiB``, ``concentration``,
    ``predictor_accuracy``, ``time_ms``; by model)."""
    numbers = {"hit_rate": hit_rate_table(rows), "cycle_MiB": cycles(rows), "concentration": concentration(rows),
               "predictor_accuracy": predictor_accuracy(rows), "time_ms": time_table(rows)}
    models = sorted(set(numbers["hit_rate"]) | set(numbers["time_ms"]))
    figures = [f for f in (_hit_rate_figure(numbers, models), _concentration_figure(numbers, models),
                           _time_figure(numbers, models)) if f is not None]
    tables = [_accuracy_html(numbers), *(_hit_rate_html(numbers, m) for m in models if m in numbers["hit_rate"])]
    text = ("Expert caches replayed from routing traces (docs/moe.md). Hit rates are over decode steps, under demand "
            "paging (no prefetch); Bélády's MIN, dashed, reads the future and bounds every online policy. Left of the "
            "token cycle (dotted: every layer's top-k experts of one token) a global LRU cache hits nothing: the layers "
            "run in the same order every token, so LRU evicts each expert just before its layer comes round again."
            "\n\nPredictor accuracy is at a budget of k experts per layer: each predictor names top-k experts "
            "per layer (previous token: the last token's; static: the k most used in the prompt, or in the whole "
            "run, which sees the future). Oracle-type rows are bounds, not designs.")
    section = Section("Mixture-of-experts: expert caches", text=text, figures=figures, tables=tables)
    return section, numbers


def _colors(tables: dict[str, dict[str, Any]]) -> dict[str, str]:
    """One colour per series name, the same in every subplot."""
    names = sorted({name for table in tables.values() for name in table})
    return {name: PALETTE[i % len(PALETTE)] for i, name in enumerate(names)}


def _lines_figure(tables: dict[str, dict[str, dict[int, float]]], models: list[str], title: str, y_title: str,
                  dashed: set[str], marks: dict[str, float]) -> go.Figure | None:
    """One subplot per model: a line per series over the budget (MiB), ``dashed`` series dashed (bounds),
    a dotted vertical line at ``marks[model]`` MiB."""
    models = [m for m in models if m in tables]
    if not models:
        return None
    fig = make_subplots(rows=1, cols=len(models), subplot_titles=models, shared_yaxes=True)
    colors = _colors(tables)
    for col, model in enumerate(models, start=1):
        for name, series in sorted(tables[model].items()):
            x = sorted(series)
            fig.add_trace(go.Scatter(x=[b / MIB for b in x], y=[series[b] for b in x], name=name, legendgroup=name,
                                     showlegend=col == 1, mode="lines+markers",
                                     line=dict(dash="dash" if name in dashed else "solid", color=colors[name])),
                          row=1, col=col)
        if model in marks:
            fig.add_vline(x=marks[model], line=dict(dash="dot", color="#888"), row=1, col=col)
        fig.update_xaxes(title_text="expert cache (MiB)", row=1, col=col)
    fig.update_yaxes(title_text=y_title, row=1, col=1)
    fig.update_layout(title=title, template="plotly_white", height=420)
    return fig


def _hit_rate_figure(numbers: dict, models: list[str]) -> go.Figure | None:
    return _lines_figure(numbers["hit_rate"], models, "Hit rate vs cache budget, demand paging", "decode hit rate (%)",
                         {BOUND_POLICY}, numbers["cycle_MiB"])


def _concentration_figure(numbers: dict, models: list[str]) -> go.Figure | None:
    models = [m for m in models if m in numbers["concentration"]]
    if not models:
        return None
    fig = make_subplots(rows=1, cols=len(models), subplot_titles=models, shared_yaxes=True)
    for col, model in enumerate(models, start=1):
        layers = numbers["concentration"][model]
        fig.add_trace(go.Bar(x=[l["layer"] for l in layers], y=[l["hot_share"] for l in layers],
                             name=f"hot-{HOT} share", showlegend=False, marker_color=PALETTE[0],
                             hovertext=[f"{l['touched']} experts touched" for l in layers]), row=1, col=col)
        fig.update_xaxes(title_text="layer", row=1, col=col)
    fig.update_yaxes(title_text=f"share of decode activations on the {HOT} most used experts (%)", row=1, col=1)
    fig.update_layout(title="Routing concentration per layer", template="plotly_white", height=380)
    return fig


def _time_figure(numbers: dict, models: list[str]) -> go.Figure | None:
    bounds = {p for m in numbers["predictor_accuracy"].values() for p, v in m.items() if v["bound"]}
    return _lines_figure(numbers["time_ms"], models,
                         "Time per decode token vs cache budget (global LRU, prefetch into the same cache)",
                         "time per decode token (ms)", bounds, {})


def _accuracy_html(numbers: dict) -> str:
    rows = [{"model": model, "predictor": p + (" (bound)" if v["bound"] else ""),
             "precision %": round(v["precision"], 1), "recall %": round(v["recall"], 1)}
            for model, preds in numbers["predictor_accuracy"].items() for p, v in preds.items()]
    return table_html(rows, caption="Predictor accuracy at k experts per layer (decode steps)")


def _hit_rate_html(numbers: dict, model: str) -> str:
    table = numbers["hit_rate"][model]
    budgets = sorted({b for series in table.values() for b in series})
    rows = [{"budget (MiB)": _mib_text(b), **{p: _pct(table[p].get(b)) for p in sorted(table)}} for b in budgets]
    return table_html(rows, caption=f"{model}: decode hit rate (%) by policy; '—' where the partition cannot hold "
                                    f"one step (token cycle {numbers['cycle_MiB'].get(model, math.nan):,.1f} MiB)")


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{value:.1f}"


def _mib_text(nbytes: int) -> str:
    return f"{nbytes / MIB:,.0f}" if nbytes >= MIB else f"{nbytes / MIB:.6f}"


def markdown(numbers: dict) -> str:
    """The tables ``docs/moe.md`` quotes: hit rate vs budget per policy, predictor accuracy, time per token."""
    out = []
    for model, table in numbers["hit_rate"].items():
        policies = sorted(table, key=lambda p: (p == BOUND_POLICY, p))
        budgets = sorted({b for s in table.values() for b in s})
        out.append(f"**{model}** (token cycle {numbers['cycle_MiB'][model]:,.1f} MiB), decode hit rate %:\n")
        out.append("| budget (MiB) | " + " | ".join(policies) + " |")
        out.append("|---:|" + "---:|" * len(policies))
        out += [f"| {_mib_text(b)} | " + " | ".join(_pct(table[p].get(b)) for p in policies) + " |" for b in budgets]
        out.append("")
    out.append("| model | predictor | decode precision % | decode recall % |\n|---|---|---:|---:|")
    for model, preds in numbers["predictor_accuracy"].items():
        out += [f"| {model} | {p}{' (bound)' if v['bound'] else ''} | {v['precision']:.1f} | {v['recall']:.1f} |"
                for p, v in preds.items()]
    out.append("")
    for model, table in numbers["time_ms"].items():
        budgets = sorted({b for s in table.values() for b in s})
        out.append(f"**{model}**, time per decode token (ms), global LRU:\n")
        out.append("| budget (MiB) | " + " | ".join(sorted(table)) + " |")
        out.append("|---:|" + "---:|" * len(table))
        out += [f"| {_mib_text(b)} | " + " | ".join(f"{table[p][b]:.1f}" if b in table[p] else "—"
                                                    for p in sorted(table)) + " |" for b in budgets]
        out.append("")
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    from sparsesim.experiments.html import write_page
    from sparsesim.experiments.sweep import read_results

    p = argparse.ArgumentParser(prog="python -m sparsesim.experiments.report_moe", description=__doc__.split("\n\n")[0])
    p.add_argument("results_dir")
    p.add_argument("-o", "--output", help="write the section as a page of its own")
    p.add_argument("--markdown", action="store_true", help="print the tables docs/moe.md quotes")
    args = p.parse_args(argv)
    rows = read_results(args.results_dir).to_pylist()
    section, numbers = moe_section(rows)
    if args.output:
        print(f"wrote {write_page(args.output, 'Mixture-of-experts expert caches', [section])}")
    if args.markdown:
        print(markdown(numbers))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
