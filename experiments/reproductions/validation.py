"""Validation study: the storage model against real O_DIRECT reads on this host (docs/validation.md).

One command: ``sparsesim validate-study -o DIR --dir DISK_DIR --gemma-trace T`` (or
``python -m sparsesim.experiments.cli validate-study ...``). Steps:

1. ``calibrate-host`` writes ``DIR/host.yaml`` (skipped with ``--profile``), with 5 repeats so each
   cell of the curve is sampled at 5 moments of the 2 minutes;
2. every configuration below is simulated with that profile and its read schedule turned into
   weight-file extents (:func:`sparsesim.experiments.fidelity.replay.plan_replay`);
3. per trace, one weight file is written and every configuration's schedule is read from it,
   ``repeats`` rounds with the configurations in a new random order each round, so that a slow
   spell of the shared disk or CPU spreads over all of them instead of biasing one;
4. ``calibrate-host`` again (``DIR/host-after.yaml``) and every configuration simulated with it
   too: how far the errors move between two calibrations of the same host minutes apart is the
   part of the error that is the host drifting, not the model;
5. tables: per configuration simulated vs measured I/O time per token, error, spread of the
   repeats; summary: median and worst |error|, Kendall tau of the two rankings.

Configurations differ in predictor, cache policy, DRAM budget, layout and coalescing, chosen so
that their simulated I/O times differ by more than the measurement noise (>= 20 %) — otherwise a
ranking comparison tests the noise. (Left out for that reason: a ``window`` cache, which at these
budgets reads exactly what LRU reads, and Gemma "oracle bundled 50%", which came within 1-12 % of
"dense stream" depending on the calibration.) Per-matrix and bundled layouts, and coalesced vs per-row
requests, read the same neurons through different request sizes. The Gemma 3 270M trace has
1280-byte fp16 rows (sub-4 KiB requests); the synthetic trace has Llama-2-7B layers (d_model 4096,
d_ff 11008: 8 KiB rows), 8 of them, so its weight file stays at 2.2 GB.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from sparsesim.experiments.fidelity.calibrate import calibrate_host
from sparsesim.experiments.fidelity.direct_io import check_directory, direct_alignment, scratch_file
from sparsesim.experiments.fidelity.replay import IoValidation, ReplayPlan, by_batch_shape, plan_replay
from sparsesim.atomic import write_text
from sparsesim.errors import InputError
from sparsesim.simulator.predictors import PREDICTORS
from sparsesim.simulator.synth import synthesize
from sparsesim.tracefile import read_trace


@dataclass(frozen=True)
class Configuration:
    name: str
    trace: str                      # key of TRACES
    predictor: str
    cache: str
    settings: tuple[str, ...]


GEMMA, SYNTHETIC = "gemma-3-270m", "synthetic-7b-8-layers"
TOKENS = {GEMMA: 16, SYNTHETIC: 16}    # every simulated byte is read for real: keep replays to seconds
CALIBRATION_BYTES = 1 << 30
CALIBRATION_REPEATS = 5

CONFIGURATIONS: tuple[Configuration, ...] = (
    Configuration("dense stream", GEMMA, "dense", "lru", ("dram_budget=0.1",)),
    Configuration("oracle bundled 25%", GEMMA, "oracle", "lru", ("dram_budget=0.25", "layout=bundled")),
    Configuration("oracle lru 75%", GEMMA, "oracle", "lru", ("dram_budget=0.75",)),
    Configuration("oracle lru 50%", GEMMA, "oracle", "lru", ("dram_budget=0.5",)),
    Configuration("none lru 25%", GEMMA, "none", "lru", ("dram_budget=0.25",)),
    Configuration("previous-token lru 25%", GEMMA, "previous-token", "lru", ("dram_budget=0.25",)),
    Configuration("oracle rows 25%", GEMMA, "oracle", "lru", ("dram_budget=0.25", "coalesce=false")),
    Configuration("dense stream", SYNTHETIC, "dense", "lru", ("dram_budget=0.15",)),
    Configuration("oracle bundled 25%", SYNTHETIC, "oracle", "lru", ("dram_budget=0.25", "layout=bundled")),
    Configuration("oracle lru 50%", SYNTHETIC, "oracle", "lru", ("dram_budget=0.5",)),
    Configuration("oracle lru 25%", SYNTHETIC, "oracle", "lru", ("dram_budget=0.25",)),
    Configuration("none lru 10%", SYNTHETIC, "none", "lru", ("dram_budget=0.1",)),
)


def make_synthetic_trace(path: Path) -> str:
    """Llama-2-7B layers, 10 % active, Zipf-skewed hot neurons (so that cache size matters within 16 tokens)."""
    return synthesize(path, layers=8, d_model=4096, d_ff=11008, glu=True, tokens=TOKENS[SYNTHETIC], active=0.1,
                      persistence=0.5, hot_skew=1.0, seed=0, progress=False)


def available(configs: Sequence[Configuration]) -> list[Configuration]:
    """The configurations whose predictor is registered (another part may not have added it yet)."""
    known = set(PREDICTORS.names())
    return [c for c in configs if c.predictor.partition(":")[0] in known]


def kendall_tau(a: Sequence[float], b: Sequence[float]) -> float:
    """Kendall's tau-a of two rankings (1: same order, -1: reversed); ties count as neither."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    n = len(a)
    if n < 2:
        return float("nan")
    i, j = np.triu_indices(n, k=1)
    return float(np.sum(np.sign(a[i] - a[j]) * np.sign(b[i] - b[j])) / (n * (n - 1) / 2))


