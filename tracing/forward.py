"""Teacher-forced forward passes over text windows, and their negative log-likelihood.

Protocol (as in shared/reference/models_and_data.md): the evaluation tokens are cut into
non-overlapping windows of ``window`` tokens (the last may be shorter); a window with targets
y[0..n) is fed as [BOS, y[0], ..., y[n-2]], so every target is predicted and the first one from
BOS alone. The base model produces hidden states; the LM head runs in chunks so a 262K-entry
vocabulary never materialises a [window, vocab] logits matrix for the whole window.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from sparsesim.errors import InputError
from sparsesim.tracing.models import LoadedModel

HEAD_CHUNK = 256  # tokens per LM-head chunk: [256, 262144] fp32 logits = 268 MB


@dataclass(frozen=True)
class Window:
    index: int
    start: int                   # offset of targets[0] in the evaluation span
    targets: np.ndarray          # int64 [n]
    inputs: np.ndarray           # int64 [n]: BOS, targets[:-1]


def windows(ids: np.ndarray, window: int, bos: int) -> list[Window]:
    out = []
    for i, start in enumerate(range(0, len(ids), window)):
        y = ids[start:start + window]
        out.append(Window(i, start, y, np.concatenate([[bos], y[:-1]]).astype(np.int64)))
    return out


def batch_inputs(ids: np.ndarray, window: int, bos: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Equal windows of ``min(window, len(ids))`` tokens as one batch (inputs, targets); a remainder is dropped."""
    w = min(window, len(ids))
    y = torch.from_numpy(ids[:len(ids) // w * w].reshape(-1, w))
    x = torch.cat([torch.full((y.shape[0], 1), bos, dtype=torch.int64), y[:, :-1]], dim=1)
    return x, y


def hidden_states(lm: LoadedModel, inputs: torch.Tensor) -> torch.Tensor:
    """Final hidden states [B, T, d_model] (after the final norm), no KV cache."""
    with torch.inference_mode():
        out = lm.model.base_model(input_ids=inputs, use_cache=False)
    return out.last_hidden_state


def _head(lm: LoadedModel, hidden: torch.Tensor) -> torch.Tensor:
    logits = lm.model.get_output_embeddings()(hidden)
    cap = getattr(lm.model.config, "final_logit_softcapping", None)
    if cap:   # Gemma-2-style soft capping, applied by the CausalLM head
        logits = torch.tanh(logits / cap) * cap
    return logits


def nll_sum(lm: LoadedModel, hidden: torch.Tensor, targets: torch.Tensor) -> float:
    """Sum of -log p(target) over all positions, computing the head chunk by chunk."""
    h = hidden.reshape(-1, hidden.shape[-1])
    y = targets.reshape(-1)
    total = 0.0
    with torch.inference_mode():
        for s in range(0, len(y), HEAD_CHUNK):
            total += float(F.cross_entropy(_head(lm, h[s:s + HEAD_CHUNK]), y[s:s + HEAD_CHUNK], reduction="sum"))
    return total


def check_head(lm: LoadedModel) -> None:
    """Refuse perplexity for a model whose logits are not ``head(hidden)`` (e.g. extra logit scaling)."""
    x = torch.arange(1, 9, dtype=torch.int64)[None] % lm.info["vocab_size"]
    with torch.inference_mode():
        full = lm.model(input_ids=x, use_cache=False).logits
        ours = _head(lm, hidden_states(lm, x))
    if not torch.allclose(full, ours, rtol=1e-4, atol=1e-4):
        raise InputError(f"model {lm.name}: its logits are not the output embedding of the final hidden state; "
                         f"perplexity is not supported for this architecture (use --no-ppl)")
