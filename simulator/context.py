"""Prefill and decode, and the KV cache that grows with the context.

**Decode** at position p reads, per layer, the K and V rows of the p earlier positions: ``2 p kv_dim``
values at the compute precision, and does ``4 p d_q`` FLOPs (scores and weighted sum over d_q query
width; d_q = d_model here) — :func:`kv_work`. It grows linearly with the context; at batch 1 and
short contexts it is small next to the weights (OPT-6.7B at p = 256, fp32: 268 MB against 26.6 GB).

**Prefill** of n prompt tokens reads every weight once and multiplies it with n vectors: a
matrix-matrix product, ``2 n params`` FLOPs, usually compute-bound — :func:`prefill_work` (attention
over the prompt adds ``2 n^2 d_model`` FLOPs per layer).

**kv_dim** (the width of K, and of V, per layer) is ``n_kv_heads x head_dim``. A trace's metadata may
give it as ``kv_dim``; traced models do not record it yet, so they need the scenario's ``kv_dim``. For
synthetic shapes (whose attention parameters are built as d_model x d_model query and output
projections plus two d_model x kv_dim ones) :func:`kv_dim_from_meta` derives it:
``kv_dim = (attention / layers - 2 d_model^2) / (2 d_model)`` — OPT 4096 (multi-head), Llama-2 4096,
Mistral 1024 (grouped), Falcon 64 (multi-query). The same arithmetic on a real model can mislead
without any sign (Gemma 3 270M: a 1024-wide query on d_model 640 gives 640 for a true 256), which
is why it is not applied there.
"""

from __future__ import annotations

from typing import Any, Mapping

from sparsesim.errors import InputError
from sparsesim.simulator.kernels import Work


def kv_dim_from_meta(model: Mapping[str, Any]) -> int:
    """K (= V) width per layer from the trace metadata (see the module docstring for the rule)."""
    if model.get("kv_dim"):
        return int(model["kv_dim"])
    d, layers = int(model["d_model"]), int(model["n_layers"])
    attention = model.get("attention_params")
    if model.get("architecture") != "synthetic" or attention is None:
        raise InputError(f"model {model.get('name')!r}: the trace does not record its KV width; give scenario field "
                         f"'kv_dim' (n_kv_heads x head_dim)")
    derived = (float(attention) / layers - 2.0 * d * d) / (2.0 * d)
    width = int(round(derived))
    if not 0 < width <= d or abs(derived - width) > 0.01 * width:
        raise InputError(f"model {model.get('name')!r}: its attention parameters ({attention}) do not fit d_model x "
                         f"d_model query/output projections (derived KV width {derived:.1f}); give scenario field "
                         f"'kv_dim' (n_kv_heads x head_dim)")
    return width


def kv_work(position: int, n_layers: int, d_model: int, kv_dim: int, bytes_per_value: float) -> Work:
    """Attention over the KV cache of ``position`` earlier tokens, all layers, one decode step."""
    return Work(2.0 * position * kv_dim * bytes_per_value * n_layers, 4.0 * position * d_model * n_layers,
                2 * n_layers)


def prefill_work(params: float, prompt_tokens: int, n_layers: int, d_model: int, bytes_per_weight: float) -> Work:
    """A prompt of ``prompt_tokens`` tokens through ``params`` weights (read once), with attention."""
    n = prompt_tokens
    return Work(params * bytes_per_weight, 2.0 * params * n + 2.0 * n * n * d_model * n_layers, 0)
