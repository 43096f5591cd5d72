"""Every ```python example in docs/*.md runs, in a directory holding a small trace ``t.parquet``."""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pytest

from tracebuild import write_trace

DOCS = Path(__file__).resolve().parents[1] / "docs"
BLOCK = re.compile(r"```python\n(.*?)```", re.S)
EXAMPLES = [(path.name, i, code) for path in sorted(DOCS.glob("*.md"))
            for i, code in enumerate(BLOCK.findall(path.read_text()))]


def test_the_docs_have_examples():
    assert len(EXAMPLES) >= 5


@pytest.mark.parametrize("name,index,code", EXAMPLES, ids=[f"{n}[{i}]" for n, i, _ in EXAMPLES])
def test_doc_example_runs(name, index, code, tmp_path):
    rng = np.random.default_rng(0)
    write_trace(tmp_path / "t.parquet", rng.random((24, 3, 256)) < 0.1, d_model=128)
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        exec(compile(code, f"{name} example {index}", "exec"), {"__name__": f"doc_example_{index}"})
    finally:
        os.chdir(cwd)
