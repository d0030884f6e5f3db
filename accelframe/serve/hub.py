"""The sessions of a server: one live stream loop in its own thread, one stream per session.

:class:`Hub` owns the pipeline and a :class:`~accelframe.streaming.loop.StreamLoop` run with
``live=True`` on a worker thread. :meth:`Hub.open` makes a :class:`Session` (a
:class:`~accelframe.streaming.live.LiveSource` plus what the client is sent) and asks the loop to
admit it: refused when ``max_sessions`` run already, when the stream does not fit, or when the batch
policies (``slo-batch``) say the running sessions would miss their deadlines.

With ``record_dir`` every session is also written to an mp4 there as it runs
(``<UTC date-time>-<session>.mp4``, never over an existing file), finalised when the session ends,
also when the server shuts down.

Frames leave the loop thread into each session's :class:`Outbox`, a bounded queue: a client that
reads slower than the frames come loses the oldest frames not yet sent, counted in its metrics,
and never holds the loop or the sessions beside it. Nothing here knows about sockets: the ASGI app
(:mod:`accelframe.serve.app`) reads the outboxes.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import deque
from concurrent.futures import Future
from typing import Any, Callable

import torch

from accelframe import adapter as caps
from accelframe.errors import ConfigError
from accelframe.streaming.live import LiveSource
from accelframe.streaming.loop import AdmissionRefused, StreamLoop
from accelframe.streaming.source import FrameMap, RealClock

OUTBOX_FRAMES = 32  # frames kept for a slow client before the oldest are dropped
LATENCY_WINDOW = 256  # latest frames the latency percentiles are taken over


class Outbox:
    """Frames waiting for a client: ``put`` from the loop's thread (the oldest dropped when full),
    ``take`` from the sender's. ``notify`` is called after each put (a server wakes its sender)."""

    def __init__(self, limit: int = OUTBOX_FRAMES) -> None:
        self.limit = limit
        self._items: deque[tuple[int, torch.Tensor]] = deque()
        self._lock = threading.Lock()
        self.dropped = 0
        self.closed = False
        self.notify: Callable[[], None] = lambda: None

    def put(self, index: int, frame: torch.Tensor) -> None:
        with self._lock:
            self._items.append((index, frame))
            while len(self._items) > self.limit:
                self._items.popleft()
                self.dropped += 1
        self.notify()

    def take(self) -> list[tuple[int, torch.Tensor]]:
        with self._lock:
            items, self._items = list(self._items), deque()
        return items

    def close(self) -> None:
        self.closed = True
        self.notify()


