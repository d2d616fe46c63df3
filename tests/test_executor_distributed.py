"""Multi-process SPD on the CPU (gloo): lossless against greedy AR in both drafter placements (2, 3 and 4
processes), the same cycles as the single-process schedule, no host sync on the controller's steady-state path
but the verify's one read per saturated cycle, the run directory it writes replays in the simulator, the controller's
progress reaches the launcher's callback (a report finishes no rank), and a killed or stalled rank ends the run with
one line naming it."""

import gc
import json
import queue
import re
import time
import weakref

import pytest
import torch
from distributed_tiny import prompt_set, tiny_source

from executor.distributed import DistributedConfig, DistributedError, run_distributed
from executor.distributed.comm import NO_CROP, OP_END_PROMPT, OP_GO, OP_PREFILL, OP_SHUTDOWN, Control, Roles
from executor.schedules.ar import GenerationConfig, generate_ar
from executor.schedules.base import TIMED, WARMUP, warmup_prompts
from executor.schedules.common import DecodeOptions, as_prompts

SOURCE = tiny_source(layers=4)
NEW_TOKENS = 14


def single_process(prompts, config: DistributedConfig, job: DecodeOptions):
    """The same prompts through the single-process SPD schedule with the drafter the ranks build."""
    from executor.distributed.launch import build_drafter
    from executor.schedules.spd import run_spd
    from executor.stages import split_layers

    model = SOURCE.build("cpu")
    split = split_layers(model.num_layers, config.roles.num_stages, config.stage_layers)
    drafter = build_drafter(model, split, config, job.seed)
    return run_spd(model, drafter, prompts, split, job, use_graphs=False)


def assert_like_single_process(run, prompts, config, jobs):
    """Per job and prompt: the single-process schedule's tokens and cycles (index, state, tokens emitted)."""
    for result, job in zip(run.spd, jobs, strict=True):
        reference = single_process(prompts, config, job)
        for got, want in zip(result.prompts, reference.prompts, strict=True):
            assert got.tokens == want.tokens, got.prompt_id
            assert [(c.index, c.state, c.tokens) for c in got.cycles] == [
                (c.index, c.state, c.tokens) for c in want.cycles
            ], got.prompt_id


def assert_steady_state_syncs(run):
    """The controller reads the device only for the verify: once per saturated cycle, never in fill/refill."""
    assert len(run.cycle_syncs) == sum(len(result.prompts) for result in run.spd)
    states = set()
    for cycles in run.cycle_syncs:
        for state, syncs in cycles:
            states.add(state)
            assert syncs == (1 if state == "saturated" else 0), (state, syncs)
    assert {"fill", "saturated"} <= states


def greedy(prompts):
    model = SOURCE.build("cpu")
    gen = GenerationConfig(max_new_tokens=NEW_TOKENS, use_graphs=False)
    return [generate_ar(model, tokens, gen).tokens for _, tokens in prompts]


def assert_one_timed_count(reports, total):
    """The controller's reports, every prompt loop in one TIMED count: from 0 to ``total``, never backwards."""
    assert reports[0] == (TIMED, 0, total) and reports[-1] == (TIMED, total, total)
    assert {phase for phase, _, _ in reports} == {TIMED} and {t for _, _, t in reports} == {total}
    done = [d for _, d, _ in reports]
    assert done == sorted(done) and set(done) == set(range(total + 1))


