"""Tiny random-initialised mixture-of-experts models of each family (not a test module).

Shapes and plumbing only: the weights are random (seeded), so the routing means nothing about a
real model; what the tests check is that the tracer finds every expert bank, shared expert and
dense layer by structure and records exactly the experts the model's own router chose.
"""

from __future__ import annotations

import torch
import transformers as T

VOCAB = 512   # the stories260K tokenizer's vocabulary: tests tokenize real text with it
COMMON = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
              max_position_embeddings=128, bos_token_id=1, eos_token_id=2, pad_token_id=0)


def _gemma4():
    from transformers.models.gemma4.configuration_gemma4 import Gemma4TextConfig
    return Gemma4TextConfig(**COMMON, intermediate_size=48, head_dim=8, enable_moe_block=True, num_experts=8,
                            top_k_experts=2, moe_intermediate_size=16, hidden_size_per_layer_input=0,
                            vocab_size_per_layer_input=VOCAB, sliding_window=16,
                            layer_types=["sliding_attention", "sliding_attention", "full_attention"])


# family -> (config factory, expected per-layer routed experts, top-k, always-active units)
FAMILIES = {
    "mixtral": (lambda: T.MixtralConfig(**COMMON, intermediate_size=48, num_local_experts=8, num_experts_per_tok=2),
                [8, 8, 8], [2, 2, 2], [0, 0, 0]),
    "qwen2_moe": (lambda: T.Qwen2MoeConfig(**COMMON, intermediate_size=48, moe_intermediate_size=16,
                                           shared_expert_intermediate_size=32, num_experts=8, num_experts_per_tok=2,
                                           mlp_only_layers=[0]),
                  [0, 8, 8], [0, 2, 2], [1, 1, 1]),
    "qwen3_moe": (lambda: T.Qwen3MoeConfig(**COMMON, intermediate_size=48, moe_intermediate_size=16, num_experts=8,
                                           num_experts_per_tok=3, head_dim=8),
                  [8, 8, 8], [3, 3, 3], [0, 0, 0]),
    "olmoe": (lambda: T.OlmoeConfig(**COMMON, intermediate_size=16, num_experts=8, num_experts_per_tok=2),
              [8, 8, 8], [2, 2, 2], [0, 0, 0]),
    "gpt_oss": (lambda: T.GptOssConfig(**COMMON, intermediate_size=16, num_local_experts=8, num_experts_per_tok=2,
                                       head_dim=8, sliding_window=16),
                [8, 8, 8], [2, 2, 2], [0, 0, 0]),
    "deepseek_v2": (lambda: T.DeepseekV2Config(**COMMON, intermediate_size=48, moe_intermediate_size=16,
                                               n_routed_experts=8, num_experts_per_tok=2, n_shared_experts=2,
                                               first_k_dense_replace=1, kv_lora_rank=8, q_lora_rank=None,
                                               qk_rope_head_dim=4, qk_nope_head_dim=4, v_head_dim=8),
                    [0, 8, 8], [0, 2, 2], [1, 1, 1]),
    "deepseek_v3": (lambda: T.DeepseekV3Config(**COMMON, intermediate_size=48, moe_intermediate_size=16,
                                               n_routed_experts=8, num_experts_per_tok=2, n_shared_experts=1,
                                               first_k_dense_replace=1, n_group=4, topk_group=2, kv_lora_rank=8,
                                               q_lora_rank=16, qk_rope_head_dim=4, qk_nope_head_dim=4, v_head_dim=8,
                                               rope_scaling=None),
                    [0, 8, 8], [0, 2, 2], [1, 1, 1]),
    "gemma4": (_gemma4, [8, 8, 8], [2, 2, 2], [1, 1, 1]),
}


def tiny_moe(family: str, seed: int = 0) -> T.PreTrainedModel:
    """A random-initialised model of ``family`` (fp32, eval mode)."""
    torch.manual_seed(seed)
    model = T.AutoModelForCausalLM.from_config(FAMILIES[family][0]())
    if family == "deepseek_v3":   # a non-zero correction bias, so selection (biased) and weights (unbiased) differ
        for layer in model.model.layers[1:]:
            layer.mlp.gate.e_score_correction_bias.normal_(0, 0.05)
    return model.float().eval()
