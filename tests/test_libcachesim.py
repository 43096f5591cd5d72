"""Agreement with libCacheSim (PyPI ``libcachesim``, the Python bindings of a widely used C cache
simulator) on the demand-only request sequence that ``sparsesim export-requests`` writes.

Three claims, each exact:

1. libCacheSim reads our oracleGeneral and CSV files back request for request (time, object,
   size, and in oracleGeneral the next-access position its Bélády needs).
2. libCacheSim's LRU, FIFO, LFU and Belady give the same miss ratio and byte miss ratio as the
   textbook flat caches of ``tests/reference_model.py`` on that sequence (so we know its
   semantics: LFU evicts the least frequently used, ties to the one that reached that frequency
   first; Belady evicts the farthest next request; objects are inserted on every miss).
3. The engine's demand-only replay (predictor ``none``, global partition) has libCacheSim's miss
   ratios wherever a flat cache never evicts a unit that its own layer step requests. The one
   semantic difference is that the engine never evicts a unit the current FFN needs (the
   contract's in-use protection: a step's lookups happen together, before its fill); a flat
   cache serves the step's requests one by one and may evict a needed unit before its turn. Where
   that happens the engine must instead equal the reference model, which protects as the engine
   does. ``python -m tests.test_libcachesim --table`` prints the table of docs/validation.md.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))   # also run as `python -m tests.test_libcachesim`

from difftraces import LIBCACHESIM_TRACES, PROFILE, SHARED_DATA, TraceCase, build_trace  # noqa: E402
from reference_model import (Config, decimal_fraction, flat_replay, next_request_positions,  # noqa: E402
                             replay, request_sequence, true_sets)

from sparsesim.errors import InputError  # noqa: E402
from sparsesim.simulator.export import export_requests, unit_offsets  # noqa: E402
from sparsesim.simulator.profile import load_profile  # noqa: E402
from sparsesim.simulator.simulate import simulate  # noqa: E402
from sparsesim.tracefile import read_trace  # noqa: E402

POLICIES = {"lru": "LRU", "fifo": "FIFO", "lfu": "LFU", "belady": "Belady"}   # ours -> libCacheSim's class


def libcachesim():
    if os.environ.get("CI"):   # a test dependency (the dev extra): absent in CI is a failure
        import libcachesim as lcs
        return lcs
    return pytest.importorskip("libcachesim")


def unit_bytes(trace) -> int:
    return (3 if trace.model.get("glu", True) else 2) * int(trace.model["d_model"]) * 2   # fp16


def capacity_units(trace, share: float) -> int:
    return math.floor(decimal_fraction(share) * sum(trace.d_ff))


def expected_requests(trace) -> list[tuple[int, int, int, int]]:
    """(time, obj_id, size, next_access_vtime) as libCacheSim's traceConv would write them."""
    seq = request_sequence(true_sets(trace.masks, trace.d_ff))
    offsets = [int(x) for x in unit_offsets(trace.d_ff)]
    nxt = next_request_positions([u for _, u in seq])
    size = unit_bytes(trace)
    return [(step, offsets[layer] + index, size, -1 if n == math.inf else int(n) + 1)
            for (step, (layer, index)), n in zip(seq, nxt)]


def read_back(lcs, path: Path, fmt: str) -> list[tuple[int, int, int, int]]:
    if fmt == "oracle-general":
        reader = lcs.TraceReader(str(path), lcs.TraceType.ORACLE_GENERAL_TRACE)
    else:
        params = lcs.ReaderInitParam()
        params.has_header, params.delimiter, params.obj_id_is_num = True, ",", True
        params.time_field, params.obj_id_field, params.obj_size_field = 1, 2, 3
        reader = lcs.TraceReader(str(path), lcs.TraceType.CSV_TRACE, params)
    never = 2**63 - 1   # the oracleGeneral reader turns the file's -1 (no next access) into INT64_MAX
    return [(r.clock_time, r.obj_id, r.obj_size, -1 if r.next_access_vtime == never else r.next_access_vtime)
            for r in reader]


