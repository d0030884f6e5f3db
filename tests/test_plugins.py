"""The plugin manager: entry-point loading, blocking, load failures, hook validation, duplicate
names and the plugin listing."""

from __future__ import annotations

import importlib.metadata as md
import json
import sys
import types
import warnings

import attrs
import pytest

import accelframe
import accelframe.plugins as plugins
import accelframe_example
from accelframe.errors import (
    DuplicateNameError,
    PluginError,
    PluginLoadWarning,
    UnknownNameError,
)
from accelframe.pipeline import Pipeline
from accelframe.plugins import AUTOLOAD_ENV, DISABLE_ENV, EXACT, RUNNER, create_hooks, hookimpl
from accelframe.testing import AnalyticAdapter
from accelframe.types import StepDecision

# the entry points the installed distributions declare
INSTALLED = {"analytic", "policies", "adapters", "example"}


def plugin_names(hooks) -> set[str]:
    return {name for name, plugin in hooks.pm.list_name_plugin() if plugin is not None}


@pytest.fixture
def autoload(monkeypatch):
    """Turn entry-point autoloading back on (conftest.py switches it off)."""
    monkeypatch.delenv(AUTOLOAD_ENV, raising=False)
    monkeypatch.delenv(DISABLE_ENV, raising=False)


def _with_extra_entry_points(monkeypatch, *extra: md.EntryPoint) -> None:
    """Make ``accelframe.plugins`` see the installed entry points plus ``extra``."""
    real = plugins.metadata.entry_points

    def entry_points(**kwargs):
        found = list(real(**kwargs))
        if kwargs.get("group") == plugins.ENTRY_POINT_GROUP:
            found += [ep for ep in extra if ep.group == kwargs["group"]]
        return found

    monkeypatch.setattr(plugins.metadata, "entry_points", entry_points)


# ---- autoloading --------------------------------------------------------------------------------


def test_autoload_registers_every_installed_entry_point(autoload):
    hooks = create_hooks()
    assert INSTALLED <= plugin_names(hooks)
    assert hooks.failures == []
    reg = hooks.registry()
    assert "analytic" in reg.names("adapter")
    assert {"every-n", "fixed-batch"} <= set(reg.names("policy"))
    assert reg.get("policy", "every-n").plugin == "example"
    assert reg.get("policy", "fixed-batch").plugin == "policies"
    assert reg.get("adapter", "analytic").plugin == "analytic"


def test_autoload_env_set_loads_no_entry_point(monkeypatch):
    monkeypatch.setenv(AUTOLOAD_ENV, "1")
    hooks = create_hooks()
    assert plugin_names(hooks) == {EXACT, RUNNER}
    assert hooks.registry().names("adapter") == []
    assert hooks.registry().names("policy") == []


def test_autoload_argument_overrides_the_environment(monkeypatch):
    monkeypatch.setenv(AUTOLOAD_ENV, "1")
    assert INSTALLED <= plugin_names(create_hooks(autoload=True))
    monkeypatch.delenv(AUTOLOAD_ENV)
    assert plugin_names(create_hooks(autoload=False)) == {EXACT, RUNNER}


def test_disable_env_blocks_named_plugins(autoload, monkeypatch):
    monkeypatch.setenv(DISABLE_ENV, "example, policies")
    hooks = create_hooks()
    names = plugin_names(hooks)
    assert "example" not in names and "policies" not in names
    assert {"analytic", "adapters"} <= names
    with pytest.raises(UnknownNameError):
        hooks.registry().get("policy", "every-n")
    assert hooks.failures == []


def test_disabled_argument_overrides_the_environment(autoload, monkeypatch):
    monkeypatch.setenv(DISABLE_ENV, "example")
    hooks = create_hooks(disabled=["analytic"])
    names = plugin_names(hooks)
    assert "analytic" not in names
    assert "example" in names  # the argument replaces the variable


def test_plugins_argument_is_registered_after_entry_points(autoload):
    class Extra:
        @hookimpl
        def accelframe_register_policies(self, register):
            register("extra-policy", dict, kind="step")

    hooks = create_hooks(plugins=[Extra()])
    assert hooks.registry().get("policy", "extra-policy").plugin not in INSTALLED
    assert INSTALLED <= plugin_names(hooks)


# ---- load failures ------------------------------------------------------------------------------


