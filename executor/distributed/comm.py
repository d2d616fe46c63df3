"""Point-to-point plumbing of the multi-process SPD: the control word, deadline-bounded waits, rank naming.

Every receive and collective is issued asynchronously and then polled against a deadline, so a dead or stuck peer
ends the run with one line naming the rank instead of a hang. The control word is a fixed-size int64 tensor
broadcast by the controller at the start of every cycle (docs/spd.md §6: GO / DISCARD + crop / SHUTDOWN), staged
through a host buffer allocated once (`ControlRing`); a rank awaits its sends two words later, where their buffers
are next reused, never at the start of a cycle.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from executor.schedules.spd import HostSyncs

# Control ops.
OP_GO = 1  # one decode cycle: stages 0..active-1 forward their token
OP_PREFILL = 2  # a new prompt: its ids follow in a second broadcast of `prompt_len` int64
OP_END_PROMPT = 3  # the prompt is done: stages send their per-cycle timings and reset their caches
OP_SHUTDOWN = 4
CONTROL_FIELDS = (
    "op",
    "cycle",
    "active",
    "crop_len",
    "token",
    "position",
    "prompt_len",
    "cache_len",
    "verify",
)
NO_CROP = -1
TOKEN_FIELD = CONTROL_FIELDS.index("token")


class DistributedError(RuntimeError):
    """A rank died, stalled or failed; the message is one line naming the rank."""


@dataclass(frozen=True)
class Control:
    """One cycle's instruction. Stage s (< active) runs the token at ``position - s``; stage 0 embeds ``token``.
    ``crop_len`` >= 0: discard in-flight work and crop every stage's KV cache to that length first."""

    op: int
    cycle: int = 0
    active: int = 0
    crop_len: int = NO_CROP
    token: int = 0
    position: int = 0
    prompt_len: int = 0
    cache_len: int = 0  # PREFILL: KV cache length every stage allocates (the same for all prompts of a run)
    verify: int = (
        0  # GO, saturated: the last stage verifies (greedy) and sends the packed triple, not its output
    )

    @staticmethod
    def decode(tensor: torch.Tensor) -> Control:
        return Control(*tensor.tolist())


class ControlRing:
    """The controller's control words, staged through one host buffer allocated once (pinned on a GPU) and reused:
    no allocation or pinning per cycle, and a non-blocking host-to-device copy. Two slots, so word m rewrites the
    slot of word m − 2, whose copy and sends `Link` has retired first (`Link.retire_sends`)."""

    SLOTS = 2

    def __init__(self, device: torch.device):
        shape = (self.SLOTS, len(CONTROL_FIELDS))
        self.host = torch.zeros(shape, dtype=torch.int64, pin_memory=device.type == "cuda")
        self._host_view = self.host.numpy()  # writes through numpy: no tensor built per cycle
        self.device = torch.zeros(shape, dtype=torch.int64, device=device)

    def encode(self, control: Control, sequence: int, token_t: torch.Tensor | None = None) -> torch.Tensor:
        """Word number ``sequence`` as a device tensor (a slot of the ring); ``token_t`` (a device ``[1, 1]`` id,
        e.g. a draft still on the device) is copied into the token field on the device: the host never reads it."""
        slot = sequence % self.SLOTS
        self._host_view[slot] = [getattr(control, name) for name in CONTROL_FIELDS]
        tensor = self.device[slot]
        tensor.copy_(self.host[slot], non_blocking=True)
        if token_t is not None:
            tensor[TOKEN_FIELD : TOKEN_FIELD + 1].copy_(token_t.reshape(1))
        return tensor


@dataclass(frozen=True)
class Roles:
    """Who is who: the controller's rank, and the rank of each stage (the controller may hold stage 0)."""

    num_stages: int
    colocated: (
        bool  # controller and stage 0 share rank 0 (n ranks); else the controller is rank 0 (n+1 ranks)
    )

    @property
    def world_size(self) -> int:
        return self.num_stages if self.colocated else self.num_stages + 1

    @property
    def controller(self) -> int:
        return 0

    def stage_rank(self, stage: int) -> int:
        return stage if self.colocated else stage + 1

    def stage_of_rank(self, rank: int) -> int | None:
        stage = rank if self.colocated else rank - 1
        return stage if 0 <= stage < self.num_stages else None

    def name(self, rank: int) -> str:
        stage = self.stage_of_rank(rank)
        if rank == self.controller and (stage is None or self.colocated):
            return f"rank {rank} (controller{' + stage 0' if self.colocated else ''})"
        return f"rank {rank} (stage {stage})"


