"""How long each piece of a layer step takes, and the DRAM bytes and FLOPs it moves.

Pure formulas of the model footprint, the scenario and the hardware profile (``docs/metrics.md``,
"Time"); the simpy processes in :mod:`sparsesim.simulator.engine` decide *when* each piece runs.
Storage batches are timed by :class:`sparsesim.simulator.storage.BackingStore`.
"""

from __future__ import annotations

from dataclasses import dataclass

from sparsesim.simulator.scenario import ModelFootprint, Scenario


@dataclass(frozen=True)
class Cost:
    seconds: float
    dram_bytes: float
    flops: float
    cache_bytes: float = 0.0     # read from the on-chip cache (``ffn_in=dram``) rather than DRAM


def _roofline(nbytes: float, flops: float, bandwidth: float, flop_rate: float, on_chip: bool = False) -> Cost:
    seconds = max(nbytes / bandwidth, flops / flop_rate)
    return Cost(seconds, 0.0, flops, nbytes) if on_chip else Cost(seconds, nbytes, flops)


class StepCosts:
    def __init__(self, footprint: ModelFootprint, scenario: Scenario, profile, predictor_flops: float):
        self.fp = footprint
        self.scenario = scenario
        self.dram_bw = profile.dram.bandwidth
        self.flop_rate = profile.compute.flops
        # With the FFN in DRAM the weights the FFN reads come from the on-chip cache.
        self.on_chip = scenario.ffn_in == "dram" and profile.cache is not None
        self.ffn_read_bw = profile.cache.bandwidth if self.on_chip else self.dram_bw
        self.nonffn = self.dense_weights(footprint.layer_nonffn_bytes)
        self.head = self.dense_weights(footprint.head_bytes)
        self.predict = predictor_flops / self.flop_rate if predictor_flops else 0.0
        self._unit_flops = 2 * footprint.matrices * footprint.d_model

    def dense_weights(self, nbytes: float) -> Cost:
        """A matrix-vector product over ``nbytes`` of weights held in DRAM."""
        return _roofline(nbytes, 2 * nbytes / self.fp.bytes_per_weight, self.dram_bw, self.flop_rate)

    def ffn(self, units: int) -> Cost:
        """The FFN over ``units`` needed units (gate/up rows and down column each)."""
        return _roofline(units * self.fp.neuron_bytes, units * self._unit_flops, self.ffn_read_bw, self.flop_rate,
                         self.on_chip)

    def gate_rows(self, units: int) -> Cost:
        """Two-phase: evaluating staged gate rows whose unit turned out inactive."""
        return _roofline(units * self.fp.row_bytes, 2 * units * self.fp.d_model, self.ffn_read_bw, self.flop_rate,
                         self.on_chip)

    def management(self, units: int) -> Cost:
        """Inserting or removing ``units`` in the DRAM cache (LLM in a Flash's preallocated matrix:
        a copy in per insertion, the last row moved into the hole per deletion, plus bookkeeping).
        Nothing when the FFN lives in DRAM: the on-chip cache is hardware-managed."""
        if self.scenario.ffn_in != "flash" or units == 0:
            return Cost(0.0, 0.0, 0.0)
        moved = 2 * units * self.fp.neuron_bytes   # read + write
        return Cost(moved / self.dram_bw + units * self.scenario.insert_overhead, moved, 0.0)
