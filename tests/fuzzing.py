"""Hypothesis strategies and mutations shared by the fuzz tests (not a test module)."""

from __future__ import annotations

from typing import Any, Iterator, Sequence

from hypothesis import strategies as st

# Values a foreign tool or a hand edit puts in a YAML or JSON file: wrong types, huge, NaN, empty.
ODD_VALUES = ["8 KiB", "1.25 GB/s", "-1 GB/s", "50 us", "5 pJ/bit", "1e999 B", "nan", "", " ", "\0", "../" * 40,
              "x" * 300, "oracle", "lru", "apple-m1-max", "3 GB", "32", -(2 ** 2000), 2 ** 64, 1e308, -0.0]


def scalars(extra: Sequence[Any] = ()) -> st.SearchStrategy:
    return (st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12)
            | st.sampled_from([*ODD_VALUES, *extra]))


def yamlish(keys: Sequence[Any], extra: Sequence[Any] = (), max_leaves: int = 25) -> st.SearchStrategy:
    """Nested lists and mappings of scalars, mapping keys drawn mostly from ``keys``."""
    return st.recursive(
        scalars(extra),
        lambda inner: st.lists(inner, max_size=4)
        | st.dictionaries(st.sampled_from(list(keys)) | st.text(max_size=6) | st.integers(), inner, max_size=5),
        max_leaves=max_leaves)


def paths(node, prefix=()) -> Iterator[tuple]:
    """Every position in a nested document, as the keys/indices leading to it."""
    yield prefix
    children = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, child in children:
        yield from paths(child, (*prefix, key))


def mutate(data: Any, draw, values: st.SearchStrategy) -> Any:
    """Delete one position of ``data`` or replace it with a drawn value (in place; returns ``data``)."""
    positions = list(paths(data))[1:]
    if not positions:
        return draw.draw(values)
    target = draw.draw(st.sampled_from(positions))
    parent = data
    for key in target[:-1]:
        parent = parent[key]
    if draw.draw(st.booleans()) and isinstance(parent, dict):
        del parent[target[-1]]
    else:
        parent[target[-1]] = draw.draw(values)
    return data


def damage_bytes(raw: bytes, draw) -> bytes:
    """Truncate, flip bits or splice garbage into a file's bytes."""
    kind = draw.draw(st.sampled_from(["truncate", "flip", "splice"]))
    if kind == "truncate" or not raw:
        return raw[:draw.draw(st.integers(0, max(len(raw) - 1, 0)))]
    data = bytearray(raw)
    if kind == "flip":
        for pos in draw.draw(st.lists(st.integers(0, len(raw) - 1), min_size=1, max_size=8)):
            data[pos] ^= 1 << draw.draw(st.integers(0, 7))
        return bytes(data)
    pos = draw.draw(st.integers(0, len(raw)))
    return bytes(data[:pos]) + draw.draw(st.binary(max_size=16)) + bytes(data[pos:])
