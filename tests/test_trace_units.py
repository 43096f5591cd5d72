"""Trace format 2: the unit (neuron or expert), the optional columns, and the reader's checks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sparsesim.errors import InputError
from sparsesim.experiments.cli import main
from sparsesim.tracecolumns import column_types
from sparsesim.tracefile import FORMAT_VERSION, TraceWriter, iter_trace_blocks, read_trace
from sparsesim.traceunits import TraceUnits, expert_masks
from tracebuild import write_trace

UNITS = TraceUnits.experts(count=[0, 8, 6], top_k=[0, 2, 3], shared=[1, 1, 0],
                           unit_bytes=[None, 1000, 1500], shared_bytes=[4000, 2000, None],
                           resident_bytes=[10, 20, 30])


def expert_trace(path: Path, tokens: int = 12, seed: int = 0, phases: bool = True) -> Path:
    """A small expert trace written through the public writer: layer 0 dense, layer 1 with a shared expert."""
    rng = np.random.default_rng(seed)
    route = np.full((tokens, 3, 3), -1, np.int64)
    for t in range(tokens):
        route[t, 1, :2] = rng.choice(8, 2, replace=False)
        route[t, 2, :3] = rng.choice(6, 3, replace=False)
    weight = np.where(route >= 0, rng.random(route.shape), np.nan).astype(np.float32)
    meta = {"model": {"name": "tiny", "n_layers": 3}, "units": UNITS.to_meta()}
    names = ("route", "route_weight") + (("phase", "batch") if phases else ())
    columns = {"route": route, "route_weight": weight}
    if phases:
        columns |= {"phase": (np.arange(tokens) >= 4).astype(np.int8),
                    "batch": np.maximum(np.arange(tokens) - 3, 0).astype(np.int32)}
    with TraceWriter(path, meta, columns=column_types(names, 3, {"resident": np.int8})) as w:
        w.write(np.zeros(tokens), np.arange(tokens), np.full(tokens, -1), expert_masks(UNITS, route),
                columns=columns | {"capture:resident": (route >= 0).astype(np.int8)})
    return path


def rewrite(src: Path, dst: Path, meta_change=None, table_change=None) -> Path:
    """``src`` rewritten as another tool (or an older sparsesim) would write it: without a checksum."""
    table = pq.read_table(src)
    meta = json.loads(pq.ParquetFile(src).metadata.metadata[b"sparsesim"])
    meta.pop("checksum")
    if meta_change:
        meta_change(meta)
    if table_change:
        table = table_change(table)
    pq.write_table(table.replace_schema_metadata({"sparsesim": json.dumps(meta)}), dst)
    return dst


def test_expert_trace_round_trip(tmp_path):
    path = expert_trace(tmp_path / "e.parquet")
    trace = read_trace(path)
    assert trace.meta["format_version"] == FORMAT_VERSION == 2
    assert trace.units == UNITS
    assert trace.units.mask_bytes == 2 and trace.n_bytes == 2          # layer 1: 8 routed + 1 shared bits
    assert trace.units.dense_layers == (0,) and trace.units.always_active(1).tolist() == [8]
    assert trace.units.cycle_bytes() == 2 * 1000 + 3 * 1500
    assert trace.active[:, 0].tolist() == [1] * 12 and set(trace.active[:, 1]) == {3} and set(trace.active[:, 2]) == {3}
    assert trace.route.shape == (12, 3, 3) and trace.phase.tolist() == [0] * 4 + [1] * 8
    assert trace.columns["capture:resident"].dtype == np.int8
    blocks = list(iter_trace_blocks(path))
    assert np.array_equal(blocks[0]["columns"]["route"], trace.route)


def test_version_1_neuron_traces_still_read(tmp_path):
    src = Path(write_trace(tmp_path / "n.parquet", np.random.default_rng(1).random((6, 2, 20)) < 0.3, d_model=16))
    old = rewrite(src, tmp_path / "v1.parquet", lambda m: m.update(format_version=1))
    trace = read_trace(old)
    assert trace.units.kind == "neuron" and trace.units.count == (20, 20) and trace.columns == {}
    assert trace.units.routed_unit_bytes(0, bytes_per_weight=2) == 3 * 16 * 2   # gate, up, down rows of d_model
    with pytest.raises(InputError, match="'units' needs format_version 2"):
        read_trace(rewrite(src, tmp_path / "v1u.parquet", lambda m: m.update(format_version=1, units={"kind": "expert"})))


BAD_UNITS = {
    "kind": ({"kind": "blob"}, "'units.kind' must be one of neuron, expert"),
    "count length": ({"count": [0, 8]}, "'units.count' must list 3 integers"),
    "top_k above count": ({"top_k": [0, 9, 3]}, r"'units.top_k\[1\]' = 9 must be in 1..count\[1\] = 8"),
    "top_k on a dense layer": ({"top_k": [1, 2, 3]}, r"'units.top_k\[0\]' = 1 must be in 1..count\[0\] = 0"),
    "unknown key": ({"experts": [1]}, "'units.experts' is not a units field"),
    "negative size": ({"unit_bytes": [None, -1, 5]}, r"'units.unit_bytes\[1\]' must be a size >= 0"),
    "no units at all": ({"count": [0, 0, 0], "top_k": [0, 0, 0], "shared": [0, 0, 0]}, "no layer has any unit"),
}


@pytest.mark.parametrize("case", BAD_UNITS)
def test_bad_units_metadata_is_one_line(case, tmp_path, capsys):
    change, message = BAD_UNITS[case]
    src = expert_trace(tmp_path / "e.parquet")
    bad = rewrite(src, tmp_path / "bad.parquet", lambda m: m["units"].update(change))
    with pytest.raises(InputError, match=message):
        read_trace(bad)
    assert main(["inspect", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "bad.parquet" in err


def _set_column(table: pa.Table, name: str, values) -> pa.Table:
    return table.set_column(table.schema.get_field_index(name), name, values)


def _masks(table: pa.Table) -> np.ndarray:
    col = table.column("mask").combine_chunks()
    return np.frombuffer(col.buffers()[1], np.uint8, count=len(col) * 2).reshape(-1, 2).copy()


def _with_masks(table: pa.Table, masks: np.ndarray) -> pa.Table:
    """New masks with a consistent popcount, so the expert-row checks (not the popcount check) decide."""
    table = _set_column(table, "mask", pa.FixedSizeBinaryArray.from_buffers(pa.binary(2), len(masks),
                                                                             [None, pa.py_buffer(masks.tobytes())]))
    return _set_column(table, "active", pa.array(np.bitwise_count(masks).sum(axis=1).astype(np.int32)))


def _free_bit(byte: int) -> int:
    return next(1 << e for e in range(8) if not byte >> e & 1)


def _add_expert(table):
    masks = _masks(table)
    masks[1, 0] |= _free_bit(masks[1, 0])     # token 0, layer 1: one routed expert too many
    return _with_masks(table, masks)


def _drop_shared(table):
    masks = _masks(table)
    masks[1, 1] &= 0xFE                        # unit 8 of layer 1 (byte 1, bit 0), the shared expert...
    masks[1, 0] |= _free_bit(masks[1, 0])      # ...replaced by a routed one: the count stays right
    return _with_masks(table, masks)


def _route(table) -> np.ndarray:
    return table.column("route").combine_chunks().flatten().to_numpy().reshape(-1, 3)


def _past_width(table):
    masks = _masks(table)
    masks[2, 0] &= ~np.uint8(1 << int(_route(table)[2, 0]))
    masks[2, 0] |= 1 << 6                      # layer 2 has units 0..5
    return _with_masks(table, masks)


def _swap_route_mask(table):
    """Token 0's layer 1 has another expert in its mask than in its route column (same count)."""
    masks = _masks(table)
    route = _route(table)
    spare = next(e for e in range(8) if e not in route[1])
    masks[1, 0] ^= (1 << int(route[1, 0])) | (1 << spare)
    return _with_masks(table, masks)


