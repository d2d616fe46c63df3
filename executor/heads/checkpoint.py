"""Load and save SPD v11 checkpoints in the published format (docs/spd.md §2.4, §2.6):
a torch file holding `{"state_dict": speculation_module.state_dict(), "config": {...}}`, strict key matching.

Every problem a user can cause (wrong version, wrong base model, missing or extra keys, wrong shapes) ends in one
`SpdsimError` line naming the field.
"""

from __future__ import annotations

from pathlib import Path

import torch

from executor.heads.layers import check_base_family, same_family
from executor.heads.spd_v11 import SpdHeadConfig, SpeculationModuleV11
from spdsim.contract import SpdsimError

ACCEPTED_VERSIONS = (0, 11)
REFUSED_VERSIONS = {
    10: "version 10 is the paper-v1 module (stage_projs, g0_proj, per-layer memory projections); "
    "its weights are not interchangeable with v11",
    12: "version 12 is the exploratory uneven-split format the reference loader itself rejects; "
    "re-save it as version 11 with a stage_layers list",
}


def spd_checkpoint_config(module: SpeculationModuleV11, base_config) -> dict:
    """The config dict `train.py::save_speculation_head_checkpoint` writes, plus stage_layers when uneven.

    As the reference: `spec_init_from_base_layers` only as a non-empty list of layer indices (its loaders run
    `[int(x) for x in raw]` on it), `draft_token_ids` only when the draft vocabulary is restricted."""
    head = module.head_config
    config = {
        "hidden_size": base_config.hidden_size,
        "vocab_size": base_config.vocab_size,
        "model_type": base_config.model_type,
        "base_model_path": head.base_model_path,
        "draft_vocab_size": module.lm_head.weight.shape[0],
        "num_stages": head.num_stages,
        "num_spec_layers": head.num_spec_layers,
        "version": 11,
        "trained_with_use_deepest": head.trained_with_use_deepest,
        "aggr_feature_bound": list(head.aggr_feature_bound),
        "num_aggr_types": len(head.aggr_feature_bound),
        "spec_intermediate_size_fallback": head.spec_intermediate_size_fallback,
    }
    if head.spec_init_from_base_layers:
        config["spec_init_from_base_layers"] = list(head.spec_init_from_base_layers)
    if head.draft_token_ids is not None:
        config["draft_token_ids"] = list(head.draft_token_ids)
    if len(set(head.stage_layers)) > 1:
        config["stage_layers"] = list(head.stage_layers)
    return config


def save_spd_checkpoint(module: SpeculationModuleV11, base_config, path: str | Path) -> None:
    """Write `{"state_dict", "config"}` atomically (no half-written file on failure)."""
    path = Path(path)
    state = {key: tensor.detach().cpu().clone() for key, tensor in module.state_dict().items()}
    payload = {"state_dict": state, "config": spd_checkpoint_config(module, base_config)}
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)


def load_spd_checkpoint(
    source: str | Path | dict,
    base_config,
    final_norm_weight: torch.Tensor | None = None,
    dtype: torch.dtype | None = None,
) -> SpeculationModuleV11:
    """Build the module a checkpoint (path or already-loaded dict) describes and load it with strict keys."""
    payload = _read_payload(source)
    config, state = payload["config"], payload["state_dict"]
    _check_version(config)
    check_base_family(base_config)
    _check_base_match(config, state, base_config)
    head = _head_config_from(config, base_config)
    module = SpeculationModuleV11(base_config, head, dtype=dtype or _state_dtype(state))
    _check_keys_and_shapes(module, state)
    module.load_state_dict(state, strict=True)
    if final_norm_weight is not None:
        module.attach_base(final_norm_weight)
    return module


def _read_payload(source) -> dict:
    if isinstance(source, dict):
        payload = source
    else:
        path = Path(source)
        if not path.is_file():
            raise SpdsimError(f"SPD checkpoint {str(path)!r} does not exist")
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # any unreadable file is a user error at this boundary
            raise SpdsimError(f"SPD checkpoint {str(path)!r} is not a readable torch file: {error}") from None
    if not isinstance(payload, dict) or not {"state_dict", "config"} <= set(payload):
        raise SpdsimError('SPD checkpoint must be a dict with keys "state_dict" and "config"')
    if not isinstance(payload["config"], dict) or not isinstance(payload["state_dict"], dict):
        raise SpdsimError('SPD checkpoint "config" and "state_dict" must both be dicts')
    return payload


def _check_version(config: dict) -> None:
    version = config.get("version", 0)
    if version in REFUSED_VERSIONS:
        raise SpdsimError(f"SPD checkpoint refused: {REFUSED_VERSIONS[version]}")
    if version not in ACCEPTED_VERSIONS:
        raise SpdsimError(f"SPD checkpoint version {version!r} is unknown; this loader reads version 11")


def _check_base_match(config: dict, state: dict, base_config) -> None:
    ckpt_type = config.get("model_type")
    if ckpt_type is not None and not same_family(ckpt_type, base_config.model_type):
        raise SpdsimError(
            f"SPD checkpoint was trained on a {ckpt_type!r} base; the base model given is {base_config.model_type!r}"
        )
    hidden = config.get("hidden_size")
    weight = state.get("aggr_projs.0.weight")
    if hidden is None and weight is not None:
        hidden = weight.shape[0]
    if hidden is not None and hidden != base_config.hidden_size:
        raise SpdsimError(
            f"SPD checkpoint hidden_size {hidden} does not match the base model's hidden_size {base_config.hidden_size}"
        )
    vocab = config.get("vocab_size")
    if vocab is not None and vocab != base_config.vocab_size:
        raise SpdsimError(
            f"SPD checkpoint vocab_size {vocab} does not match the base model's vocab_size {base_config.vocab_size}"
        )


def _head_config_from(config: dict, base_config) -> SpdHeadConfig:
    if "num_stages" not in config:
        raise SpdsimError("SPD checkpoint config lacks the required field 'num_stages'")
    stage_layers = config.get("stage_layers")
    if isinstance(stage_layers, str):
        stage_layers = [int(c) for c in stage_layers.split(";")]
    extra = {
        key: config[key]
        for key in (
            "trained_with_use_deepest",
            "spec_intermediate_size_fallback",
            "spec_init_from_base_layers",
            "base_model_path",
        )
        if config.get(key) is not None
    }
    return SpdHeadConfig.build(
        base_config,
        num_stages=int(config["num_stages"]),
        num_spec_layers=int(config.get("num_spec_layers", 1)),
        aggr_feature_bound=config.get("aggr_feature_bound") or "auto",
        stage_layers=stage_layers,
        draft_token_ids=config.get("draft_token_ids"),
        **extra,
    )


def _state_dtype(state: dict) -> torch.dtype:
    for tensor in state.values():
        if torch.is_tensor(tensor) and tensor.is_floating_point():
            return tensor.dtype
    return torch.float32


def _check_keys_and_shapes(module: SpeculationModuleV11, state: dict) -> None:
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing:
        raise SpdsimError(f"SPD checkpoint is missing {len(missing)} key(s), e.g. {', '.join(missing[:3])}")
    if unexpected:
        raise SpdsimError(
            f"SPD checkpoint has {len(unexpected)} unexpected key(s), e.g. {', '.join(unexpected[:3])}"
        )
    for key, tensor in expected.items():
        if tuple(state[key].shape) != tuple(tensor.shape):
            raise SpdsimError(
                f"SPD checkpoint key {key} has shape {list(state[key].shape)}, expected {list(tensor.shape)}"
            )
