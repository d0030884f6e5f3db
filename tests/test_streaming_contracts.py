"""What the stream loop and ``accelframe stream`` use of the rest of the core, through public names:
``Stats.merge``, the pipeline's generation numbers and policy reset, an engine recording into a given
trace, the stream batch's commit and emit through the engine, registered stream sources, and a core
that imports no sibling distribution."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
import torch

from accelframe import cli, hookimpl
from accelframe.errors import ConfigError
from accelframe.pipeline import Pipeline
from accelframe.plugins import create_hooks
from accelframe.streaming import StreamLoop
from accelframe.streaming.source import StreamSource, VirtualClock
from accelframe.testing.fixtures import make_hooks
from accelframe.trace import Stats, Trace
from accelframe.types import Mode, ModelRole, Request


def _analytic(**kw) -> Pipeline:
    base = {"plan": "block", "unit_frames": 2, "steps": 2, "height": 4, "width": 4}
    return Pipeline("analytic", hooks=make_hooks(), adapter_kwargs={**base, **kw})


def test_stats_merge_adds_counters_and_stage_times_but_keeps_its_clock():
    a, b = Stats(), Stats()
    a.count_call(ModelRole.TARGET, Mode.RECOMPUTE, 3)
    b.count_call(ModelRole.TARGET, Mode.RECOMPUTE, 2)
    b.count_call(ModelRole.DRAFTER, Mode.CACHE, 2)
    b.count_fallback("accelframe_step_decide")
    b.blocks["accepted"] += 2
    b.time_s["model"], b.time_s["encode"] = 0.5, 0.25
    b.units, b.frames, b.wall_s = 2, 6, 9.0
    a.merge(b)
    assert a.calls["target"]["computed"] == 2 and a.calls["target"]["frames_computed"] == 5
    assert a.calls["drafter"]["cached"] == 1 and a.fallbacks == {"accelframe_step_decide": 1}
    assert a.blocks["accepted"] == 2 and a.time_s["model"] == 0.5 and a.time_s["encode"] == 0.25
    assert (a.units, a.frames, a.wall_s) == (2, 6, 0.0)


def test_generation_numbers_and_reset_are_public_and_a_stream_takes_one_per_stream():
    seen: list[int] = []

    class Watch:
        resets = 0

        @hookimpl
        def accelframe_batch_plan(self, ctx):
            return None

        @hookimpl
        def accelframe_generation_start(self, info):
            seen.append(info.generation)

        def reset(self):
            type(self).resets += 1

    pipe = _analytic().use(Watch())
    assert pipe.new_generation() == 1 and pipe.new_generation() == 2
    pipe.generate("x", num_frames=2, seed=0)
    srcs = [StreamSource(id=i, prompt="x", num_frames=2, fps=50.0) for i in ("a", "b")]
    pipe.stream(srcs, clock=VirtualClock())
    assert seen == [3, 4, 5] and Watch.resets == 2
    pipe.reset_policies()
    assert Watch.resets == 3


def test_an_engine_records_into_the_trace_it_is_given():
    pipe = _analytic()
    trace = Trace()
    engine = pipe.engine(generation=1, trace=trace)
    res = engine.run(Request(prompts=("x",), num_frames=4, seed=0))
    assert res.trace is trace and [e["event"] for e in trace.of("emit")] == ["emit", "emit"]
    assert pipe.engine().trace is not trace


def test_the_loop_shows_a_streams_adapter_state():
    pipe = _analytic()
    loop = StreamLoop(pipe, [StreamSource(id="s", prompt="x", num_frames=4, fps=50.0)], clock=VirtualClock())
    assert loop.target_state("s") is None
    loop.run()
    assert loop.target_state("s") is not None and loop.target_state("nope") is None


def test_the_stream_batch_commits_and_emits_through_the_engine_as_sequential_streaming_does():
    """One denoising step: the stream batch is sequential generation, bit for bit; its trace and
    counters hold the same commit and emit records too (they go through the engine's own), but for
    the last chunk's commit, which the stream batch holds and skips when the stream ends."""
    from accelframe_adapters import plugin as adapters

    kw = {"size": "tiny", "height": 32, "width": 32, "denoising_step_list": (1000,)}
    src = StreamSource(id="s", prompt="a red circle", num_frames=21, fps=50.0, seed=3)  # 6 latent frames
    runs = [Pipeline("self-forcing", hooks=make_hooks(adapters), adapter_kwargs=kw).stream(
        [src], clock=VirtualClock(), stream_batch=sb) for sb in (False, True)]
    seq, sb = runs
    assert torch.equal(seq.outputs["s"].frames, sb.outputs["s"].frames)
    assert [(e["unit"], e["frames"]) for e in sb.trace.of("emit")] == \
        [(e["unit"], e["frames"]) for e in seq.trace.of("emit")] == [(0, [0, 3]), (1, [3, 6])]
    assert [(e["unit"], e["frames"]) for e in seq.trace.of("commit")] == [(0, [0, 3]), (1, [3, 6])]
    assert [(e["unit"], e["frames"]) for e in sb.trace.of("commit")] == [(0, [0, 3])]
    seq_t, sb_t = seq.stats.calls["target"], sb.stats.calls["target"]
    assert (sb_t["commit"], sb_t["commit_skipped"]) == (seq_t["commit"] - 1, 1)
    assert ({k: v for k, v in sb_t.items() if not k.startswith("commit")}
            == {k: v for k, v in seq_t.items() if not k.startswith("commit")})
    assert (sb.stats.units, sb.stats.frames) == (seq.stats.units, seq.stats.frames) == (2, 6)


# ---- registered stream sources ------------------------------------------------------------------


class Grey:
    """A third-party stream source: uniform grey frames, and a prompt of its own."""

    asked: list[tuple[str, int, int]] = []

    def clip(self, prompt, seed, frames):
        if prompt == "refused":
            raise ConfigError("grey", "prompt", prompt, "any prompt but 'refused'")
        type(self).asked.append((prompt, seed, frames))
        return torch.full((frames, 3, 64, 64), 0.5)  # [F, 3, H, W]

    def prompts(self, n, seed):
        return ["a gray bar on a black background"] * n


class GreyPlugin:
    @hookimpl
    def accelframe_register_sources(self, register):
        register("grey", Grey, description="a uniform grey clip")


def _stream_hooks():
    from accelframe_adapters import plugin as adapters
    from accelframe_policies import plugin as policies

    return create_hooks(autoload=False, disabled=(), plugins=(adapters, policies, GreyPlugin()))


def _run(hooks, argv):
    args = cli.build_parser(hooks).parse_args(["stream", *argv])
    return args.run(args, hooks)


def test_a_registered_source_streams_on_the_clis_manager_and_latent_frames_convert(capsys, tmp_path):
    pytest.importorskip("av")
    hooks = _stream_hooks()
    assert hooks.registry().names("source") == ["grey", "world"]
    Grey.asked.clear()
    code = _run(hooks, ["--source", "grey", "--latent-frames", "3", "--fps", "200", "--seed", "4",
                        "--out", str(tmp_path / "g.mp4"), "--json"])
    doc = json.loads(capsys.readouterr().out)
    # the adapter's VAE maps 3 latent frames to 9 pixel frames; no --prompt: the source's own
    assert code == 0 and doc["streams"]["s0"]["frames"] == 9
    assert Grey.asked == [("a gray bar on a black background", 4, 9)]


def test_a_bad_source_lists_the_registered_ones_before_any_model_is_built(tmp_path, monkeypatch):
    from accelframe.streaming import cli as stream_cli

    monkeypatch.setattr(stream_cli, "build_pipeline", lambda **kw: pytest.fail("the model was built"))
    with pytest.raises(ConfigError) as err:
        _run(_stream_hooks(), ["--source", "nope.mp4", "--out", str(tmp_path / "s.mp4")])
    assert err.value.field == "--source"
    assert err.value.allowed == "'grey', 'world', 'none' or an existing video file"


def test_a_prompt_the_source_refuses_is_a_prompt_error_naming_the_source():
    with pytest.raises(ConfigError) as err:
        from accelframe.streaming.cli import source_clip

        source_clip(Grey(), "grey", "refused", 0, 9)
    assert (err.value.owner, err.value.field) == ("accelframe stream", "--prompt")
    assert err.value.allowed == "any prompt but 'refused' for --source grey"


def test_the_core_imports_no_sibling_distribution():
    """The core's distribution declares none of them: ``accelframe`` reaches adapters, policies,
    benches and sources only through the plugin manager."""
    root = Path(__file__).resolve().parents[1] / "accelframe"
    siblings = ("accelframe_adapters", "accelframe_policies", "accelframe_bench")
    found = []
    for py in root.rglob("*.py"):
        for node in ast.walk(ast.parse(py.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            found += [f"{py.relative_to(root.parent)}: {n}" for n in names if n.split(".")[0] in siblings]
    assert not found, found
