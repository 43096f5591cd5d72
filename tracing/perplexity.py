"""Perplexity of the dense and the sparse model, and the sparsity-vs-perplexity sweep.

Protocol: :mod:`sparsesim.tracing.forward` (non-overlapping windows of a stated length, each scored from
BOS; fp32 on CPU). The sweep calibrates each (method, level) on the calibration span and scores
the evaluation span; level 0 is the dense model (zero-enforcing at threshold 0 changes nothing).
"""

from __future__ import annotations

import contextlib
import csv
import io
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from sparsesim.atomic import check_writable, write_text
from sparsesim.errors import InputError
from sparsesim.tracing.forward import check_head, hidden_states, nll_sum, windows
from sparsesim.tracing.models import LoadedModel, load_model
from sparsesim.tracing.sparsify import SparseFFN
from sparsesim.tracing.text import load_text, split_tokens, tokenize
from sparsesim.tracing.checks import (DEFAULT_CALIB_TOKENS, DEFAULT_MODEL, DEFAULT_TOKENS, DEFAULT_WINDOW, METHODS,
                                      check_choice, check_sparsity, check_span)
from sparsesim.tracing.thresholds import Thresholds, calibrate

CALIBRATION_PASSES = 2   # forward passes over the calibration span (dense + in-graph thresholds): progress units


@dataclass(frozen=True)
class Perplexity:
    nll: float          # summed over tokens, nats
    tokens: int
    window: int

    @property
    def ppl(self) -> float:
        return math.exp(self.nll / self.tokens)


def resolve_window(lm: LoadedModel, window: int | None) -> int:
    """The window length: ``window`` or min(DEFAULT_WINDOW, the model's context)."""
    context = lm.max_positions
    if window is None:
        return min(DEFAULT_WINDOW, context) if context else DEFAULT_WINDOW
    if window < 2:
        raise InputError(f"--window {window}: must be at least 2 tokens")
    if context and window > context:
        raise InputError(f"--window {window}: longer than model {lm.name}'s context of {context} tokens")
    return window


def progress_bar(desc: str, total: int) -> tqdm:
    """One bar per command, counted in tokens passed through the model (so its ETA holds across stages);
    shown on a terminal only."""
    return tqdm(total=total, desc=desc, unit="tok", unit_scale=True, disable=None, dynamic_ncols=True, leave=False)


def evaluate(lm: LoadedModel, ids: np.ndarray, window: int, sparsity: Thresholds | None = None,
             progress: tqdm | None = None) -> tuple[Perplexity, list[float] | None]:
    """Perplexity over ``ids``; with ``sparsity``, also the measured per-layer sparsity. ``progress``
    advances by each window's tokens."""
    hooks = SparseFFN(lm.ffns, sparsity.site, sparsity.rule(), count=True) if sparsity else None
    nll = 0.0
    with hooks or contextlib.nullcontext():
        for w in windows(ids, window, lm.bos_id):
            hidden = hidden_states(lm, torch.from_numpy(w.inputs)[None])
            nll += nll_sum(lm, hidden, torch.from_numpy(w.targets)[None])
            if progress is not None:
                progress.update(len(w.inputs))
    measured = None
    if hooks:
        measured = [1.0 - float(a) / (hooks.tokens * f.d_ff) for a, f in zip(hooks.active, lm.ffns)]
    return Perplexity(nll, len(ids), window), measured


def ppl_curve(*, model: str | LoadedModel = DEFAULT_MODEL, text: str = "pydoc", levels: list[float],
              window: int | None = None, methods: list[str] = ("percentile",), site: str = "intermediate",
              tokens: int | None = DEFAULT_TOKENS, calib_tokens: int = DEFAULT_CALIB_TOKENS,
              out: str | Path) -> list[dict]:
    """Sparsity-vs-perplexity sweep → ``out`` (CSV) and ``out`` with suffix .html (plotly, offline)."""
    out = check_writable(out)
    html = check_writable(out.with_suffix(".html"))
    methods = [check_choice(m, METHODS, "--method") for m in methods]
    levels = [check_sparsity(v, "--levels value") for v in levels]
    check_span(tokens, window, calib_tokens)
    source = load_text(text)
    lm = model if isinstance(model, LoadedModel) else load_model(model)
    window = resolve_window(lm, window)
    split = split_tokens(tokenize(lm.tokenizer, source), source, eval_tokens=tokens, calib_tokens=calib_tokens,
                         window=window)
    check_head(lm)
    text_meta = {**source.describe(), "start": split.calib_start}
    sparse_levels = len(methods) * sum(1 for level in levels if level > 0)
    n_eval, n_calib = len(split.evaluation), len(split.calibration)
    with progress_bar("ppl", n_eval + sparse_levels * (CALIBRATION_PASSES * n_calib + n_eval)) as bar:
        dense, _ = evaluate(lm, split.evaluation, window, progress=bar)
        rows = []
        for method in methods:
            for level in levels:
                if level == 0:
                    result, measured, chosen = dense, None, ""
                else:
                    bar.set_postfix_str(f"{method} {level:g}", refresh=False)
                    th = calibrate(lm, split.calibration, window=window, method=method, site=site, target=level,
                                   text=text_meta)
                    bar.update(CALIBRATION_PASSES * n_calib)
                    result, measured = evaluate(lm, split.evaluation, window, th, progress=bar)
                    chosen = th.details.get("chosen", "")
                rows.append({
                    "model": lm.name, "text": source.name, "text_sha256": source.sha256, "window": window,
                    "eval_tokens": result.tokens, "calib_tokens": len(split.calibration), "method": method,
                    "site": site, "target_sparsity": level,
                    "measured_sparsity": float(np.mean(measured)) if measured else 0.0,
                    "ppl": result.ppl, "nll_per_token": result.nll / result.tokens,
                    "ppl_increase_pct": 100.0 * (result.ppl / dense.ppl - 1.0), "global_choice": chosen,
                })
    write_text(out, _csv(rows))
    write_text(html, _plot_html(rows))
    return rows


def _csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def _plot_html(rows: list[dict]) -> str:
    import plotly.graph_objects as go

    fig = go.Figure()
    for method in dict.fromkeys(r["method"] for r in rows):
        mine = [r for r in rows if r["method"] == method]
        fig.add_trace(go.Scatter(x=[100 * r["target_sparsity"] for r in mine], y=[r["ppl"] for r in mine],
                                 mode="lines+markers", name=method,
                                 customdata=[100 * r["measured_sparsity"] for r in mine],
                                 hovertemplate="target %{x:.0f}%<br>measured %{customdata:.1f}%<br>PPL %{y:.2f}"))
    r0 = rows[0]
    fig.update_layout(
        title=f"{r0['model']}: sparsity vs perplexity — {Path(r0['text']).name}, {r0['eval_tokens']} tokens, "
              f"window {r0['window']}, site {r0['site']}",
        xaxis_title="FFN activation sparsity target (%)", yaxis_title="perplexity", template="plotly_white")
    return fig.to_html(include_plotlyjs=True, full_html=True)