def test_colocated_lossless_synthetic_replayable_and_reporting_progress(tmp_path):
    from executor.rundir import write_run_dir
    from spdsim.scenario.acceptance import load_trace

    prompts = prompt_set(3)
    jobs = [
        DecodeOptions(max_new_tokens=NEW_TOKENS),
        DecodeOptions(max_new_tokens=NEW_TOKENS, synthetic_alpha=0.7),
    ]
    config = DistributedConfig(num_stages=2, timeout_s=90)
    reports: list[tuple] = []
    run = run_distributed(SOURCE, prompts, config, jobs, progress=lambda *report: reports.append(report))
    assert_one_timed_count(reports, len(jobs) * len(prompts))
    expected = greedy(prompts)
    assert_like_single_process(run, prompts, config, jobs)
    assert_steady_state_syncs(run)
    assert run.world_size == 2 and run.backend == "gloo"
    for result in run.spd:
        for prompt_run, tokens in zip(result.prompts, expected, strict=True):
            assert prompt_run.tokens == tokens, prompt_run.prompt_id
    synthetic = run.spd[1]
    for prompt_run in synthetic.prompts:
        # every decode token comes from one verification; each rejection costs n-1 = 1 refill cycle (+1 fill)
        rejections = prompt_run.verifications - sum(row["accepted"] for row in prompt_run.trace)
        assert prompt_run.verifications == len(prompt_run.tokens) - 1
        assert prompt_run.decode_steps == prompt_run.verifications + 1 + rejections - (
            prompt_run.trace[-1]["accepted"] == 0
        )
        assert all("stage1" in c.phases_us for c in prompt_run.cycles if c.state == "saturated")
        # the last stage verified (only its triple came back): no verify phase on the controller
        assert not any("verify" in c.phases_us for c in prompt_run.cycles)
        # the controller's own timed intervals came through the result queue (pickled) as phase spans; the host
        # phases and the remote stage's times are per-cycle sums only
        assert {name for _, name, _, _ in prompt_run.phase_spans} == {"draft", "stage0"}
        phases = {c.index: c.phases_us for c in prompt_run.cycles}
        assert all(dur == phases[cycle][name] for cycle, name, _, dur in prompt_run.phase_spans)
    out = write_run_dir(synthetic, tmp_path / "run")
    timeline = json.loads((out / "timeline.json").read_text())["traceEvents"]
    assert {e["args"]["name"] for e in timeline if e["name"] == "thread_name"} == {"draft", "stage0"}
    trace = load_trace(out / "trace.csv")
    assert trace.accepted_total == synthetic.summary()["accepted"]
    assert len(trace.outcomes) == len(prompts)


def test_own_drafter_rank_lossless_verifying_on_the_controller_with_an_ar_baseline_after_a_warm_up():
    prompts = prompt_set(2, seed=5)
    config = DistributedConfig(
        num_stages=2, colocated=False, timeout_s=90, verify_on="controller", with_ar=True, warmup=True
    )
    jobs = [DecodeOptions(max_new_tokens=NEW_TOKENS, synthetic_alpha=0.8)]
    reports: list[tuple] = []
    run = run_distributed(SOURCE, prompts, config, jobs, progress=lambda *report: reports.append(report))
    assert run.world_size == 3
    assert run.ar is not None and [p.tokens for p in run.ar.prompts] == greedy(prompts)
    # the AR baseline's prompts, then the job's, each loop after its untimed warm-up (as the single-GPU runs)
    assert_one_timed_count([r for r in reports if r[0] == TIMED], 2 * len(prompts))
    ar_warm, spd_warm = (len(warmup_prompts(as_prompts(prompts), lookahead)) for lookahead in (0, 2))
    assert [r for r in reports if r[0] == WARMUP] == [
        (WARMUP, done, count) for count in (ar_warm, spd_warm) for done in range(count + 1)
    ]
    assert (
        run.ar.config["warmup_prompts"] == ar_warm >= 1
        and run.spd[0].config["warmup_prompts"] == spd_warm >= 1
    )
    assert len(run.spd[0].prompts) == len(run.cycle_syncs) == len(prompts)  # timed prompts only
    for prompt_run, tokens in zip(run.spd[0].prompts, greedy(prompts), strict=True):
        assert prompt_run.tokens == tokens
    assert_like_single_process(run, prompts, config, jobs)
    assert_steady_state_syncs(run)
    saturated = [c for p in run.spd[0].prompts for c in p.cycles if c.state == "saturated"]
    assert saturated and all("verify" in c.phases_us for c in saturated)
    # spans of what the controller timed: it drafts and verifies, both stages are remote; AR's steps
    assert {n for p in run.spd[0].prompts for _, n, _, _ in p.phase_spans} == {"draft", "verify"}
    assert {n for p in run.ar.prompts for _, n, _, _ in p.phase_spans} == {"step"}


