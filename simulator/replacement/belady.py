"""Bélády's MIN on a next-use table: the offline bound every online policy is measured against.

The key of a resident unit is its next use, the first later token whose FFN of the unit's layer
needs it; a unit never used again is farthest of all. The victims are the units of the farthest
next use; within one token the later layer's use comes later, so it goes first; within one layer
and token the lowest index goes first (``docs/policies.md``).

The table files each unit of a layer under the *span* of ``_SPAN`` tokens that holds its next use
(one more span: never used again), as integer sets found by scanning the future masks a span at a
time. A victim search walks the spans from the farthest down and weighs each one's candidates: a
span lighter than what is still wanted goes whole, in any order, since every unit in it is farther
than every unit below; only the span where the search stops is sorted into tokens, by a scan of its
own few masks, and taken token by token, the later layer first, cutting the last set by index.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Iterator, Sequence

import numpy as np

from sparsesim.simulator.replacement import ONE_EACH, REPLACEMENT, CacheGeometry, take_weight
from sparsesim.simulator.replacement.keyed import ChosenVictims

_SPAN = 8   # tokens per span of the next-use table


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
                     for l in range(L)]                          # rows[layer][token]: its needed set
        S = -(-T // _SPAN)                                       # spans of tokens; span S: never used again
        # rest[layer][t]: used at t or later within t's span (rest[layer][s * _SPAN]: anywhere in span s);
        # first[layer][t]: used at t and not earlier in t's span; alive[layer][s]: used in span s or later.
        self.rest, self.first, self.alive = [], [], []
        for rows in self.rows:
            rest, first, alive = [0] * T, [0] * T, [0] * (S + 1)
            for t in range(T - 1, -1, -1):
                rest[t] = rows[t] if t == T - 1 or (t + 1) % _SPAN == 0 else rows[t] | rest[t + 1]
            seen = 0
            for t in range(T):
                if t % _SPAN == 0:
                    seen = 0
                first[t] = rows[t] & ~seen
                seen |= rows[t]
            for s in range(S - 1, -1, -1):
                alive[s] = rest[s * _SPAN] | alive[s + 1]
            self.rest.append(rest)
            self.first.append(first)
            self.alive.append(alive)
        self.T, self.L, self.S = T, L, S
        self.done = [-1] * L                   # per layer: the last token whose FFN has started
        # The table: filed[s][layer] = resident units of layer next used in span s (s = S: never);
        # layers_at[s] = bit l set where filed[s][l] is not empty.
        self.filed = [[0] * L for _ in range(S + 1)]
        self.layers_at = [0] * (S + 1)
        self.global_pool = geometry.partition == "global"
        self.top = [-1] * (1 if self.global_pool else L)   # per partition: no unit filed beyond this span

    def _file(self, layer: int, units: int) -> None:
        """File ``units`` of ``layer`` by the span of their next use, the first token after
        ``done[layer]`` needing them: the rest of that token's span first, then span by span."""
        filed, layers_at, bit = self.filed, self.layers_at, 1 << layer
        t = self.done[layer] + 1
        if t < self.T:
            s, rest = t // _SPAN, self.rest[layer]
            later = units & (rest[t] | self.alive[layer][s + 1])
        else:
            later = 0
        never = units ^ later
        farthest = -1
        if never:
            filed[self.S][layer] |= never
            layers_at[self.S] |= bit
            farthest = self.S
        if later:
            found = later & rest[t]
            while True:
                if found:
                    filed[s][layer] |= found
                    layers_at[s] |= bit
                    later ^= found
                    if not later:
                        break
                s += 1
                found = later & rest[s * _SPAN]
            farthest = max(farthest, s)
        p = 0 if self.global_pool else layer
        if farthest > self.top[p]:
            self.top[p] = farthest

    def on_fill(self, layer, step, filled, prefetch):
        self._file(layer, filled)

    def on_access(self, layer, step, used):
        token = step // self.L
        s = token // _SPAN
        due = self.filed[s][layer] & self.rows[layer][token]   # next used by this FFN, which has started
        if due:
            self._remove(s, layer, due)
        self.done[layer] = token
        # Filed again from the next token on: the used units, and those the FFN needed but did not
        # compute (false_negatives=drop computes the predicted set), still resident.
        self._file(layer, used | due)

    def _forget(self, layer, units):
        for s, row in enumerate(self.filed):
            gone = row[layer] & units
            if gone:
                self._remove(s, layer, gone)

    def _remove(self, s: int, layer: int, units: int) -> None:
        """Take ``units`` (filed there) out of span ``s`` of ``layer``."""
        row = self.filed[s]
        row[layer] ^= units
        if not row[layer]:
            self.layers_at[s] ^= 1 << layer

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
        s, top = self.top[p], -1             # top: the farthest span left holding a unit of the partition
        while s >= 0:
            here = layers_at[s] & layers
            if here:
                row = filed[s]
                sets, size = [], 0           # (layer, its candidates), the later layer first
                while here:
                    layer = here.bit_length() - 1
                    here ^= 1 << layer
                    take = row[layer] & candidates[layer]
                    if take:
                        sets.append((layer, take))
                        if size < n:         # past n the span's weight does not matter
                            size += take.bit_count() * weight[layer]
                    elif s > top:            # none of it may go
                        top = s
                if size >= n:                # the search stops in this span
                    self._cut(s, sets, n, weight, out)
                    if s > top and layers_at[s] & layers:
                        top = s
                    break
                n -= size                    # the whole span goes
                for layer, take in sets:
                    self._remove(s, layer, take)
                    out[layer] = out.get(layer, 0) | take
                if s > top and layers_at[s] & layers:
                    top = s
            s -= 1
        if top < 0:                          # every span from s up is empty
            while s >= 0 and not layers_at[s] & layers:
                s -= 1
            top = s
        self.top[p] = top
        return out

    def _cut(self, s: int, sets: list[tuple[int, int]], n: int, weight: Sequence[int], out: dict[int, int]) -> None:
        """Take ``n`` weight of the candidates ``sets`` of span ``s`` in key order, the last set cut
        by index (the never-used span is one key per layer, the later layer first)."""
        for layer, units in (sets if s == self.S else self._by_next_use(s, sets)):
            take, n = take_weight(units, n, weight[layer])
            self._remove(s, layer, take)
            out[layer] = out.get(layer, 0) | take
            if n <= 0:
                return

    def _by_next_use(self, s: int, sets: list[tuple[int, int]]) -> Iterator[tuple[int, int]]:
        """The candidate ``sets`` of span ``s`` split by next-use token, in key order: the later token
        first, then the later layer. In a span wholly after its layer's last started FFN a unit's next
        use is its first use in the span (``first``); in the span holding that FFN, a scan from the
        FFN on finds it."""
        start = s * _SPAN
        at: list[tuple[int, int, Sequence[int]]] = []   # (layer, units, [t] -> which of them are next used at t)
        for layer, units in sets:
            t = self.done[layer] + 1
            if t <= start:
                at.append((layer, units, self.first[layer]))
                continue
            rows, scanned = self.rows[layer], defaultdict(int)
            while units:
                found = units & rows[t]
                if found:
                    scanned[t] = found
                    units ^= found
                t += 1
            at.append((layer, -1, scanned))   # -1: every unit (the scan split them already)
        for t in range(min(start + _SPAN, self.T) - 1, start - 1, -1):
            for layer, units, next_used in at:   # the later layer first
                found = units & next_used[t]
                if found:
                    yield layer, found
