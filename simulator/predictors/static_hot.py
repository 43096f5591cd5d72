"""Offline frequency profile: a fixed hot set per layer, the same for every token."""

from __future__ import annotations

import numpy as np

from sparsesim.simulator.bitset import frequency
from sparsesim.errors import InputError
from sparsesim.simulator.predictors import PREDICTORS, CausalView, PredictorContext
from sparsesim.simulator.predictors.scored import ScoredPredictor, choose


@PREDICTORS.register("static-hot")
class StaticHot(ScoredPredictor):
    """The most frequently active neurons of each layer in a separate profiling (training) trace.

    Source: Song et al., "PowerInfer", SOSP 2024 (arXiv 2312.12456): an offline profiler counts
    how often each neuron activates; the hot ones are kept resident. Score = the neuron's
    activation frequency in the training trace. With neither ``threshold`` nor ``topk`` the
    prediction is the top-m neurons, m = the layer's mean active count per training token (as
    many neurons as a token typically needs). Needs a training trace.
    """

    def setup(self, context: PredictorContext) -> None:
        super().setup(context)
        if context.train_masks is None or len(context.train_masks) == 0:
            raise InputError("predictor static-hot needs a non-empty training/profiling trace (--train)")
        scores = frequency(context.train_masks) / len(context.train_masks)      # [L, width]
        if self.threshold is None and self.topk is None:
            self.hot = [choose(s, d, context.n_bytes, 0.0, int(round(s[:d].sum())))
                        for s, d in zip(scores, context.d_ff)]
        else:
            self.hot = [self.select(s, layer) for layer, s in enumerate(scores)]

    def predict(self, view: CausalView, token: int, layer: int) -> np.ndarray:
        return self.hot[layer]
