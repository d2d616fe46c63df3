"""Model shapes from Hugging Face ``config.json`` files: the embedded ones and any a user names.

The embedded models are HF-style ``config.json`` files under ``spdsim/profiles/models/<name>.json``, each copied
from a published config and naming it in its ``_source`` key. The simulator builds its ``ModelShape`` from them
(``model = "qwen3-8b"``, or a path: ``--model path/to/config.json`` or a directory holding one); the executor's
``random:<name>`` presets build their transformers config from the same files (``transformers_fields``).

Supported architectures (``model_type``): dense Llama, Mistral, Qwen2 and Qwen3; the Qwen3.5 hybrid (Gated
DeltaNet layers and gated full attention, from ``layer_types`` or ``full_attention_interval``; the published
multimodal config's ``text_config`` is read); mixtures of experts (Qwen3-MoE, Mixtral, Qwen3-Next, Qwen3.5-MoE),
priced by the experts one token reads. Anything else, sliding-window attention and quantised weights other than
fp8 end in a one-line refusal naming what is missing.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

from spdsim.contract.shape import ModelShape
from spdsim.errors import SpdsimError

DENSE_TYPES = ("llama", "mistral", "qwen2", "qwen3")
MOE_TYPES = ("qwen3_moe", "mixtral", "qwen3_5_moe", "qwen3_5_moe_text", "qwen3_next")
HYBRID_TYPES = ("qwen3_5", "qwen3_5_text", "qwen3_5_moe", "qwen3_5_moe_text", "qwen3_next")
MODEL_TYPES = tuple(dict.fromkeys(DENSE_TYPES + MOE_TYPES + HYBRID_TYPES))
LINEAR, FULL = "linear_attention", "full_attention"
DTYPE_BYTES = {"bfloat16": 2, "float16": 2, "half": 2, "float32": 4, "float": 4, "float8_e4m3fn": 1}
# keys of a config file that are not transformers config fields
NOT_TRANSFORMERS = ("torch_dtype", "dtype", "transformers_version")


def models_dir() -> Path:
    """Where the embedded model configs live (``spdsim/profiles/models``)."""
    return Path(str(resources.files("spdsim") / "profiles" / "models"))


def embedded_model_names() -> list[str]:
    return [p.stem for p in sorted(models_dir().glob("*.json"))]


def is_model_path(spec: str | Path) -> bool:
    """A path (a ``.json`` file, something with a slash, an existing directory) rather than an embedded name."""
    text = str(spec)
    if text.lower() in embedded_model_names():
        return False
    return (
        isinstance(spec, Path) or text.endswith(".json") or "/" in text or "\\" in text or Path(text).is_dir()
    )


def _read(path: Path, what: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise SpdsimError(f"{what}: cannot read '{path}' ({exc.strerror or exc})") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SpdsimError(f"{what}: '{path}' is not a JSON config ({exc})") from None
    if not isinstance(data, dict):
        raise SpdsimError(f"{what}: '{path}' must hold a JSON object")
    return data


def read_model_config(spec: str | Path) -> tuple[str, dict[str, Any]]:
    """(name, config dict) of an embedded model name, a ``config.json`` path or a directory holding one.

    A path's name is its directory's (``Qwen3-8B/config.json`` -> ``Qwen3-8B``) or its stem (``my-model.json``).
    """
    if not is_model_path(spec):
        name = str(spec).lower()
        path = models_dir() / f"{name}.json"
        if not path.is_file():
            allowed = ", ".join(embedded_model_names())
            raise SpdsimError(
                f"model: unknown model '{spec}' (allowed: {allowed}; or a path to a HF config.json)"
            )
        return name, _read(path, "model")
    path = Path(spec).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise SpdsimError(f"model: directory '{path}' holds no config.json")
        return path.resolve().name, _read(path / "config.json", "model")
    if not path.is_file():
        raise SpdsimError(f"model: no such file or directory '{path}' (a HF config.json or its directory)")
    name = path.resolve().parent.name if path.name == "config.json" else path.stem
    return name, _read(path, "model")


def transformers_fields(config: dict[str, Any]) -> dict[str, Any]:
    """The config without spdsim's ``_`` keys and dtype/version keys: what ``AutoConfig.for_model`` takes."""
    return {k: v for k, v in config.items() if not k.startswith("_") and k not in NOT_TRANSFORMERS}


def text_config(config: dict[str, Any]) -> dict[str, Any]:
    """The language model's part of a config: ``text_config`` of a multimodal one (top-level keys it lacks, such
    as the dtype, are inherited; the top-level ``tie_word_embeddings`` wins), else the config itself."""
    inner = config.get("text_config")
    if not isinstance(inner, dict):
        return config
    merged = {k: v for k, v in config.items() if k not in ("text_config", "vision_config", "model_type")}
    merged.update(inner)
    merged.setdefault("model_type", f"{config.get('model_type', '')}_text")
    if "tie_word_embeddings" in config:  # the multimodal model ties (or not) its language model's lm_head
        merged["tie_word_embeddings"] = config["tie_word_embeddings"]
    return merged


def _int(config: dict[str, Any], key: str, name: str, default: int | None = None, least: int = 1) -> int:
    """``config[key]`` as an integer >= ``least``; ``default`` when the key is absent or null (if one is given)."""
    value = config.get(key)
    if value is None and default is not None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        kind = "positive" if least >= 1 else "non-negative"
        raise SpdsimError(f"model: '{name}' config needs a {kind} integer '{key}' (got {value!r})")
    return value


