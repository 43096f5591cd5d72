"""The report's mixture-of-experts section (experiments/report_moe.py): every number it shows is one record's."""

from __future__ import annotations

import numpy as np

from sparsesim.experiments.html import render_page
from sparsesim.experiments.report_moe import markdown, moe_section
from sparsesim.simulator.simulate import simulate
from tracebuild import sliding, write_expert_trace, write_trace


def test_the_moe_section_shows_the_records_numbers(tmp_path):
    rng = np.random.default_rng(5)
    route = np.stack([np.stack([rng.choice(8, 2, replace=False) for _ in range(3)]) for _ in range(24)])
    path = write_expert_trace(tmp_path / "e.parquet", route.astype(np.int16), count=[8, 8, 8],
                              unit_bytes=[300, 200, 200], phase=[0] * 4 + [1] * 20, batch=[0] * 4 + list(range(1, 21)))
    rows = []
    for budget in (1400, 2400):
        for predictor, cache, partition in (("none", "lru", "global"), ("none", "belady", "global"),
                                            ("none", "lru", "per-layer"), ("previous-token", "lru", "global"),
                                            ("oracle", "lru", "global")):
            r = simulate(path, "oneplus-15r", predictor, cache, baselines=False,
                         settings=[f"cache_budget={budget}", f"partition={partition}"])
            rows.append({**r, "status": "ok", "run_id": f"{predictor}-{cache}-{partition}-{budget}"})
    neuron = simulate(write_trace(tmp_path / "n.parquet", sliding(8, 2, 64, 8, 3)), "oneplus-12", "oracle", "lru",
                      baselines=False)
    rows += [{**neuron, "status": "ok"}, {"status": "invalid", "error": "refused"}]

    section, numbers = moe_section(rows)
    model = "tiny-moe"
    by_id = {r.get("run_id"): r for r in rows}
    assert set(numbers["hit_rate"]) == {model}   # the neuron run and the failed one are left out
    table = numbers["hit_rate"][model]
    assert set(table) == {"lru", "belady", "lru (per-layer)"}
    for budget in (1400, 2400):
        for policy, (cache, partition) in {"lru": ("lru", "global"), "belady": ("belady", "global"),
                                           "lru (per-layer)": ("lru", "per-layer")}.items():
            run = by_id[f"none-{cache}-{partition}-{budget}"]
            assert table[policy][budget] == 100 * run["decode_hit_rate"]
        assert table["belady"][budget] >= table["lru"][budget]
    accuracy = numbers["predictor_accuracy"][model]
    assert set(accuracy) == {"previous-token", "oracle"} and accuracy["oracle"]["bound"]
    assert accuracy["oracle"]["recall"] == 100.0 and accuracy["previous-token"]["run_id"] == "previous-token-lru-global-2400"
    assert numbers["time_ms"][model]["oracle"][2400] == \
        1e3 * by_id["oracle-lru-global-2400"]["decode_time_per_token_s"]
    assert numbers["cycle_MiB"][model] == 2 * (300 + 200 + 200) / 2 ** 20
    layers = numbers["concentration"][model]
    assert [l["layer"] for l in layers] == [0, 1, 2] and all(0 < l["hot_share"] <= 100 for l in layers)
    assert len(section.figures) == 3 and len(section.tables) == 2
    page = render_page("report", [section])
    assert "Mixture-of-experts: expert caches" in page and "previous-token" in page
    assert "| budget (MiB) |" in markdown(numbers)


def test_no_expert_runs_no_numbers():
    section, numbers = moe_section([{"status": "ok", "trace_unit": "neuron"}])
    assert numbers["hit_rate"] == {} and section.figures == []


def test_the_report_of_an_expert_sweep_has_the_moe_section(tmp_path):
    """The page `sparsesim report` writes carries the section when the sweep replayed expert traces."""
    from sparsesim.experiments.report import make_report
    from sparsesim.experiments.sweep import run_sweep

    rng = np.random.default_rng(2)
    route = np.stack([np.stack([rng.choice(8, 2, replace=False) for _ in range(3)]) for _ in range(12)])
    write_expert_trace(tmp_path / "e.parquet", route.astype(np.int16), count=[8, 8, 8], unit_bytes=[300, 200, 200],
                       phase=[0] * 2 + [1] * 10, batch=[0] * 2 + list(range(1, 11)))
    (tmp_path / "spec.yaml").write_text(
        "name: tiny-moe\ntraces: [e.parquet]\nprofiles: [oneplus-15r]\n"
        "grid:\n  predictor: [none]\n  cache: [lru, belady]\n  cache_budget: [1400, 2400]\nbaselines: false\n")
    run_sweep(tmp_path / "spec.yaml", tmp_path / "results", workers=1, progress=False)
    page = make_report(tmp_path / "results", tmp_path / "report.html")["page"]
    assert "Mixture-of-experts: expert caches" in open(page, encoding="utf-8").read()
