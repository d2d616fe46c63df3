"""GPU memory check (spdsim/scenario/memory.py): weights + caches of the busiest GPU must fit hardware.memory_gib,
else one line and exit 2; tensor parallelism, pipeline stages and the drafter's placement move the load."""

from __future__ import annotations

from dataclasses import replace

import pytest

from spdsim.cli import main
from spdsim.errors import SpdsimError
from spdsim.scenario.files import load_runs
from spdsim.scenario.memory import GIB, gpu_loads

SMALL = ["workload.new_tokens=32", "workload.num_requests=1"]


def loads(method: str, *overrides: str):
    run = load_runs(methods=[method], overrides=[*SMALL, *overrides])[0]
    return {load.gpu: load for load in gpu_loads(run.scenario)}


def test_weights_are_the_published_parameter_counts():
    # bf16: Llama-3.1-8B 8.03B, Qwen3-8B 8.19B, Qwen3-30B-A3B 30.5B parameters (every expert held)
    for model, billions in (("llama-3.1-8b", 8.03), ("qwen3-8b", 8.19), ("qwen3-30b-a3b", 30.5)):
        gpu = loads("ar", f"model={model}")["gpu0"]
        assert gpu.weight_bytes / 2 / 1e9 == pytest.approx(billions, rel=0.01), model


def test_kv_cache_of_every_position_and_the_hybrid_states():
    # Qwen3-8B: 36 layers x K,V x 8 heads x 128 x 2 bytes = 147,456 bytes per position
    gpu = loads("ar", "model=qwen3-8b", "workload.prompt_tokens=968")["gpu0"]
    assert gpu.cache_bytes == 147_456 * (968 + 32)
    # Qwen3.5-4B: 8 full-attention layers x 4 heads x 256 x K,V x 2 bytes = 4,096 bytes per position + 24 DeltaNet states of 32 x 128 x 128 x 2
    gpu = loads("ar", "model=qwen3.5-4b", "workload.prompt_tokens=968")["gpu0"]
    assert gpu.cache_bytes == 8 * 4_096 * 1000 + 24 * 32 * 128 * 128 * 2


def test_stages_tensor_parallelism_and_the_drafter_split_the_load():
    ar = loads("ar", "model=qwen3-8b")["gpu0"]
    tp = loads("ar", "model=qwen3-8b", "method.tensor_parallel=4")
    assert list(tp) == ["gpu0 (of tensor_parallel 4)"]
    assert next(iter(tp.values())).weight_bytes == pytest.approx(ar.weight_bytes / 4)
    spd = loads("spd", "model=qwen3-8b", "method.num_stages=4")
    assert list(spd) == ["stage 0", "stage 1", "stage 2", "stage 3", "the drafter's GPU"]
    vocab = 151_936 * 4096 * 2
    assert spd["stage 0"].weight_bytes == pytest.approx(spd["stage 1"].weight_bytes + vocab)
    assert spd["stage 3"].weight_bytes == spd["stage 0"].weight_bytes  # the untied lm_head
    colocated = loads("spd", "model=qwen3-8b", "method.num_stages=4", "method.drafter_placement=stage0")
    assert colocated["stage 0 with the drafter"].weight_bytes == pytest.approx(
        spd["stage 0"].weight_bytes + spd["the drafter's GPU"].weight_bytes
    )


def test_a_run_that_does_not_fit_is_one_line_and_exit_2(tmp_path, capsys):
    args = ["simulate", "--model", "qwen3-8b", "--hardware", "l40s", "--set", "method.num_stages=4"]
    with pytest.raises(SystemExit) as info:
        main(
            [
                *args,
                "--set",
                "workload.prompt_tokens=400000",
                "--set",
                SMALL[0],
                "--out",
                str(tmp_path / "out"),
            ]
        )
    err = capsys.readouterr().err
    assert info.value.code == 2 and err.count("\n") == 1
    assert err.startswith(
        "error: hardware.memory_gib: qwen3-8b does not fit on l40s (48 GiB per GPU): ar's gpu0 needs 70.2 GiB "
    )
    assert "(weights 15.3 GiB + caches 54.9 GiB for 1 sequence(s) of 400,032 positions)" in err
    assert not (tmp_path / "out").exists()


def test_the_check_follows_memory_gib():
    too_long = ["model=qwen3-8b", "hardware=l40s", "workload.prompt_tokens=400000", "method.num_stages=4"]
    with pytest.raises(SpdsimError, match="hardware.memory_gib: qwen3-8b does not fit"):
        load_runs(methods=["ar"], overrides=[*SMALL, *too_long])
    # four-way tensor parallelism holds a quarter on each GPU; memory_gib 0 turns the check off
    load_runs(methods=["ar"], overrides=[*SMALL, *too_long, "method.tensor_parallel=4"])
    load_runs(methods=["ar"], overrides=[*SMALL, *too_long, "hardware.memory_gib=0"])
    # the MoE holds all 128 experts: 57 GiB, over an L40S, under an H100
    with pytest.raises(SpdsimError, match=r"qwen3-30b-a3b does not fit on l40s .*weights 56\.9 GiB"):
        load_runs(methods=["ar"], overrides=[*SMALL, "model=qwen3-30b-a3b", "hardware=l40s"])
    load_runs(methods=["ar"], overrides=[*SMALL, "model=qwen3-30b-a3b", "hardware=h100"])


