"""The experiments' ``sparsesim`` subcommands: ``sweep``, ``report``, ``reproduce`` and ``demo``.

Registration only builds parsers; handlers import their module when they run, so ``sparsesim --help``
stays fast and nothing here imports torch. Each handler is a thin wrapper over a plain function:
:func:`sparsesim.experiments.sweep.run_sweep`, :func:`sparsesim.experiments.report.make_report` and :func:`reproduce`.
"""

from __future__ import annotations

import argparse
import importlib
from pathlib import Path
from typing import Any

from sparsesim import human
from sparsesim.atomic import write_text
from sparsesim.errors import InputError

# name -> module with make_trace(path) -> path and run(trace) -> [records]
REPRODUCTIONS = {"llm-in-flash": "sparsesim.experiments.reproductions.llm_in_flash",
                 "powerinfer-2": "sparsesim.experiments.reproductions.powerinfer_2",
                 "seed-paper": "sparsesim.experiments.reproductions.seed_paper"}
REPRODUCTION_COLUMNS = ("row", "published_ms", "simulated_ms", "error")


def register(sub: argparse._SubParsersAction) -> None:
    _register_sweep(sub)
    _register_report(sub)
    _register_reproduce(sub)
    _register_demo(sub)


def _register_demo(sub: argparse._SubParsersAction) -> None:
    from sparsesim.experiments.demo import TOKENS
    from sparsesim.tracing.checks import DEFAULT_MODEL, DEFAULT_WINDOW

    p = sub.add_parser(
        "demo", help="the whole pipeline on the built-in defaults (Gemma 3 270M on pydoc), under 10 minutes",
        description=f"Traces at several sparsity levels with their perplexity (window {DEFAULT_WINDOW}), the "
                    "predictability analysis, a sweep over 3 devices x predictors x replacement policies x DRAM "
                    "budgets with dense, no-prefetch, the oracle bound and noisy oracles, and the report; ends "
                    "with the report's verdict in a few lines (experiments/demo.py). Stages already done in DIR "
                    "are skipped.")
    p.add_argument("-o", "--output", dest="out_dir", default="demo", metavar="DIR", help="output directory "
                                                                                          "(default %(default)s)")
    p.add_argument("--model", default=DEFAULT_MODEL, help="default %(default)s")
    p.add_argument("--tokens", type=int, default=TOKENS, help="evaluation tokens per trace (default %(default)s)")
    p.add_argument("--workers", type=int, metavar="N", help="sweep worker processes (default: the cores available)")
    p.set_defaults(func=_demo)


def _demo(args: argparse.Namespace) -> int:
    from sparsesim.experiments.demo import demo

    demo(args.out_dir, model=args.model, tokens=args.tokens, workers=args.workers)
    return 0


