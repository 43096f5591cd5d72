"""What a replay counts: per-layer counters fed by the replay's events (ChampSim's vocabulary).

The replay (the decode process, the prefetcher, the storage reads) reports *events* — a prediction
issued, a batch arrived, a lookup, a fill, an eviction, a use, requests submitted — and
:class:`Accounting` turns them into counters; it also keeps the two sets that only statistics need
(prefetched units not used yet, units displaced by a prefetch). The replay never names a per-layer
counter, so a new counter is a change here, and a new reported metric is one registration in
:mod:`sparsesim.simulator.metrics`. Every counter is defined in ``docs/metrics.md`` under the name in
:data:`COUNTERS`; a unit is a neuron or an expert.

Counters are kept per *phase* of the step being replayed (prefill batch or decode token,
:mod:`sparsesim.tracecolumns`): the engine switches the phase at each step row, which costs nothing
per layer step, and the totals are the sum over phases.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from sparsesim.tracecolumns import DECODE, PREFILL

PHASES = (PREFILL, DECODE)

# Per-layer counters, in the order of ``per_layer`` in a record.
COUNTERS = (
    "accesses", "hits", "late", "gate_hits", "misses",
    "prefetch_requested", "prefetch_issued", "prefetch_dropped", "prefetch_no_room", "prefetch_bypassed",
    "prefetch_useful", "prefetch_useless", "prefetch_unused_at_end", "prefetch_gate_dropped",
    "demand_units", "demand_streamed", "prefetch_units", "second_phase_units",
    "evictions", "expired", "pollution_units", "pollution_misses",
    "requests", "request_bytes", "inserted", "pred_tp", "pred_fp", "pred_fn",
)


@dataclass
class Totals:
    """Whole-run quantities that are not per layer."""

    dram_bytes: float = 0.0          # DRAM traffic for compute and cache management
    cache_bytes: float = 0.0         # on-chip cache reads of the FFN (``ffn_in=dram``)
    nonffn_storage_bytes: float = 0.0  # non-FFN weights streamed from the backing store
    flops: float = 0.0
    io_busy: float = 0.0             # s the storage device spent serving batches
    preloaded_units: int = 0         # placed before decoding (static-pin, warm): counted, not timed
    padding_bytes: float = 0.0       # bytes the device read beyond the units' own (read granularity, page faults)
    link_busy: float = 0.0           # s the interconnect spent moving reads into a discrete unit's memory
    dropped_units: int = 0           # false_negatives=drop: needed units outside the predicted set, never read
    hot_accesses: int = 0            # needed units a hot unit computed (resident, outside the cache)
    prompt_prefill_s: float = 0.0    # the prompt_tokens' prefill on the compute unit, apart from the replay
    preloaded_bytes: float = 0.0


@dataclass
class Counts:
    """A replay's counters over the measured steps: per-layer arrays (all phases), the same per phase,
    and the totals."""

    layer: dict[str, np.ndarray]
    totals: Totals = field(default_factory=Totals)
    phase: dict[int, dict[str, np.ndarray]] = field(default_factory=dict)

    def total(self, name: str) -> int:
        return int(self.layer[name].sum())


class Accounting:
    def __init__(self, n_layers: int):
        self.by_phase = {p: {name: [0] * n_layers for name in COUNTERS} for p in PHASES}
        self.c: dict[str, list[int]] = self.by_phase[DECODE]
        self.totals = Totals()
        self.pf_unused = [0] * n_layers   # prefetched and cached, not used yet
        self.displaced = [0] * n_layers   # evicted to make room for a prefetch, not needed since

    # -- prefetch ------------------------------------------------------------------------------
    def predicted(self, layer: int, predicted: int, truth: int, n_truth: int) -> None:
        """A prediction for ``layer``, scored against the trace's true mask."""
        c = self.c
        n, tp = predicted.bit_count(), (predicted & truth).bit_count()
        c["pred_tp"][layer] += tp
        c["pred_fp"][layer] += n - tp
        c["pred_fn"][layer] += n_truth - tp
        c["prefetch_requested"][layer] += n

    def prefetch_sent(self, layer: int, issued: int, dropped: int, no_room: int) -> None:
        self.c["prefetch_issued"][layer] += issued
        self.c["prefetch_units"][layer] += issued
        self.c["prefetch_dropped"][layer] += dropped
        self.c["prefetch_no_room"][layer] += no_room

    def arrived(self, layer: int, n_fetched: int, inserted: int, n_inserted: int, evicted: dict[int, int]) -> int:
        """A prefetch batch was inserted: returns how many units were evicted for it."""
        self.c["inserted"][layer] += n_inserted
        self.c["prefetch_bypassed"][layer] += n_fetched - n_inserted
        self.pf_unused[layer] |= inserted
        return self.evicted(evicted, by_prefetch=True) if evicted else 0

    def set_phase(self, phase: int) -> None:
        """Count what follows in ``phase`` (the step row now replayed: prefill batch or decode token)."""
        self.c = self.by_phase[phase]

    # -- the FFN's lookup, fills and use ----------------------------------------------------------
    def lookup(self, layer: int, n_need: int, n_hit: int, n_late: int, n_staged: int, miss: int, n_miss: int) -> None:
        c = self.c
        c["accesses"][layer] += n_need
        c["hits"][layer] += n_hit
        c["late"][layer] += n_late
        c["gate_hits"][layer] += n_staged
        c["misses"][layer] += n_miss
        c["demand_units"][layer] += n_miss
        displaced = self.displaced[layer]
        if displaced and miss:
            c["pollution_misses"][layer] += (miss & displaced).bit_count()

    def filled(self, layer: int, n_inserted: int, evicted: dict[int, int], n_streamed: int = 0) -> int:
        """A demand fill (``n_streamed`` more units read but not kept: a prefill batch larger than the
        partition): returns how many units were evicted for it."""
        self.c["inserted"][layer] += n_inserted
        if n_streamed:
            self.c["demand_streamed"][layer] += n_streamed
        return self.evicted(evicted, by_prefetch=False) if evicted else 0

    def used(self, layer: int, need: int) -> None:
        """The FFN used ``need``: prefetched units among it were useful; displacement marks clear."""
        unused = self.pf_unused[layer]
        if unused:
            useful = need & unused
            if useful:
                self.c["prefetch_useful"][layer] += useful.bit_count()
                self.pf_unused[layer] = unused ^ useful
        if self.displaced[layer]:
            self.displaced[layer] &= ~need

    def gates_evaluated(self, layer: int, n_kept: int, n_dropped: int) -> None:
        """Two-phase: staged gate rows evaluated; the kept ones had their up/down rows read."""
        self.c["second_phase_units"][layer] += n_kept
        self.c["prefetch_useful"][layer] += n_kept
        self.c["prefetch_gate_dropped"][layer] += n_dropped

    # -- removals -------------------------------------------------------------------------------
    def evicted(self, evicted: dict[int, int], by_prefetch: bool) -> int:
        """Count removals and the unused prefetches among them; returns how many were removed."""
        total = 0
        c = self.c
        for layer, victims in evicted.items():
            n = victims.bit_count()
            total += n
            c["evictions"][layer] += n
            unused = victims & self.pf_unused[layer]
            if unused:
                useless = unused.bit_count()
                c["prefetch_useless"][layer] += useless
                c["pollution_units"][layer] += useless
                self.pf_unused[layer] ^= unused
            if by_prefetch:
                self.displaced[layer] |= victims
        return total

    def expired(self, layer: int, stale: int) -> int:
        self.c["expired"][layer] += stale.bit_count()
        return self.evicted({layer: stale}, by_prefetch=False)

    # -- storage --------------------------------------------------------------------------------
    def requests(self, layer: int, requests: dict[float, int]) -> None:
        self.c["requests"][layer] += sum(requests.values())
        self.c["request_bytes"][layer] += int(round(sum(s * n for s, n in requests.items())))

    # -- the measured window ----------------------------------------------------------------------
    def snapshot(self) -> Counts:
        phase = {p: {k: np.array(v, dtype=np.int64) for k, v in c.items()} for p, c in self.by_phase.items()}
        return Counts({k: sum(c[k] for c in phase.values()) for k in COUNTERS}, Totals(**vars(self.totals)), phase)

    def finish(self, since: Counts, staged: list[int]) -> Counts:
        """Counters from ``since`` (the warm-up's end) to now; what is still unused counts as such."""
        for layer, (unused, gates) in enumerate(zip(self.pf_unused, staged)):
            self.c["prefetch_unused_at_end"][layer] += unused.bit_count() + gates.bit_count()
        now = self.snapshot()
        phase = {p: {k: now.phase[p][k] - since.phase[p][k] for k in COUNTERS} for p in now.phase}
        layer = {k: now.layer[k] - since.layer[k] for k in COUNTERS}
        totals = Totals(**{k: getattr(now.totals, k) - getattr(since.totals, k) for k in vars(now.totals)})
        totals.preloaded_units = now.totals.preloaded_units   # placed before decoding, whatever the warm-up
        totals.preloaded_bytes = now.totals.preloaded_bytes
        return Counts(layer, totals, phase)
