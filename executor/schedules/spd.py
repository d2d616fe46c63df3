"""The reference SPD schedule in one process (docs/spd.md §1.3), on top of the fast model.

Per cycle: (1) the v11 drafter drafts x̂_{t+1} from pre-step features, on its own stream; (2) every stage runs its
in-flight token through its layers, each on its own stream; (3) if the pipeline is saturated the oldest token
exits — final norm + lm_head give the target's distribution for the position after it, which verifies the draft
now at depth n−1 (not the exiting token). Accept: one token, the new draft enters stage 0. Reject: the target's
token is emitted, all in-flight tokens and this cycle's draft are flushed, the target KV is cropped, and n−1
refill cycles follow in which nothing exits.

Spec-cache invariant (as in the distributed reference): it holds the contiguous prefix of completed positions,
each encoded with the deepest aggregation type; the rows of in-flight tokens are recomputed every cycle and never
committed; the row of the token that exited in the previous cycle ("pending") is committed by this cycle's forward.

`SpdPrompt` (drafting, verification decision, records) is shared with the distributed controller.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from executor.schedules.base import cache_length, follow_synthetic, prefill, synthetic_drafts, window
from executor.schedules.common import (
    DecodeOptions,
    PhaseTimer,
    PromptRecorder,
    RunResult,
    Verifier,
    as_prompts,
    is_stop,
    make_streams,
    stream_context,
    used_on,
)
from executor.stages import StageSplit
from spdsim.contract import SpdsimError


@dataclass
class InFlight:
    """A token inside the pipeline: its current hidden state and the anchor features it has produced so far."""

    token: int
    position: int
    hidden: torch.Tensor  # [1, 1, H]; the distributed controller sets only the embedding and the exit output
    feats: dict[int, torch.Tensor]
    draft_probs: torch.Tensor | None  # q of this token when it was drafted (sampling only)


@dataclass(frozen=True)
class CycleStep:
    """What a cycle starts from: its index, whether a token exits (and is verified) and the logged state."""

    index: int
    saturated: bool
    state: str


def check_drafter(model, drafter, split: StageSplit) -> None:
    head = drafter.head_config
    if drafter.base_num_layers != model.num_layers:
        raise SpdsimError(
            f"drafter was built for {drafter.base_num_layers} layers; the model has {model.num_layers}"
        )
    if head.num_stages != split.num_stages or tuple(head.stage_layers) != split.layer_counts:
        raise SpdsimError(
            f"drafter was built for stages {list(head.stage_layers)}; the run uses {list(split.layer_counts)}"
        )
    if drafter.lm_head.weight.shape[1] != model.cfg.hidden_size:
        raise SpdsimError("drafter hidden size does not match the model's")


class SpdPrompt:
    """One prompt's SPD schedule without the stage forwards: pipeline contents, drafting, the verification
    decision and the records. The single-process decoder and the distributed controller both drive it, so their
    outputs are the same token for token; each runs the stages (and fills `InFlight.feats`) its own way."""

    def __init__(
        self,
        model,
        drafter,
        num_stages: int,
        options: DecodeOptions,
        prompt,
        prompt_index: int,
        min_spec_capacity: int = 0,
    ):
        self.model, self.drafter, self.options, self.n = model, drafter, options, num_stages
        self.deepest = drafter.num_aggr_types - 1
        seed = options.prompt_seed(prompt_index)
        self.verifier = Verifier(options.temperature, seed, model.device)
        self.timer = PhaseTimer(model.device)
        self.tokens = list(prompt.tokens)
        self.synthetic = synthetic_drafts(model, self.tokens, options, seed, lookahead=num_stages + 1)
        capacity = max(min_spec_capacity, len(self.tokens) + options.max_new_tokens + num_stages + 8)
        self.spec_cache = drafter.new_cache(capacity=capacity)
        self.arange = torch.arange(capacity, device=model.device)
        self.record = PromptRecorder(prompt.prompt_id, len(self.tokens), "spd")
        self.pipeline: list[InFlight] = []  # newest first; pipeline[d] is at depth d
        self.pending: InFlight | None = None  # exited last cycle; its spec-cache row is committed this cycle
        self.first_after_refill = True

    def entry(self, token: int, position: int, probs=None) -> InFlight:
        hidden = self.model.embed(torch.tensor([[token]], device=self.model.device))
        return InFlight(token, position, hidden, {0: hidden}, probs)

    def start(self, logits: torch.Tensor, feats: dict[int, torch.Tensor]) -> None:
        """After the prefill: the prompt's anchors enter the spec cache and the first token enters stage 0."""
        drafter, length = self.drafter, len(self.tokens)
        prompt_positions = torch.arange(length, device=self.model.device)
        drafter.decode(drafter.project(self.deepest, feats), prompt_positions, self.spec_cache, keep=length)
        first, probs = self.verifier.sample(logits)
        self.record.commit(first)
        self.pipeline = [self.entry(first, length, probs)]

    def running(self) -> bool:
        tokens = self.record.tokens
        return len(tokens) < self.options.max_new_tokens and not is_stop(tokens[-1], self.options)

    def next_cycle(self) -> CycleStep:
        saturated = len(self.pipeline) == self.n
        state = "saturated" if saturated else ("fill" if self.record.verifications == 0 else "refill")
        return CycleStep(len(self.record.cycles), saturated, state)

    def draft(self, cycle: int, stream) -> torch.Tensor:
        """Phase "draft" on `stream`: full-vocabulary logits of x̂_{t+1} from the pre-step anchors."""
        with self.timer.phase(cycle, "draft", stream), stream_context(stream):
            for entry in (*self.pipeline, *([self.pending] if self.pending is not None else [])):
                used_on(stream, *entry.feats.values())
            return self._draft_logits()

    def _draft_logits(self) -> torch.Tensor:
        drafter, rows, positions = self.drafter, [], []
        if self.pending is not None:
            rows.append(drafter.project(self.deepest, self.pending.feats))
            positions.append(self.pending.position)
        for depth in reversed(range(len(self.pipeline))):
            entry = self.pipeline[depth]
            rows.append(drafter.project(drafter.aggr_of_depth[depth], entry.feats))
            positions.append(entry.position)
        # Rows are at contiguous positions (spec-cache invariant): a slice of the device arange, no host copy.
        position_t = self.arange[positions[0] : positions[-1] + 1]
        keep = int(self.pending is not None)
        draft = drafter.decode(torch.cat(rows, dim=1), position_t, self.spec_cache, keep=keep)
        return drafter.full_vocab_logits(draft[0])

    def sample_draft(self, draft_logits: torch.Tensor, stream) -> tuple[int, torch.Tensor | None]:
        """The new draft token for the position after the newest in-flight one (and its q when sampling)."""
        with stream_context(stream):
            token, probs = self.verifier.sample(draft_logits)
        if self.synthetic is not None:
            token = self.synthetic.replace(self.pipeline[0].position + 1)
        return token, probs

    def decide(
        self, step: CycleStep, draft: tuple[int, torch.Tensor | None], verify_stream=None
    ) -> int | None:
        """Ends the cycle. Saturated: phase "verify" checks the draft now at depth n−1 against the target's head
        on the exiting token's last-stage output (its `hidden`). Accept: the new draft enters stage 0; reject: the
        target's token re-enters alone. Returns the position to crop the target KV to after a rejection."""
        new_entry = self.entry(draft[0], self.pipeline[0].position + 1, draft[1])
        record, crop, emitted = self.record, None, 0
        if step.saturated:
            exiting = self.pipeline[-1]
            candidate = self.pipeline[-2] if self.n >= 2 else new_entry
            with self.timer.phase(step.index, "verify", verify_stream), stream_context(verify_stream):
                target_logits = self.model.head(exiting.hidden)[0, 0]
                accepted, token = self.verifier.check(target_logits, candidate.token, candidate.draft_probs)
            verify_state = "refill" if self.first_after_refill else "saturated"
            row = (candidate.position, 1, candidate.token, token, int(accepted))
            record.log_verification([row], verify_state, self.n)
            record.commit(token, step.index, accepted)
            emitted = 1
            self.pending = exiting
            if accepted:
                self.first_after_refill = False
                self.pipeline = [new_entry, *self.pipeline[:-1]]
            else:
                self.first_after_refill = True
                self.pipeline = [self.entry(token, candidate.position)]
                crop = candidate.position
        else:
            self.pending = None
            self.pipeline = [new_entry, *self.pipeline]
        record.cycles.append((step.index, step.state, emitted))
        if emitted:
            follow_synthetic(self.synthetic, record)
        return crop


