"""SCOPE: the tri-modal step scheduler (cache / predict / recompute) with selective computation.

Reference: "Not All Frames Deserve Full Computation" (SCOPE), section 3. Per model call ``k`` of a
unit (keyed on (generation, model, unit), so decisions are per (unit, step)):

    d_k  = ||φ_k - φ_{k-1}||_1 / (||φ_{k-1}||_1 + ε)          φ: the adapter's probe (Eq. 4)
    r_k^- = r_{k-1} + d_k
    mode = CACHE      if r_k^- < τ_c and a computed velocity is there            (Eq. 3)
           PREDICT    if τ_c <= r_k^- < τ_p and the predictor's history is there
           RECOMPUTE  otherwise, and always at a unit's first step, and after H non-recompute
                      calls in a row
    r_k  = r_k^- (CACHE), λ r_k^- (PREDICT), 0 (RECOMPUTE)                         (Eq. 5)

PREDICT extrapolates the velocity along σ (:mod:`accelframe_policies.taylor`, Eq. 6 and 7, with
its stability checks and clipping). With ``selective=True`` every RECOMPUTE runs only on the
compute interval of Eq. 9 (:mod:`accelframe_policies.selective`); that needs an adapter whose plans
carry update masks. A call whose advancing frames were not all computed by the newest history
entry (a block that just started past the last compute interval) has no history: it recomputes.

The score and the counters follow the mode that was carried out (``accelframe_step_observe``), so
a decision the engine overrode, or one another policy made, keeps SCOPE's state consistent.
"""

from __future__ import annotations

from typing import Any

import attrs
import torch

from accelframe import hookimpl
from accelframe import adapter as caps
from accelframe.stream_knobs import StreamKnobs
from accelframe.errors import ConfigError
from accelframe.types import AppliesTo, Mode, StepContext, StepDecision
from accelframe.validators import close_matches, number_in, one_of
from accelframe_policies.history import History, RecentUnits, entry, rel_l1, unit_key
from accelframe_policies.selective import ActiveInterval, compute_interval
from accelframe_policies.taylor import NEEDS, PREDICTORS, predict

# computed entries PREDICT needs before it may run (fewer: Eq. 3's "history available" fails)
MIN_HISTORY = {"taylor1": 2, "taylor2": 3, "momentum": 3, "auto": 3}

# The paper's operating points (section 4.3) and its threshold sensitivity settings (Table 2).
PRESETS: dict[str, dict[str, Any]] = {
    "skyreels-v2": {"tau_c": 0.18, "tau_p": 0.42, "predictor": "taylor2", "decay": 0.75, "max_skip": 5,
                    "selective": True},
    "magi-1": {"tau_c": 0.03, "tau_p": 0.08, "predictor": "taylor2", "decay": 0.75, "max_skip": 5,
               "selective": False},
}
# the adapter each preset was measured on: errors about a preset suggest it
PRESET_ADAPTERS: dict[str, str] = {"skyreels-v2": "skyreels-v2-df", "magi-1": "magi-1"}
# what `accelframe plugins scope` shows for the two knobs checked outside a validator
PRESET_ALLOWED = "None or one of " + ", ".join(f"{p!r} (made for --adapter {a})" for p, a in PRESET_ADAPTERS.items())
HISTORY_ALLOWED = ("None (what the predictor needs) or an int >= the predictor's minimum ("
                   + "; ".join(f"{k}: {v}" for k, v in MIN_HISTORY.items()) + ")")
SENSITIVITY: dict[str, tuple[tuple[float, float], ...]] = {
    "skyreels-v2": ((0.12, 0.30), (0.15, 0.36), (0.18, 0.42), (0.21, 0.48), (0.25, 0.55)),
    "magi-1": ((0.02, 0.05), (0.03, 0.08), (0.05, 0.12), (0.08, 0.15)),
}


@attrs.define(eq=False)
class _UnitState:
    phi: torch.Tensor | None = None  # the previous call's probe, all forwarded frames
    r: float = 0.0  # the accumulated discrepancy after the previous call
    run: int = 0  # non-recompute calls in a row
    pending: Any = None  # (iteration index, φ, r^-, ē) worked out by decide for observe


