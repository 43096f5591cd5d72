"""``make fuzz``: hostile inputs against the ``sparsesim`` command line, by the thousand.

Hypothesis generates the cases (seeded: the same campaign every run); worker processes run each
one in-process through :func:`sparsesim.experiments.cli.main` — the real command line, without
paying an interpreter start per case — while the parent enforces a time limit per case (a worker
that overruns is killed and replaced: a hang). Kinds of input:

* ``trace-bytes``  a valid trace with bits flipped, bytes spliced in or cut off (``simulate``);
* ``trace-meta``   its footer's JSON metadata mutated in place, checksum left as written;
* ``trace-crafted`` its metadata mutated and the checksum recomputed: a stranger's consistent file
  (``simulate``, ``inspect``, ``analyze``);
* ``trace-inspect`` the same damage through ``inspect --json``;
* ``import``       a llama.cpp routing capture and its shape file, damaged or mutated (``import``);
* ``profile``      random YAML mappings and mutated presets (``profiles show``);
* ``spec``         random YAML documents and mutated sweep specs (``sweep``);
* ``argv``         command lines of every data command with hostile numbers and paths;
* ``special``      named pipes, ``/dev/zero``, directories and device nodes as inputs and outputs.

Findings, per case: a **traceback** (an exception escaping ``main``, or one printed), a **hang**
(over the time limit), **exit 0 on bad input** (a case built to be refused that succeeded, or a
damaged file giving an answer different from the undamaged one: a checksum must catch it), an
**output left** under its final name by a failed command (or a special file replaced), a trace
written by ``synth`` or ``import`` that the reader refuses (**unreadable output**), an error that
is not **one line**. Totals go to stdout and ``benchmarks/results_fuzz.json``; ``make fuzz``
exits 1 on any finding. ``tests/test_fuzz_harness.py`` runs a small fixed-seed slice in ``make test``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import multiprocessing
import os
import shutil
import stat
import sys
import tempfile
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import yaml
from hypothesis import HealthCheck, Phase, given, seed as hypothesis_seed, settings
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results_fuzz.json"
SPECS = sorted((ROOT / "experiments" / "specs").glob("*.yaml"))
PRESETS = sorted((ROOT / "hw_profiles").glob("*.yaml"))
CASE_TIMEOUT_S = 30.0
# Cases per kind in a full campaign (make fuzz): about 12,000 in all.
# "special" has 28 distinct cases (4 kinds of file x 7 places): hypothesis stops when it has drawn them all.
FULL = {"trace-bytes": 2300, "trace-meta": 1000, "trace-crafted": 1000, "trace-inspect": 700, "import": 1000,
        "profile": 1800, "spec": 1600, "argv": 2500, "special": 100}

# Values of a number that must be refused wherever a number is expected (sparsesim.numbers).
NOT_NUMBERS = ["nan", "inf", "-inf", "1e999", "abc", "", "0x10", "1,5", "--", "\u0661\u0662x"]
NEGATIVE = ["-1", "-0.5", "-1e300", str(-(2 ** 64))]
NOT_WHOLE = ["1.5", "0.25", "1e-300"]
HUGE = [str(2 ** 64), str(2 ** 63), "1e300", "9" * 400]
GOOD_PROFILE = "oneplus-12"


@dataclass
class Case:
    kind: str
    argv: list[str]                                       # "{dir}" stands for the case's own folder
    files: dict[str, bytes] = field(default_factory=dict)
    special: dict[str, str] = field(default_factory=dict)   # name -> "fifo" | "dir" | "device" | "zero"
    bad: bool = False                                     # built to be refused: exit 0 is a finding
    reference: str | None = None                          # name of the reference answer (damaged copies)
    outputs: list[str] = field(default_factory=list)      # must not exist after a failed run
    readback: list[str] = field(default_factory=list)     # traces the command wrote: the reader must take them


# ---------------------------------------------------------------------------------------------
# Seed inputs: a small valid trace, its reference answers


SIMULATE = ["simulate", "--trace", "{dir}/t.parquet", "--profile", GOOD_PROFILE, "--predictor", "previous-token",
            "--no-baselines", "--json", "-"]
INSPECT = ["inspect", "{dir}/t.parquet", "--json"]
UNSTABLE = ("trace", "trace_name", "trace_sha256", "path", "file_bytes", "integrity")


def seed_trace(path: Path) -> bytes:
    """A 24-token, 3-layer trace with a d_ff of 60 (so the last mask byte has padding bits)."""
    from sparsesim.simulator.synth import synthesize

    synthesize(path, layers=3, d_model=16, d_ff=60, tokens=24, active=0.3, persistence=0.5, seed=7, progress=False)
    return path.read_bytes()


def answer(stdout: str) -> Any:
    """The part of a command's JSON output that must not change when only the file's name did."""
    try:
        data = json.loads(stdout)
    except ValueError:
        return stdout
    return {k: v for k, v in data.items() if k not in UNSTABLE} if isinstance(data, dict) else data


# ---------------------------------------------------------------------------------------------
# Strategies


def _flip(raw: bytes, draw) -> bytes:
    kind = draw(st.sampled_from(["flip", "flip", "flip", "truncate", "splice", "zero-run"]))
    data = bytearray(raw)
    if kind == "truncate":
        return raw[:draw(st.integers(0, len(raw) - 1))]
    if kind == "splice":
        pos = draw(st.integers(0, len(raw)))
        return raw[:pos] + draw(st.binary(min_size=1, max_size=16)) + raw[pos:]
    if kind == "zero-run":
        pos = draw(st.integers(0, len(raw) - 1))
        n = draw(st.integers(1, 32))
        data[pos:pos + n] = bytes(len(data[pos:pos + n]))
        return bytes(data)
    for pos in draw(st.lists(st.integers(0, len(raw) - 1), min_size=1, max_size=3)):
        data[pos] ^= 1 << draw(st.integers(0, 7))
    return bytes(data)


@st.composite
def trace_bytes_case(draw, raw: bytes) -> Case:
    damaged = _flip(raw, draw)
    return Case("trace-bytes", SIMULATE, {"t.parquet": damaged}, reference=None if damaged == raw else "simulate")


@st.composite
def trace_inspect_case(draw, raw: bytes) -> Case:
    damaged = _flip(raw, draw)
    return Case("trace-inspect", INSPECT, {"t.parquet": damaged}, reference=None if damaged == raw else "inspect")


def _footer_json(raw: bytes) -> tuple[int, int]:
    """(start, end) of the sparsesim metadata JSON inside the file's footer."""
    start = raw.rfind(b'{"kind"')
    _, length = json.JSONDecoder().raw_decode(raw[start:].decode("latin-1"))
    return start, start + length


