"""The engine: block routing between a drafter and a target, the model-call wrapper hook, failure
semantics, and selective compute intervals."""

from __future__ import annotations

import math
import warnings
from typing import Any

import attrs
import pytest
import torch
from hypothesis import given, settings, strategies as st

import accelframe_example
from accelframe.errors import PolicyError, PolicyFallbackWarning
from accelframe.pipeline import Pipeline
from accelframe.plugins import EXACT, hookimpl
from accelframe.rng import unit_generator
from accelframe.testing import AnalyticAdapter
from accelframe.testing.fixtures import make_hooks
from accelframe.testing.policies import (
    FAILURES,
    AcceptUnits,
    CallRecorder,
    FailingBlock,
    FailingStep,
    ThresholdBlock,
)
from accelframe.types import BlockVerdict, StepDecision

SEED = 4
FRAMES = 9  # three units of three latent frames
PROMPTS = ["a red circle moves left", "a blue square"]


class SpyAdapter(AnalyticAdapter):
    """Records every denoise call: (unit, step, iteration frames, computed frames, input)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.denoised: list[tuple[int, int, tuple[int, int], tuple[int, int], torch.Tensor]] = []

    def denoise(self, x, it, frames, state, kv_write):
        self.denoised.append((it.unit, it.step, it.frames, frames, x.clone()))
        return super().denoise(x, it, frames, state, kv_write)

    def first_inputs(self) -> dict[int, torch.Tensor]:
        """The input of each unit's first call: its initial noise."""
        return {u: x for u, step, _, _, x in self.denoised if step == 0}


@attrs.define(eq=False)
class ScriptedBlock:
    """Accepts the units in ``accept``, regenerates the others; records what it was shown."""

    accept: frozenset = frozenset()
    seen: dict = attrs.field(factory=dict)

    @hookimpl
    def accelframe_block_verdict(self, ctx):
        self.seen[ctx.unit] = (ctx.draft_latents.clone(),
                               None if ctx.draft_frames is None else ctx.draft_frames.clone())
        if ctx.unit in self.accept:
            return BlockVerdict.accept(1.0, reason="scripted")
        return BlockVerdict.regenerate(0.0, reason="scripted")


@pytest.fixture
def hooks():
    return make_hooks()


def single(hooks, steps: int, **kwargs: Any):
    """A run of one model on its own."""
    pipe = Pipeline("analytic", hooks=hooks, adapter_kwargs={"steps": steps})
    return pipe.generate(PROMPTS, num_frames=FRAMES, seed=SEED, **kwargs)


def drafted(hooks, policy, *, target=None, drafter=None):
    pipe = Pipeline(target or AnalyticAdapter(steps=4), drafter=drafter or AnalyticAdapter(steps=2),
                    hooks=hooks)
    pipe.use(policy)
    return pipe


class CommitAtOnce(AnalyticAdapter):
    """The analytic model with a commit that reads its decode's pixels: the engine commits its
    units at once instead of holding them until a later call needs them (the reference)."""

    commit_reads_pixels = True


def fresh_decode(adapter: AnalyticAdapter, latents: torch.Tensor) -> torch.Tensor:
    """Decode a whole video from an empty decode cache."""
    state = adapter.init_state(None, adapter.encode_prompt(PROMPTS))
    return adapter.decode(latents, state)


# ---- block routing ------------------------------------------------------------------------------


