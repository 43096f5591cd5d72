"""Writing a trace: teacher-forced sparse forward passes over the evaluation windows.

Each window is one forward pass of the zero-enforced model; its masks are recorded in-graph,
packed for all layers at once and written as one Parquet row group. With perplexity on, the
same pass scores the sparse model and one dense pass more scores the dense model.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import platform
import sys
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from sparsesim.atomic import check_writable
from sparsesim.errors import InputError
from sparsesim.tracefile import TraceWriter, popcount_rows
from sparsesim.tracing.forward import batch_inputs, check_head, hidden_states, nll_sum, windows
from sparsesim.tracing.lowrank import HiddenCapture, LowRankPredictor, accuracy, check_rank, lowrank_meta, predict_lowrank, \
    train_lowrank
from sparsesim.tracing.expert_trace import trace_experts
from sparsesim.tracing.models import LoadedModel, load_model
from sparsesim.tracing.perplexity import CALIBRATION_PASSES, Perplexity, evaluate, progress_bar, resolve_window
from sparsesim.tracing.checks import (BUILTIN_MODELS, DEFAULT_CALIB_TOKENS, DEFAULT_MODEL, DEFAULT_TOKENS, EPOCHS,
                                      METHODS, PYDOC, SITES, check_choice, check_sparsity, check_span)
from sparsesim.tracing.sparsify import SparseFFN
from sparsesim.tracing.text import load_text, split_tokens, tokenize
from sparsesim.tracing.thresholds import Thresholds, calibrate, load_thresholds, topk_keep

LEARNED_EPOCHS = 20   # --learned-epochs default (sparsesim.tracing.lowrank.train_lowrank's)


def tool_versions() -> dict:
    import numpy
    import pyarrow
    import tokenizers
    import transformers

    from sparsesim import __version__

    return {"sparsesim": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "tokenizers": tokenizers.__version__, "numpy": numpy.__version__, "pyarrow": pyarrow.__version__,
            "python": platform.python_version()}


def trace_model(*, out: str | Path, model: str | LoadedModel = DEFAULT_MODEL, text: str = PYDOC,
                sparsity: float | None = None, method: str | None = None, site: str | None = None,
                tokens: int | None = DEFAULT_TOKENS, window: int | None = None,
                calib_tokens: int = DEFAULT_CALIB_TOKENS,
                thresholds: str | Path | None = None, save_thresholds: str | Path | None = None,
                ppl: bool = True, learned_rank: int | None = None, learned_epochs: int = LEARNED_EPOCHS) -> dict:
    """Trace ``model`` on ``text`` at ``sparsity`` into ``out``; returns the trace metadata.

    ``method``/``site`` default to percentile/intermediate; with ``thresholds`` (a saved JSON)
    they and ``sparsity`` come from the file and, if also given, must agree with it. ``model``
    may be an already loaded model (tests, notebooks).

    ``learned_rank`` r also trains a rank-r low-rank predictor per layer (``tracing/lowrank.py``)
    on the sparse model's calibration span (``learned_epochs`` epochs; layer l from layer l - 1's
    FFN input) and stores its predictions for the evaluation tokens as column ``pred:lowrank``,
    described by ``meta["learned"]["lowrank"]`` (replayed by predictor ``stored``).
    """
    config = {k: (v.name if isinstance(v, LoadedModel) else str(v) if isinstance(v, Path) else v)
              for k, v in locals().items()}
    out = check_writable(out)
    if save_thresholds is not None:
        check_writable(save_thresholds)
    for value, choices, flag in ((method, METHODS, "--method"), (site, SITES, "--site")):
        if value is not None:
            check_choice(value, choices, flag)
    if sparsity is not None:
        check_sparsity(sparsity)
    elif thresholds is None and model in BUILTIN_MODELS:
        raise InputError("--sparsity is required unless --thresholds gives saved thresholds")
    if learned_rank is not None:
        EPOCHS.check(learned_epochs, "--learned-epochs")
    check_span(tokens, window, calib_tokens)
    source = load_text(text)
    lm = model if isinstance(model, LoadedModel) else load_model(model)
    if lm.moe is not None:
        return _trace_experts(lm, out, source, tokens, window, ppl, config)
    if sparsity is None and thresholds is None:
        raise InputError("--sparsity is required unless --thresholds gives saved thresholds")
    if learned_rank is not None:   # before calibration: a bad rank fails at once
        check_rank(learned_rank, lm.info["d_model"])
        if len(lm.ffns) < 2:
            raise InputError(f"--learned-rank: model {lm.name} has one layer; the predictor for layer l reads "
                             f"layer l - 1's FFN input, so it needs at least two")
    window = resolve_window(lm, window)
    split = split_tokens(tokenize(lm.tokenizer, source), source, eval_tokens=tokens, calib_tokens=calib_tokens,
                         window=window)
    n_eval, calibrating = len(split.evaluation), thresholds is None
    with progress_bar("trace", (CALIBRATION_PASSES * len(split.calibration) if calibrating else 0)
                      + n_eval * (2 if ppl else 1)) as bar:
        if thresholds is not None:
            th = _saved_thresholds(thresholds, lm, sparsity, method, site, source.sha256, len(split.evaluation))
        else:
            bar.set_postfix_str("calibrating", refresh=True)
            th = calibrate(lm, split.calibration, window=window, method=method or "percentile",
                           site=site or "intermediate", target=sparsity,
                           text={**source.describe(), "start": split.calib_start})
            bar.update(CALIBRATION_PASSES * len(split.calibration))
        if save_thresholds is not None:
            th.save(save_thresholds)
        if ppl:
            check_head(lm)
        if learned_rank is not None:
            predictors, train_text = _train_predictors(lm, th, split.calibration, window, learned_rank, learned_epochs,
                                                       {**source.describe(), "start": split.calib_start})
        else:
            predictors = train_text = None

        meta = {
            "model": lm.info,
            "sparsity": _sparsity_meta(th, thresholds),
            "text": {
                "calibration": th.calibration,
                "evaluation": {**source.describe(), "tokens_total": split.total, "start": 0,
                               "tokens": len(split.evaluation), "window": window},
            },
            "perplexity": None,
            "tools": tool_versions(),
            "config": {**config, "argv": sys.argv},
            "created_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        }
        with TraceWriter(out, meta, extra=("lowrank",) if predictors else ()) as writer:
            bar.set_postfix_str("tracing", refresh=False)
            active, sparse, heldout = _write_windows(writer, lm, th, split.evaluation, window, score=ppl,
                                                     predictors=predictors, progress=bar)
            tokens_traced = len(split.evaluation)
            measured = [1.0 - a / (tokens_traced * f.d_ff) for a, f in zip(active, lm.ffns)]
            writer.meta["sparsity"].update(measured=measured, measured_mean=float(np.mean(measured)))
            if ppl:
                bar.set_postfix_str("dense perplexity", refresh=False)
                dense, _ = evaluate(lm, split.evaluation, window, progress=bar)
                writer.meta["perplexity"] = {"window": window, "tokens": tokens_traced, "dense": dense.ppl,
                                             "sparse": sparse.ppl, "dense_nll_per_token": dense.nll / dense.tokens,
                                             "sparse_nll_per_token": sparse.nll / sparse.tokens}
            if predictors:
                writer.meta["learned"] = {"lowrank": lowrank_meta(predictors[1:], input_offset=1, train_rows=None,
                                                                  train_text=train_text, heldout=heldout)}
            meta = writer.meta
        return meta


def _trace_experts(lm: LoadedModel, out: Path, source, tokens: int | None, window: int | None, ppl: bool,
                   config: dict) -> dict:
    """A mixture-of-experts model's trace records its router's choices: the neuron-sparsity flags do not apply."""
    given = [flag for flag, key in (("--sparsity", "sparsity"), ("--method", "method"), ("--site", "site"),
                                    ("--thresholds", "thresholds"), ("--save-thresholds", "save_thresholds"),
                                    ("--learned-rank", "learned_rank")) if config.get(key) is not None]
    if given:
        raise InputError(f"model {lm.name} is a mixture-of-experts model: its trace records the router's top-k per "
                         f"token and layer, so {', '.join(given)} (FFN neuron sparsity) do not apply")
    if ppl:
        check_head(lm)
    return trace_experts(lm, out, source, tokens, resolve_window(lm, window), ppl, config, tool_versions())


def _write_windows(writer: TraceWriter, lm: LoadedModel, th: Thresholds, ids: np.ndarray, window: int,
                   score: bool, predictors: list[LowRankPredictor | None] | None = None,
                   progress: tqdm | None = None) -> tuple[list[int], Perplexity | None, list[dict] | None]:
    """One forward pass and one row group per window; returns active counts per layer, sparse PPL and,
    with ``predictors``, their per-layer accuracy (layers 1..L-1) on these tokens."""
    active = np.zeros(len(lm.ffns), dtype=np.int64)
    nll = 0.0
    reports: list[list[dict]] = [[] for _ in lm.ffns]
    capture = HiddenCapture(lm.ffns) if predictors else contextlib.nullcontext()
    with SparseFFN(lm.ffns, th.site, th.rule(), record=True) as hooks, capture as cap:
        for w in windows(ids, window, lm.bos_id):
            hidden = hidden_states(lm, torch.from_numpy(w.inputs)[None])
            masks = hooks.take_packed()                     # [T, L, n_bytes]
            extra = None
            if predictors:
                extra = {"lowrank": _predict(predictors, cap.take(), masks, reports)}
            writer.write(np.full(len(w.inputs), w.index), np.arange(len(w.inputs)), w.inputs, masks, extra)
            active += popcount_rows(masks).sum(axis=0)
            if score:
                nll += nll_sum(lm, hidden, torch.from_numpy(w.targets)[None])
            if progress is not None:
                progress.update(len(w.inputs))
    heldout = [_pooled(r) for r in reports[1:]] if predictors else None
    return [int(a) for a in active], (Perplexity(nll, len(ids), window) if score else None), heldout



def _train_predictors(lm: LoadedModel, th: Thresholds, calib_ids: np.ndarray, window: int, rank: int, epochs: int,
                      text: dict) -> tuple[list[LowRankPredictor | None], dict]:
    """Per layer l >= 1, a low-rank predictor of layer l's mask from layer l - 1's FFN input (Deja Vu's
    input offset 1), trained on the sparse model's pass over the calibration span; index 0 is None.

    The span is fed as the equal windows that calibration uses; returns the models and a
    description of exactly the tokens they were trained on (disjoint from the evaluation span).
    """
    x, _ = batch_inputs(calib_ids, window, lm.bos_id)
    hidden: list[list[torch.Tensor]] = [[] for _ in lm.ffns]
    packs = []
    with SparseFFN(lm.ffns, th.site, th.rule(), record=True) as hooks, HiddenCapture(lm.ffns) as cap:
        for row in tqdm(x, desc="learned: calibration pass", unit="window", disable=None):
            hidden_states(lm, row[None])
            packs.append(hooks.take_packed().copy())        # the packed buffer may be reused
            for layer, h in enumerate(cap.take()):
                hidden[layer].append(h.cpu())
    packed = np.concatenate(packs)
    models: list[LowRankPredictor | None] = [None]
    for layer in tqdm(range(1, len(lm.ffns)), desc=f"learned: rank {rank}", unit="layer", disable=None):
        masks = np.unpackbits(packed[:, layer], axis=-1, bitorder="little", count=lm.ffns[layer].d_ff).astype(bool)
        models.append(train_lowrank(torch.cat(hidden[layer - 1]), torch.from_numpy(masks), rank, epochs, seed=layer))
    return models, {**text, "tokens": int(x.numel()), "window": int(x.shape[1])}


def _predict(models: list[LowRankPredictor | None], hidden: list[torch.Tensor], masks: np.ndarray,
             reports: list[list[dict]]) -> np.ndarray:
    """Packed predictions [T, L, n_bytes] like ``masks`` (layer 0 all zeros); appends each layer's accuracy."""
    pred = np.zeros_like(masks)
    for layer in range(1, len(models)):
        p = predict_lowrank(models[layer], hidden[layer - 1].cpu())
        d_ff = models[layer].d_ff
        truth = np.unpackbits(masks[:, layer], axis=-1, bitorder="little", count=d_ff).astype(bool)
        reports[layer].append(accuracy(p, torch.from_numpy(truth)))
        pred[:, layer, :(d_ff + 7) // 8] = np.packbits(p.numpy(), axis=-1, bitorder="little")
    return pred


def _pooled(reports: list[dict]) -> dict:
    """:func:`sparsesim.tracing.lowrank.accuracy` over all windows at once, from the per-window counters."""
    tokens, tp, fp, fn = (sum(r[k] for r in reports) for k in ("tokens", "tp", "fp", "fn"))
    return {"tokens": tokens, "tp": tp, "fp": fp, "fn": fn,
            "precision": tp / (tp + fp) if tp + fp else float("nan"),
            "recall": tp / (tp + fn) if tp + fn else float("nan"),
            "f1": 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else float("nan")}


def _saved_thresholds(path: str | Path, lm: LoadedModel, sparsity: float | None, method: str | None,
                      site: str | None, text_sha256: str, eval_tokens: int) -> Thresholds:
    th = load_thresholds(path, lm.info)
    for given, saved, flag in ((sparsity, th.target, "--sparsity"), (method, th.method, "--method"),
                               (site, th.site, "--site")):
        if given is not None and given != saved:
            raise InputError(f"{flag} {given} disagrees with --thresholds {path} ({saved})")
    cal = th.calibration
    # Same text: the saved calibration span must not overlap this run's evaluation span.
    if cal.get("sha256") == text_sha256 and int(cal.get("start", eval_tokens)) < eval_tokens:
        raise InputError(f"--thresholds {path}: calibrated on tokens from {cal.get('start')} of this text, which "
                         f"overlap the evaluation span [0, {eval_tokens})")
    return th


def _sparsity_meta(th: Thresholds, thresholds_file: str | Path | None) -> dict:
    meta = {"method": th.method, "site": th.site, "target": th.target, "layer_targets": th.layer_targets,
            "thresholds": th.thresholds, "natural": th.natural, "details": th.details,
            "thresholds_file": None if thresholds_file is None else str(thresholds_file)}
    if th.method == "topk":
        meta["topk_keep"] = topk_keep(th.d_ff, th.layer_targets)
    return meta
