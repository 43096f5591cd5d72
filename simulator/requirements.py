"""Which profile fields a scenario's time-model settings need (``docs/time-model.md``).

A setting that needs a hardware number the profile does not give is refused before anything runs,
with one line naming the missing field and the setting (:func:`sparsesim.simulator.profile.require`),
e.g. ``profile oneplus-12: npu.ops_int8 is missing; scenario field 'hot_unit' = npu (int4 arithmetic)
needs it``. Efficiencies and dispatch overheads are never required: absent, a kernel runs at its
roofline (efficiency 1, no dispatch cost) — the upper bound the profile's peak numbers describe.
"""

from __future__ import annotations

from sparsesim.errors import InputError
from sparsesim.simulator.kernels import PEAK_FIELD
from sparsesim.simulator.profile import HardwareProfile, require
from sparsesim.simulator.scenario import Scenario
from sparsesim.traceunits import NEURON


def needed_fields(scenario: Scenario, profile: HardwareProfile) -> list[tuple[str, str]]:
    """(dotted profile field, the setting that needs it) for every field the scenario's choices need."""
    needs: list[tuple[str, str]] = []
    precision = scenario.arithmetic_precision
    for setting in ("compute_unit", "hot_unit"):
        unit = getattr(scenario, setting)
        if unit in ("default", "none"):
            continue
        why = f"scenario field '{setting}' = {unit}"
        needs += [(f"{unit}.bandwidth", why), (f"{unit}.{PEAK_FIELD[precision]}", f"{why} ({precision} arithmetic)")]
        unit_spec = profile.unit(unit)
        discrete = unit_spec is not None and unit_spec.capacity is not None
        if discrete and scenario.ffn_in == "flash":   # flash -> DRAM -> the unit's own memory
            needs.append(("interconnect.bandwidth", f"{why} (a unit with its own memory, FFN in flash)"))
        if setting == "hot_unit" and not discrete:    # both units stream weights from the same DRAM
            needs.append(("dram.shared_bandwidth", f"{why} (two units sharing DRAM)"))
    if scenario.memory_management == "page-cache":
        why = "scenario field 'memory_management' = page-cache"
        needs += [("os.page_size", why), ("os.fault_overhead", why)]
    if scenario.io_threads > 1:
        needs.append(("storage.multi_thread_factor", f"scenario field 'io_threads' = {scenario.io_threads}"))
    return needs


def check_time_model(scenario: Scenario, profile: HardwareProfile) -> None:
    """Refuse, in one line, a scenario whose time-model settings the profile cannot support."""
    for field, why in needed_fields(scenario, profile):
        require(profile, field, why)
    if scenario.io_depth > profile.storage.queue_depth:
        raise InputError(f"scenario field 'io_depth': {scenario.io_depth} reads in flight, but profile "
                         f"{profile.name} sustains storage.queue_depth = {profile.storage.queue_depth}")


def check_trace_fit(scenario: Scenario, kind: str, batched: bool) -> None:
    """Refuse, in one line, a setting that works on single neuron-trace tokens only: the cluster
    pipeline and a hot unit split one token's FFN into neurons, so neither applies to an expert trace
    (an expert is read and computed whole) or to a trace whose prompt is replayed in prefill batches."""
    for field, value in (("pipeline", scenario.pipeline), ("hot_unit", scenario.hot_unit)):
        if value == "none":
            continue
        if kind != NEURON:
            raise InputError(f"scenario field '{field}': {value} splits a token's FFN into neurons; this trace's "
                             f"unit is a routed expert ({kind}), read and computed whole")
        if batched:
            raise InputError(f"scenario field '{field}': {value} times one token's FFN; this trace replays its "
                             f"prompt in prefill batches (its phase column)")
