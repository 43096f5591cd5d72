"""How long each piece of a layer step takes, charging the DRAM bytes and FLOPs it moves.

Pure formulas of the model footprint, the scenario and the hardware profile (``docs/metrics.md``,
"Time"); the simpy processes in :mod:`sparsesim.simulator.engine` decide *when* each piece runs.
Storage batches are timed by :class:`sparsesim.simulator.storage.BackingStore`. Every method
returns seconds and adds its traffic to the :class:`~sparsesim.simulator.accounting.Totals` it was
given, so what is timed and what is charged for energy cannot disagree.
"""

from __future__ import annotations

from sparsesim.simulator.accounting import Totals
from sparsesim.simulator.scenario import ModelFootprint, Scenario


def roofline(nbytes: float, flops: float, bandwidth: float, flop_rate: float) -> float:
    """Seconds of a kernel that streams ``nbytes`` and does ``flops``: the slower of the two."""
    return max(nbytes / bandwidth, flops / flop_rate)


class StepCosts:
    """Per-layer costs; on a neuron trace every layer's constants are the same. A prefill batch step
    (``tokens`` > 1) reads each weight once and does the arithmetic of every token of the batch."""

    def __init__(self, footprint: ModelFootprint, scenario: Scenario, profile, predictor_flops: float,
                 totals: Totals):
        self.totals = totals
        dram_bw, flop_rate = profile.dram.bandwidth, profile.compute.flops
        self.dram_bw, self.flop_rate = dram_bw, flop_rate
        # With the FFN in DRAM the weights the FFN reads come from the on-chip cache.
        self.on_chip = scenario.ffn_in == "dram" and profile.cache is not None
        self.ffn_bw = ffn_bw = profile.cache.bandwidth if self.on_chip else dram_bw
        self.bytes_per_weight = bpw = footprint.bytes_per_weight
        self._nonffn = [(nbytes, roofline(nbytes, 2 * nbytes / bpw, dram_bw, flop_rate))
                        for nbytes in footprint.layer_nonffn_bytes]
        self._head = (footprint.head_bytes, roofline(footprint.head_bytes, 2 * footprint.head_bytes / bpw, dram_bw,
                                                      flop_rate))
        self.predict = predictor_flops / flop_rate if predictor_flops else 0.0
        # Per-unit constants: the FFN and the gate rows are linear in the units they touch.
        self.unit_bytes = footprint.unit_bytes
        self.unit_flops = footprint.unit_flops
        self.unit_seconds = [roofline(b, f, ffn_bw, flop_rate) for b, f in zip(self.unit_bytes, self.unit_flops)]
        self.row_bytes, self.row_flops = footprint.row_bytes, 2 * footprint.d_model
        self.row_seconds = roofline(self.row_bytes, self.row_flops, ffn_bw, flop_rate)
        # LLM in a Flash's preallocated matrix: a copy in per insertion, the last row moved into the
        # hole per deletion (a read and a write of the unit), plus bookkeeping. Nothing when the FFN
        # lives in DRAM: the on-chip cache is hardware-managed.
        managed = scenario.ffn_in == "flash"
        self.moved_seconds = [2 * b / dram_bw + scenario.insert_overhead if managed else 0.0 for b in self.unit_bytes]
        self.moved_bytes = [2 * b if managed else 0.0 for b in self.unit_bytes]

    def nonffn(self, layer: int, tokens: int = 1) -> tuple[float, float]:
        """One layer's attention and norms (an expert trace: every weight the layer reads but the routed
        experts), a matrix-vector product per token over weights held in DRAM. Returns (bytes, seconds)."""
        nbytes, seconds = self._nonffn[layer]
        flops = 2 * nbytes / self.bytes_per_weight * tokens
        t = self.totals
        t.dram_bytes += nbytes
        t.flops += flops
        if tokens > 1:   # a prefill batch: the weights read once, every token's arithmetic
            seconds = roofline(nbytes, flops, self.dram_bw, self.flop_rate)
        return nbytes, seconds

    def head(self) -> tuple[float, float]:
        """The LM head, once per step (a prefill batch outputs the logits of its last token only)."""
        nbytes, seconds = self._head
        t = self.totals
        t.dram_bytes += nbytes
        t.flops += 2 * nbytes / self.bytes_per_weight
        return nbytes, seconds

    def _read_ffn(self, nbytes: float) -> None:
        if self.on_chip:
            self.totals.cache_bytes += nbytes
        else:
            self.totals.dram_bytes += nbytes

    def ffn(self, layer: int, units: int, token_units: int = 0) -> float:
        """The FFN of ``layer`` over ``units`` needed units; a prefill batch computes ``token_units``
        (Σ over its tokens of each token's units) from those ``units`` read once."""
        nbytes = units * self.unit_bytes[layer]
        self._read_ffn(nbytes)
        if token_units <= units:
            self.totals.flops += units * self.unit_flops[layer]
            return units * self.unit_seconds[layer]
        flops = token_units * self.unit_flops[layer]
        self.totals.flops += flops
        return roofline(nbytes, flops, self.ffn_bw, self.flop_rate)

    def gate_rows(self, units: int) -> float:
        """Two-phase: evaluating staged gate rows whose unit turned out inactive."""
        self._read_ffn(units * self.row_bytes)
        self.totals.flops += units * self.row_flops
        return units * self.row_seconds

    def management(self, layer: int, units: int) -> float:
        """Inserting or removing ``units`` of ``layer`` in the DRAM cache."""
        self.totals.dram_bytes += units * self.moved_bytes[layer]
        return units * self.moved_seconds[layer]
