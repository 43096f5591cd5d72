"""``sparsesim routing`` on the two OnePlus 15R captures: concentration, token cycle, budget position.

The capturing project analysed the same files (BigMoeOnEdge docs/bench-data/2026-07-15-route-trace/
findings.md); the numbers it published are the expected values here.
"""

from __future__ import annotations

import json

import pytest

from sparsesim.errors import InputError
from sparsesim.experiments.cli import main
from sparsesim.experiments.routing import routing_report
from sparsesim.tracefile import read_trace
from sparsesim.tracing.importers import import_file

MIB = 2 ** 20


@pytest.fixture(scope="module")
def captures(shared_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("routing")
    for name in ("qwen", "gemma"):
        import_file(shared_data / "moe-routes" / f"{name}.route.csv", out / f"{name}.parquet")
    return {name: read_trace(out / f"{name}.parquet") for name in ("qwen", "gemma")}


def test_reproduces_the_capturing_projects_analysis(captures):
    qwen = routing_report(captures["qwen"], budget=4000 * MIB)
    gemma = routing_report(captures["gemma"], budget=4000 * MIB)
    assert qwen["tokens"] == gemma["tokens"] == 128 and qwen["tokens_are"] == "decode"
    touched = [l["touched"] for l in qwen["layers"]]
    assert round(qwen["mean_touched"]) == 64 and (min(touched), max(touched)) == (33, 107)
    assert touched[0] == 107 and round(100 * qwen["layers"][0]["hot_share"], 1) == 21.5
    assert round(100 * qwen["layers"][5]["hot_share"], 1) == 43.2 and round(100 * qwen["mean_hot_share"], 1) == 44.5
    touched = [l["touched"] for l in gemma["layers"]]
    assert round(gemma["mean_touched"]) == 67 and (min(touched), max(touched)) == (52, 97)
    assert round(qwen["working_set_bytes"] / MIB) == 8386 and round(qwen["bank_bytes"] / MIB) == 16740
    assert round(gemma["working_set_bytes"] / MIB) == 7576 and round(gemma["bank_bytes"] / MIB) == 14429


def test_cycle_and_budget(captures):
    qwen = routing_report(captures["qwen"], budget=4000 * MIB)
    units = captures["qwen"].units
    assert qwen["cycle_bytes"] == 6 * sum(units.routed_unit_bytes(l) for l in range(48))
    assert round(qwen["cycle_bytes"] / MIB, 1) == 784.7 and round(qwen["budget"]["cycles"], 2) == 5.10
    assert not qwen["budget"]["below_cycle"]
    assert routing_report(captures["gemma"], budget=600 * MIB)["budget"]["below_cycle"]   # cycle 676.4 MiB


def test_routing_cli(shared_data, tmp_path, capsys):
    assert main(["import", str(shared_data / "moe-routes" / "gemma.route.csv"), "-o", str(tmp_path / "g.parquet")]) == 0
    assert main(["routing", str(tmp_path / "g.parquet"), "--budget", "600MiB"]) == 0
    out = capsys.readouterr().out
    assert "token cycle       676.4 MiB" in out and "warning: the budget holds less than one token cycle" in out
    assert main(["routing", str(tmp_path / "g.parquet"), "--json", "--hot", "6"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["hot"] == 6 and len(report["layers"]) == 30 and "budget" not in report
    assert main(["routing", str(tmp_path / "g.parquet"), "--budget", "4 parsecs"]) == 2
    assert "--budget 4 parsecs" in capsys.readouterr().err


def test_a_neuron_trace_is_refused(tmp_path):
    import numpy as np
    from tracebuild import write_trace

    path = write_trace(tmp_path / "n.parquet", np.random.default_rng(0).random((4, 2, 16)) < 0.5)
    with pytest.raises(InputError, match="needs an expert trace"):
        routing_report(read_trace(path))