def test_accept_emits_the_draft_and_commits_it_into_the_targets_kv(hooks):
    target_only = single(hooks, steps=4)
    draft_only = single(hooks, steps=2)
    policy = ScriptedBlock(accept=frozenset({1, 2}))
    pipe = drafted(hooks, policy)
    engine = pipe.engine(generation=1)
    result = engine.run(pipe.request(PROMPTS, num_frames=FRAMES, seed=SEED))

    assert result.sources == ("target", "draft", "draft")
    # unit 0 comes from the target; the accepted units are exactly the drafter's latents
    assert torch.equal(result.latents[:, :3], target_only.latents[:, :3])
    assert torch.equal(result.latents[:, 3:], draft_only.latents[:, 3:])
    assert not torch.equal(result.latents[:, 3:], target_only.latents[:, 3:])
    # the target's KV holds exactly the emitted latents, the drafts for the accepted units
    kv = engine.target_state.kv
    assert sorted(kv) == list(range(FRAMES))
    for j in range(FRAMES):
        assert torch.equal(kv[j], result.latents[:, j])
    # the drafter's KV always holds its own drafts, also of unit 0 that the target regenerated
    dkv = engine.drafter_state.kv
    assert sorted(dkv) == list(range(FRAMES))
    for j in range(FRAMES):
        assert torch.equal(dkv[j], draft_only.latents[:, j])
    # an accepted unit's pixels are exactly the decoded draft the policy saw
    for unit in (1, 2):
        latents, frames = policy.seen[unit]
        assert torch.equal(latents, result.latents[:, 3 * unit:3 * unit + 3])
        assert torch.equal(frames, result.frames[:, 3 * unit:3 * unit + 3])
    assert torch.equal(result.frames, fresh_decode(pipe.adapter, result.latents))

    blocks = result.stats.blocks
    assert blocks == {"accepted": 2, "regenerated": 1, "drafter_calls_wasted": 2,
                      "decodes_wasted": 1, "drafter_recommits": 0, "early_verdicts": 0}
    calls = result.stats.calls
    assert calls["target"]["computed"] == 4 and calls["target"]["commit"] == 3
    assert calls["drafter"]["computed"] == 6 and calls["drafter"]["commit"] == 3
    verdicts = [(e["unit"], e["verdict"], e["by"]) for e in result.trace.of("block")]
    assert verdicts == [(0, "regenerate", "ScriptedBlock"), (1, "accept", "ScriptedBlock"),
                        (2, "accept", "ScriptedBlock")]


def test_regenerating_every_block_equals_a_target_only_run(hooks):
    target_only = single(hooks, steps=4)
    engine_ref = Pipeline("analytic", hooks=hooks, adapter_kwargs={"steps": 4}).engine()
    engine_ref.run(Pipeline("analytic", hooks=hooks).request(PROMPTS, num_frames=FRAMES,
                                                             seed=SEED))
    pipe = drafted(hooks, ScriptedBlock())
    engine = pipe.engine(generation=1)
    result = engine.run(pipe.request(PROMPTS, num_frames=FRAMES, seed=SEED))
    assert result.sources == ("target",) * 3
    assert torch.equal(result.latents, target_only.latents)
    # the decode cache was restored after each wasted decode of a draft
    assert torch.equal(result.frames, target_only.frames)
    for j in range(FRAMES):
        assert torch.equal(engine.target_state.kv[j], engine_ref.target_state.kv[j])
    assert result.stats.blocks == {"accepted": 0, "regenerated": 3, "drafter_calls_wasted": 6,
                                   "decodes_wasted": 3, "drafter_recommits": 0, "early_verdicts": 0}
    assert result.stats.calls["target"]["computed"] == 12


def test_threshold_block_extremes(hooks):
    """tau = +inf is target-only; tau = -inf is draft-only except block 0."""
    target_only, draft_only = single(hooks, steps=4), single(hooks, steps=2)
    high = drafted(hooks, ThresholdBlock(tau=math.inf)).generate(PROMPTS, num_frames=FRAMES,
                                                                 seed=SEED)
    assert torch.equal(high.latents, target_only.latents)
    assert torch.equal(high.frames, target_only.frames)
    low = drafted(hooks, ThresholdBlock(tau=-math.inf)).generate(PROMPTS, num_frames=FRAMES,
                                                                 seed=SEED)
    assert low.sources == ("target", "draft", "draft")
    assert torch.equal(low.latents[:, 3:], draft_only.latents[:, 3:])


