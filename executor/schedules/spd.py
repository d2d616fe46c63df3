"""The reference SPD schedule in one process (docs/spd.md §1.3), on top of the fast model.

Per cycle: (1) the v11 drafter drafts x̂_{t+1} from pre-step features, on its own stream; (2) every stage runs its
in-flight token through its layers, each on its own stream; (3) if the pipeline is saturated the oldest token
exits — final norm + lm_head give the target's distribution for the position after it, which verifies the draft
now at depth n−1 (not the exiting token). Accept: one token, the new draft enters stage 0. Reject: the target's
token is emitted, all in-flight tokens and this cycle's draft are flushed, the target KV is cropped, and n−1
refill cycles follow in which nothing exits.

Spec-cache invariant (as in the distributed reference): it holds the contiguous prefix of completed positions,
each encoded with the deepest aggregation type; the rows of in-flight tokens are recomputed every cycle at their
positions (the cache is position-masked, so they are overwritten, never committed); the row of the token that
exited in the previous cycle ("pending") is written at its position by this cycle's forward and stays.

Fast path (T = 0): the drafter (`executor.heads.fast_spd`), every stage step and the verify are fixed-shape
functions run through a `GraphCache` (CUDA graphs over the compiled layers on a GPU, eager on the CPU); draft
tokens stay on the device (embedded in the draft graph, synthetic plans read from a static device buffer), so
fill and refill cycles never wait for the host. The one host sync of a cycle is `to_host` in `SpdPrompt.decide`
of a saturated cycle: it reads (accepted, target token, drafted token) from the verify graph. T > 0 samples on the
host (slower, still lossless).

`SpdPrompt` (drafting, verification decision, records) is shared with the distributed controller.

``flush="drain"`` (issue 15's alternative, kept for the comparison test; docs/spd.md §6): after a rejection the
in-flight tokens are not flushed but pass through the remaining stages and are discarded on exit, and the KV is
not cropped; position masking (`executor.cache`) makes their writes harmless, since every stale write at a
position lands before the real token at that position rewrites it. Same tokens, same cycles, n(n−1)/2 more stage
forwards per rejection. Attention-only models (a DeltaNet layer reads its state by cache length).
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import asdict, dataclass

import torch

from executor.graphs import GraphCache
from executor.heads.fast_spd import FastSpdDrafter
from executor.host_sync import HostSyncs, sync_allowed, to_host
from executor.schedules.base import (
    TIMED,
    WARMUP,
    PromptProgress,
    cache_length,
    decode_each,
    follow_synthetic,
    prefill,
    synthetic_drafts,
    warmup_prompts,
    window,
)
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


class InFlight:
    """A token inside the pipeline: its id (a device ``[1, 1]`` tensor; the host int is learned at verification,
    or read on demand), its current hidden state and the anchor features it has produced so far."""

    def __init__(self, token_t, position: int, hidden, feats, draft_probs=None, token: int | None = None):
        self.token_t = token_t
        self.position = position
        self.hidden = (
            hidden  # [1, 1, H]; the distributed controller sets only the embedding and the exit output
        )
        self.feats: dict[int, torch.Tensor] = feats
        self.draft_probs = draft_probs  # q of this token when it was drafted (sampling only)
        self._token = token

    @property
    def token(self) -> int:
        if self._token is None:  # the distributed controller's control word (one sync, as its drafting had)
            self._token = int(to_host(self.token_t, allowed=False)[0])
        return self._token

    @token.setter
    def token(self, value: int) -> None:
        self._token = int(value)


@dataclass(frozen=True)
class Draft:
    """One cycle's draft: device token [1, 1] and embedding [1, 1, H]; logits, host token and q when sampling."""

    token_t: torch.Tensor
    embed: torch.Tensor
    logits: torch.Tensor | None = None
    token: int | None = None
    probs: torch.Tensor | None = None


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


FLUSH_MODES = ("flush", "drain")


def check_flush(model, flush: str) -> None:
    if flush not in FLUSH_MODES:
        raise SpdsimError(f"flush: unknown {flush!r} (allowed: {', '.join(FLUSH_MODES)})")
    if flush == "drain" and getattr(model, "is_hybrid", False):
        raise SpdsimError(
            "flush='drain' needs an attention-only model (DeltaNet state is read by cache length)"
        )


def spec_capacity(prompt_len: int, options: DecodeOptions, num_stages: int) -> int:
    return prompt_len + options.max_new_tokens + num_stages + 8


