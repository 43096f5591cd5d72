"""The seed-paper reproduction runs end to end (on stories260K here, small; Gemma in the real run)."""

import csv

import pytest

pytest.importorskip("torch")


def test_seed_paper_reproduction_on_stories(shared_data, tmp_path):
    from sparsesim.experiments.reproductions import seed_paper

    trace = seed_paper.make_trace(str(tmp_path / "s.parquet"), model=str(shared_data / "llama2c-stories260K"),
                                  text=str(shared_data / "wikitext-2-raw" / "wiki.test.raw"), tokens=512, window=256)
    rows = seed_paper.run(trace, levels=(0.0, 0.5), methods=("percentile",), fractions=(0.1,), ppl_tokens=512,
                          window=256)
    ppl = {r["level"]: r["ppl"] for r in rows}
    assert ppl[0.5] > ppl[0.0] > 1                     # sparsity costs perplexity
    assert rows[0]["expected_ppl"] == 18.658           # Gemma's reference is attached, not stories'
    assert (tmp_path / "analysis" / "report.html").exists()
    with open(tmp_path / "seed-paper-curve.csv") as f:
        assert len(list(csv.DictReader(f))) == len(rows)