def test_regenerate_restores_the_decode_cache_and_starts_from_the_same_noise(hooks):
    target, drafter = SpyAdapter(steps=4), SpyAdapter(steps=2)
    pipe = drafted(hooks, ScriptedBlock(accept=frozenset({1})), target=target, drafter=drafter)
    result = pipe.generate(PROMPTS, num_frames=FRAMES, seed=SEED)
    assert result.sources == ("target", "draft", "target")
    # pixels of every unit are what a sequential decode of the emitted latents gives: the
    # decode of the rejected draft of unit 2 left no trace in the decode cache
    assert torch.equal(result.frames, fresh_decode(target, result.latents))
    # the target regenerated units 0 and 2 from the noise the drafter drafted them from
    t_first, d_first = target.first_inputs(), drafter.first_inputs()
    assert sorted(t_first) == [0, 2] and sorted(d_first) == [0, 1, 2]
    for unit in (0, 2):
        assert torch.equal(t_first[unit], d_first[unit])
        noise = torch.randn((len(PROMPTS), 3, *target.latent_shape),
                            generator=unit_generator(SEED, unit))
        assert torch.equal(t_first[unit], noise)
    # the target never denoised the accepted unit
    assert {u for u, *_ in target.denoised} == {0, 2}


def test_undecoded_requests_route_on_latents_and_waste_no_decode(hooks):
    policy = ScriptedBlock(accept=frozenset({2}))
    result = drafted(hooks, policy).generate(PROMPTS, num_frames=FRAMES, seed=SEED, decode=False)
    assert result.frames is None
    assert all(frames is None for _, frames in policy.seen.values())
    assert result.stats.blocks == {"accepted": 1, "regenerated": 2, "drafter_calls_wasted": 4,
                                   "decodes_wasted": 0, "drafter_recommits": 0, "early_verdicts": 0}


UNITS = 5


@settings(max_examples=12, deadline=None)
@given(accept=st.sets(st.integers(0, UNITS - 1)), worker=st.booleans(),
       context=st.sampled_from(["own", "emitted"]))
def test_held_commits_give_the_frames_of_committing_at_once(accept, worker, context):
    """The target commits a unit only when a later call of it needs the unit's KV: every routing
    gives the latents, frames and sources of committing at once, runs the commits up to the
    target's last denoising call and skips the rest (``generate``); ``keep_state`` runs them."""
    hooks = make_hooks()
    runs = {}
    for name, target in (("held", AnalyticAdapter(steps=4)), ("at once", CommitAtOnce(steps=4))):
        pipe = Pipeline(target, drafter=AnalyticAdapter(steps=2), hooks=hooks,
                        drafter_context=context, decode_worker=worker)
        pipe.use(ScriptedBlock(accept=frozenset(accept)))
        runs[name] = pipe.generate(PROMPTS, num_frames=3 * UNITS, seed=SEED)
        engine = pipe.engine()
        kept = engine.run(pipe.request(PROMPTS, num_frames=3 * UNITS, seed=SEED))
        runs[name + " kept"] = (kept, engine.target_state.kv)
        pipe.close()
    held, ref = runs["held"], runs["at once"]
    assert torch.equal(held.latents, ref.latents) and torch.equal(held.frames, ref.frames)
    assert held.sources == ref.sources
    rejected = [u for u in range(UNITS) if u not in accept]
    # the units before the target's last denoised unit are committed; its own and later are not
    last = max(rejected, default=0)
    calls, ref_calls = held.stats.calls["target"], ref.stats.calls["target"]
    assert (calls["commit"], calls["commit_skipped"]) == (last, UNITS - last)
    assert (ref_calls["commit"], ref_calls["commit_skipped"]) == (UNITS, 0)
    assert calls["computed"] == ref_calls["computed"] == 4 * len(rejected)
    assert len([e for e in held.trace.of("commit") if e["model"] == "target"]) == last
    (kept, kv), (ref_kept, ref_kv) = runs["held kept"], runs["at once kept"]
    assert torch.equal(kept.latents, ref.latents) and kept.stats.calls["target"]["commit"] == UNITS
    assert list(kv) == list(ref_kv) == list(range(3 * UNITS))
    assert all(torch.equal(kv[j], ref_kv[j]) for j in range(3 * UNITS))


class CountingDecodes(AnalyticAdapter):
    """The analytic model, counting the units it decodes (the engine's decodes run on one thread)."""

    decodes = 0

    def decode(self, latents, state):
        self.decodes += 1
        return super().decode(latents, state)


