"""Scenario: the deployment choices that are not hardware (precision, placement, budget, layout).

Together with the trace's model metadata a scenario fixes how many bytes each neuron, each layer's
non-FFN weights and the LM head occupy, where they live and how large the neuron cache is.
Decisions (documented in ``docs/simulator.md``):

* a neuron of a GLU FFN is 3 rows (gate, up, down-transposed) of ``d_model`` weights, 2 otherwise;
  an expert trace's unit is a routed expert of the size its ``units`` metadata records;
* ``dram_budget`` <= 1 is a fraction of the FFN bytes given to the neuron cache; a value > 1 (or a
  string with a unit) is the total DRAM for weights, of which the resident non-FFN weights are
  taken first — a budget below them is an error; ``cache_budget`` (bytes) sizes the cache itself;
* capacity is counted in *weight*: a unit of layer l weighs w_l = its bytes / the greatest common
  divisor of all layers' unit bytes (1 for every neuron trace), so a byte budget is exact when
  experts differ in size per layer;
* quantised formats carry their scales: int8 = 34 B / 32 weights (GGUF Q8_0), int4 = 18 B / 32
  weights (Q4_0), q4_1 = 20 B / 32 weights (GGUF Q4_1: a scale and a minimum per 32 weights; the
  2.5 KB INT4 rows of PowerInfer-2's 4096-wide models).

The fields after ``two_phase`` are the time model's settings (``docs/time-model.md``): compute
units and precision, memory management, intra-layer pipelining, the read path, predictor cost and
the KV cache. Their defaults are the model as it was before they existed; which profile fields a
chosen value needs is checked by :mod:`sparsesim.simulator.requirements`.
"""

from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass, fields
from fractions import Fraction
from typing import Any, Sequence

import numpy as np

from sparsesim.errors import InputError
from sparsesim.numbers import Number
from sparsesim.simulator.reorder import REORDERINGS
from sparsesim.simulator.schedule import SCHEDULES
from sparsesim.simulator.units import BYTES
from sparsesim.traceunits import NEURON, TraceUnits

BYTES_PER_WEIGHT = {"fp32": 4.0, "fp16": 2.0, "bf16": 2.0, "int8": 34 / 32, "int4": 18 / 32,
                    "q4_1": 20 / 32}
LAYOUTS = ("per-matrix", "bundled")
PARTITIONS = ("per-layer", "global")
PLACEMENTS = ("flash", "dram")
# Time model (docs/time-model.md).
COMPUTE_UNITS = ("default", "cpu", "gpu", "npu")     # default: the profile's compute section at DRAM bandwidth
HOT_UNITS = ("none", "cpu", "gpu", "npu")
COMPUTE_PRECISIONS = ("same", *BYTES_PER_WEIGHT)      # same: the storage precision
MEMORY_MANAGEMENT = ("matrix", "segmented", "page-cache", "none")
PIPELINES = ("none", "cluster")
FALSE_NEGATIVES = ("fetch", "drop")
FFN_COMPUTE = ("computed", "matrix")
PREDICT_FROM = ("layer-input", "attention-output")

MAX_BYTES = 1 << 50   # 1 PiB: far above any device's memory; a larger size is a typo
MAX_TOKENS = 2 ** 31 - 1   # trace positions are int32
MAX_WIDTH = 1 << 20        # neurons, ranks and widths: the trace format's own limit on d_ff
MAX_THREADS = 1 << 10
# The numeric fields and what they accept (sparsesim.numbers: NaN, infinities, fractions of whole
# numbers and out-of-range values are refused with one line naming the field).
NUMBERS = {
    "dram_budget": Number(minimum=0, inclusive=False, maximum=MAX_BYTES, dim=BYTES),   # <= 1: a fraction
    "cache_budget": Number(minimum=0, maximum=MAX_BYTES, dim=BYTES),   # the unit cache itself (0: by dram_budget)
    "max_request": Number(minimum=1, maximum=MAX_BYTES, integer=True, dim=BYTES),
    "lookahead": Number(minimum=0, maximum=1 << 20, integer=True),
    "insert_overhead": Number(minimum=0, maximum=1.0),   # seconds per neuron
    "warmup": Number(minimum=0, maximum=MAX_TOKENS, integer=True),
    "max_tokens": Number(minimum=0, maximum=MAX_TOKENS, integer=True),
    "prefetch_cap": Number(minimum=0, maximum=MAX_BYTES, dim=BYTES),
    "cluster_neurons": Number(minimum=0, maximum=MAX_WIDTH, integer=True),
    "compute_threads": Number(minimum=1, maximum=MAX_THREADS, integer=True),
    "io_threads": Number(minimum=1, maximum=MAX_THREADS, integer=True),
    "io_depth": Number(minimum=0, maximum=1 << 16, integer=True),
    "read_granularity": Number(minimum=0, maximum=MAX_BYTES, integer=True),   # bytes
    "predictor_rank": Number(minimum=0, maximum=MAX_WIDTH, integer=True),
    "prompt_tokens": Number(minimum=0, maximum=MAX_TOKENS, integer=True),
    "kv_dim": Number(minimum=0, maximum=MAX_WIDTH, integer=True),
}
FLAGS = ("coalesce", "warm", "two_phase", "kv_cache")