@st.composite
def trace_meta_case(draw, raw: bytes) -> Case:
    """Damage inside the footer's JSON metadata only (the checksum left as written)."""
    start, end = _footer_json(raw)
    data = bytearray(raw)
    how = draw(st.sampled_from(["flip", "digit", "swap"]))
    pos = draw(st.integers(start, end - 1))
    if how == "flip":
        data[pos] ^= 1 << draw(st.integers(0, 7))
    elif how == "digit":               # one digit for another: the JSON stays valid, a number changes
        digits = [i for i in range(start, end) if chr(data[i]).isdigit()]
        pos = draw(st.sampled_from(digits))
        data[pos] = ord(str((int(chr(data[pos])) + draw(st.integers(1, 9))) % 10))
    else:                              # a letter of a key or value for another of the same length
        letters = [i for i in range(start, end) if chr(data[i]).isalpha()]
        pos = draw(st.sampled_from(letters))
        data[pos] = ord(draw(st.sampled_from("abcdefxyz")))
    damaged = bytes(data)
    argv, reference = draw(st.sampled_from([(SIMULATE, "simulate"), (INSPECT, "inspect")]))
    return Case("trace-meta", argv, {"t.parquet": damaged}, reference=None if damaged == raw else reference)


def _meta_values() -> st.SearchStrategy:
    from tests.fuzzing import yamlish
    return yamlish(["model", "name", "n_layers", "d_model", "d_ff", "glu", "non_ffn_params", "attention_params",
                    "embedding_params", "lm_head_params", "vocab_size", "sparsity", "thresholds", "perplexity",
                    "dense", "sparse", "window", "tokens", "text", "evaluation", "calibration", "learned", "kind",
                    "format_version", "method", "site", "target", "measured"],
                   extra=[3, 60, 16, [60, 60, 60], [60, 60], True, 1e308, -1, 2 ** 70])


