"""Sweep specs: a YAML file that names traces, profiles and setting grids (``docs/experiments.md``).

:func:`load_spec` reads and validates a spec without running anything; :func:`expand` turns it
into the deterministic, ordered list of :class:`RunConfig` the runner executes. Every problem is
one :class:`InputError` line naming the spec file and the field. A run's ``run_id`` is a hash of
its canonical configuration, including the SHA-256 of its trace and profile, so a rerun finds the
runs it already has and a changed trace file is not mistaken for an old one.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import glob
import hashlib
import inspect
import itertools
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import numpy as np
import yaml

from sparsesim.errors import InputError
from sparsesim.inputs import bounded_glob, read_text
from sparsesim.limits import SWEEP_RUNS
from sparsesim.numbers import SEED, Number
from sparsesim.simulator.predictors import PREDICTORS
from sparsesim.simulator.profile import SETTABLE_FIELDS, list_profiles, load_profile
from sparsesim.simulator.replacement import REPLACEMENT
from sparsesim.simulator.scenario import Scenario
from sparsesim.simulator.simulate import SCENARIO_FIELDS, parse_policy, simulate, split_settings
from sparsesim.simulator.synth import synthesize
from sparsesim.tracefile import file_sha256
from sparsesim.simulator.units import BYTES

SPEC_KEYS = ("name", "description", "traces", "profiles", "grid", "zip", "sample", "fixed", "baselines",
             "root", "confine")
SAMPLE_KEYS = ("method", "n", "seed", "ranges")
SAMPLE_METHODS = ("random", "latin-hypercube")
POLICY_SETTINGS = {"predictor": PREDICTORS, "cache": REPLACEMENT}
TRACE_SETTINGS = ("train_trace", "profile_trace")
SETTINGS = (*POLICY_SETTINGS, "seed", *TRACE_SETTINGS, *SCENARIO_FIELDS, *SETTABLE_FIELDS)
# synthesize() keyword arguments a spec may give for a synthetic trace (paths and UI flags excluded).
SYNTH_KEYS = tuple(name for name in inspect.signature(synthesize).parameters
                   if name not in ("out", "like", "progress"))
_SIMULATE_DEFAULTS = {name: p.default for name, p in inspect.signature(simulate).parameters.items()}


@dataclass(frozen=True)
class TraceInput:
    """One trace of the spec: a file, or synthesize() arguments materialized by the runner."""
    label: str                        # as it appears in run configs: path relative to root, or "synth-<hash>"
    path: Path | None = None          # the file (None until a synthetic trace is materialized)
    synth: Mapping[str, Any] | None = None
    companions: Mapping[str, str] = dataclasses.field(default_factory=dict)   # train_trace/profile_trace labels


@dataclass(frozen=True)
class SweepSpec:
    path: Path
    name: str
    root: Path
    traces: tuple[TraceInput, ...]
    profiles: tuple[str, ...]                 # preset names, or resolved file paths
    points: tuple[Mapping[str, Any], ...]     # setting combinations: grid x zip x sample, plus fixed
    baselines: bool
    text: str                                 # the spec file as written
    sha256: str


@dataclass(frozen=True)
class RunConfig:
    """Everything one run needs, in a form a worker process (or Dask worker) can take."""
    run_id: str
    sweep: str
    trace: str                        # absolute path read by the worker
    profile: str                      # preset name or absolute path
    predictor: str
    cache: str
    seed: int
    settings: tuple[str, ...]         # "key=value" for simulate(settings=...)
    train_trace: str | None
    profile_trace: str | None
    baselines: bool
    config: str                       # canonical JSON hashed into run_id
    columns: Mapping[str, Any]        # identity columns every result row carries, failed or not


class _Checker:
    """Error messages that name the spec file and the field."""

    def __init__(self, path: Path):
        self.path = path

    def fail(self, field: str, problem: str) -> InputError:
        return InputError(f"{self.path}: {field}: {problem}" if field else f"{self.path}: {problem}")

    def unknown(self, field: str, key: Any, known: Iterable[str]) -> InputError:
        known = list(known)
        close = difflib.get_close_matches(str(key), known, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else f" (known: {', '.join(known)})"
        where = f"{field}.{key}" if field else str(key)
        return self.fail(where, f"unknown key{hint}")

    def keys(self, data: Mapping, known: Iterable[str], field: str = "") -> None:
        known = tuple(known)
        for key in data:
            if key not in known:
                raise self.unknown(field, key, known)

    def mapping(self, value: Any, field: str) -> Mapping:
        if not isinstance(value, Mapping):
            raise self.fail(field, f"expected a mapping, got {_kind(value)}")
        return value

    def values(self, value: Any, field: str) -> list:
        if not isinstance(value, list):
            raise self.fail(field, f"expected a list of values, got {_kind(value)}")
        if not value:
            raise self.fail(field, "empty list: give at least one value")
        return value


def _kind(value: Any) -> str:
    return "a mapping" if isinstance(value, Mapping) else "a list" if isinstance(value, list) else repr(value)


def setting_text(value: Any) -> str:
    """The text a setting value is passed to simulate() as; also its canonical form in run ids."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    return str(value)


