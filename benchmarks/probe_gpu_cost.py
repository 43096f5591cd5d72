"""Where the GPU tracing overhead goes (a one-off probe; not part of the suite)."""
import time
import torch
from benchmarks.bench_gpu import _model
from tracing.ffn import find_ffns
from tracing.sparsify import CalibrateRule, SparseFFN, ThresholdRule, pack_bits

model = _model("cuda")
ffns = find_ffns(model, "x")
ids = torch.randint(0, 32000, (1, 4096), device="cuda")
cal = CalibrateRule([0.5] * 32)
with torch.inference_mode(), SparseFFN(ffns, "intermediate", cal):
    model.model(ids)
rule = ThresholdRule(cal.thresholds)

def t(label, fn, n=5):
    fn(); torch.cuda.synchronize()
    best = 1e9
    for _ in range(n):
        torch.cuda.synchronize(); t0 = time.perf_counter(); fn(); torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    print(f"{label:40s} {best*1e3:8.1f} ms", flush=True)

def plain():
    with torch.inference_mode(): model.model(ids)
def sparse_only():
    with torch.inference_mode(), SparseFFN(ffns, "intermediate", rule): model.model(ids)
def record_only():
    with torch.inference_mode(), SparseFFN(ffns, "intermediate", rule, record=True) as h: model.model(ids)
def record_pack():
    with torch.inference_mode(), SparseFFN(ffns, "intermediate", rule, record=True) as h:
        model.model(ids); pack_bits(h._masks)
recorder = SparseFFN(ffns, "intermediate", rule, record=True)
def record_pack_copy():
    with torch.inference_mode(), recorder:
        model.model(ids); recorder.take_packed()
for label, fn in [("plain", plain), ("zero-enforcing only", sparse_only), ("+ record bool buffer", record_only),
                  ("+ pack on device", record_pack), ("+ copy to host (take_packed)", record_pack_copy)]:
    t(label, fn)
