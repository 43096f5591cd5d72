"""Learned low-rank activation predictors (Deja Vu; LLM in a Flash), trained at trace time.

One predictor per layer maps the FFN input x (the post-norm hidden state entering the FFN,
[d_model]) to the probability that each of the layer's d_ff neurons is active:

    p = sigmoid(B (A x) + b)        A: r x d_model (no bias), B: d_ff x r, b: d_ff

— two linear layers with no nonlinearity between them, so the logits are exactly a rank-r map
(the low-rank predictors of Deja Vu, Liu et al. ICML 2023, arXiv 2310.17157, and of LLM in a
Flash, Alizadeh et al. ACL 2024, arXiv 2312.11514). Training minimises the balanced binary cross
entropy (positives weighted by #inactive / #active, LLM in a Flash's "balanced loss") with Adam;
prediction thresholds p at ``threshold`` (default 0.5).

The simulator replays the predictions from trace columns ``pred:<name>`` (predictor ``stored``)
and needs the metadata of :func:`lowrank_meta` under ``meta["learned"][name]`` to know which
tokens the model was trained on. Accuracy is only ever reported on tokens it was not trained on
(:func:`train_heldout`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch import nn

from sparsesim.errors import InputError
from sparsesim.tracing.ffn import FFN


@dataclass
class LowRankPredictor:
    net: nn.Sequential          # Linear(d_model, r, bias=False), Linear(r, d_ff)
    rank: int
    d_model: int
    d_ff: int
    threshold: float
    train_tokens: int
    epochs: int
    seed: int
    final_loss: float           # mean balanced BCE of the last epoch (training tokens)

    @property
    def params(self) -> int:
        return sum(p.numel() for p in self.net.parameters())

    @property
    def flops(self) -> float:
        """FLOPs of one prediction (one token, this layer): the two matrix-vector products."""
        return 2.0 * (self.d_model * self.rank + self.rank * self.d_ff)


def check_rank(rank: int, d_model: int) -> int:
    if isinstance(rank, bool) or not isinstance(rank, int) or not 1 <= rank <= d_model:
        raise InputError(f"--learned-rank {rank}: must be an integer in [1, d_model = {d_model}]")
    return rank


def train_lowrank(hidden: torch.Tensor, masks: torch.Tensor, rank: int, epochs: int = 20, seed: int = 0, *,
                  lr: float = 3e-3, batch: int = 256, threshold: float = 0.5) -> LowRankPredictor:
    """Fit one layer's predictor on ``hidden`` [N, d_model] and ``masks`` [N, d_ff] (bool)."""
    if hidden.ndim != 2 or masks.ndim != 2 or len(hidden) != len(masks):
        raise InputError(f"low-rank predictor: hidden {tuple(hidden.shape)} and masks {tuple(masks.shape)} must be "
                         f"[N, d_model] and [N, d_ff] for the same N tokens")
    if len(hidden) == 0:
        raise InputError("low-rank predictor: no training tokens")
    if epochs < 1:
        raise InputError(f"low-rank predictor: epochs must be >= 1, got {epochs}")
    n, d_model = hidden.shape
    d_ff = masks.shape[1]
    check_rank(rank, d_model)
    # Seeded init and shuffling without touching the caller's RNG; training works even when the
    # caller (the tracer) runs under inference mode, whose tensors autograd cannot save.
    with torch.random.fork_rng(devices=[]), torch.inference_mode(False), torch.enable_grad():
        torch.manual_seed(seed)
        x = hidden.detach().float().clone()
        y = masks.detach().float().clone()
        active = float(y.sum())
        loss_fn = nn.BCEWithLogitsLoss(pos_weight=torch.tensor((y.numel() - active) / max(active, 1.0)))
        net = nn.Sequential(nn.Linear(d_model, rank, bias=False), nn.Linear(rank, d_ff))
        optimizer = torch.optim.Adam(net.parameters(), lr=lr)
        for _ in range(epochs):
            total = 0.0
            for rows in torch.randperm(n).split(batch):
                optimizer.zero_grad()
                loss = loss_fn(net(x[rows]), y[rows])
                loss.backward()
                optimizer.step()
                total += float(loss.detach()) * len(rows)
    return LowRankPredictor(net=net.eval(), rank=rank, d_model=d_model, d_ff=d_ff, threshold=threshold,
                            train_tokens=n, epochs=epochs, seed=seed, final_loss=total / n)


def predict_lowrank(model: LowRankPredictor, hidden: torch.Tensor) -> torch.Tensor:
    """Predicted active neurons, bool [N, d_ff]."""
    with torch.inference_mode():
        return torch.sigmoid(model.net(hidden.float())) >= model.threshold


