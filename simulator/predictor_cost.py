"""Predictor cost and what a misprediction means.

**Cost.** A low-rank predictor (Deja Vu, LLM in a Flash) maps the layer's d_model input to d_ff
neuron scores through rank r: two matrices, d_model x r and r x d_ff. Per layer and token it reads
``r (d_model + d_ff)`` weights and does twice as many FLOPs, as dense kernels on the compute unit
(:func:`low_rank_work`). LLM in a Flash (its predictor section) uses rank 128 for OPT-6.7B with 1024 in the
last 4 layers (mean 240); its predictors are < 2.4 % of the non-embedding weights.

**Drop or fetch false negatives** (scenario ``false_negatives``). A neuron the predictor missed is
either read on demand before the FFN (``fetch``: the model computes the true mask; the miss costs a
stall) or not read and not computed (``drop``: LLM in a Flash computes exactly the predicted set,
false positives included; the quality cost is the perplexity the trace records, not a time).
:func:`computed_set` gives the set the FFN computes either way.
"""

from __future__ import annotations

from sparsesim.simulator.kernels import Work, matvec


def low_rank_work(d_model: int, d_ff: int, rank: int, bytes_per_weight: float) -> Work:
    """One layer's low-rank predictor for one token: d_model -> rank -> d_ff, two calls."""
    return matvec(rank, d_model, bytes_per_weight) + matvec(d_ff, rank, bytes_per_weight)


def mean_rank(ranks: list[int]) -> float:
    """The rank that gives the same total cost as per-layer ``ranks`` (cost is linear in the rank)."""
    return sum(ranks) / len(ranks)


def computed_set(true_mask: int, predicted: int, false_negatives: str) -> int:
    """The neurons the FFN computes (Python-int neuron sets, bit i = neuron i)."""
    if false_negatives == "fetch":
        return true_mask
    if false_negatives == "drop":
        return predicted
    raise ValueError(f"unknown false-negative semantics {false_negatives!r}")   # a caller bug, not input
