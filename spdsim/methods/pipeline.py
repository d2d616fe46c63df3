"""Pipelined speculation: SPD and PPSD (docs/design.md §3, docs/spd.md §1, docs/baselines.md §5.11).

The target's L layers are split into n stages. A cycle is

    control + max(active members) + [verify: head + sampling, saturated cycles only] + fixed per-cycle costs

where the members are each active stage's forward (+ its hidden-state send) and the drafter (anchor gather +
PDM). With the drafter on stage 0's GPU (``drafter_placement = "stage0"``) the executor issues stage 0's forward
and the PDM on two CUDA streams at once (``executor/distributed/controller.py``): they keep the GPU busy
max(a, b) + c·min(a, b) with the calibrated contention c (``LatencyModel.colocated_contention_ppm``; 1, back to
back, without a profile), the whole slowed by ``drafter_contention``. Start-up and every rejection cost n-1
fill/refill cycles in which only the stages that hold a token run and nothing is received from the last stage or
verified; a rejection flushes the in-flight tokens (their earlier stage work is relabelled FLUSHED). Every
verification commits one token; its serial cost is head + sampling + the profile's ``verify_fixed``.

With ``stage_placement = "one-gpu"`` (the executor's single-process SPD) every stage and the drafter share one
GPU, each on its own CUDA stream, and stage outputs stay on the device (no send). A batch-1 decode stream leaves
part of the memory bus idle, so g members issued at once keep the GPU busy max(t) + c(g)·(Σt − max t) with the
profiled stream overlap c(g) (``LatencyModel.stream_overlap_ppm``, g = the active stages + SPD's drafter); without
the profile phase c = 1: the sum of the members, laid back to back.

PPSD: the drafter is the target's own early-exit path (first ``exit_layer`` layers + an exit head), so it runs
on stage 0's GPU after (and reusing) the stage-0 layers it shares; no extra GPU.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

from spdsim.engine.result import BUSY, COMM, DRAFT, FLUSHED
from spdsim.latency.model import PPM
from spdsim.methods import Method
from spdsim.methods.common import kv_lengths, serial_overheads_ns, stage_layer_counts
from spdsim.methods.pipeline_batch import serve_pipeline_batch
from spdsim.methods.pipeline_trace import record_pipeline_spans
from spdsim.scenario.topology import build_topology, comm_costs, topology_active


@dataclass(frozen=True)
class PipelineCosts:
    """Member and serial costs of every cycle kind, per committed count c (int ns; lists for speed).

    ``forward_ns[s][c]``: stage s's forward (stage 0 includes the embedding and is
    slowed by contention when it shares its GPU with the drafter); ``stage0_draft_ns[c]``: the time the drafter
    adds to stage 0's GPU beyond that forward (the part not overlapped); ``send_ns``: hidden-state send after each stage; ``drafter_ns[c]``: the
    PDM on its own GPU (after the ``gather_ns`` anchor gather) or, on one GPU with a profiled stream overlap, on its
    own stream; empty when the drafter is part of stage 0's member;
    ``cycle_ns[a][c]``: the whole cycle with ``a`` active stages (a = n: saturated, with verify). The PDM is
    priced with n+1 query rows (pending-deepest row + the in-flight tokens) in every cycle.
    """

    num_stages: int
    forward_ns: tuple[list[int], ...]
    stage0_draft_ns: list[int]  # drafter time added to stage 0's GPU (stage0 placement / PPSD), else zeros
    send_ns: tuple[int, ...]  # per stage: its hidden-state send (the last stage's goes to the controller)
    gather_ns: int
    drafter_ns: list[int]  # PDM on its own GPU; empty when on stage 0
    control_ns: int
    verify_ns: int  # head + sampling + verify_fixed of a saturated cycle
    fixed_ns: int
    cycle_ns: tuple[list[int], ...]  # index a = 1..n (index 0 unused)
    refill_total_ns: list[int]  # the n-1 fill/refill cycles back to back (a = 1..n-1)
    reject_ns: int = (
        0  # after a rejection, before its refill: DISCARD broadcast + KV crop (topology, crop_ns)
    )
    inter_node_hops: tuple[bool, ...] = ()  # per stage send: does it cross nodes (topology)
    back_to_back: bool = False  # members run one after another on one GPU (stage_placement "one-gpu", c = 1)


def pipeline_costs(scenario, latency) -> PipelineCosts:
    method = scenario.method
    overheads = scenario.overheads
    counts = stage_layer_counts(scenario)
    stages = len(counts)
    kv = kv_lengths(scenario)
    tp = max(method.tensor_parallel, 1)
    forwards = [np.asarray(latency.layers_ns(layers, 1, kv, tp), dtype=np.int64) for layers in counts]
    forwards[0] = forwards[0] + latency.embed_ns(1)
    own_drafter = method.name == "spd" and method.drafter_placement == "own-gpu"
    if method.name == "spd":
        draft = np.asarray(latency.pdm_ns(method.spec_layers, stages + 1, kv), dtype=np.int64)
    else:
        draft = np.full(kv.shape, _early_exit_extra_ns(scenario, latency, counts[0], kv), dtype=np.int64)
    if own_drafter:
        stage0_draft = np.zeros(kv.shape, dtype=np.int64)
    else:
        forwards[0], stage0_draft = colocated_stage0_ns(
            latency, overheads, forwards[0], draft, stages, spd=method.name == "spd"
        )
    one_gpu = method.stage_placement == "one-gpu"
    send = 0 if one_gpu else latency.p2p_ns(latency.hidden_bytes(1)) + overheads.p2p_ns
    gather = overheads.gather_ns if method.name == "spd" else 0
    control, fixed = serial_overheads_ns(scenario, latency, with_verify=False)
    sends = (send,) * stages
    reject = scenario.hardware.crop_ns if scenario.hardware is not None else 0
    hops: tuple[bool, ...] = (False,) * stages
    if topology_active(scenario.hardware, method.rank_nodes):
        spd = method.name == "spd"
        topo = build_topology(scenario.hardware, stages, own_drafter, method.rank_nodes)
        comm = comm_costs(topo, send - overheads.p2p_ns, latency.hidden_bytes(1), counts, spd)
        sends = tuple(c + overheads.p2p_ns for c in comm.send_ns)
        control += comm.control_ns
        gather += comm.gather_ns
        reject += comm.discard_ns
        hops = comm.inter_node_hops
    fixed += latency.cycle_fixed_ns(stages)  # a profile's measured serial per-cycle cost
    verify = latency.head_ns(1) + overheads.sampling_ns + latency.verify_fixed_ns(stages)
    if method.name == "spd" and method.verify_placement == "last-stage":
        # the last stage verifies on its own GPU, as part of its forward (it holds a token only in saturated
        # cycles): only the token ids travel back, and every reader of forward_ns (spans, busy totals, the closed
        # form) sees the verify where it runs
        forwards[-1] = forwards[-1] + verify
        verify = 0
    # SPD's drafter is its own stream on one GPU (PPSD's exit head follows stage 0: part of its member)
    streams = [a + (method.name == "spd") for a in range(stages + 1)]
    overlap = [latency.stream_overlap_ppm(g) if one_gpu else PPM for g in streams]
    overlapped = one_gpu and min(overlap) < PPM
    split_drafter = overlapped and method.name == "spd"
    if split_drafter:  # the whole PDM and its gather become their own member, overlapped by c(g) alone (a
        # calibrated colocated_contention describes stage 0's GPU in a distributed run: applying it too would count
        # the overlap twice)
        stage0_draft = np.zeros(kv.shape, dtype=np.int64)
        own_drafter = True
    stage_members = [f + sends[s] for s, f in enumerate(forwards)]
    stage_members[0] = stage_members[0] + stage0_draft + (0 if own_drafter else gather)
    drafter_member = draft + gather if own_drafter else np.zeros(kv.shape, dtype=np.int64)
    cycles: list[list[int]] = [[]]
    busiest = drafter_member  # the slowest member so far, or on one GPU all of them back to back
    refill_total = np.zeros(kv.shape, dtype=np.int64)
    for active in range(1, stages + 1):
        member = stage_members[active - 1]
        if overlapped:
            members = [*stage_members[:active], *([drafter_member] if split_drafter else [])]
            busy = shared_gpu_ns(members, overlap[active])
        else:
            busiest = busy = busiest + member if one_gpu else np.maximum(busiest, member)
        total = control + busy + fixed + (verify if active == stages else 0)
        cycles.append(total.tolist())
        if active < stages:
            refill_total += total
    return PipelineCosts(
        num_stages=stages,
        forward_ns=tuple(f.tolist() for f in forwards),
        stage0_draft_ns=stage0_draft.tolist(),  # type: ignore[arg-type]
        send_ns=tuple(int(x) for x in sends),
        gather_ns=int(gather),
        drafter_ns=draft.tolist() if own_drafter else [],
        control_ns=int(control),
        verify_ns=int(verify),
        fixed_ns=int(fixed),
        cycle_ns=tuple(cycles),
        refill_total_ns=refill_total.tolist(),  # type: ignore[arg-type]
        reject_ns=int(reject),
        inter_node_hops=hops,
        back_to_back=one_gpu and not overlapped,
    )


def colocated_stage0_ns(latency, overheads, forward0, draft, stages: int, *, spd: bool):
    """Stage 0's forward and the drafter sharing its GPU: (stage 0's forward slowed by ``drafter_contention``,
    the time the drafter adds beyond it). The one price of a drafter on stage 0's GPU: the schedule, the closed
    form and the optimizer all take it from here.

    SPD's co-located PDM runs on its own CUDA stream beside stage 0 (partial overlap, calibrated contention);
    PPSD's exit head needs stage 0's output, so it always follows it.
    """
    ppm = latency.colocated_contention_ppm(stages) if spd else PPM
    shared = shared_gpu_ns([forward0, draft], ppm)
    contention = overheads.drafter_contention
    slowed0 = np.rint(forward0 * contention).astype(np.int64)
    return slowed0, np.rint(shared * contention).astype(np.int64) - slowed0


def cycle_plan(outcomes: tuple[int, ...], stages: int, new_tokens: int) -> list[tuple[int, int]]:
    """(active stages, committed tokens) of every cycle of a pipeline request whose verifications follow
    ``outcomes`` (cycled): n-1 fill cycles, then one verification per saturated cycle; each rejection brings n-1
    refill cycles. The states of ``run_request``'s loop, as a list (the strict replay prices it with
    ``PipelineCosts.cycle_ns[active][committed]``)."""
    plan, committed, active, verify = [], 0, 1, 0
    while committed < new_tokens:
        plan.append((active, committed))
        if active < stages:
            active += 1
            continue
        accepted = outcomes[verify % len(outcomes)]
        verify += 1
        committed += 1
        if not accepted and committed < new_tokens:
            active = 1
    return plan


def shared_gpu_ns(members_ns, contention_ppm: int):
    """Time members issued at once, each on its own stream, keep their shared GPU busy: max(t) + c·(Σt − max t),
    c = ``contention_ppm`` / 10^6 (1: back to back, 0: perfect overlap); for two members max(a, b) + c·min(a, b)
    (stage 0 and a co-located drafter). Integer ns; c = 1 gives Σt exactly."""
    members = [np.asarray(m, dtype=np.int64) for m in members_ns]
    longest = np.maximum.reduce(members)
    rest = sum(members[1:], members[0]) - longest
    return longest + (rest * contention_ppm + PPM // 2) // PPM


def _early_exit_extra_ns(scenario, latency, stage0_layers: int, kv) -> np.ndarray:
    """PPSD drafter work beyond stage 0's own layers: the exit head (+ layers past stage 0 if the exit is deeper)."""
    exit_layer = scenario.method.exit_layer or stage0_layers
    extra_layers = max(exit_layer - stage0_layers, 0)
    extra = latency.head_ns(1)
    if extra_layers:
        return np.asarray(latency.layers_ns(extra_layers, 1, kv), dtype=np.int64) + extra
    return extra


