"""The simulator's ``sparsesim`` subcommands (registered by ``experiments/cli.py``).

Registration only builds argparse parsers; each handler imports its module when it runs, so
``sparsesim --help`` stays fast. Each handler is a thin wrapper over a plain Python function.
"""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    _register_profiles(sub)


def _register_profiles(sub: argparse._SubParsersAction) -> None:
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


def _profiles_list(args: argparse.Namespace) -> int:
    from simulator.profile_report import profiles_table

    print(profiles_table())
    return 0


def _profiles_show(args: argparse.Namespace) -> int:
    from simulator.profile_report import show_profile

    print(show_profile(args.profile, args.overrides, args.json))
    return 0
