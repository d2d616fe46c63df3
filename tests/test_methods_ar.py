"""Autoregressive schedule, with and without tensor parallelism."""

from dataclasses import replace

from sim_scenarios import H100, ideal

from spdsim.engine.run import simulate
from spdsim.scenario.config import Overheads


def test_one_token_per_target_step():
    result = simulate(ideal("ar", new_tokens=5, requests=2))
    assert [t.commit_ns for t in result.tokens] == [32_000 * i for i in range(1, 11)]
    assert result.iterations == 10 and not result.verifications


def test_tensor_parallel_divides_the_layers_and_adds_allreduces():
    scenario = ideal("ar", new_tokens=3, requests=1, tensor_parallel=4)
    result = simulate(scenario)
    allreduce = H100.allreduce_latency_ns + round(2 * 3 / 4 * 256 * 2 / H100.p2p_bandwidth_gbps)
    assert result.tokens[0].commit_ns == 8_000 + 2 * 32 * allreduce
    assert {i.resource for i in result.intervals if i.label == "forward"} == {"gpu0", "gpu1", "gpu2", "gpu3"}


def test_serial_overheads_are_paid_every_step():
    scenario = replace(
        ideal("ar", new_tokens=2, requests=1), overheads=Overheads(control_ns=100, sampling_ns=30)
    )
    assert [t.commit_ns for t in simulate(scenario).tokens] == [32_130, 64_260]