@st.composite
def trace_crafted_case(draw, raw: bytes) -> Case:
    """A stranger's trace: metadata mutated and the checksum recomputed to match, so only the
    reader's own checks stand between it and a wrong answer or a traceback."""
    from tests.fuzzing import mutate
    from sparsesim.tracefile import CHECKSUM, META_KEY, meta_digest

    pf = pq.ParquetFile(io.BytesIO(raw))
    meta = json.loads(pf.metadata.metadata[META_KEY])
    checksum = meta.pop(CHECKSUM)
    meta = mutate(meta, _Draw(draw), _meta_values())
    if isinstance(meta, dict):
        meta[CHECKSUM] = {**checksum, "metadata": meta_digest(meta)}
    table = pf.read()
    out = io.BytesIO()
    pq.write_table(table.replace_schema_metadata({META_KEY: json.dumps(meta)}), out,
                   row_group_size=table.num_rows, compression="none")
    argv = draw(st.sampled_from([SIMULATE, ["inspect", "{dir}/t.parquet"], INSPECT,
                                 ["analyze", "{dir}/t.parquet", "--predictors", "previous-token", "-o", "{dir}/an"]]))
    return Case("trace-crafted", argv, {"t.parquet": out.getvalue()}, outputs=["an/report.html"])


IMPORT_CSV = "layer,expert\n" + "".join(f"{layer},{e}\n" for t in range(8) for layer in range(2)
                                        for e in ((t + layer) % 8, (t + layer + 3) % 8))
IMPORT_SHAPE = {"n_experts": 8, "expert_bytes": 1000, "top_k": 2}


@st.composite
def import_case(draw) -> Case:
    """A llama.cpp moe-trace capture (8 tokens x 2 layers, top-2 of 8) and its shape file, one of them damaged."""
    from tests.fuzzing import mutate, yamlish

    csv, shape = IMPORT_CSV.encode(), json.loads(json.dumps(IMPORT_SHAPE))
    which = draw(st.sampled_from(["csv-bytes", "csv-line", "shape", "none"]))
    if which == "csv-bytes":
        csv = _flip(csv, draw)
    elif which == "csv-line":
        lines = IMPORT_CSV.splitlines()
        i = draw(st.integers(0, len(lines) - 1))
        lines[i] = draw(st.sampled_from(["", "1", "0,9", "2,1", "-1,3", "0,1,2", "x,y", "0,nan", "0,1e99", "1,1"]))
        csv = ("\n".join(lines) + "\n").encode()
    elif which == "shape":
        shape = mutate(shape, _Draw(draw), yamlish(["n_experts", "expert_bytes", "top_k", "model", "n_layers"],
                                                   extra=[8, 2, 1000, -1, 0, 2 ** 70, "1 GB", 1e308]))
    return Case("import", ["import", "{dir}/r.csv", "--format", "llama.cpp", "--shape", "{dir}/r.json",
                           "-o", "{dir}/out.parquet"],
                {"r.csv": csv, "r.json": json.dumps(shape).encode()}, outputs=["out.parquet"], readback=["out.parquet"])


def _profile_values() -> st.SearchStrategy:
    from tests.fuzzing import yamlish
    return yamlish(["name", "description", "extends", "compute", "dram", "cache", "storage", "value", "source",
                    "estimate", "points", "flops", "bandwidth", "latency", "capacity", "queue_depth", "kind",
                    "energy_per_byte", "peak_bandwidth", "read_curve"],
                   extra=["oneplus-12", "apple-m1-max", "nvme", "12 GB/s", "1 us", "8 KiB", "5 pJ/bit"])


_BAD_LEAF = ["nan", ".nan", "-1 GB/s", "-5", ".inf", "1e999 B", "abc", "-0.5 us"]


@st.composite
def profile_case(draw) -> Case:
    from tests.fuzzing import mutate

    preset = draw(st.sampled_from(PRESETS))
    data = yaml.safe_load(preset.read_text())
    bad = False
    choice = draw(st.integers(0, 9))
    if choice < 3:                     # a numeric leaf made unusable: must be refused
        section = draw(st.sampled_from([s for s in ("compute", "dram", "storage") if isinstance(data.get(s), dict)]))
        numbers = [k for k, v in data[section].items() if isinstance(v, dict) and "value" in v]
        key = draw(st.sampled_from(numbers))
        data[section][key]["value"] = draw(st.sampled_from(_BAD_LEAF))
        bad = True
    elif choice < 8:
        data = mutate(data, _Draw(draw), _profile_values())
    else:
        data = draw(_profile_values())
    text = yaml.safe_dump(data, allow_unicode=True, sort_keys=False)
    if bad:
        text = text.replace("'.nan'", ".nan").replace("'.inf'", ".inf")
    return Case("profile", ["profiles", "show", "{dir}/p.yaml", "--json"], {"p.yaml": text.encode()}, bad=bad)