def test_failing_import_is_reported_and_the_others_still_load(autoload, monkeypatch):
    broken = md.EntryPoint(name="broken", value="nonexistent_mod_xyz", group="accelframe")
    _with_extra_entry_points(monkeypatch, broken)
    with pytest.warns(PluginLoadWarning, match="broken") as record:
        hooks = create_hooks()
    assert any("nonexistent_mod_xyz" in str(w.message) for w in record)
    assert [f.name for f in hooks.failures] == ["broken"]
    failure = hooks.failures[0]
    assert failure.value == "nonexistent_mod_xyz"
    assert "ModuleNotFoundError" in failure.error and "nonexistent_mod_xyz" in failure.error
    assert INSTALLED <= plugin_names(hooks)
    assert "broken" not in plugin_names(hooks)
    assert "every-n" in hooks.registry().names("policy")


def test_blocked_failing_plugin_is_not_even_imported(autoload, monkeypatch):
    broken = md.EntryPoint(name="broken", value="nonexistent_mod_xyz", group="accelframe")
    _with_extra_entry_points(monkeypatch, broken)
    monkeypatch.setenv(DISABLE_ENV, "broken")
    with warnings.catch_warnings():
        warnings.simplefilter("error", PluginLoadWarning)
        hooks = create_hooks()
    assert hooks.failures == []
    assert INSTALLED <= plugin_names(hooks)


def test_entry_point_with_a_misspelt_hook_is_a_load_failure(autoload, monkeypatch):
    module = types.ModuleType("af_test_misspelt_plugin")

    @hookimpl
    def accelframe_register_adapterz(register):  # misspelt
        register("never", AnalyticAdapter)

    module.accelframe_register_adapterz = accelframe_register_adapterz
    monkeypatch.setitem(sys.modules, module.__name__, module)
    _with_extra_entry_points(
        monkeypatch, md.EntryPoint(name="misspelt", value=module.__name__, group="accelframe"))
    with pytest.warns(PluginLoadWarning, match="misspelt"):
        hooks = create_hooks()
    assert [f.name for f in hooks.failures] == ["misspelt"]
    assert "PluginError" in hooks.failures[0].error
    assert "accelframe_register_adapterz" in hooks.failures[0].error
    assert "misspelt" not in plugin_names(hooks)
    assert INSTALLED <= plugin_names(hooks)


# ---- hook validation ----------------------------------------------------------------------------


class Misspelt:
    @hookimpl
    def accelframe_step_decid(self, ctx):
        return None


class WrongArgs:
    @hookimpl
    def accelframe_step_decide(self, ctx, bogus_argument):
        return None


class Good:
    @hookimpl
    def accelframe_step_decide(self, ctx):
        return StepDecision.recompute(reason="good")


def test_misspelt_hook_raises_and_leaves_nothing_registered(af_hooks):
    before = plugin_names(af_hooks)
    plugin = Misspelt()
    with pytest.raises(PluginError, match="accelframe_step_decid") as err:
        af_hooks.register(plugin, name="misspelt")
    assert "misspelt" in str(err.value)
    assert "accelframe_step_decide" in str(err.value)  # the known hooks are listed
    assert not af_hooks.pm.is_registered(plugin)
    assert plugin_names(af_hooks) == before
    assert "misspelt" not in {i.name for i in af_hooks.plugin_infos()}
    # the manager stays usable: a correct plugin registers and is asked afterwards
    af_hooks.register(Good(), name="good")
    result = Pipeline("analytic", hooks=af_hooks).generate("x", num_frames=3)
    assert {e["by"] for e in result.trace.of("step")} == {"good"}


def test_hookimpl_with_an_argument_not_in_the_spec_raises(af_hooks):
    before = plugin_names(af_hooks)
    plugin = WrongArgs()
    with pytest.raises(PluginError, match="bogus_argument") as err:
        af_hooks.register(plugin, name="wrong-args")
    assert "wrong-args" in str(err.value)
    assert not af_hooks.pm.is_registered(plugin)
    assert plugin_names(af_hooks) == before


def test_pipeline_use_of_a_misspelt_policy_raises_and_leaves_the_stack_empty(af_hooks):
    class MisspeltPolicy:
        @hookimpl
        def accelframe_step_decide(self, ctx):
            return None

        @hookimpl
        def accelframe_step_obsrve(self, ctx, decision, velocity):
            return None

    pipe = Pipeline("analytic", hooks=af_hooks)
    with pytest.raises(PluginError, match="accelframe_step_obsrve"):
        pipe.use(MisspeltPolicy())
    assert pipe.policies == []
    assert not any(isinstance(p, MisspeltPolicy) for p in af_hooks.pm.get_plugins())


def test_registering_the_same_name_twice_raises_plugin_error(af_hooks):
    af_hooks.register(Good(), name="taken")
    with pytest.raises(PluginError, match="taken"):
        af_hooks.register(Good(), name="taken")


# ---- duplicate names ----------------------------------------------------------------------------


