"""Run a sweep spec on a process pool or a Dask cluster; record every run durably as it finishes.

Layout of a results directory::

    RESULTS_DIR/sweep.json        spec text and SHA-256, environment, executor, counts of the last invocation
    RESULTS_DIR/runs/<run_id>.parquet   one row per finished run, written atomically by this process
    RESULTS_DIR/results.parquet   all of runs/ in one table (rewritten atomically at the end)
    RESULTS_DIR/traces/           the spec's synthetic traces

``runs/`` is the source of truth: a part file appears under its final name only when complete, so
a killed sweep loses nothing it has recorded, and its name is the run id, so a rerun skips what is
there and can never duplicate a row. Statuses: ``ok``; ``invalid`` (the simulator refused the
configuration with an InputError, e.g. a budget too small for the trace: deterministic, so not
retried); ``error`` (an unexpected exception or a lost worker: retried on the next run).

The runner is written against :class:`concurrent.futures.Executor`: a local process pool by
default, ``distributed.Client(address).get_executor()`` for a Dask cluster. The parent process
writes every row (workers only compute), so Dask workers need the traces but no shared results
directory. Runs are pure functions of their config (seeds included), so both give the same table.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import importlib.metadata
import json
import logging
import multiprocessing
import os
import platform
import sys
import threading
import time
from concurrent.futures import FIRST_COMPLETED, BrokenExecutor, Executor, Future, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Any, Iterator

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from tqdm import tqdm

from sparsesim import __version__
from sparsesim.atomic import atomic_path, check_writable, write_text
from sparsesim.errors import InputError
from sparsesim.inputs import regular_file
from sparsesim.limits import WORKERS
from sparsesim.simulator.simulate import simulate
from sparsesim.tracefile import read_failure, verify_table, write_checked_table

from sparsesim.experiments.spec import RunConfig, expand, load_spec, materialize

STATUSES = ("ok", "invalid", "error")
RETRIED = ("error",)
TIMING_COLUMNS = ("wall_s",)           # the only columns that differ between two executions of a run
DASK_CONNECT_TIMEOUT_S = 5
IN_FLIGHT_PER_WORKER = 2               # bounded submission: memory stays flat and Ctrl-C is prompt
PACKAGES = ("numpy", "simpy", "pyarrow", "pyyaml", "plotly", "dask", "distributed")


# ---------------------------------------------------------------------------------------------
# One run (executed in a worker)


def execute_run(run: RunConfig) -> dict[str, Any]:
    """Simulate one config; always returns a row (a failure is a row with its error, not an exception)."""
    start = time.perf_counter()
    record: dict[str, Any] = {}
    try:
        record = simulate(run.trace, run.profile, run.predictor, run.cache, settings=run.settings,
                          train_trace=run.train_trace, profile_trace=run.profile_trace, seed=run.seed,
                          baselines=run.baselines)
        status, error = "ok", ""
    except InputError as e:
        status, error = "invalid", str(e)
    except Exception as e:  # a bug in sparsesim must not end a 1,000-run sweep: record it, retry on rerun
        status, error = "error", " ".join(f"{type(e).__name__}: {e}".split())
    return {**run.columns, **record, "run_id": run.run_id, "status": status, "error": error,
            "wall_s": time.perf_counter() - start}


def _lost_row(run: RunConfig, error: BaseException) -> dict[str, Any]:
    """A run whose worker died (Dask gives up on it after its retries)."""
    message = " ".join(f"worker lost: {type(error).__name__}: {error}".split())
    return {**run.columns, "status": "error", "error": message, "wall_s": float("nan")}


# ---------------------------------------------------------------------------------------------
# Results directory


def runs_dir(results_dir: str | os.PathLike) -> Path:
    return Path(results_dir) / "runs"


def write_run(results_dir: str | os.PathLike, row: dict[str, Any]) -> Path:
    """One finished run as ``runs/<run_id>.parquet``, atomically (a rerun of that run replaces it)."""
    path = runs_dir(results_dir) / f"{row['run_id']}.parquet"
    with atomic_path(path) as tmp:
        # min/max statistics of one row are useless and the Arrow schema is implied by the Parquet
        # types here (strings, numbers, booleans): dropping both halves the file (~12 KB per run)
        write_checked_table(pa.Table.from_pylist([row]), tmp, store_schema=False, write_statistics=False)
    return path


def read_table(path: Path) -> pa.Table:
    """A results table (a run part or the compaction), checked against its checksum."""
    regular_file(path)
    try:
        table = pq.read_table(path)
    except Exception as e:   # pyarrow raises several types for damaged files
        raise read_failure(path, "results", e) from None
    return verify_table(path, table)


def recorded_statuses(results_dir: str | os.PathLike) -> dict[str, str]:
    """run_id -> status of every recorded run."""
    if not _parts(results_dir):
        return {}
    table = read_results(results_dir)
    return dict(zip(table["run_id"].to_pylist(), table["status"].to_pylist()))


def _parts(results_dir: str | os.PathLike) -> dict[str, Path]:
    """run_id -> part file (temporary files of an interrupted write are hidden, so not runs)."""
    folder = runs_dir(results_dir)
    return {part.stem: part for part in sorted(folder.glob("[!.]*.parquet"))} if folder.is_dir() else {}


def read_results(results_dir: str | os.PathLike) -> pa.Table:
    """Every recorded run, one row per run_id, sorted by run_id.

    Starts from the last compaction (``results.parquet``) and reads only the part files written
    since, so reading stays fast for thousands of runs. A part is the truth for its run: a part
    newer than the compaction (a retried run) replaces its row; a row without a part is dropped.
    Rows are unified with permissive type promotion: a failed run has no metric columns (nulls) and
    a setting given as 1 in one run and 0.5 in another becomes a float column.
    """
    results_dir = Path(results_dir)
    parts = _parts(results_dir)   # keyed by run_id (the file name), so it cannot hold two rows of one run
    if not parts:
        raise InputError(f"{results_dir}: no recorded runs (expected {runs_dir(results_dir)}/<run_id>.parquet "
                         f"from sparsesim sweep)")
    compacted = results_dir / "results.parquet"
    tables, fresh = [], set(parts)
    if compacted.is_file():
        table = read_table(compacted)
        cutoff = compacted.stat().st_mtime_ns
        fresh = {run_id for run_id, part in parts.items() if part.stat().st_mtime_ns >= cutoff}
        keep = set(parts) - fresh
        tables.append(table.filter(pc.is_in(table["run_id"], pa.array(sorted(keep), pa.string()))))
        fresh |= keep - set(tables[0]["run_id"].to_pylist())
    tables += [read_table(parts[run_id]) for run_id in sorted(fresh)]
    return pa.concat_tables(tables, promote_options="permissive").sort_by("run_id")


def compact_results(results_dir: str | os.PathLike) -> Path:
    """Rewrite ``results.parquet`` from ``runs/`` (atomically)."""
    out = Path(results_dir) / "results.parquet"
    table = read_results(results_dir)
    with atomic_path(out) as tmp:
        write_checked_table(table, tmp)
    return out


@contextlib.contextmanager
def _exclusive(results_dir: Path) -> Iterator[None]:
    """One sweep at a time per results directory (the lock goes away with the process)."""
    lock = check_writable(results_dir / ".sweep.lock")
    with open(lock, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise InputError(f"{results_dir}: another sweep is writing to this results directory") from None
        yield


def _remove_stale_temporaries(results_dir: Path) -> None:
    """Hidden temporary files left by a sweep killed in the middle of a write (we hold the lock):
    run parts, synthetic traces, results.parquet and sweep.json."""
    for folder in (runs_dir(results_dir), results_dir / "traces", results_dir):
        for tmp in folder.glob(".*.tmp"):
            tmp.unlink(missing_ok=True)


def environment(executor: str) -> dict[str, Any]:
    versions = {}
    for package in PACKAGES:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions[package] = importlib.metadata.version(package)
    return {"sparsesim": __version__, "python": platform.python_version(), "platform": platform.platform(),
            "executor": executor, "packages": versions}


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


# ---------------------------------------------------------------------------------------------
# Executors


def _exit_with_parent() -> None:
    """Pool worker initializer: exit when the sweep process is gone.

    A process pool's workers otherwise outlive a SIGKILLed parent, blocked on their task queue
    forever (and on a shared machine, holding memory). When the parent dies the worker is
    re-parented, so a changed parent pid is the signal.
    """
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)
    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def default_workers() -> int:
    """Cores this process may use (affinity and cgroup-pinned CPU sets included)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


