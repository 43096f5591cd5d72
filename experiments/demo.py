"""``sparsesim demo``: the whole pipeline on the built-in defaults, end to end (under 10 minutes on 2 cores).

1. **traces** — Gemma 3 270M on the built-in ``pydoc`` text at each of :data:`LEVELS` sparsity
   (percentile thresholds calibrated on the last 2,048 tokens; the first :data:`TOKENS` tokens
   traced, with dense and sparse perplexity, window :data:`~sparsesim.tracing.checks.DEFAULT_WINDOW`).
   For each level a training trace on the second half of pydoc with the same thresholds: the
   predictors that learn offline (``token-lookup``, ``static-hot``) and ``static-pin``'s profile
   learn from it, never from the tokens they are scored on;
2. **analysis** — the predictability analysis of the 50 % trace (``analysis/report.html``);
3. **sweep** — 3 devices × the traces × :data:`PAIRS` (predictor, cache) × :data:`BUDGETS`, the
   first :data:`SWEEP_TOKENS` tokens of each trace replayed after :data:`WARMUP` warm-up tokens;
   the noisy oracles (fn = fp = :data:`NOISE`) give the break-even predictor quality;
4. **report** — ``report.html``, whose verdict gives the same summary lines that end the demo
   (:func:`sparsesim.experiments.verdict.summary_lines`; also in ``summary.txt``).

``window:k=4`` is not swept: with these budgets it keeps exactly what LRU keeps (docs/experiments.md,
"The demo"). Each stage's output lands in ``out_dir``; a stage whose output exists is not redone, so
an interrupted demo continues where it stopped. ``demo.json`` records the settings: a directory
holding a demo run with other settings is refused rather than mixed.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any, Iterator

from tqdm import tqdm

from sparsesim import human
from sparsesim.atomic import write_text
from sparsesim.errors import InputError
from sparsesim.inputs import read_text
from sparsesim.tracing.checks import DEFAULT_CALIB_TOKENS, DEFAULT_MODEL, DEFAULT_WINDOW, PYDOC

PROFILES = ("oneplus-12", "raspberry-pi-5-nvme", "laptop-nvme")
LEVELS = (0.5, 0.7, 0.9)
TOKENS = 1024            # evaluation tokens per trace (perplexity over all of them)
TRAIN_TOKENS = 1024      # tokens of each training trace
BUDGETS = (0.1, 0.25, 0.5, 1.0)
NOISE = (0.05, 0.1, 0.2, 0.4)
REALISABLE = ("none", "previous-token", "token-lookup", "static-hot")
CACHES = ("lru", "static-pin")
# (predictor, cache) pairs: dense and every realisable predictor and the oracle under both caches;
# the noisy oracles under LRU only (the break-even study).
PAIRS = tuple((p, c) for p in ("dense", *REALISABLE, "oracle") for c in CACHES) + \
    tuple((f"noisy-oracle:fn={q},fp={q}", "lru") for q in NOISE)
SWEEP_TOKENS = 192       # tokens of each trace a sweep run replays ...
WARMUP = 32              # ... of which the first are warm-up, left out of the metrics


def _level_name(level: float) -> str:
    return f"{round(level * 100)}"


def settings(model: str, tokens: int) -> dict[str, Any]:
    return {"model": model, "text": PYDOC, "window": DEFAULT_WINDOW, "tokens": tokens,
            "calib_tokens": DEFAULT_CALIB_TOKENS, "train_tokens": TRAIN_TOKENS, "levels": list(LEVELS),
            "profiles": list(PROFILES), "pairs": [list(p) for p in PAIRS], "budgets": list(BUDGETS),
            "sweep_tokens": SWEEP_TOKENS, "warmup": WARMUP}


def _claim(out: Path, wanted: dict[str, Any]) -> None:
    """Refuse a directory that holds a demo made with other settings (its outputs would be reused)."""
    stamp = out / "demo.json"
    if stamp.is_file():
        try:
            found = json.loads(read_text(stamp))
        except (InputError, ValueError):
            found = None
        if found != wanted:
            raise InputError(f"{out}: holds a demo run with other settings ({stamp}); use a new directory "
                             f"(-o) or remove it")
    elif out.is_dir() and any(out.iterdir()):
        raise InputError(f"{out}: exists and is not a demo directory; use a new directory (-o)")
    out.mkdir(parents=True, exist_ok=True)
    write_text(stamp, json.dumps(wanted, indent=2) + "\n")


class Stages:
    """Numbered stages with their wall times (printed as they end and at the close) and CPU times
    (this process and its finished workers: on a shared machine the wall time alone misleads)."""

    def __init__(self, total: int):
        self.total, self.times, self.cpu = total, {}, {}

    @staticmethod
    def _cpu() -> float:
        own, workers = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        return own.ru_utime + own.ru_stime + workers.ru_utime + workers.ru_stime

    @contextlib.contextmanager
    def run(self, name: str) -> Iterator[str]:
        label = f"[{len(self.times) + 1}/{self.total}] {name}"
        print(label, file=sys.stderr, flush=True)
        start, cpu = time.perf_counter(), self._cpu()
        yield label
        self.times[name], self.cpu[name] = time.perf_counter() - start, self._cpu() - cpu
        print(f"{label}: {self.times[name]:.0f} s", file=sys.stderr, flush=True)


def demo(out_dir: str | os.PathLike = "demo", model: str = DEFAULT_MODEL, tokens: int = TOKENS,
         workers: int | None = None) -> dict[str, Any]:
    """Run the demo into ``out_dir``; returns the paths written, the summary lines and the stage times."""
    from sparsesim.tracing.checks import check_span, model_kind

    model_kind(model)
    check_span(tokens, DEFAULT_WINDOW, DEFAULT_CALIB_TOKENS)   # before the directory is claimed for these settings
    out = Path(out_dir)
    _claim(out, settings(model, tokens))
    start = time.perf_counter()
    stages = Stages(4)
    with stages.run("traces") as label:
        traces = _traces(out, model, tokens, label)
    with stages.run("predictability analysis"):
        from sparsesim.experiments.predictability import analyze

        analysis = out / "analysis" / "report.html"
        if not analysis.exists():
            analyze(traces[0.5][0], out / "analysis", train=traces[0.5][1])
    with stages.run("sweep"):
        from sparsesim.experiments.sweep import run_sweep

        spec = _write_spec(out, traces)
        run_sweep(spec, out / "results", workers=workers)
    with stages.run("report"):
        from sparsesim.experiments.report import make_report
        from sparsesim.experiments.sweep import read_results
        from sparsesim.experiments.verdict import compute, summary_lines

        paths = make_report(out / "results", out / "report.html", progress=True)
        lines = summary_lines(compute(read_results(out / "results").to_pylist()))   # the report's verdict
        write_text(out / "summary.txt", "\n".join(lines) + "\n")
    total = time.perf_counter() - start
    write_text(out / "timings.json", json.dumps({"wall_s": {**stages.times, "total": total}, "cpu_s": stages.cpu},
                                                indent=2) + "\n")
    print(f"\nreport: {Path(paths['page']).resolve()}  (tables beside it; analysis: {analysis})")
    print("\n".join(f"- {line}" for line in lines))
    print("wall time: " + ", ".join(f"{name} {s:.0f} s" for name, s in stages.times.items()) + f"; total {total:.0f} s")
    return {"report": paths["page"], "analysis": str(analysis), "summary": lines, "stage_seconds": stages.times,
            "spec": str(spec)}


def _traces(out: Path, model: str, tokens: int, label: str) -> dict[float, tuple[Path, Path]]:
    """(trace, training trace) per level; the model is loaded only if a trace is missing."""
    folder = out / "traces"
    folder.mkdir(parents=True, exist_ok=True)
    paths = {lv: (folder / f"pydoc-{_level_name(lv)}.parquet", folder / f"train-{_level_name(lv)}.parquet")
             for lv in LEVELS}
    todo = [(lv, kind) for lv in LEVELS for kind, path in zip(("trace", "train"), paths[lv]) if not path.exists()]
    if not todo:
        return paths
    from sparsesim.tracing.models import load_model
    from sparsesim.tracing.perplexity import CALIBRATION_PASSES
    from sparsesim.tracing.text import load_text
    from sparsesim.tracing.trace import trace_model

    second_half = folder / "pydoc-second-half.txt"
    if not second_half.exists():
        text = load_text(PYDOC).text
        write_text(second_half, text[len(text) // 2:])
    weights = {"trace": CALIBRATION_PASSES * DEFAULT_CALIB_TOKENS + 2 * tokens, "train": TRAIN_TOKENS}   # tokens
    with tqdm(total=sum(weights[k] for _, k in todo), desc=label, unit="tok", unit_scale=True, disable=None,
              dynamic_ncols=True) as bar:
        bar.set_postfix_str(f"loading {model}")
        lm = load_model(model)
        for level, kind in todo:
            trace, train = paths[level]
            thresholds = folder / f"thresholds-{_level_name(level)}.json"
            bar.set_postfix_str(f"{kind} {human.percent(level)}")
            if kind == "trace":
                trace_model(out=trace, model=lm, text=PYDOC, sparsity=level, tokens=tokens, window=DEFAULT_WINDOW,
                            save_thresholds=thresholds)
            else:
                trace_model(out=train, model=lm, text=str(second_half), thresholds=thresholds, tokens=TRAIN_TOKENS,
                            window=DEFAULT_WINDOW, ppl=False)
            bar.update(weights[kind])
    return paths


def _write_spec(out: Path, traces: dict[float, tuple[Path, Path]]) -> Path:
    spec = out / "sweep.yaml"
    rel = {lv: tuple(p.relative_to(out).as_posix() for p in pair) for lv, pair in traces.items()}
    write_text(spec, json.dumps({   # JSON is YAML
        "name": "demo",
        "description": f"Gemma 3 270M at {', '.join(human.percent(lv) for lv in LEVELS)} sparsity: dense, realisable "
                       f"predictors, the oracle bound and noisy oracles x replacement x DRAM budgets on three devices",
        "traces": [{"file": t, "train_trace": tr, "profile_trace": tr} for t, tr in rel.values()],
        "profiles": list(PROFILES),
        "zip": {"predictor": [p for p, _ in PAIRS], "cache": [c for _, c in PAIRS]},
        "grid": {"dram_budget": list(BUDGETS)},
        "fixed": {"warmup": WARMUP, "max_tokens": SWEEP_TOKENS},
        "baselines": False,   # dense and no-prefetch are runs of their own
    }, indent=2) + "\n")
    return spec
