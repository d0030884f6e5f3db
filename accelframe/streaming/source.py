"""Where a stream's frames come from and when: sources, the pixel-to-latent frame map, clocks.

A :class:`StreamSource` delivers pixel frames (video-to-video) or only time slots
(text-to-video): frame ``k`` arrives at ``start_s + k / fps`` or at ``arrivals_s[k]``. A source
whose next frame does not come within ``stall_timeout_s`` of the last one is treated as ended
there: the stream ends cleanly with what arrived (frames after the stall are never delivered).

The runtime's hooks count *latent* frames. :class:`FrameMap` maps them to pixel frames with the
adapter's ``pixel_frames`` (a causal video VAE makes 1 pixel frame from the first latent frame and
4 from every later one; an adapter without it maps one to one). A stream whose pixel frames do not
fill a whole number of units is padded with its last frame, and the padding is never emitted.
"""

from __future__ import annotations

import bisect
import math
import time
import warnings
from typing import Any

import attrs
import torch

from accelframe import adapter as caps
from accelframe import validators as v
from accelframe.errors import AccelframeError, ConfigError


class CorruptFrameWarning(UserWarning):
    """An input frame was not finite or not in [0, 1]; the last good frame was held in its place."""


class CorruptFrameError(AccelframeError):
    """An input frame was not finite or not in [0, 1] and the stream was told to fail on it."""

    def __init__(self, stream: str, frame: int, problem: str) -> None:
        super().__init__(f"stream {stream!r}: input frame {frame} is corrupt ({problem}); "
                         "on_corrupt='hold' would hold the last good frame instead")
        self.stream, self.frame, self.problem = stream, frame, problem


class LoopedFrames:
    """A clip played in a loop, ``total`` frames long, without materialising them: a source for
    long soaks. Indexing with an int or a list of ints gives the clip's frames modulo its length."""

    def __init__(self, clip: torch.Tensor, total: int) -> None:
        if not isinstance(clip, torch.Tensor) or clip.dim() != 4 or clip.shape[1] != 3 or clip.shape[0] < 1:
            raise ConfigError("LoopedFrames", "clip", getattr(clip, "shape", type(clip)), "a tensor [F, 3, H, W]")
        if not isinstance(total, int) or total < 1:
            raise ConfigError("LoopedFrames", "total", total, "a positive int")
        self.clip, self.total = clip, total
        self.shape = torch.Size([total, *clip.shape[1:]])

    def dim(self) -> int:
        return 4

    def __len__(self) -> int:
        return self.total

    def __getitem__(self, index: int | list[int]) -> torch.Tensor:
        n = self.clip.shape[0]
        if isinstance(index, int):
            return self.clip[index % n]
        return self.clip[[i % n for i in index]]