ROW_CASES = {
    "an extra expert": ("row 0 layer 1 has 4 active units; units.top_k \\+ units.shared = 3", _add_expert),
    "shared expert missing": ("token row 0 layer 1 lacks an always-active", _drop_shared),
    "bit past the layer": ("token row 0 layer 2 sets a unit >= the layer's 6 units", _past_width),
    "route disagrees": ("column 'route' disagrees with 'mask' at token row 0 layer 1", _swap_route_mask),
    "phase 2": ("column 'phase' holds values other than 0 \\(prefill\\) and 1 \\(decode\\)",
                lambda t: _set_column(t, "phase", pa.array(np.full(t.num_rows, 2, np.int8)))),
    "phase differs inside a token": ("column 'phase' differs between the layers of one token",
                                     lambda t: _set_column(t, "phase", pa.array((np.arange(t.num_rows) % 2)
                                                                                .astype(np.int8)))),
}


@pytest.mark.parametrize("case", ROW_CASES)
def test_bad_expert_rows_are_one_line(case, tmp_path):
    message, change = ROW_CASES[case]
    src = expert_trace(tmp_path / "e.parquet")
    bad = rewrite(src, tmp_path / "bad.parquet", table_change=change)
    with pytest.raises(InputError, match=message):
        read_trace(bad)


