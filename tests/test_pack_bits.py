"""Packing masks on an accelerator gives numpy's little-endian bit order (checked on the CPU)."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")


def test_pack_bits_matches_numpy():
    from sparsesim.tracing.sparsify import pack_bits

    bits = torch.rand(4, 3, 37, generator=torch.Generator().manual_seed(0)) < 0.3
    assert np.array_equal(pack_bits(bits).numpy(), np.packbits(bits.numpy(), axis=-1, bitorder="little"))