# ---------------------------------------------------------------------------------------------
# Loading


def load_spec(path: str | Path) -> SweepSpec:
    """Read and validate a spec file; nothing is run or written."""
    path = Path(path)
    check = _Checker(path)
    if not os.path.lexists(path):
        raise check.fail("", "no such spec file")
    text = read_text(path)
    try:
        data = yaml.safe_load(text)
    except (yaml.YAMLError, ValueError, RecursionError) as e:   # ValueError: an impossible date; deep nesting
        raise check.fail("", "not valid YAML: " + " ".join(str(e).split())) from None
    data = check.mapping(data, "")
    check.keys(data, SPEC_KEYS)
    for key in ("name", "traces", "profiles"):
        if key not in data:
            raise check.fail(key, "missing (required keys: name, traces, profiles)")
    name = data["name"]
    if not isinstance(name, str) or not name.strip():
        raise check.fail("name", "expected a non-empty string")
    confine = _boolean(check, data.get("confine", False), "confine")
    root = _root(check, data.get("root", "."), confine)
    locate = _Locator(check, root, confine)
    traces = _traces(check, data["traces"], locate)
    profiles = tuple(_profile(check, p, f"profiles[{i}]", locate)
                     for i, p in enumerate(check.values(data["profiles"], "profiles")))
    points = _points(check, data, locate, profiles)
    for i, trace in enumerate(traces):
        for key in trace.companions:
            if any(key in point for point in points):
                raise check.fail(f"traces[{i}].{key}", "also given as a setting; give it per trace or as a setting, "
                                                       "not both")
    SWEEP_RUNS.check(len(traces) * len(profiles) * len(points), str(path))
    return SweepSpec(path=path.resolve(), name=name.strip(), root=root, traces=traces, profiles=profiles,
                     points=points, baselines=_boolean(check, data.get("baselines", True), "baselines"),
                     text=text, sha256=hashlib.sha256(text.encode()).hexdigest())


def _boolean(check: _Checker, value: Any, field: str) -> bool:
    if not isinstance(value, bool):
        raise check.fail(field, f"expected true or false, got {_kind(value)}")
    return value


def _root(check: _Checker, value: Any, confine: bool) -> Path:
    if not isinstance(value, str) or not value.strip():
        raise check.fail("root", "expected a directory path (relative to the spec file)")
    spec_dir = check.path.resolve().parent
    root = _resolve(check, spec_dir / value, "root")
    if not _exists(check, root, "root", Path.is_dir):
        raise check.fail("root", f"no such directory: {root}")
    if confine and not root.is_relative_to(spec_dir):
        raise check.fail("root", f"{root} is outside the spec's directory {spec_dir} (confine: true)")
    return root


