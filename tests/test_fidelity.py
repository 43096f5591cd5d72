"""Host calibration and real-read replay (experiments/fidelity): small sizes, real O_DIRECT reads."""

from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from sparsesim.experiments.fidelity import direct_io
from sparsesim.experiments.fidelity.calibrate import CONCURRENCIES, calibrate_host
from sparsesim.experiments.fidelity.replay import first_tokens, validate_io, write_outputs
from sparsesim.experiments.reproductions.validation import kendall_tau
from sparsesim.simulator import bitset, neuronset
from sparsesim.simulator.reads import IoBatch
from sparsesim.errors import InputError
from sparsesim.simulator.profile import load_profile
from sparsesim.simulator.simulate import simulate
from sparsesim.simulator.storage import request_extents, request_sizes
from sparsesim.tracefile import read_trace
from tracebuild import write_trace

ROOT = Path(__file__).resolve().parents[1]
MiB = 1 << 20


@pytest.fixture(scope="module")
def disk_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("fidelity")
    if direct_io.filesystem_of(path)[1] in direct_io.MEMORY_FILESYSTEMS:
        pytest.skip("the temporary directory is on a memory filesystem; O_DIRECT reads need a disk")
    return path


def scratch_names(directory: Path) -> list[str]:
    return [p.name for p in directory.iterdir() if p.name.startswith(direct_io.SCRATCH_PREFIX)]


@pytest.fixture(scope="module")
def small_trace(tmp_path_factory):
    rng = np.random.default_rng(0)
    active = rng.random((6, 3, 512)) < 0.3
    return write_trace(tmp_path_factory.mktemp("trace") / "t.parquet", active, d_model=640)


# -- calibrate-host ------------------------------------------------------------------------------------------


def test_calibrate_host_writes_a_profile_load_profile_accepts(disk_dir, tmp_path):
    out = tmp_path / "host.yaml"
    calibrate_host(disk_dir, out, size=4 * MiB, seconds=1, repeats=2)
    profile = load_profile(str(out))
    s = profile.storage
    assert s.kind == "measured"
    assert s.queue_depth in CONCURRENCIES
    assert 0 < s.latency < 0.1 and s.peak_bandwidth > 1e6
    sizes = [size for size, _ in s.read_curve]
    bandwidths = [bw for _, bw in s.read_curve]
    assert sizes[0] <= 4096 and sizes[-1] == MiB and bandwidths == sorted(bandwidths)
    measured = [f for f, src in profile.sources.items() if src.startswith("measured on ")]
    assert {"storage.latency", "storage.peak_bandwidth", "storage.read_curve", "dram.bandwidth"} <= set(measured)
    text = out.read_text()
    assert "IQR" in text and "min-max" in text        # the spread of the repeats is recorded
    assert scratch_names(disk_dir) == []


def test_calibrate_host_refuses_a_memory_filesystem(tmp_path):
    shm = Path("/dev/shm")
    if not shm.is_dir() or direct_io.filesystem_of(shm)[1] != "tmpfs":
        pytest.skip("no tmpfs at /dev/shm")
    with pytest.raises(InputError, match="memory filesystem"):
        calibrate_host(shm, tmp_path / "host.yaml", size=4 * MiB, seconds=1, repeats=1)


def test_calibrate_host_refuses_a_filesystem_without_o_direct(disk_dir, tmp_path, monkeypatch):
    real_open = os.open

    def no_direct(path, flags, *args):
        if flags & os.O_DIRECT:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_open(path, flags, *args)

    monkeypatch.setattr(direct_io.os, "open", no_direct)
    with pytest.raises(InputError, match="does not support O_DIRECT"):
        calibrate_host(disk_dir, tmp_path / "host.yaml", size=4 * MiB, seconds=1, repeats=1)
    assert scratch_names(disk_dir) == []


def test_calibrate_host_refuses_a_size_larger_than_the_free_space(disk_dir, tmp_path):
    too_big = shutil.disk_usage(disk_dir).free + (1 << 30)
    with pytest.raises(InputError, match="free"):
        calibrate_host(disk_dir, tmp_path / "host.yaml", size=too_big, seconds=1, repeats=1)
    assert not (tmp_path / "host.yaml").exists()


# -- request_extents -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["per-matrix", "bundled"])
@pytest.mark.parametrize("coalesce", [True, False])
@pytest.mark.parametrize("max_request", [4096, 1 << 20, 5000])
def test_request_extents_agree_with_request_sizes(layout, coalesce, max_request):
    rng = np.random.default_rng(1)
    d_ff, row, matrices = (300, 301, 299), 1280.0, 3
    layer_bytes = [d * row * matrices for d in d_ff]
    for layer, width in enumerate(d_ff):
        for density in (0.0, 0.05, 0.5, 1.0):
            packed = bitset.from_bool(rng.random(width) < density, 38)
            requests = request_sizes(neuronset.from_row(packed), row, matrices, layout, coalesce, max_request)
            offsets, extent_sizes = request_extents(packed, layer, d_ff, row, matrices, layout, coalesce,
                                                    max_request)
            values, value_counts = np.unique(extent_sizes, return_counts=True)
            assert dict(zip(values.tolist(), value_counts.tolist())) == requests
            # In file order, disjoint, inside this layer's part of the file.
            assert np.all(offsets[1:] >= offsets[:-1] + extent_sizes[:-1])
            base = sum(layer_bytes[:layer])
            assert np.all(offsets >= base) and np.all(offsets + extent_sizes <= base + layer_bytes[layer])


