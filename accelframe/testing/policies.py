"""Small policies for tests: random but seeded deciders, failing plugins, a threshold router and a
scripted one.

They exercise the engine's contract from the outside, exactly as third-party policies would, and
are what accelframe's own property-based tests drive the engine with.
"""

from __future__ import annotations

import math
import random
import time
from typing import Any, Callable

import attrs
import torch

from accelframe import hookimpl
from accelframe.types import (
    AppliesTo,
    BatchContext,
    BatchEntry,
    BatchPlan,
    BlockContext,
    BlockVerdict,
    KVAction,
    KVContext,
    Mode,
    ModelCall,
    NoiseContext,
    StepContext,
    StepDecision,
)


class AlwaysRecompute:
    """Answers RECOMPUTE on the full forwarded frames, always: the exact answer, said out loud."""

    name = "always-recompute"

    @hookimpl
    def accelframe_step_decide(self, ctx: StepContext) -> StepDecision:
        return StepDecision.recompute()


@attrs.define(eq=False)
class NoOpinion:
    """Returns None at every call (the next policy decides) and counts the velocities it sees."""

    name = "no-opinion"
    seen: int = 0

    @hookimpl
    def accelframe_step_decide(self, ctx: StepContext) -> None:
        return None

    @hookimpl
    def accelframe_step_observe(self) -> None:
        self.seen += 1


@attrs.define(eq=False, kw_only=True)
class RandomStep:
    """Seeded random step decisions: CACHE the last velocity, PREDICT by linear extrapolation of
    the last two, or RECOMPUTE (sometimes on a random compute interval holding the active frames).
    Returns None (no opinion) when it has no usable history."""

    seed: int = 0
    p_cache: float = 0.3
    p_predict: float = 0.3
    p_interval: float = 0.3
    applies_to: AppliesTo = attrs.field(default=AppliesTo.BOTH, converter=AppliesTo)
    _rng: random.Random = attrs.field(init=False)
    _hist: dict[tuple[int, Any, int], list[torch.Tensor]] = attrs.field(init=False, factory=dict)

    def __attrs_post_init__(self) -> None:
        self._rng = random.Random(self.seed)

    def reset(self) -> None:
        self._rng = random.Random(self.seed)
        self._hist.clear()

    @hookimpl
    def accelframe_step_decide(self, ctx: StepContext) -> StepDecision | None:
        hist = [h for h in self._hist.get((ctx.generation, ctx.model, ctx.unit), [])
                if h.shape == ctx.x.shape]
        r = self._rng.random()
        if r < self.p_cache and hist:
            return StepDecision.cache(hist[-1])
        if r < self.p_cache + self.p_predict and len(hist) >= 2:
            return StepDecision.predict(2 * hist[-1] - hist[-2])
        if self._rng.random() < self.p_interval:
            s, e = ctx.frames
            active = ctx.iteration.active or (s, s + 1)
            return StepDecision.recompute(interval=(self._rng.randint(s, active[0]),
                                                    self._rng.randint(active[1], e)))
        return None

    @hookimpl
    def accelframe_step_observe(self, ctx: StepContext, decision: StepDecision,
                                velocity: torch.Tensor) -> None:
        key = (ctx.generation, ctx.model, ctx.unit)
        self._hist[key] = (self._hist.get(key, []) + [velocity])[-2:]


FAILURES = ("raise", "none-finite", "wrong-shape", "not-a-decision", "bad-interval")


@attrs.define(eq=False, kw_only=True)
class FailingStep:
    """A step policy that fails in a chosen way on every ``every``-th call."""

    how: str = attrs.field(default="raise", validator=attrs.validators.in_(FAILURES))
    every: int = 1
    _n: int = attrs.field(init=False, default=0)

    @hookimpl
    def accelframe_step_decide(self, ctx: StepContext) -> Any:
        self._n += 1
        if self._n % self.every:
            return None
        if self.how == "raise":
            raise RuntimeError("FailingStep raised on purpose")
        if self.how == "none-finite":
            return StepDecision.cache(torch.full_like(ctx.x, math.nan))
        if self.how == "wrong-shape":
            return StepDecision.predict(torch.zeros(1))
        if self.how == "not-a-decision":
            return "recompute please"
        s, e = ctx.frames
        return StepDecision.recompute(interval=(s, s + 1) if e - s > 1 else (s, e + 1))

    @hookimpl
    def accelframe_step_observe(self) -> None:
        if self.how == "raise":
            raise RuntimeError("FailingStep raised in observe on purpose")


def mean_brightness(frames: torch.Tensor, prompts: Any = None) -> torch.Tensor:
    """A toy scorer: per-frame mean pixel value, ``[B, F_pix]``."""
    return frames.mean(dim=(2, 3, 4))