def run_request(env, context, request, streams):
    scenario = context.scenario
    costs = pipeline_costs(scenario, context.latency)
    recorder = context.recorder
    jitter = streams.jitter
    stream = context.acceptance.stream(streams.acceptance, request, 1)
    new_tokens = scenario.workload.new_tokens
    if new_tokens <= 0:
        return
    if not jitter.enabled:
        yield from _run_deterministic(env, recorder, stream, costs, request, new_tokens)
        return
    stages = costs.num_stages
    record = recorder.record_intervals
    history: deque = deque(maxlen=max(stages - 1, 1))
    committed = cycle = 0
    active = 1  # the prefill token enters stage 0: n-1 fill cycles first
    after_refill = True
    timeout = env.timeout
    busy = [0] * (stages + 2)  # stages, drafter, controller (totals when intervals are not recorded)
    while committed < new_tokens:
        start = int(env.now)
        duration, spans = _cycle_spans(costs, active, committed, jitter)
        yield timeout(duration)
        if record:
            history.append(_record_cycle(recorder, spans, start, request, cycle))
        else:
            _total_cycle(busy, spans)
        cycle += 1
        if active < stages:
            active += 1
            continue
        accepted = stream.spd_accept(after_refill)
        now = int(env.now)
        recorder.verification(
            request, cycle - 1, now, 1, int(accepted), "refill" if after_refill else "saturated"
        )
        recorder.commit(request, committed, now, cycle - 1, accepted)
        committed += 1
        after_refill = not accepted
        if not accepted and committed < new_tokens:
            if record:
                _flush(recorder, history, stages)
            history.clear()
            active = 1
            if costs.reject_ns:
                start = int(env.now)
                yield timeout(costs.reject_ns)
                recorder.interval(
                    "controller", start, start + costs.reject_ns, COMM, "discard", request, cycle
                )
    recorder.iterations += cycle
    for index, total in enumerate(busy):
        if total:
            name = f"stage{index}" if index < stages else ("drafter" if index == stages else "controller")
            recorder.add_busy(name, total)


