"""StreamDiffusionV2's SLO-aware batching scheduler (section 4.1), registered as ``slo-batch``.

The latency model. Short chunks keep the model memory-bound, where the paper approximates
``L(T, B) ≈ (A(T, B) + P_model) / (η BW)`` with activations ``A`` linear in ``B T``. So the
policy fits

    L(T, B) = a + b * B * T          (T: frames per stream in the batch, B: streams batched)

by least squares on the measured latencies of the batches that ran (``accelframe_batch_observe``),
with exponential forgetting (``forget``) so it follows the machine's load. The throughput
``f = B T / L(T, B)`` grows with ``B T`` while ``a > 0``: batching amortises the fixed cost.

The rule, every time the runtime is ready (frame counts are the runtime's frames, latent frames):

1. Offered load ``R = sum of the streams' frame rates``. A chunk length ``T`` (a multiple of the
   unit, at most ``max_chunk_units`` units) is *sustainable* when ``B T / L(T, B) >= headroom R``
   with B the number of streams.
2. Pick ``T*``, the smallest sustainable chunk (small chunks mean a short buffering delay and a
   low time to first frame). Until two distinct batch sizes were measured the model is a line
   through the origin and ``T*`` is the unit; a chunk that turns out too slow makes the next plan
   try a longer one.
3. Serve every stream that has ``T*`` frames pending, up to ``max_streams``, oldest pending first;
   never more frames than have arrived, nor more than the adapter can run as one chunk
   (``StreamStatus.runnable``: its last frame position before a RoPE reset, its window). A stream
   whose source ended runs what it has left.
4. If no stream has ``T*`` pending, wait, unless waiting would make the oldest pending frame miss
   its deadline (``now + L > oldest deadline``): then run the frames that are there (whole units).
5. **When no chunk length sustains the load** the policy says so: a warning (once per run) and a
   reason ``unsustainable`` on the plan and in ``log``. It then degrades to throughput mode: the
   longest chunk (``max_chunk_units``) and every ready stream, so the backlog grows as slowly as the
   machine allows. Frames are never dropped, so deadlines are missed and counted by the runtime.

Admission (``accelframe_batch_admit``, live loops): a new stream is refused when, counted with the
running ones, no chunk length is sustainable (rule 1), or when the sustainable chunk ``T*`` would
make some stream miss its deadline: a chunk's first frame waits ``T* / f`` for the rest of its
frames to arrive (``f``: that stream's latent frame rate) and then ``L(T*, B)`` for the batch, and
``headroom (T* / f + L(T*, B))`` must stay within the stream's ``deadline_s`` (the same margin as
rule 1: the model is a mean, and a batch that runs slower than it pushes the chunk after it to a
longer ``T*``). While nothing was measured yet every stream is admitted.
"""

from __future__ import annotations

import warnings
from collections import deque
from typing import Any, ClassVar

import attrs

from accelframe import hookimpl
from accelframe.types import BatchContext, BatchEntry, BatchPlan, StreamStatus
from accelframe.validators import number_in

LOG_LIMIT = 1024  # decisions kept in ``log``


class UnsustainableLoadWarning(UserWarning):
    """The offered frame rate is above what the machine can serve with any allowed batch."""


@attrs.define(eq=False, kw_only=True)
class LatencyModel:
    """``L(x) = a + b x`` with ``x = B T``, fitted by weighted least squares with forgetting."""

    forget: float = 0.9
    samples: list[tuple[float, float, float]] = attrs.field(factory=list)  # (x, latency, weight)

    def observe(self, x: float, latency: float) -> None:
        self.samples = [(sx, sy, w * self.forget) for sx, sy, w in self.samples if w * self.forget > 1e-4]
        self.samples.append((float(x), float(latency), 1.0))

    @property
    def ready(self) -> bool:
        return bool(self.samples)

    def coefficients(self) -> tuple[float, float]:
        """(a, b); a line through the origin until two distinct x were measured."""
        sw = sum(w for _, _, w in self.samples)
        mx = sum(w * x for x, _, w in self.samples) / sw
        my = sum(w * y for _, y, w in self.samples) / sw
        sxx = sum(w * (x - mx) ** 2 for x, _, w in self.samples)
        if sxx <= 1e-12 * max(mx * mx, 1.0):
            return 0.0, my / mx
        b = sum(w * (x - mx) * (y - my) for x, y, w in self.samples) / sxx
        b = max(b, 0.0)
        a = max(my - b * mx, 0.0)
        if a == 0.0:  # clamped intercept: refit the slope through the origin
            b = sum(w * x * y for x, y, w in self.samples) / sum(w * x * x for x, _, w in self.samples)
        return a, b

    def __call__(self, frames: int, streams: int) -> float:
        a, b = self.coefficients()
        return a + b * frames * streams


