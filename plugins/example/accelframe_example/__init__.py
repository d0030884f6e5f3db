"""every-n: recompute every n-th model call of a unit, reuse the last computed velocity between.

The template for third-party step policies: a validated attrs config that is also the plugin
object, per-generation state dropped in ``reset()`` (which the pipeline calls before every
generation and streaming run), a decision in ``accelframe_step_decide`` and bookkeeping in
``accelframe_step_observe``, and one module-level registration hook that the entry point exposes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

import attrs

from accelframe import AppliesTo, Mode, StepContext, StepDecision, hookimpl
from accelframe.validators import number_in

if TYPE_CHECKING:  # annotations only: registering the plugin (accelframe --help) imports no torch
    import torch

__version__ = "0.1.0"


@attrs.define(eq=False, kw_only=True)  # eq=False: pluggy tells plugins apart by identity
class EveryN:
    """Recompute steps 0, n, 2n, ... of each unit; CACHE (reuse the last velocity) otherwise."""

    n: int = attrs.field(default=2, validator=number_in(1, 1000, integer=True))
    applies_to: AppliesTo = attrs.field(default=AppliesTo.BOTH, converter=AppliesTo)
    # (generation, model) -> (unit, its last computed velocity [B, F, C, H, W]); keyed by
    # generation so that concurrent streams of one pipeline never share state
    _last: dict[tuple[int, Any], tuple[int, torch.Tensor]] = attrs.field(factory=dict, init=False)

    def reset(self) -> None:
        """Drop per-generation state; the pipeline calls it before every generate and stream."""
        self._last.clear()

    @hookimpl
    def accelframe_step_decide(self, ctx: StepContext) -> StepDecision:
        unit, last = self._last.get((ctx.generation, ctx.model), (None, None))
        if unit != ctx.unit or ctx.step % self.n == 0 or last.shape != ctx.x.shape:
            return StepDecision.recompute(reason="every-n: scheduled or no history")
        return StepDecision.cache(last, reason=f"every-n: step {ctx.step} reuses")

    @hookimpl
    def accelframe_step_observe(self, ctx: StepContext, decision: StepDecision,
                                velocity: torch.Tensor) -> None:
        if decision.mode is Mode.RECOMPUTE:
            self._last[(ctx.generation, ctx.model)] = (ctx.unit, velocity)


@hookimpl
def accelframe_register_policies(register: Callable[..., None]) -> None:
    register("every-n", EveryN, kind="step",
             description="recompute every n-th call of a unit, reuse the last velocity between")
