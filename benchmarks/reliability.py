"""Reliability campaigns: kill-and-restart of the CLI, and peak memory of streamed replays.

Two reusable pieces, used by the tests in ``make test`` (a few seeded kills, two trace sizes) and
by the long campaign here (``make bench-reliability``: many kills per command, several sizes),
whose last results are recorded in ``docs/reliability.md`` and ``benchmarks/results_reliability.json``:

* :class:`KillTarget` / :func:`kill_campaign`: start a ``sparsesim`` command as a subprocess (in its
  own session, so its workers die with it), SIGKILL it after a seeded random delay, check every
  file under a final (non-temporary) name in its output directory with the product's own loader,
  restart it, and after the last restart compare the finished outputs with an uninterrupted run.
* :func:`write_shaped_trace` / :func:`streamed_replay_peak_rss`: a trace of a published model
  shape with cheap random masks, and the peak resident set of ``sparsesim simulate --stream`` on it
  in a fresh child process started by a small launcher (its own ``ru_maxrss``, not inheriting ours);
  :func:`analyze_memory` does the same for ``sparsesim analyze`` at 1x, 4x and 16x a trace length.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results_reliability.json"
SHARED_DATA = ROOT.parent / "shared" / "data"
TEMPORARY = re.compile(r"^\..+\.tmp$")     # what simulator/atomic.py writes before the rename
MB = 1e6


# ---------------------------------------------------------------------------------------------
# Kill and restart


def sparsesim_command(argv: list[str]) -> list[str]:
    return [sys.executable, "-m", "sparsesim.experiments.cli", *map(str, argv)]


@dataclass
class KillTarget:
    """One CLI command under test.

    ``argv(out)`` is the command line writing into directory ``out``; ``check(path)`` raises if a
    file under a final name is not complete and valid (loaded with the product's own loader);
    ``differences(out, reference)`` lists how two finished output directories differ beyond
    timing and provenance fields (empty: the same). ``ready(out)``, when given, must hold before
    the random delay starts (e.g. "some runs are recorded"), so kills land in the interesting part.
    ``allowed`` are final names that may exist without being outputs (a lock file). Kills land
    uniformly in [0, the time an uninterrupted run took], or [0, ``max_delay_s``] without one.
    """

    name: str
    argv: Callable[[Path], list]
    check: Callable[[Path], None]
    differences: Callable[[Path, Path], list[str]]
    max_delay_s: float
    ready: Callable[[Path], bool] | None = None
    allowed: tuple[str, ...] = ()
    timeout_s: float = 300.0


@dataclass
class Audit:
    final: list[Path] = field(default_factory=list)
    temporaries: list[Path] = field(default_factory=list)
    corrupt: list[str] = field(default_factory=list)


def audit(out: Path, target: KillTarget) -> Audit:
    """Every file under ``out``: temporaries are allowed; each file under a final name must check."""
    result = Audit()
    for path in sorted(p for p in out.rglob("*") if p.is_file()):
        if TEMPORARY.match(path.name):
            result.temporaries.append(path)
        elif path.name in target.allowed:
            continue
        else:
            result.final.append(path)
            try:
                target.check(path)
            except Exception as e:   # anything: a file under a final name must load
                result.corrupt.append(f"{path.relative_to(out)}: {type(e).__name__}: {e}")
    return result


def run_to_completion(target: KillTarget, out: Path) -> subprocess.CompletedProcess:
    done = subprocess.run(sparsesim_command(target.argv(out)), cwd=ROOT, capture_output=True, text=True,
                          timeout=target.timeout_s)
    if done.returncode != 0:
        raise AssertionError(f"{target.name} failed with status {done.returncode}: {done.stderr[-2000:]}")
    return done


def kill_once(target: KillTarget, out: Path, delay_s: float) -> dict:
    """Start the command, wait for ``ready`` then ``delay_s``, SIGKILL its whole session, audit ``out``."""
    proc = subprocess.Popen(sparsesim_command(target.argv(out)), cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.monotonic() + target.timeout_s
        while target.ready is not None and not target.ready(out) and proc.poll() is None:
            if time.monotonic() > deadline:
                raise AssertionError(f"{target.name}: never became ready for the kill")
            time.sleep(0.02)
        try:
            proc.wait(timeout=delay_s)
            finished = True          # it ended before the kill: a kill "after the end"
        except subprocess.TimeoutExpired:
            finished = False
        try:
            os.killpg(proc.pid, signal.SIGKILL)   # the command and any workers, as the OOM killer would
        except ProcessLookupError:
            pass
    finally:
        _, err = proc.communicate()
    if finished and proc.returncode != 0:
        raise AssertionError(f"{target.name} failed before the kill: {err.decode()[-2000:]}")
    found = audit(out, target)
    return {"delay_s": round(delay_s, 3), "finished_before_kill": finished, "final_files": len(found.final),
            "temporaries": len(found.temporaries), "corrupt": found.corrupt}


def kill_campaign(target: KillTarget, workdir: Path, *, kills: int, seed: int, kills_per_restart: int = 2,
                  reference: Path | None = None) -> dict:
    """``kills`` SIGKILLs at seeded random points, in rounds of ``kills_per_restart`` kills of the
    same output directory followed by a restart that runs to completion; each completed round is
    compared with an uninterrupted reference run. Returns the counts (see ``docs/reliability.md``)."""
    rng = np.random.default_rng(seed)
    max_delay = target.max_delay_s
    if reference is None:    # kills land anywhere in the time an uninterrupted run takes (now, on this machine)
        reference = workdir / "reference"
        start = time.monotonic()
        run_to_completion(target, reference)
        max_delay = time.monotonic() - start
    log, rounds, recovered, mismatches = [], 0, 0, []
    while len(log) < kills:
        out = workdir / f"round-{rounds}"
        for _ in range(min(kills_per_restart, kills - len(log))):
            log.append(kill_once(target, out, float(rng.uniform(0.0, max_delay))))
        run_to_completion(target, out)
        after = audit(out, target)
        diff = after.corrupt + target.differences(out, reference)
        if after.temporaries and target.name == "sweep":    # a rerun clears what a killed sweep left
            diff.append(f"temporaries left after the rerun: {[p.name for p in after.temporaries]}")
        mismatches += [f"round {rounds}: {d}" for d in diff]
        recovered += not diff
        rounds += 1
        shutil.rmtree(out)
    return {"command": target.name, "kills": len(log), "finished_before_kill": sum(k["finished_before_kill"]
                                                                                   for k in log),
            "left_temporaries": sum(k["temporaries"] > 0 for k in log),
            "final_files_checked": sum(k["final_files"] for k in log),
            "corrupt_files": sum(len(k["corrupt"]) for k in log), "corrupt": [c for k in log for c in k["corrupt"]],
            "restarts": rounds, "recovered": recovered, "mismatches": mismatches, "seed": seed}


# -- the four commands ----------------------------------------------------------------------------------------

def _trace_meta_without_provenance(meta: dict) -> dict:
    meta = json.loads(json.dumps(meta))
    meta.pop("created_utc", None)
    meta.get("checksum", {}).pop("metadata", None)   # a digest of the metadata, created_utc included
    for key in ("argv", "out", "save_thresholds"):
        meta.get("config", {}).pop(key, None)
    return meta


def trace_target(model_dir: Path, tokens: int = 512) -> KillTarget:
    """``sparsesim trace`` of llama2.c stories260K (fast on a CPU) with --save-thresholds."""
    from sparsesim.tracefile import read_trace
    from sparsesim.tracing.thresholds import load_thresholds

    def check(path: Path) -> None:
        if path.suffix == ".parquet":
            read_trace(path)
        elif path.suffix == ".json":
            doc = json.loads(path.read_text())
            load_thresholds(path, {"name": "stories260K", "n_layers": len(doc["d_ff"]), "d_ff": doc["d_ff"]})
        else:
            raise AssertionError("unexpected output")

    def differences(out: Path, ref: Path) -> list[str]:
        a, b = read_trace(out / "t.parquet"), read_trace(ref / "t.parquet")
        diff = [name for name in ("masks", "token", "seq", "pos", "active")
                if not np.array_equal(getattr(a, name), getattr(b, name))]
        if _trace_meta_without_provenance(a.meta) != _trace_meta_without_provenance(b.meta):
            diff.append("metadata")
        if (out / "th.json").read_text() != (ref / "th.json").read_text():
            diff.append("thresholds file")
        return [f"trace: {d} differ from the uninterrupted run" for d in diff]

    return KillTarget(
        name="trace",
        argv=lambda out: ["trace", "--model", model_dir, "--text", "pydoc", "--sparsity", "0.5", "--tokens", tokens,
                          "--window", 64, "--calib-tokens", 256, "--no-ppl", "-o", out / "t.parquet",
                          "--save-thresholds", out / "th.json"],
        check=check, differences=differences, max_delay_s=6.0)


SWEEP_SPEC = {
    "name": "kill",
    "traces": [{"synth": {"layers": 4, "d_model": 128, "d_ff": 512, "tokens": 48, "active": 0.1,
                          "persistence": 0.6, "seed": seed}} for seed in (1, 2)],
    "profiles": ["apple-m1-max"],
    "grid": {"predictor": ["oracle", "none"], "cache": ["lru", "window:k=2"],
             "dram_budget": [0.3, 0.4, 0.5, 0.6, 0.7]},
}


def sweep_target(spec: Path, workers: int = 2, ready_runs: int = 0) -> KillTarget:
    """``sparsesim sweep`` (process pool); ``ready_runs``: the delay starts once that many runs are recorded."""
    import pyarrow.parquet as pq

    from sparsesim.experiments.sweep import TIMING_COLUMNS, read_results, recorded_statuses
    from sparsesim.tracefile import read_trace

    def check(path: Path) -> None:
        if path.parent.name == "runs":
            table = pq.read_table(path)
            assert table.num_rows == 1 and table.column("run_id")[0].as_py() == path.stem, "not one row of its run"
        elif path.parent.name == "traces":
            read_trace(path)
        elif path.name == "results.parquet":
            ids = pq.read_table(path, columns=["run_id"]).column("run_id").to_pylist()
            assert len(ids) == len(set(ids)), "duplicate run ids"
        elif path.name == "sweep.json":
            json.loads(path.read_text())
        else:
            raise AssertionError("unexpected output")

    def table(out: Path):
        return read_results(out).drop_columns(list(TIMING_COLUMNS)).to_pandas().sort_values("run_id") \
            .reset_index(drop=True)

    def differences(out: Path, ref: Path) -> list[str]:
        a, b = table(out), table(ref)
        if len(a) != a["run_id"].nunique():
            return ["sweep: duplicate run ids"]
        ref_ids = sorted(b["run_id"])
        if sorted(a["run_id"]) != ref_ids:
            return [f"sweep: {len(a)} runs recorded, the uninterrupted run has {len(b)}"]
        compacted = pq.read_table(out / "results.parquet", columns=["run_id"]).column("run_id").to_pylist()
        if sorted(compacted) != ref_ids:
            return ["sweep: results.parquet does not hold exactly one row per run"]
        # the trace column is an absolute path into each results directory; its content hash is compared
        a, b = a.drop(columns=["trace"]), b.drop(columns=["trace"])
        return [] if a.equals(b) else ["sweep: records differ from the uninterrupted run"]

    return KillTarget(
        name="sweep",
        argv=lambda out: ["sweep", spec, "-o", out, "--workers", workers, "--no-progress"],
        check=check, differences=differences, max_delay_s=4.0, allowed=(".sweep.lock",),
        ready=(lambda out: len(recorded_statuses(out)) >= ready_runs) if ready_runs else None)


def calibrate_target(disk_dir: Path) -> KillTarget:
    """``sparsesim calibrate-host`` at its smallest settings (4 MiB scratch file, 1 s, 2 repeats)."""
    from sparsesim.experiments.fidelity.direct_io import SCRATCH_PREFIX
    from sparsesim.simulator.profile import load_profile

    def check(path: Path) -> None:
        assert path.name == "host.yaml", "unexpected output"
        assert load_profile(str(path)).storage.kind == "measured"

    def differences(out: Path, ref: Path) -> list[str]:
        import yaml

        diff = []
        if set(yaml.safe_load((out / "host.yaml").read_text())) != set(yaml.safe_load((ref / "host.yaml").read_text())):
            diff.append("calibrate-host: the profile's fields differ from the uninterrupted run")
        scratch = [p.name for p in disk_dir.iterdir() if p.name.startswith(SCRATCH_PREFIX)]
        if scratch:
            diff.append(f"calibrate-host: scratch files left in {disk_dir}: {scratch}")
        return diff

    return KillTarget(
        name="calibrate-host",
        argv=lambda out: ["calibrate-host", "--dir", disk_dir, "--size", "4 MiB", "--seconds", 1, "--repeats", 2,
                          "-o", out / "host.yaml"],
        check=check, differences=differences, max_delay_s=3.5)


PLOTLY_IDS = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def report_target(results_dir: Path) -> KillTarget:
    """``sparsesim report`` of a finished sweep: the page and its three CSV tables."""
    import csv

    def check(path: Path) -> None:
        text = path.read_text()
        if path.suffix == ".html":
            assert text.rstrip().endswith("</html>"), "the page is not complete"
        elif path.suffix == ".csv":
            rows = list(csv.reader(text.splitlines()))
            assert rows and len({len(r) for r in rows}) == 1, "ragged CSV"
        else:
            raise AssertionError("unexpected output")

    def differences(out: Path, ref: Path) -> list[str]:
        names = sorted(p.name for p in ref.iterdir())
        if sorted(p.name for p in out.iterdir()) != names:
            return ["report: other files than the uninterrupted run"]
        # plotly gives every div a random id; the rest of the page must be identical
        return [f"report: {n} differs from the uninterrupted run" for n in names
                if PLOTLY_IDS.sub("ID", (out / n).read_text()) != PLOTLY_IDS.sub("ID", (ref / n).read_text())]

    return KillTarget(name="report", argv=lambda out: ["report", results_dir, "-o", out / "report.html"],
                      check=check, differences=differences, max_delay_s=2.0)


# ---------------------------------------------------------------------------------------------
# Peak memory of streamed replays


def write_shaped_trace(path: str | os.PathLike, shape: str, tokens: int, seed: int = 0, block: int = 64,
                       vocab: int = 32000) -> Path:
    """A trace of a published model shape (``sparsesim.simulator.synth.SHAPES``) whose masks are independent
    random bits of density 1/16, written in row groups of ``block`` tokens — fast to write
    (synthesize() draws a Markov chain per neuron, about 25 ms per 70B token here); the memory a
    replay needs does not depend on which bits are set."""
    from sparsesim.simulator.synth import SHAPES, shape_model
    from sparsesim.tracefile import TraceWriter, mask_bytes

    model = shape_model(shape, *SHAPES[shape])
    rng = np.random.default_rng(seed)
    n_layers, n_bytes = model["n_layers"], mask_bytes(model["d_ff"])
    meta = {"kind": "synthetic", "model": model, "synthetic": {"generator": "independent bits, density 1/16",
                                                              "tokens": tokens, "seed": seed}}
    with TraceWriter(path, meta) as writer:
        for start in range(0, tokens, block):
            n = min(block, tokens - start)
            masks = rng.integers(0, 256, (n, n_layers, n_bytes), dtype=np.uint8)
            for _ in range(3):
                masks &= rng.integers(0, 256, masks.shape, dtype=np.uint8)
            writer.write(np.zeros(n, np.int32), np.arange(start, start + n), rng.integers(0, vocab, n), masks)
    return Path(path)


# Arrow's allocator (mimalloc) returns freed pages after a delay that stretches on a loaded machine;
# without it the peak RSS of one replay varied by up to 170 MB between runs. With the delay at 0
# the peak is the memory in use (repeat runs agree within a few MB).
REPLAY_ENV = {**os.environ, "MIMALLOC_PURGE_DELAY": "0", "MIMALLOC_RESET_DELAY": "0"}


def streamed_replay_peak_rss(trace: Path, partition: str = "per-layer", stream: bool = True,
                             data_limit: int | None = None) -> dict:
    """Replay ``trace`` with ``sparsesim simulate --stream`` (predictor none, the whole FFN as budget)
    in a fresh process and return its own peak RSS. ``partition=global`` adds the LRU policy's
    global index (see docs/reliability.md); ``data_limit`` caps the child's data segment
    (RLIMIT_DATA, bytes): what "the memory the simulator is allowed" means in the benchmark."""

    argv = ["simulate", "--trace", trace, "--stream" if stream else "--no-stream", "--predictor", "none",
            "--dram-budget", "1.0", "--set", f"partition={partition}", "--no-baselines", "--json", "-"]
    row = command_peak_rss(argv, trace, data_limit)
    record = json.loads(row.pop("stdout")) if row["error"] is None else None
    return {**row, "completed": record is not None and record["tokens"] > 0, "partition": partition,
            "streamed": stream}


# A forked child's high-water mark starts at its parent's resident set (os.wait4 in this process would
# report at least the campaign's own RSS), so a small launcher process forks the command and writes the
# child's own ru_maxrss (KiB) and exit code to a file.
_LAUNCHER = """\
import os, resource, sys
out, limit, cmd = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
pid = os.fork()
if pid == 0:
    if limit:
        resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))
    os.execv(cmd[0], cmd)
