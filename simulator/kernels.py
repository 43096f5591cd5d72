"""Compute kernels: how long a unit takes for a piece of work, by a roofline per kernel kind.

A kernel call moves ``bytes`` between memory and the unit and does ``flops`` of arithmetic. On a
unit with memory bandwidth ``BW`` and peak rate ``P`` at the compute precision, its roofline time is
``max(bytes / BW, flops / P)`` (memory-bound when the first term is larger). What a real kernel
reaches is a share of that, its *efficiency* (a profile field per unit and kind, cited or measured;
absent, 1 — the roofline itself), plus a fixed *dispatch* overhead per call (kernel launch, thread
wake-up)::

    t = max(bytes / BW, flops / P) / efficiency + calls * dispatch

Kinds (``KINDS``): ``dense`` — a matrix-vector product over a contiguous matrix; ``gather`` — the
rows of selected neurons (gate/up rows of the active set); ``scatter`` — the columns of selected
neurons accumulated into the output (down projection); ``copy`` — moving bytes within memory
(cache management; its bytes count read + write).

The compute precision is separate from the storage precision (LLM in a Flash stores fp16 and
computes fp32 on the CPU): :class:`Unit` takes its peak for the compute precision, and the work
builders take bytes per weight at that precision.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sparsesim.simulator.profile import HardwareProfile, require

KINDS = ("dense", "gather", "scatter", "copy")
# Compute precision -> the unit field holding its peak rate (int4 is unpacked to int8 for arithmetic).
PEAK_FIELD = {"fp32": "flops_fp32", "fp16": "flops_fp16", "bf16": "flops_fp16", "int8": "ops_int8",
              "int4": "ops_int8", "q4_1": "ops_int8"}


def roofline(nbytes: float, flops: float, bandwidth: float, flop_rate: float) -> float:
    """Seconds of a kernel that streams ``nbytes`` and does ``flops``: the slower of the two."""
    return max(nbytes / bandwidth, flops / flop_rate)


@dataclass(frozen=True)
class Work:
    """What one or more kernel calls do: bytes moved, arithmetic, calls (for the dispatch cost)."""

    bytes: float = 0.0
    flops: float = 0.0
    calls: int = 0

    def __add__(self, other: "Work") -> "Work":
        return Work(self.bytes + other.bytes, self.flops + other.flops, self.calls + other.calls)

    def __mul__(self, times: float) -> "Work":
        return Work(self.bytes * times, self.flops * times, int(round(self.calls * times)))

    __rmul__ = __mul__


@dataclass(frozen=True)
class Unit:
    """A compute unit as the kernels see it: bandwidth, peak rate at one precision, overheads."""

    name: str
    bandwidth: float                  # B/s to the memory its operands live in
    peak: float                       # FLOP/s (or OP/s) at the compute precision
    dispatch: float = 0.0             # s per kernel call
    efficiency: dict[str, float] = field(default_factory=dict)   # kind -> share of the roofline (absent: 1)

    @classmethod
    def from_profile(cls, profile: HardwareProfile, name: str, precision: str, needed_by: str) -> "Unit":
        """The unit ``name`` of ``profile`` computing at ``precision``.

        ``default`` is the profile's ``compute`` section at DRAM bandwidth with no overheads: the
        model before units existed. Otherwise ``name`` is ``cpu``, ``gpu`` or ``npu``; a missing
        bandwidth or peak for the precision is a one-line error naming it and ``needed_by``.
        """
        if name == "default":
            return cls("default", profile.dram.bandwidth, profile.compute.flops)
        bandwidth = require(profile, f"{name}.bandwidth", needed_by)
        peak = require(profile, f"{name}.{PEAK_FIELD[precision]}", f"{needed_by} ({precision} arithmetic)")
        spec = profile.unit(name)
        efficiency = {kind: getattr(spec, f"{kind}_efficiency") for kind in KINDS
                      if getattr(spec, f"{kind}_efficiency") is not None}
        return cls(name, bandwidth, peak, spec.dispatch or 0.0, efficiency)

    def roofline(self, work: Work) -> float:
        """max(bytes / bandwidth, flops / peak): the time no kernel can beat."""
        return roofline(work.bytes, work.flops, self.bandwidth, self.peak)

    def bound(self, work: Work) -> str:
        """``memory`` or ``compute``: which roofline term is larger."""
        return "memory" if work.bytes / self.bandwidth >= work.flops / self.peak else "compute"

    def time(self, kind: str, work: Work) -> float:
        """Seconds for ``work`` done by kernels of ``kind`` (roofline / efficiency + dispatch)."""
        if kind not in KINDS:
            raise ValueError(f"unknown kernel kind {kind!r}")   # a caller bug, not input
        return self.roofline(work) / self.efficiency.get(kind, 1.0) + work.calls * self.dispatch

    def copy_bandwidth(self) -> float:
        """B/s of a memory copy, counting read and write bytes (cache management)."""
        return self.bandwidth * self.efficiency.get("copy", 1.0)


# --- work builders -----------------------------------------------------------------------------


def matvec(rows: float, cols: float, bytes_per_weight: float, calls: int = 1) -> Work:
    """A matrix-vector product over a rows x cols weight matrix (batch 1)."""
    return Work(rows * cols * bytes_per_weight, 2.0 * rows * cols, calls)


def ffn_neurons(neurons: float, d_model: int, matrices: int, bytes_per_weight: float) -> dict[str, Work]:
    """The FFN over ``neurons`` selected neurons, split by kernel kind.

    Each neuron owns one row of every input matrix (gate and up for a GLU FFN, fc1 otherwise),
    read by a ``gather``, and one column of the output matrix, accumulated by a ``scatter``.
    """
    rows_in = matrices - 1
    return {"gather": Work(neurons * rows_in * d_model * bytes_per_weight, 2.0 * neurons * rows_in * d_model,
                           rows_in),
            "scatter": Work(neurons * d_model * bytes_per_weight, 2.0 * neurons * d_model, 1)}


def ffn_dense(d_ff: int, d_model: int, matrices: int, bytes_per_weight: float) -> Work:
    """The whole FFN of a layer as dense matrix-vector products (one call per matrix)."""
    return matvec(d_ff, d_model * matrices, bytes_per_weight, calls=matrices)