class _Draw:
    """tests.fuzzing.mutate takes hypothesis' ``data`` object; inside a composite strategy ``draw`` is the function."""

    def __init__(self, draw):
        self.draw = draw


TINY_SPEC = {"name": "fuzz", "traces": ["t.parquet"], "profiles": [GOOD_PROFILE],
             "grid": {"predictor": ["oracle", "previous-token"], "dram_budget": [0.5]}, "baselines": False}


@st.composite
def spec_case(draw, raw: bytes) -> Case:
    from tests.fuzzing import mutate, yamlish
    from sparsesim.experiments.spec import SETTINGS, SPEC_KEYS

    values = yamlish([*SPEC_KEYS, *SETTINGS, "synth", "method", "n", "seed", "ranges", "log", "layers", "tokens"],
                     extra=["t.parquet", "*.parquet", "**/*.parquet", "/", "/etc/passwd", "window:k=4", "nan",
                            "noisy-oracle:fn=0.1,fp=x", "latin-hypercube", "../../outside.parquet", 2 ** 63, -1, 1.5])
    bad = False
    choice = draw(st.integers(0, 9))
    if choice < 3:                     # a known-bad value at a known place
        data = json.loads(json.dumps(TINY_SPEC))
        where, value = draw(st.sampled_from([
            ("grid.dram_budget", "nan"), ("grid.dram_budget", -1), ("fixed.lookahead", 1.5), ("fixed.seed", 2 ** 63),
            ("fixed.seed", -1), ("fixed.insert_overhead", "nan"), ("fixed.prefetch_cap", "inf"),
            ("fixed.max_request", "abc"), ("grid.predictor", "noisy-oracle:seed=-1"), ("grid.predictor", "window:k=1.5"),
            ("fixed.warm", 1), ("root", "/")]))
        section, key = where.split(".") if "." in where else (where, None)
        if key is None:                # root: / with a recursive glob walks past the bound on work
            data.update(root=value, traces=["**/*.parquet"])
            bad = True
        elif section == "grid":
            data["grid"][key] = [value]
            bad = True
        else:
            data.setdefault("fixed", {})[key] = value
            bad = True
    elif choice < 8:
        data = mutate(json.loads(json.dumps(TINY_SPEC)), _Draw(draw), values)
    else:
        data = draw(values)
    text = yaml.safe_dump(data, allow_unicode=True, sort_keys=False)
    return Case("spec", ["sweep", "{dir}/s.yaml", "-o", "{dir}/out", "--workers", "1", "--no-progress"],
                {"s.yaml": text.encode(), "t.parquet": raw}, bad=bad, outputs=["out/results.parquet"])


_BAD_NUMBER = st.one_of(st.sampled_from(NOT_NUMBERS + NEGATIVE + HUGE), st.integers(max_value=-1).map(str),
                        st.integers(min_value=2 ** 64).map(str), st.floats(max_value=-1e-300).map(repr),
                        st.text(alphabet="abcxyz_-+.eE ", min_size=1, max_size=6).filter(lambda t: t.strip() not in ("",)))
_NOT_WHOLE = st.one_of(st.sampled_from(NOT_WHOLE), st.floats(0.001, 1e6).filter(lambda x: x != int(x)).map(repr))


def _number(draw, good: list[str], integer: bool = False) -> tuple[str, bool]:
    """A value for a numeric flag and whether it must be refused."""
    if draw(st.integers(0, 2)) == 0:
        return draw(st.sampled_from(good)), False
    value = draw(st.one_of(_BAD_NUMBER, _NOT_WHOLE) if integer else _BAD_NUMBER)
    return value, True


