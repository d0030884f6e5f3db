"""The stream loop: input frames arrive over time; batch policies decide what runs when.

Each stream has its own adapter states (target, drafter; KV, encode and decode caches) and a
:class:`~accelframe.streaming.source.StreamSource`. The loop asks ``accelframe_batch_plan`` which
streams run how many frames, asks ``accelframe_kv_manage`` and ``accelframe_noise_level`` before
each chunk, runs the chunk (video-to-video when the source has frames: encode with the adapter's
streaming encoder, noise to the policy's level, denoise; text-to-video otherwise), emits its frames
in order to the callbacks and sinks, and reports the measured latency to
``accelframe_batch_observe``. The hooks count latent frames; sources, deadlines and the reported
metrics count pixel frames (see :class:`~accelframe.streaming.source.FrameMap`).

Two ways to run a batch:

- **sequential** (default): each entry's chunk runs through the pipeline's engine, one after the
  other, with every step and block policy of the pipeline (SCOPE, SDVG) applying;
- **stream batch** (``stream_batch=True``): :mod:`accelframe.streaming.batch` keeps each stream's
  chunks in flight at staggered steps; every micro-step runs one row per chunk on the step executor
  (one batched forward per model over the rows of every stream in the batch), with the step policies
  deciding row by row and, with a drafter, the block policies judging each drafted chunk.

**Pipeline parallelism** (``ranks=R``, with the stream batch): the DiT's blocks are split over
``R`` torch.distributed ranks in a ring (StreamDiffusionV2 section 4.2), launched with ``torchrun
--nproc-per-node R`` (or ``accelframe stream --ranks R``): every rank runs the same program, builds
the same pipeline and calls ``pipe.stream(..., ranks=R)``. Rank 0 runs this loop (sources, batch,
KV and noise hooks, step decisions, commits' and rows' first blocks, decoding, emission); the
other ranks hold the stream's K/V of their blocks and run what rank 0 sends them, and their
``pipe.stream`` returns None once rank 0 ends. The stream batch runs ``R`` lanes
(:mod:`accelframe.streaming.batch`), so ``R`` micro-steps' forwards are in flight at once; with
``lanes=R`` and one rank the same schedule runs in one process (the ring's reference). The adapter
provides the ring (:class:`accelframe.adapter.StageRing`).

**Live** (``live=True``): streams join and leave while the loop runs (a server's sessions).
:meth:`StreamLoop.add` queues a :class:`~accelframe.streaming.live.LiveSource` (or a
``StreamSource``); the loop admits it before its next plan (the same checks as at the start, the
memory of the streams beside it, and the batch policies' ``accelframe_batch_admit``) or refuses it
(:class:`AdmissionRefused`, through the future ``add`` returns). A stream that has ended and
emitted everything leaves at once: its ``generation_end`` hooks run and ``on_end`` gets its summary.
The loop waits for work when no stream is left and returns once :meth:`StreamLoop.stop` was called
and every stream has drained.

A :class:`VirtualClock` makes runs deterministic for tests; :class:`RealClock` waits for real.
"""

from __future__ import annotations

import math
import statistics
import threading
import time
from collections import deque
from concurrent.futures import Future
from typing import Any, Callable, Sequence

import attrs
import torch

from accelframe import adapter as caps
from accelframe import fallback
from accelframe.executor import Executor, add_decisions, decisions, merge_decisions
from accelframe.errors import AccelframeError, ConfigError, IncompatibleError
from accelframe.limits import check_fixed, check_streams
from accelframe.plugins import EXACT, HookRaised
from accelframe.streaming.batch import Chunk, StreamBatch
from accelframe.streaming.source import (
    FrameGuard,
    FrameMap,
    RealClock,
    StreamSource,
)
from accelframe.trace import Stats, Trace
from accelframe.types import (
    BatchContext,
    BatchPlan,
    GenerationInfo,
    KVAction,
    KVContext,
    NoiseContext,
    Request,
    StreamStatus,
    finite_sigma,
)

# a chunk decoded on a peer rank is emitted when its pixels are back, at the latest this many times
# ``lanes`` micro-steps after it finished (then rank 0 waits for them): slack for a burst of decodes
EMIT_LAG = 4
# a live loop with nothing to wait for looks again after this long (seconds of real time)
IDLE_POLL_S = 0.25
# a stream's noise depends on its source only (seed, units), never on the streams beside it: every
# stream draws as the stream of index 0 of the engine's generators
NOISE_STREAM = 0


class AdmissionRefused(AccelframeError):
    """A live loop refused a stream: it does not fit (a ConfigError, memory) or the batch policies
    say the streams beside it would miss their deadlines. ``reason`` says which."""

    def __init__(self, stream: str, reason: str, by: str = "") -> None:
        super().__init__(f"stream {stream!r} refused: {reason}")
        self.stream, self.reason, self.by = stream, reason, by


@attrs.define(eq=False)
class StreamOutput:
    """What one stream emitted: pixel frames in order (``chunks``, unless the loop was told not to
    keep them) and, per emitted pixel frame, when it arrived and when it was emitted."""

    id: str
    chunks: list[torch.Tensor] = attrs.field(factory=list)  # each [F_chunk, 3, H, W]
    emit_s: list[float] = attrs.field(factory=list)
    arrival_s: list[float] = attrs.field(factory=list)

    @property
    def frames(self) -> torch.Tensor | None:
        return torch.cat(self.chunks, dim=0) if self.chunks else None

    def summary(self, deadline_s: float | None) -> dict[str, Any]:
        """Time to first frame, output fps, jitter, deadline misses (pixel frames).

        ``fps``: frames emitted over the time from the first frame's arrival to the last emission.
        ``jitter_ms``: the standard deviation of the per-frame latency (emission minus arrival)."""
        lat = [e - a for e, a in zip(self.emit_s, self.arrival_s)]
        misses = sum(x > deadline_s + 1e-9 for x in lat) if deadline_s is not None else 0
        span = (self.emit_s[-1] - self.arrival_s[0]) if lat else 0.0
        return {
            "frames": len(lat),
            "ttff_s": lat[0] if lat else None,
            "fps": len(lat) / span if lat and span > 0 else None,
            "jitter_ms": 1000.0 * statistics.pstdev(lat) if len(lat) > 1 else 0.0 if lat else None,
            "mean_latency_s": sum(lat) / len(lat) if lat else None,
            "max_latency_s": max(lat) if lat else None,
            "deadline_miss_rate": misses / len(lat) if lat and deadline_s is not None else 0.0,
        }


