"""llama.cpp's expert trace (``examples/moe-trace``, PR #28544): ``layer,expert`` rows, no token index.

The example logs the ``ffn_moe_topk`` id tensor of every MoE layer of every micro-batch, in execution
order: for one batch, layer after layer, and inside a layer ``top_k`` rows per token, token after
token. Tokens are recovered from that order (docs/moe.md, "llama.cpp expert traces"):

1. a **batch** ends where the layer index goes down (the next batch starts again at the first MoE layer);
2. inside a batch, each layer's run of rows holds ``n x top_k`` rows for the batch's ``n`` tokens
   (``n`` from the first MoE layer), and every MoE layer of the file appears once;
3. token ``j`` of the batch owns rows ``j*top_k .. j*top_k+top_k-1`` of every run, in rank order;
4. except the model's last layer, which llama.cpp runs only for the tokens whose logits it outputs:
   its run may hold fewer tokens, ``m <= n``, and they are the batch's last ``m`` tokens (the
   others get no row for that layer: it did not run for them).

``top_k`` is not in the file: the shape file gives it with ``n_experts`` and ``expert_bytes``.
Tokens get consecutive positions in one sequence. Phase: the first ``prompt_tokens`` (shape file)
are prefill; without it, a batch of several tokens is prefill and a one-token batch decode.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sparsesim.errors import InputError
from sparsesim.tracecolumns import DECODE, PREFILL
from sparsesim.tracing.importers.routes import Routes, Shape, group_routes, output_pruning
from sparsesim.tracing.importers.table import parse_numbers, read_lines

NAME = "llama.cpp"
HEADER = "layer,expert"


def detect(head: str) -> bool:
    first = head.splitlines()[0].replace(" ", "") if head else ""
    if first == HEADER:
        return True
    fields = first.split(",")
    return len(fields) == 2 and all(f.isdigit() for f in fields)


def read(path: Path, shape: Shape) -> Routes:
    lines = read_lines(path)
    start = 1 if lines and lines[0].replace(" ", "") == HEADER else 0
    body = [(i + 1, t) for i, t in enumerate(lines[start:], start=start) if t.strip()]
    numbers = np.array([n for n, _ in body], np.int64)
    col = parse_numbers(path, [t for _, t in body], list(numbers), ("layer", "expert"), integers=("layer", "expert"))
    layer, expert = col["layer"].astype(np.int64), col["expert"].astype(np.int64)
    if len(layer) == 0:
        raise InputError(f"{path}: no 'layer,expert' rows")
    if np.any(layer < 0):
        raise InputError(f"{path} line {numbers[np.flatnonzero(layer < 0)[0]]}: negative layer")
    k = shape.integer("top_k", minimum=1)
    if k is None:
        raise InputError(f"{shape.where('top_k')} is required: a llama.cpp expert trace has no token index, so the "
                         f"tokens are counted in top_k rows")
    observed = sorted(set(layer.tolist()))
    moe_layers = shape.moe_layers(len(observed), observed)
    units, n_layers = shape.units(moe_layers, [k] * len(moe_layers))
    batch, token, slot, batch_tokens = _tokens(path, numbers, layer, observed, k, last_layer=n_layers - 1)
    pos = np.r_[0, np.cumsum(batch_tokens)[:-1]][batch] + token   # the batch's first position + token in batch
    prompt = shape.integer("prompt_tokens")
    if prompt is not None:
        phase = np.where(pos < prompt, PREFILL, DECODE).astype(np.int8)
    else:
        phase = np.where(batch_tokens[batch] > 1, PREFILL, DECODE).astype(np.int8)
    grouped = group_routes(path, lambda i: f"{path} line {numbers[i]}", np.zeros(len(layer), np.int64), pos,
                           layer, expert, units, f"the shape file's top_k={k}", slot=slot,
                           per_token={"phase": phase, "batch": batch.astype(np.int32)},
                           skipped=output_pruning(np.zeros(len(layer), np.int64), pos, layer, batch))
    return Routes(source=path, format="llama.cpp moe-trace", model=shape.model(n_layers, path.stem), units=units,
                  seq=grouped["seq"], pos=grouped["pos"], route=grouped["route"], phase=grouped["phase"],
                  batch=grouped["batch"], capture_meta={"engine": "llama.cpp examples/moe-trace",
                                                        "token_rule": "docs/moe.md, llama.cpp expert traces"},
                  inputs=[path] + ([shape.path] if shape.path else []))


def _tokens(path: Path, numbers: np.ndarray, layer: np.ndarray, observed: list[int], k: int, last_layer: int):
    """Batch, token-in-batch and slot of every row, and the tokens of each batch (module docstring rules)."""
    rows = len(layer)
    run_start = np.flatnonzero(np.r_[True, layer[1:] != layer[:-1]])
    run_len = np.diff(np.r_[run_start, rows])
    run_layer = layer[run_start]
    run_batch = np.cumsum(np.r_[True, run_layer[1:] < run_layer[:-1]]) - 1
    bad = np.flatnonzero(run_len % k)
    if len(bad):
        r = bad[0]
        raise InputError(f"{path} line {numbers[run_start[r] + run_len[r] - 1]}: layer {run_layer[r]} has a run of "
                         f"{run_len[r]} rows, not a multiple of the shape file's top_k={k} (the top-k disagrees, or "
                         f"the file is truncated)")
    run_tokens = run_len // k
    n_batches = run_batch[-1] + 1
    per_batch = np.bincount(run_batch, minlength=n_batches)
    short = np.flatnonzero(per_batch != len(observed))
    if len(short):
        b = short[0]
        first = run_start[np.flatnonzero(run_batch == b)[0]]
        missing = sorted(set(observed) - set(run_layer[run_batch == b].tolist()))
        raise InputError(f"{path} line {numbers[first]}: the batch starting here lacks layer "
                         f"{missing[0] if missing else '?'} (every batch runs every MoE layer; file truncated?)")
    batch_tokens = run_tokens[np.r_[0, np.cumsum(per_batch)[:-1]]]     # tokens of each batch, from its first run
    pruned = (run_layer == last_layer) & (run_tokens < batch_tokens[run_batch])
    differ = np.flatnonzero((run_tokens != batch_tokens[run_batch]) & ~pruned)
    if len(differ):
        r = differ[0]
        raise InputError(f"{path} line {numbers[run_start[r]]}: layer {run_layer[r]} routes {run_tokens[r]} tokens "
                         f"in this batch, but its first layer routes {batch_tokens[run_batch[r]]}")
    offset = np.arange(rows) - np.repeat(run_start, run_len)
    first_token = np.repeat(batch_tokens[run_batch] - run_tokens, run_len)   # > 0 only on a pruned last layer
    return np.repeat(run_batch, run_len), first_token + offset // k, offset % k, batch_tokens
