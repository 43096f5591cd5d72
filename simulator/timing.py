"""How long each piece of a layer step takes, charging the DRAM bytes and FLOPs it moves.

Pure formulas of the model footprint, the scenario and the hardware profile (``docs/metrics.md``,
"Time" and "Time model"); the simpy processes in :mod:`sparsesim.simulator.engine` decide *when*
each piece runs. Storage batches are timed by :class:`sparsesim.simulator.io_path.ReadPath`. Every
method returns seconds and adds its traffic to the :class:`~sparsesim.simulator.accounting.Totals`
it was given, so what is timed and what is charged for energy cannot disagree.

The time model's parts plug in here (``docs/time-model.md``): every kernel runs on the scenario's
compute unit (:class:`~sparsesim.simulator.kernels.Unit`: roofline / efficiency + dispatch) at the
compute precision; the non-FFN work adds the KV cache of the token's position; the FFN is a sparse
gather/scatter over the computed units, a dense product over the whole layer (the ``dense``
predictor) or over the resident matrix (``ffn_compute=matrix``); memory management follows the
scheme (:mod:`~sparsesim.simulator.memory_management`); a low-rank predictor costs its kernels; a
hot unit computes its hot units densely at the same time as the compute unit, sharing DRAM
(:mod:`~sparsesim.simulator.heterogeneous`); and ``pipeline=cluster`` times a layer's reads and
compute as PowerInfer-2's cluster pipeline (:mod:`~sparsesim.simulator.pipeline`). Every kernel's
time is linear in the units it touches plus a dispatch cost per call, so each is two constants
computed once; with every setting at its default they are the formulas the model had before
(``roofline(bytes, FLOPs, DRAM bandwidth, compute.flops)``), to the last bit.
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

__all__ = ["StepCosts", "roofline"]


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
        ffn_bw = profile.cache.bandwidth if self.on_chip else unit.bandwidth
        self.bytes_per_weight = bpw = fp.bytes_per_weight      # storage precision
        wc = sc.compute_bytes_per_weight                       # the DRAM-resident copy the arithmetic reads
        self.scale = 1.0 if wc == bpw else wc / bpw
        d, m = fp.d_model, fp.matrices
        self._nonffn = self._dense_kernel(fp.layer_nonffn_bytes, 4)    # q, k, v, o projections
        self._head = self._dense_kernel(fp.head_bytes, 1)
        self.predict = predictor_flops / peak if predictor_flops else 0.0
        # Per-unit constants: every FFN kernel is linear in the units it touches.
        self.unit_bytes = fp.neuron_bytes if self.scale == 1.0 else fp.neuron_bytes * self.scale
        self.unit_flops = 2 * m * d
        self.row_bytes = fp.row_bytes if self.scale == 1.0 else fp.row_bytes * self.scale
        self.row_flops = 2 * d
        eff = unit.efficiency
        kind = "dense" if dense or sc.ffn_compute == "matrix" else "sparse"
        unit_roofline = roofline(self.unit_bytes, self.unit_flops, ffn_bw, peak)
        row_roofline = roofline(self.row_bytes, self.row_flops, ffn_bw, peak)
        if kind == "dense":
            self.unit_seconds = unit_roofline / eff.get("dense", 1.0)
        elif eff.get("gather", 1.0) == eff.get("scatter", 1.0):
            self.unit_seconds = unit_roofline / eff.get("gather", 1.0)
        else:   # m - 1 gathered rows (gate/up, fc1) and one scattered column (down)
            self.unit_seconds = (m - 1) * row_roofline / eff.get("gather", 1.0) + row_roofline / eff.get("scatter", 1.0)
        self.ffn_dispatch = m * unit.dispatch          # one call per matrix (m - 1 gathers and a scatter)
        self.row_gather = row_roofline / eff.get("gather", 1.0)
        self.row_scatter = row_roofline / eff.get("scatter", 1.0)
        self.row_seconds = self.row_gather
        self.ffn_matrix = sc.ffn_compute == "matrix"
        # Memory management (docs/time-model.md): per inserted or removed unit. Nothing when the FFN
        # lives in DRAM: the on-chip cache is hardware-managed.
        scheme = sc.memory_management if sc.ffn_in == "flash" else "none"
        one = management_cost(scheme, 1, 0, self.unit_bytes, unit.copy_bandwidth(), sc.insert_overhead)
        self.moved_bytes, self.moved_seconds = one.bytes, one.seconds
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
        if sc.pipeline == "cluster":
            self._pieces = self._unit_pieces(fp, sc)

    def _dense_kernel(self, nbytes: float, calls: int) -> tuple[float, float, float, float]:
        """A matrix-vector product over ``nbytes`` of weights (storage precision): (storage bytes,
        DRAM bytes at the compute precision, FLOPs, seconds)."""
        resident = nbytes if self.scale == 1.0 else nbytes * self.scale
        flops = 2 * nbytes / self.bytes_per_weight
        return nbytes, resident, flops, self.unit.time("dense", Work(resident, flops, calls))

    # -- dense work -----------------------------------------------------------------------------
    def nonffn(self, token: int) -> tuple[float, float]:
        """One layer's attention and norms, a matrix-vector product over weights held in DRAM, and
        with ``kv_cache`` its KV cache at ``token``'s position. Returns (bytes of those weights at the
        storage precision, seconds)."""
        nbytes, resident, flops, seconds = self._nonffn
        t = self.totals
        t.dram_bytes += resident
        t.flops += flops
        if self.kv is None:
            return nbytes, seconds
        kv_bytes, kv_flops, kv_seconds, kv_dispatch = self.kv
        position = self.prompt_tokens + token
        t.dram_bytes += position * kv_bytes
        t.flops += position * kv_flops
        return nbytes, seconds + position * kv_seconds + kv_dispatch

    def head(self) -> tuple[float, float]:
        """The LM head once per token, as :meth:`nonffn` (no KV cache)."""
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

    def prefill(self, fp: ModelFootprint) -> float:
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

    def ffn(self, units: int) -> float:
        """The FFN over ``units`` units (gate/up rows and down column each): the computed units, or
        under ``ffn_compute=matrix`` every resident unit of the layer; its kernel calls' dispatch."""
        self._read_ffn(units * self.unit_bytes)
        self.totals.flops += units * self.unit_flops
        if self.ffn_dispatch and units:
            return units * self.unit_seconds + self.ffn_dispatch
        return units * self.unit_seconds

    def gate_rows(self, units: int) -> float:
        """Two-phase: evaluating staged gate rows whose unit turned out inactive."""
        self._read_ffn(units * self.row_bytes)
        self.totals.flops += units * self.row_flops
        return units * self.row_seconds

    def with_hot(self, layer: int, seconds: float, cold_units: int, charge: bool = True) -> float:
        """The compute unit's FFN part (``seconds`` over ``cold_units``) and the hot unit's dense part
        of ``layer``, run at the same time and sharing DRAM (``heterogeneous.concurrent_time``);
        ``charge``: add the hot part's traffic to the totals (once per step)."""
        hot_bytes, hot_flops, hot_seconds, shared = self.hot
        if charge:
            self.totals.dram_bytes += hot_bytes[layer]
            self.totals.flops += hot_flops[layer]
        cold = Part(cold_units * self.unit_bytes, seconds)
        hot = Part(hot_bytes[layer], hot_seconds[layer])
        return concurrent_time([hot, cold], shared) if shared else max(hot.seconds, cold.seconds)

    def management(self, inserted: int, removed: int) -> float:
        """Inserting ``inserted`` and removing ``removed`` units in the DRAM cache (one operation), by
        the memory-management scheme: bytes moved, bookkeeping, and its kernel calls' dispatch."""
        units = inserted + removed
        self.totals.dram_bytes += units * self.moved_bytes
        if self.dispatch:
            return units * self.moved_seconds + management_calls(self.scheme, inserted, removed) * self.dispatch
        return units * self.moved_seconds

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

    def _io_stage(self, pieces: list[float], misses: float, servers: int) -> float:
        if not pieces or misses <= 0:
            return 0.0
        read_path = self.read_path
        slot = max(read_path.slot(s) for s in pieces)
        return slot * max(1.0, misses * len(pieces) * servers / read_path.depth)

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
        gate_pieces, updown_pieces = self._pieces
        k = miss * max(len(gate_pieces), len(updown_pieces))
        io_servers = max(1, int(self.read_path.depth // max(math.ceil(k), 1)))
        pred = self.predictor(layer) / clusters if self.rank_work[layer] is not None else 0.0
        m = self.unit_flops // self.row_flops
        gate = per * self.row_gather
        updown = per * ((m - 2) * self.row_gather + self.row_scatter)
        dispatch = self.unit.dispatch
        stages = powerinfer2_stages(n * pred, self._io_stage(gate_pieces, miss, io_servers), n * gate + dispatch,
                                    self._io_stage(updown_pieces, miss, io_servers), n * updown + (m - 1) * dispatch)
        self._read_ffn(units * self.unit_bytes)
        self.totals.flops += units * self.unit_flops
        compute = clusters * (pred + gate + updown) + clusters * m * dispatch / n
        return uniform_makespan(stages, clusters, {"compute": n, "io": io_servers}), compute
