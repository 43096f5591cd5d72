"""Shared pieces of the end-to-end reproductions' time budgets (``docs/time-model.md``).

A time budget is a spreadsheet in code: every published row is decomposed into what each part of
the time model (kernels, memory management, read path, pipeline, heterogeneous units) must
contribute, computed from the parts' modules with parameters that are either stated by the paper
(:class:`Param` with its source) or taken from the hardware profile (whose every number is cited or
marked as an estimate). Nothing is fitted per row; where one number is calibrated on one row the
row says so (``calibrated``), and the other rows are predictions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence


@dataclass(frozen=True)
class Param:
    """A number taken from a paper, with where it says so."""

    value: Any
    source: str


def band(published: float, tolerance: float) -> tuple[float, float]:
    """The interval of simulated values within ``tolerance`` (relative error) of ``published``."""
    return published * (1 - tolerance), published * (1 + tolerance)


def relative_error(simulated: float, published: float) -> float:
    return simulated / published - 1 if published else float("nan")


def params_markdown(params: dict[str, Param]) -> str:
    """The parameter table: name, value, source."""
    lines = ["| parameter | value | source |", "|---|---|---|"]
    lines += [f"| {name} | {p.value} | {p.source} |" for name, p in params.items()]
    return "\n".join(lines)


def rows_markdown(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    """A markdown table of ``rows``; columns named ``*error*`` as signed percentages, other floats
    to 4 significant digits, NaN as a dash."""
    def cell(column: str, value: Any) -> str:
        if not isinstance(value, float):
            return str(value)
        if value != value:
            return "–"
        return f"{value:+.1%}" if "error" in column else f"{value:.4g}"

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(c, row.get(c, "")) for c in columns) + " |" for row in rows]
    return "\n".join(lines)