@st.composite
def argv_case(draw, raw: bytes) -> Case:
    files = {"t.parquet": raw}
    command = draw(st.sampled_from(["simulate", "synth", "analyze", "calibrate", "simulate-set", "policy"]))
    bad = False
    outputs: list[str] = []
    if command in ("simulate", "simulate-set", "policy"):
        argv = ["simulate", "--trace", "{dir}/t.parquet", "--profile", GOOD_PROFILE, "--no-baselines",
                "--json", "{dir}/r.json"]
        outputs = ["r.json"]
        if command == "simulate":
            flag = draw(st.sampled_from(["--seed", "--lookahead", "--dram-budget"]))
            value, bad = _number(draw, {"--seed": ["0", "3", str(2 ** 63 - 1)], "--lookahead": ["0", "1", "3"],
                                        "--dram-budget": ["0.5", "0.9", "1.0"]}[flag], integer=flag != "--dram-budget")
            argv += [flag, value]
        elif command == "simulate-set":
            field_name = draw(st.sampled_from(["lookahead", "insert_overhead", "prefetch_cap", "max_request", "warmup",
                                               "max_tokens", "dram_budget", "warm", "coalesce"]))
            good = {"warm": ["true", "false"], "coalesce": ["true", "false"], "max_request": ["4096", "1 MiB"],
                    "dram_budget": ["0.5", "0.8"], "warmup": ["0", "2"], "max_tokens": ["0", "10"]}
            integer = field_name in ("lookahead", "max_request", "warmup", "max_tokens")
            value, bad = _number(draw, good.get(field_name, ["0", "1", "2"]), integer)
            argv += ["--set", f"{field_name}={value}"]
        else:
            name, key = draw(st.sampled_from([("window", "k"), ("noisy-oracle", "fn"), ("noisy-oracle", "seed"),
                                              ("window", "threshold"), ("token-lookup", "topk")]))
            good = {"k": ["1", "4"], "fn": ["0", "0.1"], "seed": ["0", "5"], "threshold": ["0.5"], "topk": ["0", "3"]}[key]
            value, bad = _number(draw, good, integer=key in ("k", "seed", "topk"))
            argv += ["--predictor", f"{name}:{key}={value}"]
    elif command == "synth":
        flag = draw(st.sampled_from(["--tokens", "--active", "--persistence", "--hot-skew", "--seed", "--layers",
                                     "--d-ff"]))
        good = {"--tokens": ["8", "40"], "--active": ["0.1", "0.5"], "--persistence": ["0.5", "0.9"],
                "--hot-skew": ["0", "1.5"], "--seed": ["0", "9"], "--layers": ["1", "3"], "--d-ff": ["8", "100"]}[flag]
        value, bad = _number(draw, good, integer=flag in ("--tokens", "--seed", "--layers", "--d-ff"))
        base = {"--layers": "2", "--d-model": "16", "--d-ff": "64", "--tokens": "16"}
        base[flag] = value
        argv = ["synth", *[x for k, v in base.items() for x in (k, v)], "-o", "{dir}/s.parquet"]
        outputs = ["s.parquet"]
        return Case("argv", argv, files, bad=bad, outputs=outputs, readback=outputs)
    elif command == "analyze":
        flag = draw(st.sampled_from(["--lookahead", "--seed"]))
        value, bad = _number(draw, ["0", "1", "2"], integer=True)
        argv = ["analyze", "{dir}/t.parquet", "--predictors", "previous-token", flag, value, "-o", "{dir}/an"]
        outputs = ["an/report.html"]
    else:
        flag = draw(st.sampled_from(["--seconds", "--repeats", "--seed"]))
        value, bad = _number(draw, ["0.2"] if flag == "--seconds" else ["1"], integer=flag != "--seconds")
        argv = ["calibrate-host", "--dir", "{dir}", "--size", "2 MiB", "--seconds", "0.2", "--repeats", "1",
                "-o", "{dir}/host.yaml", flag, value]
        outputs = ["host.yaml"]
    return Case("argv", argv, files, bad=bad, outputs=outputs)


