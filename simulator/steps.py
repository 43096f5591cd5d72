"""The replay's step rows: one per decode token, one per prefill batch (``docs/simulator.md``, "Steps").

A real engine runs a prompt in batches: each layer runs once for all of a batch's tokens, so each
distinct unit the batch needs is looked up and read once, and the layer's weights are read once for
all its tokens. A trace with a ``phase`` column is replayed so: the tokens of one prefill batch
(its ``batch`` column; without one, the consecutive prefill tokens of one sequence) become one step
row whose needed set per layer is the union of the batch's tokens — an empty row, a layer the engine
did not run for that token, adds nothing. Decode tokens, and every token of a trace without a
``phase`` column, are step rows of their own, exactly as before.

Only the routed units are cached: an expert trace's always-active (shared) units and dense layers'
FFNs are resident weights (``docs/moe.md``, "Replay"), so their mask bits are dropped here.

:class:`NeededSets` gives the replay each step row's needed sets as integers (bit i = unit i), per
layer, converted once per row.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sparsesim.simulator import bitset, neuronset
from sparsesim.tracecolumns import DECODE, PREFILL
from sparsesim.tracefile import Trace
from sparsesim.traceunits import NEURON


@dataclass(frozen=True)
class ReplaySteps:
    masks: np.ndarray                 # [S, L, n_bytes] needed sets of each step row (streamed: array-like)
    tokens: np.ndarray                # [S] token id of each step row (a batch: its last token's)
    phase: np.ndarray | None          # [S] PREFILL / DECODE; None: the trace has no phase (all decode)
    n_tokens: np.ndarray | None       # [S] tokens each step row stands for; None: one each
    token_units: np.ndarray | None    # [S, L] Σ over the row's tokens of their needed units; None: one token each
    first_token: np.ndarray | None    # [S] the trace token where each step row starts; None: step row = token
    last_masks: np.ndarray | None     # [S, L, n_bytes] each step row's last token's own set; None: = masks
    positions: np.ndarray             # [S] position in its sequence of each step row's first token (KV length)

    @property
    def n_steps(self) -> int:
        return len(self.tokens)

    def gather(self, rows: np.ndarray) -> np.ndarray:
        """Per-token packed rows [T, L, n_bytes] (a stored prediction) as step rows: a batch's union."""
        return rows if self.first_token is None else np.bitwise_or.reduceat(np.asarray(rows), self.first_token, axis=0)

    def decode_rows(self) -> np.ndarray:
        """Step rows that are decode tokens."""
        return np.arange(self.n_steps) if self.phase is None else np.flatnonzero(self.phase == DECODE)


class NeededSets:
    """N(g) of the residency contract as integer sets: the trace's needed set of each layer of a step
    row (:meth:`of`, converted once per row, the last few rows kept), and every unit the cache serves
    (:attr:`every`, the ``dense`` predictor's needed set). With a hot unit, its units are resident
    outside the cache: :attr:`cold` is the rest, the units a prediction may name."""

    def __init__(self, masks, d_ff: tuple[int, ...], hot: list[int] | None = None):
        self.masks = masks
        self.n_layers, self.n_bytes = masks.shape[1], masks.shape[2]
        self._rows: dict[int, tuple[list[int], list[int]]] = {}   # step row -> its sets and their sizes
        self.cold = None if hot is None else [neuronset.full(d) & ~h for d, h in zip(d_ff, hot)]
        self.every = self.cold or [neuronset.full(d) for d in d_ff]
        self.n_every = [s.bit_count() for s in self.every] if hot is not None else list(d_ff)

    def of(self, row: int) -> tuple[list[int], list[int]]:
        """The needed sets of step row ``row`` and their sizes, per layer."""
        rows = self._rows.get(row)
        if rows is None:
            if len(self._rows) > 4:
                self._rows.pop(min(self._rows))
            packed, nb = np.ascontiguousarray(self.masks[row, :]), self.n_bytes
            data = packed.tobytes()
            rows = self._rows[row] = ([int.from_bytes(data[i * nb:(i + 1) * nb], "little")
                                       for i in range(self.n_layers)],
                                      np.bitwise_count(packed).sum(axis=1).tolist())
        return rows


def has_prefill(trace: Trace) -> bool:
    """The trace's prompt is replayed in prefill batches: it has a ``phase`` column with prefill rows."""
    return trace.phase is not None and bool(np.any(trace.phase == PREFILL))


def replay_steps(trace: Trace) -> ReplaySteps:
    """The step rows of ``trace``: its masks unchanged when nothing is batched or shared."""
    units = trace.units
    masks = trace.masks
    if units.kind != NEURON and any(units.shared):
        masks = np.asarray(masks) & _routed_rows(units, trace.n_bytes)[None]
    phase = trace.phase
    if not has_prefill(trace):
        return ReplaySteps(masks, trace.token, None if phase is None else phase.astype(np.int8), None, None, None,
                           None, trace.pos)
    masks = np.asarray(masks)
    batch = trace.columns.get("batch")
    seq = trace.seq
    prefill = phase == PREFILL
    same = np.ones(len(phase), dtype=bool)   # row i continues row i-1's step
    same[0] = False
    same[1:] = prefill[1:] & prefill[:-1] & (seq[1:] == seq[:-1])
    if batch is not None:
        same[1:] &= batch[1:] == batch[:-1]
    starts = np.flatnonzero(~same)
    ends = np.append(starts[1:], len(phase)) - 1
    return ReplaySteps(masks=np.bitwise_or.reduceat(masks, starts, axis=0), tokens=trace.token[ends],
                       phase=phase[starts].astype(np.int8), n_tokens=np.diff(np.append(starts, len(phase))),
                       token_units=np.add.reduceat(np.bitwise_count(masks).sum(axis=-1, dtype=np.int64), starts,
                                                   axis=0),
                       first_token=starts, last_masks=masks[ends], positions=trace.pos[starts])


def _routed_rows(units, n_bytes: int) -> np.ndarray:
    """[L, n_bytes] packed rows of each layer's routed units (bits 0 .. count-1)."""
    return np.stack([bitset.full(c, n_bytes) for c in units.count])
