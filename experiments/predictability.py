"""``sparsesim analyze``: how predictable are a trace's activation masks, and by which predictor?

Writes ``DIR/report.html`` (offline, plotly inlined once) and the CSV tables it plots:

* ``predictors.csv`` — per predictor: precision / recall / F1 / over-prediction (mean over layers
  and the worst layer) and the bytes it would fetch per token;
* ``predictor_layers.csv`` — the same per predictor and layer, with the TP/FP/FN counters;
* ``similarity.csv`` — per layer: density, Jaccard of consecutive tokens, recurrence of the same
  token id, a random-pair baseline, layer l vs l+1, and hot-neuron concentration;
* ``perturbation.csv`` — per perturbed trace and layer: the match rate with the original.

Predictions are replayed with the engine's causality rule (:mod:`sparsesim.simulator.predictors.evaluation`)
and counted as the engine counts ``pred_tp/pred_fp/pred_fn``. Every metric is defined in
``docs/predictors.md``.

Streamed: the analysed and perturbed traces are read row group by row group
(:func:`sparsesim.simulator.streaming.open_streamed`) and every statistic is accumulated over
blocks of ``BLOCK_TOKENS`` tokens, so peak memory does not grow with the trace's masks (only its
per-token ids and popcounts are held; numbers in docs/reliability.md). Token pairs (same id,
random) are at most ``PAIR_SAMPLES`` each — all of them when there are fewer, else a seeded
sample — and each earlier row is kept only until its partner is read. A training trace is read
whole: the offline predictors train on all of it.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
from tqdm import tqdm

from sparsesim.experiments.html import Section, table_html, write_page
from sparsesim import __version__
from sparsesim.atomic import write_text
from sparsesim.simulator.bitset import frequency
from sparsesim.errors import InputError
from sparsesim.numbers import SEED
from sparsesim.simulator.predictors import PREDICTORS, CausalView, Predictor, PredictorContext
from sparsesim.simulator.predictors.evaluation import Confusion, confusion
from sparsesim.simulator.schedule import PrefetchSchedule
from sparsesim.simulator.scenario import BYTES_PER_WEIGHT, NUMBERS as SCENARIO_NUMBERS, ModelFootprint, Scenario
from sparsesim.simulator.simulate import _companion, parse_policy
from sparsesim.simulator.streaming import open_streamed
from sparsesim.tracefile import Trace, read_trace

BASE_PREDICTORS = ("dense", "previous-token", "window:k=4", "token-lookup")
TRAINED_PREDICTORS = ("static-hot", "layer-ahead", "first-layer", "pattern-codebook")
HOT_SHARE = 0.8          # PowerInfer's "neurons that produce 80 % of activations"
PAIR_SAMPLES = 4096      # token pairs per statistic at most: random pairs (baselines, layer-to-layer correlation), same-id pairs
BLOCK_TOKENS = 256       # tokens per block of a streamed pass
Row = dict[str, Any]


# ---------------------------------------------------------------------------------------------
# Inputs


def split_predictors(text: str) -> list[str]:
    """``"window:k=4,threshold=0.5,previous-token"`` -> ``["window:k=4,threshold=0.5", "previous-token"]``.

    Commas separate both predictors and a predictor's parameters; a piece with ``=`` but no
    ``:`` continues the previous predictor's parameters.
    """
    specs: list[str] = []
    for piece in filter(None, (p.strip() for p in text.split(","))):
        if "=" in piece and ":" not in piece:
            if not specs:
                raise InputError(f"--predictors {text!r}: parameter {piece!r} before any predictor name")
            specs[-1] += "," + piece
        else:
            specs.append(piece)
    if not specs:
        raise InputError("--predictors: no predictor given")
    return specs


def default_predictors(trace: Trace, train: Trace | None) -> list[str]:
    """The realisable predictors that can run on these inputs, plus ``dense`` as the reference."""
    specs = list(BASE_PREDICTORS)
    if train is not None:
        specs += TRAINED_PREDICTORS
    specs += [f"stored:name={name}" for name in sorted(trace.extra) if name in trace.meta.get("learned", {})]
    return specs


def _load(trace: str | os.PathLike | Trace, role: str, stream: bool = True) -> Trace:
    trace = trace if isinstance(trace, Trace) else open_streamed(trace) if stream else read_trace(trace)
    if trace.n_tokens == 0:
        raise InputError(f"{trace.path}: {role} trace has no tokens")
    return trace


def token_blocks(masks: Any, size: int = BLOCK_TOKENS) -> Iterator[tuple[int, np.ndarray]]:
    """(first token, masks [n, L, n_bytes]) of consecutive blocks, from an array or streamed masks."""
    for start in range(0, len(masks), size):
        yield start, np.asarray(masks[start:start + size])


# ---------------------------------------------------------------------------------------------
# Predictor accuracy


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    num, den = np.asarray(num, dtype=float), np.asarray(den, dtype=float)
    return np.divide(num, den, out=np.full(num.shape, np.nan), where=den > 0)


def streamed_confusion(trace: Trace, predictor: Predictor, lookahead: int = 1) -> Confusion:
    """:func:`~sparsesim.simulator.predictors.evaluation.replay` and ``confusion`` block by block:
    the same predictions in the same order (the ``layer`` schedule's targets only grow), counted
    per block of target tokens, so neither the predictions nor the masks of the whole trace are
    ever held."""
    T, L, _ = trace.masks.shape
    view = CausalView(trace.masks, trace.token, allow_future=predictor.sees_future)
    plan = PrefetchSchedule("layer", lookahead, L, T * L)
    total = Confusion(*(np.zeros(L, dtype=np.int64) for _ in range(4)))
    blocks = token_blocks(trace.masks)
    start, block = next(blocks, (0, np.zeros((0, L, trace.n_bytes), np.uint8)))
    predicted, issued = np.zeros_like(block), np.zeros(block.shape[:2], dtype=bool)

    def count() -> None:
        c = confusion(block, predicted, issued)
        for key in ("issued", "tp", "fp", "fn"):
            getattr(total, key)[:] += getattr(c, key)

    for step in range(T * L):
        view.frontier = step
        for target in plan.targets(step):
            token, layer = divmod(target, L)
            while token >= start + len(block):          # every later target lies beyond this block
                count()
                start, block = next(blocks)
                predicted, issued = np.zeros_like(block), np.zeros(block.shape[:2], dtype=bool)
            pred = predictor.predict(view, token, layer)
            if pred is not None:
                predicted[token - start, layer] = pred
                issued[token - start, layer] = True
    count()
    return total


def predictor_layer_rows(trace: Trace, spec: str, context: PredictorContext, neuron_bytes: float,
                         lookahead: int = 1) -> list[Row]:
    """Per-layer accuracy of one predictor replayed over ``trace``."""
    name, params = parse_policy(spec)
    predictor = PREDICTORS.create(name, params)
    predictor.setup(context)
    c = streamed_confusion(trace, predictor, lookahead)
    precision, recall = _ratio(c.tp, c.tp + c.fp), _ratio(c.tp, c.tp + c.fn)
    f1 = _ratio(2 * c.tp, 2 * c.tp + c.fp + c.fn)
    over = _ratio(c.tp + c.fp, c.tp + c.fn)
    fetched = _ratio(c.tp + c.fp, c.issued) * neuron_bytes
    return [{"predictor": spec, "layer": layer, "issued": int(c.issued[layer]), "tp": int(c.tp[layer]),
             "fp": int(c.fp[layer]), "fn": int(c.fn[layer]), "precision": float(precision[layer]),
             "recall": float(recall[layer]), "f1": float(f1[layer]), "over_prediction": float(over[layer]),
             "fetch_bytes_per_token": float(fetched[layer])}
            for layer in range(trace.n_layers)]


def summary_row(rows: Sequence[Row], n_tokens: int) -> Row:
    """Mean over layers and the worst layer of one predictor's per-layer rows."""
    def column(key: str) -> np.ndarray:
        return np.array([r[key] for r in rows], dtype=float)

    def worst(key: str) -> tuple[float, int]:
        values = column(key)
        if np.isnan(values).all():
            return float("nan"), -1
        layer = int(np.nanargmin(values))
        return float(values[layer]), layer

    def mean(key: str) -> float:
        values = column(key)
        return float("nan") if np.isnan(values).all() else float(np.nanmean(values))

    (p_worst, p_layer), (r_worst, r_layer) = worst("precision"), worst("recall")
    return {"predictor": rows[0]["predictor"], "coverage": float(column("issued").sum() / (n_tokens * len(rows))),
            "precision_mean": mean("precision"), "precision_worst": p_worst, "precision_worst_layer": p_layer,
            "recall_mean": mean("recall"), "recall_worst": r_worst, "recall_worst_layer": r_layer,
            "f1_mean": mean("f1"), "over_prediction_mean": mean("over_prediction"),
            "fetch_bytes_per_token": float(np.nansum(column("fetch_bytes_per_token")))}


# ---------------------------------------------------------------------------------------------
# Similarity


def jaccard(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """|a & b| / |a | b| of packed rows along the last axis (1 when both are empty)."""
    inter = np.bitwise_count(a & b).sum(axis=-1, dtype=np.int64)
    union = np.bitwise_count(a | b).sum(axis=-1, dtype=np.int64)
    return np.divide(inter, union, out=np.ones(inter.shape), where=union > 0)


def _previous_occurrence_pairs(tokens: np.ndarray, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(earlier, later) index pairs of consecutive occurrences of the same id, positions > 0 only.

    Position 0 of a window sees nothing but itself (BOS), so its masks repeat exactly and would
    inflate the recurrence.
    """
    rows = np.flatnonzero(positions > 0)
    order = rows[np.argsort(tokens[rows], kind="stable")]
    same = tokens[order[1:]] == tokens[order[:-1]]
    return order[:-1][same], order[1:][same]


def hot_fraction(counts: np.ndarray, share: float = HOT_SHARE) -> float:
    """Smallest fraction of neurons whose activations make up ``share`` of all activations."""
    ranked = np.sort(counts)[::-1].cumsum()
    if ranked[-1] == 0:
        return float("nan")
    return float((np.searchsorted(ranked, share * ranked[-1]) + 1) / len(counts))


class _LayerMean:
    """Mean per layer of values fed a block at a time (NaN for a layer that got none)."""

    def __init__(self, layers: int):
        self.total, self.count = np.zeros(layers), 0

    def add(self, values: np.ndarray) -> None:     # [n, layers]
        self.total += values.sum(axis=0)
        self.count += len(values)

    def __getitem__(self, layer: int) -> float:
        return float(self.total[layer] / self.count) if self.count else float("nan")


def pair_jaccard(masks: Any, first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Jaccard per layer of the rows ``first[i]`` and ``second[i]`` (first < second) -> [pairs, L],
    in one streamed pass: a first row is kept only until its partner's block is read."""
    out = np.empty((len(first), masks.shape[1]))
    by_first, by_second = np.argsort(first, kind="stable"), np.argsort(second, kind="stable")
    held: dict[int, np.ndarray] = {}
    for start, block in token_blocks(masks):
        stop = start + len(block)
        lo, hi = np.searchsorted(first[by_first], [start, stop])
        opened = by_first[lo:hi]
        held.update(zip(opened.tolist(), block[first[opened] - start]))   # a copy: the block itself is not kept
        lo, hi = np.searchsorted(second[by_second], [start, stop])
        pairs = by_second[lo:hi]
        if len(pairs):
            out[pairs] = jaccard(np.stack([held.pop(int(i)) for i in pairs]), block[second[pairs] - start])
    return out


def _at_most(rng: np.random.Generator, first: np.ndarray, second: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """All pairs when there are at most PAIR_SAMPLES, else a seeded sample of that many (in index order)."""
    if len(first) <= PAIR_SAMPLES:
        return first, second
    keep = np.sort(rng.choice(len(first), PAIR_SAMPLES, replace=False))
    return first[keep], second[keep]


def similarity_rows(trace: Trace, seed: int = 0) -> list[Row]:
    """Per-layer similarity statistics (definitions in docs/predictors.md), in streamed passes."""
    masks, T, L = trace.masks, trace.n_tokens, trace.n_layers
    density = trace.active.mean(axis=0) / np.array(trace.d_ff)
    same_seq = trace.seq[1:] == trace.seq[:-1]
    consecutive, aligned = _LayerMean(L), _LayerMean(L - 1)
    counts = np.zeros((L, trace.n_bytes * 8), dtype=np.int64)
    previous = None
    for start, block in token_blocks(masks):
        rows = block if previous is None else np.concatenate([previous, block])      # a pair may straddle blocks
        first = start - len(rows) + len(block)
        keep = same_seq[first:start + len(block) - 1]
        consecutive.add(jaccard(rows[:-1][keep], rows[1:][keep]))                     # [pairs, L]
        aligned.add(jaccard(block[:, :-1], block[:, 1:]))                              # [n, L-1]
        counts += frequency(block)
        previous = block[-1:]
    rng = np.random.default_rng(seed)
    earlier, later = _previous_occurrence_pairs(trace.token, trace.pos)
    recurrence = pair_jaccard(masks, *_at_most(np.random.default_rng([seed, 1]), earlier, later))
    a, b = rng.integers(0, T, size=(2, PAIR_SAMPLES))
    a, b = a[a != b], b[a != b]
    random_pairs = pair_jaccard(masks, np.minimum(a, b), np.maximum(a, b))               # [pairs, L]
    rows = []
    for l in range(L):
        row: Row = {"layer": l, "density": float(density[l]),
                    "consecutive_jaccard": consecutive[l], "same_id_jaccard": _mean(recurrence[:, l]),
                    "same_id_pairs": int(len(earlier)), "random_pair_jaccard": _mean(random_pairs[:, l])}
        if l + 1 < L:
            p, q = density[l], density[l + 1]
            row.update(next_layer_jaccard=aligned[l],
                       next_layer_jaccard_chance=float(p * q / (p + q - p * q)) if p + q > 0 else float("nan"),
                       next_layer_pair_correlation=_correlation(random_pairs[:, l], random_pairs[:, l + 1]))
        else:
            row.update(next_layer_jaccard=float("nan"), next_layer_jaccard_chance=float("nan"),
                       next_layer_pair_correlation=float("nan"))
        row["hot_fraction_80"] = hot_fraction(counts[l, :trace.d_ff[l]])
        rows.append(row)
    return rows


def _mean(values: np.ndarray) -> float:
    return float(values.mean()) if values.size else float("nan")


def _correlation(x: np.ndarray, y: np.ndarray) -> float:
    if x.size < 2 or x.std() == 0 or y.std() == 0:
        return float("nan")
    return float(np.corrcoef(x, y)[0, 1])


def perturbation_rows(trace: Trace, perturbed: Sequence[Trace]) -> list[Row]:
    """Per perturbed trace and layer: mean Jaccard with the original at aligned positions."""
    rows = []
    L = trace.n_layers
    for other in perturbed:
        if other.n_tokens != trace.n_tokens or not (np.array_equal(other.seq, trace.seq)
                                                    and np.array_equal(other.pos, trace.pos)):
            raise InputError(f"{other.path}: perturbed trace does not align with {trace.path} "
                             f"(it must trace the same windows and positions; see tracing/perturb.py)")
        changed = other.token != trace.token
        match, replaced, unchanged = _LayerMean(L), _LayerMean(L), _LayerMean(L)
        for (start, block), (_, theirs) in zip(token_blocks(trace.masks), token_blocks(other.masks)):
            values = jaccard(block, theirs)                                                 # [n, L]
            hit = changed[start:start + len(block)]
            match.add(values)
            replaced.add(values[hit])
            unchanged.add(values[~hit])
        fraction = other.meta.get("perturbation", {}).get("fraction", float(changed.mean()))
        for l in range(L):
            rows.append({"perturbed": Path(other.path).name, "fraction": float(fraction), "layer": l,
                         "replaced_tokens": int(changed.sum()), "match_rate": match[l],
                         "match_rate_replaced": replaced[l], "match_rate_unchanged": unchanged[l]})
    return rows


# ---------------------------------------------------------------------------------------------
# Report


def figures(tables: dict[str, list[Row]]) -> dict[str, Any]:
    """The plots, built from the very rows written to the CSV tables."""
    import plotly.graph_objects as go   # heavy: only when a report is built, not at CLI start-up

    def lines(rows: list[Row], group: str, y: str, title: str, ytitle: str) -> go.Figure:
        fig = go.Figure()
        for key in dict.fromkeys(r[group] for r in rows):
            part = [r for r in rows if r[group] == key]
            fig.add_scatter(x=[r["layer"] for r in part], y=[r[y] for r in part], mode="lines+markers", name=str(key))
        return fig.update_layout(title=title, xaxis_title="layer", yaxis_title=ytitle)

    summary = tables["predictors"]
    figs: dict[str, Any] = {}
    bars = go.Figure()
    for key, label in (("precision_mean", "precision"), ("recall_mean", "recall"), ("f1_mean", "F1")):
        bars.add_bar(x=[r["predictor"] for r in summary], y=[r[key] for r in summary], name=label)
    figs["predictors"] = bars.update_layout(title="Predictor accuracy (mean over layers)", barmode="group",
                                            yaxis_title="fraction")
    layer_rows = tables["predictor_layers"]
    figs["precision"] = lines(layer_rows, "predictor", "precision", "Precision per layer", "TP / (TP + FP)")
    figs["recall"] = lines(layer_rows, "predictor", "recall", "Recall per layer", "TP / (TP + FN)")
    sim = tables["similarity"]
    fig = go.Figure()
    for key in ("consecutive_jaccard", "same_id_jaccard", "random_pair_jaccard", "next_layer_pair_correlation"):
        fig.add_scatter(x=[r["layer"] for r in sim], y=[r[key] for r in sim], mode="lines+markers", name=key)
    figs["similarity"] = fig.update_layout(title="Mask similarity per layer", xaxis_title="layer")
    figs["concentration"] = go.Figure(go.Bar(x=[r["layer"] for r in sim], y=[r["hot_fraction_80"] for r in sim])) \
        .update_layout(title=f"Fraction of neurons covering {HOT_SHARE:.0%} of activations", xaxis_title="layer",
                       yaxis_title="fraction of neurons")
    if tables["perturbation"]:
        figs["perturbation"] = lines(tables["perturbation"], "perturbed", "match_rate",
                                     "Match rate with the original text per layer", "mean Jaccard")
    return figs


def _sections(tables: dict[str, list[Row]], figs: dict[str, Any], lookahead: int, precision: str) -> list[Section]:
    sections = [
        Section("Predictor accuracy",
                f"Each predictor replayed over the trace with the simulator's causality rule (layer schedule, "
                f"lookahead {lookahead}); counters over issued predictions only (coverage = issued / (tokens x "
                f"layers)). Precision = TP/(TP+FP), recall = TP/(TP+FN), over-prediction = (TP+FP)/(TP+FN); "
                f"fetch bytes per token = predicted neurons x neuron bytes at {precision}, summed over layers. "
                f"'dense' is the no-sparsity reference (precision = density).",
                figures=[figs["predictors"]], tables=[table_html(tables["predictors"])]),
        Section("Predictor accuracy per layer", "", figures=[figs["precision"], figs["recall"]],
                tables=[table_html(tables["predictor_layers"])]),
        Section("Mask similarity",
                "Jaccard |A&B|/|A|B| of active sets, averaged over pairs: consecutive tokens of a window; "
                "consecutive occurrences of the same token id (positions > 0); random token pairs (baseline). "
                "Layer l vs l+1: next_layer_jaccard compares index-aligned masks (neuron i of both layers; "
                "indices are unrelated, so compare with next_layer_jaccard_chance); next_layer_pair_correlation "
                "is the Pearson correlation over random token pairs of their Jaccard in layer l and in l+1.",
                figures=[figs["similarity"]], tables=[table_html(tables["similarity"])]),
        Section("Hot-neuron concentration",
                f"Smallest fraction of a layer's neurons that accounts for {HOT_SHARE:.0%} of its activations "
                f"(PowerInfer: 26 % / 43 % / 69 % for OPT-30B / LLaMA2-ReGLU-70B / LLaMA2-SwiGLU-70B).",
                figures=[figs["concentration"]],
                tables=[table_html(tables["similarity"], ["layer", "density", "hot_fraction_80"])]),
    ]
    if tables["perturbation"]:
        sections.append(Section(
            "Perturbation match rate",
            "Match rate = mean Jaccard of the active sets at aligned positions (same window, same position) "
            "between the original trace and a trace of the same tokens with a fraction of ids replaced "
            "(tracing/perturb.py, same thresholds); also split into replaced and unchanged positions.",
            figures=[figs["perturbation"]], tables=[table_html(tables["perturbation"])]))
    return sections


def analyze(trace: str | os.PathLike | Trace, out_dir: str | os.PathLike,
            train: str | os.PathLike | Trace | None = None, predictors: Sequence[str] | None = None,
            perturbed: Sequence[str | os.PathLike | Trace] = (), precision: str = "fp16", lookahead: int = 1,
            seed: int = 0) -> dict[str, Any]:
    """Analyse ``trace``; write ``out_dir/report.html`` and the CSV tables; return tables, figures and paths."""
    from sparsesim.experiments.report import csv_text   # imports plotly: kept out of CLI start-up


    if precision not in BYTES_PER_WEIGHT:
        raise InputError(f"--precision {precision!r}: not one of {', '.join(BYTES_PER_WEIGHT)}")
    lookahead = SCENARIO_NUMBERS["lookahead"].check(lookahead, "--lookahead")
    seed = SEED.check(seed, "--seed")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: exists and is not a directory")
    trace = _load(trace, "analysed")
    train = _companion(_load(train, "training", stream=False) if train is not None else None, trace, "training")
    perturbed = [_companion(_load(p, "perturbed"), trace, "perturbed") for p in perturbed]
    specs = list(predictors) if predictors else default_predictors(trace, train)
    neuron_bytes = ModelFootprint.from_meta(trace.model, Scenario(precision=precision)).neuron_bytes
    context = PredictorContext.of(trace, train, seed)
    layer_rows: list[Row] = []
    summary: list[Row] = []
    for spec in tqdm(specs, desc="analyze", unit="predictor", disable=None, dynamic_ncols=True):
        rows = predictor_layer_rows(trace, spec, context, neuron_bytes, lookahead)
        layer_rows += rows
        summary.append(summary_row(rows, trace.n_tokens))
    tables = {"predictors": summary, "predictor_layers": layer_rows, "similarity": similarity_rows(trace, seed),
              "perturbation": perturbation_rows(trace, perturbed)}
    figs = figures(tables)
    out.mkdir(parents=True, exist_ok=True)
    paths = {name: str(write_text(out / f"{name}.csv", csv_text(rows))) for name, rows in tables.items() if rows}
    provenance = {"trace": str(trace.path), "trace_sha256": trace.sha256, "model": trace.model["name"],
                  "sparsity": trace.meta.get("sparsity", {}).get("target"), "tokens": trace.n_tokens,
                  "train_trace": None if train is None else str(train.path),
                  "train_trace_sha256": None if train is None else train.sha256,
                  "perturbed": [{"path": str(p.path), "sha256": p.sha256} for p in perturbed],
                  "predictors": specs, "lookahead": lookahead, "precision": precision, "seed": seed,
                  "sparsesim_version": __version__}
    paths["report"] = write_page(out / "report.html", f"Predictability of {Path(trace.path).name}",
                                 _sections(tables, figs, lookahead, precision), provenance)
    return {"tables": tables, "figures": figs, "paths": paths, "provenance": provenance}


# ---------------------------------------------------------------------------------------------
# CLI


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("analyze", help="predictability analysis of a trace: predictor accuracy, similarity, "
                                       "hot neurons, perturbation (offline HTML + CSV)",
                       description="Replay predictors causally over a trace and measure how similar its masks are "
                                   "(docs/predictors.md).")
    p.add_argument("trace", metavar="TRACE", help="trace .parquet file to analyse")
    p.add_argument("--train", metavar="TRACE",
                   help="training trace for the predictors that learn offline: the same model and thresholds on "
                        "other text, e.g. 'sparsesim trace --text OTHER.txt --thresholds th.json -o train.parquet' "
                        "with th.json saved by the analysed trace's --save-thresholds (README)")
    p.add_argument("--predictors", metavar="SPECS",
                   help=f"comma-separated predictor specs, e.g. 'previous-token,window:k=4,threshold=0.5' "
                        f"(default: {', '.join(BASE_PREDICTORS)}; with --train also {', '.join(TRAINED_PREDICTORS)}; "
                        f"and stored:name=X for each learned column)")
    p.add_argument("--perturbed", nargs="+", default=[], metavar="TRACE",
                   help="traces of the same windows with a fraction of token ids replaced (tracing/perturb.py)")
    p.add_argument("--precision", default="fp16", choices=tuple(BYTES_PER_WEIGHT),
                   help="weight precision for bytes fetched per token (default %(default)s)")
    p.add_argument("--lookahead", type=int, default=1, help="layers ahead predictions are issued (default 1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-o", "--out", required=True, metavar="DIR", help="output directory")
    p.set_defaults(func=_analyze)


def _analyze(args: argparse.Namespace) -> int:
    result = analyze(args.trace, args.out, train=args.train,
                     predictors=split_predictors(args.predictors) if args.predictors else None,
                     perturbed=args.perturbed, precision=args.precision, lookahead=args.lookahead, seed=args.seed)
    print(f"{'predictor':<34} {'precision':>9} {'worst':>6} {'recall':>7} {'worst':>6} {'MB/token':>9}")
    for r in result["tables"]["predictors"]:
        print(f"{r['predictor']:<34} {r['precision_mean']:>9.3f} {r['precision_worst']:>6.3f} "
              f"{r['recall_mean']:>7.3f} {r['recall_worst']:>6.3f} {r['fetch_bytes_per_token'] / 1e6:>9.3f}")
    tables = ", ".join(Path(p).name for k, p in result["paths"].items() if k != "report")
    print(f"wrote {result['paths']['report']} and {tables} beside it")
    return 0
