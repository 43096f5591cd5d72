"""Every reported metric is registered once and defined in docs/metrics.md (Vidur's rule)."""

from __future__ import annotations

import re
from pathlib import Path

from sparsesim.simulator.accounting import COUNTERS
from sparsesim.simulator.metrics import METRICS

DOC = (Path(__file__).resolve().parents[1] / "docs" / "metrics.md").read_text(encoding="utf-8")


def _defined(name: str) -> bool:
    # A definition is a table row or a heading line naming the metric in backticks.
    return re.search(rf"^\|[^\n]*`{re.escape(name)}`", DOC, flags=re.MULTILINE) is not None


def test_every_registered_metric_is_defined_in_the_docs():
    missing = [name for name in METRICS if not _defined(name)]
    assert not missing, f"metrics registered but not defined in docs/metrics.md: {missing}"


def test_every_per_layer_counter_is_named_in_the_docs():
    missing = [name for name in COUNTERS if f"`{name}`" not in DOC]
    assert not missing, f"per-layer counters not named in docs/metrics.md: {missing}"


def test_a_metric_documented_but_not_registered_is_caught():
    assert not _defined("no_such_metric_anywhere")
