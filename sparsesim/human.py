"""Numbers as people read them: fixed-point, a few significant digits, the unit written out.

The reports, the demo and the tracer's and experiments' prints use these (never ``%g``, so never
scientific notation): times per token in ms, DRAM in GB (10^9 B), ratios as ``1.57x``, shares as
percentages (``sparsesim simulate``'s summary keeps its own two-decimal ms and MB,
``simulator/metrics.py``). A per-token value says "/token"; a total says nothing, so
the two are never mixed up in one line.
"""

from __future__ import annotations

import math

SIGNIFICANT = 3


def number(value: float, significant: int = SIGNIFICANT) -> str:
    """``value`` in fixed notation with ``significant`` digits (at least the units digit): 0.0123, 4.56, 789, 12345."""
    if value is None or not math.isfinite(value):
        return "n/a"
    if value == 0:
        return "0"
    decimals = max(significant - 1 - math.floor(math.log10(abs(value))), 0)
    text = f"{value:.{decimals}f}"
    return "0" if float(text) == 0 else text


def ms(seconds: float) -> str:
    return f"{number(seconds * 1e3)} ms"


def gb(nbytes: float) -> str:
    return f"{number(nbytes / 1e9)} GB"


def ratio(value: float) -> str:
    """A speed-up or any other ratio: ``1.57x`` (two decimals)."""
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.2f}x"


def percent(share: float, decimals: int = 0) -> str:
    """A share in [0, 1] as a percentage: ``25 %``."""
    return "n/a" if share is None or not math.isfinite(share) else f"{100 * share:.{decimals}f} %"


def budget(value: float) -> str:
    """A ``dram_budget``: a share of the FFN (<= 1) or total bytes of DRAM for weights (> 1)."""
    if value > 1:
        return f"{gb(value)} of DRAM"
    return f"{percent(value, 1 if round(value * 100, 6) % 1 else 0)} of the FFN"
