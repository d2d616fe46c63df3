"""Real architecture configs for ``random:<preset>`` models (values from the published HF config.json files)."""

from __future__ import annotations

from typing import Any

_QWEN3_COMMON: dict[str, Any] = {
    "model_type": "qwen3",
    "architectures": ["Qwen3ForCausalLM"],
    "vocab_size": 151936,
    "head_dim": 128,
    "hidden_act": "silu",
    "rms_norm_eps": 1e-6,
    "rope_theta": 1000000.0,
    "max_position_embeddings": 40960,
    "attention_bias": False,
    "bos_token_id": 151643,
    "eos_token_id": 151645,
}

PRESETS: dict[str, dict[str, Any]] = {
    "qwen3-0.6b": {
        **_QWEN3_COMMON,
        "hidden_size": 1024,
        "intermediate_size": 3072,
        "num_hidden_layers": 28,
        "num_attention_heads": 16,
        "num_key_value_heads": 8,
        "tie_word_embeddings": True,
    },
    "qwen3-4b": {
        **_QWEN3_COMMON,
        "hidden_size": 2560,
        "intermediate_size": 9728,
        "num_hidden_layers": 36,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "tie_word_embeddings": True,
    },
    "qwen3-8b": {
        **_QWEN3_COMMON,
        "hidden_size": 4096,
        "intermediate_size": 12288,
        "num_hidden_layers": 36,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "tie_word_embeddings": False,
    },
    "llama3.1-8b": {
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "vocab_size": 128256,
        "hidden_size": 4096,
        "intermediate_size": 14336,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "head_dim": 128,
        "hidden_act": "silu",
        "rms_norm_eps": 1e-5,
        "rope_theta": 500000.0,
        "rope_scaling": {
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        },
        "max_position_embeddings": 131072,
        "attention_bias": False,
        "mlp_bias": False,
        "tie_word_embeddings": False,
        "bos_token_id": 128000,
        "eos_token_id": [128001, 128008, 128009],
    },
}

# Tiny shapes of the two families for tests and CPU dry runs (not published models).
_TINY: dict[str, Any] = {
    "vocab_size": 320,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "hidden_act": "silu",
    "max_position_embeddings": 2048,
    "initializer_range": 0.2,
    "bos_token_id": 257,
    "eos_token_id": 256,
    "pad_token_id": 256,
}
PRESETS["tiny-qwen3"] = {
    **_TINY,
    "model_type": "qwen3",
    "architectures": ["Qwen3ForCausalLM"],
    "rms_norm_eps": 1e-6,
    "rope_theta": 10000.0,
    "tie_word_embeddings": True,
}
PRESETS["tiny-llama"] = {
    **_TINY,
    "model_type": "llama",
    "architectures": ["LlamaForCausalLM"],
    "rms_norm_eps": 1e-5,
    "rope_theta": 500000.0,
    "tie_word_embeddings": False,
    "rope_scaling": {
        "rope_type": "llama3",
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 64,
    },
}

# Qwen3.5 (hybrid: Gated DeltaNet + gated full attention, 3:1). Source: the published Qwen/Qwen3.5-4B and
# Qwen/Qwen3.5-9B config.json text_config as recalled (the hub is unreachable here), cross-checked against
# transformers 5.24 ``Qwen3_5TextConfig``, whose defaults are documented as "the Qwen3.5-9B style configuration"
# (vocab 248320, hidden 4096, intermediate 12288, 32 layers, 16 q / 4 kv heads, head_dim 256, linear attention
# 16 key / 32 value heads of dim 128, conv kernel 4, full_attention_interval 4, partial rotary 0.25). The 4B
# shares everything but hidden 2560, intermediate 9216 and tied embeddings (docs/spd.md §2.4).
_QWEN35_COMMON: dict[str, Any] = {
    "model_type": "qwen3_5_text",
    "architectures": ["Qwen3_5ForCausalLM"],
    "vocab_size": 248320,
    "num_hidden_layers": 32,
    "num_attention_heads": 16,
    "num_key_value_heads": 4,
    "head_dim": 256,
    "hidden_act": "silu",
    "rms_norm_eps": 1e-6,
    "max_position_embeddings": 262144,
    "attention_bias": False,
    "linear_conv_kernel_dim": 4,
    "linear_key_head_dim": 128,
    "linear_value_head_dim": 128,
    "linear_num_key_heads": 16,
    "linear_num_value_heads": 32,
    "full_attention_interval": 4,
    "rope_parameters": {
        "rope_type": "default",
        "rope_theta": 10000000.0,
        "partial_rotary_factor": 0.25,
        "mrope_section": [11, 11, 10],
        "mrope_interleaved": True,
    },
    "eos_token_id": 248044,
}
PRESETS["qwen3.5-4b"] = {
    **_QWEN35_COMMON,
    "hidden_size": 2560,
    "intermediate_size": 9216,
    "tie_word_embeddings": True,
}
PRESETS["qwen3.5-9b"] = {
    **_QWEN35_COMMON,
    "hidden_size": 4096,
    "intermediate_size": 12288,
    "tie_word_embeddings": False,
}
# The same architecture at a CPU-test size: 8 layers = 2 x (3 DeltaNet + 1 gated attention).
PRESETS["tiny-qwen3.5"] = {
    **_QWEN35_COMMON,
    **_TINY,
    "num_hidden_layers": 8,
    "linear_num_key_heads": 2,
    "linear_num_value_heads": 4,
    "linear_key_head_dim": 16,
    "linear_value_head_dim": 16,
    "rope_parameters": {
        **_QWEN35_COMMON["rope_parameters"],
        "rope_theta": 10000.0,
        "mrope_section": [1, 1, 0],
    },
    "tie_word_embeddings": False,
}

# Presets whose architecture the fast decoder cannot run, with the reason (one line each).
UNSUPPORTED: dict[str, str] = {}
