"""Recency predictors: the next token uses (mostly) the neurons the last tokens used."""

from __future__ import annotations

import numpy as np

from sparsesim.simulator.predictors import PREDICTORS, CausalView, Predictor
from sparsesim.simulator.predictors.scored import ScoredPredictor, latest_token, unpack_rows


@PREDICTORS.register("previous-token")
class PreviousToken(Predictor):
    """The layer's mask of the most recent visible token (the k = 1 window of LLM in a Flash).

    Source: Alizadeh et al., "LLM in a Flash", ACL 2024 (arXiv 2312.11514), whose sliding window
    rests on consecutive tokens sharing most active neurons. Normally that is token t-1; when
    the lookahead reaches back past it (lookahead >= n_layers) the latest visible token is used.
    After a prefill batch it is the batch's last token. No prediction (``None``) for the first token.
    """

    def predict(self, view: CausalView, token: int, layer: int) -> np.ndarray | None:
        source = latest_token(view, token, layer)
        return None if source < 0 else view.last_token_mask(source, layer)


@PREDICTORS.register("window")
class SlidingWindow(ScoredPredictor):
    """Neurons active in the last ``k`` visible tokens of the layer (LLM in a Flash's window).

    Source: Alizadeh et al., "LLM in a Flash", ACL 2024 (arXiv 2312.11514), Sec. 3.1 "sliding
    window": keep the neurons of the last k tokens. Score = fraction of those k tokens (fewer at
    the start) in which the neuron was active; the default threshold 1/k (at least once in a full
    window) gives the union of the window.
    """

    def __init__(self, k: int = 4, threshold: float | None = None, topk: int | None = None):
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be an integer >= 1, got {k}")
        super().__init__(threshold, topk)
        self.k = k
        self.default_threshold = 1.0 / k

    def predict(self, view: CausalView, token: int, layer: int) -> np.ndarray | None:
        last = latest_token(view, token, layer)
        if last < 0:
            return None
        start = max(last - self.k + 1, 0)
        if self.threshold is None and self.topk is None:   # the plain union needs no counting
            return view.union(layer, start, last + 1)
        rows = np.stack([view.mask(t, layer) for t in range(start, last + 1)])
        return self.select(unpack_rows(rows, self.context.d_ff[layer]).mean(axis=0), layer)