def test_request_extents_place_rows_matrix_after_matrix():
    packed = bitset.from_bool(np.array([False, True, True, False]), 1)
    offsets, sizes = request_extents(packed, 1, (4, 4), 10.0, 3, "per-matrix", True, 1 << 20)
    layer_base = 4 * 3 * 10
    assert offsets.tolist() == [layer_base + 10, layer_base + 40 + 10, layer_base + 80 + 10]
    assert sizes.tolist() == [20, 20, 20]
    offsets, sizes = request_extents(packed, 1, (4, 4), 10.0, 3, "bundled", True, 1 << 20)
    assert offsets.tolist() == [layer_base + 30] and sizes.tolist() == [60]


def test_request_extents_refuse_fractional_rows():
    packed = bitset.from_bool(np.array([True]), 1)
    with pytest.raises(InputError, match="whole number of bytes"):
        request_extents(packed, 0, (1,), 2.5, 3, "per-matrix", True, 1 << 20)


# -- validate-io ---------------------------------------------------------------------------------------------


def test_validate_io_replays_the_simulated_schedule(small_trace, disk_dir, tmp_path):
    settings = ["dram_budget=0.5", "layout=bundled"]
    result = validate_io(small_trace, "laptop-nvme", "oracle", "lru", settings, disk_dir, repeats=2, tokens=4)
    log: list[IoBatch] = []
    simulate(first_tokens(read_trace(small_trace), 4), "laptop-nvme", "oracle", "lru", settings=settings,
             baselines=False, io_log=log)
    assert len(result.batches) == len(log) > 0
    assert result.simulated_total == pytest.approx(sum(b.end - b.start for b in log))
    assert sum(int(b.sizes.sum()) for b in result.batches) == pytest.approx(sum(float((b.sizes * b.counts).sum())
                                                                              for b in log))
    assert result.measured.shape == (2, len(log)) and np.all(result.measured > 0)
    csv_path, md_path = write_outputs(result, tmp_path / "out")
    lines = csv_path.read_text().splitlines()
    assert lines[0].startswith("batch,token,layer,kind") and len(lines) == len(log) + 1
    assert "error" in md_path.read_text()
    assert scratch_names(disk_dir) == []


@pytest.mark.parametrize("d_ff, d_model, max_disk, message", [(64, 1 << 20, 100 * MiB, "--max-disk"),
                                                              (4096, 1 << 24, 1 << 50, "free")])
def test_validate_io_refuses_a_weight_file_that_does_not_fit(tmp_path, disk_dir, d_ff, d_model, max_disk, message):
    active = np.ones((2, 2, d_ff), dtype=bool)   # 805 MB and 824 GB of fp16 FFN weights
    trace = write_trace(tmp_path / "big.parquet", active, d_model=d_model, attention_params=0)
    with pytest.raises(InputError, match=message):
        validate_io(trace, "laptop-nvme", "oracle", "lru", ["dram_budget=0.5"], disk_dir, repeats=1,
                    max_disk=max_disk)
    assert scratch_names(disk_dir) == []


@pytest.mark.parametrize("setting, named", [
    ("read_granularity=4096", "read_granularity=4096"), ("memory_management=page-cache", "memory_management=page-cache"),
    ("io_depth=1", "io_depth=1"), ("pipeline=cluster", "pipeline=cluster"), ("compute_unit=gpu", "compute_unit=gpu"),
])
def test_validate_io_refuses_a_read_path_it_does_not_replay(small_trace, tmp_path, setting, named):
    with pytest.raises(InputError, match=rf"^validate-io replays reads as the device serves them .*; {named} "):
        validate_io(small_trace, "linux-rtx4090", "oracle", "lru", ["dram_budget=0.5", setting], tmp_path, repeats=1)


# -- interruption leaves nothing behind ------------------------------------------------------------------------


def _run_and_interrupt(args: list[str], sig: int, directory: Path) -> subprocess.CompletedProcess:
    """Start ``sparsesim ARGS``, wait until its scratch file is open, send ``sig``."""
    proc = subprocess.Popen([sys.executable, "-m", "sparsesim.experiments.cli", *args], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    fd_dir = Path(f"/proc/{proc.pid}/fd")
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            links = [os.readlink(fd) for fd in fd_dir.iterdir()]
        except (FileNotFoundError, ProcessLookupError):
            links = []
        if any(direct_io.SCRATCH_PREFIX in link for link in links):
            break
        time.sleep(0.02)
    assert proc.poll() is None, proc.communicate()
    time.sleep(0.3)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


@pytest.mark.parametrize("sig, status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_interrupted_calibrate_host_leaves_no_scratch_file(disk_dir, tmp_path, sig, status):
    out = tmp_path / "host.yaml"
    done = _run_and_interrupt(["calibrate-host", "--dir", str(disk_dir), "--size", "256 MiB", "--seconds", "60",
                               "-o", str(out)], sig, disk_dir)
    assert done.returncode == status, done.stderr
    assert scratch_names(disk_dir) == [] and not out.exists()


def test_interrupted_validate_io_leaves_no_weight_file(small_trace, disk_dir, tmp_path):
    out = tmp_path / "out"
    done = _run_and_interrupt(["validate-io", "--trace", small_trace, "--profile", "laptop-nvme", "--dram-budget",
                               "0.5", "--set", "coalesce=false", "--dir", str(disk_dir), "--repeats", "100000",
                               "-o", str(out)], signal.SIGINT, disk_dir)
    assert done.returncode == 130, done.stderr
    assert scratch_names(disk_dir) == [] and not (out / "validate-io.csv").exists()


def test_kendall_tau():
    assert kendall_tau([1, 2, 3], [10, 20, 30]) == 1
    assert kendall_tau([1, 2, 3], [30, 20, 10]) == -1
    assert kendall_tau([1, 2, 3, 4], [1, 2, 4, 3]) == pytest.approx(4 / 6)