@attrs.define(eq=False, kw_only=True)
class SLOBatch:
    """Chooses chunk length and batch size from a fitted latency model (see the module docstring)."""

    max_chunk_units: int = attrs.field(default=4, validator=number_in(1, 1000, integer=True))
    max_streams: int = attrs.field(default=8, validator=number_in(1, 1000, integer=True))
    headroom: float = attrs.field(default=1.1, validator=number_in(1.0, 10.0))
    forget: float = attrs.field(default=0.9, validator=number_in(0.0, 1.0, lo_open=True))
    name: ClassVar[str] = "slo-batch"  # the stack name; not a keyword argument
    model: LatencyModel = attrs.field(init=False)
    # the latest decisions, bounded so an hours-long stream keeps flat memory
    log: deque[dict[str, Any]] = attrs.field(factory=lambda: deque(maxlen=LOG_LIMIT), init=False)
    unsustainable_plans: int = attrs.field(default=0, init=False)  # plans made in throughput mode
    _warned: bool = attrs.field(default=False, init=False)

    def __attrs_post_init__(self) -> None:
        self.model = LatencyModel(forget=self.forget)

    def reset(self) -> None:
        self.model = LatencyModel(forget=self.forget)
        self.log.clear()
        self.unsustainable_plans = 0
        self._warned = False

    @staticmethod
    def _running(ctx: BatchContext) -> list[StreamStatus]:
        return [s for s in ctx.streams if s.total is None or s.consumed < s.total]

    def _choose(self, unit: int, rate: float, streams: int) -> tuple[int, bool]:
        """(T*, sustainable) for ``streams`` streams offering ``rate`` frames per second."""
        b = max(min(streams, self.max_streams), 1)
        if not self.model.ready:
            return unit, True
        for k in range(1, self.max_chunk_units + 1):
            t = k * unit
            if b * t / max(self.model(t, b), 1e-9) >= self.headroom * rate:
                return t, True
        return self.max_chunk_units * unit, False

    def chunk_choice(self, ctx: BatchContext) -> tuple[int, bool]:
        """(T*, sustainable) for the streams of ``ctx``."""
        live = self._running(ctx)
        return self._choose(ctx.unit_frames, sum(s.fps for s in live), len(live))

    @hookimpl
    def accelframe_batch_admit(self, ctx: BatchContext, fps: float, deadline_s: float | None) -> str | None:
        """Refuse a stream whose rate, beside the running streams', no allowed chunk sustains under
        the fitted latency model, or whose sustainable chunk would take some stream past its deadline
        (see the module docstring; admitted while nothing was measured yet)."""
        live = self._running(ctx)
        rate, n = sum(s.fps for s in live) + fps, len(live) + 1
        chunk, sustainable = self._choose(ctx.unit_frames, rate, n)
        b = max(min(n, self.max_streams), 1)
        if sustainable:
            if not self.model.ready:
                return None
            latency = self.model(chunk, b)
            budgets = [(s.stream, s.fps, s.deadline_s) for s in live] + [("the new stream", fps, deadline_s)]
            for name, f, budget in budgets:
                wait = chunk / f if f > 0 else 0.0
                if budget is not None and self.headroom * (wait + latency) > budget:
                    who = name if name == "the new stream" else f"stream {name!r}"
                    return (f"slo-batch: with {n} streams the shortest sustainable chunk is {chunk} frames; "
                            f"its first frame would wait {wait:.2f} s for the rest and {latency:.2f} s for the "
                            f"batch, past the {budget:g} s deadline of {who} with headroom {self.headroom:g}")
            return None
        best = max(b * k * ctx.unit_frames / max(self.model(k * ctx.unit_frames, b), 1e-9)
                   for k in range(1, self.max_chunk_units + 1))
        return (f"slo-batch: {n} streams would offer {rate:.1f} frames/s and the measured latency serves at most "
                f"{best / self.headroom:.1f} (chunks of up to {self.max_chunk_units} units, headroom "
                f"{self.headroom}): the running streams would miss their deadlines")

    @hookimpl
    def accelframe_batch_plan(self, ctx: BatchContext) -> BatchPlan:
        unit = ctx.unit_frames
        chunk, sustainable = self.chunk_choice(ctx)
        self.unsustainable_plans += not sustainable
        if not sustainable and not self._warned:
            self._warned = True
            warnings.warn(UnsustainableLoadWarning(
                f"slo-batch: no chunk of up to {self.max_chunk_units} units sustains the offered "
                f"{sum(s.fps for s in ctx.streams):.1f} latent frames/s (latency model a, b = "
                f"{', '.join(f'{c:.4f}' for c in self.model.coefficients())}); serving the longest "
                "chunks, deadlines will be missed"), stacklevel=2)
        waiting = sorted((s for s in ctx.streams if s.oldest_pending_s is not None),
                         key=lambda s: (s.oldest_pending_s, s.stream))
        entries = []
        for s in waiting:
            want = s.bounded(chunk)
            if want > 0 and s.pending >= want:
                entries.append(BatchEntry(stream=s.stream, frames=want))
            if len(entries) == self.max_streams:
                break
        urgent = False
        if not entries and waiting:
            s = waiting[0]
            est = self.model(unit, 1) if self.model.ready else 0.0
            urgent = s.next_deadline_s is not None and ctx.now_s + est >= s.next_deadline_s
            whole = s.bounded(s.pending - s.pending % unit)
            if urgent and whole > 0:
                entries.append(BatchEntry(stream=s.stream, frames=whole))
        reason = (f"slo-batch: T*={chunk} ({'sustainable' if sustainable else 'unsustainable'}), "
                  f"{len(entries)} stream(s){', deadline-urgent' if urgent else ''}")
        self.log.append({"now_s": ctx.now_s, "chunk": chunk, "sustainable": sustainable,
                         "entries": [[e.stream, e.frames] for e in entries], "urgent": urgent})
        return BatchPlan(entries=tuple(entries), reason=reason)

    @hookimpl
    def accelframe_batch_observe(self, ctx: BatchContext, plan: BatchPlan, latency_s: float) -> None:
        if plan.entries:
            frames = max(e.frames for e in plan.entries)
            self.model.observe(frames * len(plan.entries), latency_s)


__all__ = ["LatencyModel", "SLOBatch", "UnsustainableLoadWarning"]
