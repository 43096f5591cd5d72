"""Writing an expert trace: the router's top-k per token and layer over teacher-forced text windows.

The model runs unchanged (routing is the model's own sparsity, nothing is thresholded); a
:class:`~sparsesim.tracing.moe.RouteRecorder` on every expert bank records which experts each token
runs and their router weights. Each window is one forward pass and one Parquet row group. The
rows carry no phase: teacher forcing stands in for decoding, one token per step (docs/moe.md).

Where the model's MoE blocks are called as ``block(hidden_states)`` the trace also stores the
**router-ahead** prediction (:class:`~sparsesim.tracing.moe.RouterAhead`) as column
``pred:router-ahead``, replayed by the simulator's ``stored:name=router-ahead`` predictor.
"""

from __future__ import annotations

import datetime as dt
import sys
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from sparsesim.atomic import check_writable
from sparsesim.errors import InputError
from sparsesim.tracecolumns import column_types
from sparsesim.tracefile import TraceWriter
from sparsesim.tracing.forward import hidden_states, nll_sum, windows
from sparsesim.tracing.models import LoadedModel
from sparsesim.tracing.moe import RouteRecorder, RouterAhead, units_of
from sparsesim.tracing.text import TextSource, tokenize
from sparsesim.traceunits import expert_masks


def trace_experts(lm: LoadedModel, out: str | Path, source: TextSource, tokens: int | None, window: int,
                  ppl: bool, config: dict, tools: dict) -> dict:
    """Trace ``lm`` (a mixture-of-experts model) on the first ``tokens`` tokens of ``source``."""
    out = check_writable(out)
    all_ids = tokenize(lm.tokenizer, source)
    n = len(all_ids) if tokens is None else tokens
    if n < 1 or n > len(all_ids):
        raise InputError(f"--tokens {tokens}: the text {source.name} has {len(all_ids)} tokens")
    ids = all_ids[:n]
    top_k = lm.info["top_k"]
    units = units_of(lm.moe, top_k)
    meta = {
        "model": lm.info,
        "units": units.to_meta(),
        "text": {"evaluation": {**source.describe(), "tokens_total": len(all_ids),
                                "start": 0, "tokens": n, "window": window}},
        "perplexity": None,
        "tools": tools,
        "config": {**config, "argv": sys.argv},
        "created_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    width = max(top_k)
    nll = 0.0
    ahead = RouterAhead(lm.moe)
    extra = (ROUTER_AHEAD,) if ahead.available else ()
    if ahead.available:
        n_experts = max(units.count)
        meta["learned"] = {ROUTER_AHEAD: {
            "method": "router-ahead: layer l's router applied to the hidden state entering layer l-1's MoE block",
            "train_rows": None, "input_offset": 1, "flops_per_layer": 2.0 * lm.info["d_model"] * n_experts,
            "layers": [cur.layer for _, cur in ahead.pairs]}}
    with TraceWriter(out, meta, extra=extra, columns=column_types(("route", "route_weight"), width)) as writer, \
            RouteRecorder(lm.moe) as recorder, ahead, \
            tqdm(total=n, desc="trace experts", unit="tok", disable=None) as bar:
        for w in windows(ids, window, lm.bos_id):
            hidden = hidden_states(lm, torch.from_numpy(w.inputs)[None])
            route, weight = recorder.take(width)
            predicted = {ROUTER_AHEAD: _routed_masks(ahead.take(units.n_layers, width), units.mask_bytes)} \
                if ahead.available else None
            writer.write(np.full(len(w.inputs), w.index), np.arange(len(w.inputs)), w.inputs,
                         expert_masks(units, route.astype(np.int64)), extra=predicted,
                         columns={"route": route, "route_weight": weight})
            if ppl:
                nll += nll_sum(lm, hidden, torch.from_numpy(w.targets)[None])
            bar.update(len(w.inputs))
        if ppl:
            # The routed model is the only model: no zero-enforcing, so dense and sparse are the same number.
            value = float(np.exp(nll / n))
            writer.meta["perplexity"] = {"window": window, "tokens": n, "dense": value, "sparse": value,
                                         "dense_nll_per_token": nll / n, "sparse_nll_per_token": nll / n}
        meta = writer.meta
    return meta


ROUTER_AHEAD = "router-ahead"


def _routed_masks(route: np.ndarray, n_bytes: int) -> np.ndarray:
    """Packed masks of routed ids [T, L, k] (-1: none), routed units only (a prediction names no shared unit)."""
    t, n_layers, _ = route.shape
    bits = np.zeros((t, n_layers, n_bytes * 8), dtype=bool)
    tok, layer, slot = np.nonzero(route >= 0)
    bits[tok, layer, route[tok, layer, slot]] = True
    return np.packbits(bits, axis=-1, bitorder="little")