class SpdPrompt:
    """One prompt's SPD schedule without the stage forwards: pipeline contents, drafting, the verification
    decision and the records. The single-process decoder and the distributed controller both drive it, so their
    outputs are the same token for token; each runs the stages (and fills `InFlight.feats`) its own way.

    ``fast``: a `FastSpdDrafter` shared by the prompts of a run (built here when absent or too small);
    ``graphs``: where the draft and verify steps run (default: eager)."""

    def __init__(
        self,
        model,
        drafter,
        num_stages: int,
        options: DecodeOptions,
        prompt,
        prompt_index: int,
        min_spec_capacity: int = 0,
        fast: FastSpdDrafter | None = None,
        graphs: GraphCache | None = None,
    ):
        self.model, self.drafter, self.options, self.n = model, drafter, options, num_stages
        seed = options.prompt_seed(prompt_index)
        self.verifier = Verifier(options.temperature, seed, model.device, options.top_k, options.top_p)
        self.timer = PhaseTimer(model.device)
        self.tokens = list(prompt.tokens)
        self.graphs = graphs if graphs is not None else GraphCache(enabled=False)
        self.synthetic = synthetic_drafts(
            model, self.tokens, options, seed, lookahead=num_stages + 1, use_graphs=self.graphs.requested
        )
        capacity = max(min_spec_capacity, spec_capacity(len(self.tokens), options, num_stages))
        if fast is None or fast.capacity < capacity:
            fast = FastSpdDrafter(drafter, model, capacity)
        self.fast = fast
        fast.reset()
        fast.load_plan(self.synthetic)
        self.record = PromptRecorder(prompt.prompt_id, len(self.tokens), "spd")
        self.pipeline: list[InFlight] = []  # newest first; pipeline[d] is at depth d
        self.pending: InFlight | None = None  # exited last cycle; its spec-cache row is written this cycle
        self.first_after_refill = True
        self.cycle_syncs: dict[int, int] = {}
        self._syncs_at_start = 0
        self._draft_fns: dict = {}
        self._verify_fn = None

    def entry(self, token: int, position: int, probs=None) -> InFlight:
        """A host token entering stage 0 (device id: a view of a device arange, no host-to-device copy)."""
        token_t = self.fast.token(token)
        hidden = self.model.embed(token_t)
        return InFlight(token_t, position, hidden, {0: hidden}, probs, token=token)

    def start(self, logits: torch.Tensor, feats: dict[int, torch.Tensor]) -> None:
        """After the prefill: the prompt's anchors enter the spec cache and the first token enters stage 0."""
        self.fast.prefill(feats, len(self.tokens))
        first, probs = self.verifier.sample(logits)
        self.record.commit(first)
        self.pipeline = [self.entry(first, len(self.tokens), probs)]

    def running(self) -> bool:
        tokens = self.record.tokens
        return len(tokens) < self.options.max_new_tokens and not is_stop(tokens[-1], self.options)

    def next_cycle(self) -> CycleStep:
        saturated = len(self.pipeline) == self.n
        state = "saturated" if saturated else ("fill" if self.record.verifications == 0 else "refill")
        self._syncs_at_start = HostSyncs.count
        return CycleStep(len(self.record.cycles), saturated, state)

    def draft(self, cycle: int, stream) -> Draft:
        """Phase "draft" on `stream`: x̂_{t+1} from the pre-step anchors (rows: [pending], depth n−1 … depth 0)."""
        fast, pending = self.fast, self.pending
        entries = ([pending] if pending is not None else []) + self.pipeline[::-1]
        with self.timer.phase(cycle, "draft", stream), stream_context(stream):
            for entry in entries:
                used_on(stream, *entry.feats.values())
            rows = len(entries)
            feats = torch.cat([f for e in entries for f in fast.row_features(e.feats)], dim=1)
            feats = feats.view(rows, fast.num_types, fast.hidden_size)
            types = fast.row_types(pending is not None, len(self.pipeline))
            # Rows are at contiguous positions (spec-cache invariant): slices of a device arange, no host copy.
            first, newest = entries[0].position, entries[-1].position
            positions = fast.positions[first : newest + 1]
            new_position = fast.positions[newest + 1 : newest + 2]
            span = fast.window(newest)
            synthetic, want_logits = self.synthetic is not None, not self.verifier.greedy
            fn_key = (span, synthetic, want_logits)
            if fn_key not in self._draft_fns:
                self._draft_fns[fn_key] = fast.step_fn(span, synthetic, want_logits)
            key = ("draft", rows, span, synthetic, want_logits)
            outputs = self.graphs.run(key, self._draft_fns[fn_key], feats, types, positions, new_position)
            return Draft(*self.graphs.clone_outputs(outputs))

    def sample_draft(self, draft: Draft, stream) -> Draft:
        """Sampling (T > 0): draw the draft token and keep its q (a host sync); greedy drafts stay on the device."""
        if draft.logits is None:
            return draft
        with stream_context(stream):
            token, probs = self.verifier.sample(draft.logits)
            token_t = self.fast.token(token)
            return Draft(token_t, self.model.embed(token_t), None, token, probs)

    def _verify_step(self):
        if self._verify_fn is None:
            self._verify_fn = greedy_verify_fn(self.model)
        return self._verify_fn

    def _verify(self, step: CycleStep, exiting: InFlight, candidate: InFlight, verify_stream) -> tuple:
        """Phase "verify" here: the greedy verify graph (its triple read back: the cycle's one host sync) or, when
        sampling, speculative sampling on the host."""
        with stream_context(verify_stream):
            with self.timer.phase(step.index, "verify", verify_stream):
                if not self.verifier.greedy:
                    target_logits = self.model.head(exiting.hidden)[0, 0]
                    return self.verifier.check(target_logits, candidate.token, candidate.draft_probs)
                used_on(verify_stream, exiting.hidden, candidate.token_t)
                packed = self.graphs.run(("verify",), self._verify_step(), exiting.hidden, candidate.token_t)
            accepted, token, candidate.token = to_host(packed)  # the cycle's one host sync
        return accepted, token

    def decide(
        self, step: CycleStep, draft: Draft, verify_stream=None, verified: torch.Tensor | None = None
    ) -> int | None:
        """Ends the cycle. Saturated: phase "verify" checks the draft now at depth n−1 against the target's head
        on the exiting token's last-stage output (its `hidden`), or takes ``verified``, the packed (accepted,
        target, drafted) triple the last stage computed (greedy; the distributed pipeline's verify where it costs
        least). Accept: the new draft enters stage 0; reject: the target's token re-enters alone. Returns the
        position to crop the target KV to after a rejection."""
        position = self.pipeline[0].position + 1
        new_entry = InFlight(draft.token_t, position, draft.embed, {0: draft.embed}, draft.probs, draft.token)
        record, crop, emitted = self.record, None, 0
        if step.saturated:
            exiting = self.pipeline[-1]
            candidate = self.pipeline[-2] if self.n >= 2 else new_entry
            if verified is not None:
                accepted, token, candidate.token = to_host(verified)  # the cycle's one host sync
            else:
                accepted, token = self._verify(step, exiting, candidate, verify_stream)
            accepted = bool(accepted)
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
        self.cycle_syncs[step.index] = HostSyncs.count - self._syncs_at_start
        if emitted:
            with sync_allowed():  # a re-anchor (rare, off the clock) runs AR decoding and rewrites the plan
                follow_synthetic(self.synthetic, record)
                self.fast.load_plan(self.synthetic)
        return crop