@attrs.define(eq=False, kw_only=True)
class Scope(StreamKnobs):
    """The SCOPE step policy; see the module docstring. ``Scope.preset("skyreels-v2")`` gives the
    paper's settings. A live stream may set its own ``tau_c`` and ``tau_p``
    (:mod:`accelframe.stream_knobs`)."""

    name = "scope"
    live_knobs = ("tau_c", "tau_p")
    tau_c: float = attrs.field(default=0.18, validator=number_in(0.0, 1e6))
    tau_p: float = attrs.field(default=0.42, validator=number_in(0.0, 1e6))
    predictor: str = attrs.field(default="taylor2", validator=one_of(*PREDICTORS))
    decay: float = attrs.field(default=0.75, validator=number_in(0.0, 1.0, lo_open=True))
    max_skip: int = attrs.field(default=5, validator=number_in(1, 10_000, integer=True))
    selective: bool = attrs.field(default=False, validator=one_of(True, False))
    history: int | None = attrs.field(default=None, metadata={"allowed": HISTORY_ALLOWED})
    probe_frames: str = attrs.field(default="all", validator=one_of("all", "active"))
    eps: float = attrs.field(default=1e-8, validator=number_in(0.0, 1.0, lo_open=True))
    clip: float = attrs.field(default=0.05, validator=number_in(0.0, 1e6))
    max_ratio: float = attrs.field(default=8.0, validator=number_in(0.0, 1e6, lo_open=True))
    momentum: float = attrs.field(default=0.5, validator=number_in(0.0, 1.0))
    applies_to: AppliesTo = attrs.field(default=AppliesTo.BOTH, converter=AppliesTo)
    # the adapter the preset this was built from was made for (errors suggest it); None: no preset
    made_for: str | None = attrs.field(default=None, init=False)
    _hist: History = attrs.field(init=False)
    _units: RecentUnits = attrs.field(init=False, factory=RecentUnits)
    _ends: ActiveInterval = attrs.field(init=False, factory=ActiveInterval)

    def check_stream_knobs(self, values: dict[str, Any]) -> None:
        if values["tau_c"] > values["tau_p"]:
            raise ConfigError("Scope", "tau_c", values["tau_c"],
                              f"a cache threshold <= the prediction threshold tau_p = {values['tau_p']}")

    def __attrs_post_init__(self) -> None:
        if self.tau_c > self.tau_p:
            raise ConfigError("Scope", "tau_c", self.tau_c,
                              f"a cache threshold <= the prediction threshold tau_p = {self.tau_p}")
        need = MIN_HISTORY[self.predictor]
        if self.history is None:
            self.history = NEEDS[self.predictor]
        elif (not isinstance(self.history, int) or isinstance(self.history, bool)
              or self.history < need):
            raise ConfigError("Scope", "history", self.history,
                              f"an int >= {need}: the {self.predictor!r} predictor extrapolates from "
                              f"{need} computed velocities")
        self._hist = History(size=self.history)

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> Scope:
        """The paper's setting ``name`` (``"skyreels-v2"`` or ``"magi-1"``), keywords override it."""
        if not isinstance(name, str) or name not in PRESETS:  # a list is refused, not hashed
            close = close_matches(name, list(PRESETS)) if isinstance(name, str) else []
            raise ConfigError("Scope", "preset", name, ("did you mean " + repr(close[0]) + "? " if close else "")
                              + "one of " + ", ".join(f"{p!r} (made for --adapter {a})"
                                                      for p, a in PRESET_ADAPTERS.items()))
        policy = cls(**{**PRESETS[name], **overrides})
        policy.made_for = PRESET_ADAPTERS[name]
        return policy

    @property
    def requires(self) -> frozenset[str]:
        return frozenset({caps.UPDATE_MASK}) if self.selective else frozenset()

    def reset(self) -> None:
        self._hist.clear()
        self._units.clear()
        self._ends.clear()

    def memory_bytes(self) -> int:
        """Peak bytes of velocity history held (what SCOPE adds to a run's memory)."""
        return self._hist.peak_bytes

    # ---- hooks ----------------------------------------------------------------------------------

    @hookimpl
    def accelframe_step_decide(self, ctx: StepContext) -> StepDecision:
        key = unit_key(ctx)
        it = ctx.iteration
        st = self._units.get(key)
        if st is None:
            st = self._units[key] = _UnitState()
        phi = ctx.probe
        d = self._discrepancy(phi, st.phi, it)
        end = self._ends.peek(key, it) if self.selective else None
        interval = compute_interval(it, end) if end is not None else None
        r_minus = st.r + (d or 0.0)
        st.pending = (it.index, phi, r_minus, end)

        def recompute(why: str) -> StepDecision:
            return StepDecision.recompute(interval=interval, reason=why)

        if d is None or ctx.step == 0 or it.starts:
            return recompute("first step of the unit")
        if st.run >= self.max_skip:
            return recompute(f"H = {self.max_skip} non-recompute calls in a row")
        hist = self._hist.get(key, ctx.x.shape)
        if not hist or not _covers(hist[0].computed, it.update):
            return recompute("advancing frames without a computed velocity")
        if r_minus < self.knob(ctx.generation, "tau_c"):
            return StepDecision.cache(hist[0].velocity, reason=f"r={r_minus:.4f} < tau_c")
        if r_minus < self.knob(ctx.generation, "tau_p") and len(hist) >= MIN_HISTORY[self.predictor]:
            sigma = torch.tensor(it.sigma, dtype=torch.float64)
            v, _ = predict(hist, sigma, self.predictor, momentum=self.momentum, max_ratio=self.max_ratio,
                           clip=self.clip)
            return StepDecision.predict(v, reason=f"r={r_minus:.4f} < tau_p")
        return recompute(f"r={r_minus:.4f}")

    @hookimpl
    def accelframe_step_observe(self, ctx: StepContext, decision: StepDecision,
                                velocity: torch.Tensor) -> None:
        key = unit_key(ctx)
        it = ctx.iteration
        st = self._units.get(key)
        if st is None:
            st = self._units[key] = _UnitState()
        if st.pending is not None and st.pending[0] == it.index:
            _, phi, r_minus, end = st.pending
        else:  # another policy decided this call: bring the score and ē up to date
            phi = ctx.probe
            r_minus = st.r + (self._discrepancy(phi, st.phi, it) or 0.0)
            end = self._ends.peek(key, it) if self.selective else None
        st.pending = None
        st.phi = phi
        if end is not None:
            self._ends.record(key, end)
        if decision.mode is Mode.RECOMPUTE:
            st.r, st.run = 0.0, 0
            self._hist.push(key, entry(velocity, it.sigma, it.frames, decision.interval, it.step))
        elif decision.mode is Mode.CACHE:
            st.r, st.run = r_minus, st.run + 1
        else:
            st.r, st.run = self.decay * r_minus, st.run + 1

    def _discrepancy(self, phi: torch.Tensor, before: torch.Tensor | None, it: Any) -> float | None:
        """Eq. 4 over all forwarded frames, or the advancing ones (``probe_frames="active"``)."""
        if before is None or before.shape != phi.shape:
            return None
        if self.probe_frames == "active" and it.active is not None:
            a, b = it.active[0] - it.frames[0], it.active[1] - it.frames[0]
            phi, before = phi[:, a:b], before[:, a:b]
        return rel_l1(phi, before, self.eps)


def _covers(computed: torch.Tensor, update: tuple[bool, ...]) -> bool:
    """Every advancing frame was computed."""
    return bool(computed[torch.tensor(update, dtype=torch.bool)].all())


def make_scope(preset: str | None = None, **kwargs: Any) -> Scope:
    """The registered factory: ``pipe.use("scope", preset="skyreels-v2", tau_c=0.12, ...)``."""
    return Scope.preset(preset, **kwargs) if preset is not None else Scope(**kwargs)


make_scope.accelframe_allowed = {"preset": PRESET_ALLOWED}  # type: ignore[attr-defined]  # accelframe.knobs


__all__ = ["MIN_HISTORY", "PRESETS", "PRESET_ADAPTERS", "SENSITIVITY", "Scope", "make_scope"]
