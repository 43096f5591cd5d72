"""``sparsesim demo`` end to end on the real stories260K model (Gemma takes minutes): its closing summary
is the report's verdict, number for number, and every number in it is a record."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from sparsesim.errors import InputError
from sparsesim.experiments import demo as demo_module
from sparsesim.experiments import verdict as vd
from sparsesim.experiments.sweep import read_results

pytest.importorskip("torch")


@pytest.fixture(scope="module")
def small_demo(tmp_path_factory, shared_data):
    """The demo with stories260K, one device and two budgets (the stages and the code are the demo's own)."""
    patch = pytest.MonkeyPatch()
    patch.setenv("SPARSESIM_STORIES260K", str(shared_data / "llama2c-stories260K"))
    patch.setattr(demo_module, "PROFILES", ("raspberry-pi-5-nvme",))
    patch.setattr(demo_module, "BUDGETS", (0.5, 1.0))
    out = tmp_path_factory.mktemp("demo") / "demo"
    try:
        yield out, demo_module.demo(out, model="stories260K", tokens=512, workers=2)
    finally:
        patch.undo()


def test_the_summary_is_the_reports_verdict(small_demo):
    out, result = small_demo
    rows = read_results(out / "results").to_pylist()
    verdict = vd.compute(rows)
    assert result["summary"] == vd.summary_lines(verdict)
    assert (out / "summary.txt").read_text().splitlines() == result["summary"]
    page = Path(result["report"]).read_text()
    import html

    assert all(html.escape(line) in page for line in result["summary"])
    assert set(result["stage_seconds"]) == {"traces", "predictability analysis", "sweep", "report"}
    # three traces, each with its own perplexity; one line per device
    assert result["summary"][0].startswith("Perplexity of stories260K on pydoc (512 tokens, window 512)")
    assert len(re.findall(r"\d+ % sparsity \d", result["summary"][0])) == len(demo_module.LEVELS)
    assert sum(line.startswith("raspberry-pi-5-nvme: ") for line in result["summary"]) == 1


def test_the_summary_numbers_are_records(small_demo):
    out, result = small_demo
    records = [r for r in read_results(out / "results").to_pylist() if r["status"] == "ok"]
    line = next(x for x in result["summary"] if x.startswith("raspberry-pi-5-nvme: "))
    cells = vd.compute(records).of("raspberry-pi-5-nvme")
    best = vd.headline(vd.compute(records), "raspberry-pi-5-nvme")
    # the headline is the largest speed-up of a realisable design over dense among all settings
    assert best.speedup == max(c.speedup for c in cells)
    design, dense, bound = best.best, best.dense, best.bound
    assert not design["predictor"].startswith(("oracle", "noisy-oracle", "dense"))
    numbers = re.search(r"Best realisable: (.+?) \+ (\S+) at .*?: ([\d.]+) ms/token vs dense ([\d.]+) ms "
                        r"\((in DRAM|streamed)\), ([\d.]+)x; oracle bound there ([\d.]+) ms \(([\d.]+)x\)", line)
    assert numbers, line
    predictor, cache, ms, dense_ms, where, speedup, bound_ms, bound_speedup = numbers.groups()
    assert (predictor, cache) == (design["predictor"], design["cache"])
    assert abs(float(ms) - design["time_per_token_s"] * 1e3) <= 0.005 * design["time_per_token_s"] * 1e3
    assert abs(float(dense_ms) - dense["time_per_token_s"] * 1e3) <= 0.005 * dense["time_per_token_s"] * 1e3
    assert where == ("in DRAM" if dense["storage_bytes_per_token"] == 0 else "streamed")
    assert abs(float(speedup) - dense["time_per_token_s"] / design["time_per_token_s"]) <= 0.005
    assert abs(float(bound_ms) - bound["time_per_token_s"] * 1e3) <= 0.005 * bound["time_per_token_s"] * 1e3
    assert abs(float(bound_speedup) - dense["time_per_token_s"] / bound["time_per_token_s"]) <= 0.005
    # every design, the oracle bound and the noisy oracles ran at every budget on every trace
    assert {r["predictor"] for r in records} == {p for p, _ in demo_module.PAIRS}


def test_a_demo_directory_with_other_settings_is_refused(small_demo):
    out, _ = small_demo
    with pytest.raises(InputError, match="other settings"):
        demo_module.demo(out, model="stories260K", tokens=1024)


def test_a_bad_token_count_is_refused_before_the_directory_is_claimed(tmp_path, shared_data, monkeypatch):
    """--tokens shorter than one window is an error at once, and leaves no stamp that would refuse the
    corrected rerun in the same directory."""
    monkeypatch.setenv("SPARSESIM_STORIES260K", str(shared_data / "llama2c-stories260K"))
    out = tmp_path / "demo"
    with pytest.raises(InputError, match="--tokens 100: shorter than one window"):
        demo_module.demo(out, model="stories260K", tokens=100)
    assert not (out / "demo.json").exists()
