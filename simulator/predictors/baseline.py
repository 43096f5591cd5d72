"""The three reference points: no sparsity, perfect knowledge, and no prediction."""

from __future__ import annotations

import numpy as np

from sparsesim.simulator import bitset
from sparsesim.simulator.predictors import PREDICTORS, CausalView, Predictor


@PREDICTORS.register("dense")
class DenseModel(Predictor):
    """No sparsity: every neuron is computed and fetched (the baseline for speed-up)."""

    dense = True

    def setup(self, context):
        super().setup(context)
        self._all = [bitset.full(d, context.n_bytes) for d in context.d_ff]

    def predict(self, view: CausalView, token: int, layer: int) -> np.ndarray:
        return self._all[layer]


@PREDICTORS.register("oracle")
class Oracle(Predictor):
    """Perfect prediction of the true mask (an upper bound, not a realisable design)."""

    sees_future = True

    def predict(self, view: CausalView, token: int, layer: int) -> np.ndarray:
        return view.mask(token, layer)


@PREDICTORS.register("none")
class NoPrediction(Predictor):
    """No prediction: every active neuron not in the cache is a demand fetch."""

    def predict(self, view: CausalView, token: int, layer: int) -> None:
        return None