class VideoFrames:
    """A video file's frames ``[F, 3, H, W]`` in [0, 1], resized to ``size`` (area filter), decoded
    with PyAV as they are asked for: a stream consumes them in order, so only the frames of the chunk
    being read are decoded and held, never the whole file (a 1080p hour stays on disk). Indexing
    with an int or a list of ints gives frames as a tensor; asking for a frame before the ones held
    decodes the file again from its start. ``limit`` keeps the first frames only.

    The frame count is read without decoding (the video's packets are counted). ``decoded`` counts
    the frames decoded so far."""

    def __init__(self, path: str, size: tuple[int, int], limit: int | None = None) -> None:
        try:
            import av
        except ImportError:
            raise ConfigError("VideoFrames", "path", str(path),
                              "a tensor source, or install PyAV (pip install av) to read video files") from None
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
            raise ConfigError("VideoFrames", "limit", limit, "None or a positive int")
        h, w = size
        self.path, self.size, self._av = str(path), (int(h), int(w)), av
        n = 0
        try:
            with av.open(self.path) as container:
                if not container.streams.video:
                    raise ConfigError("VideoFrames", "path", self.path, "a file with a video stream")
                for packet in container.demux(container.streams.video[0]):
                    n += packet.size > 0
                    if limit is not None and n >= limit:
                        break
        except av.error.FFmpegError as exc:
            raise ConfigError("VideoFrames", "path", self.path, f"a video PyAV can read ({exc})") from None
        if n == 0:
            raise ConfigError("VideoFrames", "path", self.path, "a video with at least one frame")
        self.total = n
        self.shape = torch.Size([n, 3, *self.size])
        self.decoded = 0
        self._container: Any = None
        self._frames: Any = None  # the decoder's frame iterator
        self._next = 0  # index of the frame the decoder yields next
        self._held: dict[int, torch.Tensor] = {}  # decoded, resized frames of the last chunk read
        self._last_raw: torch.Tensor | None = None  # the last frame decoded, before resizing

    def dim(self) -> int:
        return 4

    def __len__(self) -> int:
        return self.total

    def close(self) -> None:
        if self._container is not None:
            self._container.close()
        self._container, self._frames, self._next = None, None, 0

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown
            pass

    def _restart(self) -> None:
        self.close()
        self._container = self._av.open(self.path)
        self._frames = iter(self._container.decode(video=0))
        self._last_raw = None

    def _decode_to(self, first: int, last: int, keep_from: int) -> None:
        """Decode frames up to ``last``, keeping those from ``first`` (and the held ones from
        ``keep_from``); frames passed before are decoded again from the file's start."""
        if self._frames is None or first < self._next:
            self._restart()
        self._held = {k: f for k, f in self._held.items() if k >= keep_from}
        raw, ids = [], []
        while self._next <= last:
            frame = next(self._frames, None) if self._frames is not None else None
            if frame is not None:
                self.decoded += 1
                self._last_raw = torch.from_numpy(frame.to_ndarray(format="rgb24"))  # [H, W, 3] uint8
            elif self._last_raw is None:
                raise ConfigError("VideoFrames", "path", self.path, "a video whose first frame can be decoded")
            # (a decoder that gives fewer frames than the file has packets: the last frame is held)
            if self._next >= first:
                raw.append(self._last_raw)
                ids.append(self._next)
            self._next += 1
        if raw:
            video = torch.stack(raw).permute(0, 3, 1, 2).float() / 255.0  # [n, 3, H, W]
            if tuple(video.shape[2:]) != self.size:
                video = torch.nn.functional.interpolate(video, size=self.size, mode="area").clamp(0.0, 1.0)
            self._held.update(zip(ids, video))

    def __getitem__(self, index: int | list[int]) -> torch.Tensor:
        ids = [index] if isinstance(index, int) else [int(k) for k in index]
        ids = [k + self.total if k < 0 else k for k in ids]
        bad = [k for k in ids if not 0 <= k < self.total]
        if bad:
            raise IndexError(f"frames {bad} of a video of {self.total} frames")
        if not ids:
            return torch.empty(0, 3, *self.size)
        missing = [k for k in ids if k not in self._held]
        if missing:
            self._decode_to(min(missing), max(missing), min(ids))
        out = torch.stack([self._held[k] for k in ids])
        return out[0] if isinstance(index, int) else out


def _arrivals(inst: Any, attribute: Any, value: Any) -> None:
    if value is None:
        return
    if any(not isinstance(t, (int, float)) or not math.isfinite(t) for t in value) or any(
            b < a for a, b in zip(value, value[1:])):
        raise ConfigError("StreamSource", attribute.name, value, "finite, non-decreasing arrival times")


def _prompt(inst: Any, attribute: Any, value: Any) -> None:
    if not (isinstance(value, str) and value.strip()):  # as a Request's prompts
        raise ConfigError("StreamSource", attribute.name, value, "a non-empty string")


_prompt.allowed = "a non-empty string"  # type: ignore[attr-defined]


