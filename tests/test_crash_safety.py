"""SIGKILL at seeded random points during trace, sweep, calibrate-host and report, then restart.

The harness is ``benchmarks/reliability.py`` (the long campaign, ``make bench-reliability``, uses
the same pieces with 20+ kills per command; its last figures are in docs/reliability.md). Here a
few seeded kills per command: after every kill each file under a final name must load with the
product's own loader; the restart must finish, and its outputs must equal an uninterrupted run's
(apart from timing and provenance fields), with no duplicate runs.
"""

from __future__ import annotations

import numpy as np
import pytest
import yaml

from benchmarks.reliability import (SWEEP_SPEC, audit, calibrate_target, kill_campaign, kill_once, report_target,
                                    run_to_completion, sweep_target, trace_target)
from sparsesim.experiments.fidelity import direct_io
from sparsesim.experiments.sweep import recorded_statuses


def assert_recovered(summary: dict) -> None:
    assert summary["corrupt_files"] == 0, summary["corrupt"]
    assert summary["mismatches"] == [], summary["mismatches"]
    assert summary["recovered"] == summary["restarts"] >= 1


@pytest.fixture(scope="module")
def sweep_spec(tmp_path_factory):
    spec = tmp_path_factory.mktemp("spec") / "kill.yaml"
    spec.write_text(yaml.safe_dump(SWEEP_SPEC, sort_keys=False))
    return spec


@pytest.fixture(scope="module")
def sweep_reference(sweep_spec, tmp_path_factory):
    """An uninterrupted run of the sweep (also the input of the report kills)."""
    out = tmp_path_factory.mktemp("sweep") / "reference"
    run_to_completion(sweep_target(sweep_spec), out)
    return out


def test_sigkilled_sweep_resumes_with_exactly_one_row_per_config(sweep_spec, sweep_reference, tmp_path):
    """The first kill waits until 6 of the 40 runs are recorded, so it lands mid-sweep; the second
    lands at a seeded random point of the restart; the last restart finishes and its table equals
    the uninterrupted run's (one row per run id, timing excepted)."""
    out = tmp_path / "results"
    first = kill_once(sweep_target(sweep_spec, ready_runs=6), out, delay_s=0.0)
    assert not first["finished_before_kill"] and first["corrupt"] == []
    assert 6 <= len(recorded_statuses(out)) < 40 and not (out / "results.parquet").exists(), \
        "the kill must land mid-sweep"
    target = sweep_target(sweep_spec)
    second = kill_once(target, out, delay_s=float(np.random.default_rng(9).uniform(0, target.max_delay_s)))
    assert second["corrupt"] == []
    done = len(recorded_statuses(out))
    rerun = run_to_completion(target, out)
    assert f"{done} already recorded" in rerun.stdout
    assert target.differences(out, sweep_reference) == []
    assert not list(out.rglob(".*.tmp"))


def test_kill_campaign_counts_a_corrupt_file_under_a_final_name(sweep_spec, tmp_path):
    """The audit is not vacuous: a truncated part under its final name is reported."""
    out = tmp_path / "results"
    kill_once(sweep_target(sweep_spec, ready_runs=2), out, delay_s=0.0)
    part = next((out / "runs").glob("[!.]*.parquet"))
    part.write_bytes(part.read_bytes()[:100])
    found = audit(out, sweep_target(sweep_spec))
    assert [c.split(":")[0] for c in found.corrupt] == [str(part.relative_to(out))]


def test_sigkilled_trace_leaves_no_partial_trace_and_restarts(shared_data, tmp_path):
    summary = kill_campaign(trace_target(shared_data / "llama2c-stories260K"), tmp_path, kills=2, seed=1)
    assert_recovered(summary)


@pytest.fixture
def disk_dir(tmp_path):
    if direct_io.filesystem_of(tmp_path)[1] in direct_io.MEMORY_FILESYSTEMS:
        pytest.skip("the temporary directory is on a memory filesystem; O_DIRECT reads need a disk")
    return tmp_path / "disk"


def test_sigkilled_calibrate_host_leaves_no_partial_profile_nor_scratch_file(disk_dir, tmp_path):
    disk_dir.mkdir()
    summary = kill_campaign(calibrate_target(disk_dir), tmp_path / "runs", kills=2, seed=2)
    assert_recovered(summary)    # includes: no scratch file left in disk_dir


def test_sigkilled_report_leaves_no_partial_page_and_restarts(sweep_reference, tmp_path):
    summary = kill_campaign(report_target(sweep_reference), tmp_path, kills=2, seed=3)
    assert_recovered(summary)
