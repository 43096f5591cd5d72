"""``sparsesim inspect``: a summary of one trace file (no torch; reads the file's own data).

The whole file is read, row group by row group (bounded memory), so the summary also checks it:
every column against its checksum, mask bits against the layer widths, ``active`` against the
masks' popcounts. Measured sparsity per layer is recomputed from ``active``. A trace written
before checksums existed is summarised too, and says "no checksum".
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from sparsesim.errors import InputError
from sparsesim.tracecolumns import DECODE, PREFILL, optional_columns
from sparsesim.tracefile import (checksum_status, extra_columns, iter_trace_blocks, mask_bytes, popcount_rows,
                                 read_meta, read_trace)
from sparsesim.traceunits import EXPERT, TraceUnits


def inspect_trace(path: str | os.PathLike) -> dict:
    """Everything ``inspect`` shows, as a JSON-ready dict."""
    p = Path(path)
    meta, pf = read_meta(p)
    if TraceUnits.from_meta(meta, str(p)).kind == EXPERT:
        return _inspect_experts(p, meta, pf)
    model = meta["model"]
    n_layers, d_ff = int(model["n_layers"]), [int(d) for d in model["d_ff"]]
    tokens, active_sum, sequences = 0, np.zeros(n_layers, dtype=np.int64), set()
    for block in iter_trace_blocks(p):   # checksums, widths and layer order verified as it reads
        if not np.array_equal(popcount_rows(block["masks"]), block["active"]):
            raise InputError(f"{p}: column 'active' disagrees with the popcount of 'mask' (corrupt file)")
        tokens += len(block["seq"])
        active_sum += block["active"].sum(axis=0)
        sequences.update(np.unique(block["seq"]).tolist())
    measured = (1.0 - active_sum / tokens / np.asarray(d_ff)).tolist() if tokens else []
    sparsity = _mapping(meta.get("sparsity"))
    row_group = pf.metadata.row_group(0) if pf.metadata.num_row_groups else None
    return {
        "path": str(p),
        "format_version": meta["format_version"],
        "file_bytes": p.stat().st_size,
        "rows": pf.metadata.num_rows,
        "tokens": tokens,
        "sequences": len(sequences),
        "integrity": checksum_status(meta),
        "row_groups": pf.metadata.num_row_groups,
        "mask_bytes": mask_bytes(d_ff),
        "compression": row_group.column(0).compression if row_group else None,
        "extra_columns": extra_columns(pf),
        "model": {k: model.get(k) for k in ("name", "architecture", "n_layers", "d_model", "d_ff", "activation",
                                            "glu", "ffn_params", "non_ffn_params", "vocab_size")},
        "sparsity": {k: sparsity.get(k) for k in ("method", "site", "target", "thresholds", "natural")},
        "measured_sparsity": measured,
        "measured_sparsity_mean": float(np.mean(measured)) if measured else None,
        "text": _mapping(meta.get("text")),
        "perplexity": _mapping(meta.get("perplexity")),
        "tools": meta.get("tools"),
    }


def _inspect_experts(p: Path, meta: dict, pf) -> dict:
    """An expert trace: its units, the token cycle, and per layer how many experts the rows touched."""
    trace = read_trace(p)
    units = trace.units
    touched = [int(np.unique(trace.route[:, layer][trace.route[:, layer] >= 0]).size) if trace.route is not None
               else int(np.count_nonzero(np.bitwise_or.reduce(trace.masks[:, layer], axis=0)))
               for layer in range(units.n_layers)]
    sizes = [units.unit_bytes[l] for l in range(units.n_layers)]
    return {
        "path": str(p), "format_version": meta["format_version"], "file_bytes": p.stat().st_size,
        "rows": pf.metadata.num_rows, "tokens": trace.n_tokens,
        "sequences": int(len(np.unique(trace.seq))), "row_groups": pf.metadata.num_row_groups,
        "integrity": checksum_status(meta),
        "mask_bytes": units.mask_bytes, "unit": EXPERT, "model": meta["model"], "units": units.to_meta(),
        "dense_layers": list(units.dense_layers),
        "cycle_bytes": units.cycle_bytes() if all(s is not None for s, k in zip(sizes, units.top_k) if k) else None,
        "phases": None if trace.phase is None else {"prefill": int((trace.phase == PREFILL).sum()),
                                                    "decode": int((trace.phase == DECODE).sum())},
        "columns": optional_columns(pf.schema_arrow),
        "experts_touched": touched,
        "source": _mapping(meta.get("source")),
        "capture_summary": _mapping(_mapping(_mapping(meta.get("capture")).get("metrics")).get("summary")),
    }


def _mapping(value) -> dict:
    """A descriptive metadata section as a mapping ({} when absent or not one: shown as unknown)."""
    return value if isinstance(value, dict) else {}


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def format_summary(info: dict) -> str:
    """The text summary. Descriptive metadata (text, perplexity, thresholds, parameter counts) is
    shown as written, or ``?`` where it is not the number or mapping a tracer writes."""
    if info.get("unit") == EXPERT:
        return _format_experts(info)
    m, s, ppl = info["model"], info["sparsity"], info["perplexity"]
    thresholds = s.get("thresholds")
    if not (isinstance(thresholds, list) and len(thresholds) >= len(info["measured_sparsity"])
            and all(map(_is_number, thresholds))):
        thresholds = None
    lines = [
        f"trace      {info['path']}  (format v{info['format_version']}, {info['file_bytes'] / 1e6:.1f} MB, "
        f"{info['row_groups']} row groups, compression {info['compression']})",
        f"rows       {info['rows']:,} = {info['tokens']:,} tokens x {m['n_layers']} layers in "
        f"{info['sequences']} sequences; mask {info['mask_bytes']} bytes/row",
        f"model      {m['name']} ({m['architecture']}): d_model {m['d_model']}, d_ff {_compact(m['d_ff'])}, "
        f"{m['activation']}{' GLU' if m['glu'] else ''}; FFN {_params(m['ffn_params'])}, "
        f"non-FFN {_params(m['non_ffn_params'])} params",
        f"sparsity   {s['method'] or '?'} at site {s['site'] or '?'}, target {s['target']}",
        f"integrity  {info['integrity']}",
    ]
    for kind, label in (("calibration", "calib"), ("evaluation", "eval")):
        t = _mapping(info["text"].get(kind))
        if t:
            lines.append(f"{label:<10} {t.get('name')} (sha256 {str(t.get('sha256'))[:12]}…), "
                         f"{t.get('tokens')} tokens from {t.get('start')}, window {t.get('window')}")
    if all(_is_number(ppl.get(k)) for k in ("dense", "sparse")) and ppl["dense"]:
        lines.append(f"perplexity dense {ppl['dense']:.3f}, sparse {ppl['sparse']:.3f} "
                     f"({100 * (ppl['sparse'] / ppl['dense'] - 1):+.1f}%; {ppl['tokens']} tokens, "
                     f"window {ppl['window']})")
    if info["extra_columns"]:
        lines.append(f"predictors {', '.join(info['extra_columns'])}")
    lines.append("layer  measured sparsity" + ("  threshold" if thresholds else ""))
    for i, v in enumerate(info["measured_sparsity"]):
        t = f"  {thresholds[i]:.5g}" if thresholds else ""
        lines.append(f"{i:>5}  {v:17.4f}{t}")
    if info["measured_sparsity_mean"] is not None:
        lines.append(f" mean  {info['measured_sparsity_mean']:17.4f}")
    return "\n".join(lines)


def _format_experts(info: dict) -> str:
    m, u = info["model"], info["units"]
    routed = [i for i, c in enumerate(u["count"]) if c]
    lines = [
        f"trace      {info['path']}  (format v{info['format_version']}, {info['file_bytes'] / 1e6:.1f} MB, "
        f"{info['row_groups']} row groups)",
        f"rows       {info['rows']:,} = {info['tokens']:,} tokens x {m['n_layers']} layers in "
        f"{info['sequences']} sequences; unit expert, mask {info['mask_bytes']} bytes/row",
        f"model      {m['name']} ({m.get('architecture', '?')}): {len(routed)} MoE layers of "
        f"{_compact([u['count'][i] for i in routed])} experts, top-{_compact([u['top_k'][i] for i in routed])}"
        + (f", shared {_compact(u['shared'])}" if any(u["shared"]) else "")
        + (f"; dense layers {info['dense_layers']}" if info["dense_layers"] else ""),
    ]
    if info["cycle_bytes"] is not None:
        lines.append(f"cycle      {info['cycle_bytes'] / 2**20:.1f} MiB: one token's routed experts over all layers")
    if info["phases"]:
        lines.append(f"phases     {info['phases']['prefill']} prefill, {info['phases']['decode']} decode tokens")
    if info["source"]:
        files = info["source"].get("files")
        lines.append(f"source     {info['source'].get('format', '?')}: " + ", ".join(
            str(_mapping(f).get("name", "?")) for f in (files if isinstance(files, list) else [])))
    if info["capture_summary"]:
        lines.append("summary    " + " ".join(f"{k}={v:g}" if _is_number(v) else f"{k}={v}"
                                              for k, v in info["capture_summary"].items()))
    lines.append(f"integrity  {info['integrity']}")
    lines.append(f"columns    {', '.join(info['columns']) or '-'}")
    lines.append("layer  experts touched")
    lines += [f"{i:>5}  {info['experts_touched'][i]:>15}" for i in range(m["n_layers"])]
    return "\n".join(lines)


def _compact(values: list[int]) -> str:
    return str(values[0]) if len(set(values)) == 1 else ",".join(map(str, values))


def _params(n) -> str:
    return f"{n / 1e6:.2f}M" if _is_number(n) else "?"


def to_json(info: dict) -> str:
    return json.dumps(info, indent=1)
