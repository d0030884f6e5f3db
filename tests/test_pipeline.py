"""Composition: names and keyword arguments, compatibility checks, requests, the policy stack,
reuse of a pipeline, and what a result carries. Everything that is wrong fails before any model
call."""

from __future__ import annotations

import json
import math
from typing import Any

import attrs
import pytest
import torch

import accelframe_example
from accelframe.errors import (
    ConfigError,
    IncompatibleError,
    PolicyFallbackWarning,
    UnknownNameError,
)
from accelframe.pipeline import Pipeline, build_pipeline
from accelframe.plugins import hookimpl
from accelframe.testing import AnalyticAdapter
from accelframe.testing.fixtures import make_hooks
from accelframe.testing.policies import FailingStep, RandomStep, ThresholdBlock
from accelframe.types import AppliesTo, Request, StepDecision


class SpyAdapter(AnalyticAdapter):
    """The analytic adapter, counting every model call (denoise and commit)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.calls = 0

    def denoise(self, *args: Any, **kwargs: Any):
        self.calls += 1
        return super().denoise(*args, **kwargs)

    def commit(self, *args: Any, **kwargs: Any):
        self.calls += 1
        return super().commit(*args, **kwargs)


@attrs.define(eq=False)
class Answer:
    """A step policy with a name that recomputes (or passes) and records that it was asked."""

    name: str
    answer: bool = True
    asked: int = 0

    @hookimpl
    def accelframe_step_decide(self, ctx):
        self.asked += 1
        return StepDecision.recompute(reason=self.name) if self.answer else None


@attrs.define(eq=False)
class NeedsMask:
    requires: frozenset = frozenset({"update_mask"})

    @hookimpl
    def accelframe_step_decide(self, ctx):
        return None


@pytest.fixture
def hooks():
    """A manager with the analytic adapter and the example plugin (the ``every-n`` policy)."""
    return make_hooks(accelframe_example)


def registered_names(hooks) -> set[str]:
    return {n for n, p in hooks.pm.list_name_plugin() if p is not None}


# ---- names --------------------------------------------------------------------------------------


def test_unknown_policy_name_lists_the_registered_ones(hooks):
    pipe = Pipeline("analytic", hooks=hooks)
    with pytest.raises(UnknownNameError) as err:
        pipe.use("evry-n")
    assert err.value.kind == "policy" and err.value.name == "evry-n"
    assert err.value.known == ["every-n"]
    assert "'evry-n'" in str(err.value) and "every-n" in str(err.value)
    assert isinstance(err.value, KeyError)
    assert pipe.policies == []


def test_unknown_adapter_name_lists_the_registered_ones(hooks):
    with pytest.raises(UnknownNameError) as err:
        Pipeline("analytik", hooks=hooks)
    assert err.value.known == ["analytic"]
    assert "analytic" in str(err.value) and "analytik" in str(err.value)


def test_unknown_name_with_nothing_registered_hints_at_autoload():
    from accelframe.plugins import create_hooks

    with pytest.raises(UnknownNameError, match="autoload"):
        Pipeline("analytic", hooks=create_hooks(autoload=False))


# ---- keyword arguments --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, field, value, allowed",
    [
        ({"n": 0}, "n", 0, "[1, 1000]"),
        ({"n": "x"}, "n", "x", "[1, 1000]"),
        ({"n": 2.5}, "n", 2.5, "integer"),
        ({"n": 1001}, "n", 1001, "[1, 1000]"),
        ({"n": True}, "n", True, "integer"),
        ({"bogus": 1}, "bogus", 1, "n, applies_to"),
        ({"applies_to": "everyone"}, "applies_to", "everyone", "'drafter'"),
    ],
)
def test_invalid_policy_kwargs_fail_before_any_model_call(hooks, kwargs, field, value, allowed):
    spy = SpyAdapter()
    pipe = Pipeline(spy, hooks=hooks)
    with pytest.raises(ConfigError) as err:
        pipe.use("every-n", **kwargs)
    assert err.value.field == field and err.value.value == value
    assert allowed in err.value.allowed
    assert field in str(err.value) and repr(value) in str(err.value)
    assert pipe.policies == []
    assert "every-n" not in registered_names(hooks)
    assert spy.calls == 0


def test_invalid_adapter_kwargs_are_config_errors(hooks):
    with pytest.raises(ConfigError) as err:
        Pipeline("analytic", hooks=hooks, adapter_kwargs={"steps": 0})
    assert (err.value.field, err.value.value) == ("steps", 0)
    with pytest.raises(ConfigError) as err:
        Pipeline("analytic", hooks=hooks, adapter_kwargs={"stepz": 4})
    assert (err.value.field, err.value.value) == ("stepz", 4)
    with pytest.raises(ConfigError) as err:
        Pipeline(AnalyticAdapter(), hooks=hooks, adapter_kwargs={"steps": 4})
    assert err.value.field == "adapter_kwargs"
    with pytest.raises(ConfigError) as err:
        Pipeline(object(), hooks=hooks)
    assert err.value.field == "adapter"


def test_object_policy_with_kwargs_or_without_hooks_is_rejected(hooks):
    pipe = Pipeline("analytic", hooks=hooks)
    with pytest.raises(ConfigError) as err:
        pipe.use(Answer("a"), n=2)
    assert err.value.field == "n"
    with pytest.raises(ConfigError) as err:
        pipe.use(object())
    assert err.value.field == "policy"
    assert pipe.policies == []


def test_build_pipeline_validates_every_policy(hooks):
    pipe = build_pipeline("analytic", [("every-n", {"n": 3})], hooks=hooks)
    assert pipe.policies == ["every-n"]
    with pytest.raises(ConfigError):
        build_pipeline("analytic", [("every-n", {"n": 0})], hooks=make_hooks(accelframe_example))


# ---- compatibility ------------------------------------------------------------------------------


def test_block_policy_without_a_drafter_is_incompatible(af_pipeline):
    pipe = af_pipeline()
    with pytest.raises(IncompatibleError, match="drafter"):
        pipe.use(ThresholdBlock())
    assert pipe.policies == []


def test_drafter_only_step_policy_without_a_drafter_is_incompatible(hooks):
    pipe = Pipeline("analytic", hooks=hooks)
    with pytest.raises(IncompatibleError, match="drafter"):
        pipe.use("every-n", applies_to="drafter")
    pipe.use("every-n", applies_to="target")  # fine
    assert pipe.policies == ["every-n"]


def test_policy_requiring_a_capability_the_adapter_lacks(af_pipeline):
    pipe = af_pipeline(plan="block")
    with pytest.raises(IncompatibleError) as err:
        pipe.use(NeedsMask())
    msg = str(err.value)
    assert "update_mask" in msg and "'analytic'" in msg and "NeedsMask" in msg
    assert pipe.policies == []
    # the staircase plan has update masks
    af_pipeline(plan="staircase").use(NeedsMask())


def test_policy_requiring_an_unknown_capability_is_a_config_error(af_pipeline):
    with pytest.raises(ConfigError) as err:
        af_pipeline().use(NeedsMask(requires=frozenset({"teleport"})))
    assert err.value.field == "requires" and "update_mask" in err.value.allowed


def test_drafter_capability_is_checked_when_the_policy_applies_to_it(af_pipeline):
    # a block-plan drafter has no update masks: a policy for both models needs them from both
    pipe = Pipeline(AnalyticAdapter(plan="block"), drafter=AnalyticAdapter(plan="block"),
                    hooks=af_pipeline().hooks)
    with pytest.raises(IncompatibleError, match="update_mask"):
        pipe.use(NeedsMask())


@pytest.mark.parametrize(
    "drafter_kwargs, expected",
    [
        ({"channels": 3}, ["latent shapes differ", "(4, 8, 8)", "(3, 8, 8)"]),
        ({"height": 4}, ["latent shapes differ", "(4, 4, 8)"]),
        ({"unit_frames": 2}, ["unit sizes differ", "target 3", "drafter 2"]),
        ({"plan": "staircase"}, ["block_units", "drafter"]),
    ],
)
def test_mismatched_drafter_is_incompatible(hooks, drafter_kwargs, expected):
    with pytest.raises(IncompatibleError) as err:
        Pipeline("analytic", hooks=hooks, drafter="analytic", drafter_kwargs=drafter_kwargs)
    for text in expected:
        assert text in str(err.value)


def test_target_without_block_units_cannot_take_a_drafter(hooks):
    with pytest.raises(IncompatibleError, match="target"):
        Pipeline("analytic", hooks=hooks, adapter_kwargs={"plan": "window"}, drafter="analytic")


# ---- requests -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "prompts, kwargs, field",
    [
        ([], {"num_frames": 3}, "prompts"),
        ([""], {"num_frames": 3}, "prompts"),
        (["ok", "   "], {"num_frames": 3}, "prompts"),
        (["ok"], {"num_frames": 0}, "num_frames"),
        (["ok"], {"num_frames": 3.0}, "num_frames"),
        (["ok"], {"num_frames": 3, "seed": -1}, "seed"),
        (["ok"], {"num_frames": 3, "start_sigma": 0.0}, "start_sigma"),
        (["ok"], {"num_frames": 3, "first_frame": 1}, "first_frame"),
    ],
)
def test_bad_requests_fail_before_any_model_call(hooks, prompts, kwargs, field):
    spy = SpyAdapter()
    pipe = Pipeline(spy, hooks=hooks).use("every-n")
    with pytest.raises(ConfigError) as err:
        pipe.generate(prompts, **kwargs)
    assert err.value.field == field
    assert spy.calls == 0


def test_num_frames_not_a_multiple_of_the_unit_names_valid_values(hooks):
    spy = SpyAdapter(unit_frames=3)
    with pytest.raises(ConfigError) as err:
        Pipeline(spy, hooks=hooks).generate("a red circle", num_frames=7)
    e = err.value
    assert (e.field, e.value) == ("num_frames", 7)
    assert "num_frames" in str(e) and "7" in str(e)
    assert "3, 6, 9" in e.allowed
    assert spy.calls == 0


def test_drafted_request_is_validated_by_the_drafter_too(hooks):
    target, drafter = SpyAdapter(), SpyAdapter()
    pipe = Pipeline(target, drafter=drafter, hooks=hooks)
    with pytest.raises(ConfigError, match="num_frames"):
        pipe.generate("x", num_frames=4)
    assert target.calls == drafter.calls == 0


def test_request_object_and_keywords_do_not_mix(af_pipeline):
    pipe = af_pipeline()
    req = Request(prompts=("x",), num_frames=3)
    assert pipe.request(req) is req
    with pytest.raises(ConfigError):
        pipe.generate(req, seed=3)


def test_a_single_prompt_string_is_one_prompt(af_pipeline):
    assert Request(prompts="a red circle", num_frames=3).prompts == ("a red circle",)
    assert Request(prompts=["a", "b"], num_frames=3).batch == 2
    result = af_pipeline().generate("a red circle", num_frames=3)
    assert result.latents.shape[0] == 1


@pytest.mark.parametrize("max_reuse", [0, -1, 1.5, "2", True])
def test_max_reuse_validation(af_pipeline, max_reuse):
    with pytest.raises(ConfigError) as err:
        af_pipeline(max_reuse=max_reuse)
    assert err.value.field == "max_reuse" and err.value.value is max_reuse


def test_max_reuse_bounds_consecutive_reuse(hooks):
    pipe = Pipeline("analytic", hooks=hooks, adapter_kwargs={"steps": 8}, max_reuse=2)
    pipe.use("every-n", n=8)
    result = pipe.generate("x", num_frames=6)
    for unit in (0, 1):
        modes = [e["mode"] for e in result.trace.of("step") if e["unit"] == unit]
        assert modes == ["recompute", "cache", "cache"] * 2 + ["recompute", "cache"]
    assert len(result.trace.of("guard")) == 4
    unlimited = Pipeline("analytic", hooks=hooks, adapter_kwargs={"steps": 8})
    unlimited.use("every-n", n=8)
    assert unlimited.generate("x", num_frames=6).stats.calls["target"]["computed"] == 2


# ---- the stack ----------------------------------------------------------------------------------


def test_policies_are_asked_in_the_order_they_were_added(af_pipeline):
    first, second = Answer("first"), Answer("second")
    pipe = af_pipeline().use(first).use(second)
    assert pipe.policies == ["first", "second"]
    result = pipe.generate("x", num_frames=6)
    steps = result.trace.of("step")
    assert steps and {e["by"] for e in steps} == {"first"}
    assert first.asked == len(steps) and second.asked == 0


def test_a_policy_that_passes_lets_the_next_one_decide(af_pipeline):
    first, second = Answer("first", answer=False), Answer("second")
    result = af_pipeline().use(first).use(second).generate("x", num_frames=6)
    steps = result.trace.of("step")
    assert {e["by"] for e in steps} == {"second"}
    assert first.asked == second.asked == len(steps)


def test_stack_policies_come_before_module_level_plugins(af_pipeline, af_register):
    global_name = af_register(Answer("global"))
    pipe = af_pipeline().use(Answer("stacked"))
    assert {e["by"] for e in pipe.generate("x", num_frames=3).trace.of("step")} == {"stacked"}
    pipe.remove("stacked")
    by = {e["by"] for e in pipe.generate("x", num_frames=3).trace.of("step")}
    assert by == {global_name}


def test_stacking_the_same_policy_twice_gets_a_numbered_name(hooks):
    pipe = Pipeline("analytic", hooks=hooks)
    pipe.use("every-n", n=2).use("every-n", n=3).use("every-n", n=4)
    assert pipe.policies == ["every-n", "every-n#2", "every-n#3"]
    assert [p.policy.n for p in pipe.stack] == [2, 3, 4]
    result = pipe.generate("x", num_frames=3)
    # every-n (n=2) answers everything: it is first
    assert {e["by"] for e in result.trace.of("step")} == {"every-n"}
    assert result.stats.calls["target"]["cached"] == 2


def test_remove_takes_a_policy_off_the_stack(hooks):
    baseline = Pipeline("analytic", hooks=hooks).generate("x", num_frames=6, seed=1)
    pipe = Pipeline("analytic", hooks=hooks).use("every-n", n=2).use(Answer("second"))
    pipe.remove("every-n")
    assert pipe.policies == ["second"]
    assert "every-n" not in registered_names(hooks)
    result = pipe.generate("x", num_frames=6, seed=1)
    assert {e["by"] for e in result.trace.of("step")} == {"second"}
    assert torch.equal(result.latents, baseline.latents)
    with pytest.raises(ConfigError) as err:
        pipe.remove("every-n")
    assert err.value.field == "name" and "second" in err.value.allowed
    pipe.remove("second")
    with pytest.raises(ConfigError, match="empty"):
        pipe.remove("second")


def test_close_unregisters_the_stack(hooks):
    with Pipeline("analytic", hooks=hooks) as pipe:
        pipe.use("every-n").use(Answer("a"))
        assert {"every-n", "a"} <= registered_names(hooks)
    assert pipe.policies == []
    assert not {"every-n", "a"} & registered_names(hooks)


def test_pipelines_sharing_a_plugin_manager_do_not_see_each_others_policies(hooks):
    plain = Pipeline("analytic", hooks=hooks)
    fast = Pipeline("analytic", hooks=hooks).use("every-n", n=2)
    also_fast = Pipeline("analytic", hooks=hooks).use("every-n", n=4)
    # each pipeline names its own stack; the manager keeps the two plugins apart
    assert fast.policies == ["every-n"] and also_fast.policies == ["every-n"]
    assert fast.stack[0].plugin != also_fast.stack[0].plugin
    assert {fast.stack[0].plugin, also_fast.stack[0].plugin} <= registered_names(hooks)
    fresh = Pipeline("analytic", hooks=make_hooks()).generate("x", num_frames=6)
    for _ in range(2):  # interleaved
        r_plain = plain.generate("x", num_frames=6)
        r_fast = fast.generate("x", num_frames=6)
        r_also = also_fast.generate("x", num_frames=6)
        assert torch.equal(r_plain.latents, fresh.latents)
        assert r_plain.stats.calls["target"]["cached"] == 0
        assert r_fast.stats.calls["target"]["computed"] == 4
        assert r_also.stats.calls["target"]["computed"] == 2
        assert {e["by"] for e in r_fast.trace.of("step")} == {"every-n"}
        assert {e["by"] for e in r_also.trace.of("step")} == {"every-n"}
    also_fast.close()
    assert fast.stack[0].plugin in registered_names(hooks)
    assert fast.generate("x", num_frames=6).stats.calls["target"]["computed"] == 4


# ---- running ------------------------------------------------------------------------------------


@pytest.mark.parametrize("policy", ["random", "every-n"])
def test_a_pipeline_is_reusable_across_requests(hooks, policy):
    pipe = Pipeline("analytic", hooks=hooks)
    if policy == "random":
        pipe.use(RandomStep(seed=7, p_cache=0.4, p_predict=0.4))
    else:
        pipe.use("every-n", n=2)
    runs = [pipe.generate(["a", "b"], num_frames=9, seed=3) for _ in range(3)]
    modes = [[(e["mode"], e["interval"]) for e in r.trace.of("step")] for r in runs]
    for r, m in zip(runs[1:], modes[1:]):
        assert torch.equal(r.latents, runs[0].latents)
        assert torch.equal(r.frames, runs[0].frames)
        assert m == modes[0]
        assert r.stats.calls == runs[0].stats.calls
    if policy == "random":  # the policy really reused something
        assert {"cache", "predict"} & {mode for mode, _ in modes[0]}
    # a different request in between does not disturb the next one
    pipe.generate("something else", num_frames=3, seed=9)
    again = pipe.generate(["a", "b"], num_frames=9, seed=3)
    assert torch.equal(again.latents, runs[0].latents)


@pytest.mark.parametrize("steps, n", [(4, 2), (6, 2), (6, 3), (5, 2), (4, 1), (4, 4)])
def test_every_n_computes_exactly_every_nth_call(hooks, steps, n):
    units = 3
    baseline = Pipeline("analytic", hooks=hooks, adapter_kwargs={"steps": steps})
    base = baseline.generate("x", num_frames=3 * units).stats.calls["target"]
    # the last unit's commit is skipped: no later call reads it
    assert base == {"computed": units * steps, "cached": 0, "predicted": 0, "commit": units - 1,
                    "commit_skipped": 1, "frames_computed": 3 * units * steps, "frames_reused": 0}
    pipe = Pipeline("analytic", hooks=hooks, adapter_kwargs={"steps": steps}).use("every-n", n=n)
    result = pipe.generate("x", num_frames=3 * units)
    computed = units * math.ceil(steps / n)
    assert result.stats.calls["target"] == {
        "computed": computed, "cached": units * steps - computed, "predicted": 0,
        "commit": units - 1, "commit_skipped": 1, "frames_computed": 3 * computed,
        "frames_reused": 0}
    for e in result.trace.of("step"):
        assert e["mode"] == ("recompute" if e["step"] % n == 0 else "cache")
        assert e["by"] == "every-n"


def test_every_n_with_n_2_halves_computed_calls(hooks):
    base = Pipeline("analytic", hooks=hooks).generate("x", num_frames=9)
    half = Pipeline("analytic", hooks=hooks).use("every-n", n=2).generate("x", num_frames=9)
    assert half.stats.calls["target"]["computed"] * 2 == base.stats.calls["target"]["computed"]
    assert half.stats.model_calls() == 6 + 2 and base.stats.model_calls() == 12 + 2
    assert not torch.equal(half.latents, base.latents)  # reuse is approximate
    assert torch.isfinite(half.latents).all()


@pytest.mark.parametrize("applies_to", ["drafter", "target"])
def test_applies_to_limits_a_step_policy_to_one_model(hooks, applies_to):
    kw = dict(adapter="analytic", hooks=hooks, adapter_kwargs={"steps": 4}, drafter="analytic",
              drafter_kwargs={"steps": 4})
    baseline = Pipeline(**kw).generate("x", num_frames=9, seed=2)
    pipe = Pipeline(**kw).use("every-n", n=2, applies_to=applies_to)
    assert pipe.stack[0].applies_to is AppliesTo(applies_to)
    result = pipe.generate("x", num_frames=9, seed=2)
    other = "target" if applies_to == "drafter" else "drafter"
    cached = [e for e in result.trace.of("step") if e["mode"] == "cache"]
    assert cached and {e["model"] for e in cached} == {applies_to}
    assert {e["by"] for e in result.trace.of("step") if e["model"] == other} == {
        "accelframe.exact"}
    assert result.stats.calls[applies_to]["cached"] == 6
    assert result.stats.calls[other] == baseline.stats.calls[other]
    if applies_to == "drafter":  # every block regenerated: the target output is untouched
        assert torch.equal(result.latents, baseline.latents)


def test_result_and_trace_are_json_serialisable(hooks):
    pipe = Pipeline("analytic", hooks=hooks, drafter="analytic", drafter_kwargs={"steps": 2})
    pipe.use(ThresholdBlock(tau=-math.inf)).use(FailingStep(how="not-a-decision", every=5))
    pipe.use("every-n", n=2)
    with pytest.warns(PolicyFallbackWarning, match="FailingStep"):
        result = pipe.generate(["a", "b"], num_frames=9, seed=1)
    text = json.dumps(result.to_json())
    back = json.loads(text)
    assert back["latents_shape"] == [2, 9, 4, 8, 8]
    assert back["frames_shape"] == [2, 9, 3, 8, 8]
    assert back["sources"] == ["target", "draft", "draft"]
    assert back["stats"]["blocks"]["accepted"] == 2
    kinds = {e["event"] for e in back["trace"]}
    assert {"step", "block", "commit", "emit", "fallback"} <= kinds
    block = [e for e in back["trace"] if e["event"] == "block"]
    assert [b["verdict"] for b in block] == ["regenerate", "accept", "accept"]
    assert all(isinstance(b["score"], float) for b in block)
    json.dumps(result.stats.to_dict())
    with pytest.warns(PolicyFallbackWarning):
        undecoded = pipe.generate("x", num_frames=3, decode=False)
    assert json.loads(json.dumps(undecoded.to_json()))["frames_shape"] is None
