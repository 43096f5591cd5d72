"""Cross-layer predictors: a token's deeper layers from its own earlier layers' masks.

Neuron i of layer l and neuron i of layer l+1 are unrelated (indices are not aligned), so the
mapping is learned from a training trace: a rank-r linear probability model, fitted by least
squares on principal components of the source masks (principal-component regression):

    z = (x_src - mean_src) @ V_r                  V_r: top-r principal axes of the source masks
    score = mean_tgt + z @ B                      B = argmin ||Z B - (Y - mean_tgt)||² + λ||B||²

``score`` estimates P(target neuron active | source mask). One map per (source, target) pair,
fitted on first use. A layer whose source is not visible yet at issue time (layer 0; the first
layers under a layer lookahead; every layer under the token schedule) falls back to
previous-token.
"""

from __future__ import annotations

import numpy as np

from sparsesim.errors import InputError
from sparsesim.simulator.predictors import PREDICTORS, CausalView, PredictorContext
from sparsesim.simulator.predictors.scored import ScoredPredictor, latest_layer, latest_token, unpack_rows

POWER_ITERATIONS = 2     # subspace iterations: enough for mask matrices with a decaying spectrum
OVERSAMPLE = 8
RIDGE = 1e-3             # λ relative to the mean variance of the components: keeps the solve stable


class PrincipalComponents:
    """Mean and top-r principal axes of one layer's 0/1 training masks [T, d]."""

    def __init__(self, x: np.ndarray, rank: int, rng: np.random.Generator):
        x = x.astype(np.float32)
        self.mean = x.mean(axis=0)
        centred = x - self.mean
        self.axes = _principal_axes(centred, min(rank, *centred.shape), rng)     # [d, r]
        self.train = centred @ self.axes                                           # [T, r]

    def project(self, x: np.ndarray) -> np.ndarray:
        return (x - self.mean) @ self.axes


class MaskRegression:
    """Least-squares map from a source layer's principal components to a target layer's scores."""

    def __init__(self, source: PrincipalComponents, y: np.ndarray):
        self.source = source
        z = source.train
        y = y.astype(np.float32)
        self.mean_y = y.mean(axis=0)
        gram = z.T @ z
        ridge = RIDGE * max(float(np.trace(gram)) / max(len(gram), 1), 1e-12)
        self.coef = np.linalg.solve(gram + ridge * np.eye(len(gram), dtype=np.float32),
                                    z.T @ (y - self.mean_y))                     # [r, d_tgt]

    def scores(self, x: np.ndarray) -> np.ndarray:
        return self.mean_y + self.source.project(x) @ self.coef


def _principal_axes(centred: np.ndarray, rank: int, rng: np.random.Generator) -> np.ndarray:
    """Top ``rank`` principal axes [d, rank] of ``centred`` [T, d].

    Randomized subspace iteration (Halko et al. 2011) with the Gram matrix applied as
    X^T (X b), never formed, then Rayleigh-Ritz on the small projected matrix;
    orthonormalisation by the eigenvectors of the small basis Gram (no QR of tall matrices).
    """
    def gram(basis: np.ndarray) -> np.ndarray:
        return centred.T @ (centred @ basis)

    basis = rng.standard_normal((centred.shape[1], min(rank + OVERSAMPLE, centred.shape[1]))).astype(np.float32)
    for _ in range(POWER_ITERATIONS + 1):
        basis = _orthonormal(gram(basis))
    _, vectors = np.linalg.eigh(basis.T @ gram(basis))
    return np.ascontiguousarray(basis @ vectors[:, ::-1][:, :rank])


def _orthonormal(basis: np.ndarray) -> np.ndarray:
    """An orthonormal basis of the column span of ``basis`` (directions of ~zero norm dropped)."""
    values, vectors = np.linalg.eigh(basis.T @ basis)
    keep = values > values.max(initial=0.0) * 1e-10
    return basis @ (vectors[:, keep] / np.sqrt(values[keep]))


