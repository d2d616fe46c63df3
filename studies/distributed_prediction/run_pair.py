"""Issue 18 in one call on two GPUs: bandwidth, SPD n = 2 at synthetic α, SmolLM2's lossless check, prediction
against measurement; every step under one deadline, each in its own process, skipped with a reason when the
deadline, the machine or an earlier step does not allow it.

Order (``plan``): p2p between the GPUs; then side by side compiled AR of every model on GPU 0 and SmolLM2's SPD
head training on GPU 1; then SPD n = 2 (drafter co-located) of the first model at every α, SmolLM2 SPD against
AR, SPD of the other models; last the comparison table (``pair_compare.py``). Results: run directories
(``executor.rundir``), p2p.json, ar_<model>.json, lossless.json, steps.json, comparison.{md,json}, logs/.

GPU (the device call: ``run_pair.sh``): ``python studies/distributed_prediction/run_pair.py --out DIR``.
CPU dry run (gloo, 2 ranks, tiny random model, few tokens): ``python ... run_pair.py --tiny --out DIR``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tarfile
import threading
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
for _folder in (str(ROOT), str(HERE)):
    if _folder not in sys.path:
        sys.path.insert(0, _folder)

from pair_steps import (  # noqa: E402
    ALPHAS,
    MODEL_SPECS,
    SAY,
    Settings,
    describe,
    outcome,
    own_gpu_drafter,
    run_step,
    smol_checkpoint,
    smollm2_on_machine,
)

MARKER = "pair_run.json"  # a folder with it was made by this script (--resume may go on in it)
RESERVE_S = 15.0  # kept back from the deadline for the comparison and the last pack
NOT_PACKED = (".pt", ".gguf", ".safetensors")


class UsageError(Exception):
    """A user mistake: one line, exit code 2."""


@dataclass(frozen=True)
class Step:
    name: str
    lane: str  # "pair": both GPUs; "gpu0" / "gpu1": one of them
    cap_s: float  # the longest it may run
    need_s: float  # not started with less time left


@dataclass(frozen=True)
class Clock:
    start: float
    total_s: float

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def left(self) -> float:
        return self.total_s - self.elapsed()


@dataclass(frozen=True)
class Logger:
    """Per-step log lines with the elapsed time, on stdout and in logs/run_pair.log."""

    clock: Clock
    path: Path

    def __call__(self, message: str) -> None:
        line = f"[{self.clock.elapsed():6.1f} s] {message}\n"
        sys.stdout.write(line)  # one write: the two lanes' threads never split a line
        sys.stdout.flush()
        with self.path.open("a") as handle:
            handle.write(line)


def plan(settings: Settings) -> tuple[list[Step], list[Step], list[Step], list[Step]]:
    """(first, GPU-0 lane, GPU-1 lane, last): the two lanes run side by side. Caps and needs: seconds on a pair
    of H100s with cold compile caches, from the single-GPU sessions (studies/fidelity_1gpu, executor_speed)."""
    tiny = settings.tiny

    def step(name: str, lane: str, cap: float, need: float) -> Step:
        return Step(name, lane, 120.0 if tiny else cap, 1.0 if tiny else need)

    first, *rest = settings.models
    head_cap = settings.smol_train_minutes * 60 + 120
    return (
        [step("p2p", "pair", 60, 20)],
        [step(f"ar-{tag}", "gpu0", 150, 55) for tag in settings.models],
        [step("smol-head", "gpu1", head_cap, 90)],
        [step(f"spd-{first}", "pair", 210, 85), step("smol-spd", "pair", 120, 45)]
        + [step(f"spd-{tag}", "pair", 180, 80) for tag in rest],
    )


def settings_argv(settings: Settings) -> list[str]:
    """The command-line options that rebuild ``settings`` in a step's process."""
    argv = ["--out", str(settings.out), "--models", ",".join(settings.models)]
    argv += ["--alphas", ",".join(str(a) for a in settings.alphas), "--prompts", str(settings.prompts)]
    argv += ["--new-tokens", str(settings.new_tokens), "--timeout-s", str(settings.timeout_s)]
    argv += ["--smol-train-minutes", str(settings.smol_train_minutes)]
    argv += ["--tiny"] if settings.tiny else []
    argv += ["--smol-head", str(settings.smol_head)] if settings.smol_head else []
    return argv


