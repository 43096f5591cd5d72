"""``sparsesim import``: routing captured by other engines becomes an expert trace (no torch).

The data are the two real captures from a OnePlus 15R in ../shared/data/moe-routes (route_trace v1
with their .metrics). The other formats are exercised on the same routing, rewritten in each
format's layout, so every importer must reproduce the route_trace import exactly.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from sparsesim.errors import InputError
from sparsesim.experiments.cli import main
from sparsesim.tracecolumns import DECODE, PREFILL
from sparsesim.tracefile import read_trace
from sparsesim.tracing.importers import detect_format, import_file

REPO = Path(__file__).resolve().parents[1]
# name: (layers, prompt tokens, decode tokens, summary hit %, summary MiB read)
CAPTURES = {"qwen": (48, 28, 128, 74.9, 20023.9), "gemma": (30, 29, 128, 76.8, 15785.2)}


@pytest.fixture(scope="module")
def routes_dir(shared_data) -> Path:
    return shared_data / "moe-routes"


@pytest.fixture(scope="module")
def imported(routes_dir, tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("imported")
    return {name: Path(import_file(routes_dir / f"{name}.route.csv", out / f"{name}.parquet") and
                       out / f"{name}.parquet") for name in CAPTURES}


def _csv_rows(path: Path) -> np.ndarray:
    """The capture's rows, parsed independently of the importer: [rows, 9] in file order."""
    data = [line for line in path.read_text().splitlines() if not line.startswith("#")][1:]
    return np.loadtxt(data, delimiter=",", ndmin=2)


@pytest.mark.parametrize("name", CAPTURES)
def test_route_trace_import_keeps_everything(name, imported, routes_dir):
    n_layers, prompt, decode, hit_pct, read_mib = CAPTURES[name]
    trace = read_trace(imported[name])
    units = trace.units
    assert units.kind == "expert" and units.n_layers == n_layers and set(units.count) == {128}
    assert set(units.top_k) == {6} and units.dense_layers == () and not any(units.shared)
    header = {int(line.split()[1].split("=")[1]): (int(line.split()[2].split("=")[1]), int(line.split()[3].split("=")[1]))
              for line in open(routes_dir / f"{name}.route.csv") if line.startswith("# layer=")}
    assert [units.routed_unit_bytes(l) for l in range(n_layers)] == [header[l][0] for l in range(n_layers)]
    assert list(units.resident_bytes) == [header[l][1] for l in range(n_layers)]
    assert (trace.phase == PREFILL).sum() == prompt and (trace.phase == DECODE).sum() == decode
    batch = trace.columns["batch"]
    assert len(np.unique(batch[trace.phase == PREFILL])) == 1 and len(np.unique(batch)) == decode + 1
    # Every row of the capture, and nothing else, is in the trace: same (step, layer, slot) -> expert,
    # weight, residency and bytes.
    rows = _csv_rows(routes_dir / f"{name}.route.csv")
    step, layer, slot = rows[:, 2].astype(int), rows[:, 3].astype(int), rows[:, 4].astype(int)
    t = np.searchsorted(trace.pos, step)
    assert np.array_equal(trace.route[t, layer, slot], rows[:, 5].astype(int))
    assert np.allclose(trace.columns["route_weight"][t, layer, slot], rows[:, 6], rtol=1e-6)
    assert np.array_equal(trace.columns["capture:resident"][t, layer, slot], rows[:, 7].astype(int))
    assert np.array_equal(trace.columns["capture:read_bytes"][t, layer, slot], rows[:, 8].astype(int))
    assert (trace.route >= 0).sum() == len(rows)
    # The engine's own counters survive: the metrics rows and the summary line.
    metrics = trace.meta["capture"]["metrics"]
    assert len(metrics["rows"]) == decode and metrics["summary"]["cache_hit_pct"] == hit_pct
    assert metrics["summary"]["read_MiB"] == read_mib
    # ...and agree with the per-lookup columns: one lookup per distinct expert per batch (a prefill
    # repeat reads nothing), so hits / lookups over the whole run is the engine's cumulative hit rate.
    resident, read = trace.columns["capture:resident"], trace.columns["capture:read_bytes"]
    prefill = trace.phase == PREFILL
    lookups = (read[prefill] > 0).sum() + (resident[~prefill] >= 0).sum()
    assert round(100 * (resident[~prefill] == 1).sum() / lookups, 1) == hit_pct


