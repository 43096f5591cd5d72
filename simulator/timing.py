"""How long each piece of a layer step takes, charging the DRAM bytes and FLOPs it moves.

Pure formulas of the model footprint, the scenario and the hardware profile (``docs/metrics.md``,
"Time" and "Time model"); the simpy processes in :mod:`sparsesim.simulator.engine` decide *when*
each piece runs. Storage batches are timed by :class:`sparsesim.simulator.io_path.ReadPath`. Every
method returns seconds and adds its traffic to the :class:`~sparsesim.simulator.accounting.Totals`
it was given, so what is timed and what is charged for energy cannot disagree. :class:`ManagementDebt`
collects the cache-management seconds of insertions and removals until the next FFN is charged them.

The time model's parts plug in here (``docs/time-model.md``): every kernel runs on the scenario's
compute unit (:class:`~sparsesim.simulator.kernels.Unit`: roofline / efficiency + dispatch) at the
compute precision; the non-FFN work adds the KV cache of the token's position; the FFN is a sparse
gather/scatter over the computed units, a dense product over the whole layer (the ``dense``
predictor) or over the resident matrix (``ffn_compute=matrix``); memory management follows the
scheme (:mod:`~sparsesim.simulator.memory_management`); a low-rank predictor costs its kernels; a
hot unit computes its hot units densely at the same time as the compute unit, sharing DRAM
(:mod:`~sparsesim.simulator.heterogeneous`); and ``pipeline=cluster`` times a layer's reads and
compute as PowerInfer-2's cluster pipeline (:mod:`~sparsesim.simulator.pipeline`). Every kernel's
time is linear in the units it touches plus a dispatch cost per call, so each is two constants per
layer computed once; with every setting at its default they are the formulas the model had before
(``roofline(bytes, FLOPs, DRAM bandwidth, compute.flops)``), to the last bit. On a neuron trace every
layer's constants are the same; an expert trace's experts (a dense product over their own matrices)
and the weights each layer reads every token may differ per layer. A prefill batch step (``tokens``
> 1) reads each weight once and does the arithmetic of every token of the batch.
"""

from __future__ import annotations

import math
from typing import Sequence

from sparsesim.simulator.accounting import Totals
from sparsesim.simulator.context import kv_dim_from_meta, prefill_work
from sparsesim.simulator.heterogeneous import Part, concurrent_time
from sparsesim.simulator.io_path import ReadPath
from sparsesim.simulator.kernels import Unit, Work, ffn_dense, roofline
from sparsesim.simulator.memory_management import management_calls, management_cost
from sparsesim.simulator.pipeline import powerinfer2_stages, uniform_makespan
from sparsesim.simulator.predictor_cost import low_rank_work
from sparsesim.simulator.scenario import ModelFootprint, Scenario
from sparsesim.traceunits import NEURON

__all__ = ["ManagementDebt", "StepCosts"]