def _measure_interleaved(plans: list[ReplayPlan], fd: int, repeats: int, rng: np.random.Generator) -> list[np.ndarray]:
    measured = [np.zeros((repeats, len(p.batches))) for p in plans]
    for r in range(repeats):
        for i in rng.permutation(len(plans)):
            measured[i][r] = plans[i].measure(fd, 1)[0]
    return measured


def validate_trace(trace_path: str, configs: Sequence[Configuration], profile: str, directory: Path,
                   repeats: int, rng: np.random.Generator) -> list[IoValidation]:
    """Plan every configuration on one trace, then measure them all on one weight file."""
    trace = read_trace(trace_path)
    plans = [plan_replay(trace, profile, c.predictor, c.cache, c.settings, TOKENS[c.trace]) for c in configs]
    size = max(p.file_bytes for p in plans)
    what = f"the weight file of {trace.model['name']}"
    with scratch_file(directory, size, what, max_disk=None) as fd:
        align = direct_alignment(fd)
        measured = _measure_interleaved(plans, fd, repeats, rng)
    return [IoValidation(p, m, align) for p, m in zip(plans, measured)]


def simulated_with(result: IoValidation, trace_path: str, config: Configuration, profile: str) -> float:
    """Total simulated I/O time of the same configuration under another profile; NaN if the schedule changes.

    The measurement is of one read schedule, so another profile's prediction is comparable only
    when it leads to the very same batches (prefetch timing could regroup them).
    """
    plan = plan_replay(trace_path, profile, config.predictor, config.cache, config.settings, TOKENS[config.trace])
    same = len(plan.batches) == len(result.batches) and all(
        a.token == b.token and a.layer == b.layer and np.array_equal(a.offsets, b.offsets) and
        np.array_equal(a.sizes, b.sizes) for a, b in zip(plan.batches, result.batches))
    return float(sum(b.simulated for b in plan.batches)) if same else float("nan")


