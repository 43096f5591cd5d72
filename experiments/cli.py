"""The ``sparsesim`` command: one CLI, subcommands contributed by each part.

Each part owns a small ``register(subparsers)`` function (``tracing/cli.py``,
``simulator/cli.py``, ``experiments/commands.py``) that adds its subcommands and binds them
to plain Python functions. Registration must stay cheap: heavy imports (torch) happen inside
the handlers, so ``sparsesim simulate`` never loads torch.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from sparsesim.errors import InputError, one_line, system_reason

COMMAND_MODULES = ("sparsesim.tracing.cli", "sparsesim.tracing.importers.cli", "sparsesim.simulator.cli",
                   "sparsesim.simulator.roofline", "sparsesim.experiments.predictability",
                   "sparsesim.experiments.routing", "sparsesim.experiments.capture",
                   "sparsesim.experiments.commands", "sparsesim.experiments.fidelity")


def build_parser() -> argparse.ArgumentParser:
    from sparsesim import __version__

    parser = argparse.ArgumentParser(
        prog="sparsesim",
        description="Trace-driven memory and cache simulator for LLM activation sparsity.",
    )
    parser.add_argument("--version", action="version", version=f"sparsesim {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    extension_points: dict[str, argparse._SubParsersAction] = {}
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name == name:  # a part not built yet
                continue
            raise
        extension_points.update(module.register(sub) or {})
    if "profiles" in extension_points:   # measuring this host makes a profile too
        from sparsesim.experiments.fidelity import register_calibrate
        register_calibrate(extension_points["profiles"])
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)   # inside: handlers import lazily, and an import can fail too
        return int(args.func(args) or 0)
    except InputError as e:
        print(f"sparsesim: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("sparsesim: interrupted; no partial output was left under a final name", file=sys.stderr)
        return 130
    except (OSError, MemoryError) as e:   # the machine's limits (sparsesim.errors.system_reason), never "corrupt"
        reason = system_reason(e)
        if reason is None:
            raise
        where = f"{e.filename}: " if getattr(e, "filename", None) else ""
        print(f"sparsesim: error: {one_line(where + reason)}", file=sys.stderr)
        return 1 if isinstance(e, MemoryError) else 2


if __name__ == "__main__":
    sys.exit(main())