@st.composite
def special_case(draw, raw: bytes) -> Case:
    """A named pipe, /dev/zero, a directory or a device node where a file is read or written."""
    what = draw(st.sampled_from(["fifo", "zero", "dir", "device"]))
    role = draw(st.sampled_from(["trace", "profile", "spec", "inspect", "like", "json-out", "synth-out"]))
    files: dict[str, bytes] = {"t.parquet": raw}
    special = {"x": what}
    argv = {
        "trace": ["simulate", "--trace", "{dir}/x", "--no-baselines"],
        "profile": ["simulate", "--trace", "{dir}/t.parquet", "--profile", "{dir}/x", "--no-baselines"],
        "spec": ["sweep", "{dir}/x", "-o", "{dir}/out", "--no-progress"],
        "inspect": ["inspect", "{dir}/x"],
        "like": ["synth", "--like", "{dir}/x", "--tokens", "4", "-o", "{dir}/s.parquet"],
        "json-out": ["simulate", "--trace", "{dir}/t.parquet", "--no-baselines", "--json", "{dir}/x"],
        "synth-out": ["synth", "--layers", "1", "--d-model", "8", "--d-ff", "8", "--tokens", "4", "-o", "{dir}/x"],
    }[role]
    return Case("special", argv, files, special=special, bad=True, outputs=["s.parquet", "out/results.parquet"])


# ---------------------------------------------------------------------------------------------
# Running cases


def _make_special(path: Path, what: str) -> None:
    if what == "fifo":
        os.mkfifo(path)
    elif what == "dir":
        path.mkdir()
    elif what == "zero":
        path.symlink_to("/dev/zero")
    else:                              # a device node of our own (root only), else a FIFO
        try:
            os.mknod(path, stat.S_IFCHR | 0o666, os.makedev(1, 3))
        except (PermissionError, OSError):
            os.mkfifo(path)


def run_case(case: Case, workdir: Path) -> dict[str, Any]:
    """Run one case in this process; returns what happened (the parent judges it)."""
    from sparsesim.experiments.cli import main
    from sparsesim.tracefile import read_trace

    folder = Path(tempfile.mkdtemp(dir=workdir, prefix="case-"))
    for name, data in case.files.items():
        (folder / name).write_bytes(data)
    kinds = {}
    for name, what in case.special.items():
        _make_special(folder / name, what)
        kinds[name] = stat.S_IFMT(os.lstat(folder / name).st_mode)
    argv = [a.replace("{dir}", str(folder)) for a in case.argv]
    out, err = io.StringIO(), io.StringIO()
    escaped = None
    start = time.perf_counter()
    cwd = os.getcwd()
    try:
        os.chdir(folder)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                rc = main(argv)
            except SystemExit as e:          # argparse
                rc = e.code if isinstance(e.code, int) else 2
            except BaseException:            # noqa: BLE001 - exactly what the harness looks for
                rc = -1
                escaped = traceback.format_exc()
    finally:
        os.chdir(cwd)
    left = [o for o in case.outputs if (folder / o).exists()]
    unreadable = []
    for name in case.readback if rc == 0 else ():
        try:
            read_trace(folder / name)
        except Exception as e:   # noqa: BLE001 - an InputError here is the finding too
            unreadable.append(f"{name}: {type(e).__name__}: {e}")
    temporaries = [str(p.relative_to(folder)) for p in folder.rglob(".*.tmp")]
    replaced = [n for n, k in kinds.items() if not os.path.lexists(folder / n)
                or stat.S_IFMT(os.lstat(folder / n).st_mode) != k]
    shutil.rmtree(folder, ignore_errors=True)
    return {"rc": rc, "stdout": out.getvalue(), "stderr": err.getvalue(), "traceback": escaped, "left": left,
            "temporaries": temporaries, "replaced": replaced, "unreadable": unreadable,
            "seconds": time.perf_counter() - start}


def _worker(conn, workdir: str) -> None:
    import logging
    logging.disable(logging.CRITICAL)      # Dask and friends log to stderr; the harness reads ours only
    while True:
        case = conn.recv()
        if case is None:
            return
        conn.send(run_case(case, Path(workdir)))