@settings(max_examples=12, deadline=None)
@given(accept=st.sets(st.integers(0, UNITS - 1)), worker=st.booleans(),
       context=st.sampled_from(["own", "emitted"]))
def test_an_early_verdict_gives_the_frames_of_the_same_verdict_after_the_decode(accept, worker, context):
    """``accelframe_block_early_verdict``: the same routing given before the draft's decode gives the
    same latents, frames, sources and verdicts, and skips the decode of every rejected draft."""
    runs = {}
    for early in (False, True):
        target = CountingDecodes(steps=4)
        pipe = Pipeline(target, drafter=AnalyticAdapter(steps=2), hooks=make_hooks(),
                        drafter_context=context, decode_worker=worker)
        pipe.use(AcceptUnits(accept=frozenset(accept), early=early))
        runs[early] = (pipe.generate(PROMPTS, num_frames=3 * UNITS, seed=SEED), target.decodes)
        pipe.close()
    (late, late_decodes), (res, decodes) = runs[False], runs[True]
    assert torch.equal(res.latents, late.latents) and torch.equal(res.frames, late.frames)
    assert res.sources == late.sources
    assert ([(e["unit"], e["verdict"]) for e in res.trace.of("block")]
            == [(e["unit"], e["verdict"]) for e in late.trace.of("block")])
    rejected = UNITS - len(accept)
    # after the decode: every draft decoded once, and each regenerated unit once more
    assert late_decodes == UNITS + rejected and decodes == UNITS
    assert late.stats.blocks["decodes_wasted"] == rejected and res.stats.blocks["decodes_wasted"] == 0
    assert (late.stats.blocks["early_verdicts"], res.stats.blocks["early_verdicts"]) == (0, UNITS)


@pytest.mark.parametrize("how", ["raise", "nonsense"])
def test_a_failing_early_verdict_regenerates_the_unit(how):
    """An early verdict that raises or is no ``BlockVerdict`` is recorded, and the exact fallback
    regenerates the unit without a decode."""

    @attrs.define(eq=False)
    class FailingEarly:
        @hookimpl
        def accelframe_block_early_verdict(self, ctx):
            if how == "raise":
                raise RuntimeError("FailingEarly raised on purpose")
            return 42

        @hookimpl
        def accelframe_block_verdict(self, ctx):
            return BlockVerdict.accept(1.0)

    target = CountingDecodes(steps=4)
    pipe = Pipeline(target, drafter=AnalyticAdapter(steps=2), hooks=make_hooks())
    pipe.use(FailingEarly())
    with pytest.warns(PolicyFallbackWarning, match="accelframe_block_early_verdict"):
        res = pipe.generate(PROMPTS, num_frames=3 * UNITS, seed=SEED)
    assert res.sources == ("target",) * UNITS and target.decodes == UNITS
    assert all(e["by"] == EXACT for e in res.trace.of("block"))
    exact = Pipeline(AnalyticAdapter(steps=4), hooks=make_hooks()).generate(PROMPTS, num_frames=3 * UNITS,
                                                                           seed=SEED)
    assert torch.equal(res.latents, exact.latents)


# ---- the model-call wrapper hook ----------------------------------------------------------------


def test_call_recorder_sees_every_denoise_and_commit_call(hooks):
    recorder = CallRecorder()
    hooks.register(recorder, name="recorder")
    hooks.register(accelframe_example)
    pipe = drafted(hooks, ThresholdBlock(tau=-math.inf))
    pipe.use("every-n", n=2)
    result = pipe.generate(PROMPTS, num_frames=FRAMES, seed=SEED)
    stats = result.stats.calls
    for model in ("target", "drafter"):
        denoise = [c for c in recorder.calls if c[0] == "denoise" and c[1] == model]
        commit = [c for c in recorder.calls if c[0] == "commit" and c[1] == model]
        assert len(denoise) == stats[model]["computed"] > 0
        assert len(commit) == stats[model]["commit"]
        assert stats[model]["commit"] + stats[model]["commit_skipped"] == 3
        # the denoise calls are the recompute steps of the trace, in order
        steps = [(e["unit"], e["step"], tuple(e["interval"])) for e in result.trace.of("step")
                 if e["model"] == model and e["mode"] == "recompute"]
        assert [(u, s, f) for _, _, u, s, f, _ in denoise] == steps
    assert stats["target"]["cached"] + stats["drafter"]["cached"] > 0  # cached calls: no model
    # the wrapper does not change the result
    hooks.unregister(recorder)
    again = pipe.generate(PROMPTS, num_frames=FRAMES, seed=SEED)
    assert torch.equal(again.latents, result.latents)