@attrs.frozen(kw_only=True, eq=False)
class StreamSource:
    """One input stream (see the module docstring). ``frames`` ``[F, 3, H, W]`` in [0, 1] for
    video-to-video, or None and ``num_frames`` (pixel frames) for text-to-video."""

    id: str = attrs.field(validator=v.instance_of(str, "a string"))
    prompt: str = attrs.field(validator=_prompt)
    frames: torch.Tensor | None = attrs.field(default=None, repr=False)
    num_frames: int | None = None
    fps: float = attrs.field(default=16.0, validator=v.number_in(0.0, 1e6, lo_open=True))
    start_s: float = attrs.field(default=0.0, validator=v.number_in(0.0))
    deadline_s: float | None = None  # per-frame latency budget from arrival to emission
    seed: int = attrs.field(default=0, validator=v.number_in(0, 2**63 - 1, integer=True))
    arrivals_s: tuple[float, ...] | None = attrs.field(
        default=None, converter=attrs.converters.optional(tuple), validator=_arrivals)
    stall_timeout_s: float | None = attrs.field(
        default=None, validator=attrs.validators.optional(v.number_in(0.0, 1e9, lo_open=True)))

    def __attrs_post_init__(self) -> None:
        if self.frames is None and self.num_frames is None:
            raise ConfigError("StreamSource", "num_frames", None,
                              "a positive int when no input frames are given")
        if self.frames is not None and (not isinstance(self.frames, (torch.Tensor, LoopedFrames, VideoFrames))
                                        or self.frames.dim() != 4
                                        or self.frames.shape[1] != 3 or self.frames.shape[0] < 1):
            shape = tuple(self.frames.shape) if isinstance(self.frames, torch.Tensor) else type(self.frames)
            raise ConfigError("StreamSource", "frames", shape, "a tensor [F, 3, H, W] with F >= 1")
        if self.frames is None and (not isinstance(self.num_frames, int) or self.num_frames < 1):
            raise ConfigError("StreamSource", "num_frames", self.num_frames, "a positive int")
        if self.deadline_s is not None and not (isinstance(self.deadline_s, (int, float))
                                                and 0 < self.deadline_s < math.inf):
            raise ConfigError("StreamSource", "deadline_s", self.deadline_s, "a positive number of seconds")
        if self.arrivals_s is not None and len(self.arrivals_s) != self.total:
            raise ConfigError("StreamSource", "arrivals_s", f"{len(self.arrivals_s)} times",
                              f"one arrival time per frame ({self.total})")

    @property
    def total(self) -> int:
        """Pixel frames the source holds."""
        return int(self.frames.shape[0]) if self.frames is not None else int(self.num_frames or 0)

    def arrival_s(self, k: int) -> float:
        if self.arrivals_s is not None:
            return float(self.arrivals_s[min(k, self.total - 1)])
        return self.start_s + k / self.fps

    @property
    def delivered(self) -> int:
        """Pixel frames delivered before the source ended (a stall ends it early)."""
        if self.stall_timeout_s is None:
            return self.total
        if self.arrivals_s is None:  # frames 1 / fps apart: all of them, or the first only
            return 1 if self.total > 1 and 1.0 / self.fps > self.stall_timeout_s else self.total
        for k in range(1, self.total):
            if self.arrival_s(k) - self.arrival_s(k - 1) > self.stall_timeout_s:
                return k
        return self.total

    @property
    def stalled(self) -> bool:
        return self.delivered < self.total

    def end_known_s(self) -> float:
        """When the runtime learns how many frames the source delivers: at once for a source of
        known length, ``stall_timeout_s`` after the last delivered frame for one that may stall."""
        if self.stall_timeout_s is None:
            return -math.inf
        last = self.arrival_s(self.delivered - 1)
        return last + (self.stall_timeout_s if self.stalled else 0.0)

    def received(self, now: float) -> int:
        """Pixel frames arrived by ``now``."""
        n = self.delivered
        if self.arrivals_s is not None:
            return bisect.bisect_right(self.arrivals_s, now + 1e-9, 0, n)  # arrivals never decrease
        if now < self.start_s:
            return 0
        return min(n, int(math.floor((now - self.start_s) * self.fps + 1e-9)) + 1)