def _total_cycle(busy: list[int], spans) -> None:
    """Add one cycle's busy time per resource (same totals as the recorded spans)."""
    control, stage_spans, drafter, slowest, verify, fixed = spans
    for s, (forward, draft, gather, send) in enumerate(stage_spans):
        busy[s] += forward + draft + gather + send
    if drafter is not None:
        busy[-2] += drafter[0] + drafter[1]
    busy[-1] += control + verify + fixed


def _run_deterministic(env, recorder, stream, costs: PipelineCosts, request, new_tokens):
    """Fixed latencies: the silent fill/refill cycles (nothing commits) are folded into the timeout of the verify
    cycle that follows them; one event per token. Busy spans, when recorded, are rebuilt from one row per event
    afterwards (``pipeline_trace``); otherwise only busy totals are kept."""
    stages = costs.num_stages
    saturated = costs.cycle_ns[stages]
    refill_total = costs.refill_total_ns
    timeout = env.timeout
    add_verification = recorder.verifications.append  # rows as Recorder.verification / commit build them
    add_token = recorder.tokens.append
    accept = stream.spd_accept
    committed = 0
    cycle = stages - 1  # index of the first verify cycle, after n-1 fill cycles
    pending = refill_total[0]
    after_refill = True
    refills_at = [0]  # committed counts at which a fill/refill block ran
    segments: list[tuple[int, int, bool, bool]] | None = [] if recorder.record_intervals else None
    rejected = False
    while committed < new_tokens:
        if segments is not None:
            segments.append((env.now, committed, after_refill, rejected))
        yield timeout(pending + saturated[committed])
        accepted = accept(after_refill)
        now = env.now
        add_verification((request, cycle, now, 1, int(accepted), "refill" if after_refill else "saturated"))
        add_token((request, committed, now, cycle, accepted))
        committed += 1
        cycle += 1
        if accepted or committed == new_tokens:
            pending = 0
            after_refill = rejected = False
        else:
            pending = refill_total[committed] + costs.reject_ns
            refills_at.append(committed)
            cycle += stages - 1
            after_refill = rejected = True
    recorder.iterations += cycle
    if segments is not None:
        record_pipeline_spans(recorder, costs, request, segments)
    else:
        _add_busy_totals(recorder, costs, new_tokens, refills_at)


