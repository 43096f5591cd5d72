"""Writing a trace: teacher-forced sparse forward passes over the evaluation windows.

Each window is one forward pass of the zero-enforced model; its masks are recorded in-graph,
packed for all layers at once and written as one Parquet row group. With perplexity on, the
same pass scores the sparse model and one dense pass more scores the dense model.
"""

from __future__ import annotations

import datetime as dt
import platform
import sys
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from simulator.atomic import check_writable
from simulator.errors import InputError
from simulator.tracefile import TraceWriter, popcount_rows
from tracing.forward import check_head, hidden_states, nll_sum, windows
from tracing.models import DEFAULT_MODEL, LoadedModel, load_model
from tracing.perplexity import DEFAULT_CALIB_TOKENS, DEFAULT_TOKENS, Perplexity, evaluate, resolve_window
from tracing.checks import METHODS, SITES, check_choice, check_sparsity
from tracing.sparsify import SparseFFN
from tracing.text import load_text, split_tokens, tokenize
from tracing.thresholds import Thresholds, calibrate, load_thresholds, topk_keep


def tool_versions() -> dict:
    import numpy
    import pyarrow
    import tokenizers
    import transformers

    from simulator import __version__

    return {"sparsesim": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "tokenizers": tokenizers.__version__, "numpy": numpy.__version__, "pyarrow": pyarrow.__version__,
            "python": platform.python_version()}


def trace_model(*, out: str | Path, model: str | LoadedModel = DEFAULT_MODEL, text: str = "pydoc",
                sparsity: float | None = None, method: str | None = None, site: str | None = None,
                tokens: int | None = DEFAULT_TOKENS, window: int | None = None,
                calib_tokens: int = DEFAULT_CALIB_TOKENS,
                thresholds: str | Path | None = None, save_thresholds: str | Path | None = None,
                ppl: bool = True) -> dict:
    """Trace ``model`` on ``text`` at ``sparsity`` into ``out``; returns the trace metadata.

    ``method``/``site`` default to percentile/intermediate; with ``thresholds`` (a saved JSON)
    they and ``sparsity`` come from the file and, if also given, must agree with it. ``model``
    may be an already loaded model (tests, notebooks).
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
    elif thresholds is None:
        raise InputError("--sparsity is required unless --thresholds gives saved thresholds")
    source = load_text(text)
    lm = model if isinstance(model, LoadedModel) else load_model(model)
    window = resolve_window(lm, window)
    split = split_tokens(tokenize(lm.tokenizer, source), source, eval_tokens=tokens, calib_tokens=calib_tokens,
                         window=window)
    if thresholds is not None:
        th = _saved_thresholds(thresholds, lm, sparsity, method, site, source.sha256, len(split.evaluation))
    else:
        th = calibrate(lm, split.calibration, window=window, method=method or "percentile",
                       site=site or "intermediate", target=sparsity,
                       text={**source.describe(), "start": split.calib_start})
    if save_thresholds is not None:
        th.save(save_thresholds)
    if ppl:
        check_head(lm)

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
    with TraceWriter(out, meta) as writer:
        active, sparse = _write_windows(writer, lm, th, split.evaluation, window, score=ppl)
        tokens_traced = len(split.evaluation)
        measured = [1.0 - a / (tokens_traced * f.d_ff) for a, f in zip(active, lm.ffns)]
        writer.meta["sparsity"].update(measured=measured, measured_mean=float(np.mean(measured)))
        if ppl:
            dense, _ = evaluate(lm, split.evaluation, window, desc="dense ppl")
            writer.meta["perplexity"] = {"window": window, "tokens": tokens_traced, "dense": dense.ppl,
                                         "sparse": sparse.ppl, "dense_nll_per_token": dense.nll / dense.tokens,
                                         "sparse_nll_per_token": sparse.nll / sparse.tokens}
        meta = writer.meta
    return meta


def _write_windows(writer: TraceWriter, lm: LoadedModel, th: Thresholds, ids: np.ndarray, window: int,
                   score: bool) -> tuple[list[int], Perplexity | None]:
    """One forward pass and one row group per window; returns active counts per layer and sparse PPL."""
    active = np.zeros(len(lm.ffns), dtype=np.int64)
    nll = 0.0
    with SparseFFN(lm.ffns, th.site, th.rule(), record=True) as hooks, \
            tqdm(total=len(ids), desc="trace", unit="tok", disable=None) as bar:
        for w in windows(ids, window, lm.bos_id):
            hidden = hidden_states(lm, torch.from_numpy(w.inputs)[None])
            masks = hooks.take_packed()                     # [T, L, n_bytes]
            writer.write(np.full(len(w.inputs), w.index), np.arange(len(w.inputs)), w.inputs, masks)
            active += popcount_rows(masks).sum(axis=0)
            if score:
                nll += nll_sum(lm, hidden, torch.from_numpy(w.targets)[None])
            bar.update(len(w.inputs))
    return [int(a) for a in active], (Perplexity(nll, len(ids), window) if score else None)


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