def test_four_stages_four_processes_lossless_same_cycles_as_single_process():
    prompts = prompt_set(2, seed=11)
    config = DistributedConfig(num_stages=4, timeout_s=90)
    jobs = [DecodeOptions(max_new_tokens=NEW_TOKENS, synthetic_alpha=0.6)]
    run = run_distributed(SOURCE, prompts, config, jobs)
    assert run.world_size == 4
    for prompt_run, tokens in zip(run.spd[0].prompts, greedy(prompts), strict=True):
        assert prompt_run.tokens == tokens
    assert any(c.state == "refill" for p in run.spd[0].prompts for c in p.cycles)  # rejections were flushed
    assert_like_single_process(run, prompts, config, jobs)
    assert_steady_state_syncs(run)


@pytest.mark.parametrize(
    ("fault", "timeout_s", "message"),
    [
        (("kill", 1, 2), 30.0, "rank 1 (stage 1) died (signal SIGKILL)"),
        (("stall", 1, 2), 3.0, "no answer from rank 1 (stage 1) within 3 s"),
    ],
)
def test_dead_or_stuck_rank_ends_the_run_naming_it(fault, timeout_s, message):
    config = DistributedConfig(num_stages=2, timeout_s=timeout_s, fault=fault)
    started = time.monotonic()
    with pytest.raises(DistributedError) as info:
        run_distributed(SOURCE, prompt_set(1), config, [DecodeOptions(max_new_tokens=NEW_TOKENS)])
    text = str(info.value)
    assert message in text and "\n" not in text
    assert time.monotonic() - started < 60


class ScriptedLink:
    """A stage's link driven by a list of control words; records every receive handle dropped unawaited."""

    def __init__(self, rank: int, controls: list[Control]):
        self.rank, self.roles, self.device = rank, Roles(4, colocated=True), torch.device("cpu")
        self.controls = iter(controls)
        self.dropped: list[str] = []

    def broadcast_control(self, control, idle=False, token_t=None):
        return next(self.controls)

    def broadcast_ids(self, ids, length):
        return torch.arange(length)

    def exchange(self, sends, recvs):
        for tensor, _ in recvs:
            tensor.zero_()
        return [(_Handle(self.dropped), peer) for _, peer in recvs]

    def wait_recvs(self, handles, what):
        for handle, _ in handles:
            handle.waited = True

    def flush_sends(self, what="send"):
        pass


class _Handle:
    """A receive's work: when it is garbage-collected unawaited, the link's ``dropped`` says so."""

    def __init__(self, dropped: list[str]):
        self.waited = False
        weakref.finalize(self, _Handle._on_drop, self.__dict__, dropped)

    @staticmethod
    def _on_drop(state, dropped):
        if not state["waited"]:
            dropped.append("receive dropped before it was awaited")


def test_a_stage_awaits_every_receive_it_posts_also_across_a_rejection():
    """Gloo stalls a pair for good when a pending receive's work is destroyed (its payload is never read):
    the 4-rank hang of issue 15. Stage 2 posts its inbox receive while stage 1 is active; a rejection then makes
    stage 2 idle, and the stale receive must still be completed before its handle goes."""
    from executor.distributed.worker import StageRunner, worker_loop
    from executor.stages import split_layers

    model = SOURCE.build("cpu")
    split = split_layers(model.num_layers, 4)
    prompt = 5
    controls = [Control(OP_PREFILL, prompt_len=prompt, cache_len=64)]
    controls += [Control(OP_GO, c, c + 1, NO_CROP, 0, prompt + c) for c in range(3)]  # fill: active 1, 2, 3
    controls += [Control(OP_GO, 3, 1, prompt + 1, 0, prompt + 1)]  # a rejection: crop, stage 0 alone
    controls += [Control(OP_GO, 4, 2, NO_CROP, 0, prompt + 2), Control(OP_END_PROMPT, cycle=5)]
    controls += [Control(OP_SHUTDOWN)]
    link = ScriptedLink(2, controls)
    runner = StageRunner(model, split, 2, (), link, graphs=False)
    with torch.inference_mode():
        worker_loop(runner)
    gc.collect()
    assert link.dropped == []
    assert runner.inbox_handles == []


def test_unknown_verify_place_is_refused_before_launching():
    from spdsim.contract import SpdsimError

    config = DistributedConfig(num_stages=2, verify_on="gpu")
    with pytest.raises(SpdsimError, match="verify_on: unknown 'gpu'"):
        run_distributed(SOURCE, prompt_set(1), config, [DecodeOptions(max_new_tokens=2)])