def _add_busy_totals(recorder, costs: PipelineCosts, new_tokens: int, refills_at: list[int]) -> None:
    """Busy time per resource of a deterministic run: every stage works in each verify cycle; in a
    fill/refill block stage s works in n-1-s of the n-1 cycles; the drafter works in every cycle."""
    stages = costs.num_stages
    refills = np.asarray(refills_at, dtype=np.int64)
    own_drafter = bool(costs.drafter_ns)
    for s in range(stages):
        member = np.asarray(costs.forward_ns[s], dtype=np.int64) + costs.send_ns[s]
        if s == 0:
            member = (
                member
                + np.asarray(costs.stage0_draft_ns, dtype=np.int64)
                + (0 if own_drafter else costs.gather_ns)
            )
        total = int(member[:new_tokens].sum()) + (stages - 1 - s) * int(member[refills].sum())
        recorder.add_busy(f"stage{s}", total)
    if own_drafter:
        member = np.asarray(costs.drafter_ns, dtype=np.int64) + costs.gather_ns
        drafter = int(member[:new_tokens].sum()) + (stages - 1) * int(member[refills].sum())
        if drafter:
            recorder.add_busy("drafter", drafter)
    cycles = new_tokens + (stages - 1) * len(refills_at)
    controller = cycles * (costs.control_ns + costs.fixed_ns) + new_tokens * costs.verify_ns
    controller += (len(refills_at) - 1) * costs.reject_ns
    if controller:
        recorder.add_busy("controller", controller)