@dataclass(frozen=True)
class Scenario:
    precision: str = "fp16"
    ffn_in: str = "flash"            # flash: DRAM neuron cache; dram: on-chip cache over DRAM
    nonffn_in: str = "dram"          # dram: resident; flash: streamed every token (the naive baseline)
    dram_budget: float = 0.25        # <= 1: fraction of FFN bytes for the cache; > 1: total bytes
    cache_budget: float = 0.0        # bytes of the unit cache itself (0: sized by dram_budget)
    partition: str = "global"        # one DRAM pool for all layers, or capacity split per layer
    layout: str = "per-matrix"       # per-matrix rows, or gate+up+down bundled per neuron
    coalesce: bool = True            # neurons adjacent in storage are read in one request
    max_request: int = 1 << 20       # bytes; larger runs are split
    schedule: str = "layer"          # prefetch issued k layers ahead, per token up front, or never
    lookahead: int = 1               # k for schedule "layer"
    insert_overhead: float = 1e-7    # s per neuron inserted/evicted (bookkeeping; estimate, see docs)
    warm: bool = False               # start with the cache full (steady state) instead of empty
    warmup: int = 0                  # tokens replayed first but left out of the metrics (ChampSim's warm-up)
    max_tokens: int = 0              # replay only the first N tokens of the trace (0: all)
    prefetch_cap: float = 0.0        # bytes of prefetches in flight at most (0: no cap)
    reorder: str = "none"            # neuron order in storage: none, frequency, coactivation
    two_phase: bool = False          # gated FFNs: prefetch gate rows only; up/down of active neurons on demand
    # -- time model (docs/time-model.md); the defaults keep the model as it was -------------------
    compute_unit: str = "default"    # unit running the decode: default (profile compute + DRAM) | cpu | gpu | npu
    compute_precision: str = "same"  # precision of DRAM-resident weights and arithmetic (same: = precision)
    hot_unit: str = "none"           # unit computing the hot neurons densely (PowerInfer-2 NPU, PowerInfer GPU)
    hot_share: float = 0.0           # share of each layer's neurons, hottest first, given to hot_unit
    memory_management: str = "matrix"   # matrix (LLM in a Flash) | segmented (PowerInfer-2) | page-cache (mmap) | none
    pipeline: str = "none"           # none: a layer's reads, then its compute | cluster: overlapped per neuron cluster
    cluster_neurons: int = 0         # neurons per cluster under pipeline=cluster (0: one cluster per layer)
    compute_threads: int = 1         # compute threads sharing a layer's clusters (pipeline=cluster)
    io_threads: int = 1              # threads submitting reads; > 1 pays storage.multi_thread_factor
    io_depth: int = 0                # reads in flight at once (0: storage.queue_depth; 1: synchronous reads)
    read_granularity: int = 0        # bytes: each request rounded up to a multiple (4096: pages; 0: exact)
    predictor_rank: int = 0          # low-rank predictor cost per layer, rank r (0: the predictor's own cost)
    false_negatives: str = "fetch"   # fetch: missed neurons are read on demand | drop: not read, not computed
    predict_from: str = "layer-input"   # attention-output: a layer's prediction waits for its attention
    kv_cache: bool = False           # attention reads the KV cache of every earlier position
    prompt_tokens: int = 0           # positions before the first replayed token (KV length, prefill)
    kv_dim: int = 0                  # K (= V) width per layer (0: derived from the trace's attention parameters)
    ffn_compute: str = "computed"    # computed: gather/scatter over the computed units | matrix: a dense
                                     # product over every resident unit of the layer (LLM in a Flash)

    def __post_init__(self) -> None:
        def choice(field: str, allowed: tuple[str, ...]) -> None:
            if getattr(self, field) not in allowed:
                raise InputError(f"scenario field '{field}': {getattr(self, field)!r} is not one of {', '.join(allowed)}")
        if self.precision not in BYTES_PER_WEIGHT:
            raise InputError(f"scenario field 'precision': {self.precision!r} is not one of {', '.join(BYTES_PER_WEIGHT)}")
        choice("layout", LAYOUTS)
        choice("partition", PARTITIONS)
        choice("ffn_in", PLACEMENTS)
        choice("nonffn_in", PLACEMENTS)
        choice("schedule", SCHEDULES)
        choice("reorder", REORDERINGS)
        if self.ffn_in == "dram" and self.nonffn_in == "flash":
            raise InputError("scenario fields 'ffn_in'/'nonffn_in': non-FFN weights streamed from flash need the FFN "
                             "there too (ffn_in=flash); with ffn_in=dram the backing store is DRAM")
        for field, number in NUMBERS.items():   # frozen: a checked value (e.g. "6.5 GB" in bytes) replaces the raw one
            object.__setattr__(self, field, number.check(getattr(self, field), f"scenario field '{field}'"))
        for field in FLAGS:
            if not isinstance(getattr(self, field), bool):
                raise InputError(f"scenario field '{field}': must be true or false, got {getattr(self, field)!r}")
        self._check_time_model(choice)

    def _check_time_model(self, choice) -> None:
        choice("compute_unit", COMPUTE_UNITS)
        choice("compute_precision", COMPUTE_PRECISIONS)
        choice("hot_unit", HOT_UNITS)
        choice("memory_management", MEMORY_MANAGEMENT)
        choice("pipeline", PIPELINES)
        choice("false_negatives", FALSE_NEGATIVES)
        choice("predict_from", PREDICT_FROM)
        choice("ffn_compute", FFN_COMPUTE)
        share = self.hot_share
        if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 <= share < 1:
            raise InputError(f"scenario field 'hot_share': must be a number in [0, 1), got {share!r}")
        if (self.hot_unit == "none") != (share == 0):
            raise InputError(f"scenario field 'hot_share': {share!r} with hot_unit={self.hot_unit}; give both "
                             f"(a unit and a share > 0) or neither")
        if self.hot_unit != "none" and self.hot_unit == self.compute_unit:
            raise InputError(f"scenario field 'hot_unit': {self.hot_unit} is also compute_unit; the hot neurons "
                             f"go to another unit")
        if self.pipeline == "none" and (self.cluster_neurons or self.compute_threads != 1):
            raise InputError("scenario fields 'cluster_neurons' and 'compute_threads' apply to pipeline=cluster; "
                             f"pipeline is {self.pipeline!r}")
        if self.kv_dim and not self.kv_cache:
            raise InputError("scenario field 'kv_dim': applies with kv_cache=true")
        if self.two_phase and (self.pipeline != "none" or self.memory_management == "page-cache"):
            raise InputError("scenario field 'two_phase': its gate-row prefetches do not combine with "
                             "pipeline=cluster (whose clusters read gate rows first themselves) or with "
                             "memory_management=page-cache (pages, not rows, are read)")
        if self.pipeline != "none" and self.memory_management == "page-cache":
            raise InputError("scenario field 'pipeline': cluster reads go through the I/O thread, not through "
                             "page faults; memory_management=page-cache does not combine with it")
        if self.ffn_compute == "matrix" and self.memory_management != "matrix":
            raise InputError(f"scenario field 'ffn_compute': matrix (a dense product over the resident rows) needs "
                             f"memory_management=matrix, the scheme that keeps them one contiguous block; got "
                             f"{self.memory_management!r}")
        if self.ffn_in == "dram" and (self.memory_management != "matrix" or self.pipeline != "none"
                                      or self.hot_unit != "none" or self.read_granularity or self.io_depth
                                      or self.io_threads != 1):
            raise InputError("scenario fields of the flash read path and its management (memory_management, "
                             "pipeline, hot_unit, read_granularity, io_depth, io_threads) apply with ffn_in=flash; "
                             "with ffn_in=dram the on-chip cache is hardware-managed")

    @property
    def bytes_per_weight(self) -> float:
        return BYTES_PER_WEIGHT[self.precision]

    @property
    def arithmetic_precision(self) -> str:
        """The precision of DRAM-resident weights and arithmetic: ``compute_precision`` resolved."""
        return self.precision if self.compute_precision == "same" else self.compute_precision

    @property
    def compute_bytes_per_weight(self) -> float:
        """Bytes per weight of the DRAM-resident copy the arithmetic reads."""
        return BYTES_PER_WEIGHT[self.arithmetic_precision]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


