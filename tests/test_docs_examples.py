"""Every Python example of docs/writing-plugins.md runs here, and the doc cannot drift from it.

The first block below is the tutorial's test module for plugin authors, as the tutorial shows it
(pytest collects its tests here, with the ``af_*`` fixtures). The other examples run inside test
functions, line for line as the tutorial shows them, followed by asserts on what the tutorial's
comments promise. ``test_doc_blocks_are_in_sync`` checks that every Python block of the tutorial
appears here (or, for blocks marked ``<!-- file: PATH -->``, in that file), line by line in order.

Autoloading is off in tests, so examples that rely on the installed plugins get a plugin manager
from ``make_hooks`` with the example plugin module ``accelframe_example`` registered explicitly
(the ``installed`` fixture).
"""

# ---- the tutorial's test module ("Testing a plugin"), verbatim --------------------------------

import pytest
import torch

import accelframe_example
from accelframe.errors import ConfigError


def test_every_n_reuses_every_other_call(af_register, af_pipeline):
    af_register(accelframe_example)  # autoload is off in tests: register the plugin module
    pipe = af_pipeline(steps=8).use("every-n", n=2)
    calls = pipe.generate("a red circle moves left", num_frames=6).stats.calls["target"]
    assert (calls["computed"], calls["cached"]) == (8, 8)


def test_n_1_is_the_baseline_bit_for_bit(af_register, af_pipeline):
    af_register(accelframe_example)
    base = af_pipeline(steps=4).generate("a red circle moves left", num_frames=6, seed=3)
    pipe = af_pipeline(steps=4).use("every-n", n=1)
    same = pipe.generate("a red circle moves left", num_frames=6, seed=3)
    assert torch.equal(base.latents, same.latents)


@pytest.mark.parametrize("plan", ["block", "staircase", "window"])
def test_never_fails_on_any_plan_shape(af_register, af_pipeline, plan):
    af_register(accelframe_example)
    pipe = af_pipeline(plan=plan, steps=4, strict=True).use("every-n", n=2)
    result = pipe.generate("a red circle moves left", num_frames=6)
    assert result.stats.fallbacks == {}


def test_bad_n_fails_before_any_model_call(af_register, af_pipeline):
    af_register(accelframe_example)
    with pytest.raises(ConfigError, match="EveryN.n"):
        af_pipeline().use("every-n", n=0)


# ---- the other examples ------------------------------------------------------------------------

import re  # noqa: E402
from pathlib import Path  # noqa: E402

import accelframe  # noqa: E402
import accelframe.pipeline  # noqa: E402
from accelframe.testing.fixtures import make_hooks  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "writing-plugins.md"
FENCE = re.compile(r"(?:<!-- file: (?P<path>\S+) -->\n)?```(?P<lang>\w*)\n(?P<body>.*?)```", re.S)


@pytest.fixture
def installed(monkeypatch):
    """What installing the example gives a user (autoloading finds it), with autoloading off:
    ``Pipeline()`` and ``create_hooks()`` get a manager with the analytic adapter and the
    example plugin module registered explicitly."""

    def hooks(**kwargs):
        return make_hooks(accelframe_example, *kwargs.get("plugins", ()))

    monkeypatch.setattr(accelframe.pipeline, "create_hooks", hooks)
    monkeypatch.setattr(accelframe, "create_hooks", hooks)


