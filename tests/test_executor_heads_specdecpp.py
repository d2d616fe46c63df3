"""SpecDec++ acceptance head: published folder format (docs/baselines.md §3) and tied-block semantics."""

import json

import pytest
import torch
from safetensors.torch import save_file

from executor.heads.specdecpp import AcceptanceHead, load_specdecpp, save_specdecpp
from spdsim.errors import SpdsimError

H, K = 16, 3


def reference_forward(w, b, w_out, b_out, x, k):
    for _ in range(k):
        x = x + torch.nn.functional.silu(x @ w.T + b)
    return x @ w_out.T + b_out


def write_folder(folder, tensors, hidden=H, layers=K):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps({"hidden_size": hidden, "num_layers": layers}))
    save_file(tensors, str(folder / "model.safetensors"))


def test_hand_built_published_folder_loads_and_applies_the_tied_block_k_times(tmp_path):
    gen = torch.Generator().manual_seed(0)
    w, b = 0.3 * torch.randn(H, H, generator=gen), torch.randn(H, generator=gen)
    w_out, b_out = torch.randn(2, H, generator=gen), torch.randn(2, generator=gen)
    folder = tmp_path / "qwen3-1.7b--to--qwen3-14b" / "exp-weight6-layer3"
    # Stored the way PyTorchModelHubMixin writes a shared module: one copy under a non-zero index.
    write_folder(
        folder,
        {
            "model.1.linear.weight": w,
            "model.1.linear.bias": b,
            f"model.{K}.weight": w_out,
            f"model.{K}.bias": b_out,
        },
    )
    head = load_specdecpp(folder)
    x = torch.randn(5, H, generator=gen)
    torch.testing.assert_close(head(x), reference_forward(w, b, w_out, b_out, x, K))
    probs = head.accept_probability(x)
    torch.testing.assert_close(probs, torch.softmax(reference_forward(w, b, w_out, b_out, x, K), -1)[:, 1])
    assert head.model[0] is head.model[K - 1]  # one tied block


def test_round_trip(tmp_path):
    head = AcceptanceHead(H, K)
    with torch.no_grad():
        for p in head.parameters():
            p.normal_()
    save_specdecpp(head, tmp_path / "h")
    config = json.loads((tmp_path / "h" / "config.json").read_text())
    assert config == {"hidden_size": H, "num_layers": K}
    loaded = load_specdecpp(tmp_path / "h")
    x = torch.randn(4, H)
    assert torch.equal(loaded(x), head(x))


def test_bad_folders(tmp_path):
    with pytest.raises(SpdsimError, match="lacks config.json"):
        load_specdecpp(tmp_path)
    t = {
        "model.0.linear.weight": torch.ones(H, H),
        "model.0.linear.bias": torch.ones(H),
        "model.1.linear.weight": torch.zeros(H, H),
        "model.1.linear.bias": torch.ones(H),
        f"model.{K}.weight": torch.ones(2, H),
        f"model.{K}.bias": torch.ones(2),
    }
    write_folder(tmp_path / "a", t)
    with pytest.raises(SpdsimError, match="copies of the tied ResBlock weight differ"):
        load_specdecpp(tmp_path / "a")
    del t["model.1.linear.weight"], t["model.1.linear.bias"], t[f"model.{K}.bias"]
    write_folder(tmp_path / "b", t)
    with pytest.raises(SpdsimError, match=f"missing key model.{K}.bias"):
        load_specdecpp(tmp_path / "b")
    write_folder(tmp_path / "c", {**t, f"model.{K}.bias": torch.ones(2), "extra": torch.ones(1)})
    with pytest.raises(SpdsimError, match="unexpected key"):
        load_specdecpp(tmp_path / "c")
    write_folder(tmp_path / "d", {**t, f"model.{K}.bias": torch.ones(2)}, hidden=8)
    with pytest.raises(SpdsimError, match="shape"):
        load_specdecpp(tmp_path / "d")
