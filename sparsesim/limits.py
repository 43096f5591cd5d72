"""The one bound on the work a command may start, before it starts it.

A typo in a spec or a flag must fail in a second, not run for a day or eat the machine's memory.
Each command's open-ended quantity is bounded here, with the reason and what to do instead:

=================== ======================================================= ===================
command             what grows without end                                   bound
=================== ======================================================= ===================
``sweep``           runs = traces x profiles x setting points               :data:`SWEEP_RUNS`
``sweep``           directory entries a trace glob walks                    :data:`GLOB_ENTRIES`
``synth``           bytes of masks written; neurons per token (memory)      :data:`SYNTH_BYTES`, :data:`SYNTH_NEURONS`
``calibrate-host``  seconds of measurement; repeats                         :data:`CALIBRATION_SECONDS`, :data:`REPEATS`
``sweep``, ``demo`` worker processes                                        :data:`WORKERS`
=================== ======================================================= ===================

Every other number a command takes is bounded by its :class:`~sparsesim.numbers.Number`
declaration (trace sizes by the trace format's own limits, ``sparsesim.tracefile``).
"""

from __future__ import annotations

from dataclasses import dataclass

from sparsesim.errors import InputError
from sparsesim.numbers import Number


@dataclass(frozen=True)
class Bound:
    """At most ``limit`` of ``what`` per command; ``advice`` says what to do instead."""

    what: str
    limit: int
    advice: str

    def check(self, amount: int, where: str) -> None:
        if amount > self.limit:
            raise InputError(f"{where}: {amount:,} {self.what}; at most {self.limit:,} ({self.advice})")


# One run record and its config take about 2 KB in the runner: 250,000 runs ~ 0.5 GB, 3 days at 1 run/s.
SWEEP_RUNS = Bound("runs (traces x profiles x setting points)", 250_000, "split the study into several specs")
GLOB_ENTRIES = Bound("directory entries walked to expand a glob", 100_000,
                     "narrow the pattern, or point root at the traces' folder")
SYNTH_BYTES = Bound("bytes of masks", 1 << 40, "write fewer tokens; replay time grows with them too")
SYNTH_NEURONS = Bound("neurons per token (layers x d_ff)", 1 << 24, "64x llama-2-70b's 2.3 M")
CALIBRATION_SECONDS = Number(minimum=0, inclusive=False, maximum=24 * 3600)
REPEATS = Number(minimum=1, maximum=1000, integer=True)
WORKERS = Number(minimum=1, maximum=256, integer=True)   # each worker process holds its own traces
