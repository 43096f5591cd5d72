"""Validation of user-given values, torch-free so the CLI can reject bad flags before loading torch."""

from __future__ import annotations

import math

from sparsesim.errors import InputError
from sparsesim.numbers import Number

METHODS = ("percentile", "global", "topk")
EPOCHS = Number(minimum=1, maximum=10_000, integer=True)   # --learned-epochs: each is a pass over the calibration span
SITES = ("intermediate", "gate")


def check_sparsity(value: float, what: str = "--sparsity") -> float:
    if not (isinstance(value, (int, float)) and math.isfinite(value) and 0.0 <= value < 1.0):
        raise InputError(f"{what} {value}: must be a number in [0, 1)")
    return float(value)


def check_choice(value: str, choices: tuple[str, ...], what: str) -> str:
    if value not in choices:
        raise InputError(f"{what} {value!r}: expected one of {', '.join(choices)}")
    return value
