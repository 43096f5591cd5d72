"""``simulate()``: wire a trace, a hardware profile, a scenario and two policies into one run.

This file only connects the pieces (Vidur's rule); the behaviour lives in the engine, the cache,
the storage model and the policies. The result is one flat record: configuration, metrics and
provenance (trace and profile hashes, tool version), as written to results tables.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from sparsesim import __version__
from sparsesim.simulator import bitset, neuronset
from sparsesim.simulator.bitset import full
from sparsesim.simulator.cache import NeuronCache
from sparsesim.simulator.engine import ReplayEngine
from sparsesim.errors import InputError
from sparsesim.numbers import SEED, parse_number
from sparsesim.simulator.metrics import summarize
from sparsesim.simulator.predictors import PREDICTORS, PredictorContext
from sparsesim.simulator.profile import HardwareProfile, load_profile
from sparsesim.simulator.reorder import apply_order, neuron_order
from sparsesim.simulator.replacement import REPLACEMENT, CacheGeometry
from sparsesim.simulator.requirements import check_time_model, check_trace_fit
from sparsesim.simulator.residency import Residency
from sparsesim.simulator.scenario import ModelFootprint, Scenario
from sparsesim.simulator.steps import ReplaySteps, has_prefill, replay_steps
from sparsesim.simulator.storage import BackingStore
from sparsesim.simulator.streaming import open_streamed
from sparsesim.tracefile import Trace, mask_bytes, popcount_rows, read_meta, read_trace
from sparsesim.traceunits import NEURON

SCENARIO_FIELDS = {f.name: f.type for f in dataclasses.fields(Scenario)}


def parse_policy(spec: str) -> tuple[str, dict[str, Any]]:
    """``"window:k=4"`` -> ``("window", {"k": 4})``; values parsed as int, float, bool or str."""
    name, _, rest = spec.partition(":")
    params: dict[str, Any] = {}
    for item in filter(None, rest.split(",")):
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise InputError(f"policy {spec!r}: parameters must look like name:key=value,key=value")
        params[key.strip()] = parse_value(value.strip())
    return name.strip(), params


def parse_value(text: str) -> Any:
    """``"true"`` -> True, ``"4"`` -> 4, ``"0.5"`` -> 0.5, else the text (ranges: sparsesim.numbers.Number)."""
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    number = parse_number(text)
    return text if number is None else number


def split_settings(settings: Sequence[str]) -> tuple[dict[str, Any], list[str]]:
    """``--set key=value``: scenario fields go to the scenario, dotted keys to the profile."""
    scenario: dict[str, Any] = {}
    profile: list[str] = []
    for item in settings:
        key, eq, value = item.partition("=")
        if not eq:
            raise InputError(f"--set {item!r}: expected key=value")
        key = key.strip()
        if "." in key:
            profile.append(f"{key}={value}")
        elif key in SCENARIO_FIELDS:
            scenario[key] = parse_value(value.strip())
        else:
            raise InputError(f"--set {key!r}: not a scenario field ({', '.join(SCENARIO_FIELDS)}) "
                             f"nor a dotted profile field such as storage.peak_bandwidth")
    return scenario, profile


IN_MEMORY_LIMIT = 2 << 30


def load_trace(path: str | os.PathLike, stream: bool | None = None) -> Trace:
    """Read a trace whole, or streamed when asked or when its masks would exceed ``IN_MEMORY_LIMIT``.

    The last traces read stay cached per process (keyed by path, size and modification time), so
    a sweep worker running many configurations on one trace reads it once.
    """
    st = Path(path).stat() if Path(path).is_file() else None
    key = (str(Path(path).resolve()), st.st_size, st.st_mtime_ns) if st else None
    return _load_cached(key, str(path), stream) if key else _load(str(path), stream)


def _load(path: str, stream: bool | None) -> Trace:
    meta, pf = read_meta(path)
    if stream is None:
        neurons = not isinstance(meta.get("units"), dict) or meta["units"].get("kind", NEURON) == NEURON
        stream = neurons and pf.metadata.num_rows * mask_bytes(meta["model"]["d_ff"]) > IN_MEMORY_LIMIT
    return open_streamed(path) if stream else read_trace(path)


@functools.lru_cache(maxsize=2)
def _load_cached(key: tuple, path: str, stream: bool | None) -> Trace:
    return _load(path, stream)


def _need(trace: Trace, steps: ReplaySteps, fp: ModelFootprint, dense: bool,
          hot: np.ndarray | None = None) -> np.ndarray:
    """Largest needed set per layer over the decode step rows (every unit without sparsity, a hot
    unit's units apart: they are never needed from the cache); a prefill batch's larger set streams
    what does not fit (``docs/simulator.md``, "Steps")."""
    if dense:
        return np.array(fp.d_ff) - (0 if hot is None else popcount_rows(hot))
    if steps.phase is None and fp.kind == NEURON:
        return trace.active.max(axis=0)
    rows = steps.decode_rows()
    if rows.size == 0:
        return np.zeros(fp.n_layers, dtype=np.int64)
    return np.bitwise_count(np.asarray(steps.masks)[rows]).sum(axis=-1, dtype=np.int64).max(axis=0)


def _needed_sets(steps: ReplaySteps, n_bytes: int, d_ff: list[int], dense: bool,
                 hot: np.ndarray | None = None) -> np.ndarray:
    if not dense:
        return steps.masks
    rows = np.stack([full(d, n_bytes) for d in d_ff])
    if hot is not None:
        rows &= ~hot
    return np.broadcast_to(rows, steps.masks.shape)


def _hot_rows(trace: Trace, profile_trace: Trace | None, share: float) -> np.ndarray:
    """[L, n_bytes] packed: each layer's hottest ⌊share · d_ff⌋ units by activation frequency in the
    profiling trace (else the replayed trace: a bound), ties to the lower index."""
    source = np.asarray((profile_trace or trace).masks)
    freq = bitset.frequency(source).astype(float)
    hot = np.zeros(freq.shape, dtype=bool)
    for l, d in enumerate(trace.d_ff):
        hot[l, np.lexsort((np.arange(d), -freq[l, :d]))[:int(share * d)]] = True
    return np.packbits(hot, axis=1, bitorder="little")[:, :trace.n_bytes]


def _without(trace: Trace | None, hot: np.ndarray) -> Trace | None:
    """The trace with the hot units cleared from every mask: the part the compute unit and the cache see."""
    if trace is None:
        return None
    masks = np.asarray(trace.masks) & ~hot
    return dataclasses.replace(trace, masks=masks, active=popcount_rows(masks).astype(np.int32))


def _capacity(need: np.ndarray, fp: ModelFootprint, scenario: Scenario, hot: np.ndarray | None = None) -> np.ndarray:
    """The cache's capacity per partition (the one rule: ``ModelFootprint.cache_units``, less a hot
    unit's resident units); refuses a budget that cannot hold one layer step's needed set."""
    capacity = fp.cache_units(scenario)
    if hot is not None:
        hot_units = popcount_rows(hot)
        capacity = capacity - (hot_units.sum() if scenario.partition == "global" else hot_units)
        if np.any(capacity < 0):
            raise InputError(f"scenario field 'hot_share': the hot units ({int(hot_units.sum())}, resident in DRAM) take "
                             f"more than dram_budget {scenario.dram_budget} gives the FFN "
                             f"({int(fp.cache_units(scenario).sum())} units)")
    weights = np.asarray(fp.weights)
    if scenario.partition == "global":
        minimum = int((need * weights).max())
        ok = capacity[0] >= minimum
    else:
        total = fp.total_weight
        ok = bool(np.all(capacity >= need))
        minimum = int(max(-(-int(n) * total // d) for n, d in zip(need, fp.d_ff) if d))   # smallest C: ⌊C·U_l/W⌋ ≥ need_l
    if not ok:
        need_bytes = float(minimum * fp.weight_bytes)
        asked = (f"cache_budget {scenario.cache_budget:.6g} B" if scenario.cache_budget
                 else f"dram_budget {scenario.dram_budget}")
        raise InputError(f"{asked}: the cache ({_capacity_bytes(capacity, fp, scenario):.6g} B) cannot hold one layer "
                         f"step's needed set; the minimum for this trace and predictor is "
                         f"{need_bytes / fp.ffn_bytes:.4f} of the {'FFN' if fp.kind == NEURON else 'experts'} "
                         f"({need_bytes:.6g} B, partition {scenario.partition})")
    return capacity


def _capacity_bytes(capacity: np.ndarray, fp: ModelFootprint, scenario: Scenario) -> float:
    """Bytes the cache holds at most."""
    if scenario.partition == "global":
        return float(int(capacity[0]) * fp.weight_bytes)
    return float(sum(int(c) * b for c, b in zip(capacity, fp.unit_bytes)))


def _cycle(trace: Trace, fp: ModelFootprint, capacity_bytes: float) -> dict[str, Any]:
    """The token cycle of an expert trace — every layer's top-k experts — and whether the budget is below
    it (global LRU then hits nothing: ``docs/moe.md``); not defined for neuron traces."""
    if fp.kind == NEURON:
        return {"cycle_bytes": float("nan"), "flooding_bytes": float("nan"), "budget_below_cycle": False}
    cycle = trace.units.cycle_bytes(fp.bytes_per_weight)
    return {"cycle_bytes": cycle, "flooding_bytes": trace.units.flooding_bytes(fp.bytes_per_weight),
            "budget_below_cycle": bool(capacity_bytes < cycle)}


def simulate(trace: str | os.PathLike | Trace, profile: str | HardwareProfile = "apple-m1-max",
             predictor: str = "oracle", cache: str = "lru", *, scenario: Scenario | None = None,
             settings: Sequence[str] = (), train_trace: str | os.PathLike | Trace | None = None,
             profile_trace: str | os.PathLike | Trace | None = None, seed: int = 0,
             baselines: bool = True, io_log: list | None = None, lookup_log: list | None = None,
             stream: bool | None = None) -> dict[str, Any]:
    """Replay ``trace`` and return the flat result record (see ``docs/metrics.md``).

    ``predictor`` and ``cache`` are registry names with optional parameters (``"window:k=4"``);
    ``settings`` are ``key=value`` overrides of scenario fields or dotted profile fields.
    ``train_trace`` trains predictors that learn offline; ``profile_trace`` gives offline neuron
    statistics to replacement policies (``static-pin``); both must come from other text.
    ``io_log``, if a list, receives every storage batch as scheduled (:class:`IoBatch`); ``lookup_log``,
    if a list, every lookup as ``(step row, layer, hit, late, staged, miss)``, the sets as integers
    (bit i = unit i; step rows: :class:`~sparsesim.simulator.steps.ReplaySteps`).
    ``stream`` reads the masks row group by row group (bounded memory); by default traces whose
    masks exceed ``IN_MEMORY_LIMIT`` bytes are streamed.
    """
    seed = SEED.check(seed, "seed")
    from_file = not isinstance(trace, Trace)
    trace = load_trace(trace, stream) if from_file else trace
    if trace.n_tokens == 0:
        raise InputError(f"{trace.path}: trace has no tokens")
    scenario_overrides, profile_overrides = split_settings(settings)
    scenario = dataclasses.replace(scenario or Scenario(), **scenario_overrides)
    if 0 < scenario.max_tokens < trace.n_tokens:
        trace = _first_tokens(trace, scenario.max_tokens)

    if isinstance(profile, HardwareProfile):
        hw = profile
        if profile_overrides:
            raise InputError("profile overrides need a profile name or file, not a loaded profile")
    else:
        hw = load_profile(profile, profile_overrides)
    check_time_model(scenario, hw)
    fp = ModelFootprint.from_meta(trace.model, scenario, trace.units)
    train = _companion(train_trace, trace, "training")
    profile_trace = _companion(profile_trace, trace, "profiling")
    requested = scenario   # recorded as asked; the replay below may run on reordered masks
    if scenario.reorder != "none":  # every mask the run sees moves to the new storage order
        orders = neuron_order(np.asarray((profile_trace or trace).masks), tuple(trace.d_ff), scenario.reorder)
        trace, train, profile_trace = (None if t is None else dataclasses.replace(
            t, masks=apply_order(np.asarray(t.masks), orders),
            extra={k: apply_order(np.asarray(v), orders) for k, v in t.extra.items()})
            for t in (trace, train, profile_trace))
        scenario = dataclasses.replace(scenario, reorder="none")
    check_trace_fit(scenario, fp.kind, has_prefill(trace))
    originals = (trace, train, profile_trace)   # the baselines split off the hot units themselves
    hot = hot_accesses = None
    if scenario.hot_unit != "none":   # the hot unit's units stay resident; the rest of the run sees the cold part
        if not isinstance(trace.masks, np.ndarray):
            raise InputError(f"{trace.path}: scenario field 'hot_unit' needs the trace in memory (it is streamed)")
        hot = _hot_rows(trace, profile_trace, scenario.hot_share)
        hot_accesses = int(popcount_rows(np.asarray(trace.masks)[scenario.warmup:] & hot).sum())
        trace, train, profile_trace = (_without(t, hot) for t in originals)
    steps = replay_steps(trace)
    if scenario.warmup >= steps.n_steps:
        raise InputError(f"scenario field 'warmup': {scenario.warmup} steps leaves none of the trace's "
                         f"{steps.n_steps} steps to measure (a prefill batch is one step)")
    pred_name, pred_params = parse_policy(predictor)
    cache_name, cache_params = parse_policy(cache)
    pred = PREDICTORS.create(pred_name, pred_params)
    policy = REPLACEMENT.create(cache_name, cache_params)
    pred.setup(PredictorContext.of(trace, train, seed, steps))
    if scenario.false_negatives == "drop" and (pred_name == "none" or scenario.schedule == "none"):
        raise InputError("scenario field 'false_negatives': drop computes the predicted set, so it needs a predictor "
                         f"and a schedule that predicts (predictor {pred_name!r}, schedule {scenario.schedule!r})")
    need = _need(trace, steps, fp, pred.dense, hot)
    capacity = _capacity(need, fp, scenario, hot)
    if scenario.ffn_in == "dram" and hw.cache is None:
        raise InputError(f"profile {hw.name}: ffn_in=dram needs an on-chip 'cache' section in the profile")
    geometry = CacheGeometry(n_layers=trace.n_layers, d_ff=tuple(trace.d_ff), n_bytes=trace.n_bytes,
                             n_tokens=steps.n_steps, capacity=capacity, partition=scenario.partition,
                             need_max=need, masks=_needed_sets(steps, trace.n_bytes, trace.d_ff, pred.dense, hot),
                             profile_masks=None if profile_trace is None else profile_trace.masks, weight=fp.weights,
                             outside=hot)
    store = BackingStore.flash(hw.storage) if scenario.ffn_in == "flash" else BackingStore.dram(hw.dram)
    engine = ReplayEngine(steps, fp, scenario, hw, store, Residency(NeuronCache(geometry, policy)), pred, io_log,
                          lookup_log, model=trace.model,
                          hot=None if hot is None else [neuronset.from_row(row) for row in hot])
    record = _config(trace, hw, requested, predictor, cache, seed, train, profile_trace)
    record["cache_capacity_bytes"] = _capacity_bytes(capacity, fp, scenario)
    record.update(_cycle(trace, fp, record["cache_capacity_bytes"]))
    record["predictor_sees_future"] = bool(pred.sees_future)
    record["policy_sees_future"] = bool(policy.sees_future)
    record["hot_set_sees_future"] = hot is not None and originals[2] is None
    record["bound"] = record["predictor_sees_future"] or record["policy_sees_future"] or record["hot_set_sees_future"]
    result = engine.run()
    result.counts.totals.hot_accesses = hot_accesses or 0
    record.update(summarize(result, fp, hw, store.energy_per_byte))
    record["trace_unit"] = fp.kind
    trace, train, profile_trace = originals
    if baselines:
        for name in ("dense", "none"):
            key = (trace.path, trace.sha256, hw.sha256, requested, cache, name, seed,
                   train.sha256 if train else "", profile_trace.sha256 if profile_trace else "")
            if pred_name == name:
                base = record["time_per_token_s"]
            elif from_file and key in _BASELINES:   # deterministic: a sweep needs each baseline once
                base = _BASELINES[key]
            else:
                base = _baseline_time(trace, hw, name, cache, scenario, train, profile_trace, seed)
            if from_file:
                _BASELINES[key] = base
                while len(_BASELINES) > 512:
                    _BASELINES.pop(next(iter(_BASELINES)))
            record[f"speedup_vs_{name}"] = base / record["time_per_token_s"]
    return record


_BASELINES: dict[tuple, float] = {}


def _baseline_time(trace: Trace, hw: HardwareProfile, name: str, cache: str,
                   scenario: Scenario, train: Trace | None, profile_trace: Trace | None, seed: int) -> float:
    """Time per token of a baseline on the same profile and budget (NaN if it cannot run there).

    Without sparsity a layer's whole FFN must fit; when per-layer slices of the budget are too
    small for that, the dense baseline streams through one global pool instead.
    """
    tries = [scenario]
    if name == "dense" and scenario.partition == "per-layer":
        tries.append(dataclasses.replace(scenario, partition="global"))
    for sc in tries:
        try:
            return simulate(trace, hw, name, cache, scenario=sc, train_trace=train, profile_trace=profile_trace,
                            seed=seed, baselines=False)["time_per_token_s"]
        except InputError:
            continue
    return float("nan")


def _first_tokens(trace: Trace, n: int) -> Trace:
    if not isinstance(trace.masks, np.ndarray):
        raise InputError(f"{trace.path}: the 'max_tokens' limit needs the trace in memory (it is streamed)")
    return dataclasses.replace(trace, seq=trace.seq[:n], pos=trace.pos[:n], token=trace.token[:n],
                               masks=trace.masks[:n], active=trace.active[:n],
                               extra={k: v[:n] for k, v in trace.extra.items()},
                               columns={k: v[:n] for k, v in trace.columns.items()})


def _companion(other: str | os.PathLike | Trace | None, trace: Trace, role: str) -> Trace | None:
    """Load a training/profiling trace and check it comes from the same model shape."""
    if other is None:
        return None
    other = other if isinstance(other, Trace) else read_trace(other)
    if other.d_ff != trace.d_ff or other.n_layers != trace.n_layers:
        raise InputError(f"{other.path}: {role} trace has another model shape ({other.n_layers} layers, "
                         f"d_ff {other.d_ff[0]}) than {trace.path} ({trace.n_layers} layers, d_ff {trace.d_ff[0]})")
    return other


def _config(trace: Trace, hw: HardwareProfile, scenario: Scenario, predictor: str, cache: str, seed: int,
            train: Trace | None, profile_trace: Trace | None) -> dict[str, Any]:
    record: dict[str, Any] = {
        "trace": str(trace.path),
        "trace_name": Path(trace.path).name,
        "trace_sha256": trace.sha256,
        "trace_kind": trace.meta.get("kind", "traced"),
        "model": trace.model["name"],
        "profile": hw.name,
        "profile_sha256": hw.sha256,
        "predictor": predictor,
        "cache": cache,
        "seed": seed,
        "train_trace_sha256": train.sha256 if train is not None else "",
        "profile_trace_sha256": profile_trace.sha256 if profile_trace is not None else "",
        "sparsesim_version": __version__,
    }
    record.update(scenario.to_dict())
    return record
