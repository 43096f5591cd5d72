"""The simulator's ``sparsesim`` subcommands (registered by ``experiments/cli.py``).

Registration only builds argparse parsers; each handler imports its module when it runs, so
``sparsesim --help`` stays fast. Each handler is a thin wrapper over a plain Python function.
"""

from __future__ import annotations

import argparse
import inspect
import sys

from sparsesim.simulator.scenario import Scenario
from sparsesim.simulator.simulate import simulate

# What simulate() takes when a flag is not given: named on stderr whenever the CLI falls back on it.
SIMULATE_DEFAULTS = {**{k: p.default for k, p in inspect.signature(simulate).parameters.items()
                        if k in ("profile", "predictor", "cache")}, "dram_budget": Scenario().dram_budget}
_DEFAULTED = (("--profile", "profile"), ("--predictor", "predictor"), ("--cache", "cache"),
              ("--dram-budget", "dram_budget"))


def register(sub: argparse._SubParsersAction) -> dict[str, argparse._SubParsersAction]:
    """Adds the simulator's subcommands; returns the ``profiles`` actions so that the CLI's wiring
    can add ``profiles calibrate-host`` from the fidelity study (the simulator never imports upward)."""
    _register_simulate(sub)
    _register_synth(sub)
    _register_policies(sub)
    _register_export(sub)
    return {"profiles": _register_profiles(sub)}


def _register_simulate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("simulate", help="replay a trace against a hardware profile",
                       description="Replay a trace token by token against a hardware profile under a "
                                   "predictor and a replacement policy (docs/simulator.md, docs/metrics.md).")
    p.add_argument("--trace", required=True, help="trace .parquet file")
    p.add_argument("--profile", help=f"preset name or YAML file (sparsesim profiles list; default "
                                     f"{SIMULATE_DEFAULTS['profile']}, named in the output)")
    p.add_argument("--predictor", help=f"name[:key=value,...] (sparsesim policies; default "
                                       f"{SIMULATE_DEFAULTS['predictor']}, named in the output)")
    p.add_argument("--cache", help=f"replacement policy name[:key=value,...] (default {SIMULATE_DEFAULTS['cache']})")
    p.add_argument("--dram-budget", help="<= 1: share of the FFN for the neuron cache; else total bytes ('6.5 GB'); "
                                         f"default {SIMULATE_DEFAULTS['dram_budget']}")
    p.add_argument("--cache-budget", help="bytes of the unit cache itself, resident weights apart ('4000MiB'); "
                                          "overrides --dram-budget")
    p.add_argument("--precision", choices=("fp32", "fp16", "bf16", "int8", "int4", "q4_1"))
    p.add_argument("--layout", choices=("per-matrix", "bundled"))
    p.add_argument("--lookahead", type=int, help="prefetch issued k layers ahead")
    p.add_argument("--set", dest="settings", action="append", default=[], metavar="KEY=VALUE",
                   help="a scenario field (e.g. partition=global) or a dotted profile field "
                        "(e.g. 'storage.peak_bandwidth=2 GB/s'); repeatable")
    p.add_argument("--train-trace", help="trace of other text for predictors that learn offline")
    p.add_argument("--profile-trace", help="trace of other text for offline neuron statistics (static-pin, reorder)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-baselines", action="store_true", help="skip the dense and no-prefetch baseline runs")
    p.add_argument("--json", metavar="OUT", help="also write the full record as JSON ('-' for stdout only)")
    p.add_argument("--stream", action=argparse.BooleanOptionalAction, default=None,
                   help="read the masks row group by row group, keeping about 256 tokens in memory; --no-stream "
                        "reads them whole (default: streamed only when the masks exceed 2 GiB; docs/reliability.md)")
    p.set_defaults(func=_simulate)


def cycle_warning(record: dict) -> str:
    """The one line printed when an expert cache is below one token cycle (``docs/moe.md``, "The cliff")."""
    return (f"warning: the expert cache ({record['cache_capacity_bytes'] / 2**20:,.1f} MiB) is below one token cycle "
            f"({record['cycle_bytes'] / 2**20:,.1f} MiB: every layer's top-k experts); a global LRU cache hits "
            f"nothing below {record['flooding_bytes'] / 2**20:,.1f} MiB and little up to the cycle (docs/moe.md, "
            f"'The cliff')")


def _simulate(args: argparse.Namespace) -> int:
    import json

    from sparsesim.atomic import check_writable, write_text
    from sparsesim.numbers import SEED
    from sparsesim.simulator.metrics import format_summary

    SEED.check(args.seed, "--seed")
    if args.json and args.json != "-":
        check_writable(args.json)
    # No silent answer-changing default: every default taken is named with the result.
    sized = args.cache_budget is not None or any(s.startswith("cache_budget=") for s in args.settings)
    defaulted = [f"{flag} {SIMULATE_DEFAULTS[key]}" for flag, key in _DEFAULTED if getattr(args, key) is None
                 and not any(s.startswith(f"{key}=") for s in args.settings)
                 and not (key == "dram_budget" and sized)]   # a cache budget replaces the DRAM budget
    for _, key in _DEFAULTED:
        if getattr(args, key) is None and key != "dram_budget":
            setattr(args, key, SIMULATE_DEFAULTS[key])
    settings = list(args.settings)
    for field, value in (("dram_budget", args.dram_budget), ("cache_budget", args.cache_budget),
                         ("precision", args.precision),
                         ("layout", args.layout), ("lookahead", args.lookahead)):
        if value is not None:
            settings.append(f"{field}={value}")
    record = simulate(args.trace, args.profile, args.predictor, args.cache, settings=settings,
                      train_trace=args.train_trace, profile_trace=args.profile_trace, seed=args.seed,
                      baselines=not args.no_baselines, stream=args.stream)
    if record["budget_below_cycle"]:
        print(cycle_warning(record), file=sys.stderr)
    text = json.dumps(record, indent=2, default=float)
    note = f"defaults used: {', '.join(defaulted)} (give them to choose)" if defaulted else ""
    if args.json == "-":
        print(text)
        if note:
            print(f"sparsesim: {note}", file=sys.stderr)   # stdout is the JSON record only
        return 0
    print(format_summary(record))
    if note:
        print(f"  {note}")
    if args.json:
        write_text(args.json, text + "\n")
        print(f"wrote {args.json} (the full record)")
    return 0


