"""vLLM / SGLang ``routed_experts`` arrays: ``[tokens, moe_layers, top_k]`` integer expert ids.

vLLM (``--enable-return-routed-experts``) returns ``routed_experts`` for the generated tokens and
``prompt_routed_experts`` for the prompt; SGLang returns the same array base64-encoded (decode it
with ``np.frombuffer`` and save it). Accepted files: one ``.npy`` array (every token; the shape
file's ``prompt_tokens`` splits prefill from decode), or an ``.npz`` holding ``routed_experts``
and/or ``prompt_routed_experts`` (prompt first). The shape file gives what the array does not:
``n_experts``, ``expert_bytes`` and optionally ``moe_layers``, ``n_layers``, ``model``. Each array is
one sequence; a token's experts are kept in the array's order.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from sparsesim.errors import InputError
from sparsesim.tracecolumns import DECODE, PREFILL
from sparsesim.tracing.importers.routes import Routes, Shape, group_routes

NAME = "routed-experts"
SUFFIXES = (".npy", ".npz")
NPZ_KEYS = ("prompt_routed_experts", "routed_experts")     # in token order: the prompt, then the generation


def detect(path: Path) -> bool:
    return path.suffix in SUFFIXES


def read(path: Path, shape: Shape) -> Routes:
    parts = _arrays(path)
    arrays = [a for _, a in parts]
    n_moe, k = arrays[0].shape[1], arrays[0].shape[2]
    for name, a in parts:
        if a.shape[1:] != (n_moe, k):
            raise InputError(f"{path}: {name} has shape {a.shape}; the other array has [*, {n_moe}, {k}]")
    routes = np.concatenate(arrays).astype(np.int64)
    tokens = len(routes)
    if tokens == 0:
        raise InputError(f"{path}: the routed_experts array has no tokens")
    moe_layers = shape.moe_layers(n_moe)
    units, n_layers = shape.units(moe_layers, [k] * n_moe)
    if len(parts) == 2:
        phase = np.r_[np.full(len(arrays[0]), PREFILL), np.full(len(arrays[1]), DECODE)].astype(np.int8)
    elif parts[0][0] == "prompt_routed_experts":
        phase = np.full(tokens, PREFILL, np.int8)
    else:
        prompt = shape.integer("prompt_tokens")
        if prompt is not None and prompt > tokens:
            raise InputError(f"{shape.where('prompt_tokens')}: {prompt} prompt tokens, but the array has {tokens}")
        phase = None if prompt is None else (np.arange(tokens) >= prompt).astype(np.int8) * DECODE
    tok, moe, slot = np.meshgrid(np.arange(tokens), np.arange(n_moe), np.arange(k), indexing="ij")
    offsets = np.cumsum([0] + [len(a) for a in arrays])

    def locate(i: int) -> str:
        """Element i of the concatenated arrays as NAME[token, moe_layer, slot] of its own array."""
        t, m, s = np.unravel_index(i, routes.shape)
        part = int(np.searchsorted(offsets, t, side="right")) - 1
        return f"{path}: {parts[part][0]}[{t - offsets[part]}, {m}, {s}]"

    grouped = group_routes(path, locate, np.zeros(routes.size, np.int64), tok.ravel(),
                           np.asarray(moe_layers)[moe.ravel()], routes.ravel(), units,
                           f"the array's last axis, {k}", slot=slot.ravel(),
                           per_token=None if phase is None else {"phase": phase[tok.ravel()]})
    model = shape.model(n_layers, path.stem)
    return Routes(source=path, format="routed_experts", model=model, units=units, seq=grouped["seq"],
                  pos=grouped["pos"], route=grouped["route"], phase=grouped.get("phase"),
                  capture_meta={"engine": "vLLM / SGLang routed_experts",
                                "arrays": {name: list(a.shape) for name, a in parts}},
                  inputs=[path] + ([shape.path] if shape.path else []))


def _arrays(path: Path) -> list[tuple[str, np.ndarray]]:
    try:
        loaded = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise InputError(f"{path}: not a readable {path.suffix} array ({type(e).__name__}: "
                         f"{(str(e).splitlines() or ['truncated?'])[0]})") from None
    if isinstance(loaded, np.ndarray):
        parts = [("routed_experts", loaded)]
    else:
        with loaded:
            unknown = sorted(set(loaded.files) - set(NPZ_KEYS))
            if unknown or not loaded.files:
                raise InputError(f"{path}: an .npz of routed experts holds {' and/or '.join(NPZ_KEYS)}, "
                                 f"found {', '.join(loaded.files) or 'nothing'}")
            try:
                parts = [(key, loaded[key]) for key in NPZ_KEYS if key in loaded.files]
            except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
                raise InputError(f"{path}: cannot read its arrays ({type(e).__name__}); file truncated?") from None
    for name, a in parts:
        if a.ndim != 3:
            raise InputError(f"{path}: {name} has rank {a.ndim} (shape {a.shape}); expected rank 3, "
                             f"[tokens, moe_layers, top_k]")
        if not np.issubdtype(a.dtype, np.integer):
            raise InputError(f"{path}: {name} has dtype {a.dtype}; expected integer expert ids")
        if a.shape[1] == 0 or a.shape[2] == 0:
            raise InputError(f"{path}: {name} has shape {a.shape}: no MoE layers or no experts per token")
    return parts