def _register_sweep(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sweep", help="run a sweep spec (traces x profiles x settings) into a Parquet results table",
        description="Run every configuration of a sweep spec (format: docs/experiments.md) not yet recorded in "
                    "RESULTS_DIR, on a local process pool or a Dask cluster. Each finished run is recorded at "
                    "once, so an interrupted sweep resumes where it stopped when run again. Exit status 1 when "
                    "some run failed unexpectedly (status 'error').")
    p.add_argument("spec", metavar="SPEC.yaml", help="the sweep spec")
    p.add_argument("-o", "--output", dest="results_dir", required=True, metavar="RESULTS_DIR",
                   help="results directory (created; reused to resume)")
    p.add_argument("--workers", type=int, metavar="N", help="worker processes (default: the cores available)")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--scheduler", metavar="tcp://HOST:8786", help="run on this Dask scheduler's workers")
    where.add_argument("--dask-local", action="store_true", help="run on a local Dask cluster (loopback only)")
    p.add_argument("--dashboard", action="store_true",
                   help="with --dask-local: serve Dask's dashboard on 127.0.0.1 (off by default)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    p.set_defaults(func=_sweep)


def _register_report(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "report", help="turn a sweep's results into an offline HTML report and CSV tables",
        description="One self-contained HTML page (works offline) that opens with the verdict (per device: the "
                    "best realisable design at each DRAM budget, its speed-up over dense, the oracle bound and the "
                    "break-even predictor quality), then one section per device, plus NAME-verdict.csv, "
                    "NAME-points.csv and NAME-runs.csv next to it (docs/experiments.md).")
    p.add_argument("results_dir", metavar="RESULTS_DIR", help="a directory written by sparsesim sweep")
    p.add_argument("-o", "--output", metavar="REPORT.html", help="the page (default: RESULTS_DIR/report.html)")
    p.add_argument("--ppl", metavar="CSV", help="sparsity-vs-perplexity curve from sparsesim ppl "
                                                "(default: RESULTS_DIR/curve.csv when present, else the traces' own)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    p.set_defaults(func=_report)


def _register_reproduce(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "reproduce", help="reproduce a published result and compare (llm-in-flash, powerinfer-2, seed-paper)",
        description="Rebuild a published table with the simulator and print published vs simulated. Writes "
                    "the trace it needs and NAME.csv into DIR.")
    p.add_argument("name", choices=sorted(REPRODUCTIONS), help="which result")
    p.add_argument("-o", "--output", dest="out_dir", metavar="DIR", help="output directory (default: ./NAME)")
    p.set_defaults(func=_reproduce)


def _sweep(args: argparse.Namespace) -> int:
    from sparsesim.experiments.sweep import run_sweep

    s = run_sweep(args.spec, args.results_dir, workers=args.workers, scheduler=args.scheduler,
                  dask_local=args.dask_local, progress=args.progress, dashboard=args.dashboard)
    print(f"sweep {s['sweep']}: {s['runs']} runs, {s['skipped']} already recorded; ran {s['ok']} ok, "
          f"{s['invalid']} invalid, {s['error']} error in {s['wall_s']:.1f} s ({s['runs_per_s']:.1f} runs/s) "
          f"-> {s['results']}")
    if s["error"]:
        print(f"sparsesim: {s['error']} runs failed unexpectedly (status 'error', message in the 'error' column); "
              f"run the same command again to retry them")
    return 1 if s["error"] else 0


def _report(args: argparse.Namespace) -> int:
    from sparsesim.experiments.report import make_report

    out = args.output or str(Path(args.results_dir) / "report.html")
    paths = make_report(args.results_dir, out, ppl_csv=args.ppl, progress=args.progress)
    print(f"wrote {paths['page']} (open it in a browser; works offline)")
    print(f"  and {', '.join(p for k, p in paths.items() if k != 'page')}")
    return 0


def _reproduce(args: argparse.Namespace) -> int:
    out_dir = Path(args.out_dir or args.name)
    rows = reproduce(args.name, out_dir)
    columns = getattr(importlib.import_module(REPRODUCTIONS[args.name]), "COLUMNS", REPRODUCTION_COLUMNS)
    print(format_rows(rows, columns))
    print(f"wrote {out_dir / (args.name + '.csv')} and the trace it replays in {out_dir}")
    return 0


def reproduce(name: str, out_dir: str | Path) -> list[dict[str, Any]]:
    """Run reproduction ``name``; writes its trace, ``<name>.csv`` and (where the reproduction has one)
    ``<name>.md`` into ``out_dir``; returns its rows."""
    if name not in REPRODUCTIONS:
        raise InputError(f"reproduce {name!r}: unknown; known: {', '.join(sorted(REPRODUCTIONS))}")
    from sparsesim.experiments.report import csv_text

    module = importlib.import_module(REPRODUCTIONS[name])
    out_dir = Path(out_dir)
    rows = module.run(module.make_trace(str(out_dir / f"{name}-trace.parquet")))
    write_text(out_dir / f"{name}.csv", csv_text(rows))
    if hasattr(module, "markdown"):   # the tables docs/time-model.md quotes
        write_text(out_dir / f"{name}.md", module.markdown(rows))
    return rows


def format_rows(rows: list[dict[str, Any]], columns: tuple[str, ...]) -> str:
    """Records as aligned text columns (floats to 4 significant digits)."""
    cells = [list(columns)] + [[human.number(r[c], 4) if isinstance(r[c], float) else str(r[c]) for c in columns]
                               for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    return "\n".join("  ".join(cell.rjust(w) if i else cell.ljust(w) for i, (cell, w) in enumerate(zip(row, widths)))
                     for row in cells)
