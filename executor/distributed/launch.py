"""Launch the multi-process SPD without torchrun: one spawned process per rank on 127.0.0.1 and a free port.

NCCL with one GPU per rank when enough GPUs are visible, gloo on the CPU otherwise; the same code path. The
parent watches its children: a rank that dies (or reports an error) ends the run with one line naming it, and the
other ranks are stopped. Ranks bound every wait by ``timeout_s``, so a stuck rank is named by its peers. The rank
that decodes the prompts can also report its progress between prompts (``rank_progress``); the parent hands it to
a ``PromptProgress`` callback (the CLI's bar).
"""

from __future__ import annotations

import faulthandler
import os
import queue
import signal
import socket
import time
import traceback
from dataclasses import asdict, dataclass
from datetime import timedelta
from typing import Any, NoReturn

from executor.distributed.comm import DistributedError, Link, Roles
from executor.schedules.base import TIMED, WARMUP, PromptProgress, decode_each, warms_up, warmup_prompts
from executor.schedules.common import DecodeOptions, RunResult, as_prompts
from spdsim.contract import VERIFY_PLACEMENTS, SpdsimError

BACKENDS = ("auto", "nccl", "gloo")
FAULTS = ("kill", "stall")


@dataclass(frozen=True)
class ModelSource:
    """How every rank builds the same model: a model spec (``random:<preset>``, ``smollm2-135m``, a path), or
    ``config:<qwen3|llama>`` with ``hf_config`` fields for tiny test models; the same seed gives the same weights."""

    spec: str
    dtype: str = "float32"
    seed: int = 0
    max_seq_len: int = 4096
    hf_config: tuple[tuple[str, Any], ...] = ()
    compile_layers: bool = True  # on a GPU, every rank compiles its layers as the single-GPU paths do

    def build(self, device):
        import torch

        model = self._build(device)
        if self.compile_layers and torch.device(device).type == "cuda":
            model.compile_layers()
        return model

    def _build(self, device):
        import torch

        if not self.spec.startswith("config:"):
            from executor.models import load_fast_model

            model, loaded = load_fast_model(
                self.spec, device=device, dtype=self.dtype, seed=self.seed, max_seq_len=self.max_seq_len
            )
            del loaded
            return model
        from transformers import LlamaConfig, LlamaForCausalLM, Qwen3Config, Qwen3ForCausalLM

        from executor.fastmodel import FastModel
        from executor.models import _torch_dtype

        family = self.spec.split(":", 1)[1]
        config_cls, model_cls = (
            (Qwen3Config, Qwen3ForCausalLM) if family == "qwen3" else (LlamaConfig, LlamaForCausalLM)
        )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            hf = model_cls(config_cls(**dict(self.hf_config))).eval()
        return FastModel.from_hf(
            hf, device=device, dtype=_torch_dtype(self.dtype), max_seq_len=self.max_seq_len
        )


@dataclass(frozen=True)
class DistributedConfig:
    """Pipeline shape, placement and robustness knobs of one distributed run."""

    num_stages: int = 2
    stage_layers: tuple[int, ...] | None = None
    colocated: bool = True  # drafter + verification on stage 0's rank (n ranks); else its own rank (n+1)
    backend: str = "auto"
    timeout_s: float = 60.0  # any one wait inside a run
    idle_timeout_s: float = 900.0  # stages waiting for the next prompt (controller loading, AR baseline, ...)
    spec_layers: int = 1
    aggr_feature_bound: str = "auto"
    head: str | None = None  # v11 checkpoint; None: an untrained drafter seeded from the job's seed
    use_graphs: bool = True  # CUDA graphs for stage steps (GPU only)
    with_ar: bool = False  # also decode the prompts with AR on the controller's device (same session)
    # untimed warm-up decodes (`base.warmup_prompts`) before each timed loop, as the single-process schedules;
    # None: on when the ranks run on CUDA (compiles and graph captures stay out of the timed prompts)
    warmup: bool | None = None
    fault: tuple[str, int, int] | None = None  # ("kill" | "stall", rank, cycle): fault injection for tests
    # Greedy verification (final norm + lm_head + argmax + compare) on the last stage's rank ("last-stage": only the
    # int64 (accepted, target, drafted) travels back) or on the controller ("controller": the [1, 1, H] hidden
    # state travels back). Sampling (T > 0) verifies on the controller, which holds the draft's q.
    verify_on: str = "last-stage"

    @property
    def roles(self) -> Roles:
        stages = len(self.stage_layers) if self.stage_layers else self.num_stages
        return Roles(stages, self.colocated)


