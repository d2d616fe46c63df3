"""The reference SPD schedule in one process (reference/spd.md §1.3), on top of the fast model.

Per cycle: (1) the v11 drafter drafts x̂_{t+1} from pre-step features, on its own stream; (2) every stage runs its
in-flight token through its layers, each on its own stream; (3) if the pipeline is saturated the oldest token
exits — final norm + lm_head give the target's distribution for the position after it, which verifies the draft
now at depth n−1 (not the exiting token). Accept: one token, the new draft enters stage 0. Reject: the target's
token is emitted, all in-flight tokens and this cycle's draft are flushed, the target KV is cropped, and n−1
refill cycles follow in which nothing exits.

Spec-cache invariant (as in the distributed reference): it holds the contiguous prefix of completed positions,
each encoded with the deepest aggregation type; the rows of in-flight tokens are recomputed every cycle and never
committed; the row of the token that exited in the previous cycle ("pending") is committed by this cycle's forward.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from executor.schedules.base import cache_length, prefill, synthetic_drafts, window
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
from spdsim.errors import SpdsimError


@dataclass
class _InFlight:
    """A token inside the pipeline: its current hidden state and the anchor features it has produced so far."""

    token: int
    position: int
    hidden: torch.Tensor  # [1, 1, H]
    feats: dict[int, torch.Tensor]
    draft_probs: torch.Tensor | None  # q of this token when it was drafted (sampling only)


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


class _SpdDecoder:
    """State of one prompt's SPD decode; `run` returns the PromptRun."""

    def __init__(self, model, drafter, split: StageSplit, options: DecodeOptions, streams):
        self.model, self.drafter, self.split, self.options = model, drafter, split, options
        self.n = split.num_stages
        bound = drafter.anchor_indices
        self.collect = [tuple(b for b in bound if start < b <= end) for start, end in split.ranges]
        self.deepest = drafter.num_aggr_types - 1
        self.stage_streams, self.draft_stream = streams[: self.n], streams[self.n]

    def _entry(self, token: int, position: int, probs=None) -> _InFlight:
        hidden = self.model.embed(torch.tensor([[token]], device=self.model.device))
        return _InFlight(token, position, hidden, {0: hidden}, probs)

    def _draft_logits(self, pipeline: list[_InFlight], pending: _InFlight | None, spec_cache) -> torch.Tensor:
        drafter, rows, positions = self.drafter, [], []
        if pending is not None:
            rows.append(drafter.project(self.deepest, pending.feats))
            positions.append(pending.position)
        for depth in reversed(range(len(pipeline))):
            entry = pipeline[depth]
            rows.append(drafter.project(drafter.aggr_of_depth[depth], entry.feats))
            positions.append(entry.position)
        # Rows are at contiguous positions (spec-cache invariant): a slice of the device arange, no host copy.
        position_t = self.arange[positions[0] : positions[-1] + 1]
        draft = drafter.decode(torch.cat(rows, dim=1), position_t, spec_cache, keep=int(pending is not None))
        return drafter.full_vocab_logits(draft[0])

    def run(self, prompt, prompt_index: int):
        model, drafter, options, n = self.model, self.drafter, self.options, self.n
        seed = options.prompt_seed(prompt_index)
        verifier = Verifier(options.temperature, seed, model.device)
        timer = PhaseTimer(model.device)
        tokens = list(prompt.tokens)
        synthetic = synthetic_drafts(model, tokens, options, seed, lookahead=n + 1)
        cache = model.new_cache(cache_length(model, len(tokens), options, lookahead=n + 1))
        self.arange = torch.arange(cache.max_len, device=model.device)
        spec_cache = drafter.new_cache(capacity=len(tokens) + options.max_new_tokens + n + 8)
        record = PromptRecorder(prompt.prompt_id, len(tokens), "spd")
        logits, feats = prefill(model, tokens, cache, collect=drafter.anchor_indices)
        prompt_positions = torch.arange(len(tokens), device=model.device)
        drafter.decode(drafter.project(self.deepest, feats), prompt_positions, spec_cache, keep=len(tokens))
        first, probs = verifier.sample(logits)
        record.commit(first)
        pipeline = [self._entry(first, len(tokens), probs)]
        pending: _InFlight | None = None
        first_after_refill = True
        while len(record.tokens) < options.max_new_tokens and not is_stop(record.tokens[-1], options):
            cycle = len(record.cycles)
            saturated = len(pipeline) == n
            state = "saturated" if saturated else ("fill" if record.verifications == 0 else "refill")
            self._fork()
            with timer.phase(cycle, "draft", self.draft_stream), stream_context(self.draft_stream):
                for entry in (*pipeline, *([pending] if pending is not None else [])):
                    used_on(self.draft_stream, *entry.feats.values())
                draft_logits = self._draft_logits(pipeline, pending, spec_cache)
            for depth, entry in enumerate(pipeline):
                start, end = self.split.ranges[depth]
                stream = self.stage_streams[depth]
                with timer.phase(cycle, f"stage{depth}", stream), stream_context(stream):
                    used_on(stream, entry.hidden)
                    position = self.arange[entry.position : entry.position + 1]
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
            new_position = pipeline[0].position + 1
            with stream_context(self.draft_stream):
                new_token, new_probs = verifier.sample(draft_logits)
            if synthetic is not None:
                new_token = synthetic.replace(new_position)
            new_entry = self._entry(new_token, new_position, new_probs)
            emitted = 0
            if saturated:
                exiting = pipeline[-1]
                candidate = pipeline[-2] if n >= 2 else new_entry
                stream = self.stage_streams[n - 1]
                with timer.phase(cycle, "verify", stream), stream_context(stream):
                    target_logits = model.head(exiting.hidden)[0, 0]
                    accepted, token = verifier.check(target_logits, candidate.token, candidate.draft_probs)
                verify_state = "refill" if first_after_refill else "saturated"
                row = (candidate.position, 1, candidate.token, token, int(accepted))
                record.log_verification([row], verify_state, n)
                record.commit(token, cycle, accepted)
                emitted = 1
                pending = exiting
                if accepted:
                    first_after_refill = False
                    pipeline = [new_entry, *pipeline[:-1]]
                else:
                    first_after_refill = True
                    pipeline = [self._entry(token, candidate.position)]
                    cache.crop(candidate.position)
            else:
                pending = None
                pipeline = [new_entry, *pipeline]
            self._join()
            record.cycles.append((cycle, state, emitted))
        return record.freeze(timer)

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
