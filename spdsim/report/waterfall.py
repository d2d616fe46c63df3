"""Where SPD's speedup goes at scale: a waterfall of closed-form speedups as the costs of a scenario are added.

Steps (each a closed form, ``spdsim.engine.closed_form.predict``, against AR under the same settings):

1. ``theory``: n·ρ, the step-counting speedup (docs/spd.md §4.1);
2. ``compute``: stage forwards, embedding, drafter and the serial verify on the device model alone (no links, no
   host costs, no flat overheads);
3. ``host overhead``: + per-layer and per-call host costs (the eager regime; AR pays them too);
4. ``intra-node comm``: + every message over the intra-node link as if one node held every rank (sends, control
   broadcast, anchor gather, DISCARD, crop, per-message host cost) and the scenario's flat overheads;
5. ``inter-node``: the scenario's real placement on nodes (the whole scenario).

``inter_node_share``: the part of the saturated cycle that step 4 adds, over the whole cycle.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from spdsim.scenario.config import Overheads, Scenario
from spdsim.scenario.topology import topology_active

STEPS = ("theory", "compute", "host overhead", "intra-node comm", "inter-node")
_ONE_NODE = 1 << 20  # gpus per node large enough for every rank: the topology stays on, on one node


@dataclass(frozen=True)
class Waterfall:
    label: str
    speedups: tuple[tuple[str, float], ...]
    cycle_ms: tuple[tuple[str, float], ...]  # saturated cycle per step (theory: none)
    inter_node_share: float


def step_scenarios(scenario: Scenario) -> dict[str, Scenario]:
    """The scenario of each cost step after ``theory``, cumulative; the last is ``scenario`` itself."""
    hw = scenario.hardware
    method = scenario.method
    if hw is None:
        return {name: scenario for name in STEPS[1:]}
    one_node_method = dataclasses.replace(method, rank_nodes=())
    bare = dataclasses.replace(
        hw,
        p2p_latency_ns=0,
        p2p_bandwidth_gbps=0.0,
        gpus_per_node=0,
        collective="fanout",
        host_layer_ns=0,
        host_call_ns=0,
        host_message_ns=0,
        crop_ns=0,
    )
    host = dataclasses.replace(bare, host_layer_ns=hw.host_layer_ns, host_call_ns=hw.host_call_ns)
    one_node = hw
    if topology_active(hw, method.rank_nodes):
        one_node = dataclasses.replace(hw, gpus_per_node=_ONE_NODE)
    compute_only = dataclasses.replace(scenario, method=one_node_method, overheads=Overheads())
    return {
        "compute": dataclasses.replace(compute_only, hardware=bare),
        "host overhead": dataclasses.replace(compute_only, hardware=host),
        "intra-node comm": dataclasses.replace(scenario, hardware=one_node, method=one_node_method),
        "inter-node": scenario,
    }


def speedup_waterfall(label: str, scenario: Scenario) -> Waterfall:
    from spdsim.engine.closed_form import predict
    from spdsim.latency.build import build_latency_model
    from spdsim.methods.pipeline import pipeline_costs

    steps = step_scenarios(scenario)
    speedups: list[tuple[str, float]] = []
    cycles = []
    for name, step in steps.items():
        prediction = predict(step)
        if not speedups:
            speedups.append(("theory", float(prediction.n_rho)))  # type: ignore[arg-type]
        speedups.append((name, float(prediction.speedup)))  # type: ignore[arg-type]
        costs = pipeline_costs(step, build_latency_model(step))
        cycles.append((name, costs.cycle_ns[costs.num_stages][0] / 1e6))
    cycle = dict(cycles)
    total = cycle["inter-node"]
    share = (cycle["inter-node"] - cycle["intra-node comm"]) / total if total > 0 else 0.0
    return Waterfall(label, tuple(speedups), tuple(cycles), max(share, 0.0))


def render_waterfalls(waterfalls: list[Waterfall]):
    """A rich Table: one row per pipeline run, the speedup after each step, and the inter-node share."""
    from rich.table import Table
    from rich.text import Text

    table = Table(title=Text("where the speedup goes (closed form, each step vs AR under the same costs)"))
    table.add_column("run", no_wrap=True)
    for name in STEPS:
        table.add_column(name, justify="right")
    table.add_column("cycle ms", justify="right")
    table.add_column("inter-node share", justify="right")
    for w in waterfalls:
        cells = [f"{value:.2f}x" for _, value in w.speedups]
        cycle = dict(w.cycle_ms)["inter-node"]
        table.add_row(Text(w.label), *cells, f"{cycle:.3f}", f"{w.inter_node_share:.1%}")
    return table
