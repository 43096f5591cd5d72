"""Shared pieces of the predictors: what is visible at issue time, and scores -> a packed mask.

Many predictors produce a *score* per neuron (an estimated probability of being active) and turn
it into a set either with a confidence ``threshold`` (score >= threshold) or a fixed ``topk``
(the k highest scores). Raising the threshold or lowering k trades recall for precision.

Visibility follows :class:`~sparsesim.simulator.predictors.CausalView`: at issue step ``frontier`` the mask
of (token, layer) is visible when ``token * L + layer < frontier``. The helpers below compute the
most recent visible mask so that a predictor never has to probe (and trip) the view.
"""

from __future__ import annotations

import numpy as np

from sparsesim.simulator import bitset
from sparsesim.simulator.predictors import CausalView, Predictor


def latest_token(view: CausalView, token: int, layer: int) -> int:
    """The most recent token before ``token`` whose mask of ``layer`` is visible, or -1."""
    return min(token - 1, (view.frontier - 1 - layer) // view.n_layers)


def latest_layer(view: CausalView, token: int, layer: int) -> int:
    """The deepest layer before ``layer`` of ``token`` itself that is visible, or -1."""
    return min(layer - 1, view.frontier - 1 - token * view.n_layers)


def unpack_rows(packed: np.ndarray, d_ff: int) -> np.ndarray:
    """Packed rows [..., n_bytes] -> 0/1 uint8 [..., d_ff]."""
    return np.unpackbits(packed, axis=-1, bitorder="little", count=d_ff)


class ScoredPredictor(Predictor):
    """A predictor that scores neurons; ``threshold`` or ``topk`` (not both) chooses the set.

    Subclasses set ``default_threshold`` (used when neither is given) and call :meth:`select`.
    """

    default_threshold = 0.5

    def __init__(self, threshold: float | None = None, topk: int | None = None):
        if threshold is not None and topk is not None:
            raise ValueError("give either threshold or topk, not both")
        if threshold is not None and not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must be in [0, 1], got {threshold}")
        if topk is not None and (isinstance(topk, bool) or not isinstance(topk, int) or topk < 0):
            raise ValueError(f"topk must be an integer >= 0, got {topk}")
        self.threshold = threshold
        self.topk = topk

    def select(self, scores: np.ndarray, layer: int) -> np.ndarray:
        """Packed set from per-neuron ``scores`` [>= d_ff] of ``layer`` (extra entries ignored)."""
        threshold = self.default_threshold if self.threshold is None else self.threshold
        return choose(scores, self.context.d_ff[layer], self.context.n_bytes, threshold, self.topk)


def choose(scores: np.ndarray, d_ff: int, n_bytes: int, threshold: float, topk: int | None) -> np.ndarray:
    """The ``topk`` highest of the first ``d_ff`` scores if given, else those >= ``threshold``; packed."""
    scores = scores[:d_ff]
    if topk is None:
        return bitset.from_bool(scores >= threshold, n_bytes)
    bits = np.zeros(d_ff, dtype=bool)
    k = min(topk, d_ff)
    if k:
        bits[np.argpartition(-scores, k - 1)[:k]] = True
    return bitset.from_bool(bits, n_bytes)
