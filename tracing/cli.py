"""``sparsesim trace | ppl | inspect``. Registration imports no torch; the handlers do."""

from __future__ import annotations

import argparse
import time

from simulator.atomic import check_writable
from tracing.checks import METHODS, SITES, check_sparsity

DEFAULTS = dict(model="gemma-3-270m", text="pydoc", tokens=4096, calib_tokens=2048)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("trace", help="trace FFN activation masks of a model on a text into a Parquet trace",
                       description="Calibrate thresholds on a calibration span, then record zero-enforced FFN "
                                   "activation masks over the evaluation span (docs/tracing.md).")
    _model_text_args(p)
    p.add_argument("--sparsity", type=float, help="target FFN activation sparsity in [0, 1), e.g. 0.5")
    p.add_argument("--method", choices=METHODS, help="threshold method (default percentile)")
    p.add_argument("--site", choices=SITES,
                   help="thresholded value: down_proj input h (default) or act(gate(x))")
    p.add_argument("--thresholds", metavar="FILE", help="use saved thresholds (JSON) instead of calibrating")
    p.add_argument("--save-thresholds", metavar="FILE", help="write the thresholds used to this JSON file")
    p.add_argument("--no-ppl", dest="ppl", action="store_false", help="skip dense and sparse perplexity")
    p.add_argument("-o", "--out", required=True, metavar="OUT.parquet", help="trace file to write")
    p.set_defaults(func=_trace)

    p = sub.add_parser("ppl", help="sparsity-vs-perplexity sweep (CSV + offline HTML plot)",
                       description="Perplexity of the dense model and of each method x sparsity level.")
    _model_text_args(p)
    p.add_argument("--levels", default="0,0.3,0.5,0.7", help="comma-separated sparsity levels (default %(default)s)")
    p.add_argument("--method", default="percentile",
                   help="percentile, global, topk, or a comma-separated list (default %(default)s)")
    p.add_argument("--site", choices=SITES, default="intermediate")
    p.add_argument("-o", "--out", required=True, metavar="curve.csv", help="CSV to write; the plot goes to .html")
    p.set_defaults(func=_ppl)

    p = sub.add_parser("inspect", help="summarise a trace file: model, text, sparsity per layer, perplexity")
    p.add_argument("trace", metavar="TRACE", help="trace .parquet file")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=_inspect)


def _model_text_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=DEFAULTS["model"],
                   help="gemma-3-270m (default), stories260K, a HF model directory, a .gguf file "
                        "or a llama2.c directory")
    p.add_argument("--text", default=DEFAULTS["text"], help="pydoc (built-in, default) or a UTF-8 text file")
    p.add_argument("--tokens", type=int, default=DEFAULTS["tokens"],
                   help="evaluation tokens from the start of the text (default %(default)s)")
    p.add_argument("--window", type=int, help="window length (default min(2048, model context))")
    p.add_argument("--calib-tokens", type=int, default=DEFAULTS["calib_tokens"],
                   help="calibration tokens from the end of the text (default %(default)s)")


def _trace(args: argparse.Namespace) -> int:
    # Cheap checks before importing torch (~3 s), so a mistyped flag fails at once.
    start = time.perf_counter()
    check_writable(args.out)
    if args.sparsity is not None:
        check_sparsity(args.sparsity)
    from tracing.trace import trace_model

    meta = trace_model(out=args.out, model=args.model, text=args.text, sparsity=args.sparsity, method=args.method,
                       site=args.site, tokens=args.tokens, window=args.window, calib_tokens=args.calib_tokens,
                       thresholds=args.thresholds, save_thresholds=args.save_thresholds, ppl=args.ppl)
    s, ppl = meta["sparsity"], meta["perplexity"]
    line = (f"wrote {args.out}: {meta['text']['evaluation']['tokens']} tokens x {meta['model']['n_layers']} layers, "
            f"measured sparsity {s['measured_mean']:.3f} (layers {min(s['measured']):.3f}-{max(s['measured']):.3f})")
    if ppl:
        line += f", ppl dense {ppl['dense']:.3f} sparse {ppl['sparse']:.3f} (window {ppl['window']})"
    print(f"{line}; {time.perf_counter() - start:.1f} s")
    return 0


def _ppl(args: argparse.Namespace) -> int:
    from tracing.perplexity import parse_levels, ppl_curve

    rows = ppl_curve(model=args.model, text=args.text, levels=parse_levels(args.levels),
                     window=args.window, methods=[m.strip() for m in args.method.split(",") if m.strip()],
                     site=args.site, tokens=args.tokens, calib_tokens=args.calib_tokens, out=args.out)
    print(f"{'method':<11} {'target':>6} {'measured':>8} {'ppl':>9} {'change':>8}")
    for r in rows:
        print(f"{r['method']:<11} {r['target_sparsity']:>6.2f} {r['measured_sparsity']:>8.3f} {r['ppl']:>9.3f} "
              f"{r['ppl_increase_pct']:>+7.1f}%")
    print(f"wrote {args.out} and its .html plot")
    return 0


def _inspect(args: argparse.Namespace) -> int:
    from simulator.inspect_trace import format_summary, inspect_trace, to_json

    info = inspect_trace(args.trace)
    print(to_json(info) if args.json else format_summary(info))
    return 0