def test_using_the_policy(installed, capsys):
    from accelframe import Pipeline

    pipe = Pipeline("analytic", adapter_kwargs={"steps": 8})
    pipe.use("every-n", n=2)
    result = pipe.generate("a red circle moves left", num_frames=6, seed=0)
    print(result.stats.calls["target"])  # 8 computed, 8 cached, 1 commit pass, 1 skipped
    print(result.trace.of("step")[1])    # step 1 of unit 0: 'mode': 'cache', 'by': 'every-n'

    calls = result.stats.calls["target"]
    assert (calls["computed"], calls["cached"], calls["commit"], calls["commit_skipped"]) == (8, 8, 1, 1)
    step = result.trace.of("step")[1]
    assert (step["unit"], step["step"], step["mode"], step["by"]) == (0, 1, "cache", "every-n")

    # bad keyword arguments fail at use
    from accelframe.errors import ConfigError

    for kwargs in ({"n": 0}, {"m": 2}, {"applies_to": "nobody"}):
        try:
            pipe.use("every-n", **kwargs)
        except ConfigError as exc:
            print(exc)
    # EveryN.n = 0 is not allowed: an integer in [1, 1000]
    # policy 'every-n'.m = 2 is not allowed: valid keywords (closest first): n, applies_to
    # AppliesTo.applies_to = 'nobody' is not allowed: one of 'target', 'drafter', 'both'

    out = capsys.readouterr().out.splitlines()
    assert out[-3:] == [
        "EveryN.n = 0 is not allowed: an integer in [1, 1000]",
        "policy 'every-n'.m = 2 is not allowed: valid keywords (closest first): n, applies_to",
        "AppliesTo.applies_to = 'nobody' is not allowed: one of 'target', 'drafter', 'both'",
    ]
    assert pipe.policies == ["every-n"]  # nothing was added by the failed calls


def test_requires_is_checked(installed, capsys):
    from accelframe import Pipeline

    from accelframe import hookimpl
    from accelframe.adapter import UPDATE_MASK
    from accelframe.errors import IncompatibleError

    class NeedsUpdateMask:
        requires = frozenset({UPDATE_MASK})

        @hookimpl
        def accelframe_step_decide(self, ctx):
            return None

    try:
        Pipeline("analytic", adapter_kwargs={"plan": "block"}).use(NeedsUpdateMask())
    except IncompatibleError as exc:
        print(exc)  # policy 'NeedsUpdateMask' needs update_mask from adapter 'analytic', ...

    out = capsys.readouterr().out
    assert out.startswith("policy 'NeedsUpdateMask' needs update_mask from adapter 'analytic'")


def test_explicit_plugin_manager(capsys):
    import accelframe_example
    from accelframe import Pipeline
    from accelframe.testing.fixtures import make_hooks

    hooks = make_hooks(accelframe_example)
    pipe = Pipeline("analytic", adapter_kwargs={"steps": 8}, hooks=hooks).use("every-n", n=3)
    print(pipe.generate("a red circle moves left", num_frames=6).stats.calls["target"]["cached"])  # 10

    assert capsys.readouterr().out.strip() == "10"


def test_block_policy(installed, capsys):
    import attrs
    from accelframe import BlockContext, BlockVerdict, Pipeline, hookimpl
    from accelframe.adapter import DECODE, SNAPSHOT
    from accelframe.validators import number_in

    @attrs.define(eq=False, kw_only=True)
    class WorstFrame:
        """Accept a draft whose worst decoded frame scores at least tau; regenerate block 0 undecoded."""

        tau: float = attrs.field(default=0.0, validator=number_in())
        requires = frozenset({SNAPSHOT, DECODE})  # not a field: checked by pipe.use

        @hookimpl
        def accelframe_block_early_verdict(self, ctx: BlockContext) -> BlockVerdict | None:
            if ctx.unit == 0:  # before its decode: the draft of block 0 is never decoded
                return BlockVerdict.regenerate(reason="block 0 is always regenerated")
            return None

        @hookimpl
        def accelframe_block_verdict(self, ctx: BlockContext) -> BlockVerdict | None:
            if ctx.draft_frames is None:  # the request asked for no decoding: no opinion
                return None
            score = float(ctx.draft_frames.mean(dim=(2, 3, 4)).min())  # [B, F_pix] -> worst frame
            if score >= self.tau:
                return BlockVerdict.accept(score)
            return BlockVerdict.regenerate(score)

    pipe = Pipeline("analytic", adapter_kwargs={"steps": 8},
                    drafter="analytic", drafter_kwargs={"steps": 2})
    pipe.use(WorstFrame(tau=-1.0)).use("every-n", n=2, applies_to="target")
    result = pipe.generate("a red circle moves left", num_frames=9, seed=0)
    print(result.sources)  # ('target', 'draft', 'draft')
    print([(e["unit"], e["verdict"], e["by"]) for e in result.trace.of("block")])
    print(result.stats.blocks)  # accepted 2, regenerated 1, and what the rejection cost

    assert result.sources == ("target", "draft", "draft")
    assert [(e["unit"], e["verdict"], e["by"]) for e in result.trace.of("block")] == [
        (0, "regenerate", "WorstFrame"), (1, "accept", "WorstFrame"), (2, "accept", "WorstFrame")]
    assert (result.stats.blocks["accepted"], result.stats.blocks["regenerated"]) == (2, 1)
    assert result.stats.blocks["decodes_wasted"] == 0  # block 0's draft was never decoded
    assert "tau" in [a.name for a in attrs.fields(WorstFrame)]
    assert "requires" not in [a.name for a in attrs.fields(WorstFrame)]
    # the step policy applies to the target only: the drafter computed every call
    assert result.stats.calls["drafter"]["cached"] == 0
    assert result.stats.calls["target"]["cached"] > 0
    # no decoding: the policy has no opinion after block 0 and the exact path regenerates the units
    plain = pipe.generate("a red circle moves left", num_frames=9, seed=0, decode=False)
    assert plain.sources == ("target", "target", "target")
    assert [e["by"] for e in plain.trace.of("block")] == ["WorstFrame"] + ["accelframe.exact"] * 2