def _dtype_bytes(config: dict[str, Any], name: str) -> int:
    quant = config.get("quantization_config")
    if isinstance(quant, dict):
        method = str(quant.get("quant_method", "?"))
        if method != "fp8":
            raise SpdsimError(
                f"model: '{name}' has '{method}' quantised weights; only bf16/fp16/fp32 and fp8 weights are "
                "modelled (set model.dtype_bytes on an unquantised config)"
            )
        return 1
    dtype = config.get("torch_dtype", config.get("dtype")) or "bfloat16"
    if str(dtype) not in DTYPE_BYTES:
        raise SpdsimError(f"model: '{name}' has dtype '{dtype}' (allowed: {', '.join(DTYPE_BYTES)})")
    return DTYPE_BYTES[str(dtype)]


def _linear_layers(config: dict[str, Any], layers: int, hybrid: bool, name: str) -> int:
    """Gated-DeltaNet layers: from ``layer_types`` or, without it, every layer but each
    ``full_attention_interval``-th (Qwen3.5 and Qwen3-Next: 3 of 4)."""
    types = config.get("layer_types")
    if types is not None:
        if not isinstance(types, list) or len(types) != layers:
            raise SpdsimError(f"model: '{name}' layer_types must list num_hidden_layers = {layers} entries")
        unknown = sorted({t for t in types if t not in (LINEAR, FULL)})
        if unknown or (not hybrid and LINEAR in types):
            kind = unknown[0] if unknown else LINEAR
            raise SpdsimError(
                f"model: '{name}' has '{kind}' layers, which the simulator does not model "
                f"(sliding-window attention is refused; linear attention only in {', '.join(HYBRID_TYPES)})"
            )
        return types.count(LINEAR)
    if not hybrid:
        return 0
    interval = _int(config, "full_attention_interval", name) if "full_attention_interval" in config else 4
    return layers - layers // interval


def _refuse_sliding_window(config: dict[str, Any], model_type: str, name: str) -> None:
    window = config.get("sliding_window")
    enabled = config.get("use_sliding_window", model_type in ("mistral", "mixtral"))
    if window and enabled:
        raise SpdsimError(
            f"model: '{name}' uses sliding-window attention (sliding_window {window}), which the simulator does "
            "not model (its KV cache would be priced in full)"
        )


def _experts(config: dict[str, Any], model_type: str, name: str) -> dict[str, int]:
    """MoE fields of the shape: the active MLP width (routed experts one token reads + shared expert)."""
    if model_type == "mixtral":
        total, active, width = (
            _int(config, "num_local_experts", name),
            _int(config, "num_experts_per_tok", name),
            _int(config, "intermediate_size", name),
        )
    else:
        total = _int(config, "num_experts", name)
        active = _int(config, "num_experts_per_tok", name)
        width = _int(config, "moe_intermediate_size", name)
    if config.get("mlp_only_layers") or config.get("decoder_sparse_step", 1) != 1:
        raise SpdsimError(
            f"model: '{name}' mixes dense and MoE layers (mlp_only_layers / decoder_sparse_step), which the "
            "simulator does not model"
        )
    shared = _int(config, "shared_expert_intermediate_size", name, default=0, least=0)
    return {
        "intermediate_size": active * width + shared,
        "num_experts": total,
        "experts_per_token": active,
        "expert_intermediate_size": width,
    }


def shape_from_config(config: dict[str, Any], name: str) -> ModelShape:
    """The ModelShape of a HF config dict; a one-line SpdsimError for what the simulator does not model."""
    config = text_config(config)
    model_type = str(config.get("model_type", ""))
    if model_type not in MODEL_TYPES:
        raise SpdsimError(
            f"model: '{name}' has model_type '{model_type or '?'}', which the simulator does not model "
            f"(supported: {', '.join(MODEL_TYPES)})"
        )
    hybrid = model_type in HYBRID_TYPES
    moe = model_type in MOE_TYPES
    layers = _int(config, "num_hidden_layers", name)
    hidden = _int(config, "hidden_size", name)
    heads = _int(config, "num_attention_heads", name)
    head_dim = _int(config, "head_dim", name, default=hidden // heads)
    if "head_dim" not in config and hidden % heads:
        raise SpdsimError(
            f"model: '{name}' needs head_dim (hidden_size {hidden} is not a multiple of {heads})"
        )
    _refuse_sliding_window(config, model_type, name)
    fields: dict[str, Any] = {
        "name": name,
        "num_layers": layers,
        "hidden_size": hidden,
        "num_attention_heads": heads,
        "num_kv_heads": _int(config, "num_key_value_heads", name, default=heads),
        "head_dim": head_dim,
        "intermediate_size": 0 if moe else _int(config, "intermediate_size", name),
        "vocab_size": _int(config, "vocab_size", name),
        "tied_embeddings": bool(config.get("tie_word_embeddings", False)),
        "dtype_bytes": _dtype_bytes(config, name),
        "linear_attention_layers": _linear_layers(config, layers, hybrid, name),
    }
    if moe:
        fields.update(_experts(config, model_type, name))
    if hybrid:
        key_dim = _int(config, "linear_key_head_dim", name)
        if config.get("linear_value_head_dim", key_dim) != key_dim:
            raise SpdsimError(
                f"model: '{name}' has linear_value_head_dim != linear_key_head_dim, which the simulator's "
                "Gated-DeltaNet terms do not model"
            )
        fields.update(
            attention_output_gate=bool(config.get("attn_output_gate", True)),
            linear_key_heads=_int(config, "linear_num_key_heads", name),
            linear_value_heads=_int(config, "linear_num_value_heads", name),
            linear_head_dim=key_dim,
        )
    return ModelShape(**fields)


def model_shape(spec: str | Path) -> ModelShape:
    """The ModelShape of an embedded model name, a ``config.json`` path or a directory holding one."""
    name, config = read_model_config(spec)
    return shape_from_config(config, name)