def accuracy(predicted: torch.Tensor, masks: torch.Tensor) -> dict:
    """Counters and precision / recall / F1 of bool predictions against bool masks."""
    tp = int((predicted & masks).sum())
    fp = int((predicted & ~masks).sum())
    fn = int((~predicted & masks).sum())
    return {"tokens": int(len(masks)), "tp": tp, "fp": fp, "fn": fn,
            "precision": tp / (tp + fp) if tp + fp else float("nan"),
            "recall": tp / (tp + fn) if tp + fn else float("nan"),
            "f1": 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else float("nan")}


def train_heldout(hidden: Sequence[torch.Tensor], masks: Sequence[torch.Tensor], train_rows: np.ndarray,
                  eval_rows: np.ndarray, rank: int, epochs: int = 20, seed: int = 0,
                  ) -> tuple[list[LowRankPredictor], list[dict]]:
    """Train one predictor per layer on ``train_rows`` and score it on the disjoint ``eval_rows`` only.

    ``hidden[l]`` [N, d_model] and ``masks[l]`` [N, d_ff] are layer l's FFN inputs and masks for
    the same N tokens. Returns the models and, per layer, :func:`accuracy` on the eval rows.
    """
    train_rows, eval_rows = np.asarray(train_rows), np.asarray(eval_rows)
    overlap = np.intersect1d(train_rows, eval_rows)
    if overlap.size:
        raise InputError(f"low-rank predictor: {overlap.size} tokens are in both the training and the evaluation "
                         f"set (e.g. row {int(overlap[0])}); accuracy must come from unseen tokens")
    if eval_rows.size == 0:
        raise InputError("low-rank predictor: no evaluation tokens to report accuracy on")
    train_index, eval_index = torch.from_numpy(train_rows), torch.from_numpy(eval_rows)
    models, report = [], []
    for layer, (h, m) in enumerate(zip(hidden, masks)):
        model = train_lowrank(h[train_index], m[train_index], rank, epochs, seed + layer)
        models.append(model)
        report.append(accuracy(predict_lowrank(model, h[eval_index]), m[eval_index].bool()))
    return models, report


def lowrank_meta(models: Sequence[LowRankPredictor], *, input_offset: int, train_rows: tuple[int, int] | None,
                 heldout: Sequence[dict] | None = None, train_text: dict | None = None) -> dict:
    """The ``meta["learned"][name]`` record that predictor ``stored`` requires (docs/predictors.md).

    ``input_offset`` s: layer l's prediction was computed from layer l - s's FFN input.
    ``train_rows``: [start, stop) of this trace's rows the models were trained on, or None when
    they were trained on other text (``train_text`` then says which). ``heldout``: per-layer
    :func:`accuracy` on unseen tokens.
    """
    first = models[0]
    meta = {
        "kind": "lowrank-mlp", "rank": first.rank, "d_model": first.d_model, "d_ff": [m.d_ff for m in models],
        "threshold": first.threshold, "epochs": first.epochs, "seed": first.seed,
        "train_tokens": first.train_tokens, "train_rows": None if train_rows is None else [int(x) for x in train_rows],
        "train_text": train_text, "input_offset": int(input_offset),
        "params": sum(m.params for m in models), "params_per_layer": [m.params for m in models],
        "flops_per_layer": max(m.flops for m in models), "flops_per_token": sum(m.flops for m in models),
    }
    if heldout is not None:
        meta["heldout"] = {key: [r[key] for r in heldout] for key in ("tokens", "precision", "recall", "f1")}
    return meta


class HiddenCapture:
    """Context manager: record every layer's FFN input during forward passes.

    Hooks the input of each FFN's first projection (gate/up/fc1: ``FFN.weights[0]``), which is
    the FFN input for every supported structure. Use it inside :class:`sparsesim.tracing.sparsify.SparseFFN`
    to capture the hidden states of the sparse model in the same pass that records the masks.
    """

    def __init__(self, ffns: Sequence[FFN]):
        self.ffns = list(ffns)
        self.inputs: list[list[torch.Tensor]] = [[] for _ in self.ffns]
        self._handles: list = []

    def __enter__(self) -> "HiddenCapture":
        for i, ffn in enumerate(self.ffns):
            self._handles.append(ffn.weights[0].register_forward_pre_hook(
                lambda module, args, i=i: self.inputs[i].append(args[0].detach().reshape(-1, args[0].shape[-1]))))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def take(self) -> list[torch.Tensor]:
        """Per layer, the FFN inputs [tokens, d_model] recorded since the last take (in token order)."""
        out = [torch.cat(chunks) if chunks else torch.empty(0) for chunks in self.inputs]
        self.inputs = [[] for _ in self.ffns]
        return out


def capture_ffn_inputs(model: nn.Module, input_ids: torch.Tensor, ffns: Sequence[FFN]) -> list[torch.Tensor]:
    """One forward pass over ``input_ids`` [B, T]; per layer the FFN inputs [B*T, d_model]."""
    with HiddenCapture(ffns) as capture, torch.inference_mode():
        model(input_ids=input_ids, use_cache=False)
    return capture.take()