def test_batch_policy(installed, capsys):
    import attrs
    from accelframe import BatchContext, BatchEntry, BatchPlan, Pipeline, hookimpl
    from accelframe.streaming import StreamSource, VirtualClock
    from accelframe.validators import number_in

    @attrs.define(eq=False, kw_only=True)
    class EarliestDeadline:
        """One chunk from each of at most max_streams ready streams, earliest deadline first."""

        chunk_units: int = attrs.field(default=1, validator=number_in(1, 64, integer=True))
        max_streams: int = attrs.field(default=2, validator=number_in(1, 64, integer=True))

        @hookimpl
        def accelframe_batch_plan(self, ctx: BatchContext) -> BatchPlan:
            chunk = self.chunk_units * ctx.unit_frames

            def size(s):  # a whole chunk, or what is left of a source that ends sooner; 0: not ready
                left = chunk if s.total is None else min(chunk, s.total - s.consumed)
                return left if 0 < left <= s.pending else 0

            ready = sorted((s for s in ctx.streams if size(s)),
                           key=lambda s: (s.next_deadline_s is None, s.next_deadline_s or 0.0))
            entries = [BatchEntry(stream=s.stream, frames=size(s)) for s in ready[: self.max_streams]]
            return BatchPlan(entries=entries, reason=f"earliest deadline first, {len(entries)} stream(s)")

    pipe = Pipeline("analytic", adapter_kwargs={"steps": 4})
    pipe.use(EarliestDeadline(max_streams=2))
    sources = [
        StreamSource(id="cam-a", prompt="a red circle moves left", num_frames=9, fps=8.0,
                     deadline_s=1.0),
        StreamSource(id="cam-b", prompt="a blue square moves up", num_frames=6, fps=8.0,
                     deadline_s=0.5),
    ]
    run = pipe.stream(sources, clock=VirtualClock(batch_cost_s=0.05))
    print(run.batches[0]["entries"])  # [['cam-b', 3], ['cam-a', 3]]: the tighter deadline first
    print(run.to_json()["streams"]["cam-b"]["frames"])  # 6

    assert run.batches[0]["entries"] == [["cam-b", 3], ["cam-a", 3]]
    assert {b["by"] for b in run.batches} == {"EarliestDeadline"}
    assert run.to_json()["streams"]["cam-b"]["frames"] == 6
    assert run.to_json()["streams"]["cam-a"]["frames"] == 9
    assert run.stats.fallbacks == {}


def test_model_call_wrapper(installed, capsys):
    import time

    from accelframe import Pipeline, hookimpl

    class CallTimer:
        def __init__(self):
            self.seconds = {}  # (model, kind) -> total seconds

        @hookimpl(wrapper=True)
        def accelframe_model_call(self, call):
            t0 = time.perf_counter()
            out = yield  # the inner implementations run the call
            key = (call.model.value, call.kind)
            self.seconds[key] = self.seconds.get(key, 0.0) + time.perf_counter() - t0
            return out

    pipe = Pipeline("analytic", adapter_kwargs={"steps": 4})
    timer = CallTimer()
    pipe.hooks.register(timer)  # a wrapper is not a policy: register it, do not pipe.use it
    pipe.generate("a red circle moves left", num_frames=6)
    print(sorted(timer.seconds))  # [('target', 'commit'), ('target', 'denoise')]
    pipe.hooks.unregister(timer)

    assert sorted(timer.seconds) == [("target", "commit"), ("target", "denoise")]
    assert not pipe.hooks.wraps_model_calls


