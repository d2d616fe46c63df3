"""What every schedule shares: decode options, lossless verification (F0), synthetic acceptance, phase timers,
and the per-prompt / per-run result objects.
"""

from __future__ import annotations

import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field

import numpy as np
import torch

from executor.sampling import check_warp, speculative_accept, warp_probs
from spdsim.contract import SpdsimError, realised_acceptance


@dataclass(frozen=True)
class DecodeOptions:
    """Per-run decoding knobs. `synthetic_alpha`: replace each draft by the target's own greedy token with this
    probability (else by a token that differs from it), for timing runs with random weights (T = 0 only)."""

    max_new_tokens: int = 32
    temperature: float = 0.0
    seed: int = 0
    synthetic_alpha: float | None = None
    stop_token_ids: tuple[int, ...] = ()
    kv_margin: int = 64
    top_k: int = 0  # T > 0: top-k / top-p warping of target, draft and first token (off by default; the SPD
    top_p: float = 1.0  # authors use 50 / 0.95: executor.sampling.AUTHORS_TOP_K / AUTHORS_TOP_P)

    def validate(self) -> None:
        if self.max_new_tokens < 1:
            raise SpdsimError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        check_warp(self.temperature, self.top_k, self.top_p)
        if self.synthetic_alpha is not None:
            if not 0.0 <= self.synthetic_alpha <= 1.0:
                raise SpdsimError(f"synthetic_alpha must lie in [0, 1], got {self.synthetic_alpha}")
            if self.temperature > 0:
                raise SpdsimError(
                    "synthetic acceptance needs temperature 0 (it replays the target's greedy tokens)"
                )

    def prompt_seed(self, prompt_index: int) -> int:
        return self.seed + prompt_index * 1_000_003


@dataclass(frozen=True)
class CycleTiming:
    """One decode-loop iteration: SPD state ("fill", "refill", "saturated") or "chain"; phase -> microseconds."""

    index: int
    state: str
    tokens: int
    phases_us: dict[str, float]


@dataclass(frozen=True)
class PromptRun:
    prompt_id: str
    prompt_tokens: int
    tokens: tuple[int, ...]  # generated tokens, the prefill token first
    token_times_us: tuple[float, ...]  # commit time of each token since the prompt's prefill started
    token_cycles: tuple[int, ...]  # decode-loop iteration that committed the token (-1: prefill)
    token_from_draft: tuple[bool, ...]  # an accepted draft (True) or the target's own token
    cycles: tuple[CycleTiming, ...]
    trace: tuple[dict, ...]
    verifications: int
    accepted: int
    reanchors: int = 0  # synthetic acceptance: reference rebuilds after a committed token left it
    # Every measured phase interval (cycle, phase, start_us, dur_us), earliest first; start_us counts from the
    # prompt's earliest recorded phase start, on the timing clock (`PhaseTimer.spans`; AR: its steps). Phases
    # merged into `cycles` afterwards (the distributed controller's host and remote-stage times) have none.
    phase_spans: tuple[tuple[int, str, float, float], ...] = ()

    @property
    def decode_steps(self) -> int:
        return len(self.cycles)


