"""The written contracts: the Policy protocol's optional members (read and checked in one place,
one reset mechanism), the adapter's feature protocols paired with capabilities (checked when a
pipeline is built), ``hookimpl`` beside ``hookspec``, and the facade typed with the hook types."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

import accelframe
import accelframe_example
from accelframe import adapter as caps
from accelframe import hookspecs, plugins
from accelframe import policy as pol
from accelframe.errors import ConfigError, IncompatibleError
from accelframe.pipeline import Pipeline
from accelframe.testing import AnalyticAdapter
from accelframe.testing.fixtures import make_hooks
from accelframe.types import AppliesTo, Mode

ROOT = Path(__file__).resolve().parents[1]


class Declares:
    """A step policy whose members besides its hook are set per test."""

    def __init__(self, **members):
        for k, v in members.items():
            setattr(self, k, v)

    @accelframe.hookimpl
    def accelframe_step_decide(self, ctx):
        return None


# ---- the Policy protocol ------------------------------------------------------------------------

@pytest.mark.parametrize("member, value", [
    ("name", 7),
    ("applies_to", "nobody"),
    ("requires", "decode"),  # a str, not a set: would read as the capabilities 'd', 'e', ...
    ("requires", 3),
    ("requires", frozenset({1})),
    ("requires", frozenset({"teleport"})),
    ("made_for", 5),
    ("bind", "not a method"),
    ("check_request", 1.5),
    ("reset", True),
])
def test_a_policy_member_of_the_wrong_type_is_refused_naming_policy_and_member(af_pipeline, member, value):
    with pytest.raises(ConfigError) as err:
        af_pipeline().use(Declares(name="declares", **{member: value}) if member != "name"
                          else Declares(name=value))
    assert err.value.field == member
    assert err.value.owner == ("Declares" if member == "name" else "declares")


def test_a_policy_declaring_nothing_gets_the_defaults():
    p = Declares()
    assert pol.policy_name(p) == "Declares"
    assert pol.applies_to(p) is AppliesTo.BOTH
    assert pol.requirements(p) == frozenset() and pol.made_for(p) is None
    pol.reset(p)  # no reset: nothing to call
    pol.check(p)


def test_declared_members_are_read_through_the_policy_module(af_pipeline):
    calls = []
    p = Declares(name="mine", applies_to="target", requires=["kv_cache"], made_for="analytic",
                 bind=lambda **kw: calls.append(("bind", sorted(kw))),
                 check_request=lambda req: calls.append(("check", req.num_frames)),
                 reset=lambda: calls.append(("reset",)))
    pipe = af_pipeline(steps=2).use(p)
    assert pipe.stack[0].name == "mine" and pipe.stack[0].applies_to is AppliesTo.TARGET
    pipe.generate("x", num_frames=3)
    assert calls == [("bind", ["pipeline", "registry"]), ("check", 3), ("reset",)]


def test_made_for_is_suggested_when_a_capability_is_missing(af_pipeline):
    with pytest.raises(IncompatibleError, match="made for adapter 'magi-1'"):
        af_pipeline(plan="block").use(Declares(requires={"update_mask"}, made_for="magi-1"))


def test_the_example_plugin_resets_in_reset_not_in_a_lifecycle_hook(af_register, af_pipeline):
    assert not hasattr(accelframe_example.EveryN, "accelframe_generation_end")
    af_register(accelframe_example)
    pipe = af_pipeline(steps=4).use("every-n", n=2)
    policy = pipe.stack[0].policy
    first = pipe.generate("a red circle moves left", num_frames=6, seed=1)
    before = {g for g, _ in policy._last}
    again = pipe.generate("a red circle moves left", num_frames=6, seed=1)
    after = {g for g, _ in policy._last}
    assert len(before) == len(after) == 1 and before != after  # reset() dropped the first run's state
    assert first.stats.calls == again.stats.calls
    policy.reset()
    assert policy._last == {}


def test_lifecycle_hooks_are_documented_as_observers():
    for hook in (hookspecs.accelframe_generation_start, hookspecs.accelframe_generation_end):
        assert "reset()" in hook.__doc__


# ---- the adapter's feature protocols --------------------------------------------------------------

def test_every_capability_that_promises_methods_has_a_protocol():
    assert set(caps.FEATURES) == {caps.SNAPSHOT, caps.DECODE, caps.ENCODE, caps.KV_WINDOW}
    assert set(caps.FEATURES) <= caps.CAPABILITIES
    assert caps.members(caps.KVWindow) == ("kv_frames", "kv_apply")
    assert caps.members(caps.Snapshots) == ("snapshot", "restore")
    # the core protocol holds what every family implements; features are not part of it
    assert not set(caps.members(caps.Adapter)) & {m for p in caps.FEATURES.values() for m in caps.members(p)}


@pytest.mark.parametrize("plan", ["block", "staircase", "window"])
def test_the_analytic_adapter_has_the_features_it_declares(plan):
    a = AnalyticAdapter(plan=plan)
    caps.check_features(a)
    for cap in a.capabilities & caps.FEATURES.keys():
        assert caps.feature(a, caps.FEATURES[cap]) is a


class NoWindow(AnalyticAdapter):
    """Declares kv_window but cannot apply a KV action."""

    kv_apply = None


def test_a_declared_capability_without_its_methods_is_refused_when_the_pipeline_is_built():
    with pytest.raises(ConfigError) as err:
        Pipeline(NoWindow(plan="block"), hooks=make_hooks())
    assert err.value.owner == "adapter 'analytic'" and err.value.field == "capabilities"
    assert err.value.value == "kv_window" and "kv_apply()" in err.value.allowed


def test_a_registered_adapter_is_checked_too():
    class Plugin:
        @accelframe.hookimpl
        def accelframe_register_adapters(self, register):
            register("no-window", lambda: NoWindow(plan="block"))

    with pytest.raises(ConfigError, match="adapter 'no-window'.capabilities = 'kv_window'"):
        Pipeline("no-window", hooks=make_hooks(Plugin()))


class LatentOnly(AnalyticAdapter):
    """No decoder and no encoder, and it says so: an adapter need not implement what it does not
    declare (MAGI-1 without a VAE)."""

    decode = None
    encode = None

    def __init__(self, **kw):
        super().__init__(**kw)
        self.capabilities = self.capabilities - {caps.DECODE, caps.ENCODE}


def test_an_adapter_object_without_optional_features_is_accepted():
    pipe = Pipeline(LatentOnly(), hooks=make_hooks())
    assert caps.feature(pipe.adapter, caps.Decoder) is None
    assert pipe.generate("x", num_frames=3, decode=False).frames is None


def test_a_missing_feature_is_refused_before_any_model_call_where_a_run_needs_it(monkeypatch):
    """What an adapter need not have, a run that needs it refuses up front: decoding a generation,
    streaming (which emits pixels), drafting (the target snapshots and restores its caches)."""
    from accelframe.streaming import StreamSource, VirtualClock

    pipe = Pipeline(LatentOnly(), hooks=make_hooks())
    monkeypatch.setattr(pipe.adapter, "denoise", lambda *a, **k: pytest.fail("a model call ran"))
    with pytest.raises(ConfigError) as err:
        pipe.generate("x", num_frames=3)  # decode=True by default
    assert (err.value.owner, err.value.field) == ("Pipeline.generate", "decode") and "decode()" in err.value.allowed
    with pytest.raises(IncompatibleError, match="no decode"):
        pipe.stream([StreamSource(id="s", prompt="x", num_frames=3, fps=8)], clock=VirtualClock())

    class NoSnapshots(AnalyticAdapter):
        snapshot = None

        def __init__(self, **kw):
            super().__init__(**kw)
            self.capabilities = self.capabilities - {caps.SNAPSHOT}

    with pytest.raises(IncompatibleError, match="cannot snapshot and restore"):
        Pipeline(NoSnapshots(plan="block"), drafter=AnalyticAdapter(plan="block"), hooks=make_hooks())
    # the drafter needs them only when its context is the emitted units
    Pipeline(AnalyticAdapter(plan="block"), drafter=NoSnapshots(plan="block"), hooks=make_hooks())
    with pytest.raises(IncompatibleError, match="drafter 'analytic' cannot snapshot"):
        Pipeline(AnalyticAdapter(plan="block"), drafter=NoSnapshots(plan="block"), hooks=make_hooks(),
                 drafter_context="emitted")


def test_a_pixel_mapping_needs_only_its_own_half():
    """``pixel_frames`` alone maps latent to pixel counts (memory estimates, stream frame maps), as
    before the accessors; ``latent_frames`` alone the other way."""
    only_pixels = type("P", (), {"pixel_frames": lambda s, n: 1 + 4 * (n - 1)})()
    only_latents = type("L", (), {"latent_frames": lambda s, n: 1 + (n - 1) // 4})()
    assert caps.pixel_frames(only_pixels, 3) == 9 and caps.latent_frames(only_pixels, 9) == 9
    assert caps.latent_frames(only_latents, 9) == 3 and caps.pixel_frames(only_latents, 3) == 3


def test_accessors_give_the_documented_defaults():
    bare = type("Bare", (), {"latent_shape": (4, 8, 6), "unit_frames": 1})()
    assert caps.adapter_device(bare) == "cpu" and caps.adapter_dtype(bare) is accelframe_dtype()
    assert caps.vae_key(bare) is None and caps.pixel_size(bare) == (8, 6)
    assert caps.pixel_frames(bare, 5) == 5 and caps.pixel_frames(bare, 0) == 0
    assert caps.latent_frames(bare, 5) == 5 and caps.adapter_fps(bare) == 16
    assert caps.capabilities(bare) == frozenset() and caps.adapter_name(bare) == "Bare"
    assert caps.feature(bare, caps.Decoder) is None and caps.feature(bare, caps.QualityDescriber) is None
    a = AnalyticAdapter()
    assert caps.vae_key(a) == a.vae_key and caps.pixel_size(a) == (a.config.height, a.config.width)
    # a temporally compressing VAE converts both ways; a declared fps is read as given
    wan_like = type("WanLike", (), {"fps": 24, "pixel_frames": lambda s, n: 1 + 4 * (n - 1),
                                    "latent_frames": lambda s, n: 1 + (n - 1) // 4})()
    assert caps.pixel_frames(wan_like, 3) == 9 and caps.latent_frames(wan_like, 9) == 3
    assert caps.adapter_fps(wan_like) == 24


def accelframe_dtype():
    import torch

    return torch.float32


# ---- hookimpl beside hookspec, and the typed facade ---------------------------------------------

def test_hookimpl_lives_beside_hookspec_and_every_old_import_still_works():
    assert accelframe.hookimpl is hookspecs.hookimpl is plugins.hookimpl
    tree = ast.parse((ROOT / "accelframe" / "fallback.py").read_text())
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert "accelframe.plugins" not in imported  # no import circle fallback <-> plugins


FACADE = ["generation_start", "generation_end", "step_observe", "block_verdict", "block_observe",
          "batch_plan", "kv_manage", "noise_level", "batch_observe", "model_call"]


@pytest.mark.parametrize("method", FACADE)
def test_the_facade_is_typed_with_the_hook_types(method):
    sig = inspect.signature(getattr(plugins.Hooks, method))
    annotations = [p.annotation for name, p in sig.parameters.items() if name not in ("self", "impls")]
    assert all(a != "Any" for a in annotations), (method, annotations)
    assert "Any" not in str(sig.return_annotation).replace("dict[str, Any]", "")


def test_typed_facade_answers_as_before(af_pipeline):
    pipe = af_pipeline(steps=2).use(Declares())
    decide, _ = pipe.hooks.step_impls(accelframe.ModelRole.TARGET)
    assert [plugin for _, _, plugin in decide] == ["Declares", plugins.EXACT]
    answer, by = pipe.hooks.first_ctx("accelframe_step_decide", decide, None)
    assert answer.mode is Mode.RECOMPUTE and by == plugins.EXACT
