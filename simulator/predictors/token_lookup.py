"""Input-based prediction: the same token id tends to activate the same neurons."""

from __future__ import annotations

import numpy as np

from sparsesim.errors import InputError
from sparsesim.simulator.predictors import PREDICTORS, CausalView, PredictorContext
from sparsesim.simulator.predictors.scored import ScoredPredictor, latest_token, unpack_rows

SOURCES = ("auto", "both", "train", "run")
# Counts are uint16 to keep ~L*d_ff*2 bytes per distinct id; at the limit both the counts and the
# occurrence number are halved, which keeps the fraction and weights recent occurrences more.
COUNT_LIMIT = np.iinfo(np.uint16).max


@PREDICTORS.register("token-lookup")
class TokenLookup(ScoredPredictor):
    """Per-token-id mask history: neurons active in >= ``threshold`` of the id's past occurrences.

    Source: Dhar et al., "Activation Sparsity Opportunities for Compressing General LLMs",
    IPCCC 2024 (arXiv 2412.12178), Sec. V-A guideline: predict the activation pattern from the
    user's input tokens. Aggregation: for each (token id, layer) the number of occurrences n and
    per-neuron active counts c; score = c / n (default threshold 0.5: active in at least half of
    the occurrences). Occurrences come from the training trace (``source=train``), from earlier
    tokens of this run as their masks become visible (``source=run``), or both (``source=both``;
    ``auto``, the default, is both with a training trace and run without). An id not seen yet in
    a layer, or an id not known yet at issue time (layer 0 issued during the previous token),
    falls back to previous-token.
    """

    def __init__(self, source: str = "auto", threshold: float | None = None, topk: int | None = None):
        if source not in SOURCES:
            raise ValueError(f"source must be one of {', '.join(SOURCES)}, got {source!r}")
        super().__init__(threshold, topk)
        self.source = source

    def setup(self, context: PredictorContext) -> None:
        super().setup(context)
        self.width = context.n_bytes * 8
        self.counts: dict[int, np.ndarray] = {}      # id -> uint16 [L, width]
        self.seen: dict[int, np.ndarray] = {}        # id -> int64 [L] occurrences
        self.learned = np.zeros(context.n_layers, dtype=np.int64)   # run tokens folded in, per layer
        self.learn_run = self.source != "train"
        if self.source in ("both", "train") or (self.source == "auto" and context.train_masks is not None):
            if context.train_masks is None:
                raise InputError(f"predictor token-lookup:source={self.source} needs a training trace "
                                 f"(--train); use source=run to learn from the run only")
            self._learn_training(context.train_masks, context.train_tokens)

    def _learn_training(self, masks: np.ndarray, tokens: np.ndarray) -> None:
        order = np.argsort(tokens, kind="stable")
        ids, starts = np.unique(tokens[order], return_index=True)
        for token_id, rows in zip(ids, np.split(order, starts[1:])):
            counts, seen = self._entry(int(token_id))
            total = unpack_rows(masks[rows], self.width).sum(axis=0, dtype=np.int64)   # [L, width]
            n = len(rows)
            while n > COUNT_LIMIT:   # counts never exceed n; halving both keeps the fractions
                total //= 2
                n //= 2
            counts[:] = total
            seen[:] = n

    def _entry(self, token_id: int) -> tuple[np.ndarray, np.ndarray]:
        if token_id not in self.counts:
            self.counts[token_id] = np.zeros((self.context.n_layers, self.width), dtype=np.uint16)
            self.seen[token_id] = np.zeros(self.context.n_layers, dtype=np.int64)
        return self.counts[token_id], self.seen[token_id]

    def _learn_run(self, view: CausalView, layer: int, upto: int) -> None:
        """Fold the visible masks of ``layer`` for tokens learned[layer] .. upto into the counts."""
        for t in range(self.learned[layer], upto + 1):
            counts, seen = self._entry(view.token_id(t))
            if seen[layer] == COUNT_LIMIT:
                counts[layer] >>= 1
                seen[layer] >>= 1
            counts[layer] += unpack_rows(view.mask(t, layer), self.width)
            seen[layer] += 1
        self.learned[layer] = max(self.learned[layer], upto + 1)

    def predict(self, view: CausalView, token: int, layer: int) -> np.ndarray | None:
        last = latest_token(view, token, layer)
        if self.learn_run:
            self._learn_run(view, layer, last)
        # Issued before the token exists (its first layers, from the previous token's last ones),
        # the id is unknown yet; like an unseen id this falls back to previous-token.
        token_id = view.token_id(token) if token <= view.current_token else None
        seen = self.seen.get(token_id)
        if seen is None or seen[layer] == 0:
            return None if last < 0 else view.mask(last, layer)
        return self.select(self.counts[token_id][layer] / seen[layer], layer)