def test_a_wrapper_sees_commit_passes_without_a_drafter(af_pipeline, af_register):
    recorder = CallRecorder()
    af_register(recorder)
    result = af_pipeline(steps=3).generate("x", num_frames=6)
    kinds = [(kind, unit, step) for kind, _, unit, step, _, _ in recorder.calls]
    # the last unit's commit is skipped: no later call reads it
    assert kinds == [("denoise", 0, 0), ("denoise", 0, 1), ("denoise", 0, 2), ("commit", 0, 3),
                     ("denoise", 1, 0), ("denoise", 1, 1), ("denoise", 1, 2)]
    assert result.stats.model_calls() == 7 and result.stats.calls["target"]["commit_skipped"] == 1


# ---- failure semantics --------------------------------------------------------------------------


@pytest.mark.parametrize("how", FAILURES)
def test_a_failing_step_policy_is_answered_by_the_exact_path(af_pipeline, how):
    baseline = af_pipeline().generate(PROMPTS, num_frames=FRAMES, seed=SEED)
    pipe = af_pipeline().use(FailingStep(how=how))
    with pytest.warns(PolicyFallbackWarning, match="FailingStep") as record:
        result = pipe.generate(PROMPTS, num_frames=FRAMES, seed=SEED)
    assert any("accelframe_step_decide" in str(w.message) for w in record)
    assert torch.equal(result.latents, baseline.latents)
    assert torch.equal(result.frames, baseline.frames)
    fallbacks = [e for e in result.trace.of("fallback") if e["hook"] == "accelframe_step_decide"]
    assert len(fallbacks) == baseline.stats.calls["target"]["computed"]
    assert all(e["plugin"] == "FailingStep" and e["exact"] for e in fallbacks)
    assert {e["by"] for e in result.trace.of("step")} == {EXACT}
    assert result.stats.calls["target"] == baseline.stats.calls["target"]
    assert result.stats.fallbacks["accelframe_step_decide"] == len(fallbacks)


def test_a_policy_failing_sometimes_only_loses_those_calls(af_pipeline, af_register):
    af_register(accelframe_example)
    baseline = af_pipeline().generate("x", num_frames=6)
    pipe = af_pipeline().use(FailingStep(how="none-finite", every=3))
    with pytest.warns(PolicyFallbackWarning):
        result = pipe.generate("x", num_frames=6)
    assert torch.equal(result.latents, baseline.latents)
    assert len(result.trace.of("fallback")) == 8 // 3


@pytest.mark.parametrize("how", ["raise", "none-finite", "not-a-decision"])
def test_strict_mode_raises_policy_error(af_pipeline, how):
    pipe = af_pipeline(strict=True).use(FailingStep(how=how))
    with pytest.raises(PolicyError) as err:
        pipe.generate("x", num_frames=3)
    assert err.value.plugin == "FailingStep"
    assert err.value.hook == "accelframe_step_decide"
    assert "FailingStep" in str(err.value)


def test_strict_mode_raises_on_a_failing_observe(af_pipeline):
    class BadObserver:
        @hookimpl
        def accelframe_step_decide(self, ctx):
            return None

        @hookimpl
        def accelframe_step_observe(self, ctx):
            raise RuntimeError("observe failed")

    with pytest.warns(PolicyFallbackWarning, match="accelframe_step_observe"):
        af_pipeline().use(BadObserver()).generate("x", num_frames=3)
    with pytest.raises(PolicyError) as err:
        af_pipeline(strict=True).use(BadObserver()).generate("x", num_frames=3)
    assert err.value.hook == "accelframe_step_observe" and err.value.plugin == "BadObserver"