class CrossLayer(ScoredPredictor):
    """Base: predict (token, layer) from the mask of (token, source layer); see the module docstring."""

    def __init__(self, rank: int = 64, threshold: float | None = None, topk: int | None = None):
        if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
            raise ValueError(f"rank must be an integer >= 1, got {rank}")
        super().__init__(threshold, topk)
        self.rank = rank

    def setup(self, context: PredictorContext) -> None:
        super().setup(context)
        if context.train_masks is None or len(context.train_masks) < 2:
            raise InputError(f"predictor {self.name} needs a training trace (--train) to learn its layer-to-layer map")
        self.components: dict[int, PrincipalComponents] = {}          # per source layer
        self.maps: dict[tuple[int, int], MaskRegression] = {}           # per (source, target)
        width = max(context.d_ff)
        self.flops = 2.0 * (width * self.rank + self.rank * width)

    def source(self, view: CausalView, token: int, layer: int) -> int:
        """The earlier layer of ``token`` to predict from, or -1 to fall back to previous-token."""
        raise NotImplementedError

    def _map(self, source: int, target: int) -> MaskRegression:
        key = (source, target)
        if key not in self.maps:
            ctx = self.context
            if source not in self.components:
                self.components[source] = PrincipalComponents(
                    unpack_rows(ctx.train_masks[:, source], ctx.d_ff[source]), self.rank,
                    np.random.default_rng([ctx.seed, source]))
            self.maps[key] = MaskRegression(self.components[source],
                                            unpack_rows(ctx.train_masks[:, target], ctx.d_ff[target]))
        return self.maps[key]

    def predict(self, view: CausalView, token: int, layer: int) -> np.ndarray | None:
        src = self.source(view, token, layer)
        if src < 0:
            last = latest_token(view, token, layer)
            return None if last < 0 else view.mask(last, layer)
        x = unpack_rows(view.mask(token, src), self.context.d_ff[src])
        return self.select(self._map(src, layer).scores(x), layer)


@PREDICTORS.register("layer-ahead")
class LayerAhead(CrossLayer):
    """Layer l from layer l-k of the same token (Deja Vu's cross-layer lookahead, on masks).

    Source: Liu et al., "Deja Vu", ICML 2023 (arXiv 2310.17157): consecutive layers' inputs are
    nearly identical, so layer l's sparsity is predicted while layer l-1 computes; and the
    seed paper's guideline (arXiv 2412.12178, Sec. V-A) to predict deeper layers from earlier
    ones. ``k=0`` (default) uses the nearest earlier layer already computed at issue time
    (l-2 under the default lookahead of 1); ``k>=1`` fixes the distance. Map: see the module
    docstring (rank ``rank``, default 64; default threshold 0.5).
    """

    def __init__(self, k: int = 0, rank: int = 64, threshold: float | None = None, topk: int | None = None):
        if isinstance(k, bool) or not isinstance(k, int) or k < 0:
            raise ValueError(f"k must be an integer >= 0 (0: nearest visible layer), got {k}")
        super().__init__(rank, threshold, topk)
        self.k = k

    def source(self, view: CausalView, token: int, layer: int) -> int:
        visible = latest_layer(view, token, layer)
        if self.k == 0:
            return visible
        return layer - self.k if 0 <= layer - self.k <= visible else -1


@PREDICTORS.register("first-layer")
class FirstLayer(CrossLayer):
    """Every deeper layer from layer 0's mask of the same token (ShadowLLM-style).

    Source: Akhauri et al., "ShadowLLM: Predictor-based Contextual Sparsity" (arXiv 2406.16635): one predictor at the
    first layer decides the sparsity of all layers; the seed paper (arXiv 2412.12178, Sec. V)
    suggests selecting the whole pattern from layer 1's. Map: see the module docstring. Layer 0
    itself, and layers issued before layer 0 has run, fall back to previous-token.
    """

    def source(self, view: CausalView, token: int, layer: int) -> int:
        return 0 if layer > 0 and latest_layer(view, token, layer) >= 0 else -1
