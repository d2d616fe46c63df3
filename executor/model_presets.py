"""Architecture configs for ``random:<preset>`` models: the published HF ``config.json`` files the simulator ships
(``spdsim/profiles/models/<name>.json``, each naming its source in ``_source``; read through
``spdsim.contract.model_config``), plus tiny shapes of the same families for CPU tests."""

from __future__ import annotations

import copy
from typing import Any

from spdsim.contract.model_config import embedded_model_names, read_model_config, transformers_fields

# The fast decoders (executor/fastmodel.py, executor/hybrid.py) run these model types; the other shipped
# configs (Mistral, mixtures of experts) are simulator shapes only.
FAST_MODEL_TYPES = ("llama", "qwen2", "qwen3", "qwen3_5_text")

PRESETS: dict[str, dict[str, Any]] = {
    name: transformers_fields(read_model_config(name)[1]) for name in embedded_model_names()
}
PRESETS["llama3.1-8b"] = copy.deepcopy(PRESETS["llama-3.1-8b"])  # the executor's earlier name of the config

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

# Qwen3.5 (hybrid: Gated DeltaNet + gated full attention, 3:1): random:qwen3.5-4b and random:qwen3.5-9b are the
# shipped text configs (their _source and _notes say where the values come from).
_QWEN35_COMMON: dict[str, Any] = {
    k: v
    for k, v in PRESETS["qwen3.5-9b"].items()
    if k not in ("hidden_size", "intermediate_size", "tie_word_embeddings")
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
UNSUPPORTED: dict[str, str] = {
    name: (
        f"model: random:{name} is a '{config['model_type']}' model, which the executor's fast decoders do not run "
        f"(they run {', '.join(FAST_MODEL_TYPES)}); the simulator prices it (spdsim simulate --model {name})"
    )
    for name, config in PRESETS.items()
    if config["model_type"] not in FAST_MODEL_TYPES
}
