"""Every bench runs on the plugin manager it is given (the CLI's), so a third-party policy or
adapter loaded by the CLI is visible to it; without one it builds the default once."""

from __future__ import annotations

import argparse

import pytest

from accelframe import cli, hookimpl
from accelframe.errors import UnknownNameError
from accelframe.plugins import create_hooks
from accelframe.testing.analytic import AnalyticAdapter
from accelframe_bench import block, calibrate, step, stream, wan, world
from accelframe_bench import plugin as bench_plugin
from accelframe_bench.hooks import default_hooks


class ThirdPartyStep:
    """A step policy with no opinion that counts the decisions it was asked for."""

    name = "third-party-step"
    asked = 0

    @hookimpl
    def accelframe_step_decide(self, ctx):
        type(self).asked += 1


def tiny_world(size: str = "world") -> AnalyticAdapter:
    """An adapter that takes the ``size`` keyword the step bench passes, and is fast."""
    return AnalyticAdapter(plan="block", unit_frames=3, steps=2, channels=2, height=4, width=4)


class ThirdParty:
    """A plugin installed by someone else: an adapter, a policy and a scorer, on no default manager."""

    @hookimpl
    def accelframe_register_policies(self, register):
        register("third-party-step", ThirdPartyStep, kind="step")

    @hookimpl
    def accelframe_register_adapters(self, register):
        register("tiny-world", tiny_world)

    @hookimpl
    def accelframe_register_scorers(self, register):
        register("third-party-scorer", lambda: (lambda frames, prompts: frames.mean(dim=(2, 3, 4))))


class Reached(Exception):
    """Raised by the stand-in pipeline: the bench got as far as building its first pipeline."""


def _stand_in(seen: list):
    def pipeline(*args, hooks=None, **kwargs):
        seen.append(hooks)
        raise Reached

    return pipeline


def _args(module, argv):
    p = argparse.ArgumentParser()
    module.configure(p)
    return p.parse_args(argv)


BENCHES = {  # bench, its arguments (the cheapest run; OUT: a fresh folder), where it finds Pipeline
    "step": (step, ["--quick", "--out", "OUT"], "accelframe.pipeline.Pipeline"),
    "block": (block, ["--quick", "--scorer", "third-party-scorer", "--out", "OUT"],
              "accelframe.pipeline.Pipeline"),
    "world": (world, ["--quick"], "accelframe.pipeline.Pipeline"),
    "stream": (stream, ["--quick", "--ranks", "1", "--out", "OUT"], "accelframe.pipeline.Pipeline"),
    "wan": (wan, ["--latent-frames", "3"], "accelframe_bench.wan.Pipeline"),
    "calibrate": (calibrate, ["--adapter", "tiny-world"], "accelframe.pipeline.Pipeline"),
}


@pytest.mark.parametrize("name", sorted(BENCHES))
def test_every_bench_builds_its_pipelines_on_the_manager_it_is_given(name, tmp_path, monkeypatch):
    module, argv, where = BENCHES[name]
    argv = [str(tmp_path / "out") if a == "OUT" else a for a in argv]
    seen: list = []
    monkeypatch.setattr(where, _stand_in(seen))
    hooks = create_hooks(autoload=False, plugins=(ThirdParty(),))
    plugins_before = set(hooks.pm.get_plugins())
    with pytest.raises(Reached):
        module.run(_args(module, argv), hooks)
    assert seen == [hooks]
    assert set(hooks.pm.get_plugins()) == plugins_before  # wan's call timer is gone again


def test_without_a_manager_a_bench_builds_the_default_one(tmp_path, monkeypatch):
    seen: list = []
    monkeypatch.setattr("accelframe.pipeline.Pipeline", _stand_in(seen))
    with pytest.raises(Reached):
        step.run(_args(step, ["--quick", "--out", str(tmp_path / "out")]))
    reg = seen[0].registry()
    assert "scope" in reg.names("policy") and "self-forcing" in reg.names("adapter")
    assert "third-party-step" not in reg.names("policy") and "analytic" not in reg.names("adapter")


