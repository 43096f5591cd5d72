"""Learned predictors evaluated at trace time, replayed from the trace's ``pred:<name>`` columns."""

from __future__ import annotations

import numpy as np

from sparsesim.errors import InputError
from sparsesim.simulator.predictors import PREDICTORS, CausalityError, CausalView, PredictorContext, Predictor


@PREDICTORS.register("stored")
class StoredPrediction(Predictor):
    """A learned predictor's masks stored in the trace (e.g. the low-rank MLP of ``tracing/lowrank.py``).

    Sources: Liu et al., "Deja Vu", ICML 2023 (arXiv 2310.17157) and Alizadeh et al., "LLM in a
    Flash", ACL 2024 (arXiv 2312.11514): a rank-r MLP per layer on the hidden state. The tracer
    runs it and stores its output as column ``pred:<name>``; the trace metadata
    ``learned.<name>`` states how it was made:

    * ``train_rows`` [start, stop): trace rows (tokens) the model was trained on, or null when
      it was trained on other text. Those tokens get no prediction (``None``), so accuracy and
      savings come only from tokens it has not seen.
    * ``input_offset`` s: the prediction for layer l was computed from the FFN input of layer
      l - s. It exists only from that layer step on, so the run must issue predictions at most
      s layers ahead (lookahead <= s; ``CausalityError`` otherwise). Layers l < s have no input
      and get no prediction.
    * ``flops_per_layer``: FLOPs of one prediction (one token, one layer), charged to compute at issue.
    """

    def __init__(self, name: str = "lowrank"):
        self.column = name

    def setup(self, context: PredictorContext) -> None:
        super().setup(context)
        if self.column not in context.extra:
            known = ", ".join(sorted(context.extra)) or "none"
            raise InputError(f"predictor stored:name={self.column}: the trace has no column pred:{self.column} "
                             f"(stored predictions: {known})")
        learned = context.meta.get("learned", {}).get(self.column)
        if not isinstance(learned, dict) or "train_rows" not in learned or "input_offset" not in learned:
            raise InputError(f"predictor stored:name={self.column}: the trace metadata does not state which tokens "
                             f"the learned model was trained on (learned.{self.column}.train_rows and "
                             f".input_offset); refusing to score it on possibly seen tokens")
        self.masks = context.extra[self.column]
        rows = learned["train_rows"]
        self.trained = range(0) if rows is None else range(int(rows[0]), int(rows[1]))
        self.offset = int(learned["input_offset"])
        self.flops = float(learned.get("flops_per_layer", 0.0))

    def predict(self, view: CausalView, token: int, layer: int) -> np.ndarray | None:
        if token in self.trained or layer < self.offset:
            return None
        source = token * view.n_layers + layer - self.offset
        if source > view.frontier and not view.allow_future:
            raise CausalityError(f"stored prediction {self.column!r} for token {token} layer {layer} is computed "
                                 f"from the FFN input of layer {layer - self.offset}, which does not exist yet at "
                                 f"the issue step; use a lookahead <= {self.offset}")
        return self.masks[token, layer].copy()