@contextlib.contextmanager
def open_executor(workers: int | None = None, scheduler: str | None = None,
                  dask_local: bool = False, dashboard: bool = False) -> Iterator[tuple[Executor, int, str]]:
    """(executor, worker slots, description): a process pool, a Dask cluster, or a local Dask cluster
    (with its dashboard on 127.0.0.1 only when ``dashboard``)."""
    if scheduler and dask_local:
        raise InputError("--scheduler and --dask-local exclude each other")
    if dashboard and not dask_local:
        raise InputError("--dashboard: only for --dask-local (a cluster of your own serves its own dashboard)")
    if workers is not None:
        workers = WORKERS.check(workers, "--workers")
    if scheduler or dask_local:
        with _dask_client(scheduler, workers, dashboard) as client:
            slots = max(sum(client.nthreads().values()), 1)
            yield client.get_executor(), slots, f"dask {scheduler or 'local'} ({slots} threads)"
        return
    workers = workers or default_workers()
    # spawn: each worker is a child of this process (so _exit_with_parent sees it die; under
    # forkserver the server outlives it) and inherits none of its open files (a forked orphan
    # would keep the results directory's lock held)
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_exit_with_parent)
    try:
        yield pool, workers, f"process pool ({workers} workers)"
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


@contextlib.contextmanager
def _dask_client(scheduler: str | None, workers: int | None, dashboard: bool = False) -> Iterator[Any]:
    try:
        import dask
        from distributed import Client, LocalCluster
    except ImportError:
        raise InputError("Dask is not installed: pip install 'sparsesim[dask]'") from None
    if scheduler is None:
        # Loopback only. Dask's scheduler and workers always start an HTTP server (dashboard, info
        # pages, metrics): without --dashboard it gets no routes and a random loopback port, so
        # nothing is served; with it, the dashboard binds to 127.0.0.1 (8787, or a free port).
        quiet = {} if dashboard else {"distributed.scheduler.http.routes": [], "distributed.worker.http.routes": []}
        with dask.config.set(quiet), \
                LocalCluster(n_workers=workers or default_workers(), threads_per_worker=1, processes=True,
                             host="127.0.0.1", dashboard_address="127.0.0.1:8787" if dashboard else None,
                             scheduler_kwargs=None if dashboard else {"dashboard_address": "127.0.0.1:0"},
                             silence_logs=logging.ERROR) as cluster, Client(cluster) as client:
            if dashboard:
                print(f"sparsesim: Dask dashboard at {client.dashboard_link} (loopback only)", file=sys.stderr)
            yield client
        return
    if "://" not in scheduler:
        raise InputError(f"--scheduler {scheduler!r}: expected an address such as tcp://HOST:8786")
    with dask.config.set({"distributed.comm.timeouts.connect": f"{DASK_CONNECT_TIMEOUT_S}s"}):
        try:
            client = Client(scheduler, timeout=DASK_CONNECT_TIMEOUT_S, set_as_default=False)
        except (OSError, TimeoutError, ValueError) as e:
            reason = " ".join(str(e).split()) or f"no answer within {DASK_CONNECT_TIMEOUT_S} s"
            raise InputError(f"--scheduler {scheduler}: cannot connect ({reason}); is `dask scheduler` running "
                             f"there and reachable from here?") from None
    with client:
        yield client


