"""Point-to-point plumbing of the multi-process SPD: the control word, deadline-bounded waits, rank naming.

Every receive and collective is issued asynchronously and awaited against a deadline, so a dead or stuck peer ends
the run with one line naming the rank instead of a hang: gloo waits with a timeout; NCCL waits in stream order (the
host does not block) and a `Watchdog` thread names the peer whose work is still incomplete at the deadline. The control word is a fixed-size int64 tensor
broadcast by the controller at the start of every cycle (docs/spd.md §6: GO / DISCARD + crop / SHUTDOWN), staged
through a host buffer allocated once (`ControlRing`); a rank awaits its sends two words later, where their buffers
are next reused, never at the start of a cycle.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from executor.host_sync import HostSyncs

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
        self._copied: list = [None] * self.SLOTS  # GPU: the event after each slot's host-to-device copy

    def encode(self, control: Control, sequence: int, token_t: torch.Tensor | None = None) -> torch.Tensor:
        """Word number ``sequence`` as a device tensor (a slot of the ring); ``token_t`` (a device ``[1, 1]`` id,
        e.g. a draft still on the device) is copied into the token field on the device: the host never reads it."""
        slot = sequence % self.SLOTS
        if self._copied[slot] is not None:  # GPU: the host runs ahead; its last copy must have read the slot
            self._copied[slot].synchronize()
        self._host_view[slot] = [getattr(control, name) for name in CONTROL_FIELDS]
        tensor = self.device[slot]
        tensor.copy_(self.host[slot], non_blocking=True)
        if tensor.is_cuda:
            self._copied[slot] = torch.cuda.Event()
            self._copied[slot].record()
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


class Watchdog:
    """The bound of a wait that does not block the host (NCCL's stream-ordered ``Work.wait``): a daemon thread that
    checks every ``tick_s`` the work it watches, drops what completed and, at the first deadline passed with the
    work incomplete, records its one-line message as ``failure`` and calls ``fail`` (the launcher reports the line
    and ends the rank: the host may be blocked in a device read that the missing work stalls)."""

    def __init__(self, fail: Callable[[str], None] | None = None, tick_s: float = 0.05, device=None):
        self.failure: str | None = None
        self._fail, self.tick_s, self._device = fail, tick_s, device
        self._watched: list[tuple[float, Callable[[], bool], str]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="link-watchdog")
        self._thread.start()

    def watch(self, done: Callable[[], bool], message: str, limit_s: float) -> None:
        with self._lock:
            self._watched.append((time.monotonic() + limit_s, done, message))

    def pending(self) -> int:
        with self._lock:
            return len(self._watched)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=1)

    def _run(self) -> None:
        if self._device is not None and self._device.type == "cuda" and torch.cuda.is_available():
            torch.cuda.set_device(self._device)
        while not self._stop.wait(self.tick_s):
            failure = self._scan(time.monotonic())
            if failure is not None:
                self.failure = failure
                if self._fail is not None:
                    self._fail(failure)
                return

    def _scan(self, now: float) -> str | None:
        """Drop completed work; the message of the first one past its deadline (or whose query raised)."""
        with self._lock:  # the whole scan: ``pending()`` never sees a half-scanned list
            keep = []
            for entry in self._watched:
                deadline, done, message = entry
                try:
                    finished = done()
                except Exception as exc:  # noqa: BLE001 - a failed query (a CUDA error) ends the bound too
                    return f"{message} ({type(exc).__name__}: {exc})"
                if finished:
                    continue
                if now > deadline:
                    return message
                keep.append(entry)
            self._watched = keep
        return None


class Link:
    """This rank's view of the process group: async sends/receives and deadline-bounded waits."""

    def __init__(
        self,
        rank: int,
        roles: Roles,
        device: torch.device,
        timeout_s: float,
        idle_timeout_s: float,
        on_stall: Callable[[str], None] | None = None,
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
        # GPU: the watchdog's report (the launcher's: report the line, end the rank)
        self._on_stall = on_stall
        self._watchdog: Watchdog | None = None

    def watchdog(self) -> Watchdog:
        if self._watchdog is None:
            self._watchdog = Watchdog(self._on_stall, device=self.device)
        return self._watchdog

    def _silent(self, peer: int, what: str, limit: float) -> str:
        return f"{self.roles.name(self.rank)}: no answer from {self.roles.name(peer)} within {limit:g} s ({what})"

    def wait(self, work, peer: int, what: str, idle: bool = False) -> None:
        """Await ``work`` with a deadline; errors name ``peer``.

        gloo: ``Work.wait(timeout)`` blocks the host (its p2p works never report completion to ``is_completed``).
        NCCL: ``Work.wait()`` only makes the current stream wait, the host goes on (no polling loop); the
        `Watchdog` fails the rank if the work is still incomplete at the deadline, and a failure it saw is raised
        here at the next wait."""
        limit = self.idle_timeout_s if idle else self.timeout_s
        try:
            if self.device.type == "cuda":
                if self._watchdog is not None and self._watchdog.failure is not None:
                    raise DistributedError(self._watchdog.failure)
                work.wait()
                self.watchdog().watch(work.is_completed, self._silent(peer, what, limit), limit)
            else:
                work.wait(timeout=timedelta(seconds=limit))
        except DistributedError:
            raise
        except Exception as exc:  # a timeout or a broken connection: say which peer it was
            text = " ".join(str(exc).split())
            if "timed out" in text.lower() or "timeout" in text.lower():
                raise DistributedError(self._silent(peer, what, limit)) from None
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
        control ring's slot; on a GPU the stream waits, so the next copy into the slot follows the send): by then
        their receivers have answered a later word, and the start of a cycle never waits for its own or the
        previous cycle's sends."""
        old = [entry for entry in self._pending_sends if entry[0] <= self.sequence - ControlRing.SLOTS]
        self._pending_sends = [
            entry for entry in self._pending_sends if entry[0] > self.sequence - ControlRing.SLOTS
        ]
        for _word, work, peer, _tensor in old:
            self.wait(work, peer, what)

    def flush_sends(self, what: str = "send") -> None:
        """Await every pending send (prefill, end of prompt, shutdown). A send of this or the previous word may
        still be in flight, so awaiting it is counted as a host sync (`HostSyncs`; gloo: the host waits, NCCL: the
        stream does): the tests check that no steady-state cycle does it."""
        if any(word >= self.sequence - 1 for word, *_ in self._pending_sends):
            HostSyncs.count += 1
        for _word, work, peer, _tensor in self._pending_sends:
            self.wait(work, peer, what)
        self._pending_sends.clear()