class _Locator:
    """Resolves paths relative to ``root``; with ``confine`` refuses any that leave it."""

    def __init__(self, check: _Checker, root: Path, confine: bool):
        self.check, self.root, self.confine = check, root, confine

    def inside(self, path: Path, field: str) -> Path:
        resolved = _resolve(self.check, path, field)
        if self.confine and not resolved.is_relative_to(self.root):
            raise self.check.fail(field, f"{path} resolves outside root {self.root} (confine: true)")
        return resolved

    def file(self, value: Any, field: str) -> Path:
        if not isinstance(value, str) or not value.strip():
            raise self.check.fail(field, f"expected a file path, got {_kind(value)}")
        path = self.inside(self.root / value, field)
        if not _exists(self.check, path, field, Path.is_file):
            raise self.check.fail(field, f"no such file: {value} (relative to {self.root})")
        return path

    def pattern(self, value: str, field: str) -> list[Path]:
        """A path or glob; a glob that matches nothing is a missing trace like a missing file."""
        if not glob.has_magic(value):
            return [self.file(value, field)]
        try:
            matches = sorted(bounded_glob(self.root, value))
        except InputError as e:
            raise self.check.fail(field, str(e)) from None
        files = [self.inside(self.root / m, field) for m in matches]
        files = [f for f in files if _exists(self.check, f, field, Path.is_file)]
        if not files:
            raise self.check.fail(field, f"no trace matches {value!r} (relative to {self.root})")
        return files

    def label(self, path: Path) -> str:
        return _relative(path, self.root)


def _resolve(check: _Checker, path: Path, field: str) -> Path:
    try:
        return path.resolve()
    except (OSError, ValueError, RuntimeError) as e:   # a NUL byte, a symlink loop, a name too long
        raise check.fail(field, f"not a usable path ({_error(e)})") from None


def _exists(check: _Checker, path: Path, field: str, test: Callable[[Path], bool]) -> bool:
    try:
        return test(path)
    except (OSError, ValueError) as e:                  # e.g. a file name longer than the filesystem allows
        raise check.fail(field, f"not a usable path ({_error(e)})") from None


def _error(e: Exception) -> str:
    return e.strerror if isinstance(e, OSError) and e.strerror else str(e).splitlines()[0] if str(e) else type(e).__name__


def _relative(path: Path, root: Path) -> str:
    """How a file is named in run configs: relative to root when inside it, so moving the tree keeps run ids."""
    return path.relative_to(root).as_posix() if path.is_relative_to(root) else str(path)


def _traces(check: _Checker, value: Any, locate: _Locator) -> tuple[TraceInput, ...]:
    out: dict[str, TraceInput] = {}   # keyed by label: a file matched by two patterns runs once
    for i, item in enumerate(check.values(value, "traces")):
        field = f"traces[{i}]"
        if isinstance(item, Mapping) and "synth" in item:
            trace = _synthetic(check, item, field)
            out.setdefault(trace.label, trace)
        elif isinstance(item, Mapping):
            trace = _with_companions(check, item, field, locate)
            out.setdefault(trace.label, trace)
        elif isinstance(item, str):
            for path in locate.pattern(item, field):
                out.setdefault(locate.label(path), TraceInput(label=locate.label(path), path=path))
        else:
            raise check.fail(field, f"expected a path, a glob, {{file: ..., train_trace: ...}} or {{synth: {{...}}}}, "
                                    f"got {_kind(item)}")
    return tuple(out.values())


def _with_companions(check: _Checker, item: Mapping, field: str, locate: _Locator) -> TraceInput:
    """``{file: T, train_trace: A, profile_trace: B}``: a trace with its own training/profiling traces
    (a learned predictor must learn from the same model at the same sparsity as the trace it replays)."""
    check.keys(item, ("file", *TRACE_SETTINGS), field)
    if "file" not in item:
        raise check.fail(f"{field}.file", "missing: the trace file these companions belong to")
    path = locate.file(item["file"], f"{field}.file")
    companions = {key: locate.label(locate.file(item[key], f"{field}.{key}")) for key in TRACE_SETTINGS if key in item}
    return TraceInput(label=locate.label(path), path=path, companions=companions)


def _synthetic(check: _Checker, item: Mapping, field: str) -> TraceInput:
    check.keys(item, ("synth",), field)
    params = dict(check.mapping(item.get("synth"), f"{field}.synth"))
    check.keys(params, SYNTH_KEYS, f"{field}.synth")
    for key, value in params.items():   # checked further when the trace is written (materialize)
        if value is not None and not isinstance(value, (bool, int, float, str)):
            raise check.fail(f"{field}.synth.{key}", f"expected a single number, name or flag, got {_kind(value)}")
    canonical = json.dumps(params, sort_keys=True, separators=(",", ":"))
    return TraceInput(label=f"synth-{hashlib.sha256(canonical.encode()).hexdigest()[:12]}", synth=params)