@pytest.mark.parametrize("how", ["raise", "nan-score", "nonsense"])
def test_a_failing_block_policy_regenerates(hooks, how):
    target_only = single(hooks, steps=4)
    pipe = drafted(hooks, FailingBlock(how=how))
    with pytest.warns(PolicyFallbackWarning, match="FailingBlock"):
        result = pipe.generate(PROMPTS, num_frames=FRAMES, seed=SEED)
    assert result.sources == ("target",) * 3
    assert torch.equal(result.latents, target_only.latents)
    assert torch.equal(result.frames, target_only.frames)
    assert {e["by"] for e in result.trace.of("block")} == {EXACT}
    assert {e["plugin"] for e in result.trace.of("fallback")} == {"FailingBlock"}
    pipe.close()
    strict = Pipeline(AnalyticAdapter(steps=4), drafter=AnalyticAdapter(steps=2), hooks=hooks,
                      strict=True).use(FailingBlock(how=how))
    with pytest.raises(PolicyError) as err:
        strict.generate(PROMPTS, num_frames=FRAMES, seed=SEED)
    assert err.value.hook == "accelframe_block_verdict" and err.value.plugin == "FailingBlock"


def test_reuse_at_the_first_step_of_a_unit_is_refused(af_pipeline):
    class CacheZeros:
        @hookimpl
        def accelframe_step_decide(self, ctx):
            return StepDecision.cache(torch.zeros_like(ctx.x))

    baseline = af_pipeline().generate("x", num_frames=6)
    with pytest.warns(PolicyFallbackWarning, match="first step"):
        result = af_pipeline().use(CacheZeros()).generate("x", num_frames=6)
    modes = [(e["step"], e["mode"]) for e in result.trace.of("step")]
    assert all(mode == "recompute" for step, mode in modes if step == 0)
    assert all(mode == "cache" for step, mode in modes if step > 0)
    assert not torch.equal(result.latents, baseline.latents)


# ---- selective computation ----------------------------------------------------------------------


class ComputeActive:
    """Recompute only the advancing frames whenever some forwarded frames do not advance."""

    @hookimpl
    def accelframe_step_decide(self, ctx):
        active = ctx.iteration.active
        if active is not None and active != ctx.frames:
            return StepDecision.recompute(interval=active, reason="active frames only")
        return None


@pytest.mark.parametrize("coupling", [0.0, 0.3])
def test_a_compute_interval_runs_the_model_on_that_interval_only(hooks, coupling):
    kw = dict(plan="staircase", ar_step=1, steps=4, coupling=coupling)
    baseline = Pipeline(AnalyticAdapter(**kw), hooks=hooks).generate(PROMPTS, num_frames=12)
    spy = SpyAdapter(**kw)
    pipe = Pipeline(spy, hooks=hooks).use(ComputeActive())
    result = pipe.generate(PROMPTS, num_frames=12)
    its = list(spy.plan(pipe.request(PROMPTS, num_frames=12)))
    assert len(spy.denoised) == len(its)
    narrowed = 0
    for (_, _, it_frames, frames, x), it in zip(spy.denoised, its):
        assert it_frames == it.frames
        assert frames == it.active  # every advancing frame, nothing more
        assert x.shape[1] == frames[1] - frames[0]
        narrowed += frames != it.frames
    assert narrowed >= 3
    steps = result.trace.of("step")
    assert [tuple(e["interval"]) for e in steps] == [it.active for it in its]
    assert result.stats.calls["target"]["frames_computed"] == sum(
        it.active[1] - it.active[0] for it in its)
    assert result.stats.calls["target"]["frames_computed"] < baseline.stats.calls["target"][
        "frames_computed"]
    if coupling == 0.0:  # no context: frames that do not advance cannot matter
        assert torch.equal(result.latents, baseline.latents)
    else:  # the dropped frames were context, as attention context is in a real model
        assert not torch.equal(result.latents, baseline.latents)
    assert torch.isfinite(result.latents).all()