def test_qwen_prefill_last_layer_ran_for_the_last_prompt_token_only(imported):
    """The phone engine (llama.cpp) prunes the last layer of a prompt batch to the token it outputs."""
    trace = read_trace(imported["qwen"])
    prefill = np.flatnonzero(trace.phase == PREFILL)
    empty = trace.active == 0
    assert empty[prefill[:-1], 47].all() and not empty[prefill[-1], 47]
    assert empty.sum() == len(prefill) - 1


def test_import_cli_and_detection(routes_dir, tmp_path, capsys):
    assert main(["import", str(routes_dir / "gemma.route.csv"), "-o", str(tmp_path / "g.parquet")]) == 0
    out = capsys.readouterr().out
    assert "route_trace v1, 30 layers (30 MoE, 128 experts, top-6), kept metrics" in out
    assert read_trace(tmp_path / "g.parquet").units.cycle_bytes() > 0
    assert detect_format(routes_dir / "gemma.route.csv") == "route_trace"


def test_import_installs_without_torch(routes_dir, tmp_path):
    """The importers and the import command never load torch (the simulator installs without it)."""
    code = ("import sys; from sparsesim.experiments.cli import main; "
            f"rc = main(['import', {str(routes_dir / 'qwen.route.csv')!r}, '-o', {str(tmp_path / 'q.parquet')!r}]); "
            "assert rc == 0 and 'torch' not in sys.modules, sorted(m for m in sys.modules if 'torch' in m)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                       env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert r.returncode == 0, r.stderr


# --- the same routing in the other formats ---------------------------------------------------------

def _shape(trace, path: Path, **extra) -> Path:
    sizes = [int(trace.units.routed_unit_bytes(l)) for l in range(trace.units.n_layers)]
    path.write_text(json.dumps({"model": "qwen3-30b-a3b", "n_experts": 128, "expert_bytes": sizes, "top_k": 6,
                                **extra}))
    return path


def test_llama_cpp_rows_give_the_same_routes(imported, routes_dir, tmp_path):
    """route_trace rows are in llama.cpp's execution order, so their (layer, expert) columns are a
    llama.cpp moe-trace of the same run, prompt batch (with its pruned last layer) included."""
    rows = _csv_rows(routes_dir / "qwen.route.csv")
    src = tmp_path / "moe_trace.csv"
    src.write_text("layer,expert\n" + "".join(f"{int(l)},{int(e)}\n" for l, e in rows[:, [3, 5]]))
    reference = read_trace(imported["qwen"])
    shape = _shape(reference, tmp_path / "moe_trace.json", prompt_tokens=28)
    assert detect_format(src) == "llama.cpp"
    trace = read_trace(Path(import_file(src, tmp_path / "l.parquet") and tmp_path / "l.parquet"))
    assert np.array_equal(trace.route, reference.route) and np.array_equal(trace.phase, reference.phase)
    assert np.array_equal(trace.columns["batch"], reference.columns["batch"])
    assert trace.meta["config"]["shape"] is None and shape.exists()   # found beside the input


def test_routed_experts_arrays_give_the_same_routes(imported, tmp_path):
    reference = read_trace(imported["gemma"])    # no pruned prompt layer: a dense [tokens, layers, k] array
    prompt = reference.phase == PREFILL
    npz = tmp_path / "gemma.npz"
    np.savez(npz, prompt_routed_experts=reference.route[prompt], routed_experts=reference.route[~prompt])
    _shape(reference, tmp_path / "gemma.json")
    trace = read_trace(Path(import_file(npz, tmp_path / "n.parquet") and tmp_path / "n.parquet"))
    assert np.array_equal(trace.route, reference.route) and np.array_equal(trace.phase, reference.phase)
    npy = tmp_path / "decode.npy"
    np.save(npy, reference.route[~prompt].astype(np.int16))
    trace = read_trace(Path(import_file(npy, tmp_path / "d.parquet", shape=tmp_path / "gemma.json")
                            and tmp_path / "d.parquet"))
    assert np.array_equal(trace.route, reference.route[~prompt]) and trace.phase is None


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_generic_table_gives_the_same_routes(suffix, imported, tmp_path):
    reference = read_trace(imported["qwen"])
    t, layer, slot = np.nonzero(reference.route >= 0)
    table = {"token": reference.pos[t], "layer": layer, "expert": reference.route[t, layer, slot],
             "weight": reference.columns["route_weight"][t, layer, slot],
             "phase": np.where(reference.phase[t] == PREFILL, "prefill", "decode"),
             "batch": reference.columns["batch"][t]}
    src = tmp_path / f"routes{suffix}"
    if suffix == ".csv":
        src.write_text("token,layer,expert,weight,phase,batch\n" + "".join(
            f"{a},{b},{c},{d!r},{e},{f}\n" for a, b, c, d, e, f in zip(*(table[k].tolist() for k in table))))
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq
        pq.write_table(pa.table(table), src)
    _shape(reference, tmp_path / "routes.json")
    trace = read_trace(Path(import_file(src, tmp_path / "g.parquet") and tmp_path / "g.parquet"))
    assert np.array_equal(trace.route, reference.route) and np.array_equal(trace.phase, reference.phase)
    assert np.array_equal(trace.columns["route_weight"], reference.columns["route_weight"], equal_nan=True)


# --- bad input: one line naming the line or field, nothing written ---------------------------------

def _edit(src: Path, dst: Path, edit) -> Path:
    dst.write_text(edit(src.read_text()))
    return dst


def _route_line(text: str, step: int, layer: int, slot: int) -> int:
    """Index (0-based) of the data line for (step, layer, slot) in the phase column's file."""
    for i, line in enumerate(text.splitlines()):
        f = line.split(",")
        if len(f) == 9 and f[2:5] == [str(step), str(layer), str(slot)]:
            return i
    raise AssertionError("row not found")


def _set_field(text: str, index: int, column: int, value: str) -> str:
    lines = text.splitlines(keepends=True)
    fields = lines[index].rstrip("\n").split(",")
    fields[column] = value
    lines[index] = ",".join(fields) + "\n"
    return "".join(lines)


def _bad_inputs(routes_dir: Path, tmp: Path) -> dict[str, tuple[Path, str]]:
    src = routes_dir / "qwen.route.csv"
    text = src.read_text()
    row = _route_line(text, 40, 3, 2)
    cases = {
        "truncated mid-line": (_edit(src, tmp / "cut.route.csv", lambda t: t[:len(t) - 20]),
                               r"line 44817: the last line has no line end \(file truncated\?\)"),
        "truncated inside a row": (_edit(src, tmp / "cut1.route.csv", lambda t: t[:len(t) - 20] + "\n"),
                                   r"line 44817: 5 fields, expected 9 \(turn,.*\); file truncated\?"),
        "truncated at a step": (_edit(src, tmp / "cut2.route.csv", lambda t: "".join(t.splitlines(True)[:-100])),
                                r"line 44716: token \(seq 0, position 155\) routes 2 experts in layer 31, but the "
                                r"top-k is 6 \(the header's n_expert_used=6; file truncated\?\)"),
        "truncated at a layer": (_edit(src, tmp / "cut3.route.csv", lambda t: "".join(t.splitlines(True)[:-96])),
                                 r"token \(seq 0, position 155\) has no rows for layer 32 \(file truncated\?\)"),
        "expert id too large": (_edit(src, tmp / "id.route.csv", lambda t: _set_field(t, row, 5, "128")),
                                rf"line {row + 1}: expert 128 is not below the expert count 128 of layer 3"),
        "layer without expert_bytes": (_edit(src, tmp / "hdr.route.csv",
                                             lambda t: t.replace("# layer=47 expert_bytes=3059712 dense_bytes=11953152\n",
                                                                 "")),
                                       r"line \d+: layer 47 has no '# layer=47 expert_bytes=\.\.\. dense_bytes=\.\.\.' "
                                       r"header line"),
        "top-k below the header": (_edit(src, tmp / "k.route.csv",
                                         lambda t: t.replace("n_expert_used=6", "n_expert_used=5")),
                                   r"line 57: slot 5 of a token in layer 0, but the top-k is 5 \(the header's "
                                   r"n_expert_used=5\)"),
        "a row missing from a top-k": (_edit(src, tmp / "row.route.csv",
                                             lambda t: "".join(l for i, l in enumerate(t.splitlines(True)) if i != row)),
                                       rf"line {row - 1}: token \(seq 0, position 40\) routes 5 experts in layer 3, "
                                       r"but the top-k is 6 \(the header's n_expert_used=6\)"),
    }
    np.save(tmp / "rank2.npy", np.zeros((10, 48), np.int16))
    (tmp / "rank2.json").write_text(json.dumps({"n_experts": 128, "expert_bytes": 1000}))
    cases["npy of rank 2"] = (tmp / "rank2.npy", r"rank2.npy: routed_experts has rank 2 \(shape \(10, 48\)\); "
                                               r"expected rank 3, \[tokens, moe_layers, top_k\]")
    np.save(tmp / "big.npy", np.full((4, 2, 2), 7, np.int16) + np.arange(2)[None, None, :])
    (tmp / "big.json").write_text(json.dumps({"n_experts": 8, "expert_bytes": 1000}))
    cases["npy expert id too large"] = (tmp / "big.npy", r"big.npy: routed_experts\[0, 0, 1\]: expert 8 is not below "
                                                         r"the expert count 8 of layer 0")
    (tmp / "llama.csv").write_text("layer,expert\n0,1\n0,2\n0,3\n1,1\n1,2\n1,3\n")
    (tmp / "llama.json").write_text(json.dumps({"n_experts": 8, "expert_bytes": 1000, "top_k": 2}))
    cases["llama.cpp run not a multiple of top_k"] = (
        tmp / "llama.csv", r"llama.csv line 4: layer 0 has a run of 3 rows, not a multiple of the shape file's "
                           r"top_k=2")
    (tmp / "noshape.npy").write_bytes((tmp / "big.npy").read_bytes())
    cases["no shape file"] = (tmp / "noshape.npy", r"shape field 'n_experts' \(give --shape FILE\) is required")
    return cases


def test_bad_input_is_one_line_and_writes_nothing(routes_dir, tmp_path, capsys):
    src_dir = tmp_path / "in"
    src_dir.mkdir()
    cases = _bad_inputs(routes_dir, src_dir)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    for name, (path, expected) in cases.items():
        rc = main(["import", str(path), "-o", str(out_dir / "t.parquet")])
        err = capsys.readouterr().err
        lines = err.strip().splitlines()
        assert rc == 2 and len(lines) == 1 and lines[0].startswith("sparsesim: error: "), (name, err)
        assert re.search(expected, lines[0]), (name, lines[0])
        assert list(out_dir.iterdir()) == [], (name, list(out_dir.iterdir()))


def test_unknown_format_and_wrong_flags(routes_dir, tmp_path):
    odd = tmp_path / "odd.txt"
    odd.write_text("hello world\n")
    with pytest.raises(InputError, match="format not recognised"):
        import_file(odd, tmp_path / "o.parquet")
    with pytest.raises(InputError, match="--shape: a route_trace file carries its own shape"):
        import_file(routes_dir / "qwen.route.csv", tmp_path / "o.parquet", shape=odd)
    copy = tmp_path / "qwen.route.csv"
    shutil.copy(routes_dir / "qwen.route.csv", copy)
    (tmp_path / "qwen.metrics").write_text((routes_dir / "qwen.metrics").read_text().replace("\n128,128,", "\n"))
    with pytest.raises(InputError, match=r"qwen.metrics line 129: 9 fields, expected 11 .*truncated"):
        import_file(copy, tmp_path / "o.parquet")
    assert not (tmp_path / "o.parquet").exists()


def test_oneplus_15r_storage_peak_is_the_captures_measurement(imported):
    """The profile's storage peak is the engine's own read rate during these captures: MiB read over the
    summed busy time of its I/O lanes, times the 4 lanes (hw_profiles/oneplus-15r.yaml)."""
    from sparsesim.simulator.profile import load_profile

    storage = load_profile("oneplus-15r").storage
    assert storage.queue_depth == 4
    rates = []
    for name in CAPTURES:
        summary = read_trace(imported[name]).meta["capture"]["metrics"]["summary"]
        rates.append(summary["read_MiB"] * 2 ** 20 / summary["io_s"] * storage.queue_depth)
    assert abs(rates[0] / storage.peak_bandwidth - 1) < 1e-3      # Qwen: 3.155 GB/s
    assert abs(rates[1] / storage.peak_bandwidth - 1) < 0.01      # Gemma's lanes: within 1 %
