"""Mixture-of-experts layers found by structure, and the router's choices recorded as expert masks.

In every decoder layer the **expert bank** is the module whose own parameters stack all experts'
matrices (:func:`sparsesim.tracing.ffn.is_experts`): Mixtral, Qwen2-MoE, Qwen3-MoE, OLMoE, gpt-oss,
DeepSeek-V2/V3 and Gemma 4 all hold one, and all call it as ``experts(hidden, top_k_index,
top_k_weights)`` with the router's output. A pre-forward hook on the bank therefore sees exactly
the experts each token runs and their weights, whatever the router computed (softmax, sigmoid,
group-limited, biased, scaled). FFNs next to the bank (children of its parent: Qwen2-MoE's
``shared_expert``, DeepSeek's ``shared_experts``, Gemma 4's dense ``mlp``) run for every token: they
are the layer's always-active (shared) units. A layer without a bank is dense: its one FFN is its
always-active unit. No model names are used.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from sparsesim.errors import InputError
from sparsesim.tracing.ffn import (FFN, activation_name, as_ffn, count_params, decoder_layer_lists, ffns_in,
                                   is_experts, model_counts)
from sparsesim.traceunits import TraceUnits


@dataclass(frozen=True, eq=False)
class MoELayer:
    """One decoder layer of a mixture-of-experts model."""

    layer: int
    layer_path: str                   # e.g. "model.layers.3"
    experts_path: str | None          # the expert bank, None on a dense layer
    experts: nn.Module | None
    n_experts: int                    # 0 on a dense layer
    shared: tuple[FFN, ...]           # always-active FFNs (shared experts; a dense layer's FFN)
    block: nn.Module | None = None    # the MoE block holding the bank, when called as block(hidden_states)

    @property
    def expert_params(self) -> int:
        """Parameters of one routed expert (the bank's, divided by its experts)."""
        return count_params(self.experts) // self.n_experts if self.experts is not None else 0

    @property
    def shared_params(self) -> int:
        return self.shared[0].params if self.shared else 0

    @property
    def ffn_params(self) -> int:
        return count_params(self.experts) + sum(f.params for f in self.shared)


def find_moe_layers(model: nn.Module, name: str) -> list[MoELayer] | None:
    """Every decoder layer's expert bank and always-active FFNs; None for a model without experts."""
    banks = [path for path, m in model.named_modules() if is_experts(m)]
    if not banks:
        return None
    for path, layers in decoder_layer_lists(model):   # the longest list holding a bank: the decoder layers
        if any(b.startswith(f"{path}.") for b in banks):
            return [_layer(name, path, i, layer) for i, layer in enumerate(layers)]
    raise InputError(f"model {name}: expert banks ({banks[0]}, ...) found outside any list of decoder layers")


def _layer(name: str, list_path: str, index: int, layer: nn.Module) -> MoELayer:
    prefix = f"{list_path}.{index}"
    banks = [(p, m) for p, m in layer.named_modules() if is_experts(m)]
    if len(banks) > 1:
        raise InputError(f"model {name}: layer {prefix} holds {len(banks)} expert banks "
                         f"({', '.join(p for p, _ in banks)}); one per layer is supported")
    if not banks:
        ffns = ffns_in(layer, index, prefix)
        if len(ffns) != 1:
            raise InputError(f"model {name}: layer {prefix} has no expert bank and {len(ffns)} FFNs; a dense layer "
                             f"of a mixture-of-experts model needs exactly one")
        return MoELayer(index, prefix, None, None, 0, (ffns[0],))
    path, bank = banks[0]
    parent_path = path.rpartition(".")[0]
    parent = layer.get_submodule(parent_path) if parent_path else layer
    shared = tuple(_shared(parent, index, prefix, parent_path))
    if len({f.params for f in shared}) > 1:
        raise InputError(f"model {name}: layer {prefix} has shared experts of different sizes "
                         f"({', '.join(f.path for f in shared)}); one size per layer is supported")
    _check_call(name, bank, f"{prefix}.{path}")
    return MoELayer(index, prefix, f"{prefix}.{path}", bank, int(bank.num_experts), shared,
                    parent if parent_path and _one_input(parent) else None)


def _one_input(module: nn.Module) -> bool:
    """The module is called with the hidden states alone (a sparse MoE block, not a decoder layer)."""
    params = [p for p in inspect.signature(module.forward).parameters.values()
              if p.default is inspect.Parameter.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return len(params) == 1


def _shared(parent: nn.Module, index: int, prefix: str, parent_path: str) -> list[FFN]:
    """FFN-pattern children of the bank's parent: they run for every token."""
    found = (as_ffn(child, index, prefix, ".".join(p for p in (prefix, parent_path, child_name) if p))
             for child_name, child in parent.named_children())
    return [f for f in found if f is not None]


def _check_call(name: str, bank: nn.Module, path: str) -> None:
    params = list(inspect.signature(bank.forward).parameters)
    if len(params) < 3:
        raise InputError(f"model {name}: expert bank {path} is called as forward({', '.join(params)}); expected "
                         f"forward(hidden_states, top_k_index, top_k_weights)")


def units_of(layers: list[MoELayer], top_k: list[int]) -> TraceUnits:
    """The trace's expert units: routed experts, shared experts (a dense layer's FFN as one), their parameters."""
    return TraceUnits.experts(
        count=[l.n_experts for l in layers], top_k=top_k, shared=[len(l.shared) for l in layers],
        unit_params=[l.expert_params if l.n_experts else None for l in layers],
        shared_params=[l.shared_params if l.shared else None for l in layers])


def moe_model_info(model: nn.Module, layers: list[MoELayer], name: str, top_k: list[int]) -> dict:
    """The trace metadata ``model`` section of a mixture-of-experts model (docs/trace-format.md)."""
    info = model_counts(model, name, [(l.layer_path, l.ffn_params) for l in layers])
    emb = model.get_input_embeddings()
    return {**info, "d_model": int(emb.weight.shape[1]), "activation": activation_name(model, "unknown"),
            "moe_layers": [l.layer for l in layers if l.n_experts],
            "experts_paths": [l.experts_path for l in layers], "top_k": top_k}


class RouteRecorder:
    """Context manager: record each expert bank's ``top_k_index`` and ``top_k_weights`` in every forward.

    :meth:`take` returns the last forward's routes as ``route [tokens, layers, k]`` (expert ids by
    descending weight, -1 padding and on dense layers) and ``weight`` (float32, NaN padding).
    """

    def __init__(self, layers: list[MoELayer]):
        self.layers = layers
        self._seen: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self._handles: list = []

    def _hook(self, layer: int, bank: nn.Module):
        names = list(inspect.signature(bank.forward).parameters)

        def pre(module, args, kwargs):
            bound = dict(zip(names, args)) | kwargs
            index, weights = bound[names[1]], bound[names[2]]
            self._seen[layer] = (index.detach().reshape(-1, index.shape[-1]),
                                 weights.detach().reshape(-1, weights.shape[-1]))
        return pre

    def __enter__(self) -> "RouteRecorder":
        self._handles = [l.experts.register_forward_pre_hook(self._hook(l.layer, l.experts), with_kwargs=True)
                         for l in self.layers if l.experts is not None]
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def top_k(self) -> list[int]:
        """Experts per token of each layer in the last forward (0 on dense layers)."""
        return [self._seen[l.layer][0].shape[-1] if l.experts is not None else 0 for l in self.layers]

    def take(self, width: int) -> tuple[np.ndarray, np.ndarray]:
        missing = [l.layer for l in self.layers if l.experts is not None and l.layer not in self._seen]
        if missing:
            raise InputError(f"expert bank of layer {missing[0]} did not run in the forward pass")
        tokens = next(iter(self._seen.values()))[0].shape[0]
        route = np.full((tokens, len(self.layers), width), -1, np.int16)
        weight = np.full((tokens, len(self.layers), width), np.nan, np.float32)
        for layer, (index, w) in self._seen.items():
            w = w.float().cpu()
            order = torch.argsort(w, dim=-1, descending=True, stable=True)
            k = index.shape[-1]
            route[:, layer, :k] = torch.gather(index.cpu(), -1, order).numpy()
            weight[:, layer, :k] = torch.gather(w, -1, order).numpy()
        self._seen.clear()
        return route, weight


class _Routed(Exception):
    """Raised by the bank's hook to stop a router-ahead call once the router has chosen."""

    def __init__(self, index: torch.Tensor):
        super().__init__()
        self.index = index


class RouterAhead:
    """Context manager: the router-ahead prediction, layer l's router applied one layer early.

    Sources: Hwang et al., "Pre-gated MoE", ISCA 2024 (arXiv 2308.12066), which selects layer l's
    experts one block early (with a trained pre-gate), and expert-offloading systems that prefetch by
    running a later layer's own gate on the current hidden state (e.g. HOBBIT's layer-level prefetching,
    arXiv 2411.01433): the hidden state entering layer l-1's MoE block goes through layer l's routing,
    so layer l's experts can be fetched while layer l-1 computes. Here layer l's own MoE block is called on that hidden state and stopped at its
    expert bank, so the prediction is exactly what layer l's router (softmax, sigmoid, groups, biases)
    chooses for it. Layers whose block is not called as ``block(hidden_states)`` (Gemma 4 routes
    inside the decoder layer), the first MoE layer and a layer after a dense one get no prediction.
    """

    def __init__(self, layers: list[MoELayer]):
        self.pairs = [(prev, cur) for prev, cur in zip(layers, layers[1:])
                      if prev.block is not None and cur.block is not None]
        self._inputs: dict[int, torch.Tensor] = {}
        self._handles: list = []
        self._predicting = False   # the blocks called by take() are not the model's forward

    @property
    def available(self) -> bool:
        return bool(self.pairs)

    def _keep(self, layer: int):
        def pre(module, args, kwargs):
            if not self._predicting:
                x = args[0] if args else next(iter(kwargs.values()))
                self._inputs[layer] = x.detach()
        return pre

    def __enter__(self) -> "RouterAhead":
        self._handles = [prev.block.register_forward_pre_hook(self._keep(prev.layer), with_kwargs=True)
                         for prev, _ in self.pairs]
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def take(self, n_layers: int, width: int) -> np.ndarray:
        """The last forward's predictions: routed ids [tokens, layers, width] (-1: none), row l predicted
        for layer l from layer l-1's MoE input. Call after the forward (and after the route recorder's
        ``take``): the calls here run each block's router again, never its experts."""
        first = next(iter(self._inputs.values()), None)
        tokens = 0 if first is None else first.reshape(-1, first.shape[-1]).shape[0]
        out = np.full((tokens, n_layers, width), -1, np.int16)

        def stop(module, args, kwargs):
            names = list(inspect.signature(module.forward).parameters)
            raise _Routed((dict(zip(names, args)) | kwargs)[names[1]])

        self._predicting = True
        try:
            for prev, cur in self.pairs:
                handle = cur.experts.register_forward_pre_hook(stop, with_kwargs=True, prepend=True)
                try:
                    with torch.no_grad():
                        cur.block(self._inputs[prev.layer])
                    raise InputError(f"router-ahead: the expert bank of layer {cur.layer} was not called")
                except _Routed as routed:
                    index = routed.index.reshape(tokens, -1).cpu().numpy()
                    out[:, cur.layer, :index.shape[1]] = index
                finally:
                    handle.remove()
        finally:
            self._predicting = False
            self._inputs.clear()
        return out