def row(config: Configuration, result: IoValidation, simulated_after: float) -> dict:
    tokens = result.config["tokens"]
    _, sim_tok, meas_tok = result.per_token()
    totals = result.measured_totals
    requests = sum(len(b.sizes) for b in result.batches)
    return {
        "trace": config.trace, "configuration": config.name, "predictor": config.predictor, "cache": config.cache,
        "settings": " ".join(config.settings), "tokens": tokens, "batches": len(result.batches),
        "requests_per_token": requests / tokens,
        "mean_request_bytes": sum(int(b.sizes.sum()) for b in result.batches) / max(requests, 1),
        "simulated_ms_per_token": result.simulated_total / tokens * 1e3,
        "measured_ms_per_token": result.measured_total / tokens * 1e3,
        "measured_min_ms_per_token": totals.min() / tokens * 1e3,
        "measured_max_ms_per_token": totals.max() / tokens * 1e3,
        "error": result.error, "spread": result.spread,
        "token_median_abs_error": float(np.median(np.abs(sim_tok / meas_tok - 1))),
        "error_with_recalibration": simulated_after / result.measured_total - 1,
    }


def _csv(rows: list[dict]) -> str:
    columns = list(rows[0])
    fmt = lambda v: f"{v:.6g}" if isinstance(v, float) else str(v)  # noqa: E731
    return "\n".join([",".join(columns)] + [",".join(fmt(r[c]) for c in columns) for r in rows]) + "\n"


def _batch_csv(configs: Sequence[Configuration], results: Sequence[IoValidation]) -> str:
    lines = ["trace,configuration,batch,token,layer,kind,requests,requested_bytes,simulated_s,measured_s"]
    for c, res in zip(configs, results):
        median = np.median(res.measured, axis=0)
        for i, b in enumerate(res.batches):
            lines.append(f"{c.trace},{c.name},{i},{b.token},{b.layer},{b.kind},{len(b.sizes)},{int(b.sizes.sum())},"
                         f"{b.simulated:.9g},{median[i]:.9g}")
    return "\n".join(lines) + "\n"


def discordant_pairs(rows: list[dict]) -> list[str]:
    """Pairs of configurations of one trace that the simulator and the measurement order differently."""
    out = []
    for a_i, a in enumerate(rows):
        for b in rows[a_i + 1:]:
            if a["trace"] != b["trace"]:
                continue
            sim = np.sign(a["simulated_ms_per_token"] - b["simulated_ms_per_token"])
            meas = np.sign(a["measured_ms_per_token"] - b["measured_ms_per_token"])
            if sim * meas < 0:
                gap = abs(a["simulated_ms_per_token"] / b["simulated_ms_per_token"] - 1)
                out.append(f"{a['trace']}: '{a['configuration']}' vs '{b['configuration']}' (simulated {gap:.0%} "
                           f"apart; measurement spreads {a['spread']:.0%} and {b['spread']:.0%})")
    return out


def summary(rows: list[dict]) -> dict:
    errors = np.abs([r["error"] for r in rows])
    errors_after = np.abs([r["error_with_recalibration"] for r in rows])
    spreads = np.array([r["spread"] for r in rows])
    taus = {trace: kendall_tau([r["simulated_ms_per_token"] for r in rows if r["trace"] == trace],
                               [r["measured_ms_per_token"] for r in rows if r["trace"] == trace])
            for trace in dict.fromkeys(r["trace"] for r in rows)}
    return {"configurations": len(rows), "median_abs_error": float(np.median(errors)),
            "worst_abs_error": float(errors.max()), "median_spread": float(np.median(spreads)),
            "worst_spread": float(spreads.max()),
            "median_abs_error_with_recalibration": float(np.nanmedian(errors_after)),
            "tau_all": kendall_tau([r["simulated_ms_per_token"] for r in rows],
                                   [r["measured_ms_per_token"] for r in rows]),
            "tau_per_trace": taus}


def summary_line(rows: list[dict]) -> str:
    s = summary(rows)
    per_trace = ", ".join(f"{k} {v:.2f}" for k, v in s["tau_per_trace"].items())
    return (f"{s['configurations']} configurations: median |error| {s['median_abs_error']:.1%}, worst "
            f"{s['worst_abs_error']:.1%}; measurement spread median {s['median_spread']:.1%}, worst "
            f"{s['worst_spread']:.1%}; Kendall tau {s['tau_all']:.2f} overall ({per_trace}); median |error| "
            f"with the second calibration {s['median_abs_error_with_recalibration']:.1%}")


