"""TaylorSeer: compute every ``interval`` steps, forecast the calls in between (no cache mode).

Reference: "From Reusing to Forecasting: Accelerating Diffusion Models with TaylorSeers" and its
Wan2.1 code. Per unit, the first ``first_enhance`` calls are computed, then one call in every
``interval``. At a computed step ``k`` with the previous computed step ``k'`` the derivatives are
finite differences in step-index units::

    f_0 = v_k,   f_{i+1} = (f_i - f_i') / (k - k')       (f' the previous computed step's, up to max_order)

and a call ``d`` steps after ``k`` is forecast as ``Σ_i f_i d^i / i!``. The reference forecasts
per-layer features; here the model's velocity is forecast, which is what a step policy sees.
"""

from __future__ import annotations

import math

import attrs
import torch

from accelframe import hookimpl
from accelframe.types import AppliesTo, Mode, StepContext, StepDecision
from accelframe.validators import number_in
from accelframe_policies.history import RecentUnits, unit_key


@attrs.define(eq=False)
class _UnitState:
    calls: int = 0  # calls of the unit so far
    since: int = 0  # calls since the last computed one
    step: int | None = None  # the last computed step
    factors: list[torch.Tensor] = attrs.field(factory=list)  # f_0 .. f_m at that step
    shape: tuple[int, ...] = ()


@attrs.define(eq=False, kw_only=True)
class TaylorSeer:
    """TaylorSeer as a step policy; see the module docstring. Defaults are the Wan2.1 ones."""

    name = "taylorseer"
    interval: int = attrs.field(default=5, validator=number_in(1, 10_000, integer=True))
    max_order: int = attrs.field(default=1, validator=number_in(0, 8, integer=True))
    first_enhance: int = attrs.field(default=1, validator=number_in(1, 10_000, integer=True))
    applies_to: AppliesTo = attrs.field(default=AppliesTo.BOTH, converter=AppliesTo)
    _units: RecentUnits = attrs.field(init=False, factory=RecentUnits)
    peak_bytes: int = attrs.field(init=False, default=0)

    def reset(self) -> None:
        self._units.clear()

    def memory_bytes(self) -> int:
        return self.peak_bytes

    @hookimpl
    def accelframe_step_decide(self, ctx: StepContext) -> StepDecision:
        st = self._units.setdefault(unit_key(ctx), _UnitState())
        fresh = (st.calls < self.first_enhance or st.since + 1 >= self.interval or not st.factors
                 or st.shape != tuple(ctx.x.shape))
        if fresh:
            return StepDecision.recompute(reason="fresh step")
        d = float(ctx.step - st.step)
        v = st.factors[0].clone()
        for i, f in enumerate(st.factors[1:], start=1):
            v += f * (d ** i / math.factorial(i))
        return StepDecision.predict(v, reason=f"forecast {d:g} steps ahead")

    @hookimpl
    def accelframe_step_observe(self, ctx: StepContext, decision: StepDecision,
                                velocity: torch.Tensor) -> None:
        st = self._units.setdefault(unit_key(ctx), _UnitState())
        st.calls += 1
        if decision.mode is not Mode.RECOMPUTE:
            st.since += 1
            return
        factors = [velocity]
        if st.factors and st.shape == tuple(velocity.shape) and ctx.step > st.step:
            dist = float(ctx.step - st.step)
            for i in range(self.max_order):
                if i >= len(st.factors):
                    break
                factors.append((factors[i] - st.factors[i]) / dist)
        st.factors, st.step, st.since, st.shape = factors, ctx.step, 0, tuple(velocity.shape)
        held = sum(f.numel() * f.element_size() for u in self._units.values() for f in u.factors)
        self.peak_bytes = max(self.peak_bytes, held)


__all__ = ["TaylorSeer"]