def test_a_compute_interval_missing_advancing_frames_falls_back(hooks):
    class TooNarrow:
        @hookimpl
        def accelframe_step_decide(self, ctx):
            s, e = ctx.frames
            return StepDecision.recompute(interval=(s, e - 1)) if e - s > 1 else None

    spy = SpyAdapter(steps=3)
    baseline = Pipeline("analytic", hooks=hooks, adapter_kwargs={"steps": 3}).generate(
        "x", num_frames=6)
    with pytest.warns(PolicyFallbackWarning, match="misses advancing frames"):
        result = Pipeline(spy, hooks=hooks).use(TooNarrow()).generate("x", num_frames=6)
    assert all(frames == it_frames for _, _, it_frames, frames, _ in spy.denoised)
    assert torch.equal(result.latents, baseline.latents)


class CacheWhenShapesMatch:
    """Reuses the last computed velocity whenever its shape fits the call."""

    def __init__(self) -> None:
        self.last = None

    def reset(self) -> None:
        self.last = None

    @hookimpl
    def accelframe_step_decide(self, ctx):
        if self.last is not None and self.last.shape == ctx.x.shape:
            return StepDecision.cache(self.last)
        return None

    @hookimpl
    def accelframe_step_observe(self, ctx, decision, velocity):
        if decision.mode.value == "recompute":
            self.last = velocity


@pytest.mark.parametrize("kwargs", [
    dict(plan="staircase", steps=4, ar_step=2, window_frames=6),
    dict(plan="window", steps=4, window_units=2),
])
def test_an_iteration_that_starts_a_unit_is_always_recomputed(hooks, kwargs):
    adapter = AnalyticAdapter(**kwargs)
    pipe = Pipeline(adapter, hooks=hooks).use(CacheWhenShapesMatch())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PolicyFallbackWarning)
        result = pipe.generate("x", num_frames=12)
    its = [it for it in adapter.plan(pipe.request("x", num_frames=12)) if it.role.value == "denoise"]
    steps = result.trace.of("step")
    assert len(steps) == len(its)
    for event, it in zip(steps, its):
        if it.starts:
            assert event["mode"] == "recompute", (event, [s.unit for s in it.starts])


# ---- model-call wrappers and lifecycle hooks cannot compute frames or take a generation down ----


def test_a_plain_model_call_implementation_is_refused(af_hooks):
    from accelframe.errors import PluginError

    class Replaces:
        @hookimpl
        def accelframe_model_call(self, call):
            return torch.zeros(1)

    with pytest.raises(PluginError, match="wrapper=True"):
        af_hooks.register(Replaces())
    assert not any(name == "Replaces" for name, _ in af_hooks.pm.list_name_plugin())


def test_a_wrapper_that_replaces_the_output_is_answered_by_the_model(af_pipeline, af_hooks):
    class Swaps:
        @hookimpl(wrapper=True)
        def accelframe_model_call(self, call):
            out = yield
            return None if out is None else torch.zeros(2)

    baseline = af_pipeline().generate("x", num_frames=6, seed=3)
    af_hooks.register(Swaps())
    with pytest.warns(PolicyFallbackWarning, match="model-call wrapper"):
        swapped = af_pipeline().generate("x", num_frames=6, seed=3)
    assert torch.equal(swapped.latents, baseline.latents)
    assert swapped.trace.of("fallback")[0]["hook"] == "accelframe_model_call"


def test_lifecycle_errors_are_recorded_not_fatal(af_pipeline):
    class BadStart:
        @hookimpl
        def accelframe_generation_start(self, info):
            raise RuntimeError("boom at start")

        @hookimpl
        def accelframe_step_decide(self, ctx):
            return None

    baseline = af_pipeline().generate("x", num_frames=3)
    with pytest.warns(PolicyFallbackWarning, match="boom at start"):
        res = af_pipeline().use(BadStart()).generate("x", num_frames=3)
    assert torch.equal(res.latents, baseline.latents)
    assert res.trace.of("fallback")[0]["hook"] == "accelframe_generation_start"
    with pytest.raises(PolicyError):
        af_pipeline(strict=True).use(BadStart()).generate("x", num_frames=3)
