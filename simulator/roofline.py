"""The roofline view: a dense model fully in DRAM, one decode token, per profile, unit and kernel.

For each kernel of one token — the attention projections, attention over the KV cache (fp16 when
the weights are quantised), the FFN, the LM head — its bytes and FLOPs at the compute precision, ``bytes / bandwidth`` and
``FLOPs / peak`` on each compute unit of the profile, which one bounds it, the roofline time
``max(bytes / bandwidth, FLOPs / peak)``, and the time the profile's kernel efficiencies and
dispatch overhead give (:class:`sparsesim.simulator.kernels.Unit`). Units: ``default`` (the profile's
``compute`` section at DRAM bandwidth, what the replay uses today) and every ``cpu`` / ``gpu`` /
``npu`` section with a bandwidth and a peak for the precision.

``sparsesim roofline [--profile P ...] [--shape llama-2-7b] [--precision fp16] [--context N]
[--csv OUT]``; as a function, :func:`roofline_rows`.
"""

from __future__ import annotations

import argparse
from typing import Any, Mapping, Sequence

from sparsesim.errors import InputError
from sparsesim.simulator.context import kv_dim_from_meta, kv_work
from sparsesim.simulator.kernels import PEAK_FIELD, Unit, Work, ffn_dense, matvec
from sparsesim.simulator.profile import UNIT_NAMES, HardwareProfile, list_profiles, load_profile
from sparsesim.simulator.scenario import BYTES_PER_WEIGHT

COLUMNS = ("profile", "unit", "kernel", "bound", "gbytes", "gflops", "memory_ms", "compute_ms", "roofline_ms",
           "expected_ms")


def decode_kernels(model: Mapping[str, Any], bytes_per_weight: float, context: int = 0) -> list[tuple[str, str, Work]]:
    """(name, kernel kind, work) of one decode token of ``model`` (trace-style metadata), all layers."""
    layers, d = int(model["n_layers"]), int(model["d_model"])
    matrices = 3 if model["glu"] else 2
    attention = float(model["attention_params"])
    kernels = [("attention projections", "dense", Work(attention * bytes_per_weight, 2.0 * attention, 4 * layers))]
    if context:   # the KV cache stays fp16 when the weights are quantised (llama.cpp's default)
        kernels.append(("attention over KV", "dense", kv_work(context, layers, d, kv_dim_from_meta(model),
                                                              max(bytes_per_weight, 2.0))))
    ffn = Work()
    for d_ff in model["d_ff"]:
        ffn = ffn + ffn_dense(int(d_ff), d, matrices, bytes_per_weight)
    kernels.append(("FFN", "dense", ffn))
    kernels.append(("LM head", "dense", matvec(float(model["lm_head_params"]) / d, d, bytes_per_weight)))
    return kernels


def units_of(profile: HardwareProfile, precision: str) -> list[Unit]:
    """The default unit and every unit section with a bandwidth and a peak for ``precision``."""
    units = [Unit.from_profile(profile, "default", precision, "the roofline view")]
    for name in UNIT_NAMES:
        spec = profile.unit(name)
        if spec is not None and spec.bandwidth is not None and getattr(spec, PEAK_FIELD[precision]) is not None:
            units.append(Unit.from_profile(profile, name, precision, "the roofline view"))
    return units


def roofline_rows(profiles: Sequence[str], model: Mapping[str, Any], precision: str = "fp16",
                  context: int = 0) -> list[dict[str, Any]]:
    """One row per (profile, unit, kernel) and a ``total`` row per (profile, unit); times in ms."""
    if precision not in BYTES_PER_WEIGHT:
        raise InputError(f"--precision {precision!r}: not one of {', '.join(BYTES_PER_WEIGHT)}")
    kernels = decode_kernels(model, BYTES_PER_WEIGHT[precision], context)
    rows: list[dict[str, Any]] = []
    for name in profiles:
        profile = load_profile(name)
        for unit in units_of(profile, precision):
            total = {"memory_ms": 0.0, "compute_ms": 0.0, "roofline_ms": 0.0, "expected_ms": 0.0,
                     "gbytes": 0.0, "gflops": 0.0}
            for kernel, kind, work in kernels:
                row = {"profile": profile.name, "unit": unit.name, "kernel": kernel, "bound": unit.bound(work),
                       "gbytes": work.bytes / 1e9, "gflops": work.flops / 1e9,
                       "memory_ms": work.bytes / unit.bandwidth * 1e3, "compute_ms": work.flops / unit.peak * 1e3,
                       "roofline_ms": unit.roofline(work) * 1e3, "expected_ms": unit.time(kind, work) * 1e3}
                rows.append(row)
                for key in total:
                    total[key] += row[key]
            bound = "memory" if total["memory_ms"] >= total["compute_ms"] else "compute"
            rows.append({"profile": profile.name, "unit": unit.name, "kernel": "total", "bound": bound, **total})
    return rows


def format_table(rows: Sequence[Mapping[str, Any]]) -> str:
    def cell(value: Any) -> str:
        return f"{value:.4g}" if isinstance(value, float) else str(value)

    cells = [list(COLUMNS)] + [[cell(r[c]) for c in COLUMNS] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(COLUMNS))]
    return "\n".join("  ".join(c.ljust(w) if i < 4 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
                     for row in cells)


def register(sub: argparse._SubParsersAction) -> None:
    from sparsesim.simulator.synth import SHAPES

    p = sub.add_parser("roofline", help="time per token of a dense model fully in DRAM, per profile, unit and kernel",
                       description="The roofline view (docs/time-model.md): bytes and FLOPs of each decode kernel "
                                   "of a dense model held in DRAM, max(bytes / bandwidth, FLOPs / peak) per "
                                   "compute unit of each profile, and the time with the profile's kernel "
                                   "efficiencies and dispatch overhead.")
    p.add_argument("--profile", action="append", metavar="P", help="preset or YAML file (repeatable; default: all presets)")
    p.add_argument("--shape", default="llama-2-7b", choices=sorted(SHAPES), help="model shape (synthetic metadata)")
    p.add_argument("--precision", default="fp16", choices=list(BYTES_PER_WEIGHT), help="compute precision")
    p.add_argument("--context", type=int, default=0, metavar="N", help="KV-cache positions read per token")
    p.add_argument("--csv", metavar="OUT", help="also write the rows as CSV")
    p.set_defaults(func=_roofline)


def _roofline(args: argparse.Namespace) -> int:
    from sparsesim.atomic import check_writable, write_text
    from sparsesim.simulator.synth import SHAPES, shape_model

    if args.context < 0:
        raise InputError(f"--context {args.context}: must be >= 0 positions")
    if args.csv:
        check_writable(args.csv)
    rows = roofline_rows(args.profile or list_profiles(), shape_model(args.shape, *SHAPES[args.shape]),
                         args.precision, args.context)
    print(format_table(rows))
    if args.csv:
        lines = [",".join(COLUMNS)] + [",".join(f"{r[c]:.6g}" if isinstance(r[c], float) else str(r[c])
                                                for c in COLUMNS) for r in rows]
        write_text(args.csv, "\n".join(lines) + "\n")
    return 0
