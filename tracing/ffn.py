"""Finding each decoder layer's FFN by module structure, and the model metadata of a trace.

A module is an FFN when its children match one of :data:`PATTERNS` (names are what HF uses
across architecture families, so no model names are hard-coded). The decoder layers are the
``nn.ModuleList`` whose every element holds exactly one FFN. A mixture-of-experts bank
(:func:`is_experts`: matrices of all experts stacked in one tensor) is not an FFN of this kind;
:mod:`sparsesim.tracing.moe` traces those models by expert.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from sparsesim.errors import InputError

ACT_NAMES = ("act_fn", "act", "activation_fn", "activation")


@dataclass(frozen=True)
class Pattern:
    kind: str
    gate: str | None        # gated FFNs only: the projection whose activation gates
    up: str                 # the projection feeding the intermediate (fused gate+up for "fused-gated")
    down: str               # the projection reading the intermediate h: its input is the traced site
    glu: bool


PATTERNS = (
    Pattern("gated", gate="gate_proj", up="up_proj", down="down_proj", glu=True),        # Llama, Gemma, Mistral, Qwen
    Pattern("fused-gated", gate=None, up="gate_up_proj", down="down_proj", glu=True),    # Phi-3
    Pattern("gpt2", gate=None, up="c_fc", down="c_proj", glu=False),                     # GPT-2 (Conv1D)
    Pattern("opt", gate=None, up="fc1", down="fc2", glu=False),                          # OPT, in the layer itself
    Pattern("neox", gate=None, up="dense_h_to_4h", down="dense_4h_to_h", glu=False),     # GPT-NeoX, Pythia
)


@dataclass(frozen=True, eq=False)
class FFN:
    """One layer's FFN: where the intermediate activation h can be observed and changed."""

    layer: int
    layer_path: str         # module path of the decoder layer, e.g. "model.layers.3"
    path: str               # module path of the FFN container, e.g. "model.layers.3.mlp"
    kind: str               # a Pattern.kind
    glu: bool
    down: nn.Module         # its input is h (site "intermediate")
    act: nn.Module          # its output is act(gate(x)) (site "gate" for GLU FFNs)
    weights: tuple[nn.Module, ...]   # the projections: all of the FFN's parameters

    @property
    def d_ff(self) -> int:
        return _in_out(self.down)[0]

    @property
    def d_model(self) -> int:
        return _in_out(self.down)[1]

    def project_down(self, h: torch.Tensor) -> torch.Tensor:
        """h @ W_down without the bias: the FFN output's dependence on h."""
        w = self.down.weight
        return h @ w if isinstance(self.down, Conv1D) else h @ w.T

    @property
    def params(self) -> int:
        return sum(p.numel() for m in self.weights for p in m.parameters())


def _in_out(module: nn.Module) -> tuple[int, int]:
    if isinstance(module, Conv1D):     # GPT-2's Conv1D stores its weight as (in, out)
        return int(module.weight.shape[0]), int(module.weight.shape[1])
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    raise InputError(f"FFN projection {type(module).__name__} is neither nn.Linear nor Conv1D")


def is_experts(module: nn.Module) -> bool:
    """A bank of routed experts: ``num_experts`` E, and its own parameters all stacked per expert
    ([E, ...]) with at least one stacked matrix ([E, rows, cols]). A router ([E, d_model]) is not one."""
    n = getattr(module, "num_experts", None)
    params = list(module.parameters(recurse=False))
    return (isinstance(n, int) and n > 0 and bool(params) and all(p.shape[0] == n for p in params)
            and any(p.dim() == 3 for p in params))


def layers_with_experts(model: nn.Module) -> list[str]:
    """Module paths of every expert bank in ``model``."""
    return [path for path, m in model.named_modules() if is_experts(m)]


def _match(module: nn.Module) -> tuple[Pattern, nn.Module] | None:
    children = dict(module.named_children())
    act = next((children[n] for n in ACT_NAMES if n in children), None)
    if act is None:
        return None
    for pattern in PATTERNS:
        names = [n for n in (pattern.gate, pattern.up, pattern.down) if n]
        if all(n in children for n in names):
            return pattern, act
    return None


def as_ffn(module: nn.Module, layer_index: int, layer_path: str, path: str) -> FFN | None:
    """``module`` as an FFN (at module path ``path``) when its children match a pattern, else None."""
    hit = _match(module)
    if hit is None:
        return None
    pattern, act = hit
    names = [n for n in (pattern.gate, pattern.up, pattern.down) if n]
    return FFN(layer=layer_index, layer_path=layer_path, path=path, kind=pattern.kind, glu=pattern.glu,
               down=getattr(module, pattern.down), act=act, weights=tuple(getattr(module, n) for n in names))