@attrs.define(eq=False, kw_only=True)
class ThresholdBlock:
    """Accept a draft iff its worst frame's score >= tau; block 0 is always regenerated."""

    tau: float = 0.0
    scorer: Callable[..., torch.Tensor] = mean_brightness

    @hookimpl
    def accelframe_block_verdict(self, ctx: BlockContext) -> BlockVerdict:
        frames = ctx.draft_frames if ctx.draft_frames is not None else ctx.draft_latents
        scores = self.scorer(frames, ctx.prompts)  # [B, F]
        score = float(scores.min())
        if ctx.unit == 0:
            return BlockVerdict.regenerate(score, reason="block 0 is always regenerated")
        if score >= self.tau:
            return BlockVerdict.accept(score)
        return BlockVerdict.regenerate(score)


@attrs.define(eq=False)
class AcceptUnits:
    """Accept the drafts of the units in ``accept``, regenerate the others (a scripted router: any
    routing, for property tests of the block level). ``early``: give every verdict before the draft
    is decoded (``accelframe_block_early_verdict``); else after (``accelframe_block_verdict``)."""

    accept: frozenset = frozenset()
    early: bool = False

    def _scripted(self, ctx: BlockContext) -> BlockVerdict:
        if ctx.unit in self.accept:
            return BlockVerdict.accept(1.0, reason="scripted")
        return BlockVerdict.regenerate(0.0, reason="scripted")

    @hookimpl
    def accelframe_block_early_verdict(self, ctx: BlockContext) -> BlockVerdict | None:
        return self._scripted(ctx) if self.early else None

    @hookimpl
    def accelframe_block_verdict(self, ctx: BlockContext) -> BlockVerdict:
        return self._scripted(ctx)


@attrs.define(eq=False, kw_only=True)
class FailingBlock:
    """A block policy that raises, or returns a non-finite score or nonsense."""

    how: str = attrs.field(default="raise",
                           validator=attrs.validators.in_(("raise", "nan-score", "nonsense")))

    @hookimpl
    def accelframe_block_verdict(self, ctx: BlockContext) -> Any:
        if self.how == "raise":
            raise RuntimeError("FailingBlock raised on purpose")
        if self.how == "nan-score":
            return BlockVerdict.accept(math.nan)
        return 42


@attrs.define(eq=False, kw_only=True)
class RandomBatch:
    """Seeded random batch plans; with ``overreach`` it sometimes asks for frames that have not
    arrived (which the stream loop must refuse)."""

    seed: int = 0
    max_streams: int = 3
    overreach: bool = False
    _rng: random.Random = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self._rng = random.Random(self.seed)

    @hookimpl
    def accelframe_batch_plan(self, ctx: BatchContext) -> BatchPlan:
        entries = []
        for s in self._rng.sample(list(ctx.streams), len(ctx.streams)):
            units = s.pending // ctx.unit_frames
            if self.overreach and self._rng.random() < 0.2:
                units += 1
            if units and len(entries) < self.max_streams and self._rng.random() < 0.7:
                n = self._rng.randint(1, units) * ctx.unit_frames
                entries.append(BatchEntry(stream=s.stream, frames=n))
        return BatchPlan(entries=tuple(entries), reason="random")

    @hookimpl
    def accelframe_noise_level(self, ctx: NoiseContext) -> float:
        return self._rng.choice([0.3, 0.5, 0.8, 1.0])


@attrs.define(eq=False, kw_only=True)
class EvictOldest:
    """Keep at most ``keep`` cached frames besides the sinks, evicting the oldest."""

    keep: int = 3
    sinks: int = 1

    @hookimpl
    def accelframe_kv_manage(self, ctx: KVContext) -> KVAction:
        sinks = ctx.cached_frames[: self.sinks] if not ctx.sinks else ctx.sinks
        rest = [f for f in ctx.cached_frames if f not in sinks]
        return KVAction(evict=tuple(rest[: max(len(rest) - self.keep, 0)]), sinks=tuple(sinks))


@attrs.define(eq=False)
class CallRecorder:
    """A model-call wrapper that records every call (kind, model, unit, step, frames, seconds)."""

    calls: list[tuple[str, str, int, int, tuple[int, int], float]] = attrs.field(factory=list)

    @hookimpl(wrapper=True)
    def accelframe_model_call(self, call: ModelCall) -> Any:
        t0 = time.perf_counter()
        out = yield
        self.calls.append((call.kind, call.model.value, call.unit, call.step, call.frames,
                           time.perf_counter() - t0))
        return out


__all__ = [
    "AcceptUnits", "AlwaysRecompute", "NoOpinion", "CallRecorder", "EvictOldest", "FailingBlock",
    "FailingStep",
    "RandomBatch", "RandomStep",
    "ThresholdBlock", "mean_brightness", "Mode",
]
