"""``sparsesim import``: register the subcommand (no torch; the importers never need it)."""

from __future__ import annotations

import argparse
import time

from sparsesim.tracing.importers import FORMATS


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("import", help="import MoE routing captured by another engine as an expert trace",
                       description="Convert a routing capture (route_trace v1 CSV, vLLM/SGLang routed_experts .npy/"
                                   ".npz, llama.cpp moe-trace CSV, or a generic token,layer,expert table) into a "
                                   "sparsesim expert trace (docs/moe.md). The format is detected unless --format "
                                   "is given; every check runs before anything is written.")
    p.add_argument("input", metavar="FILE", help="the capture to import")
    p.add_argument("-o", "--out", required=True, metavar="OUT.parquet", help="trace file to write")
    p.add_argument("--format", choices=FORMATS, help="input format (default: detected)")
    p.add_argument("--shape", metavar="SHAPE.json",
                   help="expert count, bytes and layers for formats that lack them (default: FILE's stem + .json)")
    p.add_argument("--metrics", metavar="FILE.metrics",
                   help="route_trace only: the engine's metrics file (default: NAME.metrics beside NAME.route.csv)")
    p.set_defaults(func=_import)


def _import(args: argparse.Namespace) -> int:
    from sparsesim.tracing.importers import import_file

    start = time.perf_counter()
    meta = import_file(args.input, args.out, fmt=args.format, shape=args.shape, metrics=args.metrics)
    units = meta["units"]
    moe = [i for i, c in enumerate(units["count"]) if c]
    kept = ", ".join(sorted(k for k in ("metrics",) if k in meta["capture"]))
    print(f"wrote {args.out}: {meta['source']['format']}, {meta['model']['n_layers']} layers "
          f"({len(moe)} MoE, {max(units['count'])} experts, top-{max(units['top_k'])})"
          + (f", kept {kept}" if kept else "") + f"; {time.perf_counter() - start:.1f} s")
    return 0
