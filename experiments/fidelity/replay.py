"""``validate-io``: replay the simulator's read schedule against a real weight file and compare times.

1. Simulate the trace with the given profile, policies and scenario, collecting ``io_log``: every
   storage batch the simulated device served, in order, with its simulated service time.
2. Materialize the FFN weights as a scratch file (random data, real blocks) in the layout the
   scenario names: :func:`sparsesim.simulator.storage.request_extents` gives each batch's requests as byte
   extents of that file — the same function family the simulator sizes them with, checked batch by
   batch against the simulated sizes.
3. Read every batch with O_DIRECT, one batch at a time in simulated order, with as many reads
   outstanding as the profile's queue depth, and time it; ``--repeats`` passes give the spread.

Only service times are compared: the simulator overlaps I/O with compute, but a batch's service
time (``end - start`` in the log) is what its storage model predicts, and a token's I/O time is
the sum over its batches. O_DIRECT needs block-aligned extents, so each request is widened to the
enclosing aligned range (a 1280-byte fp16 Gemma row is read as 1536 bytes); the report counts both.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from sparsesim.experiments.fidelity import DEFAULT_MAX_DISK
from sparsesim.experiments.fidelity.direct_io import (
    PAGE, ParallelReader, check_directory, check_free_space, direct_alignment, scratch_file,
)
from sparsesim.atomic import check_writable, write_text
from sparsesim.simulator.reads import IoBatch
from sparsesim.errors import InputError
from sparsesim.simulator.profile import HardwareProfile, load_profile
from sparsesim.simulator.scenario import ModelFootprint, Scenario
from sparsesim.simulator.simulate import simulate, split_settings
from sparsesim.simulator.storage import request_extents
from sparsesim.tracefile import Trace, read_trace
from sparsesim.simulator.units import BYTES, format_quantity


@dataclass(frozen=True)
class ReplayBatch:
    """One simulated batch as real reads: extents of the weight file, before alignment."""

    token: int
    layer: int
    kind: str
    simulated: float          # s, the simulated service time
    offsets: np.ndarray       # bytes
    sizes: np.ndarray         # bytes

    def aligned(self, align: int) -> tuple[list[int], list[int]]:
        """The smallest ``align``-aligned extents that cover the requests (what O_DIRECT can read)."""
        start = self.offsets // align * align
        end = -(-(self.offsets + self.sizes) // align) * align
        return start.tolist(), (end - start).tolist()


@dataclass(frozen=True)
class ReplayPlan:
    """What one configuration reads: the simulator's batches as weight-file extents."""

    config: dict
    batches: list[ReplayBatch]
    file_bytes: int           # the weight file the extents address

    def measure(self, fd: int, repeats: int) -> np.ndarray:
        """Read every batch in order, ``repeats`` passes; [repeats, batches] seconds."""
        align = direct_alignment(fd)
        extents = [b.aligned(align) for b in self.batches]
        largest = max((max(sizes) for _, sizes in extents), default=PAGE)
        measured = np.zeros((repeats, len(extents)))
        with ParallelReader(fd, self.config["queue_depth"], largest) as reader:
            for r in range(repeats):
                for i, (offsets, sizes) in enumerate(extents):
                    measured[r, i] = reader.read(offsets, sizes)
        return measured


