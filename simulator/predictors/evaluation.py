"""Predictor accuracy without the timing model: every prediction issued as the replay would issue it.

:func:`replay` calls a predictor for every (token, layer) in issue order with the same
:class:`CausalView` frontier as the engine (``docs/predictors.md``, "causality"): under the
``layer`` schedule with lookahead k the prediction for global step g = t * L + l is issued at
step max(g - k, 0) — the first k steps are issued together at step 0; under the ``token``
schedule every layer of token t is issued at step t * L. :func:`confusion` turns the predictions
into the per-layer TP/FP/FN counters that the engine reports as ``pred_tp/pred_fp/pred_fn``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sparsesim.simulator.predictors import CausalView, Predictor
from sparsesim.simulator.schedule import PrefetchSchedule

SCHEDULES = ("layer", "token")   # the schedules that issue predictions


def replay(masks: np.ndarray, tokens: np.ndarray, predictor: Predictor, *, lookahead: int = 1,
           schedule: str = "layer") -> tuple[np.ndarray, np.ndarray]:
    """Predictions [T, L, n_bytes] and whether one was issued [T, L] (``None`` means not issued).

    ``predictor`` must be set up already. Refused reads raise :class:`CausalityError`.
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    T, L, _ = masks.shape
    view = CausalView(masks, tokens, allow_future=predictor.sees_future)
    plan = PrefetchSchedule(schedule, lookahead, L, T * L)
    predicted = np.zeros_like(masks)
    issued = np.zeros((T, L), dtype=bool)
    for step in range(T * L):
        view.frontier = step
        for target in plan.targets(step):
            token, layer = divmod(target, L)
            pred = predictor.predict(view, token, layer)
            if pred is not None:
                predicted[token, layer] = pred
                issued[token, layer] = True
    return predicted, issued


@dataclass
class Confusion:
    """Per-layer counters over the issued predictions (arrays of length L)."""

    issued: np.ndarray     # predictions issued
    tp: np.ndarray         # predicted and active
    fp: np.ndarray         # predicted, not active
    fn: np.ndarray         # active, not predicted


def confusion(masks: np.ndarray, predicted: np.ndarray, issued: np.ndarray) -> Confusion:
    """Counters over issued (token, layer) pairs only, as the engine counts them."""
    def per_layer(rows: np.ndarray) -> np.ndarray:
        return np.where(issued, np.bitwise_count(rows).sum(axis=-1, dtype=np.int64), 0).sum(axis=0)

    return Confusion(issued=issued.sum(axis=0), tp=per_layer(predicted & masks),
                     fp=per_layer(predicted & ~masks), fn=per_layer(masks & ~predicted))
