"""Sparsity thresholds: calibration (``percentile``, ``global``, ``topk``) and the thresholds JSON.

All methods calibrate on the calibration span only (disjoint from the evaluation span), fed as
one batch of equal windows.

* ``percentile`` (the seed paper): T_l = the target-quantile of |h| pooled over the calibration
  tokens, uniform target for every layer. Thresholds are set in-graph layer by layer in one
  forward pass, so layer l is calibrated on the activations it sees when layers < l are
  already sparse (:class:`sparsesim.tracing.sparsify.CalibrateRule`).
* ``global``: one overall target, per-layer levels chosen greedily (TEAL-style). Proxy: on up to
  :data:`PROXY_TOKENS` calibration tokens of the dense model, the relative FFN-output error of
  layer l at level s, ``||W_down (h - h⊙mask_s)||² / ||W_down h||²``, on a grid of step
  1/:data:`GRID`. Greedy: starting from 0, repeatedly raise by one grid step the layer with the
  smallest error increase per unit of overall sparsity (overall = mean weighted by d_ff), the
  last step fractional so the overall target is met exactly. Verification: thresholds for the
  greedy levels and for uniform levels are both calibrated in-graph, their calibration-span NLL
  is measured, and the better is kept (``details.chosen``), so ``global`` never does worse than
  uniform on calibration text.
* ``topk``: each token keeps its ``d_ff - round(target · d_ff)`` largest |h| (no thresholds).

Natural sparsity (exact zeros at the site, dense model, calibration tokens) is always measured.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from sparsesim.atomic import write_text
from sparsesim.errors import InputError
from sparsesim.inputs import read_text
from sparsesim.tracing.forward import batch_inputs, hidden_states, nll_sum
from sparsesim.tracing.models import LoadedModel
from sparsesim.tracing.checks import METHODS, SITES, check_choice, check_sparsity
from sparsesim.tracing.sparsify import CalibrateRule, MaskRule, SparseFFN, ThresholdRule, TopKRule, hook_site

FORMAT = "sparsesim-thresholds"
FORMAT_VERSION = 1
GRID = 50             # global: proxy error grid, step 0.02 in sparsity
PROXY_TOKENS = 512    # global: calibration tokens (evenly spaced) the proxy errors are measured on


@dataclass
class Thresholds:
    method: str
    site: str
    target: float                   # overall sparsity target
    layer_targets: list[float]      # per-layer level (uniform except for global)
    thresholds: list[float] | None  # per-layer T_l on |site value|; None for topk
    model: str
    d_ff: list[int]
    calibration: dict               # text name, sha256, start, tokens, window
    natural: list[float]            # per-layer exact-zero fraction, dense model, calibration tokens
    details: dict = field(default_factory=dict)   # method-specific (global: proxy, candidates)

    def rule(self) -> MaskRule:
        if self.method == "topk":
            return TopKRule(topk_keep(self.d_ff, self.layer_targets))
        return ThresholdRule(self.thresholds)

    def to_dict(self) -> dict:
        return {"format": FORMAT, "version": FORMAT_VERSION, **asdict(self)}

    def save(self, path: str | Path) -> None:
        write_text(path, json.dumps(self.to_dict(), indent=1) + "\n")


def topk_keep(d_ff: list[int], levels: list[float]) -> list[int]:
    return [d - int(round(s * d)) for d, s in zip(d_ff, levels)]


# ----------------------------------------------------------------------------- calibration

def calibrate(lm: LoadedModel, calib_ids: np.ndarray, *, window: int, method: str, site: str, target: float,
              text: dict) -> Thresholds:
    """Thresholds for ``target`` sparsity from the calibration tokens (see the module doc)."""
    check_choice(method, METHODS, "--method")
    check_choice(site, SITES, "--site")
    check_sparsity(target)
    x, y = batch_inputs(calib_ids, window, lm.bos_id)
    d_ff = [f.d_ff for f in lm.ffns]
    natural, proxy = _dense_pass(lm, x, site, collect=method == "global" and target > 0)
    common = dict(method=method, site=site, target=target, model=lm.name, d_ff=d_ff, natural=natural,
                  calibration={**text, "tokens": int(y.numel()), "window": int(y.shape[1])})
    if method == "topk":
        return Thresholds(layer_targets=[target] * len(d_ff), thresholds=None, **common)
    uniform = [target] * len(d_ff)
    if target == 0:
        return Thresholds(layer_targets=uniform, thresholds=[0.0] * len(d_ff), **common)
    if method == "percentile":
        thresholds, _ = _calibrate_in_graph(lm, x, y, site, uniform, with_nll=False)
        return Thresholds(layer_targets=uniform, thresholds=thresholds, **common)

    errors = _proxy_errors(lm, *proxy)
    greedy = allocate(errors, d_ff, target)
    candidates = {"greedy": greedy, "uniform": uniform}
    results = {name: _calibrate_in_graph(lm, x, y, site, levels, with_nll=True) for name, levels in candidates.items()}
    chosen = min(results, key=lambda name: results[name][1])
    details = {
        "proxy": "relative FFN-output error ||W_down(h - h*mask)||^2 / ||W_down h||^2 on dense calibration tokens",
        "grid_step": 1 / GRID, "proxy_tokens": int(proxy[0][0].shape[0]),
        "proxy_error_at_allocation": [float(np.interp(s, np.arange(GRID + 1) / GRID, e))
                                      for s, e in zip(greedy, errors)],
        "greedy_levels": greedy,
        "calibration_nll_per_token": {n: r[1] / y.numel() for n, r in results.items()},
        "chosen": chosen,
    }
    return Thresholds(layer_targets=candidates[chosen], thresholds=results[chosen][0], details=details, **common)


def _dense_pass(lm: LoadedModel, x: torch.Tensor, site: str, collect: bool):
    """Natural sparsity per layer; with ``collect``, also (h, |site|) on PROXY_TOKENS evenly spaced tokens."""
    n_tokens = x.numel()
    rows = torch.linspace(0, n_tokens - 1, min(PROXY_TOKENS, n_tokens)).round().long()
    zeros = torch.zeros(len(lm.ffns), dtype=torch.int64)
    h_rows: list[torch.Tensor | None] = [None] * len(lm.ffns)
    a_rows: list[torch.Tensor | None] = [None] * len(lm.ffns)

    def at_site(layer: int, value: torch.Tensor) -> None:
        zeros[layer] += (value == 0).sum()
        if collect:
            a_rows[layer] = value.reshape(-1, value.shape[-1])[rows].abs()

    def at_down(layer: int, value: torch.Tensor) -> None:
        h_rows[layer] = value.reshape(-1, value.shape[-1])[rows].clone()

    handles = [hook_site(f, site, at_site) for f in lm.ffns]
    if collect:
        handles += [hook_site(f, "intermediate", at_down) for f in lm.ffns]
    try:
        hidden_states(lm, x)
    finally:
        for h in handles:
            h.remove()
    natural = [float(z) / (n_tokens * f.d_ff) for z, f in zip(zeros, lm.ffns)]
    return natural, (h_rows, a_rows)


def _calibrate_in_graph(lm: LoadedModel, x: torch.Tensor, y: torch.Tensor, site: str, levels: list[float],
                        with_nll: bool) -> tuple[list[float], float]:
    rule = CalibrateRule(levels)
    with SparseFFN(lm.ffns, site, rule):
        hidden = hidden_states(lm, x)
    return rule.thresholds, (nll_sum(lm, hidden, y) if with_nll else math.nan)


def _proxy_errors(lm: LoadedModel, h_rows: list[torch.Tensor], a_rows: list[torch.Tensor]) -> np.ndarray:
    """[n_layers, GRID + 1] relative FFN-output error at sparsity j / GRID."""
    out = np.zeros((len(lm.ffns), GRID + 1))
    with torch.inference_mode():
        for f, h, a in zip(lm.ffns, h_rows, a_rows):
            ordered = a.reshape(-1).sort().values
            ks = (np.arange(GRID + 1) / GRID * (ordered.numel() - 1)).round().astype(int)
            ref = float(f.project_down(h).square().sum()) or 1.0
            for j, k in enumerate(ks[1:], start=1):
                dropped = torch.where(a < ordered[k], h, 0.0)
                out[f.layer, j] = float(f.project_down(dropped).square().sum()) / ref
    return out


def allocate(errors: np.ndarray, d_ff: list[int], target: float) -> list[float]:
    """Greedy per-layer levels with d_ff-weighted mean == ``target`` (see the module doc)."""
    n_layers, points = errors.shape
    grid = points - 1
    weight = np.asarray(d_ff, dtype=float) / sum(d_ff)
    steps = np.zeros(n_layers, dtype=int)
    reached = 0.0
    while True:
        idx = np.flatnonzero(steps < grid - 1)       # keep every level < 1
        if idx.size == 0:                            # target above the grid's top: spread the rest evenly
            return [float(v) for v in steps / grid + (target - reached)]
        rise = np.full(n_layers, np.inf)
        # error increase per unit of overall sparsity gained by one more step of layer l
        rise[idx] = (errors[idx, steps[idx] + 1] - errors[idx, steps[idx]]) / (weight[idx] / grid)
        layer = int(np.argmin(rise))
        gain = weight[layer] / grid
        if reached + gain >= target - 1e-12:
            levels = steps / grid
            levels[layer] += (target - reached) / weight[layer]
            return [round(float(v), 12) for v in levels]     # drop float noise from the fractional step
        steps[layer] += 1
        reached += gain


# ----------------------------------------------------------------------------- JSON

def load_thresholds(path: str | Path, model: dict) -> Thresholds:
    """Read and validate a thresholds JSON against the loaded model's metadata."""
    p = Path(path)
    if not os.path.lexists(p):
        raise InputError(f"--thresholds {p}: file not found")
    try:
        doc = json.loads(read_text(p, f"--thresholds {p}"))
    except (ValueError, RecursionError) as e:
        raise InputError(f"--thresholds {p}: not a readable JSON file ({type(e).__name__})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise InputError(f"--thresholds {p}: not a sparsesim thresholds file (field 'format' must be '{FORMAT}')")
    if doc.get("version") != FORMAT_VERSION:
        raise InputError(f"--thresholds {p}: version {doc.get('version')!r} not supported (expected {FORMAT_VERSION})")
    missing = [k for k in ("method", "site", "target", "layer_targets", "thresholds", "d_ff") if k not in doc]
    if missing:
        raise InputError(f"--thresholds {p}: field '{missing[0]}' is missing")
    method, site = doc["method"], doc["site"]
    if method not in METHODS or site not in SITES:
        raise InputError(f"--thresholds {p}: method/site {method!r}/{site!r} not in {METHODS}/{SITES}")
    n = model["n_layers"]

    def numbers(key: str, upper: float) -> list[float]:
        values = doc[key]
        if not isinstance(values, list) or len(values) != n:
            got = len(values) if isinstance(values, list) else type(values).__name__
            raise InputError(f"--thresholds {p}: '{key}' has {got} layers, model {model['name']} has {n}")
        for i, v in enumerate(values):
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
                raise InputError(f"--thresholds {p}: '{key}'[{i}] is {v!r}, expected a finite number")
            if not 0 <= v < upper:
                raise InputError(f"--thresholds {p}: '{key}'[{i}] is {v}, expected a value in [0, {upper})")
        return [float(v) for v in values]

    if doc["d_ff"] != model["d_ff"]:
        raise InputError(f"--thresholds {p}: d_ff {doc['d_ff']} does not match model {model['name']} ({model['d_ff']})")
    layer_targets = numbers("layer_targets", 1.0)
    if method == "topk":
        if doc["thresholds"] is not None:
            raise InputError(f"--thresholds {p}: method topk has no thresholds (field must be null)")
        thresholds = None
    else:
        thresholds = numbers("thresholds", math.inf)
    target = doc["target"]
    if isinstance(target, bool) or not isinstance(target, (int, float)) or not 0 <= target < 1:
        raise InputError(f"--thresholds {p}: 'target' is {target!r}, expected a number in [0, 1)")
    optional = {key: doc.get(key) for key in ("calibration", "natural", "details")}
    for key, kind, name in (("calibration", dict, "a mapping"), ("natural", list, "a list"),
                            ("details", dict, "a mapping")):
        if optional[key] is not None and not isinstance(optional[key], kind):
            raise InputError(f"--thresholds {p}: '{key}' is {_short(optional[key])}, expected {name} or null")
    calibration = optional["calibration"] or {}
    start = calibration.get("start")
    if start is not None and (isinstance(start, bool) or not isinstance(start, int) or start < 0):
        raise InputError(f"--thresholds {p}: 'calibration.start' is {_short(start)}, expected a token offset >= 0")
    return Thresholds(method=method, site=site, target=float(target), layer_targets=layer_targets,
                      thresholds=thresholds, model=str(doc.get("model", "")), d_ff=list(doc["d_ff"]),
                      calibration=dict(calibration), natural=list(optional["natural"] or []),
                      details=dict(optional["details"] or {}))


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