def ffns_in(layer: nn.Module, layer_index: int, prefix: str) -> list[FFN]:
    """Every FFN inside a decoder layer (at any depth)."""
    found = (as_ffn(module, layer_index, prefix, ".".join(p for p in (prefix, path) if p))
             for path, module in layer.named_modules())
    return [f for f in found if f is not None]


def find_ffns(model: nn.Module, name: str) -> list[FFN]:
    """One FFN per decoder layer, or an InputError naming the modules of a layer."""
    banks = layers_with_experts(model)
    if banks:   # its shared expert would match an FFN pattern: never trace it as the layer's FFN
        raise InputError(f"model {name}: mixture-of-experts layers ({banks[0]}, ...); they are traced by expert "
                         f"(sparsesim.tracing.moe), not by FFN neuron")
    lists = decoder_layer_lists(model)
    if not lists:
        raise InputError(f"model {name}: no list of decoder layers (nn.ModuleList) found")
    for path, layers in lists:
        per_layer = [ffns_in(layer, i, f"{path}.{i}") for i, layer in enumerate(layers)]
        if all(len(f) == 1 for f in per_layer):
            ffns = [f[0] for f in per_layer]
            if len({id(f.act) for f in ffns}) != len(ffns):
                raise InputError(f"model {name}: the FFN activation module is shared between layers; "
                                 f"per-layer gate hooks are impossible")
            return ffns
        if any(len(f) > 1 for f in per_layer):
            where = next(f for f in per_layer if len(f) > 1)
            raise InputError(f"model {name}: several FFN candidates in one layer ({', '.join(f.path for f in where)}); "
                             f"mixture-of-experts layers are not supported")
    path, layers = lists[0]
    modules = [n for n, _ in layers[0].named_modules() if n]
    raise InputError(f"model {name}: unknown FFN structure; {path}.0 has modules [{', '.join(modules)}]; "
                     f"expected gate_proj/up_proj/down_proj, gate_up_proj/down_proj, c_fc/c_proj, fc1/fc2 or "
                     f"dense_h_to_4h/dense_4h_to_h next to an activation ({'/'.join(ACT_NAMES)})")


def decoder_layer_lists(model: nn.Module) -> list[tuple[str, nn.ModuleList]]:
    """Non-empty ``nn.ModuleList``s of ``model``, longest first (the decoder layers are one of them)."""
    lists = [(path, m) for path, m in model.named_modules() if isinstance(m, nn.ModuleList) and len(m) > 0]
    return sorted(lists, key=lambda pm: -len(pm[1]))


def count_params(module: nn.Module | None) -> int:
    return 0 if module is None else sum(p.numel() for p in module.parameters())


def activation_name(model: nn.Module, fallback: str) -> str:
    cfg = model.config
    return next((getattr(cfg, k) for k in ("hidden_activation", "hidden_act", "activation_function")
                 if isinstance(getattr(cfg, k, None), str)), fallback)


def model_counts(model: nn.Module, name: str, layers: list[tuple[str, int]]) -> dict:
    """The parameter counts of a trace's ``model`` section; ``layers`` is (decoder layer path, its FFN
    parameters: projections, or experts and shared experts) per layer."""
    cfg = model.config
    total = sum(p.numel() for p in model.parameters())           # tied weights counted once
    ffn_per_layer = [params for _, params in layers]
    emb = model.get_input_embeddings()
    head = model.get_output_embeddings()
    tied = head is not None and emb is not None and head.weight is emb.weight
    attention = 0
    for path, params in layers:
        layer = model.get_submodule(path)
        norms = sum(count_params(c) for c in layer.children() if "norm" in type(c).__name__.lower())
        attention += count_params(layer) - params - norms
    return {
        "name": name,
        "architecture": (getattr(cfg, "architectures", None) or [type(model).__name__])[0],
        "model_type": getattr(cfg, "model_type", ""),
        "n_layers": len(layers),
        "vocab_size": int(emb.weight.shape[0]) if emb is not None else int(cfg.vocab_size),
        "total_params": total,
        "ffn_params": sum(ffn_per_layer),
        "ffn_params_per_layer": ffn_per_layer,
        "non_ffn_params": total - sum(ffn_per_layer),
        "attention_params": attention,
        "embedding_params": count_params(emb),
        # The head reads its whole matrix every token even when it is the tied embedding.
        "lm_head_params": count_params(head),
        "tied_embeddings": bool(tied),
        "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
    }


def model_info(model: nn.Module, ffns: list[FFN], name: str) -> dict:
    """The trace metadata ``model`` section (meanings in docs/trace-format.md)."""
    info = model_counts(model, name, [(f.layer_path, f.params) for f in ffns])
    return {**info, "d_model": ffns[0].d_model, "d_ff": [f.d_ff for f in ffns],
            "activation": activation_name(model, type(ffns[0].act).__name__), "glu": ffns[0].glu,
            "ffn_kind": ffns[0].kind}
