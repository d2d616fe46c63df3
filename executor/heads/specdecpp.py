"""SpecDec++ acceptance-prediction head (docs/baselines.md §3): one weight-tied ResBlock
(x + SiLU(Linear(H, H)(x))) applied `num_layers` times, then Linear(H, 2); softmax index 1 = "accepted".

Published folder format: `config.json` {"hidden_size", "num_layers"} + `model.safetensors` with keys
`model.{i}.linear.weight/bias` for the tied block (stored once or at several i) and `model.{k}.weight/bias`.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from spdsim.contract import SpdsimError


class ResBlock(nn.Module):
    def __init__(self, hidden_size: int):
        super().__init__()
        self.linear = nn.Linear(hidden_size, hidden_size)
        nn.init.zeros_(self.linear.weight)  # starts near identity (Medusa-style ResBlock init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + F.silu(self.linear(x))


class AcceptanceHead(nn.Module):
    """Module path `model` = Sequential(ResBlock × k (one shared object), Linear(H, 2))."""

    def __init__(self, hidden_size: int, num_layers: int):
        super().__init__()
        if hidden_size < 1 or num_layers < 1:
            raise SpdsimError(
                f"specdecpp head needs hidden_size >= 1 and num_layers >= 1, got {hidden_size}, {num_layers}"
            )
        self.hidden_size, self.num_layers = hidden_size, num_layers
        block = ResBlock(hidden_size)
        self.model = nn.Sequential(*([block] * num_layers), nn.Linear(hidden_size, 2))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logits [..., 2] from the draft model's last-layer hidden state at the newest candidate token."""
        return self.model(hidden.to(self.model[-1].weight.dtype))

    def accept_probability(self, hidden: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.forward(hidden).float(), dim=-1)[..., 1]


def save_specdecpp(head: AcceptanceHead, folder: str | Path) -> None:
    """Write the published folder layout; the tied block is stored once, under model.0.linear.*."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    k = head.num_layers
    tensors = {
        "model.0.linear.weight": head.model[0].linear.weight,
        "model.0.linear.bias": head.model[0].linear.bias,
        f"model.{k}.weight": head.model[k].weight,
        f"model.{k}.bias": head.model[k].bias,
    }
    save_file(
        {key: t.detach().cpu().contiguous() for key, t in tensors.items()}, str(folder / "model.safetensors")
    )
    config = {"hidden_size": head.hidden_size, "num_layers": k}
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")


def load_specdecpp(folder: str | Path) -> AcceptanceHead:
    """Read a published head folder; copies of the tied block stored under several indices must agree."""
    from safetensors.torch import load_file

    folder = Path(folder)
    config_path, weights_path = folder / "config.json", folder / "model.safetensors"
    for path in (config_path, weights_path):
        if not path.is_file():
            raise SpdsimError(f"specdecpp head folder {str(folder)!r} lacks {path.name}")
    try:
        config = json.loads(config_path.read_text())
        hidden, k = int(config["hidden_size"]), int(config["num_layers"])
    except (ValueError, KeyError, TypeError):
        raise SpdsimError(
            f"{config_path}: config.json must hold integer 'hidden_size' and 'num_layers'"
        ) from None
    tensors = load_file(str(weights_path))
    head = AcceptanceHead(hidden, k)
    block, out = _tied_block(tensors, k, weights_path), {}
    allowed = {f"model.{i}.linear.{p}" for i in range(k) for p in ("weight", "bias")}
    allowed |= {f"model.{k}.weight", f"model.{k}.bias"}
    unexpected = sorted(set(tensors) - allowed)
    if unexpected:
        raise SpdsimError(f"{weights_path}: unexpected key(s) {', '.join(unexpected[:3])}")
    for name in ("weight", "bias"):
        key = f"model.{k}.{name}"
        if key not in tensors:
            raise SpdsimError(f"{weights_path}: missing key {key}")
        out[name] = tensors[key]
    expected = {
        "weight": (hidden, hidden),
        "bias": (hidden,),
        "out_weight": (2, hidden),
        "out_bias": (2,),
    }
    actual = {**block, "out_weight": out["weight"], "out_bias": out["bias"]}
    for name, shape in expected.items():
        if tuple(actual[name].shape) != shape:
            raise SpdsimError(
                f"{weights_path}: {name} has shape {list(actual[name].shape)}, expected {list(shape)}"
            )
    with torch.no_grad():
        head.model[0].linear.weight.copy_(block["weight"])
        head.model[0].linear.bias.copy_(block["bias"])
        head.model[k].weight.copy_(out["weight"])
        head.model[k].bias.copy_(out["bias"])
    return head.to(block["weight"].dtype)


def _tied_block(tensors: dict, k: int, weights_path: Path) -> dict[str, torch.Tensor]:
    block = {}
    for name in ("weight", "bias"):
        copies = [
            tensors[f"model.{i}.linear.{name}"] for i in range(k) if f"model.{i}.linear.{name}" in tensors
        ]
        if not copies:
            raise SpdsimError(
                f"{weights_path}: missing the tied ResBlock key model.<i>.linear.{name} (i < {k})"
            )
        if any(c.shape != copies[0].shape or not torch.equal(c, copies[0]) for c in copies[1:]):
            raise SpdsimError(f"{weights_path}: copies of the tied ResBlock {name} differ")
        block[name] = copies[0]
    return block


def stop_length(probs: torch.Tensor, threshold: float, k_min: int) -> torch.Tensor:
    """SpecDec++'s stop rule on the device over all k_max drafts: ``probs [k_max]`` holds p̂_i of draft i (index
    i − 1; p̂_1 is skipped, so probs[0] is ignored); cum_i = Π_{2..i} p̂; returns (0-dim long) the first
    i >= k_min with 1 − cum_i > h, else k_max. The product runs in float64 like the host rule's Python floats."""
    k_max = probs.shape[0]
    factors = torch.cat([torch.ones_like(probs[:1]), probs[1:]]).double()
    cumulative = torch.cumprod(factors, 0)
    drafted = torch.arange(1, k_max + 1, device=probs.device)
    stop = ((drafted >= k_min) & (1.0 - cumulative > threshold)) | (drafted == k_max)
    return stop.int().argmax() + 1
