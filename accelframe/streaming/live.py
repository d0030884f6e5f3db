"""Live sources: streams that begin, are fed and end while the stream loop runs (a server's sessions).

A :class:`LiveSource` reads like a :class:`~accelframe.streaming.source.StreamSource` to the loop
(``received``, ``arrival_s``, ``delivered``, ``end_known_s``, ...), but its length is not known when
it starts:

- **text-to-video**: a frame slot arrives every ``1 / fps`` from the moment the loop admits it
  (``start_s``), until :meth:`LiveSource.end` or ``max_frames``. The first ``burst + 1`` slots
  arrive at once (a server sets it to its first chunk's frames, so the first chunk starts at once
  and the client plays the frames at ``fps``, not a chunk late). :meth:`LiveSource.pause` stops the
  slots; :meth:`LiveSource.resume` restarts them where they stopped;
- **video-to-video** (``size=(H, W)``): the frames are the ones :meth:`LiveSource.push` hands in,
  each arriving when it was pushed; the loop holds only the frames it has not consumed yet
  (:class:`LiveFrames`), and a client that pushes more than ``max_pending`` frames ahead of the
  loop is refused (:class:`BacklogError`) instead of growing memory.

``max_frames`` bounds a session (the loop's memory check and a server's longest session): the
source ends by itself there. The prompt can change while it runs (:meth:`LiveSource.set_prompt`);
the loop applies a change at the stream's next chunk.

Every method is safe to call from another thread than the loop's.
"""

from __future__ import annotations

import bisect
import math
import threading
from typing import Any, Callable

import torch

from accelframe.errors import AccelframeError, ConfigError, IncompatibleError

DEFAULT_MAX_FRAMES = 16 * 3600  # an hour at 16 fps
DEFAULT_MAX_PENDING = 64  # pixel frames pushed ahead of the loop


class BacklogError(AccelframeError):
    """A live source was pushed more frames than it may hold ahead of the loop."""

    def __init__(self, stream: str, pending: int, limit: int) -> None:
        super().__init__(f"live stream {stream!r}: {pending} pushed frames are waiting for the loop, at most "
                         f"{limit} may (max_pending); push at the stream's frame rate")
        self.stream, self.pending, self.limit = stream, pending, limit


class LiveFrames:
    """The pushed frames of a video-to-video live source, indexed by their number in the stream.
    Frames before the lowest index asked for are dropped (the loop reads in order)."""

    def __init__(self, size: tuple[int, int], limit: int) -> None:
        self.size, self.limit = size, limit
        self._held: dict[int, torch.Tensor] = {}
        self.count = 0  # frames pushed so far
        self.released = 0  # frames below this index are dropped

    @property
    def shape(self) -> torch.Size:
        return torch.Size([self.limit, 3, *self.size])

    def dim(self) -> int:
        return 4

    def __len__(self) -> int:
        return self.limit

    def append(self, frames: torch.Tensor) -> None:
        for f in frames:
            self._held[self.count] = f
            self.count += 1

    def __getitem__(self, index: int | list[int]) -> torch.Tensor:
        ids = [index] if isinstance(index, int) else [int(k) for k in index]
        missing = [k for k in ids if k not in self._held]
        if missing:
            raise IndexError(f"frames {missing} of a live stream are not held (pushed {self.count}, "
                             f"released below {self.released})")
        out = torch.stack([self._held[k] for k in ids])
        low = min(ids) if ids else self.released
        for k in [k for k in self._held if k < low]:
            del self._held[k]
        self.released = max(self.released, low)
        return out[0] if isinstance(index, int) else out

    @property
    def pending(self) -> int:
        return self.count - self.released


