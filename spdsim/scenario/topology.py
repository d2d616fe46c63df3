"""Topology: where SPD's ranks sit and what every message between them costs (issue 14).

The SPD repository's distributed pipeline has n + 1 ranks (docs/spd.md §6): rank 0 is the controller (drafter, embedding,
final norm, lm_head, verify, sampling) and rank s + 1 holds stage s. With the drafter co-located on stage 0
(``drafter_placement = "stage0"``) there are n ranks and the controller shares rank 0 with stage 0.

Ranks are packed onto nodes of ``hardware.gpus_per_node`` GPUs in rank order (``method.rank_nodes`` places them
explicitly); ``gpus_per_node = 0`` puts every rank on one node. A message of b bytes between ranks costs

    host_message + link latency + b / link bandwidth

with the intra-node link (``p2p_latency_ns``, ``p2p_bandwidth_gbps``) inside a node and the network
(``inter_node_latency_ns``, ``inter_node_bandwidth_gbps``) between nodes; a message to oneself is free.

Per cycle the controller broadcasts a control word to the n stage ranks and gathers anchor snapshots from the
stages that produce anchor features (``anchor_stages``); a rejection adds a DISCARD broadcast and a KV crop. The
collectives are priced by ``hardware.collective``:

* ``fanout``: the controller sends (receives) one message per peer, one after the other, as the executor does:
  the sum of the message costs;
* ``tree``: a binomial tree, ceil(log2(peers + 1)) rounds, each as slow as its slowest message;
* ``nccl``: one collective call (``dist.broadcast``, as the SPD repository does): one host message cost, then
  ceil(log2(peers + 1)) rounds of the slowest link.

Everything here is a closed form in integer nanoseconds; ``spdsim.methods.pipeline`` uses it to price cycles.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from spdsim.errors import SpdsimError
from spdsim.scenario.config import Hardware

COLLECTIVES = ("fanout", "tree", "nccl")
CONTROL_BYTES = 23 * 8  # the repository's 23-int64 control tensor (GO / DISCARD / SHUTDOWN)
DEFAULT_ANCHOR_BOUND = (0, 8, 16, 24, 31)  # train.py's default aggr_feature_bound (Qwen3.5, L = 32)


@dataclass(frozen=True)
class Topology:
    """Node of every rank and the link parameters (a view of Hardware + placement)."""

    rank_nodes: tuple[int, ...]  # index = rank; rank 0 = controller
    stage_ranks: tuple[int, ...]  # rank of stage s
    intra_latency_ns: int
    intra_bandwidth_gbps: float
    inter_latency_ns: int
    inter_bandwidth_gbps: float
    message_ns: int  # host/software cost of one message
    collective: str

    @property
    def num_nodes(self) -> int:
        return len(set(self.rank_nodes))

    def crosses_nodes(self, src: int, dst: int) -> bool:
        return self.rank_nodes[src] != self.rank_nodes[dst]

    def message_ns_between(self, src: int, dst: int, num_bytes: int) -> int:
        """One message of ``num_bytes`` from rank ``src`` to rank ``dst`` (0 to itself)."""
        if src == dst:
            return 0
        if self.crosses_nodes(src, dst):
            latency, bandwidth = self.inter_latency_ns, self.inter_bandwidth_gbps
        else:
            latency, bandwidth = self.intra_latency_ns, self.intra_bandwidth_gbps
        transfer = num_bytes / bandwidth if bandwidth > 0 else 0.0  # GB/s == B/ns
        return self.message_ns + latency + int(math.floor(transfer + 0.5))

    def collective_ns(self, root: int, peers: tuple[int, ...], num_bytes: int) -> int:
        """A broadcast from (or gather into) ``root`` over ``peers`` (the root itself costs nothing)."""
        costs = [self.message_ns_between(root, p, num_bytes) for p in peers if p != root]
        if not costs:
            return 0
        rounds = math.ceil(math.log2(len(costs) + 1))
        if self.collective == "tree":
            return rounds * max(costs)
        if self.collective == "nccl":  # one collective call: one host cost, then a tree of link hops
            return self.message_ns + rounds * (max(costs) - self.message_ns)
        return sum(costs)


def place_ranks(num_ranks: int, gpus_per_node: int, explicit: tuple[int, ...] = ()) -> tuple[int, ...]:
    """Node of each rank: ``explicit`` if given, else packed (rank r on node r // gpus_per_node)."""
    if explicit:
        if len(explicit) != num_ranks:
            raise SpdsimError(f"method.rank_nodes: {len(explicit)} entries for {num_ranks} ranks")
        if any(node < 0 for node in explicit):
            raise SpdsimError("method.rank_nodes: nodes must be >= 0")
        return tuple(explicit)
    if gpus_per_node <= 0:
        return (0,) * num_ranks
    return tuple(rank // gpus_per_node for rank in range(num_ranks))


def build_topology(hardware: Hardware | None, num_stages: int, own_drafter: bool, explicit=()) -> Topology:
    """The placement of SPD's controller and ``num_stages`` stage ranks on ``hardware``."""
    num_ranks = num_stages + (1 if own_drafter else 0)
    stage_ranks = tuple(s + 1 for s in range(num_stages)) if own_drafter else tuple(range(num_stages))
    if hardware is None:
        return Topology((0,) * num_ranks, stage_ranks, 0, 0.0, 0, 0.0, 0, "fanout")
    return Topology(
        rank_nodes=place_ranks(num_ranks, hardware.gpus_per_node, tuple(explicit)),
        stage_ranks=stage_ranks,
        intra_latency_ns=hardware.p2p_latency_ns,
        intra_bandwidth_gbps=hardware.p2p_bandwidth_gbps,
        inter_latency_ns=hardware.inter_node_latency_ns,
        inter_bandwidth_gbps=hardware.inter_node_bandwidth_gbps,
        message_ns=hardware.host_message_ns,
        collective=hardware.collective,
    )


def anchor_stages(
    stage_layers: tuple[int, ...], bound: tuple[int, ...] = DEFAULT_ANCHOR_BOUND
) -> tuple[int, ...]:
    """Stages that produce an anchor feature h_b (b >= 1: the output of layer b - 1) and send it to the controller.

    h_0 (the embedding) is made on the controller; bounds beyond the model are clamped to its last layer.
    """
    total = sum(stage_layers)
    ends = []
    end = 0
    for layers in stage_layers:
        end += layers
        ends.append(end)
    senders = []
    for b in bound[1:]:
        layer = min(b, total) - 1
        stage = next(s for s, e in enumerate(ends) if layer < e)
        if stage not in senders:
            senders.append(stage)
    return tuple(sorted(senders))


def topology_active(hardware: Hardware | None, explicit=()) -> bool:
    """Whether the hardware spec describes a topology (nodes, message costs, a tree or a placement). Without one
    the cycle keeps the flat ``overheads.control_ns`` / ``gather_ns`` and one link for every hop, as before."""
    if explicit:
        return True
    if hardware is None:
        return False
    return hardware.gpus_per_node > 0 or hardware.host_message_ns > 0 or hardware.collective != "fanout"


@dataclass(frozen=True)
class CommCosts:
    """Per-cycle communication of an SPD pipeline on a topology (int ns), and which hops cross nodes."""

    send_ns: tuple[int, ...]  # stage s -> stage s+1 (the last stage -> controller: verify_hs)
    control_ns: int  # control broadcast to the n stages, before every cycle
    gather_ns: int  # anchor snapshots from the anchor stages into the controller
    discard_ns: int  # DISCARD broadcast after a rejection
    inter_node_hops: tuple[bool, ...]  # per send: does it cross nodes


def comm_costs(
    topology: Topology, intra_send_ns: int, hidden_bytes: int, stage_layers: tuple[int, ...], spd: bool
) -> CommCosts:
    """Every message of one cycle priced on ``topology``. ``intra_send_ns``: the latency model's own price of a
    hidden-state send over the intra-node link (a measured profile's p2p, or the roofline's). PPSD has no anchor
    gather: its drafter is stage 0's early exit."""
    stages = len(stage_layers)
    ranks = topology.stage_ranks
    sends = []
    crossings = []
    for s in range(stages):
        dst = ranks[s + 1] if s + 1 < stages else 0
        cross = topology.crosses_nodes(ranks[s], dst)
        if ranks[s] == dst:
            cost = 0
        elif cross:
            cost = topology.message_ns_between(ranks[s], dst, hidden_bytes)
        else:
            cost = topology.message_ns + intra_send_ns
        sends.append(cost)
        crossings.append(cross)
    control = topology.collective_ns(0, ranks, CONTROL_BYTES)
    gather = 0
    if spd:
        senders = tuple(ranks[s] for s in anchor_stages(stage_layers))
        gather = topology.collective_ns(0, senders, hidden_bytes)
    return CommCosts(tuple(sends), control, gather, control, tuple(crossings))
