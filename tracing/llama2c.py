"""llama2.c checkpoints (legacy version-0 ``.bin`` + ``tokNNN.bin``) as HF Llama models.

The conversion follows ``shared/reference/models_and_data.md``, where it was verified against a
numpy port of run.c (max |Δlogit| 8.2e-6) and run.c's ``encode()`` (same ids on 300/300 lines).
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer, decoders, models, normalizers, processors
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from sparsesim.errors import InputError
from sparsesim.inputs import read_bytes

WEIGHT_BYTES = 1 << 36   # 64 GiB: read whole, so bounded (llama2.c's largest published model is 440 MB)
HEADER = struct.Struct("7i")  # dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len


def load_llama2c(directory: Path) -> tuple[LlamaForCausalLM, PreTrainedTokenizerFast]:
    """Load ``<dir>/<model>.bin`` and ``<dir>/tok*.bin`` (exactly one of each)."""
    if not directory.is_dir():
        raise InputError(f"--model {directory}: llama2.c checkpoint directory not found")
    toks = sorted(directory.glob("tok*.bin"))
    weights = sorted(p for p in directory.glob("*.bin") if p not in toks)
    if len(toks) != 1 or len(weights) != 1:
        raise InputError(f"--model {directory}: expected one model .bin and one tok*.bin, "
                         f"found {[p.name for p in weights + toks]}")
    return _load_weights(weights[0]), _load_tokenizer(toks[0])


def _load_weights(path: Path) -> LlamaForCausalLM:
    raw = read_bytes(path, limit=WEIGHT_BYTES)
    if len(raw) < HEADER.size:
        raise InputError(f"{path}: too short for a llama2.c checkpoint header")
    dim, hidden, n_layers, n_heads, n_kv, vocab, seq = HEADER.unpack_from(raw)
    shared, vocab = vocab > 0, abs(vocab)   # a negative vocab size marks an untied classifier
    if min(dim, hidden, n_layers, n_heads, n_kv, vocab, seq) <= 0 or dim % n_heads:
        raise InputError(f"{path}: implausible llama2.c header {HEADER.unpack_from(raw)}")
    head = dim // n_heads
    flat = np.frombuffer(raw, dtype=np.float32, offset=HEADER.size)
    offset = 0

    def take(*shape: int) -> torch.Tensor:
        nonlocal offset
        n = int(np.prod(shape))
        if offset + n > flat.size:
            raise InputError(f"{path}: truncated llama2.c checkpoint (header promises more weights)")
        t = torch.from_numpy(flat[offset:offset + n].copy()).view(*shape)
        offset += n
        return t

    emb, rms_att = take(vocab, dim), take(n_layers, dim)
    wq, wk = take(n_layers, dim, n_heads * head), take(n_layers, n_kv * head, dim)
    wv, wo = take(n_layers, n_kv * head, dim), take(n_layers, dim, n_heads * head)
    rms_ffn = take(n_layers, dim)
    w1, w2, w3 = take(n_layers, hidden, dim), take(n_layers, dim, hidden), take(n_layers, hidden, dim)
    rms_final = take(dim)
    take(seq, head // 2)  # freq_cis tables: HF computes RoPE itself
    take(seq, head // 2)
    classifier = None if shared else take(vocab, dim)
    if offset != flat.size:
        raise InputError(f"{path}: {flat.size - offset} trailing floats after the llama2.c weights")

    cfg = LlamaConfig(hidden_size=dim, intermediate_size=hidden, num_hidden_layers=n_layers,
                      num_attention_heads=n_heads, num_key_value_heads=n_kv, vocab_size=vocab,
                      max_position_embeddings=seq, rms_norm_eps=1e-5, rope_theta=10000.0, hidden_act="silu",
                      tie_word_embeddings=shared, bos_token_id=1, eos_token_id=2, head_dim=head)

    def halves(t: torch.Tensor, heads: int) -> torch.Tensor:
        # llama2.c rotates interleaved pairs, HF rotates halves: permute q/k rows per head.
        return t.view(heads, t.shape[0] // heads // 2, 2, t.shape[1]).transpose(1, 2).reshape(t.shape)

    state = {"model.embed_tokens.weight": emb, "model.norm.weight": rms_final}
    if classifier is not None:
        state["lm_head.weight"] = classifier
    for i in range(n_layers):
        p = f"model.layers.{i}."
        state.update({
            p + "input_layernorm.weight": rms_att[i], p + "post_attention_layernorm.weight": rms_ffn[i],
            p + "self_attn.q_proj.weight": halves(wq[i], n_heads), p + "self_attn.k_proj.weight": halves(wk[i], n_kv),
            p + "self_attn.v_proj.weight": wv[i], p + "self_attn.o_proj.weight": wo[i],
            p + "mlp.gate_proj.weight": w1[i], p + "mlp.down_proj.weight": w2[i], p + "mlp.up_proj.weight": w3[i],
        })
    model = LlamaForCausalLM(cfg)
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected and all("lm_head" in k for k in missing), (missing, unexpected)
    if shared:
        model.tie_weights()
    return model.eval()


def _load_tokenizer(path: Path) -> PreTrainedTokenizerFast:
    """``tokNNN.bin``: int32 max_len, then per token f32 score, i32 length, UTF-8 bytes."""
    raw = read_bytes(path)
    offset, pieces = 4, []
    try:
        while offset < len(raw):
            score, n = struct.unpack_from("fi", raw, offset)
            offset += 8
            pieces.append((raw[offset:offset + n].decode("utf-8"), score))
            offset += n
    except (struct.error, UnicodeDecodeError):
        raise InputError(f"{path}: not a llama2.c tokenizer file") from None
    # BOS/EOS are exported as "\n<s>\n"/"\n</s>\n"; sentencepiece's '▁' was exported as ' '.
    special = {1: "<s>", 2: "</s>"}
    names = [special.get(i, p.replace(" ", "\u2581")) for i, (p, _) in enumerate(pieces)]
    vocab = {name: i for i, name in enumerate(names)}
    score = {name: s for name, (_, s) in zip(names, pieces)}
    # BPE merges ranked by the merged piece's score, as sentencepiece/run.c merge greedily by score.
    merges = sorted(((score[pc], vocab[pc[:k]], vocab[pc[k:]], pc[:k], pc[k:])
                     for pc, i in vocab.items() if i >= 259
                     for k in range(1, len(pc)) if pc[:k] in vocab and pc[k:] in vocab),
                    key=lambda m: (-m[0], m[1], m[2]))
    t = Tokenizer(models.BPE(vocab=vocab, merges=[(a, b) for *_, a, b in merges], unk_token="<unk>",
                             byte_fallback=True, fuse_unk=True))
    t.normalizer = normalizers.Sequence([normalizers.Prepend("\u2581"), normalizers.Replace(" ", "\u2581")])
    t.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse(),
                                   decoders.Strip(" ", 1, 0)])
    t.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=t, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
