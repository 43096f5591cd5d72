"""The prefetch schedule: when the prediction for each layer step is issued.

One definition, used by the replay (:mod:`sparsesim.simulator.prefetcher`) and by predictor evaluation
(:mod:`sparsesim.simulator.predictors.evaluation`), so the two can never disagree. A *step* is
g = token · L + layer; the prediction for a *target* step h is issued at the start of its issue
step (``docs/simulator.md``, "Residency contract"):

* ``layer`` with lookahead k: at step max(h − k, 0); step 0 issues targets 0 … k, in order;
* ``token``: at the start of the target's token (step h − h mod L), every layer in order;
* ``none``: never.
"""

from __future__ import annotations

from dataclasses import dataclass

SCHEDULES = ("layer", "token", "none")


@dataclass(frozen=True)
class PrefetchSchedule:
    kind: str
    lookahead: int
    n_layers: int
    n_steps: int      # tokens × layers

    def __post_init__(self) -> None:
        if self.kind not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.kind!r}")

    def targets(self, step: int) -> range:
        """The targets whose predictions are issued at the start of ``step``, in increasing order."""
        if self.kind == "token":
            return range(step, step + self.n_layers) if step % self.n_layers == 0 else range(0)
        if self.kind == "none":
            return range(0)
        if step == 0:   # nobody k steps earlier could issue the first k targets
            return range(min(self.lookahead + 1, self.n_steps))
        target = step + self.lookahead
        return range(target, target + 1) if target < self.n_steps else range(0)