class _SpdDecoder:
    """Runs the stages of one prompt's SPD decode in this process; `run` returns the PromptRun."""

    def __init__(self, model, drafter, split: StageSplit, options: DecodeOptions, streams):
        self.model, self.drafter, self.split, self.options = model, drafter, split, options
        self.n = split.num_stages
        bound = drafter.anchor_indices
        self.collect = [tuple(b for b in bound if start < b <= end) for start, end in split.ranges]
        self.stage_streams, self.draft_stream = streams[: self.n], streams[self.n]

    def run(self, prompt, prompt_index: int):
        model, options, n = self.model, self.options, self.n
        spd = SpdPrompt(model, self.drafter, n, options, prompt, prompt_index)
        cache = model.new_cache(cache_length(model, len(spd.tokens), options, lookahead=n + 1))
        arange = torch.arange(cache.max_len, device=model.device)
        spd.start(*prefill(model, spd.tokens, cache, collect=self.drafter.anchor_indices))
        while spd.running():
            step = spd.next_cycle()
            self._fork()
            draft_logits = spd.draft(step.index, self.draft_stream)
            for depth, entry in enumerate(spd.pipeline):
                start, end = self.split.ranges[depth]
                stream = self.stage_streams[depth]
                with spd.timer.phase(step.index, f"stage{depth}", stream), stream_context(stream):
                    used_on(stream, entry.hidden)
                    position = arange[entry.position : entry.position + 1]
                    entry.hidden, got = model.forward_layers(
                        entry.hidden,
                        position,
                        start,
                        end,
                        cache,
                        collect=self.collect[depth],
                        kv_len=window(cache, entry.position),
                    )
                    entry.feats.update(got)
            draft = spd.sample_draft(draft_logits, self.draft_stream)
            crop = spd.decide(step, draft, self.stage_streams[n - 1])
            if crop is not None:
                cache.crop(crop)
            self._join()
        return spd.record.freeze(spd.timer)

    def _fork(self) -> None:
        current = torch.cuda.current_stream() if self.model.device.type == "cuda" else None
        for stream in (*self.stage_streams, self.draft_stream):
            if stream is not None:
                stream.wait_stream(current)

    def _join(self) -> None:
        if self.model.device.type != "cuda":
            return
        current = torch.cuda.current_stream()
        for stream in (*self.stage_streams, self.draft_stream):
            current.wait_stream(stream)


@torch.inference_mode()
def run_spd(
    model, drafter, prompts, split: StageSplit, options: DecodeOptions = DecodeOptions()
) -> RunResult:
    """Decode every prompt with SPD; the drafter must have been built for this split and model."""
    options.validate()
    check_drafter(model, drafter, split)
    streams = make_streams(model.device, split.num_stages + 1)
    decoder = _SpdDecoder(model, drafter, split, options, streams)
    runs = tuple(decoder.run(prompt, index) for index, prompt in enumerate(as_prompts(prompts)))
    head = drafter.head_config
    config = {
        "method": "spd",
        "stages": split.num_stages,
        "stage_layers": list(split.layer_counts),
        "spec_layers": head.num_spec_layers,
        "aggr_feature_bound": list(head.aggr_feature_bound),
        **asdict(options),
    }
    return RunResult("spd", config, runs, str(model.device))
