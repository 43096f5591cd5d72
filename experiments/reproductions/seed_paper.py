"""The seed paper (Dhar et al. 2024): the sparsity-vs-perplexity curve and the predictability study.

One command: ``sparsesim reproduce seed-paper -o DIR``. It traces Gemma 3 270M on WikiText-2 raw
test at 50 % sparsity, computes the perplexity curve (window 2048, percentile and global
thresholds, calibrated on disjoint tokens), traces the same windows with 5/10/20/30 % of the
token ids replaced, and runs the predictability analysis with those perturbations
(``DIR/analysis/report.html``). The rows compare each perplexity with the value measured when
this reproduction was written (below); the paper's own models (Llama-3-8B, Mistral-7B, Phi-3) can
not be run offline here, so its numbers are not the reference.

Expected (measured 2026-11-28, Gemma 3 270M, first 9,225 WikiText-2 test tokens, window 2048):

=====  ==========  ======
level  percentile  global
=====  ==========  ======
0 %    18.658      18.658
30 %   19.306      19.187
40 %   19.773      19.773
50 %   20.218      20.218
60 %   21.023      20.796
70 %   21.980      22.004
80 %   25.854      25.712
=====  ==========  ======

Predictability at 50 % (2,048 evaluation tokens): consecutive-token Jaccard 0.41, same token id
0.54, match rate under 5/10/20/30 % replaced tokens 0.78/0.69/0.57/0.50 (docs/predictors.md).
"""

from __future__ import annotations

import os
from pathlib import Path

LEVELS = (0.0, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)
METHODS = ("percentile", "global")
FRACTIONS = (0.05, 0.1, 0.2, 0.3)
EXPECTED_PPL = {
    "percentile": (18.658, 19.306, 19.773, 20.218, 21.023, 21.980, 25.854),
    "global": (18.658, 19.187, 19.773, 20.218, 20.796, 22.004, 25.712),
}
COLUMNS = ("method", "level", "ppl", "expected_ppl", "error")
# The canonical WikiText-2 raw test file: ../shared/data beside the repository, or set the path.
WIKITEXT = os.environ.get("SPARSESIM_WIKITEXT", str(Path(__file__).resolve().parents[3] / "shared" / "data"
                                                   / "wikitext-2-raw" / "wiki.test.raw"))


def make_trace(path: str, model: str = "gemma-3-270m", text: str = WIKITEXT, tokens: int = 4096,
               window: int = 2048) -> str:
    from sparsesim.tracing.trace import trace_model

    trace_model(out=path, model=model, text=text, sparsity=0.5, tokens=tokens, window=window, ppl=False)
    return path


def run(trace: str, levels=LEVELS, methods=METHODS, fractions=FRACTIONS, ppl_tokens: int | None = 9225,
        window: int = 2048) -> list[dict]:
    """Perplexity curve rows (with the expected values where they exist); the analysis goes next to the trace."""
    from sparsesim.experiments.predictability import analyze
    from sparsesim.tracefile import read_meta
    from sparsesim.tracing.models import load_model
    from sparsesim.tracing.perplexity import ppl_curve
    from sparsesim.tracing.perturb import trace_perturbed

    meta, _ = read_meta(trace)
    out = Path(trace).parent
    lm = load_model(meta["config"]["model"])
    curve = ppl_curve(model=lm, text=meta["config"]["text"], levels=list(levels), window=window,
                      methods=list(methods), tokens=ppl_tokens, out=out / "seed-paper-curve.csv")
    perturbed = []
    for fraction in fractions:
        path = out / f"seed-paper-perturbed-{int(fraction * 100)}.parquet"
        trace_perturbed(trace, path, fraction, seed=0, model=lm)
        perturbed.append(path)
    analyze(trace, out / "analysis", perturbed=perturbed)
    rows = []
    for r in curve:
        method, level = r["method"], float(r["target_sparsity"])
        expected = dict(zip(LEVELS, EXPECTED_PPL.get(method, ()))).get(level)
        rows.append({"method": method, "level": level, "ppl": float(r["ppl"]),
                     "expected_ppl": expected if expected is not None else "",
                     "error": float(r["ppl"]) / expected - 1 if expected else ""})
    return rows