class Link:
    """This rank's view of the process group: async sends/receives and deadline-bounded waits."""

    def __init__(
        self, rank: int, roles: Roles, device: torch.device, timeout_s: float, idle_timeout_s: float
    ):
        self.rank = rank
        self.roles = roles
        self.device = device
        self.timeout_s = timeout_s
        self.idle_timeout_s = idle_timeout_s  # stages waiting for the next prompt
        self._pending_sends: list[tuple[int, object, int, torch.Tensor]] = []  # (word, work, peer, tensor)
        self.control_tensor: torch.Tensor | None = None
        self.sequence = 0  # control words sent (controller) or received so far; tags the sends posted after
        self._ring: ControlRing | None = None

    def wait(self, work, peer: int, what: str, idle: bool = False) -> None:
        """Block until ``work`` completes or the deadline passes; errors name ``peer``.

        gloo: ``Work.wait(timeout)`` (its p2p works never report completion to ``is_completed``); NCCL: poll
        ``is_completed`` (a plain ``wait`` only orders streams, it does not block the host)."""
        limit = self.idle_timeout_s if idle else self.timeout_s
        try:
            if self.device.type == "cuda":
                deadline = time.monotonic() + limit
                spins = 0
                while not work.is_completed():
                    if time.monotonic() > deadline:
                        raise TimeoutError
                    spins += 1
                    time.sleep(0 if spins < 2000 else 1e-4)
                work.wait()
            else:
                work.wait(timeout=timedelta(seconds=limit))
        except Exception as exc:  # a timeout or a broken connection: say which peer it was
            text = " ".join(str(exc).split())
            if isinstance(exc, TimeoutError) or "timed out" in text.lower() or "timeout" in text.lower():
                raise DistributedError(
                    f"{self.roles.name(self.rank)}: no answer from {self.roles.name(peer)} within "
                    f"{limit:g} s ({what})"
                ) from None
            raise DistributedError(
                f"{self.roles.name(self.rank)}: lost {self.roles.name(peer)} ({what}): {text[:160]}"
            ) from None

    def broadcast_control(
        self, control: Control | None, idle: bool = False, token_t: torch.Tensor | None = None
    ) -> Control:
        """The controller sends ``control`` to every other rank; they receive it (``idle``: between prompts).
        ``token_t``: the controller's device token id, written into the word on the device (no host read).

        A point-to-point fan-out rather than a collective: a rank that stops answering is then named by the
        wait that misses it, instead of stalling an anonymous collective. The received word stays on the device
        as ``control_tensor`` (stage 0 embeds its token from there; the host decodes only the other fields)."""
        self.sequence += 1
        self.retire_sends(f"send before control word {self.sequence}")
        if control is not None:
            if self._ring is None:
                self._ring = ControlRing(self.device)
            tensor = self._ring.encode(control, self.sequence, token_t)
            self.control_tensor = tensor
            self._fan_out(tensor)
            return control
        tensor = torch.empty(len(CONTROL_FIELDS), dtype=torch.int64, device=self.device)
        [(work, peer)] = self.exchange([], [(tensor, self.roles.controller)])
        self.wait(work, peer, "control word", idle)
        self.control_tensor = tensor
        return Control.decode(tensor)

    def control_token(self) -> torch.Tensor:
        """The last control word's token as a device ``[1, 1]`` id (a view: no copy, no host read)."""
        return self.control_tensor[TOKEN_FIELD : TOKEN_FIELD + 1].view(1, 1)

    def broadcast_ids(self, ids: torch.Tensor | None, length: int) -> torch.Tensor:
        if ids is not None:
            self._fan_out(ids)
            return ids
        tensor = torch.empty(length, dtype=torch.int64, device=self.device)
        [(work, peer)] = self.exchange([], [(tensor, self.roles.controller)])
        self.wait(work, peer, "prompt ids")
        return tensor

    def _fan_out(self, tensor: torch.Tensor) -> None:
        peers = [rank for rank in range(self.roles.world_size) if rank != self.rank]
        self.exchange([(tensor, peer) for peer in peers], [])

    def exchange(self, sends: list[tuple[torch.Tensor, int]], recvs: list[tuple[torch.Tensor, int]]) -> list:
        """Post sends and receives together (one NCCL group: no ordering deadlock); returns receive handles.

        Every point-to-point op of the run goes through here (batched), so NCCL uses one communicator for all of
        them: mixing batched and plain p2p calls can put the two ends on different communicators (a hang).

        Send handles are kept, tagged with the current control word, and awaited by ``retire_sends`` two words later
        or ``flush_sends`` (the tensors stay referenced until then)."""
        ops = [dist.P2POp(dist.isend, tensor, peer) for tensor, peer in sends]
        ops += [dist.P2POp(dist.irecv, tensor, peer) for tensor, peer in recvs]
        if not ops:
            return []
        works = dist.batch_isend_irecv(ops)
        if len(works) != len(ops):  # NCCL may return one work for the whole group
            works = works * len(ops) if len(works) == 1 else works
        for (tensor, peer), work in zip(sends, works[: len(sends)], strict=True):
            self._pending_sends.append((self.sequence, work, peer, tensor))
        return [(work, peer) for work, (_, peer) in zip(works[len(sends) :], recvs, strict=True)]

    def wait_recvs(self, handles: list, what: str) -> None:
        for work, peer in handles:
            self.wait(work, peer, what)

    def retire_sends(self, what: str = "send") -> None:
        """Await the sends posted two control words ago or earlier, where their buffers are next reused (the
        control ring's slot): by then their receivers have answered a later word, so the wait does not block on
        work still in flight, and the start of a cycle never waits for its own or the previous cycle's sends."""
        old = [entry for entry in self._pending_sends if entry[0] <= self.sequence - ControlRing.SLOTS]
        self._pending_sends = [
            entry for entry in self._pending_sends if entry[0] > self.sequence - ControlRing.SLOTS
        ]
        for _word, work, peer, _tensor in old:
            self.wait(work, peer, what)

    def flush_sends(self, what: str = "send") -> None:
        """Await every pending send (prefill, end of prompt, shutdown). A send of this or the previous word may
        still be in flight, so awaiting it is a host sync (on a GPU: the host waits for the stream) and is counted
        as one (`HostSyncs`: the tests check that no steady-state cycle does it)."""
        if any(word >= self.sequence - 1 for word, *_ in self._pending_sends):
            HostSyncs.count += 1
        for _word, work, peer, _tensor in self._pending_sends:
            self.wait(work, peer, what)
        self._pending_sends.clear()