class _SendWork:
    """A send's work: records, when awaited, the control ring's slots as they are at that moment."""

    def __init__(self, log: list, link, name: str):
        self.log, self.link, self.name = log, link, name

    def wait(self, timeout=None):
        self.log.append((self.name, self.link._ring.device[:, 1].tolist()))


def test_control_words_reuse_one_ring_and_sends_are_awaited_where_their_slot_is_reused(monkeypatch):
    """Issue 15, control plane: every word is staged through the same two host/device slots (nothing allocated or
    pinned per cycle), the draft token is copied into the word on the device, a send is awaited two words later
    just before its slot is rewritten (never at the start of its own or the next cycle), and only a flush that
    waits for a young send counts as a host sync."""
    from executor.distributed import comm
    from executor.host_sync import HostSyncs

    link = comm.Link(0, Roles(2, colocated=True), torch.device("cpu"), 5.0, 5.0)
    log: list = []
    posted: list[str] = []

    def batch_isend_irecv(ops):
        return [_SendWork(log, link, posted.pop(0)) for _ in ops]

    monkeypatch.setattr(comm.dist, "P2POp", lambda op, tensor, peer: (op, tensor, peer))
    monkeypatch.setattr(comm.dist, "batch_isend_irecv", batch_isend_irecv)
    syncs = HostSyncs.count
    words, hosts = [], set()
    for cycle in range(4):
        posted.append(f"control {cycle}")
        token = torch.tensor([[40 + cycle]])
        link.broadcast_control(Control(OP_GO, cycle, 2, NO_CROP, 0, 7 + cycle), token_t=token)
        words.append(link.control_tensor)
        hosts.add(link._ring.host.data_ptr())
        assert Control.decode(link.control_tensor) == Control(OP_GO, cycle, 2, NO_CROP, 40 + cycle, 7 + cycle)
        posted.append(f"stage 0 output {cycle}")
        link.exchange([(torch.zeros(3), 1)], [])
        if cycle < 2:
            assert log == []  # nothing awaited in the first two cycles
    assert len({w.data_ptr() for w in words}) == 2 and len(hosts) == 1
    # cycle 2's word retired cycle 0's sends while their slot (1) still held cycle 0's word; cycle 3's, cycle 1's
    assert log == [
        ("control 0", [1, 0]),
        ("stage 0 output 0", [1, 0]),
        ("control 1", [1, 2]),
        ("stage 0 output 1", [1, 2]),
    ]
    assert HostSyncs.count == syncs
    link.flush_sends()
    assert [name for name, _ in log[4:]] == ["control 2", "stage 0 output 2", "control 3", "stage 0 output 3"]
    assert HostSyncs.count == syncs + 1  # the end-of-prompt flush waits for young sends: one counted sync


class _NcclWork:
    """A stream-ordered work: ``wait`` returns at once (it only orders streams); ``is_completed`` says when."""

    def __init__(self, completes_after_s: float | None):
        self.posted, self.after, self.waits = time.monotonic(), completes_after_s, 0

    def wait(self, timeout=None):
        assert timeout is None  # the NCCL path never passes a timeout: the host does not block
        self.waits += 1

    def is_completed(self) -> bool:
        return self.after is not None and time.monotonic() - self.posted >= self.after


def test_stream_ordered_waits_do_not_block_and_the_watchdog_names_a_silent_peer():
    """Issue 15: on a GPU, ``Link.wait`` issues the stream-ordered wait and returns at once (no polling loop); the
    watchdog drops work that completes and, for work still incomplete at the deadline, reports one line naming the
    peer (the launcher's ``on_stall``) and makes the next wait raise it. Run here with stand-in works: the path is
    the one an NCCL rank takes."""
    from executor.distributed import comm

    reports: list[str] = []
    link = comm.Link(2, Roles(3, colocated=True), torch.device("cuda"), 0.4, 5.0, on_stall=reports.append)
    fast, silent = _NcclWork(0.05), _NcclWork(None)
    started = time.monotonic()
    link.wait(fast, 0, "control word")
    link.wait(silent, 1, "hidden state from stage 1")
    assert time.monotonic() - started < 0.1 and fast.waits == silent.waits == 1
    time.sleep(0.2)
    assert link.watchdog().pending() == 1 and reports == []  # the completed work was dropped
    deadline = time.monotonic() + 5
    while not reports and time.monotonic() < deadline:
        time.sleep(0.02)
    expected = "rank 2 (stage 2): no answer from rank 1 (stage 1) within 0.4 s (hidden state from stage 1)"
    assert reports == [expected]
    assert 0.4 <= time.monotonic() - started < 2
    with pytest.raises(DistributedError) as info:
        link.wait(_NcclWork(0.0), 0, "control word")
    assert str(info.value) == expected
    link.watchdog().close()