@dataclass(frozen=True)
class RunResult:
    method: str
    config: dict
    prompts: tuple[PromptRun, ...]
    device: str

    @property
    def decode_tokens(self) -> int:
        """Tokens produced by decode loops (the prefill token of each prompt excluded)."""
        return sum(len(p.tokens) - 1 for p in self.prompts)

    @property
    def tokens_per_cycle(self) -> float:
        """ρ: decode tokens per decode-loop iteration (SPD cycle, chain iteration, AR step)."""
        steps = sum(p.decode_steps for p in self.prompts)
        return self.decode_tokens / steps if steps else float("nan")

    @property
    def acceptance_length(self) -> float:
        """Tokens per verification, bonus included (vLLM); SPD: one per verification, so see equivalent_length."""
        verifications = sum(p.verifications for p in self.prompts)
        return self.decode_tokens / verifications if verifications else float("nan")

    @property
    def acceptance_rate(self) -> float:
        drafted = sum(len(p.trace) for p in self.prompts)
        return sum(p.accepted for p in self.prompts) / drafted if drafted else float("nan")

    @property
    def decode_seconds(self) -> float:
        return sum((p.token_times_us[-1] - p.token_times_us[0]) / 1e6 for p in self.prompts)

    def summary(self) -> dict:
        width = self.config.get("stages") or self.config.get("k") or 1
        seconds = self.decode_seconds
        summary = {
            "method": self.method,
            "device": self.device,
            "prompts": len(self.prompts),
            "decode_tokens": self.decode_tokens,
            "decode_seconds": seconds,
            "tokens_per_s": self.decode_tokens / seconds if seconds > 0 else None,
            "tpot_ms": 1e3 * seconds / self.decode_tokens if self.decode_tokens else None,
            "tokens_per_cycle": self.tokens_per_cycle,
            "acceptance_rate": self.acceptance_rate,
            "mean_acceptance_length": self.acceptance_length,
            "verifications": sum(p.verifications for p in self.prompts),
            "accepted": sum(p.accepted for p in self.prompts),
        }
        if self.method == "spd":
            summary["equivalent_acceptance_length"] = width * self.tokens_per_cycle
        summary.update(self.realised())
        summary["phase_median_us"] = self.phase_medians_us()
        return summary

    def realised(self) -> dict:
        """Realised acceptance beside the nominal (synthetic) one, and the synthetic re-anchors."""
        realised = realised_acceptance(row for run in self.prompts for row in run.trace)
        return {
            "nominal_alpha": self.config.get("synthetic_alpha"),
            "realised_alpha": realised["alpha"],
            "realised_checked": realised["checked"],
            "realised_by_state": realised["by_state"],
            "realised_by_position": realised["by_position"],
            "synthetic_reanchors": sum(run.reanchors for run in self.prompts),
        }

    def phase_medians_us(self) -> dict[str, dict[str, float]]:
        """Median time of every phase, per cycle state ("all" pools the states)."""
        samples: dict[str, dict[str, list[float]]] = {}
        for run in self.prompts:
            for cycle in run.cycles:
                for name, value in cycle.phases_us.items():
                    samples.setdefault(name, {}).setdefault(cycle.state, []).append(value)
                    samples[name].setdefault("all", []).append(value)
        return {
            name: {state: float(np.median(values)) for state, values in sorted(by_state.items())}
            for name, by_state in sorted(samples.items())
        }


@dataclass
class PromptRecorder:
    """Mutable accumulator while one prompt decodes; `freeze` gives the immutable PromptRun."""

    prompt_id: str
    prompt_tokens: int
    method: str
    start: float = field(default_factory=time.perf_counter)
    tokens: list[int] = field(default_factory=list)
    times_us: list[float] = field(default_factory=list)
    token_cycles: list[int] = field(default_factory=list)
    token_from_draft: list[bool] = field(default_factory=list)
    cycles: list[tuple[int, str, int]] = field(default_factory=list)
    trace: list[dict] = field(default_factory=list)
    verifications: int = 0
    accepted: int = 0
    reanchors: int = 0

    def pause(self, seconds: float) -> None:
        """Keep `seconds` of work that is not the schedule's (a synthetic re-anchor) off the commit clock."""
        self.start += seconds

    def commit(self, token: int, cycle: int = -1, from_draft: bool = False) -> None:
        self.tokens.append(int(token))
        self.times_us.append((time.perf_counter() - self.start) * 1e6)
        self.token_cycles.append(cycle)
        self.token_from_draft.append(bool(from_draft))

    def log_verification(self, rows: list[tuple[int, int, int, int, int]], state: str, width: int) -> None:
        """rows: (position, draft_index, drafted, target, accepted) for every draft this verification checked."""
        for position, draft_index, drafted, target, accepted in rows:
            self.trace.append(
                {
                    "prompt_id": self.prompt_id,
                    "verify_index": self.verifications,
                    "position": int(position),
                    "method": self.method,
                    "draft_index": int(draft_index),
                    "state": state,
                    "width": int(width),
                    "drafted_token": int(drafted),
                    "target_token": int(target),
                    "accepted": int(accepted),
                }
            )
            self.accepted += int(accepted)
        self.verifications += 1

    def freeze(self, timer: PhaseTimer) -> PromptRun:
        """The immutable run: per-cycle phase sums in ``cycles``, every single interval in ``phase_spans``."""
        spans = timer.spans()
        phases = PhaseTimer.totals(spans)
        cycles = tuple(
            CycleTiming(index, state, tokens, phases.get(index, {})) for index, state, tokens in self.cycles
        )
        return PromptRun(
            self.prompt_id,
            self.prompt_tokens,
            tuple(self.tokens),
            tuple(self.times_us),
            tuple(self.token_cycles),
            tuple(self.token_from_draft),
            cycles,
            tuple(self.trace),
            self.verifications,
            self.accepted,
            self.reanchors,
            spans,
        )


