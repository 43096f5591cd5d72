"""Synthetic traces for model shapes we cannot run here (7B, 70B) and for published setups.

Each neuron i of layer l follows a "sticky" two-state Markov chain: with probability ``c`` it
keeps its previous state, otherwise it draws a fresh Bernoulli(pi_i). Its stationary activity is
``pi_i`` and its persistence ``P(active_t | active_t-1) = c + (1 - c) pi_i``. The base rates
``pi`` have mean ``active`` and a Zipf-like skew ``pi_i ∝ rank_i ** -hot_skew`` (hot neurons,
scattered over the layer by a seeded permutation). ``persistence`` is the measured quantity
``sum |m_t & m_t-1| / sum |m_t-1|``; the copy probability ``c`` is solved from it.

``like`` takes per-layer activity, persistence and the sorted per-neuron frequency profile from
a real trace (resampled to the target d_ff). Synthetic traces say so in their metadata
(``kind: synthetic``) with every generator parameter and the seed.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
from tqdm import tqdm

from sparsesim import __version__
from sparsesim.simulator.bitset import frequency
from sparsesim.errors import InputError
from sparsesim.limits import SYNTH_BYTES, SYNTH_NEURONS
from sparsesim.numbers import PROBABILITY, SEED, Number
from sparsesim.tracefile import MAX_D_FF, MAX_LAYERS, MAX_TOKENS, Trace, TraceWriter, mask_bytes, read_trace

# name: (layers, d_model, d_ff, glu, vocab, attention params per layer, tied head, positions)
SHAPES: dict[str, tuple[int, int, int, bool, int, int, bool, int]] = {
    "opt-6.7b": (32, 4096, 16384, False, 50272, 4 * 4096 * 4096, True, 2048),
    "opt-350m": (24, 1024, 4096, False, 50272, 4 * 1024 * 1024, True, 2048),
    "llama-2-7b": (32, 4096, 11008, True, 32000, 4 * 4096 * 4096, False, 0),
    "llama-2-13b": (40, 5120, 13824, True, 32000, 4 * 5120 * 5120, False, 0),
    "llama-2-70b": (80, 8192, 28672, True, 32000, 2 * 8192 * 8192 + 2 * 8192 * 1024, False, 0),
    "mistral-7b": (32, 4096, 14336, True, 32000, 2 * 4096 * 4096 + 2 * 4096 * 1024, False, 0),
    "falcon-7b": (32, 4544, 18176, False, 65024, 4544 * 4544 + 4544 * 4672, True, 0),
}


def shape_model(name: str, layers: int, d_model: int, d_ff: int, glu: bool, vocab: int,
                attention_per_layer: int, tied: bool, positions: int) -> dict[str, Any]:
    embedding = vocab * d_model + positions * d_model
    head = vocab * d_model
    attention = layers * attention_per_layer
    return {
        "name": name, "architecture": "synthetic", "n_layers": layers, "d_model": d_model,
        "d_ff": [d_ff] * layers, "glu": glu, "activation": "synthetic",
        "ffn_params": layers * d_ff * d_model * (3 if glu else 2),
        "attention_params": attention, "embedding_params": embedding, "lm_head_params": head,
        "non_ffn_params": attention + embedding + (0 if tied else head), "vocab_size": vocab,
    }


def _base_rates(rng: np.random.Generator, d_ff: int, active: float, hot_skew: float) -> np.ndarray:
    weights = np.arange(1, d_ff + 1, dtype=float) ** -hot_skew
    pi = weights / weights.mean() * active
    for _ in range(50):  # redistribute mass clipped at 1 so the mean stays `active`
        over = pi > 1.0
        if not over.any():
            break
        excess = (pi[over] - 1.0).sum()
        pi[over] = 1.0
        free = ~over
        pi[free] += excess * pi[free] / pi[free].sum()
    return rng.permutation(np.minimum(pi, 1.0))


def _copy_probability(pi: np.ndarray, persistence: float, measured: bool = False) -> float:
    """Solve c in P = c + (1 - c) * E[pi^2] / E[pi] (activity-weighted persistence).

    A measured persistence below the floor (real activity can be anti-persistent) gives c = 0,
    the least persistent this model gets; a requested one is refused.
    """
    floor = float((pi ** 2).sum() / pi.sum())
    if measured and persistence < floor:
        return 0.0
    if persistence < floor - 1e-9:
        raise InputError(f"--persistence {persistence}: below the floor {floor:.4f} that independent tokens "
                         f"with this activity and skew already give")
    return 0.0 if floor >= 1 else (persistence - floor) / (1 - floor)


def fit_hot_skew(frequency: np.ndarray) -> float:
    """The ``hot_skew`` whose Zipf base rates, at the same mean activity, have the same
    activity-weighted rate E[pi^2] / E[pi] as the measured per-neuron ``frequency``.

    That moment is the persistence floor (P(active at t | active at t-j) for large j), which is
    what a window of past tokens can exploit beyond the one-step persistence. Bisection: the
    moment grows monotonically with the exponent.
    """
    frequency = np.asarray(frequency, dtype=float)
    active = float(frequency.mean())
    if not 0 < active < 1:
        return 0.0
    target = float((frequency ** 2).sum() / frequency.sum())
    rng = np.random.default_rng(0)   # the permutation does not change the moment

    def floor(skew: float) -> float:
        pi = _base_rates(rng, frequency.size, active, skew)
        return float((pi ** 2).sum() / pi.sum())

    low, high = 0.0, 8.0
    if target <= floor(low):
        return 0.0
    for _ in range(40):
        mid = (low + high) / 2
        low, high = (mid, high) if floor(mid) < target else (low, mid)
    return (low + high) / 2


def measure(trace: Trace) -> dict[str, Any]:
    """Per-layer activity, persistence, sorted neuron frequency and equivalent ``hot_skew``
    (:func:`fit_hot_skew`) of a (real) trace."""

    T, L, _ = trace.masks.shape
    activity, persistence, profiles = [], [], []
    for l, d in enumerate(trace.d_ff):
        m = trace.masks[:, l]
        prev, cur = m[:-1], m[1:]
        both = np.bitwise_count(prev & cur).sum()
        persistence.append(float(both / max(np.bitwise_count(prev).sum(), 1)))
        activity.append(float(trace.active[:, l].mean() / d))
        profiles.append(np.sort(frequency(m)[:d] / T)[::-1])
    return {"activity": activity, "persistence": persistence, "frequency": profiles,
            "hot_skew": [fit_hot_skew(f) for f in profiles]}


def _resample(profile: np.ndarray, d_ff: int) -> np.ndarray:
    x = np.linspace(0, 1, len(profile))
    return np.interp(np.linspace(0, 1, d_ff), x, profile)


def synthesize(out: str | os.PathLike, *, shape: str | None = None, layers: int | None = None,
               d_model: int | None = None, d_ff: int | None = None, glu: bool = True, tokens: int = 256,
               active: float = 0.1, persistence: float | None = None, hot_skew: float = 0.0,
               like: str | os.PathLike | None = None, seed: int = 0, progress: bool = True) -> str:
    """Write a synthetic trace to ``out`` and return its path (see the module docstring)."""
    tokens = Number(minimum=1, maximum=MAX_TOKENS, integer=True).check(tokens, "--tokens")
    active = Number(minimum=0, maximum=1).check(active, "--active")
    if not 0 < active < 1:
        raise InputError(f"--active must be in (0, 1), got {active}")
    if persistence is not None:
        persistence = PROBABILITY.check(persistence, "--persistence")
    hot_skew = Number(minimum=0, maximum=64).check(hot_skew, "--hot-skew")   # 64: rank 2 already gets 2^-64
    seed = SEED.check(seed, "--seed")
    for flag, value, most in (("--layers", layers, MAX_LAYERS), ("--d-model", d_model, 1 << 20),
                              ("--d-ff", d_ff, MAX_D_FF)):
        if value is not None:
            Number(minimum=1, maximum=most, integer=True).check(value, flag)
    ref = read_trace(like) if like else None
    if ref is not None and ref.n_tokens < 2:
        raise InputError(f"{ref.path}: --like needs a trace with at least 2 tokens, it has {ref.n_tokens}")
    if shape:
        if shape not in SHAPES:
            raise InputError(f"--shape {shape!r}: unknown; known shapes: {', '.join(SHAPES)}")
        model = shape_model(shape, *SHAPES[shape])
    elif ref is not None and layers is None:
        model = dict(ref.model)
        model["name"] = f"synthetic-like-{ref.model['name']}"
    else:
        if not (layers and d_model and d_ff):
            raise InputError("synth: give --shape, --like, or all of --layers, --d-model and --d-ff")
        model = shape_model(f"custom-{layers}x{d_ff}", layers, d_model, d_ff, glu, 32000,
                            4 * d_model * d_model, False, 0)
    rng = np.random.default_rng(seed)
    L, widths = int(model["n_layers"]), [int(x) for x in model["d_ff"]]
    SYNTH_NEURONS.check(L * max(widths), f"{out}")
    SYNTH_BYTES.check(tokens * L * mask_bytes(widths), f"{out}")
    measured = measure(ref) if ref is not None else None
    pis, copies = [], []
    for l, d in enumerate(widths):
        if measured is not None:
            src = l * len(measured["frequency"]) // L
            pi = rng.permutation(_resample(measured["frequency"][src], d))
            target = measured["persistence"][src] if persistence is None else persistence
        else:
            pi = _base_rates(rng, d, active, hot_skew)
            target = persistence
        pis.append(pi)
        copies.append(0.0 if target is None else
                      _copy_probability(pi, target, measured=measured is not None and persistence is None))
    nb = mask_bytes(widths)
    width = max(widths)
    pi = np.zeros((L, width))
    for l, p in enumerate(pis):
        pi[l, :len(p)] = p
    copy = np.array(copies)[:, None]
    state = rng.random((L, width)) < pi
    meta = {
        "kind": "synthetic",
        "model": model,
        "synthetic": {"shape": shape, "tokens": tokens, "active": None if ref is not None else active,
                      "persistence": persistence, "hot_skew": hot_skew, "seed": seed,
                      "copy_probability": copies, "like": None if ref is None else
                      {"path": str(ref.path), "sha256": ref.sha256}},
        "tool": {"sparsesim": __version__},
    }
    block = 64
    with TraceWriter(out, meta) as writer:
        # disable=None: a progress bar on a terminal only, not in logs and pipes.
        for start in tqdm(range(0, tokens, block), desc="synth", unit="blk", disable=None if progress else True):
            n = min(block, tokens - start)
            masks = np.empty((n, L, nb), dtype=np.uint8)
            for i in range(n):
                keep = rng.random((L, width)) < copy
                fresh = rng.random((L, width)) < pi
                state = np.where(keep, state, fresh)
                masks[i] = np.packbits(state, axis=1, bitorder="little")[:, :nb]
            pos = np.arange(start, start + n)
            writer.write(np.zeros(n, np.int32), pos, rng.integers(0, model.get("vocab_size", 32000), n), masks)
    return str(out)