class Session:
    """One client's stream: its source, its outbox and its metrics (pixel frames, seconds)."""

    def __init__(self, source: LiveSource, opened_s: float, recorder: Any = None) -> None:
        self.source = source
        self.recorder = recorder  # an Mp4Sink writing the session, or None
        self.id = source.id
        self.outbox = Outbox()
        self.opened_s = opened_s  # on the hub's clock
        self.frames = 0  # frames emitted
        self.first_s: float | None = None  # when the first frame left the loop
        self.last_s: float | None = None
        self.latency = deque(maxlen=LATENCY_WINDOW)  # seconds from arrival to emission
        self.misses = 0
        self.summary: dict[str, Any] | None = None  # the loop's, once the session ended
        self.batch_streams: deque[int] = deque(maxlen=64)  # streams in each of its latest batches
        self.ended = threading.Event()

    def emitted(self, frames: torch.Tensor, now: float) -> None:
        """The loop emitted ``frames [F, 3, H, W]`` of this session (the loop's thread)."""
        deadline = self.source.deadline_s
        if self.recorder is not None:
            self.recorder.write(self.id, frames)
        for f in frames:
            lat = now - self.source.arrival_s(self.frames)
            self.latency.append(lat)
            self.misses += deadline is not None and lat > deadline + 1e-9
            self.outbox.put(self.frames, f)
            self.frames += 1
        self.first_s = now if self.first_s is None else self.first_s
        self.last_s = now

    def metrics(self) -> dict[str, Any]:
        lat = sorted(self.latency)
        span = (self.last_s - self.first_s) if self.first_s is not None and self.last_s is not None else 0.0
        return {
            "session": self.id, "prompt": self.source.prompt, "frames": self.frames,
            "fps": (self.frames - 1) / span if span > 0 else None,
            "ttff_s": None if self.first_s is None else self.first_s - self.opened_s,
            "latency_p50_ms": 1000 * lat[len(lat) // 2] if lat else None,
            "latency_p95_ms": 1000 * lat[min(len(lat) - 1, int(0.95 * len(lat)))] if lat else None,
            "deadline_misses": self.misses,
            "deadline_miss_rate": self.misses / self.frames if self.frames else 0.0,
            "dropped_frames": self.outbox.dropped, "paused": self.source.paused,
        }


class Hub:
    """The server's sessions on one pipeline (see the module docstring). ``fps`` and ``deadline_s``
    are every session's; ``stream_batch`` runs the sessions' chunks as rows of batched forwards."""

    def __init__(self, pipe: Any, *, max_sessions: int = 4, fps: float = 16.0, deadline_s: float = 1.5,
                 stream_batch: bool = False, max_session_s: float = 3600.0, clock: Any = None,
                 record_dir: str | None = None, record_upscale: int = 4, prompt_recache: bool = True,
                 on_batch: Callable[[dict[str, Any]], None] | None = None) -> None:
        if isinstance(max_sessions, bool) or not isinstance(max_sessions, int) or max_sessions < 1:
            raise ConfigError("Hub", "max_sessions", max_sessions, "an int >= 1")
        self.pipe, self.max_sessions, self.fps, self.deadline_s = pipe, max_sessions, fps, deadline_s
        self.record_dir, self.record_upscale = record_dir, record_upscale
        self.clock = clock if clock is not None else RealClock()
        self.fmap = FrameMap.of(pipe.adapter)
        self.pixel_size = tuple(caps.pixel_size(pipe.adapter))  # (H, W) of the frames in and out
        self.sessions: dict[str, Session] = {}
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._on_batch = on_batch
        self.batches: deque[dict[str, Any]] = deque(maxlen=64)  # the latest batches, for metrics
        self.error: BaseException | None = None
        self.loop = StreamLoop(pipe, [], live=True, clock=self.clock, keep_frames=False, stream_batch=stream_batch,
                               on_frames=self._frames, on_end=self._ended, on_batch=self._batch,
                               prompt_recache=prompt_recache)
        self.max_frames = max(int(max_session_s * fps), 1)
        positions = caps.limits_of(pipe.adapter).max_frames
        if positions is not None and not self.loop.kv_managed:  # no rolling cache: sessions end there
            self.max_frames = min(self.max_frames, self.fmap.pixels(positions))
        self._thread: threading.Thread | None = None

    # ---- lifecycle ------------------------------------------------------------------------------

    def start(self) -> Hub:
        self._thread = threading.Thread(target=self._run, name="accelframe-loop", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            self.loop.run()
        except BaseException as exc:  # the loop failed: every session ends, the server reports it
            self.error = exc
            for s in list(self.sessions.values()):
                if s.recorder is not None:
                    s.recorder.close()  # what was emitted stays playable
                s.outbox.close()
                s.ended.set()

    def shutdown(self, timeout: float = 30.0) -> None:
        """End every session (what is in flight is still emitted) and stop the loop."""
        self.loop.stop()
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # ---- sessions -------------------------------------------------------------------------------

    def first_chunk_frames(self) -> int:
        """Pixel frames of a stream's first unit (a text session's first slots arrive at once)."""
        return self.fmap.pixels(self.pipe.adapter.unit_frames)

    def open(self, prompt: str, *, seed: int = 0, video: bool = False) -> Future:
        """A new session (text-to-video, or video-to-video fed with :meth:`Session.source.push`).
        The future resolves to the :class:`Session` once the loop admitted it, or raises
        :class:`AdmissionRefused` (or the ConfigError of a bad prompt or seed)."""
        fut: Future = Future()
        with self._lock:
            if not self.running:
                fut.set_exception(AdmissionRefused("?", "the server's stream loop is not running"
                                                   + (f" ({self.error!r})" if self.error else "")))
                return fut
            if len(self.sessions) >= self.max_sessions:
                fut.set_exception(AdmissionRefused("?", f"{len(self.sessions)} sessions run, the most this "
                                                   f"server takes (--max-sessions {self.max_sessions})"))
                return fut
            sid = f"s{next(self._ids)}"
            size = self.pixel_size if video else None
            try:
                burst = 0 if video else self.first_chunk_frames() - 1
                source = LiveSource(sid, prompt, fps=self.fps, deadline_s=self.deadline_s, seed=seed, size=size,
                                    max_frames=self.max_frames, burst=burst)
                recorder = self._recorder(sid)
            except ConfigError as exc:
                fut.set_exception(exc)
                return fut
            session = Session(source, self.clock.now(), recorder)
            self.sessions[sid] = session  # counted against max_sessions while admission runs

        def admitted(f: Future) -> None:
            exc = f.exception()
            if exc is None:
                fut.set_result(session)
                return
            with self._lock:
                self.sessions.pop(sid, None)
            if recorder is not None:
                recorder.close()  # nothing was written: no file is left
            fut.set_exception(exc)
        self.loop.add(source).add_done_callback(admitted)
        return fut

    def _recorder(self, sid: str) -> Any:
        """The session's mp4 writer in ``record_dir`` (None without one); refuses an existing file."""
        if self.record_dir is None:
            return None
        from pathlib import Path

        from accelframe.outputs import check_output
        from accelframe.streaming.sinks import Mp4Sink

        stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
        path = Path(self.record_dir) / f"{stamp}-{sid}.mp4"
        check_output(path, owner="accelframe serve", field="--record", force=False, suffixes=(".mp4",))
        return Mp4Sink(path, self.fps, upscale_factor=self.record_upscale)

    def set_knobs(self, sid: str, policy: str, knobs: dict[str, Any]) -> dict[str, Any]:
        """A session's own values of a policy's live knobs (``StreamLoop.set_knobs``)."""
        return self.loop.set_knobs(sid, policy, **knobs)

    def close(self, sid: str) -> None:
        """End a session: frames in flight are still emitted, then it leaves the loop."""
        s = self.sessions.get(sid)
        if s is not None:
            s.source.end()

    def _frames(self, stream: str, frames: torch.Tensor) -> None:
        s = self.sessions.get(stream)
        if s is not None:
            s.emitted(frames, self.clock.now())

    def _ended(self, stream: str, summary: dict[str, Any]) -> None:
        with self._lock:
            s = self.sessions.pop(stream, None)
        if s is not None:
            s.summary = summary
            if s.recorder is not None:
                s.recorder.close()  # finalised and renamed into place
                s.summary["recording"] = str(s.recorder.path_for(stream))
            s.outbox.close()
            s.ended.set()

    def _batch(self, record: dict[str, Any]) -> None:
        for stream, _ in record["entries"]:
            s = self.sessions.get(stream)
            if s is not None:
                s.batch_streams.append(len(record["entries"]))
        self.batches.append({"t_s": record["t_s"], "streams": len(record["entries"]),
                             "rows": record.get("rows"), "latency_s": record["latency_s"]})
        if self._on_batch is not None:
            self._on_batch(record)

    # ---- what a page shows ----------------------------------------------------------------------

    def decisions(self) -> dict[str, Any]:
        """The server's decisions per level so far (every session together): step calls computed,
        cached and predicted, blocks accepted and regenerated, and the latest batch sizes."""
        stats = self.loop.stats
        calls = stats.calls.get("target", {})
        recent = list(self.batches)
        n = len(recent) or 1
        return {
            "step": {k: calls.get(k, 0) for k in ("computed", "cached", "predicted")},
            "block": {k: stats.blocks.get(k, 0) for k in ("accepted", "regenerated")},
            "batch": {"batches": len(recent),
                      "mean_streams": sum(b["streams"] for b in recent) / n if recent else None,
                      "mean_latency_ms": 1000 * sum(b["latency_s"] for b in recent) / n if recent else None},
        }

    def session_metrics(self, s: Session) -> dict[str, Any]:
        """A session's metrics with its own decisions: step calls computed / cached / predicted,
        blocks accepted / regenerated, and the streams in the batches its chunks ran in."""
        made = self.loop.decisions(s.id) or (s.summary or {}).get("decisions")
        sizes = list(s.batch_streams)
        return {**s.metrics(), "decisions": made,
                "batch_streams": sum(sizes) / len(sizes) if sizes else None}

    def metrics(self) -> dict[str, Any]:
        return {"t_s": self.clock.now(),
                "sessions": [self.session_metrics(s) for s in list(self.sessions.values())],
                "decisions": self.decisions(), "max_sessions": self.max_sessions}


__all__ = ["Hub", "Outbox", "Session"]
