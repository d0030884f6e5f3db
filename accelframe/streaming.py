"""The stream loop: input frames arrive over time; batch policies decide what runs when.

This is the core's minimal runtime for the batch / stream hooks. Each stream has its own adapter
state (KV and decode caches) and a source whose frame ``k`` arrives at ``start_s + k / fps``. The
loop asks ``accelframe_batch_plan`` which streams run how many frames, asks
``accelframe_kv_manage`` and ``accelframe_noise_level`` before each chunk, runs the chunk through
the pipeline's engine (video-to-video when the source has frames, text-to-video otherwise), emits
its frames in order and reports the measured latency to ``accelframe_batch_observe``.

Entries of one batch run one after the other here: batching several streams into one forward is
the streaming runtime's job (StreamDiffusionV2's stream batch), not this loop's. A
:class:`VirtualClock` makes runs deterministic for tests; :class:`RealClock` waits for real.
"""

from __future__ import annotations

import math
import time
from typing import Any, Callable, Sequence

import attrs
import torch

from accelframe import adapter as caps
from accelframe import fallback
from accelframe.errors import ConfigError, IncompatibleError
from accelframe.plugins import EXACT, HookRaised
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
from accelframe import validators as v


@attrs.frozen(kw_only=True, eq=False)
class StreamSource:
    """One input stream. ``frames`` ``[F, 3, H, W]`` for video-to-video, or None and
    ``num_frames`` for text-to-video. Frame ``k`` arrives at ``start_s + k / fps``."""

    id: str = attrs.field(validator=v.instance_of(str, "a string"))
    prompt: str = attrs.field(validator=v.instance_of(str, "a string"))
    frames: torch.Tensor | None = attrs.field(default=None, repr=False)
    num_frames: int | None = None
    fps: float = attrs.field(default=16.0, validator=v.number_in(0.0, 1e6, lo_open=True))
    start_s: float = attrs.field(default=0.0, validator=v.number_in(0.0))
    deadline_s: float | None = None  # per-frame latency budget from arrival to emission
    seed: int = attrs.field(default=0, validator=v.number_in(0, 2**63 - 1, integer=True))

    def __attrs_post_init__(self) -> None:
        if self.frames is None and self.num_frames is None:
            raise ConfigError("StreamSource", "num_frames", None,
                              "a positive int when no input frames are given")
        if self.frames is not None and (self.frames.dim() != 4 or self.frames.shape[1] != 3):
            raise ConfigError("StreamSource", "frames", tuple(self.frames.shape),
                              "a tensor [F, 3, H, W]")

    @property
    def total(self) -> int:
        return int(self.frames.shape[0]) if self.frames is not None else int(self.num_frames or 0)

    def arrival_s(self, k: int) -> float:
        return self.start_s + k / self.fps

    def received(self, now: float) -> int:
        if now < self.start_s:
            return 0
        return min(self.total, int(math.floor((now - self.start_s) * self.fps + 1e-9)) + 1)


class VirtualClock:
    """A clock that moves only when told: deterministic streaming runs for tests."""

    def __init__(self, start: float = 0.0, batch_cost_s: float = 0.0) -> None:
        self.t = start
        self.batch_cost_s = batch_cost_s

    def now(self) -> float:
        return self.t

    def wait_until(self, t: float) -> None:
        self.t = max(self.t, t)

    def spent(self, seconds: float) -> None:  # a batch ran: count its virtual cost
        self.t += self.batch_cost_s


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

    def spent(self, seconds: float) -> None:
        pass


