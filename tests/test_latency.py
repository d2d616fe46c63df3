"""Latency models: constant and roofline, and how a scenario picks its model."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from sim_scenarios import H100, QWEN35_4B_SHAPE, TOY_SHAPE

from spdsim.errors import SpdsimError
from spdsim.latency.build import build_latency_model
from spdsim.scenario.config import Hardware, LatencySpec, ModelShape, Scenario

LLAMA_8B = ModelShape("llama-3.1-8b", 32, 4096, 32, 8, 128, 14336, 128256)


def _constant(**fields):
    return build_latency_model(
        Scenario(model=TOY_SHAPE, hardware=H100, latency=LatencySpec(kind="constant", **fields))
    )


def test_constant_model_prices_layers_and_query_tokens():
    latency = _constant(layer_ns=1_000, embed_ns=50, head_ns=300, per_query_token_ns=320, draft_step_ns=700)
    assert latency.layers_ns(8, 1, 100) == 8_000
    assert latency.target_ns(1, 100) == 50 + 32_000 + 300
    assert latency.target_ns(4, 100) == 50 + 32_000 + 3 * 320 + 300  # per extra query token, whole model
    kv = np.arange(5)
    assert latency.layers_ns(2, 1, kv).tolist() == [2_000] * 5
    assert latency.chain_draft_ns(1, kv).tolist() == [700] * 5
    assert latency.draft_model_ns(8, 1, 0) == 700
    assert _constant(layer_ns=1_000, head_ns=300).draft_model_ns(8, 1, 0) == 8_300  # from the layer constants


def test_roofline_is_memory_bound_at_batch_one():
    latency = build_latency_model(
        Scenario(model=LLAMA_8B, hardware=H100, latency=LatencySpec(kind="roofline"))
    )
    s = LLAMA_8B
    params = s.hidden_size * (s.num_attention_heads * s.head_dim + 2 * s.num_kv_heads * s.head_dim)
    params += s.num_attention_heads * s.head_dim * s.hidden_size + 3 * s.hidden_size * s.intermediate_size
    kv_bytes = 2 * s.num_kv_heads * s.head_dim * 2 * 1_000
    bytes_per_ns = H100.mem_bandwidth_gbps * H100.bandwidth_efficiency
    assert latency.layers_ns(1, 1, 1_000) == round((params * 2 + kv_bytes) / bytes_per_ns)
    # the whole 8B step: ~16 GB of weights at 0.85 x 3.02 TB/s is about 6 ms
    assert 5.5e6 < latency.target_ns(1, 1_000) < 7e6
    # longer context costs more; more query tokens cost (almost) nothing until compute-bound
    assert latency.layers_ns(32, 1, 8_000) > latency.layers_ns(32, 1, 1_000)
    assert latency.layers_ns(32, 8, 1_000) == latency.layers_ns(32, 1, 1_000)
    assert latency.layers_ns(32, 4_096, 1_000) > 10 * latency.layers_ns(32, 1, 1_000)
    kv = np.array([1_000, 8_000])
    assert latency.layers_ns(4, 1, kv).tolist() == [
        latency.layers_ns(4, 1, 1_000),
        latency.layers_ns(4, 1, 8_000),
    ]


def test_roofline_tensor_parallel_divides_and_pays_allreduce():
    hardware = replace(H100, allreduce_latency_ns=20_000, p2p_bandwidth_gbps=450.0)
    latency = build_latency_model(
        Scenario(model=LLAMA_8B, hardware=hardware, latency=LatencySpec(kind="roofline"))
    )
    single = latency.layers_ns(32, 1, 1_000)
    allreduce = latency.allreduce_ns(LLAMA_8B.hidden_size * 2, 4)
    assert allreduce == round(20_000 + 2 * 3 / 4 * LLAMA_8B.hidden_size * 2 / 450.0)
    assert latency.layers_ns(32, 1, 1_000, tp=4) == pytest.approx(single / 4 + 2 * 32 * allreduce, abs=2)
    assert latency.allreduce_ns(1_000, 1) == 0


def test_roofline_linear_attention_layers_have_no_growing_kv():
    all_linear = replace(QWEN35_4B_SHAPE, linear_attention_layers=32)
    latency = build_latency_model(
        Scenario(model=all_linear, hardware=H100, latency=LatencySpec(kind="roofline"))
    )
    assert latency.layers_ns(8, 1, 100) == latency.layers_ns(8, 1, 100_000)


def test_roofline_needs_shape_and_hardware():
    with pytest.raises(SpdsimError, match="roofline"):
        build_latency_model(Scenario(model=None, hardware=H100, latency=LatencySpec(kind="roofline")))
    with pytest.raises(SpdsimError, match="latency.kind"):
        build_latency_model(Scenario(model=TOY_SHAPE, hardware=H100, latency=LatencySpec(kind="magic")))
    with pytest.raises(SpdsimError, match="profile_path"):
        build_latency_model(Scenario(model=TOY_SHAPE, latency=LatencySpec(kind="measured")))


def test_p2p_and_hardware_links():
    link = Hardware("x", 1000.0, 100.0, p2p_latency_ns=5_000, p2p_bandwidth_gbps=50.0)
    latency = build_latency_model(
        Scenario(model=TOY_SHAPE, hardware=link, latency=LatencySpec(kind="roofline"))
    )
    assert latency.p2p_ns(latency.hidden_bytes(1)) == 5_000 + round(256 * 2 / 50.0)


def test_draft_heads_use_the_draft_vocabulary_on_the_roofline():
    scenario = Scenario(model=QWEN35_4B_SHAPE, hardware=H100, latency=LatencySpec(kind="roofline"))
    latency = build_latency_model(scenario)  # MethodSpec default: a 32k-row draft lm_head
    full = latency.lm_head_ns(1, 0)
    assert full == latency.head_ns(1)
    assert latency.lm_head_ns(1, None) == pytest.approx(full * 32_000 / QWEN35_4B_SHAPE.vocab_size, rel=0.01)
    assert latency.pdm_ns(3, 9, 512) == latency.layers_ns(3, 9, 512) + latency.lm_head_ns(1, None)
    assert latency.chain_draft_ns(1, 512, vocab=0) == latency.layers_ns(1, 1, 512) + full
    whole = build_latency_model(replace(scenario, method=replace(scenario.method, draft_vocab_size=0)))
    assert whole.pdm_ns(3, 9, 512) == latency.layers_ns(3, 9, 512) + full