_NAMES = [f.name for f in fields(Scenario)]
# The time model's settings: every field from compute_unit on.
TIME_MODEL_FIELDS: tuple[str, ...] = tuple(_NAMES[_NAMES.index("compute_unit"):])


@dataclass(frozen=True)
class ModelFootprint:
    """Byte sizes the timing model and the cache need, from the trace metadata and the scenario.

    Per-layer tuples hold the same value on every layer of a neuron trace; an expert trace's
    experts (and the weights each layer reads every token) may differ per layer.
    """

    n_layers: int
    d_model: int
    d_ff: tuple[int, ...]                   # units the cache holds per layer: neurons, or routed experts
    glu: bool
    bytes_per_weight: float
    layer_nonffn_bytes: tuple[float, ...]   # per layer: attention (+ norms; an expert trace's resident weights)
    head_bytes: float                       # LM head weights read once per token
    nonffn_resident_bytes: float
    unit_bytes: tuple[float, ...]           # per layer: one unit as stored (a neuron's rows, a routed expert)
    unit_flops: tuple[float, ...]           # per layer: FLOPs of one unit for one token
    kind: str = NEURON

    @classmethod
    def from_meta(cls, model: dict, scenario: Scenario, units: TraceUnits | None = None) -> "ModelFootprint":
        bpw = scenario.bytes_per_weight
        if units is not None and units.kind != NEURON:
            return cls._experts(model, scenario, units)
        if scenario.two_phase and not model.get("glu"):
            raise InputError(f"scenario field 'two_phase': needs a gated FFN (gate, up, down rows per neuron); "
                             f"model {model.get('name')!r} has 2 matrices per neuron")
        n_layers = int(model["n_layers"])
        embedding = float(model.get("embedding_params", 0))
        head = float(model.get("lm_head_params", 0))
        non_ffn = float(model["non_ffn_params"])
        attention = float(model.get("attention_params", max(non_ffn - embedding, 0.0)))
        d_model, glu = int(model["d_model"]), bool(model["glu"])
        neuron_bytes = (3 if glu else 2) * (d_model * bpw)   # matrices × row_bytes, as the rows are read
        return cls(n_layers=n_layers, d_model=d_model, d_ff=tuple(int(x) for x in model["d_ff"]), glu=glu,
                   bytes_per_weight=bpw, layer_nonffn_bytes=(attention / n_layers * bpw,) * n_layers,
                   head_bytes=head * bpw, nonffn_resident_bytes=non_ffn * bpw,
                   unit_bytes=(neuron_bytes,) * n_layers, unit_flops=(2 * (3 if glu else 2) * d_model,) * n_layers)

    @classmethod
    def _experts(cls, model: dict, scenario: Scenario, units: TraceUnits) -> "ModelFootprint":
        """Routed experts are the cached units; shared experts and dense layers' FFNs stay resident with the
        other weights a layer reads every token (``docs/moe.md``, "Replay")."""
        if scenario.two_phase:
            raise InputError("scenario field 'two_phase': applies to neuron traces (gate rows of neurons); an "
                             "expert is read whole")
        bpw = scenario.bytes_per_weight
        n_layers = units.n_layers
        unit_bytes = tuple(units.routed_unit_bytes(l, bpw) if units.count[l] else 0.0 for l in range(n_layers))
        # FLOPs: 2 per parameter per token; without a parameter count, the stored bytes at this precision.
        unit_flops = tuple(2.0 * (units.unit_params[l] if units.unit_params[l] is not None else b / bpw)
                           for l, b in enumerate(unit_bytes))
        attention = float(model.get("attention_params", 0.0)) / n_layers * bpw
        layer = []
        for l in range(n_layers):
            own = units.resident_bytes[l] if units.resident_bytes[l] is not None else attention
            shared = units.shared[l] * units.shared_unit_bytes(l, bpw) if units.shared[l] else 0.0
            layer.append(float(own) + shared)
        non_ffn = model.get("non_ffn_params")
        resident = float(non_ffn) * bpw + sum(layer) - attention * n_layers if non_ffn is not None else sum(layer)
        return cls(n_layers=n_layers, d_model=int(model.get("d_model") or 0), d_ff=tuple(units.count),
                   glu=bool(model.get("glu", True)), bytes_per_weight=bpw, layer_nonffn_bytes=tuple(layer),
                   head_bytes=float(model.get("lm_head_params", 0)) * bpw, nonffn_resident_bytes=resident,
                   unit_bytes=unit_bytes, unit_flops=unit_flops, kind=units.kind)

    @property
    def matrices(self) -> int:
        return 3 if self.glu else 2

    @property
    def row_bytes(self) -> float:
        """One matrix row (or down-projection column) of one neuron."""
        return self.d_model * self.bytes_per_weight

    def slice_bytes(self, layer: int) -> float:
        """What one unit holds of one matrix (a neuron's row; an expert's part of each matrix, taken equal):
        the piece storage requests are cut from."""
        return self.unit_bytes[layer] / self.matrices

    @property
    def neuron_bytes(self) -> float:
        return self.matrices * self.row_bytes

    @property
    def unit_size(self) -> float:
        """Bytes of the largest unit (every unit's, on a uniform trace)."""
        return max(self.unit_bytes)

    @functools.cached_property
    def uniform(self) -> bool:
        """Every unit the same size (every neuron trace)."""
        return len(set(self.unit_bytes[l] for l in range(self.n_layers) if self.d_ff[l])) <= 1

    @property
    def ffn_bytes(self) -> float:
        """Bytes of every cacheable unit (the FFN of a neuron trace; the routed experts of an expert trace)."""
        if self.uniform:
            return sum(self.d_ff) * self.unit_size
        return float(sum(d * b for d, b in zip(self.d_ff, self.unit_bytes)))

    @functools.cached_property
    def weight_bytes(self) -> Fraction:
        """Bytes of one unit of weight: the greatest common divisor of the layers' unit bytes, exactly."""
        return _fraction_gcd(self.unit_bytes[l] for l in range(self.n_layers) if self.d_ff[l])

    @functools.cached_property
    def weights(self) -> tuple[int, ...]:
        """Per layer: the weight of one unit in the cache's capacity (1 on every neuron trace)."""
        g = self.weight_bytes
        return tuple(int(Fraction(b) / g) if d else 1 for b, d in zip(self.unit_bytes, self.d_ff))

    @functools.cached_property
    def total_weight(self) -> int:
        return sum(d * w for d, w in zip(self.d_ff, self.weights))

    def cache_units(self, scenario: Scenario) -> np.ndarray:
        """The cache's capacity per partition, exactly (``docs/simulator.md``, "Capacity"): [C] in weight
        for the global pool, [C_l] in units of each layer for the per-layer partition. Rational
        arithmetic, a fractional budget read as the decimal it was written as, so 0.35 of 860 neurons is
        301 (floating point gives 300)."""
        total_weight = self.total_weight
        g = self.weight_bytes
        b = scenario.dram_budget
        scale = Fraction(BYTES_PER_WEIGHT[scenario.arithmetic_precision]) / Fraction(scenario.bytes_per_weight)
        unit = g * scale    # one weight as held in DRAM, at the compute precision (compute_precision)
        if scenario.cache_budget:
            total = min(math.floor(Fraction(scenario.cache_budget) / unit), total_weight)
        elif b <= 1:
            total = math.floor(Fraction(str(b)) * total_weight)
        else:
            resident = Fraction(self.nonffn_resident_bytes) * scale if scenario.nonffn_in == "dram" else Fraction(0)
            if b < resident:
                raise InputError(f"scenario field 'dram_budget': {b:.4g} B is smaller than the resident "
                                 f"non-FFN weights ({float(resident):.4g} B at {scenario.arithmetic_precision})")
            total = min(math.floor((Fraction(b) - resident) / unit), total_weight)
        if scenario.partition == "global":
            return np.array([total], dtype=np.int64)
        # LLM in a Flash's preallocated per-layer matrices: each layer the same share of its units
        return np.array([total * d // total_weight for d in self.d_ff], dtype=np.int64)


def _fraction_gcd(values: Sequence[float]) -> Fraction:
    fractions = [Fraction(v) for v in values]
    if not fractions:
        return Fraction(1)
    den = math.lcm(*(f.denominator for f in fractions))
    return Fraction(math.gcd(*(int(f * den) for f in fractions)), den)
