"""Offline frequency profile: a fixed hot set per layer, the same for every token."""

from __future__ import annotations

import numpy as np

from sparsesim.simulator.bitset import frequency
from sparsesim.errors import InputError
from sparsesim.simulator.predictors import PREDICTORS, CausalView, PredictorContext
from sparsesim.simulator.predictors.scored import ScoredPredictor, choose
from sparsesim.tracecolumns import DECODE, PREFILL

SOURCES = ("train", "prompt", "run")


@PREDICTORS.register("static-hot")
class StaticHot(ScoredPredictor):
    """The most frequently active units of each layer, counted in ``source``.

    Source: Song et al., "PowerInfer", SOSP 2024 (arXiv 2312.12456): an offline profiler counts
    how often each neuron activates; the hot ones are kept resident. Score = the unit's activation
    frequency in ``source``: ``train``, a separate profiling (training) trace; ``prompt``, the
    replayed trace's own prompt (its prefill tokens before the first decode token), which exists
    once the prompt has run — decode steps only are predicted, and a prediction issued before the
    prompt's layer has run is refused; ``run``, the whole replayed trace (it sees the future: a
    bound). With neither ``threshold`` nor ``topk`` the prediction is the top-m units, m = the
    layer's mean active count per token of the source (as many units as a token typically needs).
    """

    def __init__(self, source: str = "train", threshold: float | None = None, topk: int | None = None):
        if source not in SOURCES:
            raise ValueError(f"source must be one of {', '.join(SOURCES)}, got {source!r}")
        super().__init__(threshold, topk)
        self.source = source
        self.sees_future = source == "run"

    def setup(self, context: PredictorContext) -> None:
        super().setup(context)
        masks = self._source_masks(context)
        scores = frequency(masks) / len(masks)      # [L, width]
        if self.threshold is None and self.topk is None:
            self.hot = [choose(s, d, context.n_bytes, 0.0, int(round(s[:d].sum())))
                        for s, d in zip(scores, context.d_ff)]
        else:
            self.hot = [self.select(s, layer) for layer, s in enumerate(scores)]

    def _source_masks(self, context: PredictorContext) -> np.ndarray:
        if self.source == "train":
            if context.train_masks is None or len(context.train_masks) == 0:
                raise InputError("predictor static-hot needs a non-empty training/profiling trace (--train), "
                                 "or source=prompt / source=run")
            return context.train_masks
        masks = np.asarray(context.trace_masks)
        if self.source == "run":
            return masks
        phase = context.trace_phase
        decode = np.flatnonzero(phase == DECODE) if phase is not None else np.empty(0, dtype=np.int64)
        prompt = np.flatnonzero(phase[:decode[0]] == PREFILL) if decode.size else decode
        if prompt.size == 0:
            raise InputError("predictor static-hot:source=prompt needs a trace whose prompt (phase column: prefill "
                             "tokens) precedes its decode tokens")
        steps = context.phase
        self.step_phase = steps
        self.prompt_end = int(np.flatnonzero(steps[:np.flatnonzero(steps == DECODE)[0]] == PREFILL)[-1])
        return masks[prompt]

    def predict(self, view: CausalView, token: int, layer: int) -> np.ndarray | None:
        if self.source == "prompt":
            if self.step_phase[token] != DECODE:
                return None
            view.mask(self.prompt_end, layer)   # refused (CausalityError) before the prompt's layer has run
        return self.hot[layer]
