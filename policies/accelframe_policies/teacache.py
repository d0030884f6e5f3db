"""TeaCache: cache a step when the rescaled change of the modulated input has stayed small.

Reference: "Timestep Embedding Tells: It's Time to Cache for Video Diffusion Model" and its Wan2.1
code. Per model call of a unit, with φ the adapter's probe (the timestep-modulated input of the
first block) and ``poly`` a degree-4 polynomial fitted per model:

    acc += poly(mean|φ_k - φ_{k-1}| / mean|φ_{k-1}|)
    acc <  threshold  ->  CACHE (reuse the last computed velocity)
    else              ->  RECOMPUTE, acc = 0

The first ``ret_steps`` calls of a unit and its last call are always computed (``acc = 0``).
``φ_{k-1}`` is the previous call's probe whatever that call did. The reference caches the blocks'
residual and re-runs the head; here the whole velocity is reused.

Coefficients: the published Wan2.1 sets (``COEFFICIENTS``, highest degree first), ``"identity"``
(no rescale), or a list fitted by ``accelframe calibrate`` for any adapter.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import attrs
import torch

from accelframe import hookimpl
from accelframe.errors import ConfigError
from accelframe.types import AppliesTo, Mode, StepContext, StepDecision
from accelframe.validators import boolean, number_in
from accelframe_policies.history import History, RecentUnits, entry, rel_l1, unit_key

# TeaCache4Wan2.1's published rescale polynomials (numpy.poly1d order, highest degree first); the
# "-ret" sets belong to its use_ret_steps mode, whose thresholds are 0.05 / 0.10 (1.3B)
COEFFICIENTS: dict[str, tuple[float, ...]] = {
    "wan2.1-t2v-1.3b": (2.39676752e03, -1.31110545e03, 2.01331979e02, -8.29855975e00, 1.37887774e-01),
    "wan2.1-t2v-1.3b-ret": (-5.21862437e04, 9.23041404e03, -5.28275948e02, 1.36987616e01, -4.99875664e-02),
    "wan2.1-t2v-14b": (-5784.54975374, 5449.50911966, -1811.16591783, 256.27178429, -13.02252404),
    "wan2.1-t2v-14b-ret": (-3.03318725e05, 4.90537029e04, -2.65530556e03, 5.87365115e01, -3.15583525e-01),
    "identity": (1.0, 0.0),
}


def coefficients_converter(owner: str) -> Callable[[Any], tuple[float, ...]]:
    """An attrs converter for a ``coefficients`` field of ``owner``: a published set's name or a
    list of finite numbers (highest degree first); anything else is a ConfigError naming ``owner``."""

    def convert(value: Any) -> tuple[float, ...]:
        if isinstance(value, str):
            if value not in COEFFICIENTS:
                raise ConfigError(owner, "coefficients", value,
                                  "a list of numbers (highest degree first) or one of "
                                  + ", ".join(repr(k) for k in COEFFICIENTS))
            return COEFFICIENTS[value]
        try:
            out = tuple(float(c) for c in value)
        except (TypeError, ValueError):
            raise ConfigError(owner, "coefficients", value,
                              "a list of numbers (highest degree first) or a published set name") from None
        if not out or not all(c == c and abs(c) != float("inf") for c in out):
            raise ConfigError(owner, "coefficients", value, "a non-empty list of finite numbers")
        return out

    return convert


def polyval(coefficients: Sequence[float], x: float) -> float:
    """``numpy.poly1d(coefficients)(x)``: Horner's rule, highest degree first."""
    y = 0.0
    for c in coefficients:
        y = y * x + c
    return y


@attrs.define(eq=False)
class _UnitState:
    phi: torch.Tensor | None = None
    acc: float = 0.0
    calls: int = 0


@attrs.define(eq=False, kw_only=True)
class TeaCache:
    """TeaCache as a step policy; see the module docstring."""

    name = "teacache"
    threshold: float = attrs.field(default=0.08, validator=number_in(0.0, 1e6))
    coefficients: tuple[float, ...] = attrs.field(default="wan2.1-t2v-1.3b", converter=coefficients_converter("TeaCache"))
    ret_steps: int = attrs.field(default=1, validator=number_in(1, 10_000, integer=True))
    last_step: bool = attrs.field(default=True, validator=boolean)  # the last call of a unit is always computed
    applies_to: AppliesTo = attrs.field(default=AppliesTo.BOTH, converter=AppliesTo)
    _hist: History = attrs.field(init=False, factory=lambda: History(size=1))
    _units: RecentUnits = attrs.field(init=False, factory=RecentUnits)

    def reset(self) -> None:
        self._hist.clear()
        self._units.clear()

    def memory_bytes(self) -> int:
        return self._hist.peak_bytes

    @hookimpl
    def accelframe_step_decide(self, ctx: StepContext) -> StepDecision:
        key = unit_key(ctx)
        st = self._units.setdefault(key, _UnitState())
        phi = ctx.probe
        forced = st.calls < self.ret_steps or (self.last_step and _is_last(ctx)) or st.phi is None
        if st.phi is not None and st.phi.shape == phi.shape:
            st.acc += polyval(self.coefficients, rel_l1(phi, st.phi, 0.0))
        st.phi, st.calls = phi, st.calls + 1
        hist = self._hist.get(key, ctx.x.shape)
        if forced or not hist or st.acc >= self.threshold:
            return StepDecision.recompute(reason=f"acc={st.acc:.4f}")
        return StepDecision.cache(hist[0].velocity, reason=f"acc={st.acc:.4f} < {self.threshold}")

    @hookimpl
    def accelframe_step_observe(self, ctx: StepContext, decision: StepDecision,
                                velocity: torch.Tensor) -> None:
        if decision.mode is Mode.RECOMPUTE:
            key = unit_key(ctx)
            st = self._units.setdefault(key, _UnitState())
            st.acc = 0.0
            self._hist.push(key, entry(velocity, ctx.sigma, ctx.frames, decision.interval, ctx.step))


def _is_last(ctx: StepContext) -> bool:
    """The call that finishes its unit (every advancing frame reaches σ = 0)."""
    it = ctx.iteration
    return any(u and n == 0.0 for u, n in zip(it.update, it.sigma_next)) and bool(it.finishes)


__all__ = ["COEFFICIENTS", "TeaCache", "coefficients_converter", "polyval"]
