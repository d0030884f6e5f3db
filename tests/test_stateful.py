"""Stateful property tests (hypothesis ``RuleBasedStateMachine``) against reference models.

- :class:`UnitByUnitMachine` continues one block-plan generation a few units at a time with a
  carried adapter state, while step policies come and go and KV evictions, sink changes and RoPE
  resets happen between chunks. A plain-Python reference model says which frames the KV cache
  must hold, which are its sinks, and what every emitted frame must decode to (invariants 4 and
  1: the KV holds exactly the committed clean latents of emitted units, in order, the rolling
  window and its sinks respected; an untouched, exact run equals one whole generation).
- :class:`PolicyStackMachine` pushes and pops step policies (exact ones, failing ones and
  reusing ones) on one pipeline and generates after each change: while every policy on the
  stack is exact-equivalent (or fails, and is answered by the exact path) the result equals the
  no-policy baseline bit for bit (invariants 1 and 8); otherwise the reuse bound holds
  (invariant 2) and the call counts add up.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from accelframe.errors import PolicyFallbackWarning
from accelframe.pipeline import Pipeline
from accelframe.plugins import EXACT
from accelframe.testing import AnalyticState
from accelframe.testing.fixtures import make_hooks
from accelframe.testing.policies import (
    FAILURES,
    AlwaysRecompute,
    FailingStep,
    NoOpinion,
    RandomStep,
    ThresholdBlock,
)
from accelframe.types import Request, Role

MACHINE_SETTINGS = settings(max_examples=40, stateful_step_count=20, deadline=None,
                            derandomize=True,
                            suppress_health_check=[HealthCheck.too_slow,
                                                   HealthCheck.data_too_large])
PROMPT = "a green triangle moves right"


def _exact_policy(kind: str) -> Any:
    if kind == "recompute":
        return AlwaysRecompute()
    if kind == "silent":
        return NoOpinion()
    return RandomStep(seed=7, p_cache=0.0, p_predict=0.0, p_interval=0.0)


def _quiet(fn: Any, *args: Any, **kwargs: Any) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PolicyFallbackWarning)
        return fn(*args, **kwargs)


# ------------------------------------------------------------------------------------------------
# the KV cache of a generation continued unit by unit
# ------------------------------------------------------------------------------------------------


class UnitByUnitMachine(RuleBasedStateMachine):
    """Continue a block-plan generation chunk by chunk; compare the adapter's KV cache, sinks,
    RoPE offset and decoded frames with a reference model after every rule."""

    @initialize(
        unit=st.integers(1, 2),
        steps=st.integers(1, 3),
        window=st.one_of(st.none(), st.integers(2, 5)),
        sinks=st.integers(0, 2),
        solver=st.sampled_from(["euler", "renoise"]),
        seed=st.integers(0, 1000),
    )
    def setup(self, unit: int, steps: int, window: int | None, sinks: int, solver: str,
              seed: int) -> None:
        if window is None or sinks >= window:
            sinks = 0 if window is None else min(sinks, window - 1)
        self.kw = dict(plan="block", unit_frames=unit, steps=steps, kv_window=window,
                       sink_frames=sinks, solver=solver, channels=2, height=4, width=4)
        self.pipe = Pipeline("analytic", adapter_kwargs=self.kw, hooks=make_hooks(),
                             max_reuse=2)
        self.ad = self.pipe.adapter
        self.seed = seed
        self.state: AnalyticState | None = None
        self.next_frame = 0
        self.generation = 0
        # the reference model
        self.emitted: dict[int, torch.Tensor] = {}  # frame -> clean latent [B, C, H, W]
        self.ref_kv: list[int] = []  # frames the KV must hold, in order
        self.ref_sinks: tuple[int, ...] = ()
        self.ref_rope = 0
        self.ref_decode: AnalyticState | None = None  # a decode cache fed only emitted units
        self.pristine = window is None  # no eviction, no inexact policy: equals one generation
        self.inexact: list[str] = []

    # ---- the reference model's rules, written from the spec ------------------------------------

    def _ref_commit(self, frames: range) -> None:
        self.ref_kv = sorted(set(self.ref_kv) | set(frames))
        want_sinks = self.kw["sink_frames"]
        if want_sinks and len(self.ref_sinks) < want_sinks:
            self.ref_sinks = tuple(self.ref_kv[:want_sinks])
        window = self.kw["kv_window"]
        if window is not None:  # the sinks plus the most recent frames that still fit
            recent = [j for j in self.ref_kv if j not in self.ref_sinks]
            room = max(window - len(self.ref_sinks), 0)
            drop = set(recent[: max(len(recent) - room, 0)])
            self.ref_kv = [j for j in self.ref_kv if j not in drop]

    # ---- rules ----------------------------------------------------------------------------------

    @rule(units=st.integers(1, 2), decode=st.booleans())
    def generate(self, units: int, decode: bool) -> None:
        self._generate(units, decode)

    @rule(decode=st.booleans())
    def generate_one(self, decode: bool) -> None:
        self._generate(1, decode)

    def _generate(self, units: int, decode: bool) -> None:
        b = self.kw["unit_frames"]
        first = self.next_frame
        req = Request(prompts=(PROMPT,), num_frames=units * b, seed=self.seed,
                      first_frame=first, decode=decode)
        self.pipe.request(req)
        self.generation += 1
        engine = self.pipe.engine(generation=self.generation, stream=0)
        res = _quiet(engine.run, req, target_state=self.state)
        self.state = engine.target_state
        assert res.sources == ("target",) * units
        assert [e["unit"] for e in res.trace.of("emit")] == [first // b + k for k in range(units)]
        assert torch.isfinite(res.latents).all()
        if self.ref_decode is None:
            self.ref_decode = self.ad.init_state(req, self.ad.encode_prompt(req.prompts))
        for k in range(units):
            span = range(first + k * b, first + (k + 1) * b)
            latents = res.latents[:, k * b:(k + 1) * b]
            for j in span:
                self.emitted[j] = latents[:, j - span.start].clone()
            self._ref_commit(span)
            if decode:  # the frames are the causal decode of exactly the emitted latents
                want = self.ad.decode(latents, self.ref_decode)
                assert torch.equal(res.frames[:, k * b:(k + 1) * b], want)
        if not decode:
            assert res.frames is None
        self.next_frame += units * b

    @rule(kind=st.sampled_from(["recompute", "silent", "random-degenerate"]))
    def push_exact(self, kind: str) -> None:
        self.pipe.use(_exact_policy(kind))

    @rule(seed=st.integers(0, 100))
    def push_reusing(self, seed: int) -> None:
        policy = RandomStep(seed=seed, p_cache=0.4, p_predict=0.3, p_interval=0.0)
        self.pipe.use(policy)
        self.inexact.append(self.pipe.policies[-1])
        self.pristine = False

    @precondition(lambda self: bool(self.pipe.stack))
    @rule(data=st.data())
    def pop(self, data: Any) -> None:
        name = data.draw(st.sampled_from(self.pipe.policies))
        self.pipe.remove(name)
        if name in self.inexact:
            self.inexact.remove(name)

    @precondition(lambda self: self.state is not None and bool(self.state.kv))
    @rule(keep=st.integers(0, 4), sinks=st.integers(0, 2), rope=st.booleans())
    def evict(self, keep: int, sinks: int, rope: bool) -> None:
        """What a stream policy does between chunks (EvictOldest-like), through kv_apply."""
        assert self.state is not None
        cached, cur_sinks, _ = self.ad.kv_frames(self.state)
        new_sinks = tuple(cur_sinks) if cur_sinks else tuple(cached[:sinks])
        rest = [f for f in cached if f not in new_sinks]
        evict = tuple(rest[: max(len(rest) - keep, 0)])
        self.ad.kv_apply(self.state, evict, new_sinks, rope)
        self.ref_kv = [j for j in self.ref_kv if j not in evict]
        self.ref_sinks = new_sinks
        if rope:
            self.ref_rope = max(self.ref_kv) + 1 if self.ref_kv else 0
        if evict or rope:
            self.pristine = False

    @precondition(lambda self: self.pristine and self.next_frame > 0)
    @rule()
    def equals_one_generation(self) -> None:
        """Untouched and exact: the chunks equal one whole generation, bit for bit."""
        whole = _quiet(self.pipe.generate, [PROMPT], num_frames=self.next_frame, seed=self.seed)
        got = torch.stack([self.emitted[j] for j in range(self.next_frame)], dim=1)
        assert torch.equal(got, whole.latents)

    # ---- invariants -----------------------------------------------------------------------------

    @invariant()
    def kv_holds_exactly_the_emitted_latents(self) -> None:
        if self.state is None:
            return
        kv = self.state.kv
        assert list(kv) == sorted(kv), "KV frames out of order"
        assert sorted(kv) == self.ref_kv
        for j, latent in kv.items():
            assert torch.equal(latent, self.emitted[j]), f"KV frame {j} is not the emitted latent"
        assert self.state.sinks == self.ref_sinks
        assert self.state.rope_offset == self.ref_rope

    @invariant()
    def rolling_window_and_sinks(self) -> None:
        if self.state is None:
            return
        window = self.kw["kv_window"]
        if window is not None:
            assert len(self.state.kv) <= max(window, len(self.state.sinks))
        assert set(self.state.sinks) <= set(self.state.kv), "a sink was dropped from the KV"
        if self.kw["sink_frames"] and self.next_frame >= self.kw["sink_frames"]:
            assert len(self.state.sinks) >= self.kw["sink_frames"]

    @invariant()
    def stack_is_what_was_pushed(self) -> None:
        assert set(self.inexact) <= set(self.pipe.policies)
        assert self.ad.config.plan == "block"


# ------------------------------------------------------------------------------------------------
# a policy stack that changes between generations
# ------------------------------------------------------------------------------------------------


class PolicyStackMachine(RuleBasedStateMachine):
    """Push and pop step policies; generate after each change and compare with the baseline."""

    @initialize(
        plan=st.sampled_from(["block", "staircase", "window"]),
        unit=st.integers(1, 2),
        units=st.integers(1, 3),
        steps=st.sampled_from([2, 4]),
        drafted=st.booleans(),
        max_reuse=st.integers(1, 3),
        seed=st.integers(0, 1000),
    )
    def setup(self, plan: str, unit: int, units: int, steps: int, drafted: bool,
              max_reuse: int, seed: int) -> None:
        self.kw = dict(plan=plan, unit_frames=unit, steps=steps, channels=3, height=4, width=4,
                       ar_step=1, window_units=2)
        self.n = units * unit
        self.seed = seed
        self.h = max_reuse
        self.drafter = dict(self.kw, steps=1, coupling=0.5) if drafted and plan == "block" \
            else None
        self.pipe = Pipeline("analytic", adapter_kwargs=self.kw, hooks=make_hooks(),
                             drafter="analytic" if self.drafter else None,
                             drafter_kwargs=self.drafter, max_reuse=max_reuse)
        if self.drafter is not None:
            self.pipe.use(ThresholdBlock(tau=float("inf")))
        baseline = Pipeline("analytic", adapter_kwargs=self.kw, hooks=make_hooks())
        self.baseline = baseline.generate([PROMPT], num_frames=self.n, seed=seed)
        self.calls = sum(1 for it in baseline.adapter.plan(self.baseline.request)
                         if it.role is Role.DENOISE)
        self.kinds: dict[str, str] = {}  # stack name -> "exact", "failing" or "reusing"
        self.generations = 0

    def _push(self, policy: Any, kind: str) -> None:
        self.pipe.use(policy)
        self.kinds[self.pipe.policies[-1]] = kind
        self._generate()

    @rule(kind=st.sampled_from(["recompute", "silent", "random-degenerate"]))
    def push_exact(self, kind: str) -> None:
        self._push(_exact_policy(kind), "exact")

    @rule(how=st.sampled_from(FAILURES), every=st.integers(1, 3))
    def push_failing(self, how: str, every: int) -> None:
        self._push(FailingStep(how=how, every=every), "failing")

    @rule(seed=st.integers(0, 100), p_cache=st.floats(0.2, 0.7))
    def push_reusing(self, seed: int, p_cache: float) -> None:
        self._push(RandomStep(seed=seed, p_cache=p_cache, p_predict=0.2, p_interval=0.3),
                   "reusing")

    @precondition(lambda self: bool(self.kinds))
    @rule(data=st.data())
    def pop(self, data: Any) -> None:
        name = data.draw(st.sampled_from(sorted(self.kinds)))
        self.pipe.remove(name)
        del self.kinds[name]
        self._generate()

    @rule()
    def generate(self) -> None:
        self._generate()

    def _generate(self) -> None:
        res = _quiet(self.pipe.generate, [PROMPT], num_frames=self.n, seed=self.seed)
        self.generations += 1
        target = [e for e in res.trace.of("step") if e["model"] == "target"]
        counts = res.stats.calls["target"]
        assert counts["computed"] + counts["cached"] + counts["predicted"] == self.calls
        assert len(target) == self.calls
        fb = res.trace.of("fallback")
        assert {e["plugin"] for e in fb} <= {n for n, k in self.kinds.items() if k != "exact"}
        assert all(e["mode"] == "recompute" for e in res.trace.of("step") if e["step"] == 0)
        runs: dict[tuple[str, int], int] = {}
        for e in res.trace.of("step"):
            key = (e["model"], e["unit"])
            runs[key] = 0 if e["mode"] == "recompute" else runs.get(key, 0) + 1
            assert runs[key] <= self.h
        assert torch.isfinite(res.latents).all()
        if "reusing" not in self.kinds.values():
            assert torch.equal(res.latents, self.baseline.latents)
            assert torch.equal(res.frames, self.baseline.frames)
            assert counts == self.baseline.stats.calls["target"]
            assert all(e["by"] == EXACT or self.kinds.get(e["by"]) == "exact"
                       for e in target)
        if "failing" in self.kinds.values():
            failing = [n for n, k in self.kinds.items() if k == "failing"]
            # the first failing policy on the stack is asked first at every call it fails in
            first = next(n for n in self.pipe.policies if n in failing)
            fails_every = self.pipe.stack[self.pipe.policies.index(first)].policy.every
            step_names = [n for n in self.pipe.policies if n in self.kinds]
            if fails_every <= self.calls and step_names[0] == first:
                assert any(e["plugin"] == first for e in fb)

    @invariant()
    def stack_matches_the_model(self) -> None:
        assert sorted(self.pipe.policies) == sorted(list(self.kinds) + (
            ["ThresholdBlock"] if self.drafter is not None else []))
        assert self.pipe.policies == [p.name for p in self.pipe.stack]


TestUnitByUnit = UnitByUnitMachine.TestCase
TestUnitByUnit.settings = MACHINE_SETTINGS
TestPolicyStack = PolicyStackMachine.TestCase
TestPolicyStack.settings = MACHINE_SETTINGS