class LiveSource:
    """One live stream; see the module docstring. ``size`` ``(H, W)`` makes it video-to-video."""

    def __init__(self, id: str, prompt: str, *, fps: float = 16.0, deadline_s: float | None = None,
                 seed: int = 0, size: tuple[int, int] | None = None, max_frames: int = DEFAULT_MAX_FRAMES,
                 max_pending: int = DEFAULT_MAX_PENDING, burst: int = 0) -> None:
        where = f"LiveSource {id!r}"
        if not isinstance(id, str) or not id:
            raise ConfigError("LiveSource", "id", id, "a non-empty string")
        _check_prompt(where, prompt)
        if isinstance(fps, bool) or not isinstance(fps, (int, float)) or not 0 < fps <= 1000:
            raise ConfigError(where, "fps", fps, "a number in (0, 1000]")
        if deadline_s is not None and (isinstance(deadline_s, bool) or not isinstance(deadline_s, (int, float))
                                       or not 0 < deadline_s < math.inf):
            raise ConfigError(where, "deadline_s", deadline_s, "None or a positive number of seconds")
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
            raise ConfigError(where, "seed", seed, "an int in [0, 2**63)")
        for name, value, lo in (("max_frames", max_frames, 1), ("max_pending", max_pending, 1),
                                ("burst", burst, 0)):
            if isinstance(value, bool) or not isinstance(value, int) or value < lo:
                raise ConfigError(where, name, value, f"an int >= {lo}")
        if size is not None and (len(tuple(size)) != 2 or any(
                isinstance(x, bool) or not isinstance(x, int) or x < 1 for x in size)):
            raise ConfigError(where, "size", size, "None (text-to-video) or (height, width) in pixels")
        self.id, self.fps, self.deadline_s, self.seed = id, float(fps), deadline_s, seed
        self.max_frames, self.max_pending, self.burst = max_frames, max_pending, min(burst, max_frames - 1)
        self._prompt, self.prompt_version = prompt, 0
        self.frames = None if size is None else LiveFrames((int(size[0]), int(size[1])), max_frames)
        self._arrivals: list[float] = []  # video-to-video: when each pushed frame arrived
        self.start_s: float | None = None  # set when the loop admits the stream
        # text-to-video: slot k >= k0 arrives at t0 + (k - k0) / fps for the last (k0, t0) with t0 <= now
        self._segments: list[tuple[int, float]] = []
        self._paused_at: int | None = None  # slots that had arrived when paused
        self._ended_at: float | None = None  # asked to end at this time of the loop's clock
        self._lock = threading.Lock()
        self._now: Callable[[], float] | None = None
        self.cannot_switch: str | None = None  # why the loop cannot switch this stream's prompt
        self._wake: Callable[[], None] = lambda: None

    # ---- the owner's side (a server's session) ------------------------------------------------

    @property
    def prompt(self) -> str:
        return self._prompt

    def set_prompt(self, prompt: str) -> None:
        """The prompt of the stream's next chunks (the loop switches at the next chunk it plans).
        An IncompatibleError when the loop's models cannot switch prompts."""
        _check_prompt(f"LiveSource {self.id!r}", prompt)
        if self.cannot_switch:
            raise IncompatibleError(f"live stream {self.id!r}: {self.cannot_switch}")
        with self._lock:
            self._prompt, self.prompt_version = prompt, self.prompt_version + 1
        self._wake()

    def push(self, frames: torch.Tensor) -> None:
        """Hand in the next input frames ``[F, 3, H, W]`` (or one ``[3, H, W]``) in [0, 1]
        (video-to-video); they arrive now. Refused once the source ended or ``max_pending`` frames
        wait."""
        where = f"LiveSource {self.id!r}"
        if self.frames is None:
            raise ConfigError(where, "frames", "pushed frames", "a source made with size=(H, W) (video-to-video)")
        if isinstance(frames, torch.Tensor) and frames.dim() == 3:
            frames = frames[None]
        h, w = self.frames.size
        if not isinstance(frames, torch.Tensor) or frames.dim() != 4 or tuple(frames.shape[1:]) != (3, h, w):
            raise ConfigError(where, "frames", tuple(getattr(frames, "shape", ())) or type(frames).__name__,
                              f"a tensor [F, 3, {h}, {w}]")
        with self._lock:
            if self.start_s is None or self._now is None:
                raise ConfigError(where, "push", "before the loop admitted the stream", "frames after admission")
            if self._ended_at is not None:
                raise ConfigError(where, "push", "after end()", "frames before the stream ends")
            room = min(self.max_pending - self.frames.pending, self.max_frames - self.frames.count)
            if frames.shape[0] > room and self.frames.count < self.max_frames:
                raise BacklogError(self.id, self.frames.pending + frames.shape[0], self.max_pending)
            now = self._now()
            frames = frames[:max(room, 0)].detach().float().cpu()
            self.frames.append(frames)
            self._arrivals += [now] * frames.shape[0]
        self._wake()

    def pause(self) -> None:
        """Text-to-video: no more slots arrive until :meth:`resume` (frames in flight still leave)."""
        with self._lock:
            if self.frames is None and self._paused_at is None and self._now is not None:
                self._paused_at = self._received(self._now())

    def resume(self) -> None:
        """Text-to-video: slots arrive again from now, one every ``1 / fps``."""
        with self._lock:
            if self._paused_at is not None and self._now is not None:
                self._segments.append((self._paused_at, self._now()))
                self._paused_at = None
        self._wake()

    @property
    def paused(self) -> bool:
        return self._paused_at is not None

    def end(self) -> None:
        """End the stream now: frames that arrived are still run and emitted, then it leaves."""
        with self._lock:
            if self._ended_at is None:
                self._ended_at = self._now() if self._now is not None else 0.0
        self._wake()

    # ---- the loop's side ------------------------------------------------------------------------

    def begin(self, now: float, clock_now: Callable[[], float], wake: Callable[[], None],
              cannot_switch: str | None = None) -> None:
        """The loop admitted the stream at ``now``; ``clock_now`` reads the loop's clock, ``wake``
        wakes the loop; ``cannot_switch``: why its models cannot switch prompts (None: they can)."""
        with self._lock:
            self.start_s, self._now, self._wake = now, clock_now, wake
            self.cannot_switch = cannot_switch
            self._segments = [(self.burst, now)]
            if self._ended_at is not None:  # ended before admission
                self._ended_at = now

    @property
    def total(self) -> int:
        return self.delivered if self._ended_at is not None else self.max_frames

    @property
    def delivered(self) -> int:
        """Pixel frames the stream has or will have: all it may hold until it ends, then what arrived."""
        with self._lock:
            if self._ended_at is None:
                return self.max_frames
            if self.frames is not None:
                return self.frames.count
            return self._received(self._ended_at)

    @property
    def stalled(self) -> bool:
        return False

    def _slots(self, now: float) -> int:
        """Text-to-video slots arrived by ``now``, pauses aside (the lock held)."""
        seg = [(k0, t0) for k0, t0 in self._segments if t0 <= now + 1e-9]
        if not seg:
            return 0
        k0, t0 = seg[-1]
        return min(self.max_frames, k0 + int(math.floor((now - t0) * self.fps + 1e-9)) + 1)

    def _received(self, now: float) -> int:
        """Text-to-video slots arrived by ``now`` (the lock held)."""
        n = self._slots(now)
        return n if self._paused_at is None else min(n, self._paused_at)

    def arrival_s(self, k: int) -> float:
        if self.frames is None:
            with self._lock:
                if not self._segments:
                    return 0.0
                k0, t0 = max(((a, t) for a, t in self._segments if a <= k), default=self._segments[0])
                return t0 + max(k - k0, 0) / self.fps
        start = self.start_s or 0.0
        with self._lock:
            if k < len(self._arrivals):
                return self._arrivals[k]
            last = self._arrivals[-1] if self._arrivals else start
            return last + (k - len(self._arrivals) + 1) / self.fps  # not pushed yet: expected

    def received(self, now: float) -> int:
        with self._lock:
            if self.frames is None:
                n = self._received(now)
                return n if self._ended_at is None else min(n, self._received(self._ended_at))
            return bisect.bisect_right(self._arrivals, now + 1e-9)

    def end_known_s(self) -> float:
        """When the loop learns the stream's length: when it ended (or at its last possible frame)."""
        with self._lock:
            if self._ended_at is not None:
                return self._ended_at
        if self.frames is None and self.start_s is not None:
            return self.arrival_s(self.max_frames - 1)
        return math.inf

    def next_arrival_s(self, now: float) -> float | None:
        """When the next frame arrives, if the loop can know it (a text-to-video slot, not paused)."""
        if self.frames is not None or self._ended_at is not None or self._paused_at is not None:
            return None
        got = self.received(now)
        return self.arrival_s(got) if got < self.max_frames else None


def _check_prompt(where: str, prompt: Any) -> None:
    if not (isinstance(prompt, str) and prompt.strip()):
        raise ConfigError(where, "prompt", prompt, "a non-empty string")


__all__ = ["BacklogError", "LiveFrames", "LiveSource"]