def _profile(check: _Checker, value: Any, field: str, locate: _Locator) -> str:
    if not isinstance(value, str) or not value.strip():
        raise check.fail(field, f"expected a preset name or a profile file, got {_kind(value)}")
    if value in list_profiles():
        name = value
    else:
        candidate = locate.root / value
        name = str(locate.inside(candidate, field)) if _exists(check, candidate, field, Path.is_file) else value
    try:
        load_profile(name)
    except InputError as e:
        raise check.fail(field, str(e)) from None
    return name


# ---------------------------------------------------------------------------------------------
# Settings: grid x zip x sample, plus fixed


class _SettingValidator:
    """Checks each distinct (setting, value) once, with simulate()'s own parsers."""

    def __init__(self, check: _Checker, locate: _Locator, profiles: tuple[str, ...]):
        self.check, self.locate, self.profiles = check, locate, profiles
        self.seen: set[tuple[str, str]] = set()

    def key(self, key: Any, field: str) -> str:
        if key not in SETTINGS:
            raise self.check.unknown(field, key, SETTINGS)
        return key

    def value(self, key: str, value: Any, field: str) -> Any:
        if isinstance(value, (list, Mapping)) or value is None:
            raise self.check.fail(field, f"expected a single value, got {_kind(value)}")
        if key in TRACE_SETTINGS:
            return self.locate.label(self.locate.file(value, field))
        if (key, setting_text(value)) in self.seen:
            return value
        try:
            if key in POLICY_SETTINGS:
                if not isinstance(value, str):
                    raise InputError(f"expected a policy name such as 'window:k=4', got {value!r}")
                POLICY_SETTINGS[key].create(*parse_policy(value))
            elif key == "seed":
                SEED.check(value, "seed")
            else:
                scenario, overrides = split_settings([f"{key}={setting_text(value)}"])
                dataclasses.replace(Scenario(), **scenario)
                for profile in self.profiles if overrides else ():
                    load_profile(profile, overrides)
        except InputError as e:
            raise self.check.fail(field, str(e)) from None
        self.seen.add((key, setting_text(value)))
        return value


def _points(check: _Checker, data: Mapping, locate: _Locator, profiles: tuple[str, ...]) -> tuple[dict, ...]:
    validate = _SettingValidator(check, locate, profiles)
    owner: dict[str, str] = {}

    def claim(key: Any, section: str) -> str:
        key = validate.key(key, section)
        if key in owner:
            raise check.fail(f"{section}.{key}", f"also given under {owner[key]}; a setting may appear in one "
                                                 f"of grid, zip, sample and fixed")
        owner[key] = section
        return key

    fixed = {}
    for key, value in check.mapping(data.get("fixed", {}), "fixed").items():
        key = claim(key, "fixed")
        fixed[key] = validate.value(key, value, f"fixed.{key}")
    sections = [_grid(check, data["grid"] or {}, claim, validate)] if "grid" in data else []
    if "zip" in data:
        sections.append(_zip(check, data["zip"], claim, validate))
    if "sample" in data:
        sections.append(_sample(check, data["sample"], claim, validate))
    SWEEP_RUNS.check(math.prod(len(part) for part in sections), f"{check.path}: grid x zip x sample")
    return tuple({**fixed, **{k: v for part in combo for k, v in part.items()}}
                 for combo in itertools.product(*sections))


def _grid(check: _Checker, grid: Any, claim: Callable, validate: _SettingValidator) -> list[dict]:
    grid = check.mapping(grid, "grid")
    if not grid:
        raise check.fail("grid", "empty: give at least one setting with a list of values, or leave grid out")
    axes = []
    for key, values in grid.items():
        key = claim(key, "grid")
        axes.append([(key, validate.value(key, v, f"grid.{key}[{i}]"))
                     for i, v in enumerate(check.values(values, f"grid.{key}"))])
    SWEEP_RUNS.check(math.prod(map(len, axes)), f"{check.path}: grid")
    return [dict(combo) for combo in itertools.product(*axes)]


