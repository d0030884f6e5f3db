"""Messages between pipeline ranks: asynchronous point-to-point sends and receives that name a dead
peer instead of hanging.

Every receive is posted before the compute it overlaps with and waited on with a deadline; gloo
reports a peer whose process ended as a closed connection at once, and a silent peer at the
deadline. Either way the waiting rank raises :class:`RankFailedError` naming the peer (or, when
the process group's store says so, the rank that failed first upstream).
"""

from __future__ import annotations

import datetime
import re
import socket
from collections import deque
from typing import Any, Sequence

import attrs
import torch

from accelframe.errors import AccelframeError

FAILED_KEY = "accelframe/pp/failed"


class RankFailedError(AccelframeError):
    """A pipeline rank died or stopped answering; ``rank`` names it (None when it is unknown)."""

    def __init__(self, rank: int | None, *, seen_by: int | None, during: str, cause: str) -> None:
        self.rank, self.seen_by, self.during, self.cause = rank, seen_by, during, cause
        self.delay_s: float | None = None  # launch(): seconds from the death to its detection, when known
        who = f"pipeline rank {rank}" if rank is not None else "a pipeline rank"
        seen = f" (seen by rank {seen_by} while {during})" if seen_by is not None else f" ({during})"
        super().__init__(f"{who} failed or stopped answering{seen}: {cause}")


def free_port() -> int:
    """A TCP port on this machine that was free a moment ago (for MASTER_PORT)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ------------------------------------------------------------------------------------------------
# links
# ------------------------------------------------------------------------------------------------


@attrs.define(eq=False)
class Pending:
    """Posted receives of one message: its buffers and the work handles that fill them."""

    peer: int
    what: str
    buffers: list[torch.Tensor]
    works: list[Any]


Spec = tuple[int, torch.dtype]  # numel, dtype of one flat tensor
ALIGN = 16  # bytes: every part of a packed message starts on this boundary


def _offsets(specs: Sequence[Spec]) -> tuple[list[int], int]:
    """Byte offset of each part of a packed message, and its total size."""
    offs, end = [], 0
    for numel, dtype in specs:
        offs.append(end)
        end += -(-numel * dtype.itemsize // ALIGN) * ALIGN
    return offs, end


def pack(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """The tensors' bytes in one flat uint8 tensor (one send instead of one per tensor)."""
    specs = [(t.numel(), t.dtype) for t in tensors]
    offs, size = _offsets(specs)
    buf = torch.empty(size, dtype=torch.uint8, device=tensors[0].device)
    for t, off in zip(tensors, offs):
        n = t.numel() * t.dtype.itemsize
        buf[off:off + n] = t.contiguous().reshape(-1).view(torch.uint8)
    return buf


def unpack(buf: torch.Tensor, specs: Sequence[Spec]) -> list[torch.Tensor]:
    """The flat tensors :func:`pack` put into ``buf`` (views, no copies)."""
    offs, _ = _offsets(specs)
    return [buf[off:off + numel * dtype.itemsize].view(dtype) for off, (numel, dtype) in zip(offs, specs)]


CHANNELS = ("forward", "return", "kv", "pixels", "emb")
# sends in flight per channel: a ring rank is several ops ahead of the next (a decode there takes
# as long as many rows passes), each op two or three messages
MAX_IN_FLIGHT = 64


class DistLink:
    """Point-to-point messages over torch.distributed, on five channels, each a process group of
    its own: ``forward`` (rank r to r + 1), ``return`` (the last rank to rank 0), ``kv`` (block K/V
    moves and measured times), ``pixels`` (a decoding rank to rank 0) and ``emb`` (K/V summaries
    to rank 0). Each channel carries its messages in one order on both ends. NCCL runs a pair's
    operations on one stream in issue order, so with two ranks a receive of returns posted ahead
    of a forward send on a shared group would deadlock; gloo would not mind. A message's tensors
    travel as one packed buffer: one operation per message."""

    def __init__(self, rank: int, world: int, device: torch.device, timeout_s: float) -> None:
        import torch.distributed as dist

        self.dist, self.rank, self.world, self.device = dist, rank, world, device
        self.timeout = datetime.timedelta(seconds=timeout_s)
        self.groups = {"forward": None, "return": dist.new_group(list(range(world))),
                       "kv": dist.new_group(list(range(world))),
                       "pixels": dist.new_group(list(range(world))),
                       "emb": dist.new_group(list(range(world)))}  # None: the default group
        self._sends: dict[str, deque[tuple[Any, torch.Tensor, int, str]]] = {c: deque() for c in CHANNELS}

    def send(self, tensors: Sequence[torch.Tensor], dst: int, what: str, channel: str = "forward") -> None:
        group, queue = self.groups[channel], self._sends[channel]
        buf = pack(tensors)
        try:
            work = self.dist.isend(buf, dst, group=group)
        except RuntimeError as exc:
            self._failed(dst, f"sending {what}", exc)
        queue.append((work, buf, dst, what))  # the buffer lives until its send is done
        while len(queue) > MAX_IN_FLIGHT:  # bound what is in flight
            self._wait_send(queue.popleft())

    def recv(self, specs: Sequence[Spec], src: int, what: str, channel: str = "forward") -> Pending:
        buf = torch.empty(_offsets(specs)[1], dtype=torch.uint8, device=self.device)
        try:
            work = self.dist.irecv(buf, src, group=self.groups[channel])
        except RuntimeError as exc:
            self._failed(src, f"receiving {what}", exc)
        return Pending(peer=src, what=what, buffers=unpack(buf, specs), works=[work])

    def wait(self, pending: Pending) -> list[torch.Tensor]:
        for work in pending.works:
            try:
                work.wait(self.timeout)
            except RuntimeError as exc:
                self._failed(pending.peer, f"waiting for {pending.what}", exc)
        return pending.buffers

    def ready(self, pending: Pending) -> bool:
        """Whether a posted receive has arrived (a failed one counts: :meth:`wait` raises for it)."""
        return all(work.is_completed() for work in pending.works)

    def flush(self, channel: str | None = None) -> None:
        """Wait until every posted send (of ``channel`` only, if given) is done."""
        for c in (channel,) if channel else CHANNELS:
            while self._sends[c]:
                self._wait_send(self._sends[c].popleft())

    def _wait_send(self, item: tuple[Any, torch.Tensor, int, str]) -> None:
        work, _, dst, what = item
        try:
            work.wait(self.timeout)
        except RuntimeError as exc:
            self._failed(dst, f"sending {what}", exc)

    def _failed(self, peer: int, during: str, exc: BaseException) -> None:
        """Raise naming the first failed rank the store knows of, else ``peer`` (and record it)."""
        culprit = peer
        try:
            from torch.distributed.distributed_c10d import _get_default_store

            store = _get_default_store()
            old = store.compare_set(FAILED_KEY, "", str(peer)).decode()
            if old and old != str(peer) and old.lstrip("-").isdigit():
                culprit = int(old)
        except Exception:  # noqa: BLE001 - the store lives in rank 0's process, which may be the dead one
            pass
        cause = re.sub(r"^\[[^\]]*\]\s*", "", str(exc).splitlines()[0])[:300]  # without gloo's [file:line]
        raise RankFailedError(culprit, seen_by=self.rank, during=during, cause=cause) from exc


__all__ = ["CHANNELS", "DistLink", "FAILED_KEY", "Pending", "RankFailedError", "free_port", "pack", "unpack"]