def test_plugin_infos(installed, capsys):
    from accelframe import create_hooks

    hooks = create_hooks()  # follows both environment variables
    for info in hooks.plugin_infos():
        print(info.name, info.kind, info.hooks)
    print(hooks.registry().names("policy"))  # ['every-n', ...]
    print(hooks.failures)                    # []

    by_name = {i.name: i for i in hooks.plugin_infos()}
    assert by_name["accelframe_example"].hooks == ("accelframe_register_policies",)
    assert by_name["accelframe.exact"].kind == "core"
    assert "every-n" in hooks.registry().names("policy")
    assert hooks.failures == []


def test_disable_plugins_blocks_by_name():
    """What ``ACCELFRAME_DISABLE_PLUGINS`` does, through ``create_hooks(disabled=...)``."""
    from accelframe.errors import UnknownNameError
    from accelframe.plugins import create_hooks
    from accelframe.testing import plugin as analytic_plugin

    hooks = create_hooks(autoload=False, disabled=["example"])
    hooks.register(analytic_plugin)
    hooks.register(accelframe_example, name="example")  # blocked: not registered
    assert not hooks.pm.is_registered(accelframe_example)
    with pytest.raises(UnknownNameError, match="every-n"):
        accelframe.Pipeline("analytic", hooks=hooks).use("every-n")


# ---- the doc and this file stay in step -------------------------------------------------------


def _lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip()]


def _in_order(needle: list[str], hay: list[str], max_gap: int = 25) -> str | None:
    """None when the lines of ``needle`` occur in ``hay`` in order, in one stretch (at most
    ``max_gap`` other lines between two of them); else the first line no stretch reaches."""
    best = 0  # the most lines one stretch reached
    for start in (k for k, line in enumerate(hay) if line == needle[0]):
        k, done = start, 1
        for line in needle[1:]:
            window = hay[k + 1:k + 2 + max_gap]
            if line not in window:
                break
            k += 1 + window.index(line)
            done += 1
        if done == len(needle):
            return None
        best = max(best, done)
    return needle[best]


def test_stream_invariants(installed):
    from accelframe import Pipeline

    my_plugin = accelframe_example
    from accelframe.streaming import StreamLoop, StreamSource, VirtualClock
    from accelframe.testing.invariants import CommitRecorder, check_stream_run

    recorder = CommitRecorder()
    pipe = Pipeline("analytic", hooks=make_hooks(my_plugin, recorder))
    loop = StreamLoop(pipe, [StreamSource(id="s", prompt="a red circle", num_frames=12, fps=50.0)],
                      clock=VirtualClock())
    check_stream_run(loop, loop.run(), recorder)

    assert recorder.frames and recorder.calls > 0


def test_doc_blocks_are_in_sync():
    doc = DOC.read_text(encoding="utf-8")
    this = _lines(Path(__file__).read_text(encoding="utf-8"))
    checked = 0
    for m in FENCE.finditer(doc):
        path, lang, body = m.group("path"), m.group("lang"), m.group("body")
        if path is not None:
            hay, where = _lines((ROOT / path).read_text(encoding="utf-8")), path
        elif lang == "python":
            hay, where = this, "tests/test_docs_examples.py"
        else:
            continue
        missing = _in_order(_lines(body), hay)
        assert missing is None, f"a {lang} block of {DOC.name} is not in {where}: {missing!r}"
        checked += 1
    assert checked >= 10, "the tutorial's examples were not found"


def test_install_commands_use_the_constraints_file():
    doc = DOC.read_text(encoding="utf-8")
    installs = re.findall(r"pip install [^\n`]*", doc)
    assert installs
    for cmd in installs:
        assert "-c " in cmd and "constraints.txt" in cmd, cmd
