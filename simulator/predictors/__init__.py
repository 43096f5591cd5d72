"""Predictors: which neurons of a layer will be active, from what is causally known.

Hook contract (long form in ``docs/policies.md``). A predictor subclasses :class:`Predictor`,
registers with ``@PREDICTORS.register("name")`` and implements:

``setup(context)``                 once: shapes, an optional separate training trace, a seed
``predict(view, token, layer)``    a packed mask for (token, layer), or ``None`` for no prefetch

``view`` is a :class:`CausalView`: it hands out only the masks that exist when the prefetch is
issued (earlier tokens; earlier layers of this token) and the ids of tokens already seen. Asking
for anything later raises :class:`CausalityError` and the run is refused. Oracle-type predictors
declare ``sees_future = True`` and are reported as upper bounds, never as realisable designs.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field

import numpy as np

from sparsesim.errors import InputError
from sparsesim.simulator.registry import Registry

PREDICTORS: Registry["Predictor"] = Registry("predictor")


class CausalityError(InputError):
    """A predictor asked for information that does not exist yet at issue time."""


class CausalView:
    """Read-only window on the trace that moves forward as the replay proceeds.

    ``frontier`` is the global layer step ``token * n_layers + layer`` at which the current
    prediction is issued (a "token" is a step row: a decode token, or a prefill batch whose mask is
    the union of its tokens'): masks of steps strictly before it are visible, and token ids up to and
    including the current token. Every index is checked before it is used, so no arithmetic on
    indices (negative numbers, which numpy would wrap to the end of the trace, layers outside
    0 … L−1, ranges that run past the frontier) reaches a mask that does not exist yet.
    """

    def __init__(self, masks: np.ndarray, tokens: np.ndarray, allow_future: bool = False,
                 last_masks: np.ndarray | None = None):
        self._masks = masks
        self._last = masks if last_masks is None else last_masks   # a step row's last token (a batch's)
        self._tokens = tokens
        self.n_tokens, self.n_layers = masks.shape[0], masks.shape[1]
        self.allow_future = allow_future
        self.frontier = 0

    def _index(self, token, layer, what: str) -> tuple[int, int]:
        try:
            token, layer = operator.index(token), operator.index(layer)   # ints only: no 1.5, no arrays
        except TypeError:
            raise CausalityError(f"predictor read {what} of token {token!r} layer {layer!r}: not integers") from None
        if not (0 <= token < self.n_tokens and 0 <= layer < self.n_layers):
            raise CausalityError(f"predictor read {what} of token {token} layer {layer}, outside the trace's "
                                 f"0 … {self.n_tokens - 1} tokens and 0 … {self.n_layers - 1} layers")
        if token * self.n_layers + layer >= self.frontier and not self.allow_future:
            t, l = divmod(self.frontier, self.n_layers)
            raise CausalityError(f"predictor read {what} of token {token} layer {layer}, which does not exist "
                                 f"yet when predicting at token {t} layer {l}")
        return token, layer

    def mask(self, token: int, layer: int) -> np.ndarray:
        """The true mask of an earlier (token, layer), as a copy."""
        token, layer = self._index(token, layer, "the mask")
        return self._masks[token, layer].copy()

    def last_token_mask(self, token: int, layer: int) -> np.ndarray:
        """The mask of the last token of an earlier step row: the row itself, except that a prefill
        batch's row holds the union of its tokens and this is its last token's own."""
        token, layer = self._index(token, layer, "the mask")
        return self._last[token, layer].copy()

    def union(self, layer: int, start: int, stop: int) -> np.ndarray:
        """OR of the masks of ``layer`` over tokens ``start .. stop-1`` (``start`` below 0 reads from 0)."""
        start = max(start, 0)
        if stop <= start:
            self._index(0, layer, "the masks")   # still refuses a layer outside the model
            return np.zeros(self._masks.shape[2], dtype=np.uint8)
        _, layer = self._index(stop - 1, layer, "the masks")
        return np.bitwise_or.reduce(self._masks[start:stop, layer], axis=0)

    def token_id(self, token: int) -> int:
        current = self.frontier // self.n_layers
        try:
            token = operator.index(token)
        except TypeError:
            raise CausalityError(f"predictor read the id of token {token!r}: not an integer") from None
        if not 0 <= token < self.n_tokens:
            raise CausalityError(f"predictor read the id of token {token}, outside 0 … {self.n_tokens - 1}")
        if token > current and not self.allow_future:
            raise CausalityError(f"predictor read the id of token {token}, which is not known yet at token {current}")
        return int(self._tokens[token])

    @property
    def current_token(self) -> int:
        return self.frontier // self.n_layers


@dataclass
class PredictorContext:
    n_layers: int
    d_ff: tuple[int, ...]
    n_bytes: int
    seed: int = 0
    train_masks: np.ndarray | None = None     # [T', L, n_bytes] from a separate training trace
    train_tokens: np.ndarray | None = None
    extra: dict = field(default_factory=dict)  # the trace's stored predicted-mask columns
    meta: dict = field(default_factory=dict)   # the trace's metadata (``stored`` reads its "learned" section)
    phase: np.ndarray | None = None            # [S] PREFILL / DECODE of each step row predicted for (None: all decode)
    trace_masks: np.ndarray | None = None      # [T, L, n_bytes] the replayed trace's own masks, one row per token
    trace_phase: np.ndarray | None = None      # [T] their phase (None: no phase column)

    @classmethod
    def of(cls, trace, train=None, seed: int = 0, steps=None) -> "PredictorContext":
        """The context for replaying ``trace`` (a :class:`sparsesim.tracefile.Trace`) in ``steps``
        (:class:`~sparsesim.simulator.steps.ReplaySteps`; default: one step row per token), with an
        optional training trace of the same model shape (checked by the caller). ``trace_masks`` are
        for predictors that learn from the replayed trace itself: from its prompt (causal once the
        prompt has run) or from all of it (a bound)."""
        return cls(n_layers=trace.n_layers, d_ff=tuple(trace.units.count), n_bytes=trace.n_bytes, seed=seed,
                   train_masks=None if train is None else train.masks,
                   train_tokens=None if train is None else train.token, meta=trace.meta,
                   extra=trace.extra if steps is None else {k: steps.gather(v) for k, v in trace.extra.items()},
                   phase=trace.phase if steps is None else steps.phase, trace_masks=trace.masks,
                   trace_phase=trace.phase)


class Predictor:
    """Base class. ``dense`` predictors also turn sparsity off (every neuron is computed)."""

    name = "base"
    sees_future = False
    dense = False
    flops = 0.0   # FLOPs per prediction of one layer (charged to compute time at issue)

    def setup(self, context: PredictorContext) -> None:
        self.context = context

    def predict(self, view: CausalView, token: int, layer: int) -> np.ndarray | None:
        raise NotImplementedError


def _register_builtins() -> None:
    import importlib
    import pkgutil

    for info in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{info.name}")


_register_builtins()
