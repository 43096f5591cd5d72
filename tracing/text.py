"""Text sources and the calibration / evaluation split.

A text source is a UTF-8 file or the built-in ``pydoc`` (the Python reference topics shipped with
every Python, ``pydoc_data.topics.topics``, joined in sorted-key order). It is recorded by name
and the SHA-256 of the exact text used.

Split rule (one tokenization of the whole text, no special tokens):

* **calibration** = the *last* ``calib_tokens`` tokens of the text;
* **evaluation** = the *first* ``eval_tokens`` tokens (all tokens before the calibration span
  when ``eval_tokens`` is None).

The spans are disjoint by construction; a text too short for both is an error. Evaluation from
the start keeps perplexities comparable with the usual "first N tokens of the test set".
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from sparsesim.errors import InputError
from sparsesim.inputs import TEXT_BYTES, read_text
from sparsesim.tracing.checks import PYDOC, check_text


@dataclass(frozen=True)
class TextSource:
    name: str       # "pydoc" or the path as given
    text: str

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.text.encode("utf-8")).hexdigest()

    def describe(self) -> dict:
        return {"name": self.name, "sha256": self.sha256, "chars": len(self.text)}


@dataclass(frozen=True)
class TokenSplit:
    evaluation: np.ndarray      # int64 token ids, text positions [0, len)
    calibration: np.ndarray     # int64 token ids, text positions [calib_start, total)
    calib_start: int
    total: int                  # tokens in the whole text


def load_text(spec: str) -> TextSource:
    if spec == PYDOC:
        from pydoc_data.topics import topics
        return TextSource(PYDOC, "\n\n".join(topics[k] for k in sorted(topics)))
    path = check_text(spec)
    text = read_text(path, f"--text {spec}", TEXT_BYTES)
    if not text.strip():
        raise InputError(f"--text {spec}: file is empty")
    return TextSource(spec, text)


def tokenize(tokenizer, source: TextSource) -> np.ndarray:
    """All token ids of the text, without BOS/EOS (windows add their own BOS)."""
    # The "longer than the model's maximum length" warning does not apply: we window the ids.
    ids = tokenizer(source.text, add_special_tokens=False, verbose=False)["input_ids"]
    return np.asarray(ids, dtype=np.int64)


def split_tokens(ids: np.ndarray, source: TextSource, *, eval_tokens: int | None, calib_tokens: int,
                 window: int) -> TokenSplit:
    """Disjoint calibration (end of text) and evaluation (start of text) spans; see the module doc."""
    if calib_tokens < 1:
        raise InputError(f"--calib-tokens {calib_tokens}: must be at least 1")
    if eval_tokens is not None and eval_tokens < window:
        raise InputError(f"--tokens {eval_tokens}: shorter than one window ({window} tokens)")
    available = len(ids) - calib_tokens
    wanted = window if eval_tokens is None else eval_tokens
    if available < wanted:
        raise InputError(f"--text {source.name}: {len(ids)} tokens, too short for {wanted} evaluation tokens "
                         f"(at least one window of {window}) plus {calib_tokens} calibration tokens")
    n_eval = available if eval_tokens is None else eval_tokens
    return TokenSplit(evaluation=ids[:n_eval], calibration=ids[available:], calib_start=available, total=len(ids))
