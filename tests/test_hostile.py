"""Hostile input, one test per class of issue 19 (each failed before the fix; docs/reliability.md).

Special files, unchecked values, the machine's limits, silent wrong answers, unbounded work,
exposure and memory: each class is fixed by one mechanism, and each test below goes through
that mechanism from the command line or the public function a user calls.
"""

from __future__ import annotations

import json
import os
import stat
import struct
import subprocess
import sys
import textwrap
import tracemalloc
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from sparsesim.errors import InputError
from sparsesim.experiments.cli import main
from tracebuild import write_trace

REPO = Path(__file__).resolve().parents[1]


def sparsesim(*argv, timeout: float = 60, preexec_fn=None) -> subprocess.CompletedProcess:
    """The CLI in a fresh process (a hang ends the test instead of the session)."""
    return subprocess.run([sys.executable, "-m", "sparsesim.experiments.cli", *map(str, argv)], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout, preexec_fn=preexec_fn)


def one_line_error(result, *words: str) -> str:
    assert result.returncode == 2, (result.returncode, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sparsesim: error: "), result.stderr
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def trace(tmp_path) -> Path:
    rng = np.random.default_rng(0)
    return Path(write_trace(tmp_path / "t.parquet", rng.random((32, 3, 60)) < 0.3, d_model=16))


# ---------------------------------------------------------------------------------------------
# Special files: one way to open inputs (sparsesim.inputs), outputs never replace one (sparsesim.atomic)


def test_special_files_are_refused_as_inputs_and_never_replaced_as_outputs(tmp_path, trace, capsys):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    zero = tmp_path / "zero.yaml"
    zero.symlink_to("/dev/zero")
    for argv, named in ((["simulate", "--trace", fifo, "--no-baselines"], fifo),
                        (["inspect", fifo], fifo),
                        (["simulate", "--trace", trace, "--profile", fifo, "--no-baselines"], fifo),
                        (["sweep", fifo, "-o", tmp_path / "out"], fifo),
                        (["sweep", zero, "-o", tmp_path / "out"], zero),
                        (["profiles", "show", zero], zero),
                        (["inspect", tmp_path], tmp_path)):
        result = sparsesim(*argv, timeout=60)      # a pipe blocked the open forever; /dev/zero was read without end
        one_line_error(result, str(named), "expected a regular file")
    device = tmp_path / "null-device"
    try:
        os.mknod(device, stat.S_IFCHR | 0o666, os.makedev(1, 3))   # root: a /dev/null of our own
    except PermissionError:
        device = fifo
    for out in (fifo, device):
        assert main(["simulate", "--trace", str(trace), "--no-baselines", "--json", str(out)]) == 2
        assert "may only replace a regular file" in capsys.readouterr().err
        assert not stat.S_ISREG(os.lstat(out).st_mode)        # still the pipe or the device, not a file


# ---------------------------------------------------------------------------------------------
# Unchecked values: one validated numeric type (sparsesim.numbers.Number)


@pytest.mark.parametrize("argv, field", [
    (["--set", "lookahead=1.5"], "lookahead"),
    (["--set", "lookahead=abc"], "lookahead"),
    (["--set", "prefetch_cap=nan"], "prefetch_cap"),
    (["--set", "insert_overhead=nan"], "insert_overhead"),     # was a NaN result with exit 0
    (["--set", "max_request=inf"], "max_request"),
    (["--set", "dram_budget=1e300"], "dram_budget"),
    (["--set", "warm=1"], "warm"),
    (["--predictor", "noisy-oracle:seed=-1"], "seed"),
    (["--predictor", "noisy-oracle:fn=nan"], "fn"),
    (["--predictor", "window:k=1.5"], "'k'"),
    (["--seed", str(2 ** 63)], "--seed"),
])
def test_every_numeric_setting_refuses_nan_fractions_and_absurd_values(trace, capsys, argv, field):
    rc = main(["simulate", "--trace", str(trace), "--no-baselines", *argv])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and err.startswith("sparsesim: error: ") and field in err, err


def test_spec_grids_use_the_same_numbers(tmp_path, trace):
    from sparsesim.experiments.spec import load_spec

    for grid in ({"seed": [2 ** 63]}, {"seed": [-1]}, {"lookahead": [1.5]}, {"insert_overhead": ["nan"]},
                 {"predictor": ["noisy-oracle:seed=18446744073709551616"]}):
        spec = tmp_path / "s.yaml"
        spec.write_text(yaml.safe_dump({"name": "x", "traces": [trace.name], "profiles": ["oneplus-12"],
                                        "grid": grid}))
        with pytest.raises(InputError, match=f"{spec}: grid.{next(iter(grid))}"):
            load_spec(spec)


# ---------------------------------------------------------------------------------------------
# The machine's limits: one place words them (sparsesim.errors.system_reason), never "corrupt"


def test_too_many_open_files_is_said_so_not_called_a_corrupt_file(trace):
    script = textwrap.dedent(f"""
        import resource, sys
        from sparsesim.experiments.cli import main
        main(["inspect", {str(trace)!r}])          # every module the command needs is imported now
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
        held = []
        try:
            while True:
                held.append(open("/dev/null"))
        except OSError:
            pass
        sys.exit(main(["inspect", {str(trace)!r}]))
    """)
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120)
    line = one_line_error(result, str(trace), "Too many open files")
    assert "corrupt" not in line and "not a readable Parquet file" not in line


