"""SpecDec++ acceptance head training: soft labels, weighted BCE, trainer output in the published folder format."""

import json
import math

import pytest
import torch
from train_tiny import one_thread_fixture

from executor.heads.eagle3 import save_eagle3
from executor.heads.specdecpp import load_specdecpp
from executor.models import load_fast_model
from executor.train.corpus import CorpusConfig
from executor.train.loop import LoopConfig
from executor.train.run import TrainHeadOptions, build_eagle3_head, train_head
from executor.train.specdecpp import soft_acceptance_labels, weighted_soft_bce

one_thread = one_thread_fixture()


def test_soft_labels_are_min_one_p_over_q():
    p = torch.tensor([[0.5, 0.3, 0.2]] * 3)
    q = torch.tensor([[0.25, 0.6, 0.15]] * 3)
    labels = soft_acceptance_labels(p, q, torch.tensor([0, 1, 2]))
    torch.testing.assert_close(labels, torch.tensor([1.0, 0.5, 1.0]))


def test_weighted_bce_closed_form():
    accept = torch.tensor([0.8, 0.3])
    logits = torch.stack([torch.log(1 - accept), torch.log(accept)], dim=-1)
    labels = torch.tensor([1.0, 0.0])
    loss = weighted_soft_bce(logits, labels, 6.0, torch.tensor([True, True]))
    expected = -(math.log(0.8) + 6 * math.log(0.7)) / (6 * 1 + 1)
    assert float(loss) == pytest.approx(expected, rel=1e-5)
    masked = weighted_soft_bce(logits, labels, 6.0, torch.tensor([True, False]))
    assert float(masked) == pytest.approx(-math.log(0.8), rel=1e-5)


def test_trainer_learns_and_writes_the_published_folder(tmp_path):
    model, loaded = load_fast_model("random:tiny-llama", seed=0)
    torch.manual_seed(0)
    chain = tmp_path / "eagle3.pt"
    save_eagle3(build_eagle3_head(model, loaded.hf_model.config), chain)
    options = TrainHeadOptions(
        model="random:tiny-llama",
        head="specdecpp",
        out=tmp_path / "acc",
        chain_head=chain,
        ttt_steps=3,
        cache_dir=tmp_path / "cache",
        loop=LoopConfig(max_steps=15, minutes=0, batch_size=4, lr=1e-2, warmup_steps=2),
        corpus=CorpusConfig(block_len=16, source_bytes=3000, site_packages=False, gsm8k_questions=0),
    )
    manifest = train_head(options, progress=lambda _: None, show_progress=False)
    assert manifest["train"]["final_loss_mean"] < manifest["train"]["first_loss"]
    config = json.loads((tmp_path / "acc" / "config.json").read_text())
    assert config == {"hidden_size": 64, "num_layers": 3}
    head = load_specdecpp(tmp_path / "acc")
    assert head.model[0] is head.model[2]  # the tied ResBlock
    assert json.loads((tmp_path / "acc" / "training.json").read_text())["options"]["chain_head"] == str(chain)
