"""Defaults and validation of user-given values, torch-free so the CLI rejects bad flags before loading torch.

Every argument of ``trace`` and ``ppl`` that can be checked without the model is checked here, in
well under a second; only what needs the model itself (a window longer than its context, a text
too short once tokenized) waits for the load.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from sparsesim.errors import InputError
from sparsesim.inputs import regular_file
from sparsesim.numbers import Number

METHODS = ("percentile", "global", "topk")
EPOCHS = Number(minimum=1, maximum=10_000, integer=True)   # --learned-epochs: each is a pass over the calibration span
SITES = ("intermediate", "gate")

DEFAULT_MODEL = "gemma-3-270m"
STORIES_NAME = "stories260K"
BUILTIN_MODELS = (DEFAULT_MODEL, STORIES_NAME)     # both dense: traced by FFN neuron
STORIES_ENV = "SPARSESIM_STORIES260K"
# The repository's sibling ../shared holds the llama2.c checkpoint for tests (DESIGN §2).
STORIES_DEFAULT_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "llama2c-stories260K"
HF_FILE_SUFFIXES = (".json", ".safetensors", ".bin", ".model", ".txt", ".gguf")   # files transformers reads
PYDOC = "pydoc"                 # the built-in text: the Python reference topics (tracing/text.py)
# One window for trace, ppl and the demo: Gemma 3's sliding-attention span, short enough that the
# demo's traces take seconds on 2 cores. Perplexity depends on it (Gemma 3 270M on WikiText-2:
# 26.5 at 512, 18.7 at 2048), so every perplexity is reported with its window.
DEFAULT_WINDOW = 512
DEFAULT_TOKENS = 4096           # evaluation tokens from the start of the text
DEFAULT_CALIB_TOKENS = 2048     # calibration tokens from the end of the text


def check_sparsity(value: float, what: str = "--sparsity") -> float:
    if not (isinstance(value, (int, float)) and math.isfinite(value) and 0.0 <= value < 1.0):
        raise InputError(f"{what} {value}: must be a number in [0, 1)")
    return float(value)


def parse_levels(text: str) -> list[float]:
    """``--levels 0,0.3,0.5``: sparsity levels in [0, 1), sorted, duplicates removed."""
    try:
        levels = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise InputError(f"--levels {text!r}: expected comma-separated numbers, e.g. 0,0.3,0.5") from None
    if not levels:
        raise InputError("--levels: no levels given")
    return sorted({check_sparsity(v, "--levels value") for v in levels})


def check_choice(value: str, choices: tuple[str, ...], what: str) -> str:
    if value not in choices:
        raise InputError(f"{what} {value!r}: expected one of {', '.join(choices)}")
    return value


def stories_dir() -> Path:
    return Path(os.environ.get(STORIES_ENV, STORIES_DEFAULT_DIR))


def model_kind(spec: str) -> str:
    """How ``spec`` loads: ``gemma``, ``stories``, ``gguf``, ``hf`` or ``llama2c`` (checked without loading)."""
    if spec == DEFAULT_MODEL:
        return "gemma"
    if spec == STORIES_NAME:
        if not stories_dir().is_dir():
            raise InputError(f"--model {spec}: checkpoint directory {stories_dir()} not found (it lives in "
                             f"../shared/data beside the repository, or set {STORIES_ENV})")
        return "stories"
    path = Path(spec).expanduser()
    if not path.exists():
        raise InputError(f"--model {spec}: no such file or directory, and not a built-in model "
                         f"(built-ins: {DEFAULT_MODEL}, {STORIES_NAME})")
    if path.suffix == ".gguf" and regular_file(path, f"--model {spec}"):
        return "gguf"
    if path.is_dir() and (path / "config.json").exists():
        for part in path.iterdir():   # what transformers reads: regular files only (a pipe would hang it)
            if part.suffix in HF_FILE_SUFFIXES:
                regular_file(part, f"--model {part}")
        return "hf"
    if path.is_dir() and list(path.glob("tok*.bin")):
        return "llama2c"
    raise InputError(f"--model {spec}: expected a Hugging Face model directory (with config.json), "
                     f"a .gguf file, or a llama2.c directory (model .bin + tok*.bin)")


def check_text(spec: str) -> Path | None:
    """The text file of ``spec`` (None for the built-in ``pydoc``); its content is read by ``load_text``."""
    if spec == PYDOC:
        return None
    path = Path(spec).expanduser()
    if not os.path.lexists(path):
        raise InputError(f"--text {spec}: no such file (or use the built-in '{PYDOC}')")
    return regular_file(path, f"--text {spec}")


def check_count(value: int | None, flag: str, minimum: int) -> int | None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < minimum):
        raise InputError(f"{flag} {value}: must be an integer >= {minimum}")
    return value


def check_window(window: int | None) -> int | None:
    return check_count(window, "--window", 2)


def check_span(tokens: int | None, window: int | None, calib_tokens: int) -> None:
    """``--tokens``, ``--window`` and ``--calib-tokens`` as far as they can be checked without the model."""
    check_window(window)
    check_count(tokens, "--tokens", 1)
    check_count(calib_tokens, "--calib-tokens", 1)
    if tokens is not None and window is not None and tokens < window:   # a default window waits for the model
        raise InputError(f"--tokens {tokens}: shorter than one window ({window} tokens)")
