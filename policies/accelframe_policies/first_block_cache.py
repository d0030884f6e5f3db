"""Reuse-only caching in the style of diffusers' first-block cache.

Reference: diffusers' ``hooks/first_block_cache.py``. A cheap early signal of the call (there the
first block's residual, here the adapter's probe, the first block's modulated input) is compared
with the same signal at the *last computed* call of the unit; nothing accumulates:

    mean|φ_k - φ_last| / mean|φ_last| <= threshold  ->  CACHE (reuse the last computed velocity)
    otherwise                                       ->  RECOMPUTE (and φ_last = φ_k)

No prediction and no compute interval: the binary cache-or-recompute baseline.
"""

from __future__ import annotations


import attrs
import torch

from accelframe import hookimpl
from accelframe.types import AppliesTo, Mode, StepContext, StepDecision
from accelframe.validators import number_in
from accelframe_policies.history import History, RecentUnits, entry, rel_l1, unit_key


@attrs.define(eq=False, kw_only=True)
class FirstBlockCache:
    """Reuse-only caching; see the module docstring. diffusers' default threshold is 0.05."""

    name = "first-block-cache"
    threshold: float = attrs.field(default=0.05, validator=number_in(0.0, 1e6))
    applies_to: AppliesTo = attrs.field(default=AppliesTo.BOTH, converter=AppliesTo)
    _hist: History = attrs.field(init=False, factory=lambda: History(size=1))
    _phi: RecentUnits = attrs.field(init=False, factory=RecentUnits)

    def reset(self) -> None:
        self._hist.clear()
        self._phi.clear()

    def memory_bytes(self) -> int:
        return self._hist.peak_bytes

    @hookimpl
    def accelframe_step_decide(self, ctx: StepContext) -> StepDecision:
        key = unit_key(ctx)
        last = self._phi.get(key)
        hist = self._hist.get(key, ctx.x.shape)
        if last is None or not hist or last.shape != ctx.probe.shape:
            return StepDecision.recompute(reason="nothing computed yet")
        change = rel_l1(ctx.probe, last, 0.0)
        if change <= self.threshold:
            return StepDecision.cache(hist[0].velocity, reason=f"change {change:.4f}")
        return StepDecision.recompute(reason=f"change {change:.4f}")

    @hookimpl
    def accelframe_step_observe(self, ctx: StepContext, decision: StepDecision,
                                velocity: torch.Tensor) -> None:
        if decision.mode is Mode.RECOMPUTE:
            key = unit_key(ctx)
            self._phi[key] = ctx.probe
            self._hist.push(key, entry(velocity, ctx.sigma, ctx.frames, decision.interval, ctx.step))


__all__ = ["FirstBlockCache"]