class StepCosts:
    def __init__(self, footprint: ModelFootprint, scenario: Scenario, profile, predictor_flops: float,
                 totals: Totals, *, dense: bool = False, model: dict | None = None,
                 hot_units: Sequence[int] | None = None, read_path: ReadPath | None = None):
        self.totals = totals
        sc, fp = scenario, footprint
        self.unit = unit = Unit.from_profile(profile, sc.compute_unit, sc.arithmetic_precision,
                                             f"scenario field 'compute_unit' = {sc.compute_unit}")
        peak = unit.peak
        # With the FFN in DRAM the weights the FFN reads come from the on-chip cache.
        self.on_chip = sc.ffn_in == "dram" and profile.cache is not None
        self.ffn_bw = ffn_bw = profile.cache.bandwidth if self.on_chip else unit.bandwidth
        self.bytes_per_weight = bpw = fp.bytes_per_weight      # storage precision
        wc = sc.compute_bytes_per_weight                       # the DRAM-resident copy the arithmetic reads
        self.scale = scale = 1.0 if wc == bpw else wc / bpw
        d, m = fp.d_model, fp.matrices
        self.matrices = m
        self._nonffn = [self._dense_kernel(b, 4) for b in fp.layer_nonffn_bytes]   # q, k, v, o projections
        self._head = self._dense_kernel(fp.head_bytes, 1)
        self.predict = predictor_flops / peak if predictor_flops else 0.0
        # Per-unit constants per layer: every FFN kernel is linear in the units it touches.
        self.unit_bytes = list(fp.unit_bytes) if scale == 1.0 else [b * scale for b in fp.unit_bytes]
        self.unit_flops = list(fp.unit_flops)
        self.row_bytes = fp.row_bytes if scale == 1.0 else fp.row_bytes * scale
        self.row_flops = 2 * d
        eff = unit.efficiency
        # A neuron is gathered rows and a scattered column; an expert, or the whole layer, a dense product.
        self.kind = "dense" if dense or sc.ffn_compute == "matrix" or fp.kind != NEURON else "sparse"
        row_roofline = roofline(self.row_bytes, self.row_flops, ffn_bw, peak)
        self.row_gather = row_roofline / eff.get("gather", 1.0)
        self.row_scatter = row_roofline / eff.get("scatter", 1.0)
        self.unit_seconds = [self._unit_seconds(b, f) for b, f in zip(self.unit_bytes, self.unit_flops)]
        self.ffn_dispatch = m * unit.dispatch          # one call per matrix (m - 1 gathers and a scatter)
        self.ffn_matrix = sc.ffn_compute == "matrix"
        # Memory management (docs/time-model.md): per inserted or removed unit. Nothing when the FFN
        # lives in DRAM: the on-chip cache is hardware-managed.
        scheme = sc.memory_management if sc.ffn_in == "flash" else "none"
        moved = [management_cost(scheme, 1, 0, b, unit.copy_bandwidth(), sc.insert_overhead) for b in self.unit_bytes]
        self.moved_bytes, self.moved_seconds = [c.bytes for c in moved], [c.seconds for c in moved]
        self.scheme, self.dispatch = scheme, unit.dispatch
        # KV cache: per layer step at position p, p x (bytes, FLOPs) + two calls (docs/metrics.md).
        self.kv = None
        if sc.kv_cache:
            kv_dim = sc.kv_dim or kv_dim_from_meta(model or {})
            kv_bytes = 2.0 * kv_dim * max(wc, 2.0)            # fp16 KV under quantised weights
            self.kv = (kv_bytes, 4.0 * d, unit.time("dense", Work(kv_bytes, 4.0 * d)), 2 * unit.dispatch)
        self.prompt_tokens = sc.prompt_tokens
        # Low-rank predictor per layer step (replaces the predictor's own cost when the rank is given).
        self.hot_units = list(hot_units) if hot_units is not None else [0] * fp.n_layers
        self.rank_work = [low_rank_work(d, dff - hot, sc.predictor_rank, wc) if sc.predictor_rank else None
                          for dff, hot in zip(fp.d_ff, self.hot_units)]
        self.rank_seconds = [unit.time("dense", w) if w is not None else 0.0 for w in self.rank_work]
        # A hot unit: its hot units densely, at the same time as the compute unit's part.
        self.hot = None
        if sc.hot_unit != "none":
            hot_unit = Unit.from_profile(profile, sc.hot_unit, sc.arithmetic_precision,
                                         f"scenario field 'hot_unit' = {sc.hot_unit}")
            spec = profile.unit(sc.hot_unit)
            shared = None if spec.capacity is not None else profile.dram.shared_bandwidth
            works = [ffn_dense(h, d, m, wc) for h in self.hot_units]
            self.hot = ([w.bytes for w in works], [w.flops for w in works],
                        [hot_unit.time("dense", w) for w in works], shared)
        # The intra-layer pipeline (pipeline=cluster).
        self.read_path = read_path
        self.cluster_neurons, self.compute_threads = sc.cluster_neurons, sc.compute_threads
        if sc.pipeline == "cluster":   # per phase: (the slowest piece's device slot, how many pieces)
            self._phases = [(max(map(read_path.slot, pieces), default=0.0), len(pieces))
                            for pieces in self._unit_pieces(fp, sc)]

    def _unit_seconds(self, nbytes: float, flops: float) -> float:
        """Seconds of the FFN kernels per unit of ``nbytes`` and ``flops`` (dispatch apart)."""
        unit_roofline = roofline(nbytes, flops, self.ffn_bw, self.unit.peak)
        eff = self.unit.efficiency
        if self.kind == "dense":
            return unit_roofline / eff.get("dense", 1.0)
        if eff.get("gather", 1.0) == eff.get("scatter", 1.0):
            return unit_roofline / eff.get("gather", 1.0)
        # m - 1 gathered rows (gate/up, fc1) and one scattered column (down)
        return (self.matrices - 1) * self.row_gather + self.row_scatter

    def _dense_kernel(self, nbytes: float, calls: int) -> tuple[float, float, float, float]:
        """A matrix-vector product over ``nbytes`` of weights (storage precision): (storage bytes,
        DRAM bytes at the compute precision, FLOPs, seconds)."""
        resident = nbytes if self.scale == 1.0 else nbytes * self.scale
        flops = 2 * nbytes / self.bytes_per_weight
        return nbytes, resident, flops, self.unit.time("dense", Work(resident, flops, calls))

    # -- dense work -----------------------------------------------------------------------------
    def nonffn(self, layer: int, position: int, tokens: int = 1) -> tuple[float, float]:
        """One layer's attention and norms (an expert trace: every weight the layer reads but the routed
        experts), a matrix-vector product per token over weights held in DRAM, and with ``kv_cache``
        the KV cache of the step's tokens, the first ``position`` replayed tokens in. Returns (bytes of
        those weights at the storage precision, seconds)."""
        nbytes, resident, flops, seconds = self._nonffn[layer]
        t = self.totals
        t.dram_bytes += resident
        if tokens > 1:   # a prefill batch: the weights read once, every token's arithmetic
            flops *= tokens
            seconds = self.unit.time("dense", Work(resident, flops, 4))
        t.flops += flops
        if self.kv is None:
            return nbytes, seconds
        kv_bytes, kv_flops, kv_seconds, kv_dispatch = self.kv
        p = self.prompt_tokens + position
        if tokens == 1:
            t.dram_bytes += p * kv_bytes
            t.flops += p * kv_flops
            return nbytes, seconds + p * kv_seconds + kv_dispatch
        # a batch: the KV of its last position read once, each token attending to every earlier one
        attended = tokens * p + tokens * (tokens - 1) // 2
        work = Work((p + tokens - 1) * kv_bytes, attended * kv_flops)
        t.dram_bytes += work.bytes
        t.flops += work.flops
        return nbytes, seconds + self.unit.time("dense", work) + kv_dispatch

    def head(self) -> tuple[float, float]:
        """The LM head once per step, as :meth:`nonffn` (no KV cache; a prefill batch outputs the
        logits of its last token only)."""
        nbytes, resident, flops, seconds = self._head
        self.totals.dram_bytes += resident
        self.totals.flops += flops
        return nbytes, seconds

    def predictor(self, layer: int) -> float:
        """The low-rank predictor of one layer step (``predictor_rank``), on the compute unit."""
        work = self.rank_work[layer]
        self.totals.dram_bytes += work.bytes
        self.totals.flops += work.flops
        return self.rank_seconds[layer]

    def prompt_prefill(self, fp: ModelFootprint) -> float:
        """Seconds to prefill the ``prompt_tokens`` before the first replayed token on the compute
        unit: every weight read once, ``2 n params`` FLOPs plus attention over the prompt
        (``context.prefill_work``), a matrix-matrix product. Not part of any per-token time."""
        n = self.prompt_tokens
        if not n:
            return 0.0
        params = (fp.ffn_bytes + fp.nonffn_resident_bytes) / self.bytes_per_weight
        return self.unit.time("dense", prefill_work(params, n, fp.n_layers, fp.d_model,
                                                    self.bytes_per_weight * self.scale))

    # -- the FFN ----------------------------------------------------------------------------------
    def _read_ffn(self, nbytes: float) -> None:
        if self.on_chip:
            self.totals.cache_bytes += nbytes
        else:
            self.totals.dram_bytes += nbytes

    def ffn(self, layer: int, units: int, token_units: int = 0) -> float:
        """The FFN of ``layer`` over ``units`` units (the computed units, or under
        ``ffn_compute=matrix`` every resident unit of the layer) and its kernel calls' dispatch; a
        prefill batch computes ``token_units`` (Σ over its tokens of each token's units) from those
        ``units`` read once."""
        nbytes = units * self.unit_bytes[layer]
        self._read_ffn(nbytes)
        if token_units <= units:
            self.totals.flops += units * self.unit_flops[layer]
            seconds = units * self.unit_seconds[layer]
        else:
            flops = token_units * self.unit_flops[layer]
            self.totals.flops += flops
            seconds = roofline(nbytes, flops, self.ffn_bw, self.unit.peak) / \
                self.unit.efficiency.get("dense" if self.kind == "dense" else "gather", 1.0)
        if self.ffn_dispatch and units:
            return seconds + self.ffn_dispatch
        return seconds

    def gate_rows(self, units: int) -> float:
        """Two-phase: evaluating staged gate rows whose unit turned out inactive."""
        self._read_ffn(units * self.row_bytes)
        self.totals.flops += units * self.row_flops
        return units * self.row_gather

    def with_hot(self, layer: int, seconds: float, cold_units: int, charge: bool = True) -> float:
        """The compute unit's FFN part (``seconds`` over ``cold_units``) and the hot unit's dense part
        of ``layer``, run at the same time and sharing DRAM (``heterogeneous.concurrent_time``);
        ``charge``: add the hot part's traffic to the totals (once per step)."""
        hot_bytes, hot_flops, hot_seconds, shared = self.hot
        if charge:
            self.totals.dram_bytes += hot_bytes[layer]
            self.totals.flops += hot_flops[layer]
        cold = Part(cold_units * self.unit_bytes[layer], seconds)
        hot = Part(hot_bytes[layer], hot_seconds[layer])
        return concurrent_time([hot, cold], shared) if shared else max(hot.seconds, cold.seconds)

    def management(self, layer: int, inserted: int, removed: int, removed_from: dict[int, int] | None = None) -> float:
        """Inserting ``inserted`` units of ``layer`` and removing ``removed`` of ``layer`` (and
        ``removed_from[l]`` of other layers) in the DRAM cache, one operation, by the memory-management
        scheme: bytes moved, bookkeeping, and its kernel calls' dispatch."""
        units = inserted + removed
        nbytes, seconds = units * self.moved_bytes[layer], units * self.moved_seconds[layer]
        if removed_from:
            for l, n in removed_from.items():
                nbytes += n * self.moved_bytes[l]
                seconds += n * self.moved_seconds[l]
                removed += n
        self.totals.dram_bytes += nbytes
        if self.dispatch:
            return seconds + management_calls(self.scheme, inserted, removed) * self.dispatch
        return seconds

    # -- the cluster pipeline -------------------------------------------------------------------
    def _unit_pieces(self, fp: ModelFootprint, sc: Scenario) -> tuple[list[float], list[float]]:
        """The reads of one missed unit as the device sees them, split into the gate phase (the
        first piece) and the up/down phase (the rest): PowerInfer-2 reads a bundle as two 4 KB
        reads, gate first."""
        records = [fp.neuron_bytes] if sc.layout == "bundled" else [fp.row_bytes] * fp.matrices
        g = sc.read_granularity
        pieces: list[float] = []
        for record in records:   # io_path.shape_requests's cut, in file order
            whole, rest = divmod(record, sc.max_request) if g else (0, record)
            for size in [float(sc.max_request)] * int(whole) + ([float(rest)] if rest else []):
                pieces.append(float(math.ceil(size / g) * g) if g else size)
        return pieces[:1], pieces[1:]

    def _io_stage(self, phase: tuple[float, int], misses: float, servers: int) -> float:
        slot, pieces = phase
        if not pieces or misses <= 0:
            return 0.0
        return slot * max(1.0, misses * pieces * servers / self.read_path.depth)

    def pipelined(self, layer: int, units: int, misses: int) -> tuple[float, float]:
        """A layer's FFN as PowerInfer-2's cluster pipeline: the ``units`` computed units cut into
        clusters of ``cluster_neurons`` (the ``misses`` spread evenly over them), each through Pred,
        gate I/O, gate compute, up/down I/O and up/down compute, on ``compute_threads`` servers
        sharing the unit and the device's ``io_depth`` slots. Returns (seconds, compute seconds)."""
        if units == 0:
            return 0.0, 0.0
        clusters = math.ceil(units / self.cluster_neurons) if self.cluster_neurons else 1
        per, miss = units / clusters, misses / clusters
        n = self.compute_threads
        gate_phase, updown_phase = self._phases
        k = miss * max(gate_phase[1], updown_phase[1])
        io_servers = max(1, int(self.read_path.depth // max(math.ceil(k), 1)))
        pred = self.predictor(layer) / clusters if self.rank_work[layer] is not None else 0.0
        m = self.matrices
        gate = per * self.row_gather
        updown = per * ((m - 2) * self.row_gather + self.row_scatter)
        dispatch = self.unit.dispatch
        stages = powerinfer2_stages(n * pred, self._io_stage(gate_phase, miss, io_servers), n * gate + dispatch,
                                    self._io_stage(updown_phase, miss, io_servers), n * updown + (m - 1) * dispatch)
        self._read_ffn(units * self.unit_bytes[layer])
        self.totals.flops += units * self.unit_flops[layer]
        compute = clusters * (pred + gate + updown) + clusters * m * dispatch / n
        return uniform_makespan(stages, clusters, {"compute": n, "io": io_servers}), compute


class ManagementDebt:
    """Cache-management seconds owed to the next FFN: every insertion and removal since the last FFN
    took its charge (prefetch arrivals land between FFNs; demand fills, gate evaluations and expiries
    happen inside a step). Each change is one operation of :meth:`StepCosts.management`."""

    def __init__(self, costs: StepCosts, uniform: bool):
        self.costs = costs
        self.uniform = uniform      # every unit one size: removals priced as the inserting layer's
        self.seconds = 0.0

    def add(self, layer: int, n_inserted: int, evicted: dict[int, int], n_evicted: int) -> None:
        """Insertions into ``layer`` and the removals they caused (global: from any layer)."""
        if self.uniform:
            self.seconds += self.costs.management(layer, n_inserted, n_evicted)
        else:
            self.seconds += self.costs.management(layer, n_inserted, 0,
                                                  {l: units.bit_count() for l, units in evicted.items()})

    def take(self) -> float:
        """The seconds owed so far, now charged: the debt starts again from zero."""
        seconds, self.seconds = self.seconds, 0.0
        return seconds