def _zip(check: _Checker, zipped: Any, claim: Callable, validate: _SettingValidator) -> list[dict]:
    zipped = check.mapping(zipped, "zip")
    if not zipped:
        raise check.fail("zip", "empty: give settings with lists of equal length, or leave zip out")
    columns = {}
    for key, values in zipped.items():
        key = claim(key, "zip")
        columns[key] = [validate.value(key, v, f"zip.{key}[{i}]")
                        for i, v in enumerate(check.values(values, f"zip.{key}"))]
    lengths = {key: len(values) for key, values in columns.items()}
    if len(set(lengths.values())) > 1:
        raise check.fail("zip", "lists differ in length (" + ", ".join(f"{k}: {n}" for k, n in lengths.items()) + ")")
    return [dict(zip(columns, row)) for row in zip(*columns.values())]


def _numeric_setting(key: str) -> tuple[bool, Any] | None:
    """(integer?, unit dimension or None) for a setting that can be sampled from a range; else None."""
    if key in SETTABLE_FIELDS:
        spec = SETTABLE_FIELDS[key]
        return (spec.integer, spec.dim) if hasattr(spec, "dim") else None
    kind = getattr(SCENARIO_FIELDS.get(key), "__name__", SCENARIO_FIELDS.get(key))
    if kind in ("int", "float"):
        return kind == "int", BYTES if key in ("dram_budget", "cache_budget") else None
    return None


def _sample(check: _Checker, sample: Any, claim: Callable, validate: _SettingValidator) -> list[dict]:
    sample = check.mapping(sample, "sample")
    check.keys(sample, SAMPLE_KEYS, "sample")
    method = sample.get("method")
    if method not in SAMPLE_METHODS:
        raise check.fail("sample.method", f"expected one of {', '.join(SAMPLE_METHODS)}, got {method!r}")
    n = Number(minimum=1, maximum=SWEEP_RUNS.limit, integer=True).check(sample.get("n"), f"{check.path}: sample.n")
    seed = SEED.check(sample.get("seed", 0), f"{check.path}: sample.seed")
    ranges = check.mapping(sample.get("ranges"), "sample.ranges")
    if not ranges:
        raise check.fail("sample.ranges", "empty: give at least one setting: [low, high] or {log: [low, high]}")
    axes = [_range(check, claim(key, "sample.ranges"), spec, validate) for key, spec in ranges.items()]
    unit = _unit_points(method, n, len(axes), seed)
    return [{key: to_value(u) for (key, to_value), u in zip(axes, row)} for row in unit]


def _range(check: _Checker, key: str, spec: Any, validate: _SettingValidator) -> tuple[str, Callable[[float], Any]]:
    field = f"sample.ranges.{key}"
    numeric = _numeric_setting(key)
    if numeric is None:
        raise check.fail(field, "not a numeric setting; sample numbers (dram_budget, lookahead, dotted profile "
                                "fields ...) and put names under grid")
    integer, dim = numeric
    log = isinstance(spec, Mapping)
    if log:
        check.keys(spec, ("log",), field)
        spec = spec.get("log")
    if not isinstance(spec, list) or len(spec) != 2:
        raise check.fail(field, "expected [low, high] or {log: [low, high]}")
    low, high = (Number(dim=dim).check(v, f"{check.path}: {field}") for v in spec)
    if not low < high:
        raise check.fail(field, f"low ({low:g}) must be below high ({high:g})")
    if log and low <= 0:
        raise check.fail(field, f"a log range needs low > 0, got {low:g}")
    for bound in (low, high):
        validate.value(key, round(bound) if integer else bound, field)

    def to_value(u: float) -> Any:
        x = math.exp(math.log(low) + u * math.log(high / low)) if log else low + u * (high - low)
        return round(x) if integer else float(f"{x:.6g}")   # 6 digits: readable columns, stable ids
    return key, to_value


def _unit_points(method: str, n: int, dims: int, seed: int) -> np.ndarray:
    """n points in [0, 1)^dims: independent uniforms, or a Latin hypercube (one point per stratum per axis)."""
    rng = np.random.default_rng(seed)
    if method == "random":
        return rng.random((n, dims))
    strata = np.stack([rng.permutation(n) for _ in range(dims)], axis=1)
    return (strata + rng.random((n, dims))) / n


# ---------------------------------------------------------------------------------------------
# Expansion into run configs