def test_wrong_column_types_and_route_in_a_neuron_trace(tmp_path):
    src = expert_trace(tmp_path / "e.parquet")
    wide = rewrite(src, tmp_path / "w.parquet", table_change=lambda t: _set_column(
        t, "route", pa.FixedSizeListArray.from_arrays(pa.array(np.zeros(t.num_rows * 4, np.int16)), 4)))
    with pytest.raises(InputError, match=r"column 'route' has type fixed_size_list<element: int16>\[4\], expected "
                                         r".*\[3\] \(k = max units.top_k = 3\)"):
        read_trace(wide)
    neuron = Path(write_trace(tmp_path / "n.parquet", np.zeros((2, 3, 8), bool)))
    with_route = rewrite(neuron, tmp_path / "nr.parquet", table_change=lambda t: t.append_column(
        "route", pa.FixedSizeListArray.from_arrays(pa.array(np.zeros(t.num_rows * 2, np.int16)), 2)))
    with pytest.raises(InputError, match="column 'route' belongs to expert traces; this trace's unit is neuron"):
        read_trace(with_route)


def test_a_neuron_trace_gives_no_unit_counts(tmp_path):
    src = Path(write_trace(tmp_path / "n.parquet", np.zeros((2, 3, 8), bool)))
    bad = rewrite(src, tmp_path / "bad.parquet", lambda m: m.update(units={"kind": "neuron", "count": [8, 8, 8]}))
    with pytest.raises(InputError, match="'units.count': a neuron trace takes its unit counts from model.d_ff"):
        read_trace(bad)


def test_sizes_come_from_bytes_or_parameters():
    units = TraceUnits.experts(count=[4], top_k=[2], unit_params=[1000])
    assert units.routed_unit_bytes(0, bytes_per_weight=0.5) == 500 and units.cycle_bytes(0.5) == 1000
    with pytest.raises(InputError, match="layer 0 records no unit_bytes and no precision was given"):
        units.routed_unit_bytes(0)


def test_inspect_an_expert_trace(tmp_path, capsys):
    assert main(["inspect", str(expert_trace(tmp_path / "e.parquet")), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["unit"] == "expert" and info["dense_layers"] == [0] and info["cycle_bytes"] == 6500
    assert info["phases"] == {"prefill": 4, "decode": 8} and info["experts_touched"][0] == 0
