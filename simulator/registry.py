"""Name-keyed plug-in registries for predictors and replacement policies.

A policy is a small class registered under a name with a decorator; the engine creates it by
name with keyword parameters and never changes when a policy is added (ChampSim's rule)::

    @REPLACEMENT.register("lru")
    class LeastRecentlyUsed(KeyedReplacement): ...

Unknown names and unknown parameters are user errors (:class:`InputError`) that list what is known.
"""

from __future__ import annotations

import difflib
import inspect
from typing import Any, Callable, Generic, TypeVar

from sparsesim.errors import InputError
from sparsesim.numbers import INT64_MAX, SEED, Number

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str):
        self.kind = kind
        self._classes: dict[str, type] = {}

    def register(self, name: str) -> Callable[[type], type]:
        def add(cls: type) -> type:
            if name in self._classes:
                raise ValueError(f"{self.kind} {name!r} registered twice")
            cls.name = name
            self._classes[name] = cls
            return cls
        return add

    def names(self) -> list[str]:
        return sorted(self._classes)

    def get(self, name: str) -> type:
        if name not in self._classes:
            close = difflib.get_close_matches(name, self._classes, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise InputError(f"unknown {self.kind} {name!r}{hint}; known: {', '.join(self.names())}")
        return self._classes[name]

    def create(self, name: str, params: dict[str, Any] | None = None) -> T:
        cls = self.get(name)
        params = dict(params or {})
        accepted = parameters(cls)
        numbers = numeric_parameters(cls)
        for key in params:
            if key not in accepted:
                known = ", ".join(accepted) or "none"
                raise InputError(f"{self.kind} {name!r}: unknown parameter {key!r}; accepted: {known}")
            if key in numbers and params[key] is not None:
                params[key] = numbers[key].check(params[key], f"{self.kind} {name!r}: parameter {key!r}")
        try:
            return cls(**params)
        except (TypeError, ValueError) as e:
            raise InputError(f"{self.kind} {name!r}: {e}") from None

    def describe(self) -> list[tuple[str, str, dict[str, Any]]]:
        """(name, first docstring line, {parameter: default}) for each registered class."""
        out = []
        for name in self.names():
            cls = self._classes[name]
            doc = (inspect.getdoc(cls) or "").splitlines()
            out.append((name, doc[0] if doc else "", parameters(cls)))
        return out


def numeric_parameters(cls: type) -> dict[str, Number]:
    """The numeric keyword parameters of ``cls.__init__``, from their annotations (``k: int``,
    ``fn: float``, ``topk: int | None``), as :class:`Number` s: finite, whole where declared ``int``,
    a seed in numpy's range. Each policy checks its own meaningful range on top."""
    out = {}
    for p in list(inspect.signature(cls.__init__).parameters.values())[1:]:
        annotation = p.annotation if isinstance(p.annotation, str) else getattr(p.annotation, "__name__", str(p.annotation))
        kinds = {part.strip() for part in annotation.split("|")}
        if p.name == "seed":
            out[p.name] = SEED
        elif "float" in kinds:
            out[p.name] = Number()
        elif "int" in kinds:
            out[p.name] = Number(minimum=-INT64_MAX, integer=True)
    return out


def parameters(cls: type) -> dict[str, Any]:
    """Keyword parameters of ``cls.__init__`` with their defaults."""
    sig = inspect.signature(cls.__init__)
    return {p.name: (None if p.default is inspect.Parameter.empty else p.default)
            for p in list(sig.parameters.values())[1:]
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