def materialize(spec: SweepSpec, synth_dir: Path) -> SweepSpec:
    """Write the spec's synthetic traces under ``synth_dir`` (once: an existing file is reused)."""
    traces = []
    for trace in spec.traces:
        if trace.synth is not None:
            out = synth_dir / f"{trace.label}.parquet"
            if not out.is_file():
                synth_dir.mkdir(parents=True, exist_ok=True)
                try:
                    synthesize(out, progress=False, **trace.synth)
                except (InputError, TypeError, ValueError) as e:   # TypeError/ValueError: a value of the wrong type
                    raise InputError(f"{spec.path}: traces: synth {dict(trace.synth)}: {e}") from None
            trace = dataclasses.replace(trace, path=out)
        traces.append(trace)
    return dataclasses.replace(spec, traces=tuple(traces))


def expand(spec: SweepSpec) -> list[RunConfig]:
    """The ordered run configs (traces, then profiles, then setting points), duplicates removed."""
    hashes: dict[Path, str] = {}

    def sha(path: Path) -> str:
        if path not in hashes:
            hashes[path] = file_sha256(path)
        return hashes[path]

    presets = list_profiles()
    profiles = [(p, p if p in presets else _relative(Path(p), spec.root), load_profile(p)) for p in spec.profiles]
    runs: dict[str, RunConfig] = {}
    for trace in spec.traces:
        if trace.path is None:
            raise ValueError(f"synthetic trace {trace.label} not materialized")  # a caller bug, not input
        for profile, label, hw in profiles:
            for point in spec.points:
                run = _run(spec, trace, profile, label, hw.name, hw.sha256, point, sha)
                runs.setdefault(run.run_id, run)
    return list(runs.values())


def _run(spec: SweepSpec, trace: TraceInput, profile: str, profile_label: str, profile_name: str,
         profile_sha: str, point: Mapping[str, Any], sha: Callable[[Path], str]) -> RunConfig:
    predictor = point.get("predictor", _SIMULATE_DEFAULTS["predictor"])
    cache = point.get("cache", _SIMULATE_DEFAULTS["cache"])
    seed = point.get("seed", _SIMULATE_DEFAULTS["seed"])
    point = {**trace.companions, **point}   # load_spec refused a companion given both ways
    companions = {key: spec.root / point[key] for key in TRACE_SETTINGS if key in point}
    settings = {key: setting_text(value) for key, value in sorted(point.items())
                if key not in (*POLICY_SETTINGS, "seed", *TRACE_SETTINGS)}
    canonical = {
        "trace": {"name": trace.label, "sha256": sha(trace.path)},
        "profile": {"name": profile_label, "sha256": profile_sha},
        "predictor": predictor, "cache": cache, "seed": seed, "baselines": spec.baselines,
        "settings": settings,
        **{key: {"name": point[key], "sha256": sha(path)} for key, path in companions.items()},
    }
    config = json.dumps(canonical, sort_keys=True, separators=(",", ":"))
    run_id = hashlib.sha256(config.encode()).hexdigest()[:16]
    columns = {"run_id": run_id, "sweep": spec.name, "config": config, "trace": str(trace.path),
               "trace_name": trace.path.name, "profile": profile_name, "predictor": predictor, "cache": cache,
               "seed": seed, **{key: point[key] for key in companions},
               # swept hardware values as numbers in base units, for sensitivity plots
               **{key: _resolved(profile, key, value) for key, value in point.items() if key in SETTABLE_FIELDS}}
    return RunConfig(run_id=run_id, sweep=spec.name, trace=str(trace.path), profile=profile, predictor=predictor,
                     cache=cache, seed=seed, settings=tuple(f"{k}={v}" for k, v in settings.items()),
                     train_trace=str(companions["train_trace"]) if "train_trace" in companions else None,
                     profile_trace=str(companions["profile_trace"]) if "profile_trace" in companions else None,
                     baselines=spec.baselines, config=config, columns=columns)


def _resolved(profile: str, key: str, value: Any) -> Any:
    """The value of dotted profile field ``key`` after applying ``value`` (base units)."""
    if not isinstance(value, str):   # a number in a spec is already in base units
        return value
    return _resolved_text(profile, key, value)


@functools.lru_cache(maxsize=None)
def _resolved_text(profile: str, key: str, text: str) -> Any:
    section, field = key.split(".", 1)
    return getattr(getattr(load_profile(profile, [f"{key}={text}"]), section), field)