@attrs.frozen(kw_only=True, eq=False)
class StreamRun:
    """The result of a streaming run."""

    outputs: dict[str, StreamOutput]
    batches: list[dict[str, Any]]
    trace: Trace
    stats: Stats
    sources: tuple[StreamSource, ...]
    corrupt: dict[str, list[int]] = attrs.field(factory=dict)
    ended: dict[str, str] = attrs.field(factory=dict)  # stream -> "complete" or "stalled after N frames"

    def to_json(self) -> dict[str, Any]:
        streams = {}
        for s in self.sources:
            streams[s.id] = {**self.outputs[s.id].summary(s.deadline_s),
                             "corrupt_frames": len(self.corrupt.get(s.id, [])),
                             "ended": self.ended.get(s.id, "")}
        return {"streams": streams, "batches": self.batches, "stats": self.stats.to_dict(),
                "trace": self.trace.events}


SINK_METHODS = ("write", "close")


@attrs.define(eq=False, kw_only=True)
class _StreamState:
    """What the loop keeps of one stream from chunk to chunk (latent frame counts)."""

    source: StreamSource
    output: StreamOutput
    guard: FrameGuard  # replaces or refuses corrupt input frames
    generation: int  # its generation number (GenerationInfo), one per stream
    consumed: int = 0  # latent frames handed to the model
    emitted: int = 0  # latent frames emitted
    target: Any = None  # the target adapter's state (KV, caches); None before the first chunk
    drafter: Any = None  # the drafter's, in a drafted pipeline
    encode: Any = None  # the adapter's streaming encode cache (video-to-video)
    previous: torch.Tensor | None = None  # the last input pixel frame of the previous chunk, [3, H, W]
    prompt_version: int = 0  # the source's prompt version its states are conditioned on (live)
    kv_at: int | None = None  # the next frame its KV cache was last managed for (accelframe_kv_manage)
    decisions: dict[str, Any] = attrs.field(factory=decisions)  # its sequential chunks' decisions
    rows: list[Chunk] = attrs.field(factory=list)  # chunks in flight, oldest first (stream batch)
    # finished chunks not yet emitted, in order: (micro-step, span, pixels or a remote decode's handle)
    out: list[tuple[int, Any, Any]] = attrs.field(factory=list)