def test_the_cli_hands_its_manager_to_the_bench(tmp_path, monkeypatch):
    from accelframe_adapters import plugin as adapters
    from accelframe_policies import plugin as policies

    hooks = create_hooks(autoload=False, plugins=(bench_plugin, adapters, policies, ThirdParty()))
    monkeypatch.setattr("accelframe.plugins.create_hooks", lambda **kw: create_hooks(**kw) if kw else hooks)
    seen: list = []
    monkeypatch.setattr("accelframe.pipeline.Pipeline", _stand_in(seen))
    with pytest.raises(Reached):
        cli.main(["bench", "step", "--quick", "--out", str(tmp_path / "out")])
    assert seen == [hooks]


def test_a_policy_and_adapter_only_on_the_given_manager_run_in_a_bench_pipeline():
    hooks = create_hooks(autoload=False, plugins=(ThirdParty(),))
    method = step.Method(name="third party", policies=(("third-party-step", {}),))
    ThirdPartyStep.asked = 0
    pipe = step._pipe(hooks, "tiny-world", {}, method)
    assert [p.name for p in pipe.stack] == ["third-party-step"]
    pipe.generate("a prompt", num_frames=3, decode=False)
    assert ThirdPartyStep.asked > 0
    with pytest.raises(UnknownNameError):
        step._pipe(default_hooks(), "tiny-world", {}, method)


def test_the_stream_bench_looks_its_world_source_up_on_its_manager():
    import torch

    asked: list = []

    class Grey:
        def prompts(self, n, seed):
            asked.append("prompts")
            return ["a prompt"] * n

        def clip(self, prompt, seed, frames):
            asked.append("clip")
            return torch.zeros(frames, 3, 4, 4)

    class GreyWorld:  # a "world" source only this manager knows
        @hookimpl
        def accelframe_register_sources(self, register):
            register("world", Grey)

    from accelframe.streaming import cli as stream_cli

    bench = object.__new__(stream.Bench)  # no world model loaded: only the sources are built
    bench.cli, bench.hooks = stream_cli, create_hooks(autoload=False, plugins=(GreyWorld(),))
    bench.deadline, bench.seed = 1.0, 0
    sources = bench.sources(2, 16.0, 3)
    assert len(sources) == 2 and tuple(sources[0].frames.shape) == (3, 3, 4, 4)
    assert asked == ["prompts", "clip", "clip"]


def test_the_step_bench_leaves_no_policy_on_the_manager_it_was_given(monkeypatch):
    """Its pipelines close when the run ends, even a failing one: the caller's manager (the CLI's, or
    a Python caller's) holds no ``scope@2`` & co. afterwards."""
    from accelframe_policies import plugin as policies

    class FastSelfForcing:  # the step bench's self-forcing setting, on a fast stand-in
        @hookimpl
        def accelframe_register_adapters(self, register):
            register("self-forcing", lambda **kw: tiny_world())

    hooks = create_hooks(autoload=False, plugins=(policies, FastSelfForcing()))
    before = set(hooks.pm.get_plugins())
    built: list = []
    real_pipe = step._pipe

    def pipe(*args, **kwargs):
        made = real_pipe(*args, **kwargs)
        built.append(len(made.stack))
        return made

    def stop(*args, **kwargs):  # the first run (a warm-up) fails
        raise Reached

    monkeypatch.setattr(step, "_pipe", pipe)
    monkeypatch.setattr("accelframe.pipeline.Pipeline.generate", stop)
    with pytest.raises(Reached):
        step.run_bench(adapter="self-forcing", n=1, quick=True, only=["TeaCache"], hooks=hooks)
    assert sum(built) > 0  # the bench did add policies
    assert set(hooks.pm.get_plugins()) == before
