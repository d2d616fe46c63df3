"""SPD drafter distillation: structural mask vs the schedule, training == inference rows, loss falls, v11 output."""

import pytest
import torch
from train_tiny import one_thread_fixture
from typer.testing import CliRunner

from executor.cli import app
from executor.heads.checkpoint import load_spd_checkpoint
from executor.models import load_fast_model
from executor.train.features import teacher_forward
from executor.train.loop import LoopConfig, run_training
from executor.train.run import TrainHeadOptions, build_spd_head
from executor.train.spd import SpdObjective, g0_logits, sample_fills, structural_mask

one_thread = one_thread_fixture()


@pytest.fixture(scope="module")
def target():
    torch.manual_seed(0)
    return load_fast_model("random:tiny-llama", seed=0)


def spd_head(target, stages=2, spec_layers=2, stage_layers=None):
    model, loaded = target
    options = TrainHeadOptions(
        model="tiny", head="spd", out=None, stages=stages, stage_layers=stage_layers, spec_layers=spec_layers
    )
    torch.manual_seed(1)
    return build_spd_head(model, loaded.hf_model.config, options)


def train_head_cli(head, out, *options):
    """``train-head`` of ``head`` on the tiny random Llama, on CPU, writing to ``out``."""
    args = ["train-head", "--head", head, "--model", "random:tiny-llama", *options, "--device", "cpu"]
    return CliRunner().invoke(app, [*args, "--out", str(out)])


def allowed(mask, row):
    return sorted(torch.nonzero(mask[row]).flatten().tolist())


def test_structural_mask_hand_checked():
    # n = 2, one type per depth: A(0..2) = (0, 1, 2); layout [g2 | g1 | g0], S = 3 -> rows 0-2, 3-5, 6-8.
    saturated = structural_mask((0, 1, 2), (0, 1, 2), 3, fill=2)
    assert allowed(saturated, 6) == [6]  # g0 at t=0 sees only itself
    assert allowed(saturated, 7) == [3, 7]  # t=1: itself, and t=0 at depth 1 (g1)
    assert allowed(saturated, 8) == [0, 4, 8]  # t=2: itself, t=1 at depth 1, t=0 complete (g2)
    assert allowed(saturated, 5) == [0, 1, 5]  # g1 row at t=2: itself, older tokens complete
    assert allowed(saturated, 2) == [0, 1, 2]  # complete rows see complete rows only (causal)
    refill = structural_mask((0, 1, 2), (0, 1, 2), 3, fill=1)  # one token in flight after a rejection
    assert allowed(refill, 8) == [0, 1, 8]
    assert allowed(refill, 7) == [0, 7]


def test_deeper_rows_follow_the_reference_rule_by_default_and_ours_on_request():
    # The g1 row (depth 1) at t = 2 with fill 1: the reference makes keys at t − T >= 1 deepest and keeps the
    # row's own key in its type (g1); the "depth" rule counts depth 1 + 0 >= 1 as complete (g2).
    reference = structural_mask((0, 1, 2), (0, 1, 2), 3, fill=1)
    depth = structural_mask((0, 1, 2), (0, 1, 2), 3, fill=1, rule="depth")
    assert allowed(reference, 5) == [0, 1, 5]
    assert allowed(depth, 5) == [0, 1, 2]
    assert torch.equal(reference[6:], depth[6:])  # the decoded g0 rows are the same under both


def test_fills_are_half_saturated():
    fills = sample_fills(4000, 4, torch.Generator().manual_seed(0))
    assert abs(sum(f == 4 for f in fills) / 4000 - 0.5) < 0.03
    assert set(fills) == {1, 2, 3, 4}


