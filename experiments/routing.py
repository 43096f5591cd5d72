"""``sparsesim routing``: what an expert trace's routing says before any cache is simulated.

Per layer: how many experts the tokens touched and how concentrated the routing is (the share of
activations the ``hot`` most-used experts carry, against ``hot / experts`` for uniform routing, and
the normalised entropy). For the model: the **token cycle** (one token's routed experts over all
layers, :meth:`sparsesim.traceunits.TraceUnits.cycle_bytes`), the working set the tokens touched,
the whole expert bank, and where a cache budget sits among them. Decode tokens only when the
trace records phases (the prompt's batch would count every prompt token's experts at once).
Definitions: docs/moe.md.
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from sparsesim.errors import InputError
from sparsesim.simulator.scenario import BYTES_PER_WEIGHT
from sparsesim.simulator.units import BYTES, UnitError, parse_quantity
from sparsesim.tracecolumns import DECODE
from sparsesim.tracefile import Trace, read_trace
from sparsesim.traceunits import EXPERT

MIB = 2 ** 20
HOT = 8      # BigMoeOnEdge's route-trace findings report the 8 hottest experts' share per layer


def routing_report(trace: Trace, budget: float | None = None, hot: int = HOT,
                   bytes_per_weight: float | None = None) -> dict:
    """Concentration per layer, and the cycle / working set / bank in bytes against ``budget``."""
    units = trace.units
    if units.kind != EXPERT or trace.route is None:
        raise InputError(f"{trace.path}: routing needs an expert trace with a route column (this one's unit is "
                         f"{units.kind})")
    if not isinstance(hot, int) or hot < 1:
        raise InputError(f"--hot {hot}: must be an integer >= 1")
    decode = trace.phase == DECODE if trace.phase is not None else np.ones(trace.n_tokens, bool)
    if not decode.any():
        raise InputError(f"{trace.path}: no decode tokens to analyse")
    route = trace.route[decode]
    layers = []
    for layer in range(units.n_layers):
        n = units.count[layer]
        if n == 0:
            continue
        ids = route[:, layer][route[:, layer] >= 0]
        counts = np.bincount(ids, minlength=n)
        p = counts[counts > 0] / counts.sum()
        layers.append({"layer": layer, "experts": n, "top_k": units.top_k[layer], "touched": int((counts > 0).sum()),
                       "hot_share": float(np.sort(counts)[::-1][:hot].sum() / counts.sum()),
                       "uniform_share": min(hot, n) / n,
                       "entropy": float(-(p * np.log2(p)).sum() / np.log2(n)) if n > 1 else 0.0,
                       "unit_bytes": units.routed_unit_bytes(layer, bytes_per_weight)})
    working = sum(l["touched"] * l["unit_bytes"] for l in layers)
    bank = sum(l["experts"] * l["unit_bytes"] for l in layers)
    cycle = units.cycle_bytes(bytes_per_weight)
    out = {"flooding_bytes": units.flooding_bytes(bytes_per_weight), "trace": str(trace.path), "model": trace.model.get("name"), "tokens": int(decode.sum()),
           "tokens_are": "decode" if trace.phase is not None else "all", "hot": hot, "layers": layers,
           "cycle_bytes": cycle, "working_set_bytes": working, "bank_bytes": bank,
           "mean_hot_share": float(np.mean([l["hot_share"] for l in layers])),
           "mean_touched": float(np.mean([l["touched"] for l in layers]))}
    if budget is not None:
        per_layer_set = sum(l["unit_bytes"] for l in layers)   # one expert of every MoE layer
        out["budget"] = {"bytes": budget, "cycles": budget / cycle, "of_working_set": budget / working,
                         "of_bank": budget / bank, "experts_per_layer": budget / per_layer_set,
                         "below_cycle": budget < cycle}
    return out


def format_report(r: dict) -> str:
    lines = [f"{r['model']}: {r['tokens']} {r['tokens_are']} tokens, {len(r['layers'])} MoE layers",
             f"{'layer':>5} {'experts':>7} {'top-k':>5} {'touched':>7} {'hot-' + str(r['hot']) + ' share':>13} "
             f"{'uniform':>7} {'entropy':>7}"]
    lines += [f"{l['layer']:>5} {l['experts']:>7} {l['top_k']:>5} {l['touched']:>7} {100 * l['hot_share']:>12.1f}% "
              f"{100 * l['uniform_share']:>6.1f}% {l['entropy']:>7.3f}" for l in r["layers"]]
    lines += [f" mean {'':>13} {r['mean_touched']:>7.1f} {100 * r['mean_hot_share']:>12.1f}%",
              f"token cycle  {r['cycle_bytes'] / MIB:10.1f} MiB  (one token's routed experts, all layers)",
              f"working set  {r['working_set_bytes'] / MIB:10.1f} MiB  (experts these tokens touched)",
              f"expert bank  {r['bank_bytes'] / MIB:10.1f} MiB"]
    b = r.get("budget")
    if b:
        lines.append(f"budget       {b['bytes'] / MIB:10.1f} MiB = {b['cycles']:.2f} cycles, "
                     f"{100 * b['of_working_set']:.0f}% of the working set, {100 * b['of_bank']:.0f}% of the bank, "
                     f"{b['experts_per_layer']:.1f} experts per layer if split evenly")
        if b["below_cycle"]:
            lines.append(f"warning: the budget holds less than one token cycle; global LRU gets no hits at all below "
                         f"{r['flooding_bytes'] / MIB:,.1f} MiB and few up to the cycle (sequential flooding)")
    return "\n".join(lines)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("routing", help="routing concentration and token cycle of an expert trace (no simulation)",
                       description="Per-layer routing concentration of an expert trace's decode tokens, the token "
                                   "cycle, working set and expert bank, and where a cache budget sits (docs/moe.md).")
    p.add_argument("trace", metavar="TRACE", help="expert trace .parquet (sparsesim trace or sparsesim import)")
    p.add_argument("--budget", metavar="SIZE", help="expert cache budget to place, e.g. 4000MiB")
    p.add_argument("--hot", type=int, default=HOT, help="hottest experts per layer whose share is reported "
                                                        "(default %(default)s)")
    p.add_argument("--precision", choices=tuple(BYTES_PER_WEIGHT),
                   help="size experts from their parameters at this precision (traces that record no bytes)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_routing)


def _routing(args: argparse.Namespace) -> int:
    budget = None
    if args.budget is not None:
        try:
            budget = parse_quantity(args.budget, BYTES)
        except UnitError as e:
            raise InputError(f"--budget {args.budget}: {e}") from None
        if budget <= 0:
            raise InputError(f"--budget {args.budget}: must be > 0")
    report = routing_report(read_trace(args.trace), budget, args.hot,
                            None if args.precision is None else BYTES_PER_WEIGHT[args.precision])
    print(json.dumps(report, indent=1) if args.json else format_report(report))
    return 0
