"""Reading the numeric CSV files other engines write, with one-line errors that name the line.

Numbers are parsed by numpy in one pass; only when that fails is the file scanned line by line to
name the first bad line (a short row from a truncated write, a stray word, an empty field).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from sparsesim.errors import InputError
from sparsesim.inputs import TEXT_BYTES, read_bytes


def read_lines(path: Path) -> list[str]:
    """The file's lines without line ends (UTF-8; a NUL byte or bad encoding is a one-line error)."""
    data = read_bytes(path, limit=TEXT_BYTES)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise InputError(f"{path} line {line}: not UTF-8 text") from None
    if "\0" in text:
        raise InputError(f"{path} line {text[:text.index(chr(0))].count(chr(10)) + 1}: NUL byte (binary data?)")
    return text.splitlines()


def ends_with_newline(path: Path) -> bool:
    with open(path, "rb") as f:
        f.seek(0, 2)
        if f.tell() == 0:
            return True
        f.seek(-1, 2)
        return f.read(1) == b"\n"


def parse_numbers(path: Path, lines: list[str], numbers: list[int], names: tuple[str, ...],
                  integers: tuple[str, ...]) -> dict[str, np.ndarray]:
    """Columns ``names`` of comma-separated ``lines`` (file line numbers ``numbers``) as float64 arrays,
    or an InputError naming the first line with the wrong number of fields or a non-number; columns in
    ``integers`` must hold whole numbers."""
    width = len(names)
    if not lines:
        return {name: np.empty(0) for name in names}
    try:
        values = np.loadtxt(lines, delimiter=",", dtype=np.float64, ndmin=2)
        if values.shape[1] != width:
            raise ValueError
    except ValueError:
        _first_bad_line(path, lines, numbers, names)
        raise InputError(f"{path}: cannot parse the rows as {width} numbers each") from None
    if not np.isfinite(values).all():
        row = int(np.argwhere(~np.isfinite(values))[0][0])
        raise InputError(f"{path} line {numbers[row]}: not a finite number ({lines[row]!r})")
    out = {name: values[:, i] for i, name in enumerate(names)}
    for name in integers:
        column = out[name]
        bad = np.flatnonzero(column != np.round(column))
        if len(bad):
            raise InputError(f"{path} line {numbers[bad[0]]}: field '{name}' must be a whole number, "
                             f"got {column[bad[0]]:g}")
    return out


def _first_bad_line(path: Path, lines: list[str], numbers: list[int], names: tuple[str, ...]) -> None:
    for text, number in zip(lines, numbers):
        fields = text.split(",")
        if len(fields) != len(names):
            raise InputError(f"{path} line {number}: {len(fields)} fields, expected {len(names)} "
                             f"({','.join(names)})" + ("; file truncated?" if number == numbers[-1] else ""))
        for name, field in zip(names, fields):
            try:
                value = float(field)
            except ValueError:
                raise InputError(f"{path} line {number}: field '{name}' is not a number ({field.strip()!r})"
                                 + ("; file truncated?" if number == numbers[-1] else "")) from None
            if not math.isfinite(value):
                raise InputError(f"{path} line {number}: field '{name}' is not a finite number ({field.strip()!r})")
