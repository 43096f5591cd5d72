"""``sparsesim demo``: the whole pipeline on the built-in defaults, end to end.

1. the sparsity-vs-perplexity curve of Gemma 3 270M on the built-in ``pydoc`` text;
2. traces at several sparsity levels (evaluation tokens: the start of ``pydoc``), and a training
   trace on the second half of the same text (disjoint tokens) with the 50 % level's thresholds;
3. the predictability analysis of the 50 % trace, trained on the training trace;
4. a sweep: 3 profiles × the main predictors × the main replacement policies × 3 DRAM budgets;
5. the report, and a five-line summary of what was found.

Each step's output lands in ``out_dir``; a step whose output already exists is not redone, so an
interrupted demo continues where it stopped.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from sparsesim.atomic import write_text

PROFILES = ("oneplus-12", "raspberry-pi-5-nvme", "laptop-nvme")
PREDICTORS = ("oracle", "none", "previous-token", "token-lookup", "static-hot")
CACHES = ("lru", "window:k=4", "static-pin")
BUDGETS = (0.1, 0.25, 0.5)
LEVELS = (0.3, 0.5, 0.7)
SWEEP_TOKENS = 256   # tokens of the 50 % trace each sweep run replays (16 of them warm-up)


def _step(path: Path, label: str, make) -> Path:
    if path.exists():
        print(f"[demo] {label}: {path} (already there)")
    else:
        print(f"[demo] {label} ...", flush=True)
        make()
    return path


WINDOW = 512   # tokens per forward window (Gemma's sliding-attention span); stated with every perplexity


def demo(out_dir: str | os.PathLike = "demo", model: str = "gemma-3-270m", tokens: int = 512,
         ppl_tokens: int = 2048, workers: int | None = None) -> dict[str, Any]:
    """Run the demo into ``out_dir``; returns the paths written and the summary lines."""
    from sparsesim.experiments.predictability import analyze
    from sparsesim.experiments.report import make_report, read_results
    from sparsesim.experiments.sweep import run_sweep
    from sparsesim.tracing.models import load_model
    from sparsesim.tracing.perplexity import ppl_curve
    from sparsesim.tracing.text import load_text
    from sparsesim.tracing.trace import trace_model

    out = Path(out_dir)
    (out / "traces").mkdir(parents=True, exist_ok=True)
    lm = load_model(model)
    curve = _step(out / "curve.csv", "sparsity-vs-perplexity curve",
                  lambda: ppl_curve(model=lm, text="pydoc", levels=[0.0, *LEVELS], tokens=ppl_tokens,
                                    window=WINDOW, out=out / "curve.csv"))
    traces = {}
    for level in LEVELS:
        path = out / "traces" / f"pydoc-{int(level * 100)}.parquet"
        thresholds = out / "traces" / f"thresholds-{int(level * 100)}.json"
        traces[level] = _step(path, f"trace at {level:.0%} sparsity",
                              lambda p=path, lv=level, th=thresholds: trace_model(
                                  out=p, model=lm, text="pydoc", sparsity=lv, tokens=tokens, window=WINDOW,
                                  save_thresholds=th))
    second_half = out / "traces" / "pydoc-second-half.txt"
    if not second_half.exists():
        text = load_text("pydoc").text
        write_text(second_half, text[len(text) // 2:])
    train = _step(out / "traces" / "train-50.parquet", "training trace (second half of pydoc, 50 % thresholds)",
                  lambda: trace_model(out=out / "traces" / "train-50.parquet", model=lm, text=str(second_half),
                                      thresholds=out / "traces" / "thresholds-50.json", tokens=2 * tokens,
                                      window=WINDOW, ppl=False))
    _step(out / "analysis" / "report.html", "predictability analysis",
          lambda: analyze(traces[0.5], out / "analysis", train=train))
    spec = out / "sweep.yaml"
    write_text(spec, json.dumps({
        "name": "demo",
        "description": "Gemma 3 270M at 50 % sparsity: predictors x replacement x DRAM budgets on three devices",
        "traces": [str(traces[0.5].resolve())],
        "profiles": list(PROFILES),
        "grid": {"predictor": list(PREDICTORS), "cache": list(CACHES), "dram_budget": list(BUDGETS)},
        "fixed": {"train_trace": str(train.resolve()), "profile_trace": str(train.resolve()), "warmup": 16,
                  "max_tokens": SWEEP_TOKENS},
        "baselines": True,
    }, indent=2))   # JSON is YAML
    print("[demo] sweep ...", flush=True)
    run_sweep(spec, out / "results", workers=workers)
    report = make_report(out / "results", out / "report.html", ppl_csv=curve)
    lines = summarize(read_results(out / "results").to_pylist(), curve)
    print(f"\nreport: {Path(report).resolve()}")
    for line in lines:
        print(line)
    return {"report": report, "analysis": str(out / "analysis" / "report.html"), "summary": lines}


def summarize(rows: list[dict[str, Any]], curve: Path) -> list[str]:
    """Five lines: quality cost, best design per device, traffic saved, pollution, predictability."""
    import csv

    ok = [r for r in rows if r.get("status") == "ok"]
    with open(curve) as f:
        points = list(csv.DictReader(f))
    def ppl(level: float) -> str:
        for p in points:
            if math.isclose(float(p.get("target_sparsity", p.get("level", -1))), level):
                return f"{float(p['ppl']):.2f}"
        return "?"
    lines = [f"1. Perplexity on pydoc: dense {ppl(0.0)}, 30 % {ppl(0.3)}, 50 % {ppl(0.5)}, 70 % {ppl(0.7)} "
             f"(window {WINDOW}; zero-enforced, calibrated on disjoint tokens)."]
    best = []
    for profile in PROFILES:
        mine = [r for r in ok if r["profile"] == profile and r["predictor"] not in ("oracle", "dense")]
        if mine:
            r = min(mine, key=lambda r: r["time_per_token_s"])
            # The dense model's best time on this device and budget, under any replacement policy.
            dense = min(r2["time_per_token_s"] / r2["speedup_vs_dense"] for r2 in ok
                        if r2["profile"] == profile and r2["dram_budget"] == r["dram_budget"])
            best.append(f"{profile} {r['time_per_token_s'] * 1e3:.1f} ms ({r['predictor']}+{r['cache']}, budget "
                        f"{r['dram_budget']}; dense {dense * 1e3:.1f} ms)")
    lines.append("2. Fastest realisable design per device (no oracle): " + "; ".join(best) + ".")
    quarter = [r for r in ok if r["dram_budget"] == 0.25 and r["predictor"] == "oracle" and r["cache"] == "lru"]
    if quarter:
        share = sum(r["ffn_share_loaded_per_token"] for r in quarter) / len(quarter)
        dense = [r for r in ok if r["dram_budget"] == 0.25 and r["cache"] == "lru" and r["predictor"] == "none"]
        demand = sum(r["ffn_share_loaded_per_token"] for r in dense) / len(dense) if dense else float("nan")
        lines.append(f"3. Flash traffic at 25 % DRAM budget with LRU: {share:.1%} of the FFN per token with an oracle "
                     f"predictor, {demand:.1%} with demand fetches only.")
    polluting = max(ok, key=lambda r: r["pollution_bytes"] / max(r["tokens"], 1), default=None)
    if polluting:
        lines.append(f"4. Most pollution: {polluting['predictor']}+{polluting['cache']} at budget "
                     f"{polluting['dram_budget']}: {polluting['pollution_bytes'] / polluting['tokens'] / 1e6:.2f} MB "
                     f"per token brought in and evicted unused.")
    realistic = [r for r in ok if r["predictor"] in ("previous-token", "window:k=4", "static-hot")]
    if realistic:
        r = max(realistic, key=lambda r: r["predictor_recall"] if r["predictor_recall"] == r["predictor_recall"] else 0)
        lines.append(f"5. Best realisable predictor by recall: {r['predictor']} (recall {r['predictor_recall']:.2f}, "
                     f"precision {r['predictor_precision']:.2f}); details in analysis/report.html.")
    return lines