class PhaseTimer:
    """Per-cycle phase intervals: CUDA events recorded on the phase's stream on a GPU (no sync until `spans` or
    `resolve`), perf_counter on the CPU."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self._marks: list[tuple[int, str, object, object]] = []

    @contextmanager
    def phase(self, cycle: int, name: str, stream=None):
        if not self.cuda:
            start = time.perf_counter()
            yield
            self._marks.append((cycle, name, start, time.perf_counter()))
            return
        with torch.cuda.stream(stream) if stream is not None else nullcontext():
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            yield
            end.record()
        self._marks.append((cycle, name, start, end))

    def spans(self) -> tuple[tuple[int, str, float, float], ...]:
        """Every recorded interval as (cycle, phase, start_us, dur_us), ordered by start (then cycle, phase).

        ``start_us`` counts from the earliest recorded start of this timer (one prompt: the schedules make one
        timer per prompt), on the clock that timed the phase: the GPU's (CUDA events, ``elapsed_time`` from a
        reference event, so phases on different streams share the origin) or perf_counter's on the CPU. A phase
        recorded twice in one cycle gives two spans (`totals` sums them)."""
        if not self._marks:
            return ()
        if self.cuda:
            torch.cuda.synchronize()
        reference = self._marks[0][2]
        if self.cuda:
            raw = [
                (c, n, reference.elapsed_time(s) * 1e3, s.elapsed_time(e) * 1e3) for c, n, s, e in self._marks
            ]
        else:
            raw = [(c, n, (s - reference) * 1e6, (e - s) * 1e6) for c, n, s, e in self._marks]
        origin = min(start for _, _, start, _ in raw)
        spans = [(c, n, start - origin, dur) for c, n, start, dur in raw]
        return tuple(sorted(spans, key=lambda span: (span[2], span[0], span[1])))

    @staticmethod
    def totals(spans) -> dict[int, dict[str, float]]:
        """cycle -> phase -> summed duration (µs) of ``spans`` (a phase recorded twice in a cycle is summed)."""
        out: dict[int, dict[str, float]] = {}
        for cycle, name, _, elapsed in spans:
            out.setdefault(cycle, {})[name] = out.get(cycle, {}).get(name, 0.0) + elapsed
        return out

    def resolve(self) -> dict[int, dict[str, float]]:
        """cycle -> phase -> microseconds, summed over the phase's intervals in the cycle."""
        return self.totals(self.spans())


class Verifier:
    """Lossless verification (docs/baselines.md F0) with a per-prompt seeded generator; warping and the
    accept/resample rule live in ``executor.sampling``."""

    def __init__(
        self, temperature: float, seed: int, device: torch.device, top_k: int = 0, top_p: float = 1.0
    ):
        self.temperature = temperature
        self.top_k, self.top_p = top_k, top_p
        self.generator = torch.Generator(device=device).manual_seed(seed)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def probs(self, logits: torch.Tensor) -> torch.Tensor:
        """Sampling distribution of float32 logits [..., V] at this temperature (and top-k / top-p)."""
        return warp_probs(logits, self)

    def sample(self, logits: torch.Tensor) -> tuple[int, torch.Tensor | None]:
        """(token, its distribution q or None when greedy) from logits [V]."""
        if self.greedy:
            return int(logits.argmax()), None
        probs = self.probs(logits)
        return int(torch.multinomial(probs, 1, generator=self.generator)), probs

    def check(
        self, target_logits: torch.Tensor, draft: int, draft_probs: torch.Tensor | None
    ) -> tuple[bool, int]:
        """(accepted, emitted token): the draft, or the target's replacement drawn from norm(max(0, p − q))."""
        if self.greedy:
            target = int(target_logits.argmax())
            return target == draft, target
        return speculative_accept(self.probs(target_logits), draft_probs, draft, self.generator)


