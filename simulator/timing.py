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
    def __init__(self, footprint: ModelFootprint, scenario: Scenario, profile, predictor_flops: float,
                 totals: Totals):
        self.totals = totals
        dram_bw, flop_rate = profile.dram.bandwidth, profile.compute.flops
        self.dram_bw, self.flop_rate = dram_bw, flop_rate
        # With the FFN in DRAM the weights the FFN reads come from the on-chip cache.
        self.on_chip = scenario.ffn_in == "dram" and profile.cache is not None
        ffn_bw = profile.cache.bandwidth if self.on_chip else dram_bw
        self.bytes_per_weight = bpw = footprint.bytes_per_weight
        self._dense = {part: (nbytes, roofline(nbytes, 2 * nbytes / bpw, dram_bw, flop_rate))
                       for part, nbytes in (("nonffn", footprint.layer_nonffn_bytes), ("head", footprint.head_bytes))}
        self.predict = predictor_flops / flop_rate if predictor_flops else 0.0
        # Per-unit constants: the FFN and the gate rows are linear in the units they touch.
        self.unit_bytes = footprint.neuron_bytes
        self.unit_flops = 2 * footprint.matrices * footprint.d_model
        self.unit_seconds = roofline(self.unit_bytes, self.unit_flops, ffn_bw, flop_rate)
        self.row_bytes, self.row_flops = footprint.row_bytes, 2 * footprint.d_model
        self.row_seconds = roofline(self.row_bytes, self.row_flops, ffn_bw, flop_rate)
        # LLM in a Flash's preallocated matrix: a copy in per insertion, the last row moved into the
        # hole per deletion (a read and a write of the unit), plus bookkeeping. Nothing when the FFN
        # lives in DRAM: the on-chip cache is hardware-managed.
        managed = scenario.ffn_in == "flash"
        self.moved_bytes = 2 * self.unit_bytes if managed else 0.0
        self.moved_seconds = self.moved_bytes / dram_bw + scenario.insert_overhead if managed else 0.0

    def dense_weights(self, part: str) -> tuple[float, float]:
        """A matrix-vector product over weights held in DRAM — ``"nonffn"``: one layer's attention
        and norms, ``"head"``: the LM head. Returns (bytes of those weights, seconds)."""
        nbytes, seconds = self._dense[part]
        t = self.totals
        t.dram_bytes += nbytes
        t.flops += 2 * nbytes / self.bytes_per_weight
        return nbytes, seconds

    def _read_ffn(self, nbytes: float) -> None:
        if self.on_chip:
            self.totals.cache_bytes += nbytes
        else:
            self.totals.dram_bytes += nbytes

    def ffn(self, units: int) -> float:
        """The FFN over ``units`` needed units (gate/up rows and down column each)."""
        self._read_ffn(units * self.unit_bytes)
        self.totals.flops += units * self.unit_flops
        return units * self.unit_seconds

    def gate_rows(self, units: int) -> float:
        """Two-phase: evaluating staged gate rows whose unit turned out inactive."""
        self._read_ffn(units * self.row_bytes)
        self.totals.flops += units * self.row_flops
        return units * self.row_seconds

    def management(self, units: int) -> float:
        """Inserting or removing ``units`` in the DRAM cache."""
        self.totals.dram_bytes += units * self.moved_bytes
        return units * self.moved_seconds
