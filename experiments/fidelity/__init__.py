"""Fidelity of the storage model against this host's real storage (DESIGN §5; docs/validation.md).

Subcommands (registered by ``experiments/cli.py``; handlers import their module when they run):

* ``calibrate-host``: measure O_DIRECT reads and DRAM into a profile (:mod:`.calibrate`);
* ``validate-io``: replay one configuration's simulated reads against a real weight file (:mod:`.replay`);
* ``validate-study``: calibrate, then validate a set of configurations on a real and a synthetic
  trace (:mod:`sparsesim.experiments.reproductions.validation`).
"""

from __future__ import annotations

import argparse

from sparsesim.errors import InputError
from sparsesim.simulator.units import BYTES, UnitError, parse_quantity

DEFAULT_MAX_DISK = 4 << 30   # bytes: validate-io refuses a larger weight file unless --max-disk says otherwise


def _bytes(text: str) -> int:
    try:
        return int(parse_quantity(text, BYTES))
    except UnitError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def register(sub: argparse._SubParsersAction) -> None:
    register_calibrate(sub)
    _register_validate(sub)
    _register_study(sub)


def register_calibrate(sub: argparse._SubParsersAction) -> None:
    """``calibrate-host``: a top-level command and also ``sparsesim profiles calibrate-host``."""
    p = sub.add_parser(
        "calibrate-host", help="measure this host's storage (O_DIRECT) and DRAM into a hardware profile",
        description="Write a scratch file in DIR, measure O_DIRECT random-read bandwidth for 512 B-1 MiB requests "
                    "at 1-32 reads outstanding, QD1 latency, DRAM copy bandwidth and GEMM FLOP/s, and write a "
                    "profile (kind: measured) with the spread of the repeats. The scratch file is always removed.")
    p.add_argument("--dir", required=True, metavar="DIR", help="a directory on the disk to measure")
    p.add_argument("-o", "--output", required=True, metavar="PROFILE.yaml", help="the profile to write")
    p.add_argument("--size", type=_bytes, default=1 << 30, metavar="BYTES",
                   help="scratch file size, e.g. '1 GiB' (default); refused if larger than the free space")
    p.add_argument("--seconds", type=float, default=60.0, help="time for the measurements (default 60)")
    p.add_argument("--repeats", type=int, default=3, help="passes over all cells, for the spread (default 3)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_calibrate)


def _calibrate(args: argparse.Namespace) -> int:
    from sparsesim.experiments.fidelity.calibrate import calibrate_host

    profile = calibrate_host(args.dir, args.output, args.size, args.seconds, args.repeats, args.seed)
    s = profile.storage
    print(f"wrote {args.output}: queue depth {s.queue_depth}, QD1 latency {s.latency * 1e6:.1f} us, "
          f"peak {s.peak_bandwidth / 1e9:.3f} GB/s, DRAM {profile.dram.bandwidth / 1e9:.1f} GB/s")
    return 0


def _register_validate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "validate-io", help="replay a simulated read schedule on a real weight file and compare I/O times",
        description="Simulate the trace, materialize its FFN weights as a scratch file in DIR (layout and precision "
                    "of the scenario), read exactly the simulated batches with O_DIRECT at the profile's queue "
                    "depth, and write OUT_DIR/validate-io.csv (per batch) and validate-io.md. The weight file is "
                    "always removed.")
    p.add_argument("--trace", required=True)
    p.add_argument("--profile", required=True, metavar="NAME|FILE", help="e.g. a calibrate-host output")
    p.add_argument("--predictor", default="oracle")
    p.add_argument("--cache", default="lru")
    p.add_argument("--dram-budget", required=True, metavar="B", help="fraction of the FFN (<= 1) or bytes")
    p.add_argument("--precision", default="fp16")
    p.add_argument("--layout", choices=("per-matrix", "bundled"), default="per-matrix")
    p.add_argument("--set", dest="settings", action="append", default=[], metavar="KEY=VALUE",
                   help="scenario field or dotted profile field (repeatable)")
    p.add_argument("--dir", required=True, metavar="DIR", help="where the weight file is written")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--tokens", type=int, metavar="N", help="replay only the first N tokens of the trace")
    p.add_argument("--max-disk", type=_bytes, default=DEFAULT_MAX_DISK, metavar="BYTES",
                   help="refuse a weight file larger than this (default 4 GiB)")
    p.add_argument("-o", "--output", dest="out_dir", required=True, metavar="OUT_DIR")
    p.set_defaults(func=_validate)


def _validate(args: argparse.Namespace) -> int:
    from sparsesim.experiments.fidelity.replay import check_outputs, validate_io, write_outputs

    check_outputs(args.out_dir)
    settings = [f"dram_budget={args.dram_budget}", f"precision={args.precision}", f"layout={args.layout}",
                *args.settings]
    result = validate_io(args.trace, args.profile, args.predictor, args.cache, settings, args.dir,
                         repeats=args.repeats, tokens=args.tokens, max_disk=args.max_disk)
    csv_path, md_path = write_outputs(result, args.out_dir)
    print(f"simulated {result.simulated_total * 1e3:.1f} ms, measured {result.measured_total * 1e3:.1f} ms "
          f"(error {result.error:+.1%}, spread {result.spread:.1%}); wrote {csv_path} and {md_path}")
    return 0


def _register_study(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "validate-study", help="calibrate this host, then validate the storage model on several configurations",
        description="The validation study of docs/validation.md: calibrate-host, then validate-io for every "
                    "configuration of experiments/reproductions/validation.py on a Gemma 3 270M trace and a "
                    "synthetic 7B-shaped trace, interleaving repeats, then calibrate-host again to see how far the "
                    "host drifted; writes validation.md and CSV tables (about 15 minutes).")
    p.add_argument("-o", "--output", dest="out_dir", required=True, metavar="DIR")
    p.add_argument("--dir", default=".", metavar="DIR", help="where scratch and weight files go (a disk)")
    p.add_argument("--gemma-trace", required=True, metavar="TRACE",
                   help="a Gemma 3 270M trace (sparsesim trace --model gemma-3-270m ...)")
    p.add_argument("--profile", metavar="NAME|FILE",
                   help="use this profile instead of the first calibration (the one after the replays still runs)")
    p.add_argument("--repeats", type=int, default=5, help="rounds over all configurations (default 5)")
    p.add_argument("--calibrate-seconds", type=float, default=120.0)
    p.set_defaults(func=_study)


def _study(args: argparse.Namespace) -> int:
    from sparsesim.experiments.reproductions.validation import run, summary_line

    if args.repeats < 2:
        raise InputError("--repeats must be >= 2: the study reports the spread of the measurement")
    rows = run(args.out_dir, args.dir, args.gemma_trace, profile=args.profile, repeats=args.repeats,
               calibrate_seconds=args.calibrate_seconds)
    print(summary_line(rows))
    print(f"wrote validation.md and its CSV tables in {args.out_dir}")
    return 0