def libcachesim_ratios(lcs, path: Path, policy: str, capacity_bytes: int) -> tuple[float, float]:
    """(miss ratio, byte miss ratio) of libCacheSim's policy over an oracleGeneral file."""
    reader = lcs.TraceReader(str(path), lcs.TraceType.ORACLE_GENERAL_TRACE)
    cache = getattr(lcs, POLICIES[policy])(capacity_bytes, hashpower=16)
    return cache.process_trace(reader)


def engine_ratios(trace, policy: str, share: float, profile) -> tuple[float, float]:
    record = simulate(trace, profile, "none", policy, settings=[f"dram_budget={share}", "partition=global"],
                      baselines=False)
    return (record["demand_misses"] / record["accesses"],
            record["ffn_storage_bytes"] / (record["accesses"] * unit_bytes(trace)))


# ------------------------------------------------------------------------------------------------
# pytest

@pytest.fixture(scope="module")
def exported(difftrace, tmp_path_factory):
    """case name -> (trace, oracleGeneral path), exported once."""
    directory = tmp_path_factory.mktemp("requests")
    done = {}

    def get(case: TraceCase):
        if case.name not in done:
            trace, _ = difftrace(case)
            path = directory / f"{case.name}.oracleGeneral"
            export_requests(trace.path, "oracle-general", path, progress=False)
            done[case.name] = (trace, path)
        return done[case.name]
    return get


CASES = [pytest.param(c, id=c.name) for c in LIBCACHESIM_TRACES]
POINTS = [pytest.param(c, p, s, id=f"{c.name}-{p}-{s}") for c in LIBCACHESIM_TRACES for p in POLICIES
          for s in c.budgets]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("fmt", ["oracle-general", "csv"])
def test_libcachesim_reads_the_export_back(difftrace, case, fmt, tmp_path):
    lcs = libcachesim()
    trace, _ = difftrace(case)
    path = tmp_path / f"requests.{fmt}"
    n = export_requests(trace.path, fmt, path, progress=False)
    got = read_back(lcs, path, fmt)
    expected = expected_requests(trace)
    assert n == len(expected) == len(got) == int(trace.active.sum())
    if fmt == "csv":   # libCacheSim 0.3.5's CSV reader does not read a next-access column (-2: none given)
        got, expected = [g[:3] for g in got], [e[:3] for e in expected]
    assert got == expected


@pytest.mark.parametrize("case,policy,share", POINTS)
def test_libcachesim_equals_the_flat_cache(exported, case, policy, share):
    lcs = libcachesim()
    trace, path = exported(case)
    c = capacity_units(trace, share)
    flat = flat_replay(request_sequence(true_sets(trace.masks, trace.d_ff)), c, policy)
    miss, byte_miss = libcachesim_ratios(lcs, path, policy, c * unit_bytes(trace))
    assert round(miss * flat.requests) == flat.misses and abs(miss - flat.misses / flat.requests) < 1e-12
    assert abs(byte_miss - miss) < 1e-12    # equal-sized objects


@pytest.mark.parametrize("case,policy,share", POINTS)
def test_engine_matches_libcachesim_up_to_in_use_protection(exported, instant_profile, case, policy, share):
    lcs = libcachesim()
    trace, path = exported(case)
    flat = flat_replay(request_sequence(true_sets(trace.masks, trace.d_ff)), capacity_units(trace, share), policy)
    miss, byte_miss = engine_ratios(trace, policy, share, instant_profile)
    if flat.same_step_evictions == 0:   # protection never binds: the two caches make the same choices
        lcs_miss, lcs_byte_miss = libcachesim_ratios(lcs, path, policy, capacity_units(trace, share) * unit_bytes(trace))
        assert (miss, byte_miss) == pytest.approx((lcs_miss, lcs_byte_miss), rel=0, abs=1e-12)
    else:                               # it binds: the engine is the protected cache of the contract
        ref = replay(trace, Config(predictor="none", cache=policy, budget=share, partition="global"))
        assert miss == pytest.approx(ref.total("misses") / ref.total("accesses"), rel=0, abs=1e-12)


