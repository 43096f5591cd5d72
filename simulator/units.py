"""Physical quantities written with units: ``"8 KiB"``, ``"1.25 GB/s"``, ``"50 us"``, ``"5 pJ/bit"``.

Hardware numbers are quoted in whatever unit their source uses, so profiles keep them that way and
this module converts to base units (B, B/s, s, FLOP/s, J/B, J/FLOP). Prefixes are exact: ``KB`` is
10^3 and ``KiB`` 2^10, ``GB/s`` 10^9 B/s and ``GiB/s`` 2^30 B/s. Numbers are parsed as decimals so
that ``"6.1 GB/s"`` becomes exactly 6.1e9 (a float product would not), which keeps profile hashes
independent of how a value was written.

Errors are :class:`UnitError` (a ``ValueError``) without any location; the profile loader adds the
file and field.
"""

from __future__ import annotations

import decimal
import difflib
import math
import re
from dataclasses import dataclass
from decimal import Decimal
from typing import Mapping

__all__ = [
    "Dimension", "UnitError", "BYTES", "BANDWIDTH", "TIME", "FLOPS", "ENERGY_PER_BYTE",
    "ENERGY_PER_FLOP", "COUNT", "FRACTION", "parse_quantity", "format_quantity",
]


class UnitError(ValueError):
    """A value that is not a number in an accepted unit for its dimension."""


@dataclass(frozen=True, eq=False)
class Dimension:
    name: str                         # "bandwidth", as used in error messages
    example: str                      # a well-formed value, for error messages
    units: Mapping[str, Decimal]      # accepted unit -> size of that unit in base units
    display: tuple[str, ...]          # units for printing, smallest first (empty: a plain number)

    def parse(self, raw: object) -> float:
        """``raw`` in base units (what :class:`sparsesim.numbers.Number` calls for text with a unit)."""
        return parse_quantity(raw, self)


_SI = {"": 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15}
_SUB = {"": Decimal(1), "m": Decimal("1e-3"), "u": Decimal("1e-6"), "n": Decimal("1e-9"),
        "p": Decimal("1e-12"), "f": Decimal("1e-15")}
_BYTE_UNITS = {
    "B": Decimal(1),
    "kB": Decimal(10**3), "KB": Decimal(10**3), "MB": Decimal(10**6), "GB": Decimal(10**9),
    "TB": Decimal(10**12),
    "KiB": Decimal(2**10), "MiB": Decimal(2**20), "GiB": Decimal(2**30), "TiB": Decimal(2**40),
}

BYTES = Dimension("size in bytes", "'8 KiB'", _BYTE_UNITS, ("B", "KiB", "MiB", "GiB", "TiB"))
BANDWIDTH = Dimension(
    "bandwidth", "'1.25 GB/s'", {f"{u}/s": m for u, m in _BYTE_UNITS.items()},
    ("B/s", "kB/s", "MB/s", "GB/s", "TB/s"))
TIME = Dimension("time", "'50 us'", {f"{p}s": m for p, m in _SUB.items() if p != "f"}, ("ns", "us", "ms", "s"))
FLOPS = Dimension(
    "FLOP rate", "'780 GFLOP/s'", {f"{p}FLOP/s": Decimal(m) for p, m in _SI.items()},
    ("FLOP/s", "kFLOP/s", "MFLOP/s", "GFLOP/s", "TFLOP/s", "PFLOP/s"))
# pJ/bit is how DRAM and link energies are usually quoted; 1 byte = 8 bits.
ENERGY_PER_BYTE = Dimension(
    "energy per byte", "'5 pJ/bit'",
    {**{f"{p}J/B": m for p, m in _SUB.items()}, **{f"{p}J/bit": 8 * m for p, m in _SUB.items()}},
    ("fJ/B", "pJ/B", "nJ/B", "uJ/B", "mJ/B", "J/B"))
ENERGY_PER_FLOP = Dimension(
    "energy per FLOP", "'10 pJ/FLOP'", {f"{p}J/FLOP": m for p, m in _SUB.items()},
    ("fJ/FLOP", "pJ/FLOP", "nJ/FLOP", "uJ/FLOP", "mJ/FLOP", "J/FLOP"))
COUNT = Dimension("count", "32", {}, ())
# A ratio such as an efficiency (achieved / roofline): a plain number, no unit.
FRACTION = Dimension("fraction", "0.5", {}, ())

_NUMBER_WITH_UNIT = re.compile(r"([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*(.*)")
# Integers wider than this overflow a float (and Decimal() refuses ints of more than 4300 digits).
_FLOAT_MAX_BITS = 1024
# The micro sign and the Greek mu both mean micro; the tables spell it "u".
_MICRO = str.maketrans({"\u00b5": "u", "\u03bc": "u"})


def _unit_size(unit: str, dim: Dimension) -> Decimal:
    unit = unit.translate(_MICRO)
    if unit in dim.units:
        return dim.units[unit]
    if not dim.units:
        raise UnitError(f"a {dim.name} takes no unit, got '{unit}'")
    close = difflib.get_close_matches(unit, list(dim.units), n=1)
    hint = f"; did you mean '{close[0]}'?" if close else f" (use one of {', '.join(dim.units)})"
    raise UnitError(f"'{unit}' is not a unit of {dim.name}{hint}")


def parse_quantity(raw: object, dim: Dimension) -> float:
    """``raw`` (a number in base units, or a string "<number> <unit>") in base units, finite.

    A number without a unit is in base units. Booleans, NaN and infinities are rejected.
    """
    if isinstance(raw, bool) or not isinstance(raw, (int, float, str)):
        raise UnitError(f"expected a {dim.name} such as {dim.example}, got {type(raw).__name__}")
    if isinstance(raw, str):
        match = _NUMBER_WITH_UNIT.fullmatch(raw.strip())
        if match is None:
            raise UnitError(f"expected a {dim.name} such as {dim.example}, got '{raw}'")
        number, unit = Decimal(match.group(1)), match.group(2).strip()
        scale = _unit_size(unit, dim) if unit else Decimal(1)
    else:
        if isinstance(raw, float) and not math.isfinite(raw):
            raise UnitError(f"must be a finite number, got {raw}")
        if isinstance(raw, int) and raw.bit_length() > _FLOAT_MAX_BITS:
            raise UnitError(f"must be a finite number, got an integer of {raw.bit_length()} bits")
        number, scale = Decimal(raw), Decimal(1)
    # Overflow gives Infinity instead of raising, so that a huge exponent is reported as "not finite".
    with decimal.localcontext() as ctx:
        ctx.traps[decimal.Overflow] = False
        value = float(number * scale)
    if not math.isfinite(value):
        raise UnitError(f"must be a finite number, got {raw}")
    return value


def format_quantity(value: float, dim: Dimension) -> str:
    """``value`` (base units) in the largest display unit that keeps it >= 1, 6 significant digits."""
    if not dim.display:
        return f"{value:g}"
    chosen = dim.display[0]
    for unit in dim.display:
        if abs(value) >= dim.units[unit]:
            chosen = unit
    number = float(Decimal(repr(value)) / dim.units[chosen])
    return f"{number:.6g} {chosen}"

