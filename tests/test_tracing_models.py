"""Model loading and structural FFN detection (tracing/models.py, tracing/ffn.py)."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from torch import nn  # noqa: E402

from sparsesim.errors import InputError  # noqa: E402
from sparsesim.tracing import models  # noqa: E402
from sparsesim.tracing.ffn import find_ffns, model_info  # noqa: E402
from sparsesim.tracing.sparsify import SparseFFN, ThresholdRule  # noqa: E402


def tiny(kind: str) -> nn.Module:
    """Random-init tiny models of several families. Random weights are fine here: only the module
    structure and shapes are under test, never the values."""
    t = transformers
    torch.manual_seed(0)
    configs = {
        "gpt2": t.GPT2Config(n_layer=2, n_embd=32, n_head=2, n_inner=96, vocab_size=64, n_positions=64),
        "opt": t.OPTConfig(num_hidden_layers=2, hidden_size=32, ffn_dim=80, num_attention_heads=2, vocab_size=64,
                           max_position_embeddings=64, word_embed_proj_dim=32),
        "neox": t.GPTNeoXConfig(num_hidden_layers=2, hidden_size=32, intermediate_size=72, num_attention_heads=2,
                                vocab_size=64, max_position_embeddings=64),
        "phi3": t.Phi3Config(num_hidden_layers=2, hidden_size=32, intermediate_size=48, num_attention_heads=2,
                             num_key_value_heads=2, vocab_size=64, max_position_embeddings=64, pad_token_id=0),
        "llama": t.LlamaConfig(num_hidden_layers=3, hidden_size=32, intermediate_size=40, num_attention_heads=2,
                               num_key_value_heads=1, vocab_size=64, max_position_embeddings=64),
    }
    return t.AutoModelForCausalLM.from_config(configs[kind]).eval()


@pytest.mark.parametrize("kind, ffn_kind, glu, d_ff, n_layers", [
    ("gpt2", "gpt2", False, 96, 2),
    ("opt", "opt", False, 80, 2),
    ("neox", "neox", False, 72, 2),
    ("phi3", "fused-gated", True, 48, 2),
    ("llama", "gated", True, 40, 3),
])
def test_ffn_found_by_structure(kind, ffn_kind, glu, d_ff, n_layers):
    model = tiny(kind)
    ffns = find_ffns(model, kind)
    assert [f.layer for f in ffns] == list(range(n_layers))
    assert {f.kind for f in ffns} == {ffn_kind}
    assert all(f.glu == glu and f.d_ff == d_ff and f.d_model == 32 for f in ffns)
    info = model_info(model, ffns, kind)
    total = sum(p.numel() for p in model.parameters())
    assert info["ffn_params"] + info["non_ffn_params"] == total
    # FFN params are exactly the projections' weights and biases, found independently by name here.
    names = ("gate_proj", "up_proj", "gate_up_proj", "down_proj", "c_fc", "mlp.c_proj", "fc1", "fc2",
             "dense_h_to_4h", "dense_4h_to_h")
    by_name = sum(p.numel() for n, p in model.named_parameters() if any(f".{k}." in f".{n}" for k in names))
    assert info["ffn_params"] == by_name
    assert 0 < info["attention_params"] < info["non_ffn_params"]
    assert info["lm_head_params"] == info["vocab_size"] * 32


def test_masks_at_gpt2_conv1d_down_input():
    """GPT-2's Conv1D c_proj: the hook sees act(c_fc(x)) and masks equal |h| >= T recomputed."""
    model = tiny("gpt2")
    ffns = find_ffns(model, "gpt2")
    seen = []
    handle = ffns[1].down.register_forward_pre_hook(lambda m, a: seen.append(a[0].clone()))
    x = torch.randint(0, 64, (1, 16))
    with torch.inference_mode(), SparseFFN(ffns, "intermediate", ThresholdRule([0.0, 0.05]), record=True) as hooks:
        model(x)
    handle.remove()
    packed = hooks.take_packed()           # [T, L, n_bytes]
    expect = seen[0][0].abs() >= 0.05
    assert np.array_equal(packed[:, 1], np.packbits(expect.numpy(), axis=-1, bitorder="little"))


def test_unknown_architecture_names_the_modules():
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = nn.Linear(8, 8)
            self.w_in, self.w_out, self.act = nn.Linear(8, 16), nn.Linear(16, 8), nn.GELU()

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = nn.ModuleList([Block(), Block()])

    with pytest.raises(InputError, match=r"unknown FFN structure.*blocks\.0 has modules \[attn, w_in, w_out, act\]"):
        find_ffns(Net(), "net")


def test_stories260k_metadata(shared_data):
    lm = models.load_model(str(shared_data / "llama2c-stories260K"))
    info = lm.info
    assert (info["n_layers"], info["d_model"], info["d_ff"], info["vocab_size"]) == (5, 64, [172] * 5, 512)
    assert info["total_params"] == 260_032 and info["glu"] and info["activation"] == "silu"
    assert info["tied_embeddings"] and info["lm_head_params"] == info["embedding_params"] == 512 * 64
    ids = lm.tokenizer("Once upon a time", add_special_tokens=False)["input_ids"]
    assert lm.tokenizer.decode(ids) == "Once upon a time" and lm.bos_id == 1


def test_missing_model_path(tmp_path):
    with pytest.raises(InputError, match="no such file or directory"):
        models.load_model(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="expected a Hugging Face model directory"):
        models.load_model(str(tmp_path / "empty"))


def test_gguf_conversion_failure_leaves_no_cache(tmp_path, monkeypatch):
    """A conversion that dies half-way leaves neither a final cache directory nor staging debris."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    final = models.cache_root() / "broken-hf-fp32"

    def half_written(staging):
        (staging / "model.gguf").write_bytes(b"GGUF" + b"\0" * 64)   # truncated GGUF: the loader fails
        return staging / "model.gguf"

    with pytest.raises(InputError, match="cannot load as a GGUF causal LM"):
        models._convert_gguf(final, half_written)
    assert not final.exists()
    assert list(models.cache_root().iterdir()) == []
