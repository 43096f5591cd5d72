"""The one validated numeric type for settings: :class:`Number`.

Every number a user sets — a scenario field (``--set lookahead=2``), a policy parameter
(``window:k=4``), a spec grid or sample range, a hardware-profile field, a command-line number
(``--seconds``, ``--tokens``, ``--seed``) — is declared as a :class:`Number` and checked by
:meth:`Number.check`, which returns the value or raises one :class:`~sparsesim.errors.InputError`
line naming the field. What it refuses, everywhere alike: booleans and text that is not a number,
NaN and infinities, a fraction where a whole number is meant (``lookahead=1.5``), and values
outside the declared range (negatives where they mean nothing, absurd sizes).

Text with a unit (``"8 KiB"``, ``"2 GB/s"``) is accepted where the number declares a ``dim`` (a
:class:`sparsesim.simulator.units.Dimension`; anything with ``parse(raw) -> float`` will do).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from sparsesim.errors import InputError

INT64_MAX = 2 ** 63 - 1       # numpy's and Arrow's integers; Python's are unbounded, theirs are not


@dataclass(frozen=True)
class Number:
    minimum: float | None = None
    maximum: float | None = None
    integer: bool = False
    inclusive: bool = True          # the minimum itself allowed (">=") or not (">")
    dim: Any = None                 # a units.Dimension: "8 KiB"-style text converted to base units

    def check(self, raw: Any, field: str) -> int | float:
        """``raw`` validated (an int for an integer field; text parsed); else InputError ``"{field}: ..."``."""
        value = self._number(raw, field)
        if not math.isfinite(value):
            raise InputError(f"{field}: must be a finite number, got {_show(raw)}")
        low, high = self.minimum, INT64_MAX if self.integer and self.maximum is None else self.maximum
        # a count says so ("must be an integer >= 0"); a quantity with a unit states its bound ("must be > 0")
        kind = "an integer " if self.integer and self.dim is None else ""
        if self.integer and value != int(value):
            raise InputError(f"{field}: must be a whole number{'' if low is None else f' ({kind}>= {low:g})'}, "
                             f"got {_show(raw)}")
        if low is not None and (value < low or (value == low and not self.inclusive)):
            raise InputError(f"{field}: must be {kind}{'>=' if self.inclusive else '>'} {low:g}, got {_show(raw)}")
        if high is not None and value > high:
            raise InputError(f"{field}: must be {kind}<= {_bound(high)}, got {_show(raw)}")
        return int(value) if self.integer else value

    def _number(self, raw: Any, field: str) -> int | float:
        if isinstance(raw, bool) or not isinstance(raw, (int, float, str)):
            raise InputError(f"{field}: expected a number, got {_show(raw)}")
        if isinstance(raw, int) and raw.bit_length() > 1024:   # beyond any float; str() may refuse it
            raise InputError(f"{field}: must be a finite number, got an integer of {raw.bit_length()} bits")
        if self.dim is not None and isinstance(raw, str):
            try:
                return self.dim.parse(raw)
            except ValueError as e:
                raise InputError(f"{field}: {e}") from None
        if isinstance(raw, str):
            parsed = parse_number(raw.strip())
            if parsed is None:
                raise InputError(f"{field}: expected a number, got {_show(raw)}")
            return parsed
        return raw


SEED = Number(minimum=0, maximum=INT64_MAX, integer=True)     # numpy's generators take 0 <= seed < 2**63
PROBABILITY = Number(minimum=0.0, maximum=1.0)
COUNT = Number(minimum=1, integer=True)


def parse_number(text: str) -> int | float | None:
    """``"4"`` -> 4, ``"0.5"`` / ``"nan"`` -> float, anything else -> None (no range check: see Number)."""
    for cast in (int, float):
        try:
            return cast(text)
        except (ValueError, OverflowError):
            pass
    return None


def _bound(value: float) -> str:
    return f"{int(value):,}" if float(value).is_integer() and abs(value) < 1e18 else f"{value:g}"


def _show(value: Any) -> str:
    """A short rendering of a user value for an error message (text as written, not quoted)."""
    if isinstance(value, bool) or value is None:
        return {True: "true", False: "false", None: "null"}[value]
    if isinstance(value, int) and value.bit_length() > 64:
        return f"an integer of {value.bit_length()} bits"
    if isinstance(value, (list, tuple, dict)):
        return f"a {type(value).__name__}"
    text = " ".join(str(value).split()) or "an empty string"
    return text if len(text) <= 60 else text[:57] + "..."
