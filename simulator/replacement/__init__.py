"""Replacement policies for the neuron cache: small plug-ins behind a written hook contract.

Hook contract (``docs/policies.md`` has the long form). A policy subclasses
:class:`ReplacementPolicy`, registers under a name with ``@REPLACEMENT.register("name")`` and
implements any of these hooks; the engine calls them and never changes to add a policy:

``setup(geometry)``                      once, before the replay (shapes, capacity, offline data)
``on_fill(layer, step, filled, prefetch)`` neurons inserted (demand fill or prefetch arrival)
``on_access(layer, step, used)``         neurons the FFN used at this layer step
``victims(layer, step, n, candidates)``  return exactly ``n`` neurons of ``candidates`` to evict
``global_victims(step, n, candidates)``  over all layers (global partition): units of total weight >= ``n``
``on_evict(layer, evicted)``             neurons that left the cache (evicted or expired)
``expire(layer, step)``                  neurons to drop voluntarily now (e.g. a token window)
``admit(layer, step, filled, prefetch, free)`` the subset of a prefetch worth inserting (bypass the rest)
``preload()``                            [L, n_bytes] packed rows of neurons resident before decoding

A neuron set of one layer is a Python int, bit i = neuron i (:mod:`sparsesim.simulator.neuronset`);
``global_victims`` gets one per layer and returns {layer: set}; ``n`` is a *weight*: a unit of layer
l weighs ``geometry.weight[l]`` (1 on every neuron trace; an expert's bytes over the common divisor of
all layers' expert bytes), and the policy returns, in its order, units whose weights sum to at least
``n`` — cutting its last class at ceil(remaining / weight) units. ``step`` is the global layer step
``token * n_layers + layer``, so it increases monotonically through the replay. Policies keep
their own state; they must not modify the cache.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from sparsesim.simulator import neuronset
from sparsesim.simulator.registry import Registry

REPLACEMENT: Registry["ReplacementPolicy"] = Registry("replacement policy")


@dataclass
class CacheGeometry:
    n_layers: int
    d_ff: tuple[int, ...]
    n_bytes: int
    n_tokens: int
    capacity: np.ndarray                  # [L] units per layer (per-layer) or [1] weight (global)
    partition: str
    need_max: np.ndarray | None = None    # [L] largest needed set of any step (headroom to keep free)
    masks: np.ndarray | None = None       # [T, L, n_bytes] the needed sets, for offline policies
    profile_masks: np.ndarray | None = None   # a separate profiling trace's masks, if given
    outside: np.ndarray | None = None     # [L, n_bytes] units resident outside the cache (a hot unit's)
    extra: dict = field(default_factory=dict)
    weight: tuple[int, ...] = ()          # [L] capacity weight of one unit of each layer (empty: all 1)

    def __post_init__(self) -> None:
        if not self.weight:
            self.weight = (1,) * self.n_layers

    @property
    def width(self) -> int:
        return self.n_bytes * 8

    @property
    def unit_weights(self) -> bool:
        """Every unit weighs 1 (every neuron trace): capacity counts units."""
        return all(w == 1 for w in self.weight)


class ReplacementPolicy:
    """Base class: hooks default to doing nothing; subclasses implement ``victims``."""

    name = "base"
    sees_future = False   # an offline policy that reads the replayed trace's future is a bound, not a design

    def setup(self, geometry: CacheGeometry) -> None:
        self.geometry = geometry

    def on_fill(self, layer: int, step: int, filled: int, prefetch: bool) -> None:
        pass

    def on_access(self, layer: int, step: int, used: int) -> None:
        pass

    def on_evict(self, layer: int, evicted: int) -> None:
        pass

    def expire(self, layer: int, step: int) -> int:
        return 0

    def admit(self, layer: int, step: int, filled: int, prefetch: bool, free: int) -> int:
        return filled

    def preload(self) -> np.ndarray | None:
        return None

    def victims(self, layer: int, step: int, n: int, candidates: int) -> int:
        raise NotImplementedError

    def global_victims(self, step: int, n: int, candidates: Sequence[int]) -> dict[int, int]:
        raise NotImplementedError(f"replacement policy {self.name!r} supports only the per-layer partition")


class _OneEach:
    """Weight 1 for every layer: a per-layer partition counts units."""

    def __getitem__(self, layer: int) -> int:
        return 1


ONE_EACH = _OneEach()


def take_weight(units: int, n: int, weight: int) -> tuple[int, int]:
    """The capacity rule of a victim search, in one place: of ``units`` (one layer's, each weighing
    ``weight``), all of them if they weigh less than ``n``, else the lowest-index ones that reach it —
    ceil(n / weight) units. Returns (taken, weight still wanted)."""
    size = units.bit_count()
    if size * weight < n:
        return units, n - size * weight
    return neuronset.first(units, -(-n // weight), size), 0


def _register_builtins() -> None:
    import importlib
    import pkgutil

    for info in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{info.name}")


_register_builtins()