class _Pool:
    """Worker processes that each run one case at a time; an overrunning worker is killed and replaced."""

    def __init__(self, workers: int, workdir: Path):
        self.ctx = multiprocessing.get_context("spawn")
        self.workdir = workdir
        self.slots = [self._start() for _ in range(workers)]

    def _start(self):
        parent, child = self.ctx.Pipe()
        proc = self.ctx.Process(target=_worker, args=(child, str(self.workdir)))   # not daemonic: sweep starts a pool
        proc.start()
        return {"proc": proc, "conn": parent, "case": None, "since": 0.0}

    def run(self, cases: list[Case], judge) -> None:
        queue = list(reversed(cases))
        busy = 0
        while queue or busy:
            for i, slot in enumerate(self.slots):
                if slot["case"] is None and queue:
                    slot["case"], slot["since"] = queue.pop(), time.monotonic()
                    slot["conn"].send(slot["case"])
                    busy += 1
                elif slot["case"] is not None and slot["conn"].poll(0.005):
                    case = slot["case"]
                    try:
                        result = slot["conn"].recv()
                        slot["case"] = None
                    except EOFError:     # the worker died (e.g. a segfault): a finding like a traceback
                        result = {"rc": -9, "stdout": "", "stderr": "worker died", "traceback": "worker process died",
                                  "left": [], "temporaries": [], "replaced": [], "unreadable": [], "seconds": 0.0}
                        self.slots[i] = self._restart(slot)
                    judge(case, result)
                    busy -= 1
                elif slot["case"] is not None and time.monotonic() - slot["since"] > CASE_TIMEOUT_S:
                    case = slot["case"]
                    self.slots[i] = self._restart(slot)
                    judge(case, {"hang": True, "seconds": CASE_TIMEOUT_S})
                    busy -= 1

    def _restart(self, slot):
        slot["proc"].kill()
        slot["proc"].join()
        return self._start()

    def close(self) -> None:
        for slot in self.slots:
            with contextlib.suppress(OSError, BrokenPipeError):
                slot["conn"].send(None)
            slot["proc"].join(timeout=5)
            if slot["proc"].is_alive():
                slot["proc"].kill()


# ---------------------------------------------------------------------------------------------
# Judging


@dataclass
class Tally:
    inputs: Counter = field(default_factory=Counter)
    outcomes: Counter = field(default_factory=Counter)      # (kind, "ok" | "refused")
    findings: list[dict] = field(default_factory=list)
    seconds: float = 0.0

    def finding(self, what: str, case: Case, detail: str) -> None:
        self.findings.append({"finding": what, "kind": case.kind, "argv": case.argv, "detail": detail[-2000:]})


def judge(tally: Tally, references: dict[str, Any], case: Case, result: dict[str, Any]) -> None:
    tally.inputs[case.kind] += 1
    tally.seconds += result.get("seconds", 0.0)
    if result.get("hang"):
        tally.finding("hang", case, f"no answer within {CASE_TIMEOUT_S:.0f} s")
        return
    rc, err = result["rc"], result["stderr"]
    tally.outcomes[case.kind, "ok" if rc == 0 else "refused"] += 1
    if result["traceback"] or "Traceback (most recent call last)" in err:
        tally.finding("traceback", case, result["traceback"] or err)
        return
    if rc == 1 and "not enough memory" not in err:
        tally.finding("traceback", case, f"exit 1 (a run failed unexpectedly): {err}")
    if rc == 0:
        reference = references.get(case.reference or "")
        if case.bad:
            tally.finding("exit 0 on bad input", case, result["stdout"][-500:])
        elif reference is not None and answer(result["stdout"]) != reference:
            tally.finding("exit 0 on bad input", case, "a damaged file gave a different answer than the original")
    elif rc == 2 and err.startswith("sparsesim: error:") and len(err.strip().splitlines()) != 1:
        tally.finding("not one line", case, err)
    elif rc not in (1, 2):
        tally.finding("traceback", case, f"exit status {rc}: {err}")
    if rc != 0 and result["left"]:
        tally.finding("output left", case, f"{result['left']} exist after a failed run")
    if result["temporaries"] or result["replaced"]:
        tally.finding("output left", case, f"temporaries {result['temporaries']}, replaced {result['replaced']}")
    if result["unreadable"]:
        tally.finding("unreadable output", case, "; ".join(result["unreadable"]))


# ---------------------------------------------------------------------------------------------
# Campaign


