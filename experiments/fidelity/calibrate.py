"""``calibrate-host``: measure this machine's storage and DRAM into a hardware profile.

What is measured (DESIGN §5), each cell ``--repeats`` times, cells in a shuffled order per repeat
so that a slow spell of a shared disk spreads over sizes instead of bending the curve:

* O_DIRECT random-read bandwidth for request sizes from the direct-I/O block size (512 B here)
  to 1 MiB and 1-32 reads outstanding, through :class:`ParallelReader` — the reader
  ``validate-io`` replays with. Sizes below 4 KiB are included because real neuron rows are that
  small (Gemma 3 270M fp16: 1280 B) and the simulator holds a curve flat beyond its first point,
  which would make sub-4 KiB requests look 3x cheaper than they are;
* DRAM copy bandwidth (numpy, read + write bytes) and float32 GEMM FLOP/s.

The profile's ``queue_depth`` is the smallest concurrency within 10 % of the best (geometric mean
over sizes): more threads than that buy nothing on this host and the replay uses exactly that
many. ``read_curve`` is the median bandwidth at that depth, made non-decreasing (the schema
requires it) by lowering any point above a larger size's: on this host bandwidth peaks at
128-512 KiB and 1 MiB reads are slower (9 of 11 calibrations made while building this). Bulk
reads are issued at ``max_request`` (1 MiB), so the large end must stay as measured; averaging
the bump in (pool adjacent violators) made 1 MiB 4-12 % too fast and dense streams 13-26 % too
quick in the validation study (docs/validation.md).
"""

from __future__ import annotations

import datetime as _dt
import os
import re
import socket
import time
from dataclasses import dataclass

import numpy as np
import yaml

from sparsesim.experiments.fidelity.direct_io import (
    PAGE, ParallelReader, check_directory, direct_alignment, filesystem_of, scratch_file,
)
from sparsesim.atomic import check_writable, write_text
from sparsesim.errors import InputError
from sparsesim.limits import CALIBRATION_SECONDS, REPEATS
from sparsesim.numbers import SEED
from sparsesim.simulator.profile import HardwareProfile, profile_from_dict
from sparsesim.simulator.units import BANDWIDTH, BYTES, FLOPS, TIME, format_quantity

REQUEST_SIZES = tuple(512 << i for i in range(12))      # 512 B .. 1 MiB
CONCURRENCIES = (1, 2, 4, 8, 16, 32)
LATENCY_SIZE = 4096                                     # the QD1 latency is quoted at 4 KiB, as in hw_profiles.md
DEPTH_TOLERANCE = 0.9                                   # queue depth: smallest within 10 % of the best
BATCH_WAVES = 16                                        # requests per timed batch = 16 x concurrency ...
BATCH_BYTES = 64 << 20                                  # ... capped at 64 MiB, so the tail is a few % of it
DRAM_BYTES = 128 << 20                                  # per copy; far beyond any CPU cache
GEMM_N = 1024


@dataclass(frozen=True)
class Calibration:
    """The raw measurements; :func:`build_profile` turns them into a profile."""

    host: str
    date: str
    directory: str
    filesystem: str                 # "ext4 on /dev/vda"
    alignment: int                  # bytes: O_DIRECT offset/size granularity
    sizes: tuple[int, ...]          # request sizes measured (>= alignment)
    concurrencies: tuple[int, ...]
    bandwidth: np.ndarray           # [repeats, concurrency, size] B/s
    dram_copy: np.ndarray           # [repeats] B/s (read + write)
    flops: np.ndarray               # [repeats] FLOP/s
    memory: int                     # bytes of RAM (MemTotal)
    scratch_bytes: int
    seconds: float                  # wall time spent


def _memory_bytes() -> int:
    with open("/proc/meminfo", encoding="ascii") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    raise OSError("MemTotal missing from /proc/meminfo")


