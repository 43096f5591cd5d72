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
from sparsesim.tracing.models import DEFAULT_MODEL, LoadedModel, load_model
from sparsesim.tracing.sparsify import SparseFFN
from sparsesim.tracing.text import load_text, split_tokens, tokenize
from sparsesim.tracing.checks import METHODS, check_choice, check_sparsity
from sparsesim.tracing.thresholds import Thresholds, calibrate

DEFAULT_WINDOW = 2048
DEFAULT_TOKENS = 4096
DEFAULT_CALIB_TOKENS = 2048


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


def evaluate(lm: LoadedModel, ids: np.ndarray, window: int, sparsity: Thresholds | None = None,
             desc: str = "ppl") -> tuple[Perplexity, list[float] | None]:
    """Perplexity over ``ids``; with ``sparsity``, also the measured per-layer sparsity."""
    hooks = SparseFFN(lm.ffns, sparsity.site, sparsity.rule(), count=True) if sparsity else None
    nll = 0.0
    with hooks or contextlib.nullcontext():
        for w in tqdm(windows(ids, window, lm.bos_id), desc=desc, unit="win", disable=None, leave=False):
            hidden = hidden_states(lm, torch.from_numpy(w.inputs)[None])
            nll += nll_sum(lm, hidden, torch.from_numpy(w.targets)[None])
    measured = None
    if hooks:
        measured = [1.0 - float(a) / (hooks.tokens * f.d_ff) for a, f in zip(hooks.active, lm.ffns)]
    return Perplexity(nll, len(ids), window), measured


def parse_levels(text: str) -> list[float]:
    try:
        levels = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise InputError(f"--levels {text!r}: expected comma-separated numbers, e.g. 0,0.3,0.5") from None
    if not levels:
        raise InputError("--levels: no levels given")
    return sorted({check_sparsity(v, "--levels value") for v in levels})


def ppl_curve(*, model: str | LoadedModel = DEFAULT_MODEL, text: str = "pydoc", levels: list[float],
              window: int | None = None, methods: list[str] = ("percentile",), site: str = "intermediate",
              tokens: int | None = DEFAULT_TOKENS, calib_tokens: int = DEFAULT_CALIB_TOKENS,
              out: str | Path) -> list[dict]:
    """Sparsity-vs-perplexity sweep → ``out`` (CSV) and ``out`` with suffix .html (plotly, offline)."""
    out = check_writable(out)
    html = check_writable(out.with_suffix(".html"))
    methods = [check_choice(m, METHODS, "--method") for m in methods]
    levels = [check_sparsity(v, "--levels value") for v in levels]
    source = load_text(text)
    lm = model if isinstance(model, LoadedModel) else load_model(model)
    window = resolve_window(lm, window)
    split = split_tokens(tokenize(lm.tokenizer, source), source, eval_tokens=tokens, calib_tokens=calib_tokens,
                         window=window)
    check_head(lm)
    text_meta = {**source.describe(), "start": split.calib_start}
    dense, _ = evaluate(lm, split.evaluation, window, desc="dense")
    rows = []
    for method in methods:
        for level in levels:
            if level == 0:
                result, measured, chosen = dense, None, ""
            else:
                th = calibrate(lm, split.calibration, window=window, method=method, site=site, target=level,
                               text=text_meta)
                result, measured = evaluate(lm, split.evaluation, window, th, desc=f"{method} {level:g}")
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
