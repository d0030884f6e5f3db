"""Pipelines under threads: pipelines that share one plugin manager run in parallel, each with its
own stack, bit for bit equal to sequential runs; one pipeline refuses a second concurrent run."""

from __future__ import annotations

import threading
from typing import Any

import pytest
import torch

from accelframe.errors import PipelineBusyError
from accelframe.pipeline import Pipeline
from accelframe.plugins import hookimpl
from accelframe.streaming import StreamSource, VirtualClock
from accelframe.testing import AnalyticAdapter
from accelframe.testing.fixtures import make_hooks
from accelframe.testing.policies import RandomStep

PROMPT = "a red circle moves left"
KW = {"steps": 6}
TIMEOUT = 20.0


class GatedAdapter(AnalyticAdapter):
    """The analytic adapter whose prompt encoding (the first thing a run does with it) waits for
    ``gate``: it holds a run open between its set-up and its first hook call."""

    def __init__(self, gate: threading.Event, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.gate = gate

    def encode_prompt(self, prompts):
        assert self.gate.wait(TIMEOUT), "the other thread never started"
        return super().encode_prompt(prompts)


class Signal(RandomStep):
    """RandomStep that sets ``started`` at its first decision and then waits for ``go``."""

    def __init__(self, started: threading.Event, go: threading.Event, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.started, self.go = started, go

    @hookimpl
    def accelframe_step_decide(self, ctx):
        if not self.started.is_set():
            self.started.set()
            assert self.go.wait(TIMEOUT), "never released"
        return super().accelframe_step_decide(ctx)


def _run(fn, out: dict, key: str) -> threading.Thread:
    def body() -> None:
        try:
            out[key] = fn()
        except BaseException as exc:  # surfaced by the test, not lost in the thread
            out[key] = exc

    t = threading.Thread(target=body)
    t.start()
    return t


def test_pipelines_sharing_a_manager_keep_their_own_stacks_in_parallel_threads():
    """Pipeline A (random caching) and B (no policy) on one manager, B set up while A has begun
    deciding: B's run is the exact baseline and A's is its own sequential run, bit for bit."""
    hooks = make_hooks()
    started, go = threading.Event(), threading.Event()
    # sequential references, each on a pipeline of its own manager
    ref_a = Pipeline("analytic", adapter_kwargs=KW, hooks=make_hooks()).use(RandomStep(seed=3))
    ref_b = Pipeline("analytic", adapter_kwargs=KW, hooks=make_hooks())
    want_a = ref_a.generate([PROMPT], num_frames=9, seed=1).latents
    want_b = ref_b.generate([PROMPT], num_frames=9, seed=1).latents
    assert not torch.equal(want_a, want_b)  # the policy does change the result

    pipe_b = Pipeline(GatedAdapter(started, **KW), hooks=hooks)
    pipe_a = Pipeline("analytic", adapter_kwargs=KW, hooks=hooks)
    pipe_a.use(Signal(started, go, seed=3))
    out: dict[str, Any] = {}
    # B starts first and waits in its prompt encoding until A is running its policy
    tb = _run(lambda: pipe_b.generate([PROMPT], num_frames=9, seed=1), out, "b")
    ta = _run(lambda: pipe_a.generate([PROMPT], num_frames=9, seed=1), out, "a")
    assert started.wait(TIMEOUT)
    tb.join(TIMEOUT)  # B runs to its end while A is held at its first decision
    go.set()
    ta.join(TIMEOUT)
    for key in "ab":
        assert not isinstance(out[key], BaseException), out[key]
    assert torch.equal(out["b"].latents, want_b)
    assert torch.equal(out["a"].latents, want_a)
    assert {e.get("by") for e in out["b"].trace.of("step")} <= {None, "accelframe.exact"}


@pytest.mark.parametrize("second", ["generate", "stream", "use", "remove"])
def test_one_pipeline_refuses_a_second_run_while_one_runs(second):
    started, go = threading.Event(), threading.Event()
    pipe = Pipeline("analytic", adapter_kwargs=KW, hooks=make_hooks())
    pipe.use(Signal(started, go, seed=3))
    want = Pipeline("analytic", adapter_kwargs=KW, hooks=make_hooks()).use(RandomStep(seed=3)) \
        .generate([PROMPT], num_frames=9, seed=1).latents
    out: dict[str, Any] = {}
    t = _run(lambda: pipe.generate([PROMPT], num_frames=9, seed=1), out, "first")
    assert started.wait(TIMEOUT)
    try:
        with pytest.raises(PipelineBusyError, match="already running"):
            if second == "generate":
                pipe.generate([PROMPT], num_frames=9, seed=1)
            elif second == "stream":
                pipe.stream([StreamSource(id="s", prompt=PROMPT, num_frames=3, fps=8)],
                            clock=VirtualClock())
            elif second == "use":
                pipe.use(RandomStep(seed=4))
            else:
                pipe.remove(pipe.policies[0])
    finally:
        go.set()
        t.join(TIMEOUT)
    assert not isinstance(out["first"], BaseException), out["first"]
    assert torch.equal(out["first"].latents, want)  # the refused call left the run untouched
    # and the pipeline is free again afterwards
    assert torch.equal(pipe.generate([PROMPT], num_frames=9, seed=1).latents, want)


def test_threads_with_their_own_pipelines_on_one_manager_equal_sequential_runs():
    """Four threads, four pipelines (two policies, two none) on one manager, released together:
    every output equals the same pipeline's sequential run."""
    hooks = make_hooks()
    specs = [RandomStep(seed=1), None, RandomStep(seed=2), None]
    pipes = []
    for spec in specs:
        p = Pipeline("analytic", adapter_kwargs=KW, hooks=hooks)
        pipes.append(p.use(spec) if spec is not None else p)
    want = [p.generate([PROMPT], num_frames=12, seed=5).latents for p in pipes]
    barrier = threading.Barrier(len(pipes))
    out: dict[str, Any] = {}

    def job(p: Pipeline):
        barrier.wait(TIMEOUT)
        return [p.generate([PROMPT], num_frames=12, seed=5).latents for _ in range(3)]

    threads = [_run(lambda p=p: job(p), out, str(i)) for i, p in enumerate(pipes)]
    for t in threads:
        t.join(60)
    for i, w in enumerate(want):
        got = out[str(i)]
        assert not isinstance(got, BaseException), got
        assert all(torch.equal(g, w) for g in got)


def test_pipelines_adding_policies_from_many_threads_get_distinct_plugin_names():
    """Eight pipelines on one manager add a policy of the same name at once: each is registered
    under a name of its own (choosing a free name and registering are one step)."""
    import sys

    hooks = make_hooks()
    pipes = [Pipeline("analytic", adapter_kwargs=KW, hooks=hooks) for _ in range(8)]
    barrier = threading.Barrier(len(pipes))
    out: dict[str, Any] = {}

    def job(p: Pipeline):
        barrier.wait(TIMEOUT)
        for _ in range(20):
            p.use(RandomStep(seed=0))
        return p

    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible
    try:
        threads = [_run(lambda p=p: job(p), out, str(i)) for i, p in enumerate(pipes)]
        for t in threads:
            t.join(60)
    finally:
        sys.setswitchinterval(old)
    for i in range(len(pipes)):
        assert not isinstance(out[str(i)], BaseException), out[str(i)]
    plugins = [sp.plugin for p in pipes for sp in p.stack]
    assert len(plugins) == len(set(plugins)) == 8 * 20
    assert all(len(p.policies) == 20 for p in pipes)