@pytest.mark.parametrize("fill", [1, 2])
def test_training_rows_equal_the_schedule_drafter_output(target, fill):
    """g_0 logits of the masked training forward == the inference drafter's (spec cache + in-flight rows)."""
    model, _ = target
    drafter = spd_head(target).eval()
    tokens = torch.randint(0, 256, (1, 10), generator=torch.Generator().manual_seed(3))
    feats = teacher_forward(model, tokens, drafter.anchor_indices).features
    with torch.no_grad():
        trained = g0_logits(drafter, feats, [fill], rule="depth")[0]  # ours: deeper rows as the schedule runs
        deepest = drafter.num_aggr_types - 1
        for t in range(fill, 10):
            cache = drafter.new_cache()
            complete = {k: v[:, : t - fill + 1] for k, v in feats.items()}
            drafter.decode(
                drafter.project(deepest, complete), torch.arange(t - fill + 1), cache, keep=t - fill + 1
            )
            rows = [
                drafter.project(drafter.aggr_of_depth[t - p], {k: v[:, p : p + 1] for k, v in feats.items()})
                for p in range(t - fill + 1, t + 1)
            ]
            logits = drafter.decode(torch.cat(rows, 1), torch.arange(t - fill + 1, t + 1), cache, keep=0)
            torch.testing.assert_close(logits[0], trained[t], atol=1e-4, rtol=1e-4)


def test_a_few_steps_reduce_the_loss(target):
    model, _ = target
    drafter = spd_head(target, spec_layers=1)
    blocks = torch.randint(0, 256, (16, 16), generator=torch.Generator().manual_seed(5))
    objective = SpdObjective(model, drafter, torch.Generator().manual_seed(0))
    config = LoopConfig(max_steps=12, minutes=0, batch_size=4, lr=5e-3, warmup_steps=2)
    log = run_training(list(drafter.parameters()), objective, blocks, config, torch.device("cpu"), False)
    assert sum(log.losses[-3:]) / 3 < 0.9 * sum(log.losses[:3]) / 3


def test_train_head_cli_writes_a_strict_v11_checkpoint(target, tmp_path, monkeypatch):
    monkeypatch.setenv("SPDSIM_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "spd"
    result = train_head_cli(
        "spd",
        out,
        *("--stages", "2", "--stage-layers", "3,1", "--spec-layers", "1"),
        *("--steps", "2", "--minutes", "0", "--batch-size", "2", "--block-len", "16"),
        *("--gsm8k-questions", "0", "--source-mb", "0.004", "--no-site-packages", "--no-progress"),
    )
    assert result.exit_code == 0, result.output
    path = out / "random-tiny-llama_s2_l1.pt"
    payload = torch.load(path, weights_only=True)
    config = payload["config"]
    assert config["version"] == 11 and config["stage_layers"] == [3, 1]
    assert config["aggr_feature_bound"] == [0, 1, 2, 3]  # the reference default rule [0, L/4, L/2, 3L/4, L−1]
    assert "spec_init_from_base_layers" not in config  # the reference writes it only as a non-empty list
    module = load_spd_checkpoint(path, target[1].hf_model.config)
    assert set(module.state_dict()) == set(payload["state_dict"])
    assert (out / "training.json").is_file()


def test_train_head_cli_bad_input_exits_2(tmp_path):
    result = train_head_cli("medusa", tmp_path / "x")
    assert result.exit_code == 2 and "head" in result.output
    result = train_head_cli("spd", tmp_path / "y", "--stages", "3")
    assert result.exit_code == 2 and "stage" in result.output
    # an uneven split whose reference depth mapping needs an anchor the token has not reached: one line
    result = train_head_cli("spd", tmp_path / "z", "--stages", "2", "--stage-layers", "1,3")
    assert result.exit_code == 2 and "has not reached" in result.output
    assert len(result.output.strip().splitlines()) == 1


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_bf16_autocast_steps_reduce_the_loss():
    model, loaded = load_fast_model("random:tiny-llama", seed=0, device="cuda", dtype="bfloat16")
    options = TrainHeadOptions(model="tiny", head="spd", out=None, stages=2, spec_layers=2)
    torch.manual_seed(1)
    drafter = build_spd_head(model, loaded.hf_model.config, options).cuda()
    blocks = torch.randint(0, 256, (16, 64), generator=torch.Generator().manual_seed(5))
    objective = SpdObjective(model, drafter, torch.Generator().manual_seed(0))
    config = LoopConfig(max_steps=20, minutes=0, batch_size=8, lr=5e-3, warmup_steps=2)
    log = run_training(list(drafter.parameters()), objective, blocks, config, torch.device("cuda"), False)
    assert sum(log.losses[-3:]) / 3 < 0.9 * sum(log.losses[:3]) / 3