# ---------------------------------------------------------------------------------------------
# Silent wrong answers: checksums of metadata and columns, widths checked, writers read back


def test_a_flipped_bit_in_the_footer_json_is_an_error_not_another_answer(tmp_path, trace, capsys):
    raw = trace.read_bytes()
    key = b'"d_model": 16'                   # the metadata JSON in the Parquet footer
    assert raw.count(key) == 1
    damaged = tmp_path / "damaged.parquet"
    damaged.write_bytes(raw.replace(key, b'"d_model": 17'))   # a one-bit flip: "6" -> "7"
    assert main(["simulate", "--trace", str(damaged), "--no-baselines", "--json", "-"]) == 2
    assert "checksum mismatch in the metadata" in capsys.readouterr().err


def test_mask_bits_beyond_a_layers_width_are_refused(tmp_path):
    """A file written by another tool (no checksum) whose masks set neuron 60 of a 60-neuron layer."""
    from sparsesim.tracefile import META_KEY, _schema, read_trace

    masks = np.zeros((4, 2, 8), dtype=np.uint8)
    masks[2, 1, 7] = 0b0001_0000                                   # neuron 60: beyond d_ff 60
    n = masks.shape[0] * masks.shape[1]
    table = pa.table({"seq": np.zeros(n, np.int32), "pos": np.repeat(np.arange(4, dtype=np.int32), 2),
                      "token": np.zeros(n, np.int32), "layer": np.tile(np.arange(2, dtype=np.int16), 4),
                      "mask": pa.FixedSizeBinaryArray.from_buffers(pa.binary(8), n, [None, pa.py_buffer(masks.tobytes())]),
                      "active": np.bitwise_count(masks).sum(-1).reshape(-1).astype(np.int32)}, schema=_schema(8, ()))
    meta = {"format_version": 1, "model": {"name": "foreign", "n_layers": 2, "d_model": 8, "d_ff": [60, 60],
                                           "glu": True, "non_ffn_params": 0}}
    path = tmp_path / "foreign.parquet"
    pq.write_table(table.replace_schema_metadata({META_KEY: json.dumps(meta)}), path)
    with pytest.raises(InputError, match="beyond layer 1.s width"):
        read_trace(path)


def test_every_trace_synth_writes_is_read_back_and_what_it_cannot_write_is_refused(tmp_path, capsys):
    from sparsesim.inspect_trace import inspect_trace
    from sparsesim.tracefile import read_trace

    for i, argv in enumerate((["--layers", "3", "--d-model", "16", "--d-ff", "61"], ["--layers", "1", "--d-model", "8",
                              "--d-ff", "8", "--no-glu"], ["--shape", "opt-350m", "--tokens", "3"])):
        out = tmp_path / f"ok{i}.parquet"
        assert main(["synth", *argv, "--tokens", "20", "-o", str(out)] if "--tokens" not in argv
                    else ["synth", *argv, "-o", str(out)]) == 0
        assert read_trace(out).n_tokens in (3, 20)
        assert inspect_trace(out)["integrity"].startswith("sha256 verified")
    capsys.readouterr()
    for argv in (["--layers", "5000", "--d-model", "8", "--d-ff", "8"], ["--layers", "1", "--d-model", str(2 ** 31),
                 "--d-ff", "8"], ["--layers", "1", "--d-model", "8", "--d-ff", str(2 ** 21)]):
        out = tmp_path / "refused.parquet"
        assert main(["synth", *argv, "--tokens", "1", "-o", str(out)]) == 2   # the reader would refuse it
        assert not out.exists() and capsys.readouterr().err.count("\n") == 1


