"""The integer-set primitives every victim search and read relies on, against plain Python over index
lists (no bit tricks): ``first`` (the lowest-index cut), ``run_lengths`` (request coalescing) and
``take_weight`` (the capacity rule)."""

from __future__ import annotations

import itertools
import random

import pytest

from sparsesim.simulator import neuronset
from sparsesim.simulator.replacement import take_weight


def _sets(seed: int, count: int = 400):
    """Random sets over widths around word and byte edges, sparse to full, scattered and in runs."""
    rng = random.Random(seed)
    for _ in range(count):
        width = rng.choice([1, 7, 8, 9, 63, 64, 65, 127, 1000, 11008])
        kind = rng.choice(["scatter", "runs", "full", "empty"])
        if kind == "scatter":
            p = rng.choice([0.01, 0.1, 0.5, 0.9])
            members = [i for i in range(width) if rng.random() < p]
        elif kind == "runs":
            members, i = [], 0
            while i < width:
                i += rng.randint(1, 20)
                members += range(i, min(i + rng.randint(1, 40), width))
                i += 40
        elif kind == "full":
            members = list(range(width))
        else:
            members = []
        yield members


def _as_int(members) -> int:
    return sum(1 << i for i in members)


@pytest.mark.parametrize("seed", [1, 2])
def test_first_is_the_lowest_members(seed):
    rng = random.Random(seed)
    for members in _sets(seed):
        s = _as_int(members)
        for n in {-1, 0, 1, len(members) // 2, len(members) - 1, len(members), len(members) + 3,
                  rng.randint(0, len(members) + 1)}:
            expected = _as_int(members[:max(n, 0)])
            assert neuronset.first(s, n) == expected
            assert neuronset.first(s, n, len(members)) == expected


@pytest.mark.parametrize("seed", [3, 4])
def test_run_lengths_count_the_runs(seed):
    for members in _sets(seed):
        expected: dict[int, int] = {}
        for _, run in itertools.groupby(enumerate(members), key=lambda p: p[1] - p[0]):
            length = len(list(run))
            expected[length] = expected.get(length, 0) + 1
        s = _as_int(members)
        assert neuronset.run_lengths(s) == expected
        assert neuronset.run_lengths(s, len(members)) == expected


def test_take_weight_takes_all_or_the_fewest_lowest_that_reach_n():
    members = [2, 3, 5, 8, 13, 21]
    s = _as_int(members)
    assert take_weight(s, 13, 2) == (s, 1)                      # 6 units of weight 2 = 12 < 13: all
    assert take_weight(s, 12, 2) == (s, 0)                      # exactly reached
    assert take_weight(s, 5, 2) == (_as_int(members[:3]), 0)    # ceil(5 / 2) = 3 lowest
    assert take_weight(0, 4, 3) == (0, 4)
