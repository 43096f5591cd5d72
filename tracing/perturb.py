"""Perturbation traces: the seed paper's similarity study (Dhar et al. 2024, Sec. V, Table II) made precise.

The seed paper edits 5-30 % of a text and compares layer activation patterns with the original's
("match rate", never defined there). Here: take a trace's own input windows, replace a given
fraction of their token ids, and trace them again with the *same* thresholds and site, so the
two traces align position by position. ``sparsesim analyze TRACE --perturbed P1 P2 ...`` then
reports the match rate = mean Jaccard of the active sets at aligned positions, per layer
(``docs/predictors.md``).
"""

from __future__ import annotations

import copy
import datetime as dt
from pathlib import Path

import numpy as np
import torch

from sparsesim.errors import InputError
from sparsesim.numbers import SEED
from sparsesim.tracefile import TraceWriter, popcount_rows, read_trace
from sparsesim.tracing.forward import hidden_states
from sparsesim.tracing.models import LoadedModel, load_model
from sparsesim.tracing.sparsify import SparseFFN
from sparsesim.tracing.thresholds import Thresholds


def perturb_ids(ids: np.ndarray, fraction: float, seed: int = 0,
                protect: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Replace ``round(fraction * n)`` of the n unprotected positions with another id.

    Positions are chosen uniformly without replacement; each replacement is drawn uniformly from
    the distinct ids of the unprotected positions themselves (ordinary tokens of the same text,
    not unused vocabulary entries), never the original id. Returns (new ids, replaced mask).
    """
    if not 0.0 <= fraction <= 1.0:
        raise InputError(f"perturbation fraction {fraction}: must be in [0, 1]")
    seed = SEED.check(seed, "--seed")
    ids = np.asarray(ids)
    free = np.flatnonzero(~protect) if protect is not None else np.arange(len(ids))
    pool = np.unique(ids[free])
    n = int(round(fraction * len(free)))
    if n and len(pool) < 2:
        raise InputError("perturbation: the text has fewer than two distinct tokens to swap between")
    rng = np.random.default_rng(seed)
    chosen = rng.choice(free, size=n, replace=False)
    # Draw from the pool minus the original: index into the pool with the original's slot skipped.
    slot = np.searchsorted(pool, ids[chosen])
    draw = rng.integers(0, len(pool) - 1, size=n) if n else np.zeros(0, dtype=np.int64)
    out = ids.copy()
    out[chosen] = pool[draw + (draw >= slot)]
    replaced = np.zeros(len(ids), dtype=bool)
    replaced[chosen] = True
    return out, replaced


def thresholds_of(meta: dict) -> Thresholds:
    """The thresholds a trace was made with, from its metadata."""
    s = meta["sparsity"]
    return Thresholds(method=s["method"], site=s["site"], target=s["target"], layer_targets=s["layer_targets"],
                      thresholds=s["thresholds"], model=meta["model"]["name"], d_ff=meta["model"]["d_ff"],
                      calibration=meta["text"]["calibration"], natural=s.get("natural", []),
                      details=s.get("details", {}))


def trace_perturbed(base: str | Path, out: str | Path, fraction: float, *, seed: int = 0,
                    model: str | LoadedModel | None = None) -> dict:
    """Trace ``base``'s windows again with ``fraction`` of the token ids replaced; returns the new metadata.

    Each window's first position (BOS) is kept. ``model`` defaults to the base trace's model
    name; it must have the base trace's shape. The output has the same (seq, pos) rows as the
    base, the perturbed ids in ``token`` and ``meta["perturbation"]`` describing the change.
    """
    base_trace = read_trace(base)
    if base_trace.n_tokens == 0:
        raise InputError(f"{base}: trace has no tokens to perturb")
    if "sparsity" not in base_trace.meta or "text" not in base_trace.meta:
        raise InputError(f"{base}: not a traced model run (no sparsity/text metadata); cannot reproduce its thresholds")
    lm = model if isinstance(model, LoadedModel) else load_model(model or base_trace.model["name"])
    if lm.info["n_layers"] != base_trace.n_layers or lm.info["d_ff"] != base_trace.d_ff:
        raise InputError(f"model {lm.name} ({lm.info['n_layers']} layers, d_ff {lm.info['d_ff'][0]}) does not match "
                         f"{base} ({base_trace.n_layers} layers, d_ff {base_trace.d_ff[0]})")
    th = thresholds_of(base_trace.meta)
    ids, replaced = perturb_ids(base_trace.token, fraction, seed, protect=base_trace.pos == 0)
    meta = copy.deepcopy(base_trace.meta)
    meta.pop("format_version", None)
    meta.pop("learned", None)   # the base's pred:<name> columns are not re-traced
    meta.update(perplexity=None, created_utc=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"))
    meta["perturbation"] = {"base": str(base), "base_sha256": base_trace.sha256, "fraction": fraction, "seed": seed,
                            "replaced_tokens": int(replaced.sum()),
                            "rule": "uniform positions except each window's first; replacement ids drawn uniformly "
                                    "from the base trace's own distinct ids, never the original"}
    active = np.zeros(base_trace.n_layers, dtype=np.int64)
    with TraceWriter(out, meta) as writer, SparseFFN(lm.ffns, th.site, th.rule(), record=True) as hooks:
        for seq in np.unique(base_trace.seq):
            rows = np.flatnonzero(base_trace.seq == seq)
            hidden_states(lm, torch.from_numpy(ids[rows].astype(np.int64))[None])
            masks = hooks.take_packed()
            writer.write(base_trace.seq[rows], base_trace.pos[rows], ids[rows], masks)
            active += popcount_rows(masks).sum(axis=0)
        # this trace's own sparsity, not the base's copied above
        measured = [1.0 - int(a) / (base_trace.n_tokens * d) for a, d in zip(active, base_trace.d_ff)]
        writer.meta["sparsity"].update(measured=measured, measured_mean=float(np.mean(measured)))
        meta = writer.meta
    return meta