class StreamLoop:
    """Runs streams through a pipeline; see the module docstring.

    ``on_frames(stream, frames)`` and every sink's ``write(stream, frames)`` get each emitted chunk
    ``[F, 3, H, W]``; sinks are closed (flushed) when the run ends, also after an error.
    ``keep_frames=False`` keeps no output frames in the result (long soaks). ``on_corrupt``:
    ``"hold"`` (a corrupt input frame is replaced by the last good one, warned and counted) or
    ``"error"`` (:class:`~accelframe.streaming.source.CorruptFrameError`). ``drain_when_idle`` (stream
    batch only): when the plan waits and chunks are in flight, advance them instead of idling, so
    at a light load a chunk leaves as soon as its steps are done rather than n arrivals later."""

    def __init__(self, pipe: Any, sources: Sequence[StreamSource], *, clock: Any = None,
                 default_sigma: float = 0.7,
                 on_frames: Callable[[str, torch.Tensor], None] | None = None,
                 sinks: Sequence[Any] = (), stream_batch: bool = False, keep_frames: bool = True,
                 on_corrupt: str = "hold",
                 on_batch: Callable[[dict[str, Any]], None] | None = None,
                 drain_when_idle: bool = True, ranks: int = 1, lanes: int | None = None,
                 partition: Sequence[int] | None = None, rank_timeout_s: float = 60.0,
                 decode_rank: int | None = None, rebalance: Any = True, live: bool = False,
                 on_end: Callable[[str, dict[str, Any]], None] | None = None,
                 prompt_recache: bool = True) -> None:
        self.pipe = pipe
        self.adapter = pipe.adapter
        self.live = live
        self.on_end = on_end
        self.sources = list(sources)  # the streams in the loop now (live: they come and go)
        self._by_id = {s.id: s for s in self.sources}
        self._adds: deque[tuple[Any, Future]] = deque()  # live: streams waiting for admission
        self._wake = threading.Event()  # live: set when a stream is added, fed, ended or the loop stopped
        self._stopping = False
        self.retired: dict[str, dict[str, Any]] = {}  # live: summaries of the streams that left
        self.prompt_recache = prompt_recache  # a prompt switch recomputes the cached context (PromptSwitch)
        self.switches: deque[dict[str, Any]] = deque(maxlen=256)  # the latest prompt switches
        self._state: dict[str, _StreamState] = {}  # by stream id, made when the run starts
        self.clock = clock if clock is not None else RealClock()
        self.default_sigma = default_sigma
        self.strict = pipe.strict
        self.on_frames = on_frames
        self.on_batch = on_batch
        self.sinks = tuple(sinks)
        self.stream_batch = stream_batch
        self.drain_when_idle = drain_when_idle
        self.keep_frames = keep_frames
        self.on_corrupt = on_corrupt
        self.ranks = ranks
        self.lanes = ranks if lanes is None else lanes
        self.partition = None if partition is None else tuple(partition)
        self.rank_timeout_s = rank_timeout_s
        self.decode_rank = decode_rank
        self.rebalance = rebalance
        self.ring: Any = None  # the ring while a run on ranks is under way
        self.fmap = FrameMap.of(self.adapter)
        self.trace = Trace(enabled=pipe.trace)
        self.stats = Stats(adapters={"target": pipe.adapter_name, "drafter": pipe.drafter_name})
        self.warned: set[tuple[str, str]] = set()  # (plugin, hook) pairs warned about
        self._validate()
        # the stream batch's step executor: it records into the run's trace and statistics
        self._batch = StreamBatch(
            Executor(pipe.hooks, trace=self.trace, stats=self.stats, strict=pipe.strict,
                     max_reuse=pipe.max_reuse, stream=NOISE_STREAM, warned=self.warned),
            target=self.adapter, target_name=pipe.adapter_name, drafter=pipe.drafter,
            drafter_name=pipe.drafter_name, lanes=self.lanes)
        self._batch.ex.tally = {}  # the stream batch's decisions per stream (its generation)
        self.cannot_switch = self._switch_refusal()  # why a stream's prompt cannot change (None: it can)

    def _validate_ranks(self) -> None:
        """``ranks`` and ``lanes``: a ConfigError or IncompatibleError naming what the ring lacks."""
        for name, value in (("ranks", self.ranks), ("lanes", self.lanes)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError("StreamLoop", name, value, "an int >= 1")
        if not (isinstance(self.rank_timeout_s, (int, float)) and 0 < self.rank_timeout_s < 86400):
            raise ConfigError("StreamLoop", "rank_timeout_s", self.rank_timeout_s, "seconds in (0, 86400)")
        dr = self.decode_rank
        if dr is not None and (isinstance(dr, bool) or not isinstance(dr, int) or not 0 <= dr < self.ranks):
            raise ConfigError("StreamLoop", "decode_rank", self.decode_rank,
                              f"None (streams spread over the ranks) or a rank in [0, {self.ranks})")
        if self.ranks == 1 and self.lanes == 1:
            return
        runtime = f"the pipeline-parallel stream batch (ranks={self.ranks}, lanes={self.lanes})"
        if self.ranks > 1 and self.lanes != self.ranks:
            raise ConfigError("StreamLoop", "lanes", self.lanes,
                              f"{self.ranks} (= ranks: one lane's forward in flight per rank)")
        if not self.stream_batch:
            raise IncompatibleError(f"{runtime} is a stream batch: pass stream_batch=True")
        if self.pipe.drafter is not None:
            raise IncompatibleError(f"{runtime} cannot serve the drafter {self.pipe.drafter_name!r}: SDVG's "
                                    "verdicts restore the target's caches on every rank (not built); run the "
                                    "drafter with ranks=1, lanes=1")
        if self.ranks == 1:
            return
        if self.pipe.hooks.wraps_model_calls:
            raise IncompatibleError(f"{runtime} cannot serve a model-call wrapper (accelframe_model_call): "
                                    "a forward's output arrives from the last rank micro-steps after it starts")
        if caps.feature(self.adapter, caps.StageRing) is None:
            raise IncompatibleError(f"{runtime} needs an adapter that splits its DiT over ranks "
                                    f"(accelframe.adapter.StageRing); {self.pipe.adapter_name!r} has none")

    def _validate(self) -> None:
        ids = [s.id for s in self.sources]
        if not isinstance(self.live, bool):
            raise ConfigError("StreamLoop", "live", self.live, "True or False")
        if not ids and not self.live:
            raise ConfigError("StreamLoop", "sources", [], "at least one StreamSource (or live=True)")
        if self.live and self.ranks > 1:
            raise IncompatibleError(f"live=True cannot run on {self.ranks} ranks: streams joining a ring "
                                    "mid-run are not built; run live loops with ranks=1")
        if len(set(ids)) != len(ids):
            raise ConfigError("StreamLoop", "sources", ids, "streams with distinct ids")
        if not finite_sigma(self.default_sigma):
            raise ConfigError("StreamLoop", "default_sigma", self.default_sigma, "a number in (0, 1]")
        if self.on_corrupt not in ("hold", "error"):
            raise ConfigError("StreamLoop", "on_corrupt", self.on_corrupt, "'hold' or 'error'")
        for sink in self.sinks:
            missing = [m for m in SINK_METHODS if not callable(getattr(sink, m, None))]
            if missing:
                raise ConfigError("StreamLoop", "sinks", type(sink).__name__,
                                  f"objects with write(stream, frames) and close(); this one lacks {missing}")
        if self.stream_batch:
            if caps.feature(self.adapter, caps.RowDenoiser) is None:
                raise IncompatibleError(f"stream_batch=True needs an adapter with denoise_rows (a block loop "
                                        f"such as self-forcing); {self.pipe.adapter_name!r} has none")
            drafter = self.pipe.drafter
            if drafter is not None and caps.feature(drafter, caps.RowDenoiser) is None:
                raise IncompatibleError(f"stream_batch=True runs the drafter's rows in the batch: drafter "
                                        f"{self.pipe.drafter_name!r} has no denoise_rows")
            if drafter is not None and self.pipe.drafter_context != "own":
                raise IncompatibleError(
                    f"stream_batch=True pipelines the drafter: it drafts the next chunks before a verdict, "
                    f"so its context is its own drafts; drafter_context={self.pipe.drafter_context!r} "
                    "needs the verdict first (use drafter_context='own' or stream_batch=False)")
        self._validate_ranks()
        if caps.feature(self.adapter, caps.Decoder) is None:  # a stream emits pixels
            raise IncompatibleError(f"adapter {self.pipe.adapter_name!r} has no decode() "
                                    "(accelframe.adapter.Decoder): a stream emits decoded frames")
        for s in self.sources:
            self._check_source(s)
        self._check_memory(self.sources)

    def _check_source(self, s: Any) -> None:
        """What one stream needs of the adapter: a ConfigError or IncompatibleError if it lacks it."""
        # the exact fallback runs one unit at a time: that much must be runnable
        self.adapter.validate(Request(prompts=(s.prompt,), num_frames=self.adapter.unit_frames, seed=s.seed))
        if s.frames is not None:
            if caps.ENCODE not in self.adapter.capabilities:
                raise IncompatibleError(f"stream {s.id!r} has input frames but adapter "
                                        f"{self.pipe.adapter_name!r} cannot encode")
            h, w = caps.pixel_size(self.adapter)
            if tuple(s.frames.shape[2:]) != (h, w):
                raise ConfigError(f"StreamSource {s.id!r}", "frames", tuple(s.frames.shape),
                                  f"frames of {h}x{w} pixels")

    @property
    def kv_managed(self) -> bool:
        """A policy of the stack manages the KV cache (rolling-kv): streams may outrun the adapter's
        frame positions."""
        return any(callable(getattr(p.policy, "accelframe_kv_manage", None)) for p in self.pipe.stack)

    def _check_memory(self, sources: Sequence[Any]) -> None:
        """The adapter's declared limits and the memory the streams need, before anything runs."""
        check_streams(sources, self.pipe.adapter_name, self.adapter, self.fmap,
                      keep_frames=self.keep_frames, kv_managed=self.kv_managed)

    def decisions(self, stream: str) -> dict[str, Any] | None:
        """The decisions made for ``stream`` so far (any thread; None for a stream not in the loop):
        ``{"calls": {role: {"computed", "cached", "predicted"}}, "blocks": {"accepted",
        "regenerated"}}``, over its sequential chunks and its rows in the stream batch."""
        st = self._state.get(stream)
        if st is None:
            return None
        out = decisions()
        for part in (st.decisions, (self._batch.ex.tally or {}).get(st.generation)):
            if part is not None:
                merge_decisions(out, part)
        return out

    def set_knobs(self, stream: str, policy: str, **knobs: Any) -> dict[str, Any]:
        """Set knobs of a policy of the stack for ``stream`` alone (any thread; the stream's next
        decisions use them): the policy's ``live_knobs`` only (:mod:`accelframe.stream_knobs`). A
        ConfigError names an unknown stream or policy, a knob that is not live, or a value not
        allowed. Returns the values set."""
        st = self._state.get(stream)
        if st is None:
            raise ConfigError("StreamLoop", "stream", stream, "a stream in the loop: " + ", ".join(self._state))
        live = {p.name: p.policy for p in self.pipe.stack if getattr(p.policy, "live_knobs", ())}
        target = live.get(policy)
        if target is None:
            raise ConfigError("StreamLoop", "policy", policy, "a policy of the stack with live knobs: "
                              + (", ".join(f"{n} ({', '.join(p.live_knobs)})" for n, p in live.items()) or "none"))
        return target.set_stream_knobs(st.generation, **knobs)

    def target_state(self, stream: str) -> Any:
        """The target adapter's state of ``stream`` now (its KV cache), None before its first
        chunk: for a sink or callback that inspects the cache as frames leave."""
        st = self._state.get(stream)
        if st is None:
            return None
        self._batch.ex.release(st.target)  # the stream batch's held commits: the KV as committed
        self._batch.wait_decodes(st.target)  # and its decoder's state as emitted
        return st.target

    # ---- failures -------------------------------------------------------------------------------

    def _failed(self, hook: str, plugin: str, problem: str, exc: BaseException | None = None,
                *, fallback_used: bool = True) -> None:
        fallback.record_failure(self, hook, plugin, problem, exc, fallback_used=fallback_used)

    def _ask(self, name: str, call: Callable[[Any], tuple[Any, str]], ctx: Any,
             check: Callable[[Any], str | None], exact: Callable[[], Any]) -> tuple[Any, str]:
        try:
            answer, by = call(ctx)
        except HookRaised as err:
            self._failed(name, err.plugin, repr(err.error), err.error)
            return exact(), EXACT
        problem = check(answer)
        if problem is not None:
            self._failed(name, by, problem)
            return exact(), EXACT
        return answer, by

    # ---- stream status ------------------------------------------------------------------------

    def _total(self, s: StreamSource, now: float) -> int | None:
        """Latent frames the stream will have, once the runtime can know it."""
        return self.fmap.latents_total(s.delivered) if now >= s.end_known_s() else None

    def _received(self, s: StreamSource, now: float) -> int:
        pix = s.received(now)
        total = self._total(s, now)
        if total is not None and pix >= s.delivered:
            return total  # the padded tail counts as arrived once the source has ended
        n = self.fmap.latents_complete(pix)
        return n if total is None else min(n, total)

    def _status(self, now: float) -> tuple[StreamStatus, ...]:
        out = []
        for s in self.sources:
            st = self._state[s.id]
            received, total, c = self._received(s, now), self._total(s, now), st.consumed
            first_px = min(self.fmap.pixels(c), s.delivered - 1)
            nxt = s.arrival_s(first_px) + s.deadline_s if (
                s.deadline_s is not None and (total is None or c < total)) else None
            ready_px = min(self.fmap.pixels(c + 1), s.delivered) - 1
            oldest = s.arrival_s(ready_px) if received > c else None
            out.append(StreamStatus(stream=s.id, received=received, consumed=c,
                                    emitted=st.emitted, total=total, fps=s.fps / self.fmap.ratio,
                                    oldest_pending_s=oldest, next_deadline_s=nxt, deadline_s=s.deadline_s,
                                    runnable=self._runnable(s.id, received - c)))
        return tuple(out)

    def _runnable(self, stream: str, pending: int) -> int | None:
        """The longest chunk of ``stream``'s next frames the adapter can run, when that is fewer than its
        ``pending`` frames (rounded down to the unit); None when all of them can run as one chunk.
        The adapter's limits (frame positions, a window) bound a chunk from above: a chunk longer
        than one that cannot run cannot run either, so a bisection finds it."""
        unit = self.adapter.unit_frames
        most = pending // unit
        if most == 0 or self._unrunnable(stream, most * unit) is None:
            return None
        lo, hi = 0, most  # lo units can run (0 trivially), hi cannot
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if self._unrunnable(stream, mid * unit) is None else (lo, mid)
        return lo * unit

    def _finished(self, s: StreamSource, now: float) -> bool:
        total = self._total(s, now)
        st = self._state[s.id]
        return total is not None and st.consumed >= total and not st.rows and not st.out

    def _check_plan(self, plan: Any, ctx: BatchContext, finished_input: bool) -> str | None:
        if not isinstance(plan, BatchPlan):
            return f"returned {plan!r}, not a BatchPlan"
        pending = {s.stream: s for s in ctx.streams}
        seen = set()
        for e in plan.entries:
            if e.stream not in pending:
                return f"plans unknown stream {e.stream!r}"
            if e.stream in seen:
                return f"plans stream {e.stream!r} twice in one batch"
            seen.add(e.stream)
            if e.frames > pending[e.stream].pending:
                return (f"plans {e.frames} frames of stream {e.stream!r}, which has only "
                        f"{pending[e.stream].pending} pending")
            if e.frames % ctx.unit_frames:
                return f"plans {e.frames} frames, not a multiple of the unit {ctx.unit_frames}"
            problem = self._unrunnable(e.stream, e.frames)
            if problem is not None:
                return problem
        if not plan.entries and finished_input and any(s.pending for s in ctx.streams):
            return "waits although every input frame has arrived"
        return None

    def _unrunnable(self, stream: str, n: int) -> str | None:
        """Why the adapter cannot run the next ``n`` frames of ``stream`` as one chunk, or None
        (a staircase window too small for that many units, for example)."""
        src, st = self._by_id[stream], self._state[stream]
        req = Request(prompts=(src.prompt,), num_frames=n, seed=src.seed, first_frame=st.consumed,
                      rope_offset=self._rope(st))
        try:
            self.adapter.validate(req)
            check_fixed(self.pipe.adapter_name, self.adapter, req)  # frame positions, declared limits
        except ConfigError as exc:
            return (f"plans a chunk of {n} frames of stream {stream!r} that adapter "
                    f"{self.pipe.adapter_name!r} cannot run: {exc}")
        return None

    def _rope(self, st: _StreamState) -> int:
        rope = caps.feature(self.adapter, caps.RopeOffset)
        return int(rope.rope_offset(st.target)) if st.target is not None and rope is not None else 0

    # ---- the run ----------------------------------------------------------------------------

    def run(self) -> StreamRun | None:
        """The run's result; on a ring's other ranks (``ranks > 1``, rank > 0): None, once rank 0 ends."""
        if self.ranks == 1:
            return self._run()
        self.ring = self.adapter.stage_ring(self.ranks, partition=self.partition, timeout_s=self.rank_timeout_s,
                                            decode_rank=self.decode_rank, rebalance=self.rebalance,
                                            kv_embeddings=any(getattr(p.policy, "uses_kv_embeddings", False)
                                                              for p in self.pipe.stack))
        if not self.ring.driver:
            self.ring.serve()  # until rank 0 ends the stream (or fails)
            return None
        target = self.adapter
        self.adapter = self._batch.target = self.ring.adapter  # rank 0's side of the ring
        try:
            return self._run()
        finally:
            self.adapter = self._batch.target = target
            if self.ring.log:  # the rebalance's measurements and decision
                self.trace.add("rebalance", **self.ring.log)
            self.ring.close()
            self.ring = None

    def _start(self, s: Any) -> None:
        """A stream enters the loop: its state, and its ``generation_start`` hooks."""
        pipe = self.pipe
        generation = pipe.new_generation()
        self._state[s.id] = _StreamState(source=s, output=StreamOutput(id=s.id), generation=generation,
                                         guard=FrameGuard(s.id, self.on_corrupt),
                                         prompt_version=getattr(s, "prompt_version", 0))
        self._infos[s.id] = GenerationInfo(
            generation=generation, adapter=pipe.adapter_name, drafter=pipe.drafter_name, registry=pipe.registry,
            request=Request(prompts=(s.prompt,), num_frames=max(self.fmap.latents_total(s.total), 1), seed=s.seed))
        for err in pipe.hooks.generation_start(self._infos[s.id]):
            self._failed(err.hook, err.plugin, repr(err.error), err.error, fallback_used=False)

    def _end(self, s: Any) -> None:
        """A stream's ``generation_end`` hooks (also when the run failed part-way: what was counted)."""
        for err in self.pipe.hooks.generation_end(self._infos.pop(s.id), self.stats.to_dict()):
            self._failed(err.hook, err.plugin, repr(err.error), err.error, fallback_used=False)

    @staticmethod
    def _ended(s: Any) -> str:
        return (f"stalled: the source went silent after {s.delivered} of {s.total} frames"
                if s.stalled else "complete")

    def _run(self) -> StreamRun:
        batches: list[dict[str, Any]] = []
        self.pipe.reset_policies()
        self._state, self._infos = {}, {}
        for s in self.sources:
            self._start(s)
            if self.live:
                s.begin(self.clock.now(), self.clock.now, self.wake, self.cannot_switch)
        outputs = {k: st.output for k, st in self._state.items()}
        if self.stream_batch and self._decode_worker():
            self._batch.start_worker()
        try:
            self._loop(batches)
        finally:
            self._batch.stop_worker()
            for st in self._state.values():  # the commits no stream read (stream batch)
                self._batch.ex.drop(st.target)
            self.stats.finish()
            for s in self.sources:
                self._end(s)
            for sink in self.sinks:  # flush what was emitted, also after an error
                sink.close()
            self._refuse_queued("the loop has ended")
        if self.live:  # the streams left one by one: their summaries are in ``retired``
            return StreamRun(outputs={}, batches=batches, trace=self.trace, stats=self.stats, sources=(),
                             ended={k: r["ended"] for k, r in self.retired.items()})
        return StreamRun(outputs=outputs, batches=batches, trace=self.trace, stats=self.stats,
                         sources=tuple(self.sources), ended={s.id: self._ended(s) for s in self.sources},
                         corrupt={s.id: list(self._state[s.id].guard.corrupt) for s in self.sources})

    # ---- live streams ---------------------------------------------------------------------------

    def add(self, source: Any) -> Future:
        """Queue a stream for a live loop (any thread). The future resolves to the stream's id once
        the loop admitted it, or raises :class:`AdmissionRefused` (or the ConfigError that refused it)."""
        if not self.live:
            raise ConfigError("StreamLoop", "live", False, "True to add streams while the loop runs")
        fut: Future = Future()
        if self._stopping:
            fut.set_exception(AdmissionRefused(getattr(source, "id", "?"), "the loop is stopping"))
            return fut
        self._adds.append((source, fut))
        self.wake()
        return fut

    def stop(self) -> None:
        """End every live stream now (any thread): what arrived is still run and emitted, then
        :meth:`run` returns."""
        self._stopping = True
        for s in list(self.sources):
            if hasattr(s, "end"):
                s.end()
        self.wake()

    @property
    def stopping(self) -> bool:
        """:meth:`stop` was called: the streams drain, none is admitted."""
        return self._stopping

    def wake(self) -> None:
        """Wake a live loop that waits (a stream was added, fed or ended)."""
        self._wake.set()

    def _refuse_queued(self, reason: str) -> None:
        while self._adds:
            source, fut = self._adds.popleft()
            if not fut.done():
                fut.set_exception(AdmissionRefused(getattr(source, "id", "?"), reason))

    def _admit_queued(self, now: float, last_latency: float | None) -> None:
        """Admit or refuse the streams added since the last plan (the loop's thread)."""
        while self._adds:
            source, fut = self._adds.popleft()
            if self._stopping:
                fut.set_exception(AdmissionRefused(getattr(source, "id", "?"), "the loop is stopping"))
                continue
            try:
                self._admit(source, now, last_latency)
            except Exception as exc:  # refused: the caller gets why, the loop runs on
                fut.set_exception(exc)
                continue
            self.sources.append(source)
            self._by_id[source.id] = source
            self._start(source)
            if hasattr(source, "begin"):
                source.begin(now, self.clock.now, self.wake, self.cannot_switch)
            self.trace.add("admit", stream=source.id, t_s=now)
            fut.set_result(source.id)

    def _admit(self, source: Any, now: float, last_latency: float | None) -> None:
        if source.id in self._by_id:
            raise AdmissionRefused(source.id, "a stream of that id is in the loop")
        try:
            self._check_source(source)
            self._check_memory([*self.sources, source])
        except AccelframeError as exc:
            raise AdmissionRefused(source.id, str(exc)) from exc
        ctx = BatchContext(now_s=now, streams=self._status(now), unit_frames=self.adapter.unit_frames,
                           last_latency_s=last_latency)
        try:
            reason, by = self.pipe.hooks.batch_admit(ctx, source.fps / self.fmap.ratio, source.deadline_s)
        except HookRaised as err:  # a failing admission hook admits, as without one
            self._failed("accelframe_batch_admit", err.plugin, repr(err.error), err.error)
            return
        if reason is not None:
            raise AdmissionRefused(source.id, str(reason), by)

    def _switch_refusal(self) -> str | None:
        """Why this loop's models cannot switch a stream's prompt (None: they can)."""
        for role, adapter in (("target", self.adapter), ("drafter", self.pipe.drafter)):
            if adapter is not None and caps.feature(adapter, caps.PromptSwitch) is None:
                return (f"the {role} {caps.adapter_name(adapter)!r} cannot switch prompts "
                        "(accelframe.adapter.PromptSwitch)")
        return None

    def _decode_worker(self) -> bool:
        """Whether the stream batch decodes the target's chunks on a worker thread: asked for
        (``Pipeline(decode_worker=True)``), in one process with one lane (a ring decodes on its
        ranks), and with a commit that does not read its decode's pixels."""
        return (bool(getattr(self.pipe, "decode_worker", False)) and self.ranks == 1 and self.lanes == 1
                and not getattr(self.adapter, "commit_reads_pixels", False))

    def _retire(self, now: float) -> None:
        """Live: streams that ended and emitted everything leave (``generation_end``, ``on_end``)."""
        for s in [s for s in self.sources if self._finished(s, now)]:
            made = self.decisions(s.id)
            st = self._state.pop(s.id)
            self._batch.wait_decodes(st.target)
            self._batch.ex.drop(st.target)
            (self._batch.ex.tally or {}).pop(st.generation, None)
            for p in self.pipe.stack:  # its knobs of its own (accelframe.stream_knobs) go with it
                if hasattr(p.policy, "clear_stream_knobs"):
                    p.policy.clear_stream_knobs(st.generation)
            self.sources.remove(s)
            del self._by_id[s.id]
            self._end(s)
            summary = {**st.output.summary(s.deadline_s), "corrupt_frames": len(st.guard.corrupt),
                       "ended": self._ended(s), "decisions": made}
            self.retired[s.id] = summary
            self.trace.add("retire", stream=s.id, t_s=now)
            if self.on_end is not None:
                self.on_end(s.id, summary)

    def _idle(self, until: float | None) -> None:
        """Wait for the next arrival ``until`` (None: none known); a live loop also wakes when woken."""
        if not self.live:
            if until is None:  # nothing more can arrive: the plan is refused as a stall above
                raise AssertionError("a batch plan waits with no frame left to arrive")
            self.clock.wait_until(until)
            return
        if self._wake.is_set():
            self._wake.clear()
            return
        if until is not None and not isinstance(self.clock, RealClock):
            self.clock.wait_until(until)  # a test's virtual clock: no real time passes
            return
        delay = IDLE_POLL_S if until is None else min(max(until - self.clock.now(), 0.0), IDLE_POLL_S)
        if self._wake.wait(timeout=delay):
            self._wake.clear()

    def _next_event(self, now: float) -> float | None:
        times = []
        for s in self.sources:
            nxt = getattr(s, "next_arrival_s", None)
            if nxt is not None:  # a live source: the next arrival if it can be known
                t = nxt(now)
                if t is not None:
                    times.append(t)
            else:
                got = s.received(now)
                if got < s.delivered:
                    times.append(s.arrival_s(got))
            if math.isfinite(s.end_known_s()) and s.end_known_s() > now:
                times.append(s.end_known_s())
        return min(times) if times else None

    def _loop(self, batches: list[dict[str, Any]]) -> None:
        hooks, unit = self.pipe.hooks, self.adapter.unit_frames
        last_latency = None
        while True:
            now = self.clock.now()
            if self.live:
                self._admit_queued(now, last_latency)
                self._retire(now)
                if self._stopping and not self.sources and not self._adds:
                    break
                if not self.sources:
                    self._idle(None)
                    continue
            elif all(self._finished(s, now) for s in self.sources):
                break
            self._prepare(now)
            status = self._status(now)
            ctx = BatchContext(now_s=now, streams=status, unit_frames=unit,
                               last_latency_s=last_latency)
            finished_input = all(st.total is not None and st.received == st.total for st in status)
            plan, by = self._ask("accelframe_batch_plan", hooks.batch_plan, ctx,
                                 lambda p: self._check_plan(p, ctx, finished_input),
                                 lambda: fallback.batch_of_one(ctx))
            flush = [s.id for s in self.sources if (self._state[s.id].rows or self._state[s.id].out)
                     and self._total(s, now) is not None and self._state[s.id].consumed >= self._total(s, now)]
            if not plan.entries and not flush and self.stream_batch and self.drain_when_idle:
                flush = [s.id for s in self.sources if self._state[s.id].rows]  # idle: advance in flight
            if not plan.entries and not flush:
                self._idle(self._next_event(now))
                continue
            t0 = time.perf_counter()
            emitted: list[tuple[str, int, int]] = []  # (stream, first pixel, pixel count)
            if self.stream_batch:
                emitted += self._stream_batch(plan, flush)
            else:
                for entry in plan.entries:
                    emitted.append(self._chunk(self._state[entry.stream], entry.frames))
            real = time.perf_counter() - t0
            latency = self.clock.spent(real)  # on the clock's time base
            self.stats.time_s["batch"] += real
            record = {"t_s": now, "entries": [[e.stream, e.frames] for e in plan.entries],
                      "by": by, "latency_s": latency, "reason": plan.reason,
                      "emitted": {s: n for s, _, n in emitted if n}}
            if self.stream_batch:
                record["rows"] = sum(len(self._state[s.id].rows) for s in self.sources)
            batches.append(record)
            self.trace.add("batch", **record)
            if self.on_batch is not None:
                self.on_batch(record)
            for err in hooks.batch_observe(ctx, plan, latency):
                self._failed(err.hook, err.plugin, repr(err.error), err.error,
                             fallback_used=False)
            last_latency = latency
            emit_t = self.clock.now()
            for stream, first, n in emitted:
                src, out = self._by_id[stream], self._state[stream].output
                out.emit_s += [emit_t] * n
                out.arrival_s += [src.arrival_s(k) for k in range(first, first + n)]

    # ---- one chunk ------------------------------------------------------------------------------

    def _kv_manage(self, st: _StreamState, a: int) -> None:
        if st.target is None or caps.feature(self.adapter, caps.KVWindow) is None:
            return  # an adapter without KV management: nothing to report or apply
        src, hooks, unit = st.source, self.pipe.hooks, a // self.adapter.unit_frames
        if hooks.implemented("accelframe_kv_manage"):  # a KV hook sees the cache as committed
            self._batch.ex.release(st.target)
        cached, sinks, window = self.adapter.kv_frames(st.target)
        emb = caps.feature(self.adapter, caps.KVEmbeddings)
        kctx = KVContext(stream=src.id, unit=unit, cached_frames=cached, sinks=sinks, window=window,
                         next_frame=a, rope_offset=self._rope(st),
                         embeddings=emb.kv_embeddings(st.target) if emb is not None and hooks.implemented(
                             "accelframe_kv_manage") else {})

        def check_kv(act: Any) -> str | None:
            if act is None:
                return None
            if not isinstance(act, KVAction):
                return f"returned {act!r}, not a KVAction"
            stray = set(act.evict) - set(cached)
            return f"evicts frames {sorted(stray)} that are not cached" if stray else None
        action, by = self._ask("accelframe_kv_manage", hooks.kv_manage, kctx, check_kv, lambda: None)
        if action is not None:
            self.adapter.kv_apply(st.target, action.evict, action.sinks, action.rope_reset)
            if st.drafter is not None and caps.feature(self.pipe.drafter, caps.KVWindow) is not None:
                self.pipe.drafter.kv_apply(st.drafter, action.evict, action.sinks, action.rope_reset)
            self.trace.add("kv", stream=src.id, unit=unit, evict=list(action.evict),
                           sinks=None if action.sinks is None else list(action.sinks),
                           rope_reset=action.rope_reset, by=by)

    def _inputs(self, st: _StreamState, a: int, b: int) -> dict[str, Any]:
        """Request fields of latent frames ``[a, b)``: for video-to-video, the encoded input noised
        to the policy's level."""
        src = st.source
        if src.frames is None:
            return {}
        p0, p1 = self.fmap.pixels(a), self.fmap.pixels(b)
        idx = [min(p, src.delivered - 1) for p in range(p0, p1)]  # past the end: pad with the last frame
        real = [p for p in range(p0, p1) if p < src.delivered]
        pixels = src.frames[idx].float()  # [P, 3, H, W]
        if real:
            pixels[:len(real)] = st.guard.clean(pixels[:len(real)], p0)
            pixels[len(real):] = pixels[len(real) - 1]
        t0 = time.perf_counter()
        enc = caps.feature(self.adapter, caps.ChunkEncoder)
        if enc is not None:
            if st.encode is None:
                st.encode = enc.new_encode_cache()
            latents = enc.encode_chunk(pixels[None], st.encode)  # [1, F, C, H, W]
        else:
            latents = self.adapter.encode(pixels[None])
        self.stats.time_s["encode"] = self.stats.time_s.get("encode", 0.0) + time.perf_counter() - t0
        nctx = NoiseContext(stream=src.id, unit=a // self.adapter.unit_frames, frames=pixels,
                            default_sigma=self.default_sigma, previous=st.previous, latents=latents[0])
        st.previous = pixels[-1]
        sigma, by = self._ask(
            "accelframe_noise_level", self.pipe.hooks.noise_level, nctx,
            lambda s: None if finite_sigma(s) else f"returned {s!r}, not a noise level in (0, 1]",
            lambda: self.default_sigma)
        self.trace.add("noise", stream=src.id, unit=nctx.unit, sigma=float(sigma), by=by)
        return {"start_sigma": float(sigma), "init_latents": latents}

    def _switch_prompt(self, st: _StreamState) -> None:
        """A live source's prompt changed: its states take the new prompt before its next chunk
        (:class:`~accelframe.adapter.PromptSwitch`: the cross-attention, and the cached context
        recomputed under it). Chunks in flight in a stream batch finish their steps on it."""
        src = st.source
        version = getattr(src, "prompt_version", 0)
        if version == st.prompt_version:
            return
        st.prompt_version = version
        if st.target is None:  # nothing made yet: the first chunk encodes the prompt it has now
            return
        if self.cannot_switch is not None:  # a LiveSource refuses set_prompt already: another source
            raise IncompatibleError(f"stream {src.id!r} changed its prompt, but {self.cannot_switch}")
        self._batch.ex.release(st.target)  # the cache is recomputed under the new prompt
        self._batch.wait_decodes(st.target)
        calls, t0 = {}, time.perf_counter()
        for role, adapter, state in (("target", self.adapter, st.target),
                                     ("drafter", self.pipe.drafter, st.drafter)):
            if state is not None:
                calls[role] = int(adapter.switch_prompt(state, adapter.encode_prompt([src.prompt]),
                                                        recache=self.prompt_recache))
                self.stats.calls[role]["commit"] += calls[role]
        seconds = time.perf_counter() - t0
        self.stats.time_s["commit"] += seconds
        record = {"stream": src.id, "frame": st.consumed, "version": version, "calls": calls, "seconds": seconds,
                  "recache": self.prompt_recache}
        self.switches.append(record)
        self.trace.add("prompt", **record)

    def _prepare(self, now: float) -> None:
        """Before a plan: the prompt switch and KV hook of every idle stream with a unit pending, so
        the plan is checked (and ``StreamStatus.runnable`` measured) at the frame positions its next
        chunk will run at, after a RoPE reset. A stream with chunks in flight (stream batch) is
        managed when its next chunk enters, as its cache changes until then."""
        unit = self.adapter.unit_frames
        for s in self.sources:
            st = self._state[s.id]
            if st.target is not None and not st.rows and self._received(s, now) - st.consumed >= unit:
                self._manage(st)

    def _manage(self, st: _StreamState) -> None:
        """The stream's prompt switch and KV hook before its next chunk, once per chunk."""
        self._switch_prompt(st)
        if st.kv_at != st.consumed:
            self._kv_manage(st, st.consumed)
            st.kv_at = st.consumed

    def _request(self, st: _StreamState, n: int) -> Request:
        """The next ``n`` latent frames of the stream as a validated request (after its KV hook)."""
        src, a = st.source, st.consumed
        self._manage(st)
        kwargs = self._inputs(st, a, a + n)
        req = Request(prompts=(src.prompt,), num_frames=n, seed=src.seed, first_frame=a,
                      rope_offset=self._rope(st), **kwargs)
        self.adapter.validate(req)
        return req

    def _engine(self, st: _StreamState) -> Any:
        """An engine of the pipeline for one chunk of the stream, recording into the run's trace."""
        return self.pipe.engine(generation=st.generation, stream=NOISE_STREAM, trace=self.trace)

    def _chunk(self, st: _StreamState, n: int) -> tuple[str, int, int]:
        """Run ``n`` latent frames of the stream from its next frame on through the engine and emit them."""
        a = st.consumed
        req = self._request(st, n)
        engine = self._engine(st)
        res = engine.run(req, target_state=st.target, drafter_state=st.drafter, lifecycle=False)
        st.target, st.drafter = engine.target_state, engine.drafter_state
        st.consumed += n
        self.stats.merge(engine.stats)
        add_decisions(st.decisions, engine.stats)
        return self._emit(st, a, a + n, None if res.frames is None else res.frames[0])

    def _emit(self, st: _StreamState, a: int, b: int,
              frames: torch.Tensor | None) -> tuple[str, int, int]:
        """Hand latent frames ``[a, b)`` (decoded: ``frames [P, 3, H, W]``) to the callbacks and
        sinks, without the padding past the source's end. Returns (stream, first pixel, count)."""
        src = st.source
        st.emitted = b
        p0, p1 = self.fmap.pixels(a), min(self.fmap.pixels(b), src.delivered)
        n = max(p1 - p0, 0)
        if frames is not None and n:
            frames = frames[:n]
            if self.keep_frames:
                st.output.chunks.append(frames)
            if self.on_frames is not None:
                self.on_frames(src.id, frames)
            for sink in self.sinks:
                sink.write(src.id, frames)
        return src.id, p0, n

    # ---- stream batch -----------------------------------------------------------------------

    def _stream_batch(self, plan: BatchPlan, flush: list[str]) -> list[tuple[str, int, int]]:
        """One micro-step: new chunks enter, every in-flight chunk of the batch's streams advances one
        step on the executor, finished chunks leave in order (judged when drafted, committed,
        decoded and emitted)."""
        pipe, sb = self.pipe, self._batch
        names = [e.stream for e in plan.entries] + [s for s in flush if s not in
                                                    {e.stream for e in plan.entries}]
        for e in plan.entries:
            st = self._state[e.stream]
            req = self._request(st, e.frames)
            if st.target is None:
                st.target = self.adapter.init_state(req, self.adapter.encode_prompt([st.source.prompt]))
            if pipe.drafter is not None and st.drafter is None:
                st.drafter = pipe.drafter.init_state(req, pipe.drafter.encode_prompt([st.source.prompt]))
            sb.enter(st.rows, req, st.target, st.drafter, st.generation)
            st.consumed += e.frames
        sb.micro_step([c for s in names for c in self._state[s].rows])
        now, emitted = sb.tick - 1, []  # the micro-step just run
        for s in names:
            st = self._state[s]
            for span, pixels, _ in sb.finish(st.rows, st.target, st.drafter, st.generation,
                                             (st.source.prompt,)):
                st.out.append((now, span, pixels))
        for s in names:  # after this micro-step's own decodes: a peer rank decoded meanwhile
            st = self._state[s]
            emitted += self._emit_ready(st, now - EMIT_LAG * self.lanes if st.rows else now)  # the last: wait
        return emitted

    def _emit_ready(self, st: _StreamState, before: int) -> list[tuple[str, int, int]]:
        """Emit the stream's finished chunks in order: decoded here, or on a peer rank (a ring's
        decode: emitted once its pixels are here, waited for once the chunk is from a micro-step
        before ``before``)."""
        emitted = []
        while st.out:
            tick, span, pixels = st.out[0]
            if not isinstance(pixels, torch.Tensor):
                if tick > before and not pixels.ready():
                    break
                pixels = pixels.result()  # [B, P, 3, H, W]
            st.out.pop(0)
            emitted.append(self._emit(st, span.start, span.end, pixels[0]))
        return emitted

__all__ = ["StreamLoop", "StreamOutput", "StreamRun"]
