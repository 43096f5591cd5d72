"""Pattern codebook: a layer's masks fall into a few recurring patterns; predict the pattern."""

from __future__ import annotations

import numpy as np

from sparsesim.simulator import bitset
from sparsesim.errors import InputError
from sparsesim.simulator.predictors import PREDICTORS, CausalView, PredictorContext
from sparsesim.simulator.predictors.scored import ScoredPredictor, latest_token, unpack_rows


def kmodes(bits: np.ndarray, clusters: int, iterations: int,
           rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Seeded k-modes on 0/1 rows [T, d] under Hamming distance -> (modes [K, d] bool, labels [T], means [K, d]).

    Starts from K distinct random rows; assigns each row to its nearest mode and sets each mode
    to the per-neuron majority of its members, until no label changes. Hamming distances come
    from one matrix product (|x| + |m| - 2 x.m), member counts from a one-hot product, so the
    loop is over iterations only. ``means``: per cluster, the fraction of members in which each
    neuron is active (0 for an empty cluster).
    """
    x = bits.astype(np.float32)
    k = min(clusters, len(x))
    modes = x[rng.choice(len(x), size=k, replace=False)]
    labels = _nearest(x, modes)
    for _ in range(iterations):
        means, sizes = _members(x, labels, k)
        filled = sizes > 0           # an emptied cluster keeps its old mode
        modes[filled] = (means[filled] >= 0.5).astype(np.float32)
        new = _nearest(x, modes)
        if np.array_equal(new, labels):
            break
        labels = new
    return modes.astype(bool), labels, _members(x, labels, k)[0]


def _nearest(x: np.ndarray, modes: np.ndarray) -> np.ndarray:
    """Index of the nearest mode (Hamming) for each 0/1 row of ``x``."""
    distance = x.sum(axis=1)[:, None] + modes.sum(axis=1)[None, :] - 2.0 * (x @ modes.T)
    return distance.argmin(axis=1)


def _members(x: np.ndarray, labels: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per cluster: mean of the member rows [K, d] and member count [K]."""
    onehot = np.zeros((k, len(x)), dtype=np.float32)
    onehot[labels, np.arange(len(x))] = 1.0
    sizes = onehot.sum(axis=1)
    return (onehot @ x) / np.maximum(sizes, 1.0)[:, None], sizes


@PREDICTORS.register("pattern-codebook")
class PatternCodebook(ScoredPredictor):
    """Cluster each layer's training masks into K patterns; predict the next token's pattern.

    Source: the seed authors' follow-up, "A Sparsity Predicting Approach ... via Activation
    Pattern Clustering", Euro-Par 2025 (arXiv 2507.14179): cluster activation patterns into
    representative centroids and predict the cluster instead of each neuron. Here: seeded
    k-modes (Hamming distance on the masks) per layer on the training trace, ``clusters`` K
    (default 32), ``iterations`` (default 10). The cluster of the latest visible token's mask
    (its nearest mode) predicts the next cluster by the most frequent training transition
    c -> c' between consecutive training tokens; the prediction is centroid c' thresholded:
    score = fraction of c''s training members in which the neuron is active (default 0.5).
    """

    def __init__(self, clusters: int = 32, iterations: int = 10, threshold: float | None = None,
                 topk: int | None = None):
        for name, value, most in (("clusters", clusters, 1 << 16), ("iterations", iterations, 1000)):
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= most:
                raise ValueError(f"{name} must be an integer from 1 to {most}, got {value}")
        super().__init__(threshold, topk)
        self.clusters = clusters
        self.iterations = iterations

    def setup(self, context: PredictorContext) -> None:
        super().setup(context)
        if context.train_masks is None or len(context.train_masks) < 2:
            raise InputError("predictor pattern-codebook needs a training trace (--train) to cluster")
        self.modes, self.next_cluster, self.centroids = [], [], []
        for layer, d in enumerate(context.d_ff):
            bits = unpack_rows(context.train_masks[:, layer], d)
            modes, labels, means = kmodes(bits, self.clusters, self.iterations,
                                          np.random.default_rng([context.seed, layer]))
            k = len(modes)
            self.centroids.append(means)
            transitions = np.zeros((k, k), dtype=np.int64)
            np.add.at(transitions, (labels[:-1], labels[1:]), 1)
            # A cluster never followed by another in training predicts the most common cluster.
            common = np.bincount(labels, minlength=k).argmax()
            self.next_cluster.append(np.where(transitions.sum(axis=1) > 0, transitions.argmax(axis=1), common))
            self.modes.append(np.stack([bitset.from_bool(m, context.n_bytes) for m in modes]))
        self.flops = 2.0 * self.clusters * max(context.d_ff)

    def predict(self, view: CausalView, token: int, layer: int) -> np.ndarray | None:
        last = latest_token(view, token, layer)
        if last < 0:
            return None
        distance = np.bitwise_count(self.modes[layer] ^ view.mask(last, layer)).sum(axis=1)
        cluster = self.next_cluster[layer][distance.argmin()]
        return self.select(self.centroids[layer][cluster], layer)