# ---------------------------------------------------------------------------------------------
# The sweep


def run_sweep(spec_path: str | os.PathLike, results_dir: str | os.PathLike, workers: int | None = None,
              scheduler: str | None = None, dask_local: bool = False, progress: bool = True,
              dashboard: bool = False) -> dict[str, Any]:
    """Run every config of the spec not yet recorded in ``results_dir``; returns a summary."""
    start = time.perf_counter()
    results_dir = Path(results_dir)
    spec = load_spec(spec_path)
    check_writable(results_dir / "sweep.json")
    with _exclusive(results_dir):
        # connect first: an unreachable scheduler fails in seconds, before any trace is hashed
        with open_executor(workers, scheduler, dask_local, dashboard) as (executor, slots, described):
            _remove_stale_temporaries(results_dir)
            spec = materialize(spec, results_dir / "traces")
            runs = expand(spec)
            recorded = recorded_statuses(results_dir)
            todo = [run for run in runs if recorded.get(run.run_id) in (None, *RETRIED)]
            summary: dict[str, Any] = {"sweep": spec.name, "results_dir": str(results_dir), "runs": len(runs),
                                       "skipped": len(runs) - len(todo), **{s: 0 for s in STATUSES}}
            record = {"name": spec.name, "spec_file": str(spec.path), "spec_sha256": spec.sha256,
                      "spec": spec.text, "environment": environment(described), "started": _now(),
                      "finished": None, "summary": summary}
            write_text(results_dir / "sweep.json", json.dumps(record, indent=2))
            _execute(executor, slots, todo, results_dir, summary, progress, spec.name)
        summary["results"] = str(compact_results(results_dir))
        summary["wall_s"] = time.perf_counter() - start
        summary["runs_per_s"] = len(todo) / summary["wall_s"]
        record.update(finished=_now(), summary=summary)
        write_text(results_dir / "sweep.json", json.dumps(record, indent=2))
    return summary


def _execute(executor: Executor, slots: int, todo: list[RunConfig], results_dir: Path,
             summary: dict[str, Any], progress: bool, name: str) -> None:
    queue = iter(todo)
    in_flight: dict[Future, RunConfig] = {}

    def submit_next() -> None:
        run = next(queue, None)
        if run is not None:
            in_flight[executor.submit(execute_run, run)] = run

    for _ in range(slots * IN_FLIGHT_PER_WORKER):
        submit_next()
    with tqdm(total=len(todo), desc=f"sweep {name}", unit="run", disable=not progress, file=sys.stderr,
              dynamic_ncols=True) as bar:
        while in_flight:
            finished, _ = wait(in_flight, return_when=FIRST_COMPLETED)
            for future in finished:
                run = in_flight.pop(future)
                try:
                    row = future.result()
                except BrokenExecutor as e:
                    recorded = summary["ok"] + summary["invalid"] + summary["error"]
                    raise InputError(f"{results_dir}: a worker process died ({' '.join(str(e).split())}); "
                                     f"{recorded} runs of this invocation are recorded; rerun the same "
                                     f"command to resume") from None
                except Exception as e:   # Dask: the task's workers kept dying (KilledWorker), or it was lost
                    row = _lost_row(run, e)
                write_run(results_dir, row)
                summary[row["status"]] += 1
                bar.set_postfix(failed=summary["invalid"] + summary["error"], refresh=False)
                bar.update()
                submit_next()