def test_every_embedded_default_run_fits():
    for hardware in ("h100", "h200", "a100-80gb", "b200", "mi300x"):
        assert load_runs(overrides=[f"hardware={hardware}"])
    gpus = max(load.total_bytes for run in load_runs() for load in gpu_loads(run.scenario))
    assert gpus < 16 * GIB  # the cascade holds three models


def test_the_decode_batch_multiplies_the_cache_up_to_the_concurrency_and_the_requests():
    one = loads("ar", "model=qwen3-8b")["gpu0"].cache_bytes
    batch = ["model=qwen3-8b", "workload.num_requests=16", "workload.max_batch=8"]
    assert loads("ar", *batch)["gpu0"].cache_bytes == 8 * one
    assert loads("ar", *batch, "workload.max_concurrency=3")["gpu0"].cache_bytes == 3 * one
    assert (
        loads("ar", "model=qwen3-8b", "workload.num_requests=2", "workload.max_batch=8")["gpu0"].cache_bytes
        == 2 * one
    )


def test_a_stage_of_every_layer_plus_the_embeddings_is_the_ar_gpu():
    from spdsim.scenario.memory import layer_weight_bytes
    from spdsim.scenario.presets import get_model

    for model in ("qwen3-8b", "qwen3.5-4b"):
        s = get_model(model)
        embeddings = (1 if s.tied_embeddings else 2) * s.vocab_size * s.hidden_size * s.dtype_bytes
        gpu = loads("ar", f"model={model}")["gpu0"]
        assert layer_weight_bytes(s, s.num_layers) + embeddings == pytest.approx(gpu.weight_bytes, rel=1e-9)


def test_a_decode_step_reads_the_ar_gpus_weights_but_one_embedding_row():
    """Untied: the AR GPU holds embedding + lm_head; a step reads the layers and the lm_head (one row of the
    embedding, left out). Tied: the one matrix is read as the lm_head, so the step reads all that the GPU holds."""
    from spdsim.scenario.memory import decode_step_weight_bytes
    from spdsim.scenario.presets import get_model

    for model in ("qwen3-8b", "qwen3.5-4b"):
        s = get_model(model)
        matrix = s.vocab_size * s.hidden_size * s.dtype_bytes
        held = loads("ar", f"model={model}")["gpu0"].weight_bytes
        expected = held if s.tied_embeddings else held - matrix
        assert decode_step_weight_bytes(s) == pytest.approx(expected, rel=1e-9)


def test_the_ar_baseline_and_the_optimizer_designs_must_fit_too(tmp_path, capsys):
    from spdsim.drivers.optimize import SearchSpace, enumerate_designs

    # four stages of qwen3-8b fit 10 GiB each, the one-GPU AR baseline of the speedup does not
    args = ["compare", "--method", "spd", "--set", "model=qwen3-8b", "--set", "method.num_stages=4"]
    with pytest.raises(SystemExit) as info:
        main([*args, "--set", "hardware.memory_gib=10", "--set", SMALL[0]])
    err = capsys.readouterr().err
    assert info.value.code == 2 and err.count("\n") == 1
    assert "is measured against AR on one GPU, which does not fit qwen3-8b on h100 (10 GiB per GPU)" in err
    base = load_runs(methods=["spd"], overrides=[*SMALL, "model=qwen3-8b", "method.num_stages=4"])[0].scenario
    small = replace(base, hardware=replace(base.hardware, memory_gib=10))
    space = SearchSpace(stages=(1, 2, 3, 4), spec_layers=(1,), placements=("own-gpu",), splits=("even",))
    assert {d.num_stages for d in enumerate_designs(base, space)} == {1, 2, 3, 4}
    assert {d.num_stages for d in enumerate_designs(small, space)} == {2, 3, 4}


def test_the_draft_models_hold_the_layers_their_methods_price():
    from spdsim.scenario.memory import layer_weight_bytes
    from spdsim.scenario.presets import get_model

    shape = get_model("qwen3-8b")  # 36 layers, untied: a separate LM holds its embedding and its lm_head
    language_model = 2 * shape.vocab_size * shape.hidden_size * shape.dtype_bytes
    ar = loads("ar", "model=qwen3-8b")["gpu0"].weight_bytes
    for fraction, layers in ((0.25, 9), (0.0, 4)):
        run = load_runs(
            methods=["draft-model"],
            overrides=[
                *SMALL,
                "model=qwen3-8b",
                "method.draft_layers=4",
                f"method.draft_model_layers_fraction={fraction}",
            ],
        )[0]
        assert run.scenario.method.draft_model_layers(shape.num_layers) == layers
        drafter = gpu_loads(run.scenario)[0].weight_bytes - ar
        assert drafter == pytest.approx(layer_weight_bytes(shape, layers) + language_model)
    # cascade: the middle model (a quarter of 36 layers) and the little model (draft_layers = 2)
    cascade = loads("cascade", "model=qwen3-8b", "method.draft_layers=2")["gpu0"].weight_bytes - ar
    assert cascade == pytest.approx(
        layer_weight_bytes(shape, 9) + layer_weight_bytes(shape, 2) + 2 * language_model
    )
