"""The oracle with controlled errors: "how good must a predictor be?"."""

from __future__ import annotations

import numpy as np

from sparsesim.simulator import bitset
from sparsesim.simulator.predictors import PREDICTORS, CausalView, PredictorContext, Predictor
from sparsesim.simulator.predictors.scored import unpack_rows


@PREDICTORS.register("noisy-oracle")
class NoisyOracle(Predictor):
    """The true mask with seeded false negatives (rate ``fn``) and false positives (rate ``fp``).

    Each truly active neuron is dropped with probability ``fn`` (FN rate = FN / active); each
    inactive neuron of the layer is added with probability ``fp`` (FP rate = FP / inactive, the
    false-positive rate, not FP / predicted). Calibration point: LLM in a Flash (Alizadeh et
    al., ACL 2024, arXiv 2312.11514) reports about 5 % false negatives and 7 % false positives
    for its OPT-6.7B predictors. Sees the future: an upper-bound study, not a design.
    """

    sees_future = True

    def __init__(self, fn: float = 0.05, fp: float = 0.07, seed: int = 0):
        for name, rate in (("fn", fn), ("fp", fp)):
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"{name} must be a probability in [0, 1], got {rate}")
        self.fn = fn
        self.fp = fp
        self.seed = seed

    def setup(self, context: PredictorContext) -> None:
        super().setup(context)
        self.rng = np.random.default_rng([context.seed, self.seed])

    def predict(self, view: CausalView, token: int, layer: int) -> np.ndarray:
        d = self.context.d_ff[layer]
        truth = unpack_rows(view.mask(token, layer), d).astype(bool)
        keep = self.rng.random(d) >= np.where(truth, self.fn, 1.0 - self.fp)
        return bitset.from_bool(keep, self.context.n_bytes)
