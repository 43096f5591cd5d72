"""``sparsesim import``: routing captured by other engines -> an expert trace (no torch).

Formats (docs/moe.md): ``route_trace`` (BigMoeOnEdge's phone engine, with its ``.metrics``),
``routed-experts`` (vLLM / SGLang ``.npy`` / ``.npz`` arrays), ``llama.cpp`` (``layer,expert`` rows of
``examples/moe-trace``) and ``generic`` (a ``token,layer,expert[,weight]`` CSV or Parquet table). The
last three need a shape file (JSON) with the expert count and bytes. Everything is checked before
anything is written; the trace appears under its final name only when complete.
"""

from __future__ import annotations

from pathlib import Path

from sparsesim.errors import InputError
from sparsesim.inputs import regular_file
from sparsesim.tracing.importers import generic, llamacpp, route_trace, routed_experts
from sparsesim.tracing.importers.routes import Routes, Shape, write_trace

FORMATS = (route_trace.NAME, routed_experts.NAME, llamacpp.NAME, generic.NAME)
HEAD_BYTES = 4096


def detect_format(path: Path) -> str:
    """The format of ``path`` from its suffix or first line, or a one-line error listing the formats."""
    if routed_experts.detect(path):
        return routed_experts.NAME
    if path.suffix == ".parquet":
        return generic.NAME
    with open(path, "rb") as f:
        head = f.read(HEAD_BYTES).decode("utf-8", errors="replace")
    for module in (route_trace, generic, llamacpp):
        if module.detect(head):
            return module.NAME
    first = (head.splitlines() or [""])[0][:60]
    raise InputError(f"{path}: format not recognised (first line {first!r}); give --format, one of "
                     f"{', '.join(FORMATS)}")


def read_routes(path: str | Path, fmt: str | None = None, shape: str | Path | None = None,
                metrics: str | Path | None = None) -> Routes:
    """Parse and check ``path`` (format ``fmt`` or detected); nothing is written."""
    path = regular_file(path)   # sparsesim.inputs: a pipe or a device is refused before it is opened
    fmt = fmt or detect_format(path)
    if fmt not in FORMATS:
        raise InputError(f"--format {fmt}: unknown; known: {', '.join(FORMATS)}")
    if metrics is not None and fmt != route_trace.NAME:
        raise InputError(f"--metrics: only the {route_trace.NAME} format has a metrics file")
    if fmt == route_trace.NAME:
        if shape is not None:
            raise InputError(f"--shape: a {route_trace.NAME} file carries its own shape in its header")
        return route_trace.read(path, None if metrics is None else _existing(metrics, "--metrics"))
    shape_path = _existing(shape, "--shape") if shape is not None else _sibling_shape(path)
    module = {routed_experts.NAME: routed_experts, llamacpp.NAME: llamacpp, generic.NAME: generic}[fmt]
    return module.read(path, Shape.load(shape_path))


def import_file(path: str | Path, out: str | Path, fmt: str | None = None, shape: str | Path | None = None,
                metrics: str | Path | None = None) -> dict:
    """``sparsesim import``: read ``path`` and write the expert trace ``out``; returns its metadata."""
    if Path(out).resolve() == Path(path).resolve():
        raise InputError(f"-o {out}: would overwrite the input")
    routes = read_routes(path, fmt, shape, metrics)
    config = {"input": str(path), "format": routes.format, "shape": None if shape is None else str(shape),
              "metrics": None if metrics is None else str(metrics)}
    return write_trace(routes, out, config)


def _existing(path: str | Path, flag: str) -> Path:
    return regular_file(path, f"{flag} {path}")


def _sibling_shape(path: Path) -> Path | None:
    """``NAME.json`` beside ``NAME.npy`` (or .csv, .parquet), used when --shape is not given."""
    candidate = path.with_suffix(".json")
    return candidate if candidate.is_file() else None