@dataclass(frozen=True)
class DistributedRun:
    ar: RunResult | None
    spd: tuple[RunResult, ...]
    world_size: int
    backend: str
    # The controller's host syncs (device-to-host reads) per cycle: per timed prompt of every job in order, one
    # (cycle state, count) per cycle (steady state: none in fill/refill cycles, the verify's one when saturated).
    cycle_syncs: tuple[tuple[tuple[str, int], ...], ...] = ()


def pick_backend(requested: str, world_size: int) -> str:
    import torch

    if requested not in BACKENDS:
        raise SpdsimError(f"backend: unknown '{requested}' (allowed: {', '.join(BACKENDS)})")
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if requested == "nccl" and gpus < world_size:
        raise SpdsimError(f"backend nccl: {world_size} ranks need {world_size} GPUs, {gpus} visible")
    if requested == "auto":
        return "nccl" if gpus >= world_size else "gloo"
    return requested


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_distributed(
    source: ModelSource,
    prompts,
    config: DistributedConfig,
    jobs: list[DecodeOptions],
    progress: PromptProgress | None = None,
) -> DistributedRun:
    """Decode ``prompts`` once per job (e.g. one per synthetic α) on a freshly launched process group.
    ``progress`` hears the controller's prompts (`base.decode_each`; every job's, and the AR baseline's, in one
    TIMED count), between prompts only; None: the ranks send no reports."""
    roles = config.roles
    if roles.num_stages < 2:
        raise SpdsimError(f"stages: the distributed pipeline needs n >= 2, got {roles.num_stages}")
    if config.verify_on not in VERIFY_PLACEMENTS:
        raise SpdsimError(
            f"verify_on: unknown '{config.verify_on}' (allowed: {', '.join(VERIFY_PLACEMENTS)})"
        )
    if config.fault is not None and config.fault[0] not in FAULTS:
        raise SpdsimError(f"fault: unknown '{config.fault[0]}' (allowed: {', '.join(FAULTS)})")
    for job in jobs:
        job.validate()
    prompt_list = as_prompts(prompts)
    backend = pick_backend(config.backend, roles.world_size)
    args = (backend, source, prompt_list, config, list(jobs), progress is not None)
    payload = launch_ranks(_rank_main, roles, args, progress)
    return DistributedRun(
        payload["ar"], tuple(payload["spd"]), roles.world_size, backend, payload["cycle_syncs"]
    )


def launch_ranks(target, roles, args: tuple, progress: PromptProgress | None = None):
    """Spawn ``roles.world_size`` processes running ``target(rank, port, *args, results)`` and supervise them;
    returns the payload one rank reports as "result". ``roles`` only needs ``world_size`` and ``name(rank)``;
    ``progress`` hears the "progress" reports (`rank_progress`)."""
    import torch.multiprocessing as mp

    port = free_port()
    context = mp.get_context("spawn")
    results = context.Queue()
    processes = []
    for rank in range(roles.world_size):
        process = context.Process(target=target, args=(rank, port, *args, results), daemon=True)
        process.start()
        processes.append(process)
    try:
        return _supervise(processes, results, roles, progress=progress)
    finally:
        for process in processes:
            if process.is_alive():
                os.kill(process.pid, signal.SIGKILL)
            process.join(timeout=5)