class SyntheticDrafts:
    """Draft replacement for synthetic acceptance (timing runs with random weights, T = 0).

    Each position gets one planned draft, drawn once from the prompt's seed: with probability α the target's greedy
    token there (`reference`), else a different token. A position is verified at most once (a checked draft is
    committed either way, an unchecked one is redrafted), so per-position plans realise i.i.d. Bernoulli(α) over
    the verifications. The plan is also a device tensor (`planned_on`), so graph-captured drafters replace their
    drafts without a host round trip.

    The reference is the AR schedule's own greedy continuation. A multi-token verify pass rounds differently from
    AR's one-token steps, so in bf16 a near-tie can commit a token off the reference; `follow` then rebuilds the
    reference from the committed prefix (a re-anchor, counted, its time kept off the run's clock), so realised
    acceptance cannot collapse for the rest of the prompt.
    """

    def __init__(self, alpha: float, prompt: list[int], length: int, vocab_size: int, seed: int, continue_fn):
        rng = np.random.default_rng(seed)
        self.alpha = alpha
        self.prompt = list(prompt)
        self.prompt_len = len(prompt)
        self.length = length
        self.accept = rng.random(length) < alpha
        self.offsets = 1 + rng.integers(vocab_size - 1, size=length)
        self.vocab_size = vocab_size
        self.continue_fn = continue_fn  # (prefix tokens, count) -> the target's greedy continuation
        self.reference: list[int] = list(continue_fn(self.prompt, length))
        self.planned: list[int] = self._plan(self.reference)
        self.reanchors = 0
        self.reanchor_seconds = 0.0
        self._followed = 0
        self._device_plan: torch.Tensor | None = None

    def _plan(self, reference: list[int]) -> list[int]:
        ref = np.asarray(reference, dtype=np.int64)
        wrong = (ref + self.offsets[: len(ref)]) % self.vocab_size
        return np.where(self.accept[: len(ref)], ref, wrong).tolist()

    def replace(self, position: int) -> int:
        """The planned draft at `position` (past the planned length: token 0, never verified)."""
        index = position - self.prompt_len
        return self.planned[index] if 0 <= index < len(self.planned) else 0

    def planned_on(self, device) -> torch.Tensor:
        """The plan as a device tensor indexed by position − prompt length (refreshed after a re-anchor)."""
        if self._device_plan is None or self._device_plan.device != torch.device(device):
            self._device_plan = torch.tensor(self.planned, dtype=torch.long, device=device)
        return self._device_plan

    def follow(self, committed: list[int]) -> float:
        """Check newly committed tokens (generated tokens so far, prefill token first) against the reference and
        re-anchor at the first that left it; returns the seconds spent re-anchoring (to keep off the clock)."""
        spent = 0.0
        index = self._followed
        while index < min(len(committed), len(self.reference)):
            if committed[index] != self.reference[index]:
                started = time.perf_counter()
                prefix = list(committed[: index + 1])
                rest = list(self.continue_fn(self.prompt + prefix, self.length - len(prefix)))
                self.reference = prefix + rest
                self.planned = self._plan(self.reference)
                self._device_plan = None
                self.reanchors += 1
                spent += time.perf_counter() - started
            index += 1
        self._followed = len(committed)
        self.reanchor_seconds += spent
        return spent


def make_streams(device: torch.device, count: int) -> list:
    """One CUDA stream per concurrent unit on a GPU; None (the default stream, i.e. serial) on the CPU."""
    if device.type == "cuda":
        return [torch.cuda.Stream(device=device) for _ in range(count)]
    return [None] * count


def used_on(stream, *tensors: torch.Tensor) -> None:
    """Tell the caching allocator that tensors made on another stream are read on `stream` (no early reuse)."""
    if stream is not None:
        for tensor in tensors:
            tensor.record_stream(stream)


def stream_context(stream):
    return torch.cuda.stream(stream) if stream is not None else nullcontext()


def is_stop(token: int, options: DecodeOptions) -> bool:
    return token in options.stop_token_ids


@dataclass(frozen=True)
class Prompt:
    prompt_id: str
    tokens: tuple[int, ...]


def as_prompts(prompts) -> list[Prompt]:
    """Accept Prompt objects, (id, tokens) pairs or bare token lists (ids "0", "1", …)."""
    out = []
    for index, item in enumerate(prompts):
        if isinstance(item, Prompt):
            out.append(item)
        elif isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str):
            out.append(Prompt(item[0], tuple(int(t) for t in item[1])))
        else:
            out.append(Prompt(str(index), tuple(int(t) for t in item)))
        if not out[-1].tokens:
            raise SpdsimError(f"prompt {out[-1].prompt_id!r} is empty")
    return out
