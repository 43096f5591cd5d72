"""Differential tests: the engine (``simulate()``) against the independent reference model.

Every configuration of the grid — predictor × replacement policy × partition × budget × schedule ×
two-phase — is replayed twice on near-instant storage (``tests/fixtures/instant-storage.yaml``:
a batch takes ~1e-15 s, a layer's non-FFN work microseconds, so every prefetch lands before its
FFN and the engine follows the contract's event order exactly), once by the engine and once by
``tests/reference_model.py``. Flash bytes, hits, late hits, gate hits, misses and evictions must
agree exactly, per layer and in total; so must the secondary counters (prefetch outcomes,
expiries, pollution). A configuration either model refuses must be refused by both.

The default run checks a covering slice (every predictor × policy pair on every trace, the other
axes drawn with a fixed seed); ``SPARSESIM_DIFFERENTIAL=full`` runs the whole grid. The table in
``docs/validation.md`` comes from ``python -m tests.test_differential --table [--full]``.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import os
import random
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))   # also run as `python -m tests.test_differential`

from difftraces import PROFILE, SHARED_DATA, TRACES, TraceCase, build_trace  # noqa: E402
from reference_model import Config, Refused, replay  # noqa: E402

from sparsesim.errors import InputError  # noqa: E402
from sparsesim.simulator.predictors import PREDICTORS  # noqa: E402
from sparsesim.simulator.profile import load_profile  # noqa: E402
from sparsesim.simulator.simulate import simulate  # noqa: E402
from sparsesim.tracefile import read_trace  # noqa: E402

POLICIES = ("lru", "fifo", "lfu", "window:k=2", "static-pin", "belady")
PARTITIONS = ("global", "per-layer")
SCHEDULES = ("layer", "token")
FULL = os.environ.get("SPARSESIM_DIFFERENTIAL", "") == "full"

# Compared exactly, per layer (record's per_layer JSON) and in total. Flash bytes per layer are
# (demand_units, prefetch_units, second_phase_units) times exact byte sizes.
PRIMARY = ("hits", "late", "gate_hits", "misses", "evictions", "demand_units", "prefetch_units",
           "second_phase_units")
SECONDARY = ("accesses", "expired", "inserted", "prefetch_requested", "prefetch_issued", "prefetch_no_room",
             "prefetch_useful", "prefetch_useless",
             "prefetch_bypassed", "prefetch_unused_at_end", "prefetch_gate_dropped", "pollution_units",
             "pollution_misses")
TOTALS = {"hits": "hits", "late": "late_hits", "gate_hits": "gate_hits", "misses": "demand_misses",
          "evictions": "evictions"}


def builtin(registry) -> set[str]:
    """The names sparsesim itself registers (other test modules register toy policies too)."""
    return {name for name in registry.names() if registry.get(name).__module__.startswith("sparsesim.")}


def predictors(case: TraceCase) -> list[str]:
    """Every built-in predictor (``stored`` only where the trace has a stored column)."""
    return sorted(name for name in builtin(PREDICTORS) if name != "stored" or case.stored)


def grid(case: TraceCase) -> list[Config]:
    out = []
    for pred, cache, part, budget, sched, two in itertools.product(
            predictors(case), POLICIES, PARTITIONS, case.budgets, SCHEDULES, (False, True) if case.glu else (False,)):
        out.append(Config(predictor=pred, cache=cache, partition=part, budget=budget, schedule=sched, two_phase=two,
                          budget_kind=case.budget_kind))
    return out


def covering_slice(case: TraceCase, seed: int = 0) -> list[Config]:
    """One configuration per predictor × policy pair, the other axes drawn with a fixed seed."""
    rng = random.Random(f"{case.name}-{seed}")
    by_pair: dict[tuple[str, str], list[Config]] = {}
    for c in grid(case):
        by_pair.setdefault((c.predictor, c.cache), []).append(c)
    return [rng.choice(configs) for configs in by_pair.values()]


# ------------------------------------------------------------------------------------------------
# Running both models and comparing


@dataclasses.dataclass
class Outcome:
    config: Config
    trace: str
    engine: dict | None          # per-layer counters + "ffn_storage_bytes" + totals, or None if refused
    reference: dict | None
    engine_error: str = ""
    reference_error: str = ""
    mismatches: tuple = ()       # (field, engine value, reference value)

    @property
    def agree(self) -> bool:
        return not self.mismatches

    @property
    def refused(self) -> bool:
        return self.engine is None and self.reference is None


def run_engine(trace, train, config: Config, profile) -> dict:
    record = simulate(trace, profile, config.predictor, config.cache, settings=config.settings(),
                      train_trace=train, profile_trace=train, seed=config.seed, baselines=False)
    out = {"per_layer": json.loads(record["per_layer"]), "ffn_storage_bytes": record["ffn_storage_bytes"]}
    out.update({name: record[field] for name, field in TOTALS.items()})
    return out


def run_reference(trace, train, config: Config) -> dict:
    result = replay(trace, config, train=train, profile_trace=train)
    out = {"per_layer": result.per_layer, "ffn_storage_bytes": result.ffn_storage_bytes,
           "layer_bytes": [result.layer_bytes(l) for l in range(trace.n_layers)]}
    out.update({name: result.total(name) for name in TOTALS})
    return out


def compare(engine: dict, reference: dict, fields=PRIMARY + SECONDARY) -> list[tuple]:
    mismatches = []
    # Exact: every byte count is an integer number of bytes (fp16), far below 2**53.
    if Fraction(engine["ffn_storage_bytes"]) != reference["ffn_storage_bytes"]:
        mismatches.append(("ffn_storage_bytes", engine["ffn_storage_bytes"], float(reference["ffn_storage_bytes"])))
    for name in TOTALS:
        if engine[name] != reference[name]:
            mismatches.append((name, engine[name], reference[name]))
    for name in fields:
        e = engine["per_layer"].get(name, "missing from the record")
        r = reference["per_layer"][name]
        if e != r:
            mismatches.append((f"per_layer.{name}", e, r))
    return mismatches


def differ(trace, train, config: Config, profile, name: str = "") -> Outcome:
    engine = reference = None
    e_err = r_err = ""
    try:
        engine = run_engine(trace, train, config, profile)
    except InputError as e:
        e_err = str(e)
    try:
        reference = run_reference(trace, train, config)
    except (Refused, InputError) as e:
        r_err = str(e)
    if engine is None or reference is None:
        mismatches = () if engine is None and reference is None else (
            ("refusal", e_err or "ran", r_err or "ran"),)
    else:
        mismatches = tuple(compare(engine, reference))
    return Outcome(config, name, engine, reference, e_err, r_err, mismatches)


def describe(outcome: Outcome) -> str:
    lines = [f"{outcome.trace} {outcome.config}"]
    lines += [f"  {field}: engine {e} != reference {r}" for field, e, r in outcome.mismatches]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------
# pytest


def _params():
    for case in TRACES:
        for config in (grid(case) if FULL else covering_slice(case)):
            tp = "2ph" if config.two_phase else "1ph"
            yield pytest.param(case, config, id=f"{case.name}-{config.predictor}-{config.cache}-{config.partition}-"
                                                f"{config.budget}-{config.schedule}-{tp}")


@pytest.mark.parametrize("case,config", list(_params()))
def test_engine_agrees_with_reference_model(difftrace, instant_profile, case, config):
    trace, train = difftrace(case)
    outcome = differ(trace, train, config, instant_profile, case.name)
    assert outcome.agree, describe(outcome)


def test_instant_profile_lands_prefetches_before_the_ffn(difftrace, instant_profile):
    """The premise of the comparison: on the fixture profile no prefetch is late, even with the
    most prefetching (dense, token schedule: every layer's whole FFN issued at the token start)."""
    trace, train = difftrace(TRACES[0])
    record = simulate(trace, instant_profile, "dense", "lru", settings=["dram_budget=0.9", "schedule=token"],
                      baselines=False)
    assert record["prefetch_issued"] > 0 and record["late_hits"] == 0


def test_grid_covers_every_registered_policy_and_predictor():
    """A new replacement policy or predictor must join the grid (and the reference model)."""
    from sparsesim.simulator.replacement import REPLACEMENT

    assert {p.partition(":")[0] for p in POLICIES} == builtin(REPLACEMENT)
    assert set().union(*(predictors(case) for case in TRACES)) == builtin(PREDICTORS)
    assert sum(len(grid(c)) for c in TRACES) >= 200


# ------------------------------------------------------------------------------------------------
# The table for docs/validation.md


def run_grid(full: bool, directory: Path, progress: bool = True) -> list[Outcome]:
    from tqdm import tqdm

    profile = load_profile(str(PROFILE))
    jobs = []
    for case in TRACES:
        if case.name == "stories260K" and not SHARED_DATA.is_dir():
            print(f"skipping stories260K: {SHARED_DATA} not found", file=sys.stderr)
            continue
        out, train = build_trace(case, directory)
        pair = (read_trace(out), read_trace(train))
        jobs += [(case, pair, c) for c in (grid(case) if full else covering_slice(case))]
    return [differ(pair[0], pair[1], config, profile, case.name)
            for case, pair, config in tqdm(jobs, desc="differential", unit="cfg", disable=not progress)]


def _bytes_error(o: Outcome) -> float:
    if o.engine is None or o.reference is None:
        return float("inf")
    ref = float(o.reference["ffn_storage_bytes"])
    return abs(o.engine["ffn_storage_bytes"] - ref) / max(ref, 1.0)


def table(outcomes: list[Outcome], worst: int = 10) -> str:
    """Markdown: agreement by policy × partition × schedule, then the worst disagreements."""
    groups: dict[tuple, list[Outcome]] = {}
    for o in outcomes:
        groups.setdefault((o.config.cache, o.config.partition, o.config.schedule), []).append(o)
    lines = ["| policy | partition | schedule | configurations | agree | both refuse | disagree | first differing field (count) |",
             "|---|---|---|---|---|---|---|---|"]
    for (cache, part, sched), group in sorted(groups.items()):
        bad = [o for o in group if not o.agree]
        fields: dict[str, int] = {}
        for o in bad:
            fields[o.mismatches[0][0]] = fields.get(o.mismatches[0][0], 0) + 1
        top = ", ".join(f"{f} ({n})" for f, n in sorted(fields.items(), key=lambda kv: -kv[1])[:3])
        lines.append(f"| {cache} | {part} | {sched} | {len(group)} | {sum(o.agree and not o.refused for o in group)} | "
                     f"{sum(o.refused for o in group)} | {len(bad)} | {top} |")
    n_bad = sum(not o.agree for o in outcomes)
    lines += ["", f"{len(outcomes)} configurations: {len(outcomes) - n_bad} agree "
                  f"({sum(o.refused for o in outcomes)} refused by both), {n_bad} disagree.", ""]
    bad = sorted((o for o in outcomes if not o.agree), key=_bytes_error, reverse=True)[:worst]
    if bad:
        lines += ["Worst disagreements (flash bytes, engine vs reference):", "",
                  "| trace | predictor | policy | partition | budget | schedule | two-phase | engine bytes | reference bytes | engine misses | reference misses |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for o in bad:
            c = o.config
            eb = "refused" if o.engine is None else f"{o.engine['ffn_storage_bytes']:.0f}"
            rb = "refused" if o.reference is None else f"{float(o.reference['ffn_storage_bytes']):.0f}"
            em = "–" if o.engine is None else o.engine["misses"]
            rm = "–" if o.reference is None else o.reference["misses"]
            lines.append(f"| {o.trace} | {c.predictor} | {c.cache} | {c.partition} | {c.budget} | {c.schedule} | "
                         f"{'on' if c.two_phase else 'off'} | {eb} | {rb} | {em} | {rm} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.test_differential",
                                     description="Engine vs reference model over the differential grid.")
    parser.add_argument("--table", action="store_true", help="print the markdown table for docs/validation.md")
    parser.add_argument("--full", action="store_true", help="the whole grid, not the covering slice")
    parser.add_argument("--json", metavar="OUT", help="also write every outcome as JSON")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        outcomes = run_grid(args.full, Path(tmp))
    elapsed = time.perf_counter() - start
    if args.json:
        from sparsesim.atomic import write_text

        write_text(args.json, json.dumps([{"trace": o.trace, "config": dataclasses.asdict(o.config),
                                           "agree": o.agree, "refused": o.refused,
                                           "engine_error": o.engine_error, "reference_error": o.reference_error,
                                           "mismatches": [list(map(str, m)) for m in o.mismatches]}
                                          for o in outcomes], indent=1))
    print(table(outcomes) if args.table else f"{sum(o.agree for o in outcomes)}/{len(outcomes)} agree")
    print(f"\n({len(outcomes)} configurations in {elapsed:.0f} s)", file=sys.stderr)
    return 0 if all(o.agree for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