def draw_cases(strategy: st.SearchStrategy, n: int, seed: int) -> list[Case]:
    """``n`` examples of ``strategy`` from hypothesis, reproducibly (``seed``)."""
    out: list[Case] = []

    @settings(max_examples=n, database=None, deadline=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @hypothesis_seed(seed)
    @given(strategy)
    def collect(case: Case) -> None:
        out.append(case)

    collect()
    return out


def campaign_cases(counts: dict[str, int], seed: int, raw: bytes) -> list[Case]:
    strategies = {"trace-bytes": trace_bytes_case(raw), "trace-meta": trace_meta_case(raw),
                  "trace-crafted": trace_crafted_case(raw), "import": import_case(),
                  "trace-inspect": trace_inspect_case(raw), "profile": profile_case(), "spec": spec_case(raw),
                  "argv": argv_case(raw), "special": special_case(raw)}
    cases: list[Case] = []
    for i, (kind, n) in enumerate(counts.items()):
        cases += draw_cases(strategies[kind], n, seed + i)
    rng = np.random.default_rng(seed)
    return [cases[i] for i in rng.permutation(len(cases))]   # kinds interleaved: both workers stay busy


def references(raw: bytes, workdir: Path) -> dict[str, Any]:
    """The undamaged trace's answers, through the same command lines."""
    out = {}
    for name, argv in (("simulate", SIMULATE), ("inspect", INSPECT)):
        result = run_case(Case("reference", argv, {"t.parquet": raw}), workdir)
        assert result["rc"] == 0, result
        out[name] = answer(result["stdout"])
    return out


def run_campaign(counts: dict[str, int] = FULL, seed: int = 0, workers: int = 2, progress: bool = True) -> dict:
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="sparsesim-fuzz-") as tmp:
        workdir = Path(tmp)
        raw = seed_trace(workdir / "seed.parquet")
        refs = references(raw, workdir)
        cases = campaign_cases(counts, seed, raw)
        generated = time.perf_counter() - start
        tally = Tally()
        done = [0]

        def count(case: Case, result: dict[str, Any]) -> None:
            judge(tally, refs, case, result)
            done[0] += 1
            if progress and done[0] % 500 == 0:
                print(f"  {done[0]:,}/{len(cases):,} cases, {len(tally.findings)} findings, "
                      f"{time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)

        pool = _Pool(workers, workdir)
        try:
            pool.run(cases, count)
        finally:
            pool.close()
    kinds = Counter(f["finding"] for f in tally.findings)
    return {"seed": seed, "workers": workers, "cpus": os.cpu_count(), "inputs": sum(tally.inputs.values()),
            "per_kind": dict(tally.inputs),
            "outcomes": {f"{k}/{o}": n for (k, o), n in sorted(tally.outcomes.items())},
            "tracebacks": kinds["traceback"], "hangs": kinds["hang"],
            "exit_0_on_bad_input": kinds["exit 0 on bad input"], "outputs_left": kinds["output left"],
            "not_one_line": kinds["not one line"], "unreadable_outputs": kinds["unreadable output"],
            "findings": tally.findings[:50],
            "generation_s": round(generated, 1), "wall_s": round(time.perf_counter() - start, 1),
            "case_cpu_s": round(tally.seconds, 1)}


def render(r: dict) -> str:
    lines = [f"fuzz campaign (seed {r['seed']}, {r['workers']} workers on {r['cpus']} CPUs): {r['inputs']:,} inputs "
             f"in {r['wall_s']:.0f} s (generation {r['generation_s']:.0f} s)",
             f"  tracebacks {r['tracebacks']}, hangs {r['hangs']}, exit 0 on bad input {r['exit_0_on_bad_input']}, "
             f"outputs left {r['outputs_left']}, errors not one line {r['not_one_line']}, "
             f"unreadable outputs {r['unreadable_outputs']}",
             "  per kind: " + ", ".join(f"{k} {n:,}" for k, n in r["per_kind"].items()),
             "  outcomes: " + ", ".join(f"{k} {n:,}" for k, n in r["outcomes"].items())]
    for f in r["findings"][:10]:
        lines.append(f"  FINDING {f['finding']} ({f['kind']}): {' '.join(f['argv'])}: {f['detail'][-300:]}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every kind's case count")
    parser.add_argument("--no-save", action="store_true", help=f"do not write {RESULTS.name}")
    args = parser.parse_args(argv)
    counts = {kind: max(1, round(n * args.scale)) for kind, n in FULL.items()}
    result = run_campaign(counts, args.seed, args.workers)
    print(render(result))
    if not args.no_save:
        RESULTS.write_text(json.dumps(result, indent=1) + "\n")
    return 1 if result["findings"] else 0


if __name__ == "__main__":
    sys.exit(main())