_, status, usage = os.wait4(pid, 0)
with open(out, "w") as f:
    f.write(f"{usage.ru_maxrss} {os.waitstatus_to_exitcode(status)}")
"""


def command_peak_rss(argv: list, trace: Path, data_limit: int | None = None) -> dict:
    """Run ``sparsesim ARGV`` on ``trace`` in a fresh process; its own peak RSS, time, output and error."""
    from sparsesim.tracefile import mask_bytes, read_meta

    meta, pf = read_meta(trace)
    start = time.monotonic()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err, \
            tempfile.TemporaryDirectory() as tmp:
        result = Path(tmp) / "rusage"
        launcher = [sys.executable, "-c", _LAUNCHER, str(result), str(data_limit or 0), *sparsesim_command(argv)]
        proc = subprocess.Popen(launcher, cwd=ROOT, stdout=out, stderr=err, env=REPLAY_ENV, start_new_session=True)
        try:
            proc.wait()
        except BaseException:
            os.killpg(proc.pid, signal.SIGKILL)
            raise
        maxrss_kib, proc.returncode = (int(x) for x in result.read_text().split())
        seconds = time.monotonic() - start
        out.seek(0)
        err.seek(0)
        failure = err.read().decode().strip() if proc.returncode != 0 else None
        stdout = out.read().decode()
    return {"status": proc.returncode, "error": failure, "stdout": stdout,
            "tokens": pf.metadata.num_rows // meta["model"]["n_layers"],
            "mask_bytes": pf.metadata.num_rows * mask_bytes(meta["model"]["d_ff"]),
            "file_bytes": trace.stat().st_size, "peak_rss_bytes": maxrss_kib * 1024, "seconds": seconds,
            "data_limit_bytes": data_limit}


ANALYZE_SHAPE = "opt-350m"                   # 24 layers x 4,096 neurons: 12 KB of masks per token
ANALYZE_SIZES = (2048, 8192, 32768)          # 1x, 4x and 16x: 25 MB .. 403 MB of masks
# token-lookup's model is a table of L x d_ff uint16 counts per distinct token id (196 KB here), which
# grows with the ids a trace holds, not with its length: measured with 512 ids (stories260K's
# vocabulary, every id seen in the shortest trace) and, for contrast, 32,000 uniform ids.
ANALYZE_RUNS = ((512, None, ANALYZE_SIZES), (32000, None, ANALYZE_SIZES[:2]),
                (32000, "dense,previous-token,window:k=4", ANALYZE_SIZES))


def analyze_memory(workdir: Path, runs=ANALYZE_RUNS) -> list[dict]:
    """Peak RSS of ``sparsesim analyze`` on traces of growing length, each in a fresh process:
    streamed, the peak must not follow the masks (``runs``: (token ids, --predictors, lengths))."""
    rows = []
    for vocab, predictors, sizes in runs:
        for tokens in sizes:
            trace = write_shaped_trace(workdir / f"analyze-{tokens}.parquet", ANALYZE_SHAPE, tokens, vocab=vocab)
            try:
                argv = ["analyze", trace, "-o", workdir / f"analyze-{tokens}"]
                row = command_peak_rss(argv + (["--predictors", predictors] if predictors else []), trace)
                distinct = len(np.unique(read_token_ids(trace)))
            finally:
                trace.unlink()
            row.pop("stdout")
            rows.append({**row, "shape": ANALYZE_SHAPE, "vocabulary": vocab, "distinct_ids": distinct,
                         "predictors": predictors or "default"})
            print(f"[reliability] analyze {tokens} tokens ({row['mask_bytes'] / MB:.0f} MB of masks, {distinct} ids, "
                  f"predictors {predictors or 'default'}): peak RSS {row['peak_rss_bytes'] / MB:.0f} MB in "
                  f"{row['seconds']:.0f} s{'' if row['error'] is None else ' FAILED ' + row['error']}", flush=True)
    return rows


def read_token_ids(trace: Path) -> np.ndarray:
    import pyarrow.parquet as pq
    return pq.read_table(trace, columns=["token"]).column("token").to_numpy()


# ---------------------------------------------------------------------------------------------
# The long campaign: python -m benchmarks.reliability [--kills N] [--sizes T1,T2,...]

RSS_SIZES = (512, 1024, 2048, 4096, 8192, 16384)      # llama-2-70b tokens: 147 MB .. 4.7 GB of masks
GLOBAL_INDEX_SIZES = (512, 1024, 2048, 4096)
IN_MEMORY_SIZE = 4096   # also replayed with the masks read whole (1.2 GB), for contrast
DATA_LIMIT = 1 << 30    # RLIMIT_DATA of the replay of the largest trace: smaller than its masks


def memory_campaign(workdir: Path, sizes=RSS_SIZES) -> dict:
    rows, global_rows = [], []
    for tokens in sizes:
        trace = write_shaped_trace(workdir / f"70b-{tokens}.parquet", "llama-2-70b", tokens)
        try:
            rows.append(streamed_replay_peak_rss(trace))
            if tokens == IN_MEMORY_SIZE:   # for contrast: the same trace read whole
                rows.append(streamed_replay_peak_rss(trace, stream=False))
            if tokens == max(sizes):   # the largest, again under a hard cap below its size, and read whole
                rows.append(streamed_replay_peak_rss(trace, data_limit=DATA_LIMIT))
                rows.append(streamed_replay_peak_rss(trace, stream=False, data_limit=DATA_LIMIT))
            if tokens in GLOBAL_INDEX_SIZES:
                global_rows.append(streamed_replay_peak_rss(trace, partition="global"))
        finally:
            trace.unlink()
        print(f"[reliability] rss {tokens} tokens: {rows[-1]['peak_rss_bytes'] / MB:.0f} MB", flush=True)
    return {"shape": "llama-2-70b", "per_layer": rows, "global": global_rows}


def run(kills: int = 20, sizes=RSS_SIZES, seed: int = 0) -> dict:
    from sparsesim.experiments.sweep import run_sweep
    import yaml

    results = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "cpus": os.cpu_count(),
               "kills_per_command": kills, "kill_campaigns": []}
    work = Path(tempfile.mkdtemp(prefix="sparsesim-reliability-", dir="/var/tmp"))
    try:
        spec = work / "kill.yaml"
        spec.write_text(yaml.safe_dump(SWEEP_SPEC, sort_keys=False))
        finished = work / "finished-sweep"
        run_sweep(spec, finished, workers=2, progress=False)
        (work / "disk").mkdir()
        targets = [sweep_target(spec), report_target(finished), calibrate_target(work / "disk")]
        if (SHARED_DATA / "llama2c-stories260K").is_dir():
            targets.insert(0, trace_target(SHARED_DATA / "llama2c-stories260K"))
        for i, target in enumerate(targets):
            (work / target.name).mkdir()
            summary = kill_campaign(target, work / target.name, kills=kills, seed=seed + i, kills_per_restart=4)
            results["kill_campaigns"].append(summary)
            print(f"[reliability] {target.name}: {summary['kills']} kills, {summary['recovered']}/"
                  f"{summary['restarts']} restarts recovered, {summary['corrupt_files']} corrupt", flush=True)
        results["memory"] = memory_campaign(work, sizes)
        results["analyze_memory"] = analyze_memory(work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    RESULTS.write_text(json.dumps(results, indent=1))
    print(render(results))
    return results


def render(r: dict) -> str:
    lines = [] if not r["kill_campaigns"] else [
        "| command | kills | landed before the end | left a temporary | final files checked | corrupt | "
        "restarts recovered |", "|---|---|---|---|---|---|---|"]
    for c in r["kill_campaigns"]:
        lines.append(f"| `{c['command']}` | {c['kills']} | {c['kills'] - c['finished_before_kill']} | "
                     f"{c['left_temporaries']} | {c['final_files_checked']} | {c['corrupt_files']} | "
                     f"{c['recovered']}/{c['restarts']} |")
    m = r.get("memory", {})
    if m:
        lines += ["", "| tokens | masks (MB) | partition | streamed | RLIMIT_DATA | peak RSS (MB) | seconds | outcome |",
                  "|---|---|---|---|---|---|---|---|"]
    for row in m.get("per_layer", []) + m.get("global", []):
        limit = f"{row['data_limit_bytes'] / MB:,.0f} MB" if row["data_limit_bytes"] else "-"
        outcome = "replayed" if row["completed"] else (row["error"] or "failed").splitlines()[-1][:90]
        lines.append(f"| {row['tokens']:,} | {row['mask_bytes'] / MB:,.0f} | {row['partition']} | "
                     f"{'yes' if row['streamed'] else 'no'} | {limit} | {row['peak_rss_bytes'] / MB:,.0f} | "
                     f"{row['seconds']:.0f} | {outcome} |")
    if r.get("analyze_memory"):
        lines += ["", "| analyze: tokens | masks (MB) | distinct ids | predictors | peak RSS (MB) | seconds |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {row['tokens']:,} | {row['mask_bytes'] / MB:,.0f} | {row['distinct_ids']:,} | {row['predictors']} | "
                  f"{row['peak_rss_bytes'] / MB:,.0f} | {row['seconds']:.0f} |" for row in r["analyze_memory"]]
    return "\n".join(lines)


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=20, help="SIGKILLs per command (default 20)")
    parser.add_argument("--sizes", default=",".join(map(str, RSS_SIZES)), help="70B trace lengths in tokens")
    parser.add_argument("--analyze-only", action="store_true",
                        help="only the peak RSS of analyze at 1x, 4x and 16x the trace length (printed, not saved)")
    parser.add_argument("--memory-only", action="store_true",
                        help="rerun the memory measurements only, keeping the kill campaigns already in "
                             "benchmarks/results_reliability.json")
    args = parser.parse_args()
    if args.memory_only:
        saved = json.loads(RESULTS.read_text())
        with tempfile.TemporaryDirectory(prefix="sparsesim-memory-", dir="/var/tmp") as tmp:
            saved["memory"] = memory_campaign(Path(tmp), tuple(int(x) for x in args.sizes.split(",")))
            saved["analyze_memory"] = analyze_memory(Path(tmp))
        saved["memory_date"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        RESULTS.write_text(json.dumps(saved, indent=1))
        print(render(saved))
    elif args.analyze_only:
        with tempfile.TemporaryDirectory(prefix="sparsesim-analyze-", dir="/var/tmp") as tmp:
            print(render({"kill_campaigns": [], "analyze_memory": analyze_memory(Path(tmp))}))
    else:
        run(args.kills, tuple(int(x) for x in args.sizes.split(",")))
