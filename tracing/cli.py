"""``sparsesim trace | ppl | inspect``. Registration imports no torch; the handlers do."""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

from sparsesim import human
from sparsesim.atomic import check_writable
from sparsesim.errors import InputError
from sparsesim.tracing.checks import (BUILTIN_MODELS, DEFAULT_CALIB_TOKENS, DEFAULT_MODEL, DEFAULT_TOKENS,
                                      DEFAULT_WINDOW, METHODS, PYDOC, SITES, STORIES_NAME, check_choice, check_count,
                                      check_span, check_sparsity, check_text, model_kind, parse_levels)

DEFAULTS = dict(model=DEFAULT_MODEL, text=PYDOC, tokens=DEFAULT_TOKENS, calib_tokens=DEFAULT_CALIB_TOKENS)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("trace", help="trace FFN activation masks (or a MoE model's expert routing) into a trace",
                       description="Calibrate thresholds on a calibration span, then record zero-enforced FFN "
                                   "activation masks over the evaluation span (docs/tracing.md). With --perturb, "
                                   "re-trace a trace's own windows with some tokens replaced. A mixture-of-experts "
                                   "model is traced by expert instead: the router's top-k per token and layer, no "
                                   "--sparsity (docs/moe.md).")
    _model_text_args(p, explicit=True)
    p.add_argument("--sparsity", type=float,
                   help="target FFN activation sparsity in [0, 1), e.g. 0.5 (dense models; MoE models take none)")
    p.add_argument("--method", choices=METHODS, help="threshold method (default percentile)")
    p.add_argument("--site", choices=SITES,
                   help="thresholded value: down_proj input h (default) or act(gate(x))")
    p.add_argument("--thresholds", metavar="FILE", help="use saved thresholds (JSON) instead of calibrating")
    p.add_argument("--save-thresholds", metavar="FILE", help="write the thresholds used to this JSON file")
    p.add_argument("--no-ppl", dest="ppl", action="store_false", help="skip dense and sparse perplexity")
    p.add_argument("--learned-rank", type=int, metavar="R",
                   help="also train a rank-R low-rank activation predictor per layer on the calibration span and "
                        "store its predictions as column pred:lowrank (predictor 'stored')")
    p.add_argument("--learned-epochs", type=int, metavar="E",
                   help="training epochs of the --learned-rank predictor (default 20)")
    p.add_argument("--perturb", metavar="BASE.parquet",
                   help="re-trace BASE's windows with its saved thresholds, --fraction of the tokens replaced "
                        "(for 'sparsesim analyze BASE --perturbed OUT')")
    p.add_argument("--fraction", type=float, metavar="F", help="with --perturb: share of tokens to replace, in [0, 1]")
    p.add_argument("--seed", type=int, metavar="S", help="with --perturb: random seed of the replacement (default 0)")
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


def _model_text_args(p: argparse.ArgumentParser, explicit: bool = False) -> None:
    """With ``explicit`` the defaults are left None (filled in by the handler) so it can tell given flags apart."""
    d = dict.fromkeys(DEFAULTS) if explicit else DEFAULTS
    p.add_argument("--model", default=d["model"],
                   help=f"{DEFAULT_MODEL} (default" + ("; with --perturb the base trace's model" if explicit else "")
                        + f"), {STORIES_NAME}, a HF model directory, a .gguf file or a llama2.c directory")
    p.add_argument("--text", default=d["text"], help=f"{PYDOC} (built-in, default) or a UTF-8 text file")
    p.add_argument("--tokens", type=int, default=d["tokens"],
                   help=f"evaluation tokens from the start of the text (default {DEFAULTS['tokens']})")
    p.add_argument("--window", type=int,
                   help=f"tokens per forward window (default {DEFAULT_WINDOW}, or the model's context if shorter; "
                        f"the same default for trace, ppl and demo; perplexity depends on it)")
    p.add_argument("--calib-tokens", type=int, default=d["calib_tokens"],
                   help=f"calibration tokens from the end of the text (default {DEFAULTS['calib_tokens']})")


# Flags of a normal trace that a --perturb run takes from its base trace instead.
TRACE_ONLY = (("--text", "text"), ("--tokens", "tokens"), ("--window", "window"), ("--calib-tokens", "calib_tokens"),
              ("--sparsity", "sparsity"), ("--method", "method"), ("--site", "site"), ("--thresholds", "thresholds"),
              ("--save-thresholds", "save_thresholds"), ("--learned-rank", "learned_rank"),
              ("--learned-epochs", "learned_epochs"))