@dataclass
class IoValidation:
    """Simulated and measured service times of every batch (``measured``: [repeats, batches] s)."""

    plan: ReplayPlan
    measured: np.ndarray
    alignment: int

    @property
    def config(self) -> dict:
        return self.plan.config

    @property
    def batches(self) -> list[ReplayBatch]:
        return self.plan.batches

    @property
    def simulated_total(self) -> float:
        return float(sum(b.simulated for b in self.batches))

    @property
    def measured_totals(self) -> np.ndarray:
        return self.measured.sum(axis=1)

    @property
    def measured_total(self) -> float:
        return float(np.median(self.measured_totals))

    @property
    def error(self) -> float:
        """Relative error of the simulated total I/O time against the measured one (median of repeats)."""
        return self.simulated_total / self.measured_total - 1

    @property
    def spread(self) -> float:
        """(max - min) / median of the repeated measured totals: the noise of the measurement itself."""
        totals = self.measured_totals
        return float((totals.max() - totals.min()) / np.median(totals))

    def per_token(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Token ids, simulated and measured (median over repeats) I/O seconds per token."""
        tokens = np.array([b.token for b in self.batches])
        ids = np.unique(tokens)
        sim = np.array([b.simulated for b in self.batches])
        simulated = np.array([sim[tokens == t].sum() for t in ids])
        measured = np.median(np.stack([[m[tokens == t].sum() for t in ids] for m in self.measured]), axis=0)
        return ids, simulated, measured


def read_schedule(io_log: Sequence[IoBatch], fp: ModelFootprint, scenario: Scenario) -> list[ReplayBatch]:
    """The log's batches in the order the simulated device served them, as weight-file extents."""
    batches = []
    for b in sorted(io_log, key=lambda b: b.start):
        if b.neurons is None:
            raise InputError("validate-io replays FFN neuron reads only; streamed non-FFN weights "
                             "(nonffn_in=flash) are not materialized in the weight file")
        offsets, sizes = request_extents(b.neurons, b.layer, fp.d_ff, fp.row_bytes, fp.matrices, scenario.layout,
                                         scenario.coalesce, scenario.max_request)
        values, counts = np.unique(sizes, return_counts=True)
        order = np.argsort(b.sizes)
        if not (np.array_equal(values, b.sizes[order]) and np.array_equal(counts, b.counts[order])):
            raise AssertionError(f"request_extents disagrees with the simulated request sizes "
                                 f"(token {b.token}, layer {b.layer})")
        batches.append(ReplayBatch(b.token, b.layer, b.kind, b.end - b.start, offsets, sizes))
    return batches


def first_tokens(trace: Trace, tokens: int | None) -> Trace:
    """The trace cut to its first ``tokens`` tokens (the replay reads every simulated byte, so keep it short)."""
    if tokens is None or tokens >= trace.n_tokens:
        return trace
    if tokens < 1:
        raise InputError(f"--tokens must be >= 1, got {tokens}")
    cut = slice(0, tokens)
    return dataclasses.replace(trace, seq=trace.seq[cut], pos=trace.pos[cut], token=trace.token[cut],
                               masks=trace.masks[cut], active=trace.active[cut],
                               extra={k: v[cut] for k, v in trace.extra.items()})


def weight_file_bytes(trace: Trace, scenario: Scenario) -> int:
    """Size of the FFN weight file, rounded up to a page (O_DIRECT writes whole blocks)."""
    fp = ModelFootprint.from_meta(trace.model, scenario)
    return -(-int(np.ceil(fp.ffn_bytes)) // PAGE) * PAGE


def scenario_of(settings: Sequence[str]) -> tuple[Scenario, list[str]]:
    """The scenario that ``--set``-style ``settings`` describe, and the profile overrides among them."""
    scenario_fields, profile_overrides = split_settings(settings)
    return dataclasses.replace(Scenario(), **scenario_fields), profile_overrides


def plan_replay(trace: str | os.PathLike | Trace, profile: str | os.PathLike, predictor: str, cache: str,
                settings: Sequence[str], tokens: int | None = None, seed: int = 0) -> ReplayPlan:
    """Simulate one configuration and turn its read schedule into weight-file extents.

    ``settings`` are ``--set``-style: scenario fields (``dram_budget=0.25``, ``layout=bundled``) and
    dotted profile fields. ``tokens`` keeps only the first tokens of the trace.
    """
    trace = first_tokens(trace if isinstance(trace, Trace) else read_trace(trace), tokens)
    scenario, profile_overrides = scenario_of(settings)
    if scenario.ffn_in != "flash":
        raise InputError("validate-io needs ffn_in=flash: with the FFN in DRAM there are no storage reads")
    if scenario.two_phase:
        raise InputError("validate-io: two_phase=true is not replayed (its partial-neuron reads have no "
                         "weight-file extents yet); validate the one-phase schedule instead")
    shaped = [f"{name}={getattr(scenario, name)}" for name, plain in
              (("read_granularity", 0), ("pipeline", "none"), ("io_threads", 1)) if getattr(scenario, name) != plain]
    shaped += ["memory_management=page-cache"] if scenario.memory_management == "page-cache" else []
    hw: HardwareProfile = load_profile(os.fspath(profile), profile_overrides)
    if scenario.io_depth not in (0, hw.storage.queue_depth):
        shaped.append(f"io_depth={scenario.io_depth}")
    unit = hw.unit(scenario.compute_unit)
    if unit is not None and unit.capacity is not None:
        shaped.append(f"compute_unit={scenario.compute_unit}")
    if shaped:
        raise InputError(f"validate-io replays reads as the device serves them at its queue depth; {shaped[0]} "
                         f"shapes or times them otherwise (padding, page faults, pipelined slots, fewer reads in "
                         f"flight, a transfer to a unit's own memory) and is not replayed")
    io_log: list[IoBatch] = []
    simulate(trace, hw, predictor, cache, scenario=scenario, baselines=False, io_log=io_log, seed=seed)
    fp = ModelFootprint.from_meta(trace.model, scenario)
    config = {"trace": str(trace.path), "model": trace.model["name"], "tokens": trace.n_tokens,
              "profile": hw.name, "profile_path": hw.path, "predictor": predictor, "cache": cache,
              **scenario.to_dict(), "queue_depth": hw.storage.queue_depth}
    return ReplayPlan(config, read_schedule(io_log, fp, scenario), weight_file_bytes(trace, scenario))


def describe_weight_file(trace: Trace, scenario: Scenario) -> str:
    return (f"the weight file of {trace.model['name']} ({trace.n_layers} layers, d_ff {trace.d_ff[0]}, "
            f"{scenario.precision})")


def validate_io(trace: str | os.PathLike | Trace, profile: str | os.PathLike, predictor: str, cache: str,
                settings: Sequence[str], directory: str | os.PathLike, repeats: int = 3,
                tokens: int | None = None, max_disk: int = DEFAULT_MAX_DISK, seed: int = 0) -> IoValidation:
    """Simulate, then replay the simulated reads on a real weight file (module docstring)."""
    if repeats < 1:
        raise InputError(f"--repeats must be >= 1, got {repeats}")
    directory = check_directory(directory)
    trace = trace if isinstance(trace, Trace) else read_trace(trace)
    scenario, _ = scenario_of(settings)
    what = describe_weight_file(trace, scenario)
    check_free_space(directory, weight_file_bytes(trace, scenario), what, max_disk)  # fail before simulating
    plan = plan_replay(trace, profile, predictor, cache, settings, tokens, seed)
    with scratch_file(directory, plan.file_bytes, what, seed=seed, max_disk=max_disk) as fd:
        return IoValidation(plan, plan.measure(fd, repeats), direct_alignment(fd))


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.3f}"


def write_csv(result: IoValidation, path: Path) -> None:
    """One row per batch: simulated and measured (median, min, max over repeats) service time."""
    lines = ["batch,token,layer,kind,requests,requested_bytes,read_bytes,simulated_s,measured_s,"
             "measured_min_s,measured_max_s"]
    med, low, high = np.median(result.measured, axis=0), result.measured.min(axis=0), result.measured.max(axis=0)
    for i, b in enumerate(result.batches):
        read = sum(b.aligned(result.alignment)[1])
        lines.append(f"{i},{b.token},{b.layer},{b.kind},{len(b.sizes)},{int(b.sizes.sum())},{read},"
                     f"{b.simulated:.9g},{med[i]:.9g},{low[i]:.9g},{high[i]:.9g}")
    write_text(path, "\n".join(lines) + "\n")


LARGE_REQUEST = 64 << 10   # bytes: above this the host is bandwidth-bound, below it IOPS-bound


def by_batch_shape(results: Sequence[IoValidation]) -> list[str]:
    """Error by batch depth (fewer requests than the queue depth or not) and request size, over ``results``.

    Fewer requests than the queue depth is where queueing matters: the model charges each request
    the full-depth bandwidth.
    """
    cells: dict[tuple[str, str], np.ndarray] = {}
    for res in results:
        q = res.config["queue_depth"]
        median = np.median(res.measured, axis=0)
        for b, measured in zip(res.batches, median):
            depth = "< queue depth" if len(b.sizes) < q else ">= queue depth"
            size = "< 64 KiB" if b.sizes.mean() < LARGE_REQUEST else ">= 64 KiB"
            cells.setdefault((depth, size), np.zeros(3))[:] += (1, b.simulated, measured)
    total = sum(c[2] for c in cells.values())
    lines = ["| requests per batch | mean request | batches | simulated s | measured s | error | "
             "share of measured time |", "|---|---|---|---|---|---|---|"]
    for (depth, size), (n, sim, meas) in sorted(cells.items()):
        lines.append(f"| {depth} | {size} | {int(n)} | {sim:.4g} | {meas:.4g} | {sim / meas - 1:+.1%} | "
                     f"{meas / total:.2%} |")
    return lines


def report_markdown(result: IoValidation) -> str:
    c = result.config
    ids, sim_tok, meas_tok = result.per_token()
    token_err = sim_tok / np.where(meas_tok > 0, meas_tok, np.nan) - 1
    requested = sum(int(b.sizes.sum()) for b in result.batches)
    read = sum(sum(b.aligned(result.alignment)[1]) for b in result.batches)
    totals = result.measured_totals
    lines = [
        "# validate-io: simulated vs measured I/O time", "",
        f"- trace `{c['trace']}` ({c['model']}), profile `{c['profile']}` ({c['profile_path']})",
        f"- predictor `{c['predictor']}`, cache `{c['cache']}`, dram_budget {c['dram_budget']}, "
        f"precision {c['precision']}, layout {c['layout']}, coalesce {c['coalesce']}, "
        f"max_request {c['max_request']}",
        f"- first {c['tokens']} tokens; weight file {format_quantity(float(result.plan.file_bytes), BYTES)}; "
        f"reads with O_DIRECT, {c['queue_depth']} outstanding (the profile's queue depth), alignment "
        f"{result.alignment} B; {len(result.measured)} repeats",
        f"- {len(result.batches)} batches, {sum(len(b.sizes) for b in result.batches)} requests; "
        f"{format_quantity(float(requested), BYTES)} requested, {format_quantity(float(read), BYTES)} read "
        f"after alignment", "",
        "| | I/O time total (ms) |", "|---|---|",
        f"| simulated | {_ms(result.simulated_total)} |",
        f"| measured (median of repeats) | {_ms(result.measured_total)} |",
        f"| measured, min-max of repeats | {_ms(totals.min())}-{_ms(totals.max())} |",
        f"| error (simulated / measured - 1) | {result.error:+.1%} |",
        f"| measurement spread ((max-min) / median) | {result.spread:.1%} |", "",
        f"Per token ({len(ids)} tokens with reads): median |error| {np.nanmedian(np.abs(token_err)):.1%}, "
        f"worst {np.nanmax(np.abs(token_err)):.1%}.", "",
        "By batch shape:", "", *by_batch_shape([result]), "",
    ]
    return "\n".join(lines)


def write_outputs(result: IoValidation, out_dir: str | os.PathLike) -> tuple[Path, Path]:
    out = Path(out_dir)
    csv_path, md_path = out / "validate-io.csv", out / "validate-io.md"
    write_csv(result, csv_path)
    write_text(md_path, report_markdown(result))
    return csv_path, md_path


def check_outputs(out_dir: str | os.PathLike) -> None:
    check_writable(Path(out_dir) / "validate-io.csv")