def _adapter_plugin(name: str):
    class Registers:
        @hookimpl
        def accelframe_register_adapters(self, register):
            register(name, AnalyticAdapter)

    return Registers()


def test_duplicate_name_names_both_plugins():
    hooks = create_hooks(autoload=False, disabled=())
    hooks.register(_adapter_plugin("dup"), name="plugin-a")
    hooks.register(_adapter_plugin("dup"), name="plugin-b")
    with pytest.raises(DuplicateNameError) as err:
        hooks.registry()
    e = err.value
    assert (e.kind, e.name) == ("adapter", "dup")
    assert (e.first, e.second) == ("plugin-a", "plugin-b")  # in registration order
    assert "plugin-a" in str(e) and "plugin-b" in str(e) and "'dup'" in str(e)
    # a pipeline on that manager fails the same way, before any model call
    with pytest.raises(DuplicateNameError):
        Pipeline("dup", hooks=hooks)


def test_duplicate_policy_name_against_an_entry_point(autoload):
    class Clash:
        @hookimpl
        def accelframe_register_policies(self, register):
            register("every-n", dict, kind="step")

    hooks = create_hooks(plugins=[])
    hooks.register(Clash(), name="clash")
    with pytest.raises(DuplicateNameError) as err:
        hooks.registry()
    assert {err.value.first, err.value.second} == {"example", "clash"}


def test_same_name_for_different_kinds_is_allowed():
    class Both:
        @hookimpl
        def accelframe_register_adapters(self, register):
            register("same", AnalyticAdapter)

        @hookimpl
        def accelframe_register_policies(self, register):
            register("same", dict, kind="step")

    hooks = create_hooks(autoload=False, disabled=(), plugins=[Both()])
    reg = hooks.registry()
    assert reg.names("adapter") == ["same"] and reg.names("policy") == ["same"]


def test_registry_is_rebuilt_after_plugins_change(af_hooks):
    assert af_hooks.registry().names("policy") == []
    name = af_hooks.register(accelframe_example)
    assert af_hooks.registry().names("policy") == ["every-n"]
    af_hooks.unregister(accelframe_example)
    assert af_hooks.registry().names("policy") == []
    assert name


# ---- plugin listing -----------------------------------------------------------------------------


def test_plugin_infos_lists_name_version_kind_and_hooks(autoload):
    hooks = create_hooks()
    infos = hooks.plugin_infos()
    assert [i.name for i in infos] == sorted(i.name for i in infos)
    by_name = {i.name: i for i in infos}
    assert INSTALLED | {EXACT, RUNNER} <= set(by_name)

    ex = by_name["example"]
    assert ex.kind == "entry-point"
    assert ex.version == accelframe_example.__version__
    assert ex.distribution == "accelframe-example"
    assert ex.hooks == ("accelframe_register_policies",)

    assert by_name["analytic"].hooks == ("accelframe_register_adapters",)
    assert by_name["analytic"].distribution == "accelframe"

    exact = by_name[EXACT]
    assert exact.kind == "core" and exact.version == accelframe.__version__
    assert {"accelframe_step_decide", "accelframe_block_verdict",
            "accelframe_batch_plan"} <= set(exact.hooks)
    assert by_name[RUNNER].hooks == ("accelframe_model_call",)

    # a policy a pipeline adds is listed as such
    pipe = Pipeline("analytic", hooks=hooks).use("every-n", n=2)
    by_name = {i.name: i for i in hooks.plugin_infos()}
    assert by_name["every-n"].kind == "policy"
    assert {"accelframe_step_decide", "accelframe_step_observe"} <= set(by_name["every-n"].hooks)
    json.dumps([attrs.asdict(i) for i in hooks.plugin_infos()])
    pipe.close()
    assert "every-n" not in {i.name for i in hooks.plugin_infos()}


def test_plugin_infos_for_a_registered_object(af_hooks):
    name = af_hooks.register(Good(), name="good")
    info = {i.name: i for i in af_hooks.plugin_infos()}[name]
    assert info.kind == "registered"
    assert info.version is None
    assert info.hooks == ("accelframe_step_decide",)


def test_core_plugins_cannot_be_blocked(monkeypatch):
    monkeypatch.setenv(DISABLE_ENV, f"{EXACT},{RUNNER}")
    hooks = create_hooks(plugins=[_adapter_plugin("analytic")])
    assert {EXACT, RUNNER} <= plugin_names(hooks)
    result = Pipeline("analytic", hooks=hooks).generate("x", num_frames=3)
    assert {e["by"] for e in result.trace.of("step")} == {EXACT}
    assert result.stats.calls["target"]["computed"] == 4
