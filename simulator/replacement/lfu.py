"""LFU on classes of units with equal keys (Bélády, whose key is a next use, is in ``belady.py``).

A class holds the units of one layer that share a key; a victim search walks the classes in key
order and takes whole classes, cutting only the last one by unit index — integer set operations
per class, never per unit, and no sort over the cache (``docs/policies.md`` gives the key; ties go
to the lower layer, then the lower index). :class:`ClassOrder` keeps the classes of one partition:
per *major* key a bucket of classes sorted by (minor key, layer), the majors in a sorted list.
LFU's key is (uses, step of the last fill or use): a use moves a unit to the newest class of the
next bucket.
"""

from __future__ import annotations

import bisect
from typing import Callable, Sequence

import numpy as np

from sparsesim.simulator import neuronset
from sparsesim.simulator.replacement import ONE_EACH, REPLACEMENT, take_weight
from sparsesim.simulator.replacement.keyed import ChosenVictims


class ClassOrder:
    """Classes ``[major, minor, layer, units]`` of one partition, walked in key order: majors
    ascending; within a major, (minor, layer) ascending. The usual insertion — the newest key — is
    an append."""

    def __init__(self) -> None:
        self.majors: list = []
        self.buckets: dict = {}
        self.index: dict[tuple, list] = {}

    def add(self, major, minor, layer: int, units: int) -> None:
        key = (major, minor, layer)
        cls = self.index.get(key)
        if cls is not None:
            cls[3] |= units
            return
        cls = self.index[key] = [major, minor, layer, units]
        bucket = self.buckets.get(major)
        if bucket is None:
            self.buckets[major] = [cls]
            bisect.insort(self.majors, major)
        elif (bucket[-1][1], bucket[-1][2]) <= (minor, layer):
            bucket.append(cls)
        else:
            bisect.insort(bucket, cls, key=lambda c: (c[1], c[2]))

    def remove(self, key: tuple, units: int) -> None:
        """Take ``units`` out of the class ``key`` (if it exists)."""
        cls = self.index.get(key)
        if cls is not None:
            self.cut(cls, cls[3] & units)

    def cut(self, cls: list, units: int) -> None:
        """Take ``units`` (members of ``cls``) out of it; an emptied class leaves the index at once
        and its bucket when the bucket is next walked."""
        cls[3] ^= units
        if not cls[3]:
            del self.index[(cls[0], cls[1], cls[2])]

    def select(self, n: int, candidates: Sequence[int] | dict[int, int], weight: Sequence[int],
               extend: Callable[[], bool]) -> dict[int, int]:
        """Remove and return the smallest-keyed units among ``candidates`` (a set per layer; {layer: set}
        for a per-layer order) whose
        weights (``weight[layer]`` per unit) sum to at least ``n``. ``extend``: called when the
        classes run out first; it files units of larger keys than any filed and returns whether it
        filed any (LFU files only the low use counts until it needs more)."""
        out: dict[int, int] = {}
        n = self._walk(n, candidates, weight, out)
        while n > 0 and extend():
            n = self._walk(n, candidates, weight, out)
        return out

    def _walk(self, n: int, candidates: Sequence[int], weight: Sequence[int], out: dict[int, int]) -> int:
        """One walk in key order, taking into ``out``; returns the weight still wanted."""
        emptied = []
        index = self.index
        for major in self.majors:
            bucket = self.buckets[major]
            dead = 0
            for cls in bucket:
                units = cls[3]
                if not units:
                    dead += 1
                    continue
                layer = cls[2]
                take = units & candidates[layer]
                if not take:
                    continue
                take, n = take_weight(take, n, weight[layer])
                out[layer] = out.get(layer, 0) | take
                cls[3] = units ^ take          # self.cut, inlined: the walk is the policy's hot loop
                if not cls[3]:
                    del index[(cls[0], cls[1], layer)]
                    dead += 1
                if n == 0:
                    break
            if dead == len(bucket):
                emptied.append(major)
            elif dead or not bucket[-1][3] or not bucket[0][3]:
                live = [c for c in bucket if c[3]]   # classes past an early stop may be dead too
                if live:
                    self.buckets[major] = live
                else:
                    emptied.append(major)
            if n == 0:
                break
        for major in emptied:   # a walk visits the buckets where classes die: keep them clean
            del self.buckets[major]
            self.majors.remove(major)
        return n