def _supervise(
    processes,
    results,
    roles: Roles,
    grace_s: float = 0.5,
    exit_s: float = 10.0,
    progress: PromptProgress | None = None,
) -> dict:
    """Wait for the controller's payload; the first death or error ends the run with one line. A rank that dies
    after it reported its part ("result" or "done") crashed tearing down (gloo's destructors can abort: "terminate
    called without an active exception", seen once in a CPU test run): its work is complete, so once every rank
    has reported and exited, the payload stands. A "progress" report goes to ``progress`` and finishes nothing:
    a rank that dies after one is still a failure."""
    payload = None
    errors: list[str] = []
    deaths: dict[int, str] = {}
    finished: set[int] = set()
    first_failure = reported = None
    while True:
        try:
            kind, rank, body = results.get(timeout=0.05)
            if kind in ("result", "done"):
                finished.add(rank)
                payload = body if kind == "result" else payload
            elif kind == "progress":
                if progress is not None:
                    progress(*body)
            elif kind == "error":
                errors.append(body)
                first_failure = first_failure or time.monotonic()
        except queue.Empty:
            pass
        for rank, process in enumerate(processes):
            code = process.exitcode
            if code not in (None, 0) and rank not in deaths:
                how = f"signal {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"
                deaths[rank] = f"{roles.name(rank)} died ({how})"
                first_failure = first_failure or time.monotonic()
        if len(finished) == len(processes) and payload is not None and not errors:
            reported = reported or time.monotonic()
            # every part is in: a rank still tearing down after exit_s is killed by the caller, not waited for
            if all(p.exitcode is not None for p in processes) or time.monotonic() - reported > exit_s:
                return payload
        # (the grace lets a dead rank's last messages, read 0.05 s at a time, arrive before the verdict)
        if first_failure is not None and time.monotonic() - first_failure > grace_s:
            failed = [text for rank, text in deaths.items() if rank not in finished] or list(deaths.values())
            killed = [d for d in failed if "signal" in d]
            raise DistributedError((killed or errors or failed)[0])


def _rank_main(rank, port, backend, source, prompts, config, jobs, report, results) -> None:
    """Entry point of one rank (a spawned process); ``report``: the controller sends its progress."""
    import torch.distributed as dist

    roles = config.roles
    stacks_after_s = float(os.environ.get("SPDSIM_DIST_STACKS_AFTER_S", "0"))
    if stacks_after_s > 0:  # diagnosis of a hang: every rank prints its Python stacks after this long
        faulthandler.dump_traceback_later(stacks_after_s, exit=False)
    try:
        device = init_rank(
            rank, port, backend, roles.world_size, max(config.idle_timeout_s, config.timeout_s) + 60
        )
        link = Link(
            rank,
            roles,
            device,
            config.timeout_s,
            config.idle_timeout_s,
            on_stall=lambda message: _fail(results, rank, message),  # GPU: the watchdog thread's report
        )
        progress = rank_progress(results, rank) if report else None
        payload = _serve(rank, roles, link, source, prompts, config, jobs, device, progress)
        results.put(("result" if payload is not None else "done", rank, payload))
        dist.destroy_process_group()
    except Exception as exc:
        fail_rank(results, rank, roles.name(rank), exc)