@attrs.frozen
class FrameMap:
    """Latent frames <-> pixel frames for one adapter; ``unit`` latent frames per unit."""

    unit: int
    ratio: int  # pixel frames per latent frame after the first
    first: int  # pixel frames of the first latent frame

    @classmethod
    def of(cls, adapter: Any) -> FrameMap:
        first = caps.pixel_frames(adapter, 1)  # one each without a temporally compressing VAE
        return cls(unit=adapter.unit_frames, ratio=caps.pixel_frames(adapter, 2) - first, first=first)

    def pixels(self, latents: int) -> int:
        """Pixel frames of the first ``latents`` latent frames."""
        return 0 if latents <= 0 else self.first + self.ratio * (latents - 1)

    def latents_total(self, pixel_frames: int) -> int:
        """Latent frames (whole units) that cover ``pixel_frames`` (closed form: a stream may be
        10^18 frames long)."""
        if pixel_frames <= 0:
            return 0
        if self.ratio < 1:
            raise ConfigError("FrameMap", "ratio", self.ratio, "pixel frames per latent frame >= 1")
        need = 1 + max(-(-(pixel_frames - self.first) // self.ratio), 0)  # pixels(need) >= pixel_frames
        return -(-need // self.unit) * self.unit

    def latents_complete(self, pixel_frames: int) -> int:
        """Latent frames whose pixel frames have all arrived."""
        if pixel_frames < self.first:
            return 0
        return 1 + (pixel_frames - self.first) // self.ratio


def check_frame(frame: torch.Tensor) -> str | None:
    """Why one input frame ``[3, H, W]`` is corrupt, or None."""
    if not torch.isfinite(frame).all():
        return "non-finite values"
    lo, hi = float(frame.min()), float(frame.max())
    if lo < -1e-3 or hi > 1 + 1e-3:
        return f"values in [{lo:.3g}, {hi:.3g}], outside [0, 1]"
    return None


class FrameGuard:
    """Checks a stream's input frames as they are consumed: ``on_corrupt="hold"`` replaces a corrupt
    frame by the last good one (mid grey before any), warns once per stream and counts it;
    ``"error"`` raises :class:`CorruptFrameError`."""

    def __init__(self, stream: str, on_corrupt: str) -> None:
        self.stream, self.on_corrupt = stream, on_corrupt
        self.last_good: torch.Tensor | None = None
        self.corrupt: list[int] = []

    def clean(self, frames: torch.Tensor, first: int) -> torch.Tensor:
        out = []
        for i, frame in enumerate(frames):  # each [3, H, W]
            problem = check_frame(frame)
            if problem is None:
                self.last_good = frame
                out.append(frame)
                continue
            if self.on_corrupt == "error":
                raise CorruptFrameError(self.stream, first + i, problem)
            if not self.corrupt:
                warnings.warn(CorruptFrameWarning(
                    f"stream {self.stream!r}: input frame {first + i} is corrupt ({problem}); holding the "
                    "last good frame (counted in the run's corrupt_frames)"), stacklevel=4)
            self.corrupt.append(first + i)
            out.append(self.last_good if self.last_good is not None else torch.full_like(frame, 0.5))
        return torch.stack(out)  # [F, 3, H, W]


class VirtualClock:
    """A clock that moves only when told: deterministic streaming runs for tests."""

    def __init__(self, start: float = 0.0, batch_cost_s: float = 0.0) -> None:
        self.t = start
        self.batch_cost_s = batch_cost_s

    def now(self) -> float:
        return self.t

    def wait_until(self, t: float) -> None:
        self.t = max(self.t, t)

    def spent(self, seconds: float) -> float:
        """A batch ran (``seconds`` of real time): the clock moves by its virtual cost, which is the
        latency the runtime reports and the batch policies observe."""
        self.t += self.batch_cost_s
        return self.batch_cost_s


class RealClock:
    """Wall-clock time since the run started."""

    def __init__(self) -> None:
        self.t0 = time.perf_counter()

    def now(self) -> float:
        return time.perf_counter() - self.t0

    def wait_until(self, t: float) -> None:
        delay = t - self.now()
        if delay > 0:
            time.sleep(delay)

    def spent(self, seconds: float) -> float:
        return seconds


__all__ = ["CorruptFrameError", "CorruptFrameWarning", "FrameGuard", "FrameMap", "LoopedFrames", "RealClock",
           "StreamSource", "VideoFrames", "VirtualClock", "check_frame"]