@attrs.define(eq=False)
class StreamOutput:
    """What one stream emitted: frames in order and the clock time each was emitted at."""

    id: str
    chunks: list[torch.Tensor] = attrs.field(factory=list)  # each [F_chunk, 3, H, W]
    emit_s: list[float] = attrs.field(factory=list)  # one per emitted frame
    arrival_s: list[float] = attrs.field(factory=list)

    @property
    def frames(self) -> torch.Tensor | None:
        return torch.cat(self.chunks, dim=0) if self.chunks else None

    def summary(self, deadline_s: float | None) -> dict[str, Any]:
        lat = [e - a for e, a in zip(self.emit_s, self.arrival_s)]
        misses = sum(x > deadline_s for x in lat) if deadline_s is not None else 0
        return {
            "frames": len(self.emit_s),
            "ttff_s": (self.emit_s[0] - self.arrival_s[0]) if self.emit_s else None,
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

    def to_json(self) -> dict[str, Any]:
        return {
            "streams": {s.id: self.outputs[s.id].summary(s.deadline_s) for s in self.sources},
            "batches": self.batches,
            "stats": self.stats.to_dict(),
            "trace": self.trace.events,
        }


class StreamLoop:
    """Runs streams through a pipeline; see the module docstring."""

    def __init__(self, pipe: Any, sources: Sequence[StreamSource], *, clock: Any = None,
                 default_sigma: float = 0.7,
                 on_frames: Callable[[str, torch.Tensor], None] | None = None) -> None:
        self.pipe = pipe
        self.adapter = pipe.adapter
        self.sources = tuple(sources)
        self._by_id = {s.id: s for s in self.sources}
        self._index = {s.id: k for k, s in enumerate(self.sources)}  # the stream's rng index
        self.clock = clock if clock is not None else RealClock()
        self.default_sigma = default_sigma
        self.strict = pipe.strict
        self.on_frames = on_frames
        self.trace = Trace(enabled=pipe.trace)
        self.stats = Stats(adapters={"target": pipe.adapter_name, "drafter": None})
        self.warned: set[tuple[str, str]] = set()  # (plugin, hook) pairs warned about
        self._validate()

    def _validate(self) -> None:
        unit = self.adapter.unit_frames
        ids = [s.id for s in self.sources]
        if not ids:
            raise ConfigError("StreamLoop", "sources", [], "at least one StreamSource")
        if len(set(ids)) != len(ids):
            raise ConfigError("StreamLoop", "sources", ids, "streams with distinct ids")
        if self.pipe.drafter is not None:
            raise IncompatibleError("the core stream loop runs the target only; a drafter "
                                    "pipeline cannot stream here yet")
        if not finite_sigma(self.default_sigma):
            raise ConfigError("StreamLoop", "default_sigma", self.default_sigma, "a number in (0, 1]")
        for s in self.sources:
            if s.total % unit:
                raise ConfigError(f"StreamSource {s.id!r}", "frames", s.total,
                                  f"a multiple of the adapter's unit of {unit} frames")
            # the exact fallback runs one unit at a time: that much must be runnable
            self.adapter.validate(Request(prompts=(s.prompt,), num_frames=unit, seed=s.seed))
            if s.frames is not None:
                if caps.ENCODE not in self.adapter.capabilities:
                    raise IncompatibleError(f"stream {s.id!r} has input frames but adapter "
                                            f"{self.pipe.adapter_name!r} cannot encode")
                c, h, w = self.adapter.latent_shape
                if tuple(s.frames.shape[2:]) != (h, w):
                    raise ConfigError(f"StreamSource {s.id!r}", "frames", tuple(s.frames.shape),
                                      f"frames of {h}x{w} pixels")

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

    # ---- the loop -------------------------------------------------------------------------------

    def _status(self, now: float) -> tuple[StreamStatus, ...]:
        out = []
        for s in self.sources:
            st = self._state[s.id]
            received = s.received(now)
            nxt = s.arrival_s(st["consumed"]) + s.deadline_s if (
                s.deadline_s is not None and st["consumed"] < s.total) else None
            oldest = s.arrival_s(st["consumed"]) if received > st["consumed"] else None
            out.append(StreamStatus(stream=s.id, received=received, consumed=st["consumed"],
                                    emitted=st["emitted"], total=s.total, fps=s.fps,
                                    oldest_pending_s=oldest, next_deadline_s=nxt))
        return tuple(out)

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
        src = self._by_id[stream]
        req = Request(prompts=(src.prompt,), num_frames=n, seed=src.seed,
                      first_frame=self._state[stream]["consumed"])
        try:
            self.adapter.validate(req)
        except ConfigError as exc:
            return (f"plans a chunk of {n} frames of stream {stream!r} that adapter "
                    f"{self.pipe.adapter_name!r} cannot run: {exc}")
        return None

    def run(self) -> StreamRun:
        pipe, hooks = self.pipe, self.pipe.hooks
        self._state = {s.id: {"consumed": 0, "emitted": 0, "state": None} for s in self.sources}
        outputs = {s.id: StreamOutput(id=s.id) for s in self.sources}
        batches: list[dict[str, Any]] = []
        pipe._reset_policies()
        gens, infos = {}, {}
        for s in self.sources:
            pipe._generation += 1
            gens[s.id] = pipe._generation
            infos[s.id] = GenerationInfo(
                generation=pipe._generation, adapter=pipe.adapter_name, drafter=None,
                registry=pipe.registry,
                request=Request(prompts=(s.prompt,), num_frames=s.total, seed=s.seed))
            for err in hooks.generation_start(infos[s.id]):
                self._failed(err.hook, err.plugin, repr(err.error), err.error,
                             fallback_used=False)
        try:
            self._loop(outputs, batches, gens)
        finally:
            self.stats.finish()
            for s in self.sources:  # also when the run failed part-way: what was counted so far
                for err in hooks.generation_end(infos[s.id], self.stats.to_dict()):
                    self._failed(err.hook, err.plugin, repr(err.error), err.error,
                                 fallback_used=False)
        return StreamRun(outputs=outputs, batches=batches, trace=self.trace, stats=self.stats,
                         sources=self.sources)

    def _loop(self, outputs: dict[str, StreamOutput], batches: list[dict[str, Any]],
              gens: dict[str, int]) -> None:
        hooks, unit = self.pipe.hooks, self.adapter.unit_frames
        last_latency = None
        while any(self._state[s.id]["consumed"] < s.total for s in self.sources):
            now = self.clock.now()
            status = self._status(now)
            ctx = BatchContext(now_s=now, streams=status, unit_frames=unit,
                               last_latency_s=last_latency)
            finished_input = all(st.received == st.total for st in status)
            plan, by = self._ask("accelframe_batch_plan", hooks.batch_plan, ctx,
                                 lambda p: self._check_plan(p, ctx, finished_input),
                                 lambda: fallback.batch_of_one(ctx))
            if not plan.entries:  # wait for the next frame to arrive
                nxt = [s.arrival_s(st.received) for s, st in zip(self.sources, status)
                       if st.received < s.total]
                self.clock.wait_until(min(nxt))
                continue
            t0 = time.perf_counter()
            for entry in plan.entries:
                src = self._by_id[entry.stream]
                self._chunk(src, entry.frames, gens[src.id], outputs[src.id])
            latency = time.perf_counter() - t0
            self.clock.spent(latency)
            self.stats.time_s["batch"] += latency
            record = {"t_s": now, "entries": [[e.stream, e.frames] for e in plan.entries],
                      "by": by, "latency_s": latency}
            batches.append(record)
            self.trace.add("batch", **record)
            for err in hooks.batch_observe(ctx, plan, latency):
                self._failed(err.hook, err.plugin, repr(err.error), err.error,
                             fallback_used=False)
            last_latency = latency
            emit_t = self.clock.now()
            for entry in plan.entries:
                out = outputs[entry.stream]
                src = self._by_id[entry.stream]
                first = len(out.emit_s)
                out.emit_s += [emit_t] * entry.frames
                out.arrival_s += [src.arrival_s(k) for k in range(first, first + entry.frames)]

    def _chunk(self, src: StreamSource, n: int, generation: int, out: StreamOutput) -> None:
        """Run ``n`` input frames of ``src`` from its next frame on, and emit them."""
        hooks, st = self.pipe.hooks, self._state[src.id]
        k0 = st["consumed"]
        unit = k0 // self.adapter.unit_frames
        if st["state"] is not None:
            cached, sinks, window = self.adapter.kv_frames(st["state"])
            kctx = KVContext(stream=src.id, unit=unit, cached_frames=cached, sinks=sinks,
                             window=window)

            def check_kv(a: Any) -> str | None:
                if a is None:
                    return None
                if not isinstance(a, KVAction):
                    return f"returned {a!r}, not a KVAction"
                stray = set(a.evict) - set(cached)
                return f"evicts frames {sorted(stray)} that are not cached" if stray else None
            action, by = self._ask("accelframe_kv_manage", hooks.kv_manage, kctx, check_kv,
                                   lambda: None)
            if action is not None:
                self.adapter.kv_apply(st["state"], action.evict, action.sinks, action.rope_reset)
                self.trace.add("kv", stream=src.id, unit=unit, evict=list(action.evict),
                               sinks=None if action.sinks is None else list(action.sinks),
                               rope_reset=action.rope_reset, by=by)
        kwargs: dict[str, Any] = {}
        if src.frames is not None:
            pixels = src.frames[k0:k0 + n]  # [n, 3, H, W]
            nctx = NoiseContext(stream=src.id, unit=unit, frames=pixels,
                                default_sigma=self.default_sigma)
            sigma, by = self._ask(
                "accelframe_noise_level", hooks.noise_level, nctx,
                lambda s: None if finite_sigma(s) else f"returned {s!r}, not a noise level in (0, 1]",
                lambda: self.default_sigma)
            self.trace.add("noise", stream=src.id, unit=unit, sigma=float(sigma), by=by)
            kwargs = {"start_sigma": float(sigma), "init_latents": self.adapter.encode(pixels[None])}
        req = Request(prompts=(src.prompt,), num_frames=n, seed=src.seed, first_frame=k0, **kwargs)
        self.adapter.validate(req)
        engine = self.pipe.engine(generation=generation, stream=self._index[src.id])
        engine.trace = self.trace  # one trace for the whole run
        res = engine.run(req, target_state=st["state"], lifecycle=False)
        st["state"] = engine.target_state
        st["consumed"] += n
        st["emitted"] += n
        self._merge(engine.stats)
        if res.frames is not None:
            out.chunks.append(res.frames[0])
            if self.on_frames is not None:
                self.on_frames(src.id, res.frames[0])

    def _merge(self, s: Stats) -> None:
        for model, counts in s.calls.items():
            for k, val in counts.items():
                self.stats.calls[model][k] += val
        for k, val in s.time_s.items():
            self.stats.time_s[k] += val
        for k, val in s.fallbacks.items():
            self.stats.fallbacks[k] = self.stats.fallbacks.get(k, 0) + val
        self.stats.units += s.units
        self.stats.frames += s.frames