def test_a_watched_query_that_raises_ends_the_bound_with_its_message():
    from executor.distributed.comm import Watchdog

    failures: list[str] = []

    def broken() -> bool:
        raise RuntimeError("CUDA error: an illegal memory access")

    watchdog = Watchdog(failures.append, tick_s=0.01)
    watchdog.watch(broken, "rank 1: no answer from rank 0 (control word)", limit_s=60.0)
    deadline = time.monotonic() + 5
    while not failures and time.monotonic() < deadline:
        time.sleep(0.01)
    watchdog.close()
    assert failures == [
        "rank 1: no answer from rank 0 (control word) (RuntimeError: CUDA error: an illegal memory access)"
    ]
    assert watchdog.failure == failures[0] and watchdog.pending() == 1


class _Exited:
    """A rank process as the supervisor sees it: its exit code (None: still running; -6: SIGABRT)."""

    def __init__(self, exitcode: int | None) -> None:
        self.exitcode = exitcode


def _reports(*messages: tuple) -> queue.Queue:
    results: queue.Queue = queue.Queue()
    for message in messages:
        results.put(message)
    return results


def test_a_rank_that_aborts_tearing_down_after_reporting_leaves_the_payload_standing():
    """Gloo's destructors aborted one rank after it had sent "done" (a full CPU suite run): the run is complete."""
    from executor.distributed.launch import _supervise

    results = _reports(("result", 0, {"runs": 1}), ("done", 1, None))
    assert _supervise([_Exited(0), _Exited(-6)], results, Roles(2, colocated=True)) == {"runs": 1}


def test_a_rank_that_dies_before_reporting_ends_the_run_naming_it():
    from executor.distributed.launch import _supervise

    roles = Roles(2, colocated=True)
    with pytest.raises(DistributedError, match=re.escape(f"{roles.name(1)} died (signal SIGABRT)")):
        _supervise([_Exited(0), _Exited(-6)], _reports(("result", 0, {"runs": 1})), roles, grace_s=0.1)


def test_a_rank_still_tearing_down_after_reporting_is_not_waited_for():
    from executor.distributed.launch import _supervise

    results = _reports(("result", 0, {"runs": 1}), ("done", 1, None))
    started = time.monotonic()
    assert _supervise([_Exited(0), _Exited(None)], results, Roles(2, colocated=True), exit_s=0.2) == {
        "runs": 1
    }
    assert time.monotonic() - started < 5.0


def test_a_progress_report_is_handed_on_and_finishes_no_rank():
    """A rank that reported progress and then died has not done its part: the run fails, naming it."""
    from executor.distributed.launch import _supervise

    roles = Roles(2, colocated=True)
    reports: list[tuple] = []
    results = _reports(("progress", 1, (TIMED, 1, 2)), ("result", 0, {"runs": 1}))
    with pytest.raises(DistributedError, match=re.escape(f"{roles.name(1)} died (signal SIGABRT)")):
        _supervise(
            [_Exited(0), _Exited(-6)],
            results,
            roles,
            grace_s=0.1,
            progress=lambda *report: reports.append(report),
        )
    assert reports == [(TIMED, 1, 2)]


def test_progress_reports_without_a_listener_leave_the_payload_standing():
    from executor.distributed.launch import _supervise

    results = _reports(
        ("progress", 0, (TIMED, 0, 1)),
        ("progress", 0, (TIMED, 1, 1)),
        ("result", 0, {"runs": 1}),
        ("done", 1, None),
    )
    assert _supervise([_Exited(0), _Exited(0)], results, Roles(2, colocated=True)) == {"runs": 1}