def _after(error: float) -> str:
    return "n/a (other schedule)" if np.isnan(error) else f"{error:+.1%}"


def markdown(rows: list[dict], results: Sequence[IoValidation], profile: str, profile_after: str) -> str:
    lines = ["# Validation study: simulated vs measured I/O time", "",
             f"Profile: `{profile}`; second calibration after the replays: `{profile_after}`. I/O time per token = "
             "sum of the service times of the token's storage batches; measured = median of the repeats (min-max "
             "in brackets). Error = simulated / measured - 1. Spread = (max - min) / median of the repeats.", "",
             "| trace | configuration | requests/token | mean request | simulated ms/token | measured ms/token | "
             "error | spread | per-token median abs error | error, 2nd calibration |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['trace']} | {r['configuration']} | {r['requests_per_token']:.0f} | "
                     f"{r['mean_request_bytes'] / 1024:.1f} KiB | {r['simulated_ms_per_token']:.1f} | "
                     f"{r['measured_ms_per_token']:.1f} ({r['measured_min_ms_per_token']:.1f}-"
                     f"{r['measured_max_ms_per_token']:.1f}) | {r['error']:+.1%} | {r['spread']:.1%} | "
                     f"{r['token_median_abs_error']:.1%} | {_after(r['error_with_recalibration'])} |")
    lines += ["", summary_line(rows), ""]
    discordant = discordant_pairs(rows)
    if discordant:
        lines += ["Pairs ranked differently by simulation and measurement:", ""] + [f"- {d}" for d in discordant] + [""]
    lines += ["By batch shape (all configurations, batch times summed):", "", *by_batch_shape(results), ""]
    return "\n".join(lines)


def run(out_dir: str | os.PathLike, directory: str | os.PathLike, gemma_trace: str | os.PathLike,
        profile: str | None = None, repeats: int = 5, calibrate_seconds: float = 120.0,
        configs: Sequence[Configuration] = CONFIGURATIONS, seed: int = 0) -> list[dict]:
    """The whole study (module docstring); returns one row per configuration."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    disk = check_directory(directory)
    if not Path(gemma_trace).is_file():
        raise InputError(f"--gemma-trace {gemma_trace}: no such file; make one with: sparsesim trace --model "
                         f"gemma-3-270m --text ../shared/data/wikitext-2-raw/wiki.test.raw --sparsity 0.5 "
                         f"--tokens 512 --window 512 --calib-tokens 512 -o {gemma_trace}")
    if profile is None:
        profile = str(out / "host.yaml")
        calibrate_host(disk, profile, CALIBRATION_BYTES, calibrate_seconds, CALIBRATION_REPEATS, seed)
    traces = {GEMMA: str(gemma_trace), SYNTHETIC: make_synthetic_trace(out / f"{SYNTHETIC}.parquet")}
    rng = np.random.default_rng(seed)
    chosen = available(configs)
    ordered = [c for key in traces for c in chosen if c.trace == key]
    results: list[IoValidation] = []
    for key, path in traces.items():
        group = [c for c in ordered if c.trace == key]
        if group:
            results += validate_trace(path, group, profile, disk, repeats, rng)
    profile_after = str(out / "host-after.yaml")
    calibrate_host(disk, profile_after, CALIBRATION_BYTES, calibrate_seconds, CALIBRATION_REPEATS, seed + 1)
    rows = [row(c, r, simulated_with(r, traces[c.trace], c, profile_after)) for c, r in zip(ordered, results)]
    write_text(out / "validation.csv", _csv(rows))
    write_text(out / "validation-batches.csv", _batch_csv(ordered, results))
    write_text(out / "validation.md", markdown(rows, results, profile, profile_after))
    return rows
