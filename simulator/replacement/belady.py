"""Bélády's MIN on a next-use table: the offline bound every online policy is measured against.

The key of a resident unit is its next use, the first later token whose FFN of the unit's layer
needs it; a unit never used again is farthest of all. The victims are the units of the farthest
next use; within one token the later layer's use comes later, so it goes first; within one layer
and token the lowest index goes first (``docs/policies.md``). The table files each unit under
(next-use token, layer) — integer sets, found by scanning the future masks as integers — so a
victim search walks tokens from the farthest down and takes whole sets, cutting only the last.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from sparsesim.simulator.replacement import ONE_EACH, REPLACEMENT, CacheGeometry, take_weight
from sparsesim.simulator.replacement.keyed import ChosenVictims


@REPLACEMENT.register("belady")
class Belady(ChosenVictims):
    """Bélády's MIN: evict the unit whose next use is farthest in the future (offline optimum).

    It reads the replayed trace's future, so it is a bound, not a design. The next use of a unit of
    layer l is the first later step of l whose FFN has not started and that needs it; the policy
    learns which FFNs have started from ``on_access``. It starts cold, as every policy does.
    """

    sees_future = True

    def __init__(self):
        # No bypass parameter: MIN is the bound on hits without bypass; a bypassing MIN would
        # decide by the incoming unit's next use, not by the online track record.
        super().__init__()

    def setup(self, geometry: CacheGeometry) -> None:
        super().setup(geometry)
        masks = np.asarray(geometry.masks)          # the whole future: materialised even when streamed
        T, L, nb = masks.shape
        data = np.ascontiguousarray(masks).tobytes()
        self.rows = [[int.from_bytes(data[(t * L + l) * nb:(t * L + l + 1) * nb], "little") for t in range(T)]
                     for l in range(L)]                          # rows[layer][token]
        self.alive_from = []                                     # alive_from[layer][t]: used at t or later
        for l in range(L):
            acc, alive = 0, [0] * (T + 1)
            for t in range(T - 1, -1, -1):
                acc |= self.rows[l][t]
                alive[t] = acc
            self.alive_from.append(alive)
        self.T, self.L = T, L
        self.done = [-1] * L                   # per layer: the last token whose FFN has started
        # The table: filed[t][layer] = resident units of layer next used at token t (t = T: never);
        # layers_at[t] = bit l set where filed[t][l] is not empty.
        self.filed = [[0] * L for _ in range(T + 1)]
        self.layers_at = [0] * (T + 1)
        self.global_pool = geometry.partition == "global"
        self.top = [-1] * (1 if self.global_pool else L)   # per partition: no unit filed beyond this token

    def _file(self, layer: int, units: int) -> None:
        """File ``units`` of ``layer`` by next use: the first token after ``done[layer]`` needing it."""
        T, filed, layers_at, bit = self.T, self.filed, self.layers_at, 1 << layer
        t = self.done[layer] + 1
        later = units & self.alive_from[layer][min(t, T)]
        never = units ^ later
        farthest = -1
        if never:
            filed[T][layer] |= never
            layers_at[T] |= bit
            farthest = T
        rows = self.rows[layer]
        while later:
            found = later & rows[t]
            if found:
                filed[t][layer] |= found
                layers_at[t] |= bit
                later ^= found
            t += 1
        if not never:
            farthest = t - 1                 # the last token the scan found a unit at
        p = 0 if self.global_pool else layer
        if farthest > self.top[p]:
            self.top[p] = farthest

    def on_fill(self, layer, step, filled, prefetch):
        self._file(layer, filled)

    def on_access(self, layer, step, used):
        token = step // self.L
        row = self.filed[token]
        due, row[layer] = row[layer], 0     # the units whose next use was this FFN: it has started
        self.layers_at[token] &= ~(1 << layer)
        self.done[layer] = token
        # Filed again from the next token on: the used units, and those the FFN needed but did not
        # compute (false_negatives=drop computes the predicted set), still resident.
        self._file(layer, used | due)

    def _forget(self, layer, units):
        keep, bit = ~units, 1 << layer
        for t, row in enumerate(self.filed):
            if row[layer]:
                row[layer] &= keep
                if not row[layer]:
                    self.layers_at[t] ^= bit

    def victims(self, layer, step, n, candidates):
        chosen = self._select(layer, 1 << layer, n, {layer: candidates}, ONE_EACH)
        self._chosen = chosen
        return chosen.get(layer, 0)

    def global_victims(self, step, n, candidates):
        self._chosen = self._select(0, (1 << self.L) - 1, n, candidates, self.geometry.weight)
        return dict(self._chosen)

    def _select(self, p: int, layers: int, n: int, candidates, weight: Sequence[int]) -> dict[int, int]:
        """Take units of partition ``p`` (``layers``: its layers as bits) from the farthest next use
        down until their weights reach ``n``: they leave the table as they are taken."""
        filed, layers_at = self.filed, self.layers_at
        out: dict[int, int] = {}
        t, top = self.top[p], -1             # top: the farthest token left holding a unit of the partition
        while t >= 0:
            here = layers_at[t] & layers
            if here:
                row = filed[t]
                while here:                  # the later layer first
                    layer = here.bit_length() - 1
                    bit = 1 << layer
                    here ^= bit
                    units = row[layer]
                    take = units & candidates[layer]
                    if take:
                        take, n = take_weight(take, n, weight[layer])
                        if take == units:        # the usual case: the whole set goes
                            row[layer] = 0
                            layers_at[t] ^= bit
                        else:
                            row[layer] = units ^ take
                        out[layer] = out.get(layer, 0) | take
                        if n <= 0:
                            break
                if top < 0 and layers_at[t] & layers:
                    top = t
                if n <= 0:
                    break
            t -= 1
        if top < 0:
            while t >= 0 and not layers_at[t] & layers:
                t -= 1
            top = t
        self.top[p] = top
        return out