def member_parts_ns(costs: PipelineCosts, active: int, c: int) -> list[tuple[int, ...]]:
    """The phases of each parallel member of a cycle with ``active`` stages (each jitters independently)."""
    members = []
    for s in range(active):
        parts = [costs.forward_ns[s][c], costs.send_ns[s]]
        if s == 0:
            parts += [costs.stage0_draft_ns[c], 0 if costs.drafter_ns else costs.gather_ns]
        members.append(tuple(parts))
    if costs.drafter_ns:
        members.append((costs.gather_ns, costs.drafter_ns[c]))
    return members


def _cycle_spans(costs: PipelineCosts, active: int, c: int, jitter):
    """Jittered phase spans of one cycle and its total length (the cycle waits for its slowest member)."""
    apply = jitter.apply
    control = apply(costs.control_ns)
    stage_spans = []
    slowest = 0
    for s in range(active):
        forward = apply(costs.forward_ns[s][c])
        draft = apply(costs.stage0_draft_ns[c]) if s == 0 else 0
        gather = apply(costs.gather_ns) if s == 0 and not costs.drafter_ns else 0
        send = apply(costs.send_ns[s])
        stage_spans.append((forward, draft, gather, send))
        slowest = max(slowest, gather + forward + draft + send)
    drafter = None
    if costs.drafter_ns:
        drafter = (apply(costs.gather_ns), apply(costs.drafter_ns[c]))
        slowest = max(slowest, drafter[0] + drafter[1])
    verify = apply(costs.verify_ns) if active == costs.num_stages else 0
    fixed = apply(costs.fixed_ns)
    return control + slowest + verify + fixed, (control, stage_spans, drafter, slowest, verify, fixed)


def _record_cycle(recorder, spans, start, request, cycle):
    """Record one cycle's spans; returns (stage forward indices, drafter index) for a later flush."""
    control, stage_spans, drafter, slowest, verify, fixed = spans
    interval = recorder.interval
    interval("controller", start, start + control, COMM, "control", request, cycle)
    begin = start + control
    forward_indices = []
    drafter_index = -1
    for s, (forward, draft, gather, send) in enumerate(stage_spans):
        resource = f"stage{s}"
        cursor = begin
        interval(resource, cursor, cursor + gather, COMM, "gather", request, cycle)
        cursor += gather
        forward_indices.append(interval(resource, cursor, cursor + forward, BUSY, "forward", request, cycle))
        cursor += forward
        if draft:
            drafter_index = interval(resource, cursor, cursor + draft, DRAFT, "draft", request, cycle)
            cursor += draft
        interval(resource, cursor, cursor + send, COMM, "send", request, cycle)
    if drafter is not None:
        gather, pdm = drafter
        interval("drafter", begin, begin + gather, COMM, "gather", request, cycle)
        drafter_index = interval(
            "drafter", begin + gather, begin + gather + pdm, DRAFT, "pdm", request, cycle
        )
    end = begin + slowest
    interval("controller", end, end + verify, BUSY, "verify", request, cycle)
    interval("controller", end + verify, end + verify + fixed, COMM, "sync", request, cycle)
    return forward_indices, drafter_index


def _flush(recorder, history, stages):
    """Relabel the work of tokens discarded by a rejection: stage s of the cycle j back, s <= n-2-j."""
    for back, (forward_indices, drafter_index) in enumerate(reversed(history)):
        if back > stages - 2:
            break
        for s, index in enumerate(forward_indices):
            if s <= stages - 2 - back:
                recorder.relabel(index, FLUSHED)
        recorder.relabel(drafter_index, FLUSHED)


def spd_gpus(scenario) -> int:
    method = scenario.method
    stages = len(method.stage_layers) if method.stage_layers else method.num_stages
    if method.stage_placement == "one-gpu":
        return 1
    return stages * max(method.tensor_parallel, 1) + (1 if method.drafter_placement == "own-gpu" else 0)


def ppsd_gpus(scenario) -> int:
    method = scenario.method
    stages = len(method.stage_layers) if method.stage_layers else method.num_stages
    return stages * max(method.tensor_parallel, 1)


METHODS = (
    Method(
        "spd",
        "Speculative Pipeline Decoding: n pipeline stages, a PDM drafts one token per cycle (own GPU or stage 0)",
        "pipeline",
        spd_gpus,
        run_request,
        serve_pipeline_batch,
    ),
    Method(
        "ppsd",
        "pipeline-parallel early-exit self-speculation: an SPD-like pipeline drafting with its own early exit",
        "pipeline",
        ppsd_gpus,
        run_request,
        serve_pipeline_batch,
    ),
)
