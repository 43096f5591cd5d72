"""A fixed-seed slice of the ``make fuzz`` campaign (benchmarks/fuzz.py) in ``make test``.

About 250 hostile inputs of every kind (damaged traces, footer metadata, profiles, specs, command
lines, special files) through the real command line: no traceback, no hang, no exit 0 on bad
input, no output left under its final name. The full campaign (12,000 inputs) is ``make fuzz``.
"""

from __future__ import annotations

from benchmarks.fuzz import FULL, render, run_campaign

SLICE = {kind: max(8, n // 50) for kind, n in FULL.items()}


def test_a_fixed_seed_slice_of_the_fuzz_campaign_finds_nothing():
    result = run_campaign(SLICE, seed=0, workers=1, progress=False)
    assert result["inputs"] >= 200, result["per_kind"]
    assert result["findings"] == [], render(result)
    refused = {k.split("/")[0] for k in result["outcomes"] if k.endswith("/refused")}
    assert refused == set(SLICE), result["outcomes"]            # every kind reached the refusal paths