def test_export_refuses_bad_format_and_output_leaving_no_partial_file(tmp_path, monkeypatch):
    import numpy as np

    from tracebuild import write_trace
    from sparsesim.simulator import export

    trace = write_trace(tmp_path / "t.parquet", np.random.default_rng(0).random((4, 2, 16)) < 0.3, d_model=8)
    with pytest.raises(InputError, match="'parquet': unknown; known formats: csv, oracle-general"):
        export_requests(trace, "parquet", tmp_path / "r.bin")
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match="r.csv: .*(not writable|cannot create)"):   # its parent is a file
        export_requests(trace, "csv", tmp_path / "file" / "r.csv")

    def disk_full(path, records, d_ff):
        Path(path).write_text("time,obj_id\n0,1\n")          # part of the output, then the device fills
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(export, "_write_csv", disk_full)
    with pytest.raises(InputError, match="No space left on device"):
        export_requests(trace, "csv", tmp_path / "r.csv")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "t.parquet"]


def test_export_refuses_expert_traces(shared_data, tmp_path):
    from sparsesim.tracing.importers import import_file

    moe = tmp_path / "qwen.parquet"
    import_file(shared_data / "moe-routes" / "qwen.route.csv", moe)
    with pytest.raises(InputError, match="units are experts"):
        export_requests(moe, "csv", tmp_path / "r.csv")
    assert not (tmp_path / "r.csv").exists()


def test_export_requests_cli_one_line_errors(tmp_path):
    import subprocess

    import numpy as np

    from tracebuild import write_trace

    trace = write_trace(tmp_path / "t.parquet", np.random.default_rng(0).random((4, 2, 16)) < 0.3, d_model=8)

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "sparsesim.experiments.cli", "export-requests", *map(str, args)],
                              capture_output=True, text=True, timeout=120)
    ok = cli(trace, "--format", "oracle-general", "-o", tmp_path / "r.bin")
    assert ok.returncode == 0 and (tmp_path / "r.bin").stat().st_size == 24 * int(ok.stdout.split()[1])
    for args, fragment in ((("--format", "xml", "-o", tmp_path / "x"), "known formats: csv, oracle-general"),
                           (("--format", "csv", "-o", tmp_path / "t.parquet" / "x"), "t.parquet/x: ")):
        bad = cli(trace, *args)
        lines = bad.stderr.strip().splitlines()
        assert bad.returncode == 2 and len(lines) == 1 and lines[0].startswith("sparsesim: error: ") \
            and fragment in lines[0], bad.stderr
    assert not (tmp_path / "x").exists()


# ------------------------------------------------------------------------------------------------
# The table for docs/validation.md


def table() -> str:
    import libcachesim as lcs

    profile = load_profile(str(PROFILE))
    lines = ["| trace | policy | capacity (units) | libCacheSim miss ratio | libCacheSim byte miss ratio | "
             "flat model miss ratio | sparsesim miss ratio | sparsesim byte miss ratio | same-step evictions (flat) | "
             "reference model (protected) miss ratio |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    with tempfile.TemporaryDirectory() as tmp:
        for case in LIBCACHESIM_TRACES:
            if case.name == "stories260K" and not SHARED_DATA.is_dir():
                continue
            out, _ = build_trace(case, Path(tmp))
            trace = read_trace(out)
            path = Path(tmp) / f"{case.name}.oracleGeneral"
            export_requests(out, "oracle-general", path, progress=False)
            seq = request_sequence(true_sets(trace.masks, trace.d_ff))
            for policy in POLICIES:
                for share in case.budgets:
                    c = capacity_units(trace, share)
                    flat = flat_replay(seq, c, policy)
                    miss, byte_miss = libcachesim_ratios(lcs, path, policy, c * unit_bytes(trace))
                    ours, ours_bytes = engine_ratios(trace, policy, share, profile)
                    ref = replay(trace, Config(predictor="none", cache=policy, budget=share, partition="global"))
                    lines.append(f"| {case.name} | {policy} | {c} ({share:.0%}) | {miss:.4f} | {byte_miss:.4f} | "
                                 f"{flat.misses / flat.requests:.4f} | {ours:.4f} | {ours_bytes:.4f} | "
                                 f"{flat.same_step_evictions} | {ref.total('misses') / ref.total('accesses'):.4f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.test_libcachesim",
                                     description="sparsesim's demand-only replay beside libCacheSim.")
    parser.add_argument("--table", action="store_true", help="print the markdown table for docs/validation.md (default)")
    parser.parse_args(argv)
    print(table())
    return 0


if __name__ == "__main__":
    sys.exit(main())