def _register_synth(sub: argparse._SubParsersAction) -> None:
    from sparsesim.simulator.synth import SHAPES

    p = sub.add_parser("synth", help="write a synthetic trace (model shapes we cannot run here)",
                       description="Synthetic activation traces, labelled 'synthetic' in their metadata "
                                   "(generator: simulator/synth.py, docs/simulator.md).")
    p.add_argument("--shape", choices=sorted(SHAPES), help="a published model shape")
    p.add_argument("--layers", type=int)
    p.add_argument("--d-model", type=int)
    p.add_argument("--d-ff", type=int)
    p.add_argument("--no-glu", action="store_true", help="plain (2-matrix) FFN for a custom shape")
    p.add_argument("--tokens", type=int, default=256)
    p.add_argument("--active", type=float, default=0.1, help="mean share of neurons active per token")
    p.add_argument("--persistence", type=float, help="P(active at t | active at t-1), measured-style")
    p.add_argument("--hot-skew", type=float, default=0.0, help="Zipf exponent of per-neuron activity")
    p.add_argument("--like", help="take activity, persistence and hot-neuron profile from a real trace")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-o", "--output", required=True)
    p.set_defaults(func=_synth)


def _synth(args: argparse.Namespace) -> int:
    from sparsesim.atomic import check_writable
    from sparsesim.simulator.synth import synthesize

    check_writable(args.output)
    path = synthesize(args.output, shape=args.shape, layers=args.layers, d_model=args.d_model, d_ff=args.d_ff,
                      glu=not args.no_glu, tokens=args.tokens, active=args.active, persistence=args.persistence,
                      hot_skew=args.hot_skew, like=args.like, seed=args.seed)
    print(f"wrote {path}")
    return 0


def _register_policies(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("policies", help="list predictors and replacement policies with their parameters")
    p.set_defaults(func=_policies)


def _policies(args: argparse.Namespace) -> int:
    from sparsesim.simulator.predictors import PREDICTORS
    from sparsesim.simulator.replacement import REPLACEMENT

    for title, registry in (("predictors", PREDICTORS), ("replacement policies (--cache)", REPLACEMENT)):
        print(f"{title}:")
        for name, doc, params in registry.describe():
            shown = ", ".join(f"{k}={v}" for k, v in params.items())
            print(f"  {name:<18} {doc}" + (f"  [{shown}]" if shown else ""))
    return 0


def _register_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export-requests", help="write a trace's needed sets as a cache request sequence",
                       description="One request per needed neuron of every layer step (time = layer step, "
                                   "object = (layer, neuron), size = its bytes), for cross-checks with other "
                                   "cache simulators: csv, or libCacheSim's binary oracleGeneral "
                                   "(simulator/export.py, docs/validation.md).")
    p.add_argument("trace", help="trace .parquet file")
    p.add_argument("--format", required=True, metavar="FORMAT", help="csv or oracle-general")
    p.add_argument("-o", "--output", required=True)
    p.add_argument("--precision", default="fp16", help="bytes per weight of the object sizes (default fp16)")
    p.set_defaults(func=_export_requests)


def _export_requests(args: argparse.Namespace) -> int:
    from sparsesim.simulator.export import export_requests

    n = export_requests(args.trace, args.format, args.output, precision=args.precision)
    print(f"wrote {n} requests to {args.output}")
    return 0


def _register_profiles(sub: argparse._SubParsersAction) -> argparse._SubParsersAction:
    parser = sub.add_parser(
        "profiles", help="list and inspect hardware profiles",
        description="Hardware profiles: the shipped presets, or your own YAML file "
                    "(format: docs/hardware-profiles.md).")
    actions = parser.add_subparsers(dest="profiles_action", required=True, metavar="ACTION")
    listing = actions.add_parser("list", help="one line per shipped preset",
                                 description="Name, storage kind, DRAM bandwidth and flash peak "
                                             "bandwidth of every shipped preset.")
    listing.set_defaults(func=_profiles_list)
    show = actions.add_parser("show", help="resolved values, units and sources of one profile",
                              description="Resolved values of a preset or YAML file, with units "
                                          "and the source of each number.")
    show.add_argument("profile", metavar="NAME|FILE", help="a preset name or a path to a YAML file")
    show.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE",
                      help="change one value, e.g. --set 'dram.bandwidth=50 GB/s' (repeatable)")
    show.add_argument("--json", action="store_true", help="print JSON in base units instead")
    show.set_defaults(func=_profiles_show)
    return actions


def _profiles_list(args: argparse.Namespace) -> int:
    from sparsesim.simulator.profile_report import profiles_table

    print(profiles_table())
    return 0


def _profiles_show(args: argparse.Namespace) -> int:
    from sparsesim.simulator.profile_report import show_profile

    print(show_profile(args.profile, args.overrides, args.json))
    return 0
