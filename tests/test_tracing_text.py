"""Text sources and the calibration / evaluation split (tracing/text.py)."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from sparsesim.errors import InputError
from sparsesim.tracing.text import load_text, split_tokens


def test_pydoc_is_deterministic_and_hashed():
    a, b = load_text("pydoc"), load_text("pydoc")
    assert a.text == b.text and len(a.text) > 100_000
    assert a.sha256 == hashlib.sha256(a.text.encode()).hexdigest()
    assert a.describe()["name"] == "pydoc"


def test_file_source_and_bad_files(tmp_path):
    p = tmp_path / "t.txt"
    p.write_text("héllo world\n", encoding="utf-8")
    assert load_text(str(p)).sha256 == hashlib.sha256("héllo world\n".encode()).hexdigest()
    with pytest.raises(InputError, match="no such file"):
        load_text(str(tmp_path / "missing.txt"))
    (tmp_path / "bin").write_bytes(b"\xff\xfe\x00abc")
    with pytest.raises(InputError, match="not UTF-8"):
        load_text(str(tmp_path / "bin"))


def test_split_is_disjoint_eval_first_calibration_last():
    src = load_text("pydoc")
    ids = np.arange(1000)
    s = split_tokens(ids, src, eval_tokens=300, calib_tokens=200, window=100)
    assert list(s.evaluation) == list(range(300))
    assert list(s.calibration) == list(range(800, 1000)) and s.calib_start == 800
    everything = split_tokens(ids, src, eval_tokens=None, calib_tokens=200, window=100)
    assert len(everything.evaluation) == 800 and not set(everything.evaluation) & set(everything.calibration)


@pytest.mark.parametrize("eval_tokens, calib, window, message", [
    (None, 950, 100, "too short for 100 evaluation tokens"),
    (900, 200, 100, "too short for 900 evaluation tokens"),
    (50, 200, 100, "shorter than one window"),
    (100, 0, 100, "at least 1"),
])
def test_split_rejects_short_text(eval_tokens, calib, window, message):
    with pytest.raises(InputError, match=message):
        split_tokens(np.arange(1000), load_text("pydoc"), eval_tokens=eval_tokens, calib_tokens=calib, window=window)