def init_rank(rank: int, port: int, backend: str, world_size: int, group_timeout_s: float):
    """Join the process group (one GPU per rank with NCCL, one CPU thread with gloo); returns the device."""
    import torch
    import torch.distributed as dist

    os.environ.setdefault("NCCL_NVLS_ENABLE", "0")
    os.environ.setdefault("TORCH_SYMM_MEM_DISABLE_MULTICAST", "1")
    # NCCL connects peers lazily, inside the first group call that uses a pair; with three or more ranks whose
    # first p2p groups differ, each rank blocked in ncclGroupEnd waits for a peer that is blocked in another
    # group (seen: SPD n = 4 on 4 H200s hung in the first prefill). Connect everything at init instead.
    os.environ.setdefault("NCCL_RUNTIME_CONNECT", "0")
    if backend == "nccl":
        device = torch.device("cuda", rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
        torch.set_num_threads(1)
    dist.init_process_group(
        backend,
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world_size,
        timeout=timedelta(seconds=group_timeout_s),
        device_id=device if backend == "nccl" else None,  # eager NCCL init: one communicator for all ops
    )
    dist.barrier()  # every rank is up (and NCCL's first call is a collective all ranks join)
    if backend == "nccl" and world_size > 2:
        connect_all_pairs(rank, world_size, device)
    return device


def connect_all_pairs(rank: int, world_size: int, device) -> None:
    """One group in which every rank sends to and receives from every other: all p2p connections exist
    before the pipeline's first, asymmetric groups (belt and braces for NCCL_RUNTIME_CONNECT)."""
    import torch
    import torch.distributed as dist

    peers = [peer for peer in range(world_size) if peer != rank]
    outgoing = torch.zeros(len(peers), dtype=torch.int64, device=device)
    incoming = torch.empty_like(outgoing)
    ops = [dist.P2POp(dist.isend, outgoing[i : i + 1], peer) for i, peer in enumerate(peers)]
    ops += [dist.P2POp(dist.irecv, incoming[i : i + 1], peer) for i, peer in enumerate(peers)]
    for work in dist.batch_isend_irecv(ops):
        work.wait()
    torch.cuda.synchronize(device)


def rank_progress(results, rank: int) -> PromptProgress:
    """A rank's `PromptProgress`: each report goes to the launcher as ("progress", rank, (phase, done, total)).
    The put only queues it (the queue's feeder thread sends the few bytes), and the schedules report between
    prompts, off the clock."""

    def report(phase: str, done: int, total: int) -> None:
        results.put(("progress", rank, (phase, done, total)))

    return report


def counted(progress: PromptProgress | None, before: int, total: int) -> PromptProgress | None:
    """``progress`` for one of several timed prompt loops reported as one count: ``before`` of the ``total``
    timed prompts came in earlier loops. Warm-up reports pass unchanged (each loop warms up on its own)."""
    if progress is None:
        return None
    sink: PromptProgress = progress

    def report(phase: str, done: int, count: int) -> None:
        if phase == TIMED:
            sink(phase, before + done, total)
        else:
            sink(phase, done, count)

    return report


def fail_rank(results, rank: int, name: str, exc: Exception) -> None:
    """End a rank on an exception with one line: a `DistributedError` as it is (it names the peer that failed),
    anything else naming this rank (``name``), its traceback on stderr."""
    if isinstance(exc, DistributedError):
        _fail(results, rank, str(exc))
    traceback.print_exc()
    message = " ".join(f"{type(exc).__name__}: {exc}".split())[:300]
    _fail(results, rank, f"{name} failed: {message}")


def _fail(results, rank: int, message: str) -> NoReturn:
    """Report and leave at once (a broken process group can hang in its destructors)."""
    results.put(("error", rank, message))
    results.close()
    results.join_thread()
    os._exit(1)


def _serve(rank, roles, link, source, prompts, config, jobs, device, progress=None):
    import torch

    from executor.distributed.controller import Controller, run_cache_length
    from executor.distributed.worker import StageRunner, stage_anchors, worker_loop
    from executor.stages import split_layers

    with torch.inference_mode():
        model = source.build(device)
        split = split_layers(model.num_layers, roles.num_stages, config.stage_layers)
        seed = jobs[0].seed if jobs else 0
        anchors = _anchor_indices(model, split, config, seed)
        stage = roles.stage_of_rank(rank)
        runner = None
        if stage is not None:
            runner = StageRunner(
                model, split, stage, stage_anchors(anchors, split, stage), link, config.use_graphs
            )
        if rank != roles.controller:
            worker_loop(runner, config.fault if config.fault and config.fault[1] == rank else None)
            return None
        drafter = build_drafter(model, split, config, seed)
        controller = Controller(model, drafter, split, link, runner, config.use_graphs, config.verify_on)
        ar = None
        total = (len(jobs) + int(config.with_ar)) * len(prompts)  # every prompt loop in one TIMED count
        warmup = warms_up(config.warmup, device)
        if config.with_ar:
            from executor.schedules.dispatch import run_ar

            base = dict(asdict(jobs[0]), synthetic_alpha=None)
            options = DecodeOptions(**base)
            ar = run_ar(
                model,
                prompts,
                options,
                use_graphs=config.use_graphs,
                warmup=warmup,
                progress=counted(progress, 0, total),
            )
        # the fill and the first saturated cycle reach n positions past the first decode position (`run_spd`)
        warm = warmup_prompts(prompts, lookahead=split.num_stages) if warmup else ()
        runs, timed_syncs = [], []
        for job in jobs:
            cache_len = run_cache_length(model, prompts, job, split.num_stages)

            def decode(prompt, index, job=job, cache_len=cache_len):
                return controller.run_prompt(prompt, index, job, cache_len)

            before = (int(config.with_ar) + len(runs)) * len(prompts)
            decode_each(warm, lambda prompt, _, decode=decode: decode(prompt, 0), WARMUP, progress)
            first_timed = len(controller.cycle_syncs)
            prompt_runs = decode_each(prompts, decode, TIMED, counted(progress, before, total))
            timed_syncs.extend(controller.cycle_syncs[first_timed:])
            run_config = {**_run_config(split, drafter, config, job, roles), "warmup_prompts": len(warm)}
            runs.append(RunResult("spd", run_config, prompt_runs, str(device)))
        controller.shutdown()
        return {"ar": ar, "spd": runs, "cycle_syncs": tuple(timed_syncs)}


def _anchor_indices(model, split, config, seed) -> tuple[int, ...]:
    return build_drafter(model, split, config, seed, meta=True)


def build_drafter(model, split, config: DistributedConfig, seed: int, meta: bool = False):
    """The v11 drafter the run uses (loaded, or untrained and seeded); ``meta``: only its anchor indices."""
    import torch

    from executor.heads.checkpoint import load_spd_checkpoint
    from executor.heads.layers import base_config_of
    from executor.heads.spd_v11 import SpdHeadConfig, SpeculationModuleV11

    base = base_config_of(model)
    if config.head is not None:
        drafter = load_spd_checkpoint(config.head, base, final_norm_weight=model.norm.detach().cpu())
        if meta:
            return drafter.anchor_indices
    else:
        head = SpdHeadConfig.build(
            base,
            num_stages=split.num_stages,
            num_spec_layers=int(config.spec_layers),
            aggr_feature_bound=config.aggr_feature_bound,
            stage_layers=split.layer_counts,
        )
        if meta:
            return head.aggr_feature_bound
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            drafter = SpeculationModuleV11(base, head)
        lm_head = model.lm_head_matrix
        drafter.attach_base(model.norm.detach().cpu().float(), lm_head.detach().cpu().float())
    from executor.schedules.spd import check_drafter

    drafter = drafter.to(device=model.device, dtype=model.dtype).eval()
    check_drafter(model, drafter, split)
    return drafter


def _run_config(split, drafter, config: DistributedConfig, job: DecodeOptions, roles: Roles) -> dict:
    head = drafter.head_config
    return {
        "method": "spd",
        "stages": split.num_stages,
        "stage_layers": list(split.layer_counts),
        "spec_layers": head.num_spec_layers,
        "aggr_feature_bound": list(head.aggr_feature_bound),
        "distributed": True,
        "drafter": "colocated" if config.colocated else "own",
        "world_size": roles.world_size,
        "verify_on": config.verify_on if job.temperature == 0 else "controller",
        **asdict(job),
    }
