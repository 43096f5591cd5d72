"""Zero-enforcing FFN activation sparsity in the forward pass, and in-graph mask recording.

:class:`SparseFFN` hooks every layer's site (the input of the down projection for site
``intermediate``; the output of the activation module for site ``gate`` on GLU FFNs). At the
hook a :class:`MaskRule` decides which neurons are active; inactive values are set to zero, so
later layers, the recorded masks and the perplexity all see the sparse model. Exact zeros are
never active (a zero neuron needs no weights), which is how natural sparsity shows in masks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from tracing.ffn import FFN

SITES = ("intermediate", "gate")
# Threshold 0 would make exact zeros active under |h| >= T; the smallest positive float keeps
# "active" == "|h| >= T and h != 0" with a single comparison.
SMALLEST_POSITIVE = float(np.nextafter(np.float32(0), np.float32(1)))
# Multiplying 8 little-endian 0/1 bytes (one int64) by this constant gathers byte j into bit
# 56 + j without carries (all partial products land on distinct bits); >> 56 then yields the
# packed byte. It wraps on overflow, which is the intended mod-2**64 arithmetic.
_GATHER_BITS = 0x0102040810204080


def pack_bits(mask: torch.Tensor) -> torch.Tensor:
    """``np.packbits(mask, axis=-1, bitorder="little")`` in torch, for the whole tensor at once."""
    width = mask.shape[-1]
    if width % 8:
        mask = torch.nn.functional.pad(mask, (0, 8 - width % 8))
    words = mask.contiguous().view(torch.uint8).reshape(*mask.shape[:-1], -1, 8).view(torch.int64).squeeze(-1)
    return torch.bitwise_right_shift(words * _GATHER_BITS, 56).to(torch.uint8)


def hook_site(ffn: FFN, site: str, fn: Callable[[int, torch.Tensor], torch.Tensor | None]):
    """Call ``fn(layer, value)`` on the site's value in every forward; a returned tensor replaces it."""
    if site == "gate" and ffn.glu:
        # act(gate(x)) zeroed => h = act(gate(x)) * up(x) is zero for the same neurons.
        return ffn.act.register_forward_hook(lambda m, args, out: fn(ffn.layer, out))

    def pre(m, args):  # site intermediate; for a plain FFN act(fc1(x)) *is* the down projection's input
        new = fn(ffn.layer, args[0])
        return None if new is None else (new, *args[1:])
    return ffn.down.register_forward_pre_hook(pre)


class MaskRule:
    """Decides the active neurons of one layer from the magnitudes ``a = |site value|``."""

    def __call__(self, layer: int, a: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


@dataclass
class ThresholdRule(MaskRule):
    """Active when |h| >= T_l (per-layer thresholds; ``percentile`` and ``global``)."""

    thresholds: list[float]

    def __post_init__(self) -> None:
        self._t = [max(float(t), SMALLEST_POSITIVE) for t in self.thresholds]

    def __call__(self, layer: int, a: torch.Tensor) -> torch.Tensor:
        return a >= self._t[layer]


@dataclass
class TopKRule(MaskRule):
    """The ``keep[l]`` largest |h| of each token are active (exact per-token count)."""

    keep: list[int]

    def __call__(self, layer: int, a: torch.Tensor) -> torch.Tensor:
        k = self.keep[layer]
        if k >= a.shape[-1]:
            return a != 0
        top = torch.topk(a, k, dim=-1, sorted=False).indices
        return torch.zeros_like(a, dtype=torch.bool).scatter_(-1, top, True) & (a != 0)


@dataclass
class CalibrateRule(MaskRule):
    """Sets T_l in-graph to the ``levels[l]`` quantile of |h| pooled over all tokens of the pass.

    Run over the calibration batch in one forward pass, each layer's threshold is computed on the
    activations that layer sees in the *sparse* model (earlier layers already zero-enforced), so
    the measured sparsity on other text lands on the target.
    """

    levels: list[float]
    thresholds: list[float] = field(default_factory=list)

    def __call__(self, layer: int, a: torch.Tensor) -> torch.Tensor:
        flat = a.reshape(-1)
        k = min(int(round(self.levels[layer] * flat.numel())), flat.numel() - 1)   # values to make inactive
        # T = the (k+1)-th smallest |h|: exactly k values lie below it (barring ties).
        t = 0.0 if k == 0 else float(torch.kthvalue(flat, k + 1).values)
        assert layer == len(self.thresholds), "calibration hooks must fire once per layer, in order"
        self.thresholds.append(t)
        return a >= max(t, SMALLEST_POSITIVE)


class SparseFFN:
    """Context manager: zero-enforcing hooks on every FFN; optional mask recording and counting.

    ``record``: keep each layer's mask of the current forward; :meth:`take_packed` packs all
    layers of the window at once. ``count``: accumulate active neurons per layer (for measured
    sparsity without recording).
    """

    def __init__(self, ffns: list[FFN], site: str, rule: MaskRule, *, record: bool = False, count: bool = False):
        if site not in SITES:
            raise ValueError(f"site {site!r} not in {SITES}")
        self.ffns, self.site, self.rule, self.record, self.count = ffns, site, rule, record, count
        self.width = max(f.d_ff for f in ffns)
        self._masks: list[torch.Tensor | None] = [None] * len(ffns)
        self.active = torch.zeros(len(ffns), dtype=torch.int64)
        self.tokens = 0                 # tokens seen per layer (for counting)
        self._handles: list = []

    def _apply(self, layer: int, value: torch.Tensor) -> torch.Tensor:
        mask = self.rule(layer, value.abs())
        if self.record:
            self._masks[layer] = mask
        if self.count:
            self.active[layer] += mask.sum()
            if layer == 0:
                self.tokens += mask.numel() // mask.shape[-1]
        return torch.where(mask, value, 0.0)

    def __enter__(self) -> "SparseFFN":
        self._handles = [hook_site(f, self.site, self._apply) for f in self.ffns]
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def take_packed(self) -> np.ndarray:
        """Packed masks of the last forward: uint8 [batch, tokens, layers, ceil(max d_ff / 8)]."""
        masks = [torch.nn.functional.pad(m, (0, self.width - m.shape[-1])) if m.shape[-1] < self.width else m
                 for m in self._masks]
        self._masks = [None] * len(self.ffns)
        return pack_bits(torch.stack(masks, dim=-2)).numpy()
