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
from sparsesim.simulator.bitset import full
from sparsesim.simulator.cache import NeuronCache
from sparsesim.simulator.engine import ReplayEngine
from sparsesim.errors import InputError
from sparsesim.numbers import parse_number
from sparsesim.simulator.metrics import summarize
from sparsesim.simulator.predictors import PREDICTORS, PredictorContext
from sparsesim.simulator.profile import HardwareProfile, load_profile
from sparsesim.simulator.reorder import apply_order, neuron_order
from sparsesim.simulator.replacement import REPLACEMENT, CacheGeometry
from sparsesim.simulator.requirements import check_time_model, refuse_unapplied
from sparsesim.simulator.residency import Residency
from sparsesim.simulator.scenario import ModelFootprint, Scenario
from sparsesim.simulator.storage import BackingStore
from sparsesim.simulator.streaming import open_streamed
from sparsesim.tracefile import Trace, mask_bytes, read_meta, read_trace

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
    if isinstance(meta.get("units"), dict) and meta["units"].get("kind") != "neuron":
        raise InputError(f"{path}: a trace of {meta['units'].get('kind')} units; the simulator replays neuron "
                         f"traces only until expert replay lands (issue 16, phase 2)")
    if stream is None:
        stream = pf.metadata.num_rows * mask_bytes(meta["model"]["d_ff"]) > IN_MEMORY_LIMIT
    return open_streamed(path) if stream else read_trace(path)


@functools.lru_cache(maxsize=2)
def _load_cached(key: tuple, path: str, stream: bool | None) -> Trace:
    return _load(path, stream)


def _need(trace: Trace, fp: ModelFootprint, dense: bool) -> np.ndarray:
    """Largest needed set per layer over the trace (every neuron without sparsity)."""
    return np.array(fp.d_ff) if dense else trace.active.max(axis=0)


def _needed_sets(trace: Trace, dense: bool) -> np.ndarray:
    if not dense:
        return trace.masks
    rows = np.stack([full(d, trace.n_bytes) for d in trace.d_ff])
    return np.broadcast_to(rows, trace.masks.shape)


def _capacity(trace: Trace, fp: ModelFootprint, scenario: Scenario, dense: bool) -> np.ndarray:
    """The cache's capacity per partition (the one rule: ``ModelFootprint.cache_units``); refuses a
    budget that cannot hold one layer step's needed set."""
    need = _need(trace, fp, dense)
    capacity = fp.cache_units(scenario)
    if scenario.partition == "global":
        ok, minimum = capacity[0] >= need.max(), int(need.max())
    else:
        units = sum(fp.d_ff)
        ok = bool(np.all(capacity >= need))
        minimum = int(max(-(-int(n) * units // d) for n, d in zip(need, fp.d_ff)))   # smallest C with ⌊C·U_l/U⌋ ≥ need_l
    if not ok:
        need_bytes = minimum * fp.neuron_bytes
        raise InputError(f"dram_budget {scenario.dram_budget}: the cache ({int(capacity.sum())} units) cannot hold one "
                         f"layer's needed set; the minimum for this trace and predictor is "
                         f"{need_bytes / fp.ffn_bytes:.4f} of the FFN ({need_bytes:.4g} B, partition {scenario.partition})")
    return capacity


def simulate(trace: str | os.PathLike | Trace, profile: str | HardwareProfile = "apple-m1-max",
             predictor: str = "oracle", cache: str = "lru", *, scenario: Scenario | None = None,
             settings: Sequence[str] = (), train_trace: str | os.PathLike | Trace | None = None,
             profile_trace: str | os.PathLike | Trace | None = None, seed: int = 0,
             baselines: bool = True, io_log: list | None = None, stream: bool | None = None) -> dict[str, Any]:
    """Replay ``trace`` and return the flat result record (see ``docs/metrics.md``).

    ``predictor`` and ``cache`` are registry names with optional parameters (``"window:k=4"``);
    ``settings`` are ``key=value`` overrides of scenario fields or dotted profile fields.
    ``train_trace`` trains predictors that learn offline; ``profile_trace`` gives offline neuron
    statistics to replacement policies (``static-pin``); both must come from other text.
    ``io_log``, if a list, receives every storage batch as scheduled (:class:`IoBatch`).
    ``stream`` reads the masks row group by row group (bounded memory); by default traces whose
    masks exceed ``IN_MEMORY_LIMIT`` bytes are streamed.
    """
    from_file = not isinstance(trace, Trace)
    trace = load_trace(trace, stream) if from_file else trace
    if trace.n_tokens == 0:
        raise InputError(f"{trace.path}: trace has no tokens")
    scenario_overrides, profile_overrides = split_settings(settings)
    scenario = dataclasses.replace(scenario or Scenario(), **scenario_overrides)
    if 0 < scenario.max_tokens < trace.n_tokens:
        trace = _first_tokens(trace, scenario.max_tokens)
    if scenario.warmup >= trace.n_tokens:
        raise InputError(f"scenario field 'warmup': {scenario.warmup} tokens leaves none of the trace's "
                         f"{trace.n_tokens} tokens to measure")
    if isinstance(profile, HardwareProfile):
        hw = profile
        if profile_overrides:
            raise InputError("profile overrides need a profile name or file, not a loaded profile")
    else:
        hw = load_profile(profile, profile_overrides)
    check_time_model(scenario, hw)
    refuse_unapplied(scenario)
    fp = ModelFootprint.from_meta(trace.model, scenario)
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
    pred_name, pred_params = parse_policy(predictor)
    cache_name, cache_params = parse_policy(cache)
    pred = PREDICTORS.create(pred_name, pred_params)
    policy = REPLACEMENT.create(cache_name, cache_params)
    pred.setup(PredictorContext.of(trace, train, seed))
    capacity = _capacity(trace, fp, scenario, pred.dense)
    if scenario.ffn_in == "dram" and hw.cache is None:
        raise InputError(f"profile {hw.name}: ffn_in=dram needs an on-chip 'cache' section in the profile")
    geometry = CacheGeometry(n_layers=trace.n_layers, d_ff=tuple(trace.d_ff), n_bytes=trace.n_bytes,
                             n_tokens=trace.n_tokens, capacity=capacity, partition=scenario.partition,
                             need_max=_need(trace, fp, pred.dense), masks=_needed_sets(trace, pred.dense),
                             profile_masks=None if profile_trace is None else profile_trace.masks)
    store = BackingStore.flash(hw.storage) if scenario.ffn_in == "flash" else BackingStore.dram(hw.dram)
    engine = ReplayEngine(trace.masks, trace.token, fp, scenario, hw, store,
                          Residency(NeuronCache(geometry, policy)), pred, io_log)
    record = _config(trace, hw, requested, predictor, cache, seed, train, profile_trace)
    record["predictor_sees_future"] = bool(pred.sees_future)
    record["policy_sees_future"] = bool(policy.sees_future)
    record["bound"] = record["predictor_sees_future"] or record["policy_sees_future"]
    record.update(summarize(engine.run(), fp, hw, store.energy_per_byte))
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
                               extra={k: v[:n] for k, v in trace.extra.items()})


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