def greedy_verify_fn(model):
    """The greedy verify as one fixed-shape function (graph-capturable): final norm + lm_head + argmax on the
    exiting token's last-stage output ``[1, 1, H]``, compared with the drafted ``candidate`` id; returns the packed
    int64 (accepted, target, drafted). The controller runs it, or the last stage's rank (only 24 bytes travel)."""

    def verify(hidden: torch.Tensor, candidate: torch.Tensor) -> torch.Tensor:
        target = model.head(hidden)[0, 0].argmax()
        drafted = candidate.reshape(())
        return torch.stack(((target == drafted).long(), target, drafted))

    return verify


class _SpdDecoder:
    """Runs the stages of SPD in this process for every prompt of a run: one target cache, one fast drafter and one
    `GraphCache` shared by the prompts (graphs are bound to the caches); `run` returns one prompt's PromptRun."""

    def __init__(
        self,
        model,
        drafter,
        split: StageSplit,
        options: DecodeOptions,
        streams,
        prompts,
        use_graphs=True,
        flush: str = "flush",
    ):
        self.model, self.drafter, self.split, self.options = model, drafter, split, options
        self.drain = flush == "drain"
        self.n = n = split.num_stages
        bound = drafter.anchor_indices
        self.collect = [tuple(b for b in bound if start < b <= end) for start, end in split.ranges]
        self.stage_streams, self.draft_stream = streams[:n], streams[n]
        longest = max(len(p.tokens) for p in prompts)
        self.cache = model.new_cache(cache_length(model, longest, options, lookahead=n + 1))
        self.fast = FastSpdDrafter(drafter, model, spec_capacity(longest, options, n))
        self.graphs = GraphCache(enabled=use_graphs)
        self._stage_fns: dict = {}
        self.cycle_guard = lambda step: nullcontext()  # tests: sync-debug checks around steady-state cycles

    def _stage_fn(self, depth: int, span: int):
        key = (depth, span)
        if key not in self._stage_fns:
            model, cache, collect = self.model, self.cache, self.collect[depth]
            start, end = self.split.ranges[depth]

            def step(hidden: torch.Tensor, position: torch.Tensor):
                out, got = model.forward_layers(
                    hidden, position, start, end, cache, collect=collect, kv_len=span
                )
                return out, tuple(got[b] for b in collect)

            self._stage_fns[key] = step
        return self._stage_fns[key]

    def run(self, prompt, prompt_index: int):
        model, n, cache = self.model, self.n, self.cache
        spd = SpdPrompt(
            model, self.drafter, n, self.options, prompt, prompt_index, fast=self.fast, graphs=self.graphs
        )
        cache.reset()
        spd.start(*prefill(model, spd.tokens, cache, collect=self.drafter.anchor_indices))
        stale: dict[
            int, InFlight
        ] = {}  # drain: rejected tokens still in the pipe, by depth (outputs discarded)
        while spd.running():
            step = spd.next_cycle()
            with self.cycle_guard(step):
                self._fork()
                draft = spd.draft(step.index, self.draft_stream)
                for depth, entry in enumerate(spd.pipeline):
                    self._stage(spd, step.index, depth, entry)
                for depth, entry in stale.items():
                    self._stage(spd, step.index, depth, entry)
                draft = spd.sample_draft(draft, self.draft_stream)
                in_flight = spd.pipeline[:-1]
                crop = spd.decide(step, draft, self.stage_streams[n - 1])
                stale = {d + 1: e for d, e in stale.items() if d + 1 < n}
                if crop is not None and self.drain:
                    stale.update({d + 1: e for d, e in enumerate(in_flight)})
                elif crop is not None:
                    cache.crop(crop)
                self._join()
        return spd.record.freeze(spd.timer)

    def _stage(self, spd: SpdPrompt, cycle: int, depth: int, entry: InFlight) -> None:
        """Phase "stage{depth}": the stage's graph (compiled layers) on its own stream; its outputs are cloned
        because the next replay of the same key (next cycle, this depth) overwrites them."""
        stream = self.stage_streams[depth]
        span = window(self.cache, entry.position)
        with spd.timer.phase(cycle, f"stage{depth}", stream), stream_context(stream):
            used_on(stream, entry.hidden)
            position = self.fast.positions[entry.position : entry.position + 1]
            outputs = self.graphs.run(
                ("stage", depth, span), self._stage_fn(depth, span), entry.hidden, position
            )
            entry.hidden, feats = self.graphs.clone_outputs(outputs)
            entry.feats.update(zip(self.collect[depth], feats, strict=True))

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
    model,
    drafter,
    prompts,
    split: StageSplit,
    options: DecodeOptions = DecodeOptions(),
    use_graphs: bool = True,
    warmup: bool = False,
    flush: str = "flush",
    progress: PromptProgress | None = None,
) -> RunResult:
    """Decode every prompt with SPD; the drafter must have been built for this split and model. ``warmup``: decode
    the prompts of `warmup_prompts` (one per starting window) untimed first, on the caches and graphs the timed
    prompts use, so their first cycles capture nothing new (the config's "warmup_prompts" counts them).
    ``flush``: what a rejection does to the tokens in flight (module docstring). ``progress``: see
    `base.decode_each`."""
    options.validate()
    check_drafter(model, drafter, split)
    check_flush(model, flush)
    streams = make_streams(model.device, split.num_stages + 1)
    prompt_list = as_prompts(prompts)
    decoder = _SpdDecoder(model, drafter, split, options, streams, prompt_list, use_graphs, flush)
    # The fill and the first saturated cycle reach n positions past the first decode position.
    warm = warmup_prompts(prompt_list, lookahead=split.num_stages) if warmup else ()
    decode_each(warm, lambda prompt, _: decoder.run(prompt, 0), WARMUP, progress)
    runs = decode_each(prompt_list, decoder.run, TIMED, progress)
    head = drafter.head_config
    config = {
        "method": "spd",
        "stages": split.num_stages,
        "stage_layers": list(split.layer_counts),
        "spec_layers": head.num_spec_layers,
        "aggr_feature_bound": list(head.aggr_feature_bound),
        **({"flush": flush} if flush != "flush" else {}),
        **asdict(options),
        "warmup_prompts": len(warm),
    }
    return RunResult("spd", config, runs, str(model.device))