@REPLACEMENT.register("lfu")
class LeastFrequentlyUsed(ChosenVictims):
    """Least frequently used since insertion; ties go to the least recently used.

    Only units used fewer than ``limit`` times are filed in classes: the victims come from the low
    use counts, and a use of a unit above the limit then costs no class operation. When a victim
    search runs out of filed units the limit of that partition doubles and the resident units it
    now covers are filed from their keys (``_extend``), so the victims are exactly those of a full
    class order.
    """

    def setup(self, geometry):
        super().setup(geometry)
        self.global_order = geometry.partition == "global"
        self.orders = [ClassOrder() for _ in range(1 if self.global_order else geometry.n_layers)]   # per partition
        # Each unit's key (uses << 40 | stamp + 1; a preload is stamped -1) in one array, so a use
        # finds the classes it leaves with one gather.
        self.key = np.zeros((geometry.n_layers, geometry.width), dtype=np.int64)
        self.resident = [0] * geometry.n_layers
        self.limit = [2] * len(self.orders)     # per partition: units used fewer times are filed

    def order(self, layer: int) -> ClassOrder:
        return self.orders[0] if self.global_order else self.orders[layer]

    def victims(self, layer, step, n, candidates):
        self._chosen = self.orders[layer].select(n, {layer: candidates}, ONE_EACH,   # per layer: n units
                                                 lambda: self._extend(layer))
        return self._chosen.get(layer, 0)

    def global_victims(self, step, n, candidates):
        self._chosen = self.orders[0].select(n, candidates, self.geometry.weight, lambda: self._extend(0))
        return dict(self._chosen)

    def _indices(self, units: int) -> np.ndarray:
        return np.flatnonzero(neuronset.to_bool(units, self.geometry.width))

    def _partition(self, layer: int) -> int:
        return 0 if self.global_order else layer

    def on_fill(self, layer, step, filled, prefetch):
        if self.bypass:
            self._track_fill(layer, filled, prefetch, step)
        self.key[layer][self._indices(filled)] = step + 1
        self.resident[layer] |= filled
        self.order(layer).add(0, step, layer, filled)

    def on_access(self, layer, step, used):
        if self.bypass:
            self._track_use(layer, used, step)
        idx = self._indices(used)
        keys = self.key[layer]
        old = keys[idx]
        keys[idx] = ((old >> 40) + 1 << 40) | (step + 1)
        limit = self.limit[self._partition(layer)]
        filed = old[old < limit << 40]
        if not filed.size:
            return
        order = self.order(layer)
        index = order.index
        # Each filed used unit leaves its class (uses, stamp) for (uses + 1, step): one pass per class.
        # The keys come sorted, so the classes of one use count are consecutive and join one new class.
        filed.sort()
        distinct = filed[np.concatenate(([True], filed[1:] != filed[:-1]))]
        current, moving = -1, 0
        for u, stamp in zip((distinct >> 40).tolist(), ((distinct & _STAMP) - 1).tolist()):
            key = (u, stamp, layer)
            cls = index.get(key)
            if cls is None:
                continue
            units = cls[3]
            take = units & used
            rest = units ^ take
            cls[3] = rest
            if not rest:
                del index[key]
            if u != current:
                if moving and current + 1 < limit:
                    order.add(current + 1, step, layer, moving)
                current, moving = u, take
            else:
                moving |= take
        if moving and current + 1 < limit:
            order.add(current + 1, step, layer, moving)

    def on_evict(self, layer, evicted):
        self.resident[layer] ^= evicted        # evicted units are resident
        super().on_evict(layer, evicted)

    def _extend(self, partition: int) -> bool:
        """File the resident units of ``partition`` whose use count reaches the next limit (doubling
        it until some are found); False when every resident unit is filed already."""
        layers = range(self.geometry.n_layers) if self.global_order else (partition,)
        resident = {l: self._indices(self.resident[l]) for l in layers}
        keys = {l: self.key[l][index] for l, index in resident.items()}
        top = max((int(k.max()) >> 40 for k in keys.values() if k.size), default=-1)
        low = self.limit[partition]
        if top < low:
            return False
        high = low
        order = self.orders[partition]
        found = False
        while not found:
            high = min(2 * high, top + 1)
            for l, k in keys.items():
                sel = (k >= low << 40) & (k < high << 40)
                if not sel.any():
                    continue
                found = True
                index = resident[l][sel]
                group = k[sel]
                for key in np.unique(group).tolist():
                    bits = np.zeros(self.geometry.width, dtype=bool)
                    bits[index[group == key]] = True
                    order.add(key >> 40, (key & _STAMP) - 1, l, neuronset.from_bool(bits))
        self.limit[partition] = high
        return True

    def _forget(self, layer, units):
        order = self.order(layer)
        limit = self.limit[self._partition(layer)]
        for key in np.unique(self.key[layer][self._indices(units)]).tolist():
            if key >> 40 < limit:
                order.remove((key >> 40, (key & _STAMP) - 1, layer), units)


_STAMP = (1 << 40) - 1   # the stamp bits of an LFU key