def run_child(settings: Settings, step: Step, clock: Clock, log: Logger) -> dict:
    """Run one step in its own process under min(cap, deadline); its ``SAY`` lines are echoed live."""
    left = clock.left() - RESERVE_S
    if left < step.need_s:
        reason = f"not reached: needs ~{step.need_s:.0f} s, {max(left, 0):.0f} s left"
        return outcome(step.name, "skipped", 0.0, reason)
    limit = min(step.cap_s, left)
    log(f"{step.name}: start ({step.lane}, limit {limit:.0f} s)")
    started = time.monotonic()
    log_path = settings.out / "logs" / f"{step.name}.log"
    command = [sys.executable, str(Path(__file__).resolve()), *settings_argv(settings), "--step", step.name]
    code = watch(command, step_env(settings, step), log_path, limit, lambda line: log(f"{step.name}: {line}"))
    seconds = time.monotonic() - started
    if code == 0:
        return outcome(step.name, "done", seconds)
    if code is None:
        return outcome(step.name, "timeout", seconds, f"stopped at its limit of {limit:.0f} s")
    return outcome(step.name, "failed", seconds, f"exit {code}: {last_error(log_path)}")


def step_env(settings: Settings, step: Step) -> dict[str, str]:
    """A one-GPU lane sees only its GPU; the training lane stays light on the host that the AR lane times."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if not settings.tiny and step.lane != "pair":
        env["CUDA_VISIBLE_DEVICES"] = step.lane[-1]
    if step.lane == "gpu1":
        env.update(OMP_NUM_THREADS="8", TOKENIZERS_PARALLELISM="false")
    return env


def watch(command: list[str], env: dict[str, str], log_path: Path, limit: float, say) -> int | None:
    """Run ``command`` in a process group of its own, its output into ``log_path`` and its ``SAY`` lines to
    ``say``; past ``limit`` seconds the group (the step and the ranks it spawned) is killed: None."""
    with log_path.open("w") as sink:
        proc = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
            start_new_session=True,
        )
        pump = threading.Thread(target=echo, args=(proc.stdout, sink, say), daemon=True)
        pump.start()
        try:
            code: int | None = proc.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            code = None
        pump.join(timeout=10)
    return code


def echo(stream, sink, say) -> None:
    for line in stream:
        sink.write(line)
        sink.flush()
        if line.startswith(SAY):
            say(line[len(SAY) :].rstrip())


def last_error(log_path: Path) -> str:
    """The line of a failed step's log that says why (an exception's, else the last one)."""
    lines = [line.strip() for line in log_path.read_text(errors="replace").splitlines() if line.strip()]
    errors = [line for line in lines if "Error" in line or "error:" in line]
    return ((errors or lines or ["no output"])[-1])[:240]


def run_lane(
    settings: Settings, steps: list[Step], clock: Clock, log: Logger, done: dict, records: list
) -> None:
    for step in steps:
        record = done.get(step.name) or lane_skip(settings, step) or run_child(settings, step, clock, log)
        records.append(record)
        log(describe(record))


def lane_skip(settings: Settings, step: Step) -> dict | None:
    """A step that cannot run on this machine, with the reason (None: it can)."""
    if step.name == "smol-head" and settings.smol_head is not None:
        return outcome(step.name, "skipped", 0.0, f"not needed: --smol-head {settings.smol_head}")
    if step.name.startswith("smol") and not settings.tiny and smollm2_on_machine() is None:
        return outcome(
            step.name, "skipped", 0.0, "SmolLM2-135M GGUF not on this machine (README: the stash call)"
        )
    if step.name == "smol-spd" and smol_checkpoint(settings) is None:
        return outcome(step.name, "skipped", 0.0, "no trained SmolLM2 head (smol-head did not finish)")
    return None


def orchestrate(
    settings: Settings, deadline_s: float, pack: Path | None, predictions: Path | None, resume: bool
) -> int:
    clock = Clock(time.monotonic(), deadline_s)
    settings, done = prepare_out(settings, resume)
    log = Logger(clock, settings.out / "logs" / "run_pair.log")
    kind = "tiny dry run (CPU, gloo)" if settings.tiny else "two GPUs"
    log(f"run_pair: {kind}, deadline {deadline_s:.0f} s, out {settings.out}")
    first, lane0, lane1, last = plan(settings)
    records: list[dict] = [outcome("spd-own-gpu", "skipped", 0.0, own_gpu_drafter() or "")]
    log(describe(records[0]))

    def save() -> None:
        (settings.out / "steps.json").write_text(json.dumps(records, indent=1) + "\n")
        if pack is not None:
            pack_results(settings.out, pack)

    run_lane(settings, first, clock, log, done, records)
    save()
    side: list[dict] = []
    lane = threading.Thread(target=run_lane, args=(settings, lane1, clock, log, done, side))
    lane.start()
    run_lane(settings, lane0, clock, log, done, records)
    lane.join()
    records.extend(side)
    save()
    for step in last:
        run_lane(settings, [step], clock, log, done, records)
        save()
    from pair_compare import write_comparison

    table = write_comparison(settings.out, records, settings.models, settings.alphas, predictions)
    save()
    log(f"comparison: {table}")
    print(table.read_text(), flush=True)
    return 0


def prepare_out(settings: Settings, resume: bool) -> tuple[Settings, dict[str, dict]]:
    """Make ``out`` (refusing a non-empty folder this script did not make). ``resume`` goes on in a folder it
    made, with the settings the folder was made with; the steps done there are kept and not run again."""
    out = settings.out
    if out.exists() and any(out.iterdir()):
        if not resume:
            raise UsageError(
                f"--out {out} exists and is not empty (a new folder, or --resume a run_pair.py folder)"
            )
        if not (out / MARKER).is_file():
            raise UsageError(f"--resume: {out} was not made by run_pair.py (no {MARKER})")
        previous = json.loads((out / "steps.json").read_text()) if (out / "steps.json").is_file() else []
        return stored_settings(out), {r["step"]: r for r in previous if r["status"] == "done"}
    (out / "logs").mkdir(parents=True, exist_ok=True)
    stamp = {"settings": asdict(settings), "started": datetime.now(UTC).isoformat(timespec="seconds")}
    (out / MARKER).write_text(json.dumps(stamp, indent=1, default=str) + "\n")
    return settings, {}


def stored_settings(out: Path) -> Settings:
    """The settings a run_pair.py folder was made with (its marker file)."""
    fields = json.loads((out / MARKER).read_text())["settings"]
    head = fields.pop("smol_head")
    return Settings(
        **{k: tuple(v) if isinstance(v, list) else v for k, v in fields.items() if k != "out"},
        out=out,
        smol_head=Path(head) if head else None,
    )


def pack_results(out: Path, target: Path) -> None:
    """``out`` as a .tgz (no weights), written aside and renamed: a cut call still returns the last whole one."""
    partial = target.with_name(target.name + ".part")
    with tarfile.open(partial, "w:gz") as tar:
        tar.add(out, arcname="results", filter=lambda info: None if info.name.endswith(NOT_PACKED) else info)
    partial.replace(target)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True, help="a new (or empty) folder for every result")
    p.add_argument("--tiny", action="store_true", help="CPU dry run: gloo, 2 ranks, tiny random model")
    p.add_argument("--deadline-s", type=float, default=540.0, help="wall-clock budget of the whole run")
    p.add_argument("--models", default=",".join(MODEL_SPECS), help="the first one's SPD runs first")
    p.add_argument("--alphas", default=",".join(map(str, ALPHAS)), help="synthetic acceptance rates")
    p.add_argument("--prompts", type=int, default=4, help="timed prompts per run (after the warm-up)")
    p.add_argument("--new-tokens", type=int, default=None, help="per prompt (default 256; --tiny: 8)")
    p.add_argument("--timeout-s", type=float, default=240.0, help="any one wait inside a distributed run")
    p.add_argument("--smol-head", type=Path, default=None, help="a trained SmolLM2 SPD head (skips training)")
    p.add_argument("--smol-train-minutes", type=float, default=1.25, help="SmolLM2 head training budget")
    p.add_argument("--predictions", type=Path, default=None, help="prediction file (default: by GPU name)")
    p.add_argument(
        "--pack", type=Path, default=None, help="also write the results as this .tgz after each step"
    )
    p.add_argument(
        "--resume", action="store_true", help="go on in a run_pair.py folder, keeping finished steps"
    )
    p.add_argument("--step", default=None, help=argparse.SUPPRESS)  # internal: run one step in this process
    return p


def settings_from(args: argparse.Namespace) -> Settings:
    """Validated settings (``UsageError`` on a user mistake)."""
    models = tuple(m.strip() for m in args.models.split(",") if m.strip())
    unknown = [m for m in models if m not in MODEL_SPECS]
    if not models or unknown:
        raise UsageError(f"--models: unknown {unknown or 'none'} (allowed: {', '.join(MODEL_SPECS)})")
    try:
        alphas = tuple(float(a) for a in args.alphas.split(",") if a.strip())
    except ValueError:
        raise UsageError(f"--alphas: expected comma-separated numbers, got '{args.alphas}'") from None
    if not alphas or not all(0.0 <= a <= 1.0 for a in alphas):
        raise UsageError(f"--alphas: every α must lie in [0, 1], got '{args.alphas}'")
    if args.prompts < 1 or (args.new_tokens is not None and args.new_tokens < 1) or args.deadline_s <= 0:
        raise UsageError("--prompts, --new-tokens and --deadline-s must be positive")
    if args.smol_head is not None and not args.smol_head.is_file():
        raise UsageError(f"--smol-head: no such file '{args.smol_head}'")
    if args.predictions is not None and not args.predictions.is_file():
        raise UsageError(f"--predictions: no such file '{args.predictions}'")
    new_tokens = args.new_tokens or (8 if args.tiny else 256)
    return Settings(
        out=args.out.resolve(),
        tiny=args.tiny,
        models=models,
        alphas=alphas,
        prompts=args.prompts,
        new_tokens=new_tokens,
        smol_head=args.smol_head.resolve() if args.smol_head else None,
        smol_train_minutes=args.smol_train_minutes,
        timeout_s=args.timeout_s,
    )


def check_machine(settings: Settings, pack: Path | None) -> None:
    if pack is not None and pack.resolve().is_relative_to(settings.out):
        raise UsageError(f"--pack {pack} lies inside --out: it would pack itself")
    if settings.tiny:
        return
    import torch

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if gpus < 2:
        raise UsageError(f"the pair run needs 2 GPUs, {gpus} visible (--tiny is the CPU dry run)")


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        settings = settings_from(args)
        if args.step is not None:
            if not (settings.out / MARKER).is_file():
                raise UsageError(f"--step: {settings.out} is not a run_pair.py folder")
            run_step(settings, args.step)
            return 0
        check_machine(settings, args.pack)
        return orchestrate(settings, args.deadline_s, args.pack, args.predictions, args.resume)
    except UsageError as exc:
        print(f"run_pair.py: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