def _time_cell(reader: ParallelReader, rng: np.random.Generator, file_size: int, size: int, align: int,
               budget: float) -> float:
    """Bandwidth (B/s) of random ``size``-byte reads at the reader's concurrency, for about ``budget`` s."""
    n = max(1, min(BATCH_WAVES * reader.concurrency, BATCH_BYTES // size))
    slots = (file_size - size) // align + 1
    elapsed = done = 0
    while True:
        offsets = (rng.integers(0, slots, n) * align).tolist()
        elapsed += reader.read(offsets, [size] * n)
        done += n * size
        if elapsed >= budget:
            return done / elapsed


def _dram_copy_bandwidth() -> float:
    src = np.ones(DRAM_BYTES // 8)
    dst = np.empty_like(src)
    np.copyto(dst, src)  # first touch: page faults are not bandwidth
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - t0)
    return 2 * DRAM_BYTES / best


def _gemm_flops() -> float:
    a = np.random.default_rng(0).random((GEMM_N, GEMM_N), dtype=np.float32)
    a @ a
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        a @ a
        best = min(best, time.perf_counter() - t0)
    return 2 * GEMM_N ** 3 / best


def measure(directory: str | os.PathLike, size: int = 1 << 30, seconds: float = 60.0, repeats: int = 3,
            seed: int = 0) -> Calibration:
    """Run the measurements (see the module docstring) on a scratch file of ``size`` bytes in ``directory``."""
    repeats = REPEATS.check(repeats, "--repeats")
    seconds = CALIBRATION_SECONDS.check(seconds, "--seconds")
    seed = SEED.check(seed, "--seed")
    directory = check_directory(directory)
    size = size // PAGE * PAGE
    if size < max(REQUEST_SIZES):
        raise InputError(f"--size {size}: must be at least {format_quantity(max(REQUEST_SIZES), BYTES)}")
    start = time.perf_counter()
    rng = np.random.default_rng(seed)
    bandwidth = np.zeros((repeats, len(CONCURRENCIES), len(REQUEST_SIZES)))
    dram, flops = np.zeros(repeats), np.zeros(repeats)
    with scratch_file(directory, size, "calibration scratch file", seed=seed) as fd:
        alignment = direct_alignment(fd)
        sizes = [s for s in REQUEST_SIZES if s >= alignment]
        cells = [(q, s) for q in range(len(CONCURRENCIES)) for s in range(len(sizes))]
        readers = [ParallelReader(fd, q, max(sizes)) for q in CONCURRENCIES]
        try:
            for r in range(repeats):
                dram[r], flops[r] = _dram_copy_bandwidth(), _gemm_flops()
                left = seconds - (time.perf_counter() - start)
                budget = max(left, 0.0) / ((repeats - r) * len(cells))
                for i in rng.permutation(len(cells)):
                    q, s = cells[i]
                    # Offsets aligned like fio's default (to the request size, up to a page).
                    align = max(alignment, min(sizes[s], PAGE))
                    bandwidth[r, q, s] = _time_cell(readers[q], rng, size, sizes[s], align, budget)
        finally:
            for reader in readers:
                reader.close()
    mount, fstype, device = filesystem_of(directory)
    return Calibration(
        host=socket.gethostname(), date=_dt.date.today().isoformat(), directory=str(directory.resolve()),
        filesystem=f"{fstype} on {device} (mounted at {mount})", alignment=alignment, sizes=tuple(sizes),
        concurrencies=CONCURRENCIES, bandwidth=bandwidth[:, :, :len(sizes)], dram_copy=dram, flops=flops,
        memory=_memory_bytes(), scratch_bytes=size, seconds=time.perf_counter() - start)


def _non_decreasing(values: np.ndarray) -> np.ndarray:
    """Each point lowered to the smallest bandwidth of any larger size (the largest sizes stay as measured)."""
    return np.minimum.accumulate(values[::-1])[::-1]


def chosen_depth(cal: Calibration) -> int:
    """Index into ``cal.concurrencies`` of the queue depth the profile uses (module docstring)."""
    median = np.median(cal.bandwidth, axis=0)
    score = np.exp(np.log(median / median.max(axis=0)).mean(axis=1))
    return int(np.flatnonzero(score >= DEPTH_TOLERANCE * score.max())[0])


def _spread(values: np.ndarray, dim) -> str:
    low, q1, mid, q3, high = (format_quantity(float(v), dim) for v in np.percentile(values, [0, 25, 50, 75, 100]))
    return f"median {mid}, IQR {q1}-{q3}, min-max {low}-{high}"


def _profile_name(host: str) -> str:
    return ("measured-" + re.sub(r"[^A-Za-z0-9._+-]", "-", host))[:64]


def profile_data(cal: Calibration) -> dict:
    """The profile mapping (YAML schema of ``docs/hardware-profiles.md``)."""
    d = chosen_depth(cal)
    q = cal.concurrencies[d]
    median = np.median(cal.bandwidth, axis=0)       # [concurrency, size]
    curve = _non_decreasing(median[d])
    at_4k = cal.sizes.index(LATENCY_SIZE)
    qd1_latency = LATENCY_SIZE / cal.bandwidth[:, 0, at_4k]    # per repeat, s
    where = f"measured on {cal.host}, {cal.date}"
    how = f"O_DIRECT random reads through sparsesim calibrate-host in {cal.directory} ({cal.filesystem})"

    def measured(value: str, what: str) -> dict:
        return {"value": value, "source": f"{where}: {what}"}

    size_str = lambda s: format_quantity(float(s), BYTES)                   # noqa: E731
    bw_str = lambda b: format_quantity(float(b), BANDWIDTH)                 # noqa: E731
    return {
        "name": _profile_name(cal.host),
        "description": (
            f"This host ({cal.host}) as measured on {cal.date}: {how}; {len(cal.bandwidth)} repeats. "
            f"Storage curve at {q} reads outstanding (Python threads, os.preadv); "
            f"4 KiB QD1 latency {_spread(qd1_latency, TIME)}; "
            f"1 MiB bandwidth at that depth {_spread(cal.bandwidth[:, d, -1], BANDWIDTH)}. "
            f"Per-size spread in the file's header comment."),
        "compute": {
            "flops": measured(format_quantity(float(np.median(cal.flops)), FLOPS),
                              f"numpy float32 GEMM {GEMM_N}^3, best of 3, median of repeats; "
                              f"{_spread(cal.flops, FLOPS)}"),
            "energy_per_flop": {"value": "44 pJ/FLOP", "estimate": "not measurable from software here; the "
                                "laptop-nvme preset's CPU estimate"},
        },
        "dram": {
            "capacity": measured(format_quantity(float(cal.memory), BYTES), "MemTotal in /proc/meminfo"),
            "bandwidth": measured(bw_str(np.median(cal.dram_copy)),
                                  f"numpy copy of {DRAM_BYTES >> 20} MiB, read + write bytes over time, best of 3, "
                                  f"median of repeats; {_spread(cal.dram_copy, BANDWIDTH)}"),
            "latency": {"value": "100 ns", "estimate": "not measured (numpy cannot chase pointers); a typical "
                        "DRAM load-to-use latency, which decode hardly depends on"},
            "energy_per_byte": {"value": "7 pJ/bit", "estimate": "not measurable from software here; the "
                                "laptop-nvme preset's DDR estimate"},
        },
        "storage": {
            "kind": "measured",
            "latency": measured(format_quantity(float(np.median(qd1_latency)), TIME),
                                f"4 KiB random O_DIRECT reads, one outstanding, seconds per read; "
                                f"{_spread(qd1_latency, TIME)}"),
            # The curve's top, not the best of all cells: a maximum over 72 noisy medians is biased high.
            "peak_bandwidth": measured(bw_str(curve[-1]), f"the read_curve's {size_str(cal.sizes[-1])} point"),
            "queue_depth": measured(str(q), f"smallest concurrency within {100 - 100 * DEPTH_TOLERANCE:.0f} % of "
                                            f"the best over {', '.join(map(str, cal.concurrencies))} (geometric "
                                            f"mean over sizes)"),
            "energy_per_byte": {"value": "0.9 nJ/B", "estimate": "not measurable from software here; the "
                                "laptop-nvme preset's NVMe estimate"},
            "read_curve": {
                "source": f"{where}: {how}; median of repeats at {q} outstanding, each point lowered to the "
                          f"smallest of the larger sizes' (non-decreasing)",
                "points": [[size_str(s), bw_str(b)] for s, b in zip(cal.sizes, curve)],
            },
        },
    }


def header_comment(cal: Calibration) -> str:
    """The spread of every measured cell, as a YAML comment block."""
    d = chosen_depth(cal)
    lines = [f"# Measured by `sparsesim calibrate-host` on {cal.host}, {cal.date}, in {cal.directory}",
             f"# ({cal.filesystem}); scratch file {format_quantity(float(cal.scratch_bytes), BYTES)}, "
             f"O_DIRECT alignment {cal.alignment} B, {len(cal.bandwidth)} repeats, {cal.seconds:.0f} s.",
             f"# read_curve: queue depth {cal.concurrencies[d]}; spread of the repeats per size:"]
    for i, s in enumerate(cal.sizes):
        lines.append(f"#   {format_quantity(float(s), BYTES):>9}: {_spread(cal.bandwidth[:, d, i], BANDWIDTH)}")
    lines.append("# Median bandwidth (MB/s) by reads outstanding (rows) and request size (columns):")
    lines.append("#   " + "QD".rjust(4) + "".join(f"{format_quantity(float(s), BYTES):>11}" for s in cal.sizes))
    median = np.median(cal.bandwidth, axis=0)
    for j, q in enumerate(cal.concurrencies):
        lines.append("#   " + f"{q:>4}" + "".join(f"{b / 1e6:>11.1f}" for b in median[j]))
    return "\n".join(lines) + "\n"


def calibrate_host(directory: str | os.PathLike, out: str | os.PathLike, size: int = 1 << 30,
                   seconds: float = 60.0, repeats: int = 3, seed: int = 0) -> HardwareProfile:
    """Measure this host into a profile YAML at ``out``; returns the profile as loaded."""
    check_writable(out)
    cal = measure(directory, size, seconds, repeats, seed)
    data = profile_data(cal)
    profile = profile_from_dict(data, str(out))   # never write a profile the loader would refuse
    write_text(out, header_comment(cal) + yaml.safe_dump(data, sort_keys=False, width=110, allow_unicode=True))
    return profile