def test_a_flipped_bit_in_a_results_file_is_an_error(tmp_path):
    from sparsesim.experiments.sweep import read_results, write_run

    row = {"run_id": "r1", "status": "ok", "error": "", "time_per_token_s": 0.012345678901234}
    part = write_run(tmp_path, row)
    raw = part.read_bytes()
    value = struct.pack("<d", row["time_per_token_s"])
    assert raw.count(value) == 1
    part.write_bytes(raw.replace(value, bytes([value[0] ^ 1]) + value[1:]))
    with pytest.raises(InputError, match="checksum mismatch"):
        read_results(tmp_path)


# ---------------------------------------------------------------------------------------------
# Unbounded work: one bound per command (sparsesim.limits)


def test_work_is_bounded_before_it_starts(tmp_path, trace):
    from sparsesim.experiments.spec import load_spec

    spec = tmp_path / "s.yaml"
    spec.write_text(yaml.safe_dump({"name": "x", "traces": [trace.name], "profiles": ["oneplus-12", "pixel-8",
                    "apple-m1-max", "laptop-nvme"], "sample": {"method": "random", "n": 100_000,
                                                               "ranges": {"dram_budget": [0.1, 0.9]}}}))
    with pytest.raises(InputError, match=r"400,000 runs \(traces x profiles x setting points\); at most"):
        load_spec(spec)                                     # sampled points x profiles had no bound
    walk = tmp_path / "walk.yaml"
    walk.write_text(yaml.safe_dump({"name": "x", "root": "/", "traces": ["**/*.parquet"], "profiles": ["oneplus-12"]}))
    one_line_error(sparsesim("sweep", walk, "-o", tmp_path / "out", timeout=120), "directory entries walked")
    for seconds in ("nan", "inf", "1e9"):                   # nan measured for ever
        one_line_error(sparsesim("calibrate-host", "--dir", tmp_path, "--seconds", seconds, "--size", "2 MiB",
                                 "-o", tmp_path / "host.yaml", timeout=60), "--seconds")
    for seed in ("-1", str(2 ** 64)):
        one_line_error(sparsesim("synth", "--layers", "1", "--d-model", "8", "--d-ff", "8", "--seed", seed,
                                 "-o", tmp_path / "s.parquet"), "--seed")


# ---------------------------------------------------------------------------------------------
# Exposure: no dashboard unless asked for, loopback only


def test_a_local_dask_cluster_serves_no_dashboard_unless_asked(capsys):
    pytest.importorskip("distributed")
    from sparsesim.experiments.sweep import _dask_client

    def pages(client) -> list[int]:
        port = client.scheduler_info()["services"]["dashboard"]
        codes = []
        for page in ("/status", "/info/main/workers.html"):
            try:
                codes.append(urllib.request.urlopen(f"http://127.0.0.1:{port}{page}", timeout=10).status)
            except urllib.error.HTTPError as e:
                codes.append(e.code)
        return codes

    with _dask_client(None, 1) as client:
        assert client.submit(sum, [1, 2]).result() == 3
        assert pages(client) == [404, 404]
    with _dask_client(None, 1, dashboard=True) as client:
        assert client.dashboard_link.startswith("http://127.0.0.1:")
        assert 200 in pages(client)
    assert "dashboard at http://127.0.0.1:" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# Memory: analyze is streamed


def test_analyze_memory_does_not_grow_with_the_trace(tmp_path):
    """Numpy memory at the peak of ``analyze`` for a trace and one 4x longer (tracemalloc sees numpy's
    allocations; the report's own page is the same for both): it must grow by far less than the
    masks do. Read whole, the replay's predictions and set operations took several times the masks."""
    from sparsesim.experiments.predictability import analyze
    from sparsesim.tracefile import TraceWriter

    def trace(tokens: int) -> Path:
        rng = np.random.default_rng(tokens)
        model = {"name": "wide", "n_layers": 4, "d_model": 16, "d_ff": [8192] * 4, "glu": True, "non_ffn_params": 0}
        path = tmp_path / f"t{tokens}.parquet"
        with TraceWriter(path, {"model": model}) as writer:
            for start in range(0, tokens, 256):
                masks = rng.integers(0, 256, (256, 4, 1024), dtype=np.uint8) & rng.integers(0, 256, (256, 4, 1024),
                                                                                             dtype=np.uint8)
                writer.write(np.zeros(256, np.int32), np.arange(start, start + 256), rng.integers(0, 100, 256), masks)
        return path

    analyze(trace(256), tmp_path / "warm", predictors=["previous-token"])      # imports, plotly's first page
    peaks = []
    for tokens in (2048, 8192):
        path = trace(tokens)
        tracemalloc.start()
        analyze(path, tmp_path / f"out{tokens}", predictors=["previous-token"])
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    mask_growth = (8192 - 2048) * 4 * 1024
    assert peaks[1] - peaks[0] < 0.25 * mask_growth, (peaks, mask_growth)
