"""The exact path: the answer of last resort at every decision hook, and the innermost model call.

``ExactFallback`` answers each decision hook ``trylast``: recompute the full interval, regenerate
with the target, a batch of one unit, no KV action, the default noise level. The engine uses the
same answers when a policy fails, so a failing policy changes speed, never correctness.
"""

from __future__ import annotations

import warnings
from typing import Any

from accelframe.errors import PolicyError, PolicyFallbackWarning
from accelframe.hookspecs import hookimpl
from accelframe.types import (
    BatchContext,
    BatchEntry,
    BatchPlan,
    BlockContext,
    BlockVerdict,
    ModelCall,
    NoiseContext,
    StepContext,
    StepDecision,
)

RECOMPUTE = StepDecision.recompute(reason="exact")
REGENERATE = BlockVerdict.regenerate(reason="exact")


def batch_of_one(ctx: BatchContext) -> BatchPlan:
    """One unit of the stream whose oldest pending frame arrived first; empty when none is ready."""
    ready = [s for s in ctx.streams if s.pending >= ctx.unit_frames]
    if not ready:
        return BatchPlan(entries=(), reason="exact: waiting for a full unit")
    first = min(ready, key=lambda s: (s.oldest_pending_s, s.stream))
    return BatchPlan(entries=(BatchEntry(stream=first.stream, frames=ctx.unit_frames),),
                     reason="exact: batch of one")


class ExactFallback:
    """Answers every decision hook last, exactly."""

    @hookimpl(trylast=True)
    def accelframe_step_decide(self, ctx: StepContext) -> StepDecision:
        return RECOMPUTE

    @hookimpl(trylast=True)
    def accelframe_block_verdict(self, ctx: BlockContext) -> BlockVerdict:
        return REGENERATE

    @hookimpl(trylast=True)
    def accelframe_batch_plan(self, ctx: BatchContext) -> BatchPlan:
        return batch_of_one(ctx)

    @hookimpl(trylast=True)
    def accelframe_noise_level(self, ctx: NoiseContext) -> float:
        return ctx.default_sigma


class Runner:
    """The innermost implementation of ``accelframe_model_call``: it runs the call."""

    @hookimpl(trylast=True)
    def accelframe_model_call(self, call: ModelCall) -> Any:
        return call.run()


def record_failure(owner: Any, hook: str, plugin: str, problem: str,
                   exc: BaseException | None = None, *, fallback_used: bool = True) -> None:
    """DESIGN.md section 7 for one failed answer: re-raise under ``owner.strict``; otherwise
    count it, add a ``fallback`` trace event and warn, once per (plugin, hook) of ``owner``.

    ``owner`` is an engine or a stream loop: it has ``strict``, ``stats``, ``trace`` and a
    ``warned`` set. ``fallback_used`` is False where nothing was replaced (an observe or a
    lifecycle hook raised)."""
    if owner.strict:
        raise PolicyError(hook, plugin, problem) from exc
    owner.stats.count_fallback(hook)
    owner.trace.add("fallback", hook=hook, plugin=plugin, problem=problem, exact=fallback_used)
    if (plugin, hook) not in owner.warned:
        owner.warned.add((plugin, hook))
        answer = "the exact path answered" if fallback_used else "ignored"
        warnings.warn(f"plugin {plugin!r} failed in {hook}: {problem}; {answer} (see the "
                      "trace's 'fallback' events; strict=True raises)", PolicyFallbackWarning,
                      stacklevel=4)