def _trace(args: argparse.Namespace) -> int:
    # Cheap checks before importing torch and loading the model, so a mistyped flag fails at once.
    start = time.perf_counter()
    if args.perturb is not None:
        return _perturb(args, start)
    given = [flag for flag, key in (("--fraction", "fraction"), ("--seed", "seed")) if getattr(args, key) is not None]
    if given:
        raise InputError(f"{' and '.join(given)}: only used with --perturb BASE.parquet")
    if args.learned_epochs is not None and args.learned_rank is None:
        raise InputError("--learned-epochs needs --learned-rank R")
    if args.learned_epochs is not None and args.learned_epochs < 1:
        raise InputError(f"--learned-epochs {args.learned_epochs}: must be at least 1")
    for key, value in DEFAULTS.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.sparsity is None and args.thresholds is None and args.model in BUILTIN_MODELS:   # dense: by neuron
        raise InputError("--sparsity is required unless --thresholds gives saved thresholds")
    if args.sparsity is not None:
        check_sparsity(args.sparsity)
    if args.thresholds is not None and not Path(args.thresholds).is_file():
        raise InputError(f"--thresholds {args.thresholds}: no such file")
    check_count(args.learned_rank, "--learned-rank", 1)
    _check_model_text(args)
    check_writable(args.out)
    if args.save_thresholds is not None:
        check_writable(args.save_thresholds)
    from sparsesim.tracing.trace import LEARNED_EPOCHS, trace_model

    meta = trace_model(out=args.out, model=args.model, text=args.text, sparsity=args.sparsity, method=args.method,
                       site=args.site, tokens=args.tokens, window=args.window, calib_tokens=args.calib_tokens,
                       thresholds=args.thresholds, save_thresholds=args.save_thresholds, ppl=args.ppl,
                       learned_rank=args.learned_rank,
                       learned_epochs=LEARNED_EPOCHS if args.learned_epochs is None else args.learned_epochs)
    ppl = meta["perplexity"]
    line = f"wrote {args.out}: {meta['text']['evaluation']['tokens']} tokens x {meta['model']['n_layers']} layers, "
    if "units" in meta:   # a mixture-of-experts model: the router's choices
        u = meta["units"]
        routed = [i for i, c in enumerate(u["count"]) if c]
        line += (f"{len(routed)} MoE layers of {max(u['count'])} experts, top-{max(u['top_k'])}"
                 + (f", {sum(u['shared'])} always-active units" if any(u["shared"]) else ""))
    else:
        s = meta["sparsity"]
        line += (f"measured sparsity {s['measured_mean']:.3f} "
                 f"(layers {min(s['measured']):.3f}-{max(s['measured']):.3f})")
    if ppl:
        line += f", ppl dense {ppl['dense']:.3f} sparse {ppl['sparse']:.3f} (window {ppl['window']})"
    learned = meta.get("learned", {})
    if "lowrank" in learned:
        lr = learned["lowrank"]
        held = lr["heldout"]
        line += (f", pred:lowrank rank {lr['rank']} on layers 1-{len(held['precision'])}: evaluation-token "
                 f"precision {_mean(held['precision']):.3f} recall {_mean(held['recall']):.3f}")
    if "router-ahead" in learned:
        line += f", pred:router-ahead for layers {', '.join(map(str, learned['router-ahead']['layers']))}"
    print(f"{line}; {time.perf_counter() - start:.1f} s")
    if args.save_thresholds is not None:
        print(f"wrote {args.save_thresholds} (thresholds)")
    return 0


def _check_model_text(args: argparse.Namespace) -> None:
    """Everything about the model, text and spans that can be known without loading the model."""
    model_kind(args.model)
    check_text(args.text)
    check_span(args.tokens, args.window, args.calib_tokens)


def _perturb(args: argparse.Namespace, start: float) -> int:
    given = [flag for flag, key in TRACE_ONLY if getattr(args, key) is not None]
    if given:
        raise InputError(f"--perturb re-traces the base trace's own windows with its saved thresholds; "
                         f"it takes no {', '.join(given)}")
    if args.fraction is None:
        raise InputError("--perturb needs --fraction F (the share of tokens to replace, in [0, 1])")
    if not 0.0 <= args.fraction <= 1.0:
        raise InputError(f"--fraction {args.fraction}: must be a number in [0, 1]")
    base = Path(args.perturb)
    if not base.is_file():
        raise InputError(f"--perturb {base}: no such file")
    if Path(args.out).resolve() == base.resolve():
        raise InputError(f"-o {args.out}: would overwrite the base trace; write the perturbed trace elsewhere")
    check_writable(args.out)
    from sparsesim.tracing.perturb import trace_perturbed

    seed = 0 if args.seed is None else args.seed
    meta = trace_perturbed(base, args.out, args.fraction, seed=seed, model=args.model)
    p, s = meta["perturbation"], meta["sparsity"]
    print(f"wrote {args.out}: {base}'s {meta['text']['evaluation']['tokens']} tokens re-traced with "
          f"{p['replaced_tokens']} replaced (fraction {args.fraction}, seed {seed}), measured sparsity "
          f"{s['measured_mean']:.3f}; {time.perf_counter() - start:.1f} s")
    return 0


def _mean(values: list[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return sum(finite) / len(finite) if finite else float("nan")


def _ppl(args: argparse.Namespace) -> int:
    # Cheap checks first: a mistyped flag fails before torch and the model load (seconds).
    levels = parse_levels(args.levels)
    methods = [check_choice(m.strip(), METHODS, "--method") for m in args.method.split(",") if m.strip()]
    if not methods:
        raise InputError("--method: no method given")
    _check_model_text(args)
    out = check_writable(args.out)
    check_writable(out.with_suffix(".html"))
    from sparsesim.tracing.perplexity import ppl_curve

    rows = ppl_curve(model=args.model, text=args.text, levels=levels, window=args.window, methods=methods,
                     site=args.site, tokens=args.tokens, calib_tokens=args.calib_tokens, out=args.out)
    r0 = rows[0]
    print(f"{r0['model']} on {r0['text']}: {r0['eval_tokens']} tokens, window {r0['window']}")
    print(f"{'method':<11} {'target':>7} {'measured':>9} {'perplexity':>11} {'change':>8}")
    for r in rows:
        print(f"{r['method']:<11} {human.percent(r['target_sparsity']):>7} "
              f"{human.percent(r['measured_sparsity'], 1):>9} {r['ppl']:>11.3f} {r['ppl_increase_pct']:>+6.1f} %")
    print(f"wrote {out} and {out.with_suffix('.html')}")
    return 0


def _inspect(args: argparse.Namespace) -> int:
    from sparsesim.inspect_trace import format_summary, inspect_trace, to_json

    info = inspect_trace(args.trace)
    print(to_json(info) if args.json else format_summary(info))
    return 0
