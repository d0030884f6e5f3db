"""Live loops: streams that join, are fed and end while the stream loop runs (a server's sessions),
on the analytic adapter. A live stream's frames equal the same stream run alone; admission refuses
with a reason and the loop runs on."""

from __future__ import annotations

import threading

import pytest
import torch

from accelframe import hookimpl
from accelframe.errors import ConfigError, IncompatibleError
from accelframe.pipeline import Pipeline
from accelframe.streaming.live import BacklogError, LiveSource
from accelframe.streaming.loop import AdmissionRefused, StreamLoop
from accelframe.streaming.source import RealClock, StreamSource, VirtualClock
from accelframe.testing.fixtures import make_hooks
from accelframe.types import BatchContext, StreamStatus
from accelframe_policies.slo_batch import SLOBatch
from tests.test_step_executor import TINY, RowAnalytic


def pipe(**kw) -> Pipeline:
    base = {"plan": "block", "unit_frames": 2, "steps": 2, "height": 4, "width": 4}
    return Pipeline("analytic", hooks=make_hooks(), adapter_kwargs={**base, **kw})


def frames(n: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, 4, 4, generator=torch.Generator().manual_seed(seed))  # [n, 3, 4, 4]


def alone(p: Pipeline, stream_batch: bool = False, **src) -> torch.Tensor:
    """The frames of one stream run by itself in a loop with fixed sources."""
    run = p.stream([StreamSource(**src)], clock=VirtualClock(batch_cost_s=0.01), stream_batch=stream_batch)
    return run.outputs[src["id"]].frames


class Live:
    """A live loop on a virtual clock, driven from its own callbacks: ``at[k]`` runs after batch k."""

    def __init__(self, p: Pipeline, first: list, at: dict, **kw) -> None:
        self.got: dict[str, list[torch.Tensor]] = {}
        self.ended: dict[str, dict] = {}
        self.at, self.batches = at, 0
        self.loop = StreamLoop(p, first, live=True, clock=VirtualClock(batch_cost_s=0.01),
                               on_frames=lambda s, f: self.got.setdefault(s, []).append(f),
                               on_batch=self._batch, on_end=self._end, **kw)

    def _batch(self, record):
        self.batches += 1
        for fn in self.at.pop(self.batches, []):
            fn(self.loop)

    def _end(self, stream, summary):
        self.ended[stream] = summary

    def frames(self, stream):
        return torch.cat(self.got[stream])


@pytest.mark.parametrize("stream_batch", [False, True])
def test_a_stream_that_joins_mid_run_draws_what_it_draws_alone(stream_batch):
    """Also in the stream batch, where the newcomer's rows share forwards with the running stream's."""
    p = Pipeline(RowAnalytic(steps=2, **TINY), hooks=make_hooks()) if stream_batch else pipe()
    a = LiveSource("a", "a red circle", seed=1, max_frames=12, fps=8.0)
    b = LiveSource("b", "a blue square", seed=2, max_frames=8, fps=8.0)
    futures = []
    live = Live(p, [a], {2: [lambda loop: futures.append(loop.add(b))]}, stream_batch=stream_batch)
    live.loop.on_end = lambda s, summary: (live.ended.__setitem__(s, summary),
                                           len(live.ended) == 2 and live.loop.stop())
    run = live.loop.run()
    assert futures[0].result() == "b"
    assert set(live.ended) == {"a", "b"} and set(run.ended) == {"a", "b"}
    assert live.ended["a"]["frames"] == 12 and live.ended["b"]["frames"] == 8
    q = Pipeline(RowAnalytic(steps=2, **TINY), hooks=make_hooks()) if stream_batch else pipe()
    ref_a = alone(q, stream_batch, id="a", prompt="a red circle", seed=1, num_frames=12, fps=8.0)
    ref_b = alone(q, stream_batch, id="b", prompt="a blue square", seed=2, num_frames=8, fps=8.0)
    torch.testing.assert_close(live.frames("a"), ref_a, rtol=0, atol=0)
    torch.testing.assert_close(live.frames("b"), ref_b, rtol=0, atol=0)
    events = [e["event"] for e in run.trace.events if e["event"] in ("admit", "retire")]
    assert events == ["admit", "retire", "retire"]  # b admitted mid-run; both leave


def test_end_emits_what_arrived_then_the_stream_leaves():
    p = pipe()
    a = LiveSource("a", "a red circle", seed=3, fps=10.0)
    live = Live(p, [a], {3: [lambda loop: a.end()]})
    live.loop.on_end = lambda s, summary: (live.ended.__setitem__(s, summary), live.loop.stop())
    live.loop.run()
    n = live.ended["a"]["frames"]
    assert n == a.delivered and live.ended["a"]["ended"] == "complete"
    assert n >= 3 and live.frames("a").shape[0] == n  # the padded tail of a last unit never leaves
    torch.testing.assert_close(live.frames("a"), alone(pipe(), id="a", prompt="a red circle", seed=3,
                                                       num_frames=n, fps=10.0), rtol=0, atol=0)


def test_video_to_video_frames_pushed_as_the_loop_runs():
    clip = frames(9, seed=4)
    p = pipe()
    a = LiveSource("a", "a red circle", seed=1, max_frames=60)
    v = LiveSource("v", "a blue square", seed=5, size=(4, 4), fps=8.0)
    at = {1: [lambda loop: loop.add(v)]}
    for k in range(4):  # admitted before plan 2: pairs of frames pushed after batches 2..5
        at[2 + k] = [lambda loop, k=k: v.push(clip[2 * k:2 * k + 2])]
    at[6] = [lambda loop: (v.push(clip[8]), v.end())]
    live = Live(p, [a], at)
    live.loop.on_end = lambda s, summary: (live.ended.__setitem__(s, summary),
                                           a.end() if s == "v" else live.loop.stop())
    live.loop.run()
    assert live.ended["v"]["frames"] == 9
    ref = alone(pipe(), id="v", prompt="a blue square", seed=5, frames=clip, fps=8.0)
    torch.testing.assert_close(live.frames("v"), ref, rtol=0, atol=0)
    assert v.frames.pending <= 1  # consumed frames are not held


def test_backlog_and_misuse_are_refused():
    v = LiveSource("v", "x", size=(4, 4), max_pending=3)
    with pytest.raises(ConfigError, match="admitted"):
        v.push(frames(1))  # not admitted yet
    v.begin(0.0, lambda: 0.0, lambda: None)
    v.push(frames(3))
    with pytest.raises(BacklogError, match="max_pending"):
        v.push(frames(1))
    with pytest.raises(ConfigError, match=r"\[F, 3, 4, 4\]"):
        v.push(torch.rand(1, 3, 5, 4))
    t = LiveSource("t", "x")
    t.begin(0.0, lambda: 0.0, lambda: None)
    with pytest.raises(ConfigError, match="size"):
        t.push(frames(1))
    with pytest.raises(ConfigError, match="prompt"):
        t.set_prompt("  ")
    with pytest.raises(ConfigError, match="fps"):
        LiveSource("t", "x", fps=0)
    with pytest.raises(ConfigError, match="live"):
        StreamLoop(pipe(), [StreamSource(id="s", prompt="x", num_frames=2)]).add(t)
    with pytest.raises(ConfigError, match="sources"):
        StreamLoop(pipe(), [])
    with pytest.raises(IncompatibleError, match="ranks"):
        StreamLoop(pipe(), [], live=True, ranks=2, lanes=2, stream_batch=True)


class RefuseSecond:
    name = "refuse-second"

    @hookimpl
    def accelframe_batch_admit(self, ctx, fps):  # fewer arguments than the spec: allowed
        return "one stream at a time" if ctx.streams else None


def test_admission_refuses_with_the_policys_reason_and_the_loop_runs_on():
    p = pipe().use(RefuseSecond())
    a = LiveSource("a", "a red circle", seed=1, max_frames=8)
    dup = LiveSource("a", "again", seed=1)
    b = LiveSource("b", "a blue square", seed=2)
    futures = []
    live = Live(p, [a], {1: [lambda loop: futures.extend([loop.add(b), loop.add(dup)])]})
    live.loop.on_end = lambda s, summary: live.loop.stop()
    live.loop.run()
    with pytest.raises(AdmissionRefused, match="one stream at a time") as err:
        futures[0].result()
    assert err.value.by == "refuse-second" and err.value.stream == "b"
    with pytest.raises(AdmissionRefused, match="of that id"):
        futures[1].result()
    assert torch.cat(live.got["a"]).shape[0] == 8
    with pytest.raises(AdmissionRefused, match="stopping"):
        live.loop.add(LiveSource("c", "x")).result()


def test_slo_batch_admits_while_the_model_serves_the_load_within_the_deadlines():
    policy = SLOBatch(max_chunk_units=2, headroom=1.0)

    def ctx(deadline=None):
        status = StreamStatus(stream="a", received=0, consumed=0, emitted=0, total=None, fps=4.0,
                              oldest_pending_s=None, next_deadline_s=None, deadline_s=deadline)
        return BatchContext(now_s=0.0, streams=(status,), unit_frames=1, last_latency_s=None)
    assert policy.accelframe_batch_admit(ctx(), 4.0, None) is None  # nothing measured yet
    for x in (1, 2):  # L = 0.1 + 0.05 x: B streams of T frames serve B T / (0.1 + 0.05 B T) frames/s
        policy.model.observe(x, 0.1 + 0.05 * x)
    # two streams: chunks of 1 serve 2 / 0.2 = 10 frames/s >= 4 + 4; a first frame waits 1 / 4 + 0.2 s
    assert policy.accelframe_batch_admit(ctx(), 4.0, None) is None
    assert policy.accelframe_batch_admit(ctx(1.0), 4.0, 1.0) is None
    late = policy.accelframe_batch_admit(ctx(1.0), 4.0, 0.4)
    assert late is not None and "0.25 s for the rest and 0.20 s" in late
    assert "0.4 s deadline of the new stream" in late
    assert "of stream 'a'" in policy.accelframe_batch_admit(ctx(0.4), 4.0, None)
    assert policy.accelframe_batch_admit(ctx(0.5), 4.0, None) is None  # 0.45 s within 0.5 s
    careful = SLOBatch(max_chunk_units=2, headroom=1.25)  # the same margin on the wait: 1.25 * 0.45 s
    careful.model = policy.model
    assert "headroom 1.25" in careful.accelframe_batch_admit(ctx(0.5), 4.0, None)
    reason = policy.accelframe_batch_admit(ctx(), 12.0, None)  # 16 frames/s > 13.3 with chunks of 2
    assert reason is not None and "16.0 frames/s" in reason and "13.3" in reason


def test_a_real_clock_loop_in_a_thread_takes_streams_from_another():
    p = pipe()
    loop = StreamLoop(p, [], live=True, clock=RealClock(), keep_frames=False)
    got: dict[str, int] = {}
    ended = threading.Event()
    loop.on_frames = lambda s, f: got.__setitem__(s, got.get(s, 0) + f.shape[0])
    loop.on_end = lambda s, summary: ended.set()
    result: list = []
    worker = threading.Thread(target=lambda: result.append(loop.run()))
    worker.start()
    try:
        src = LiveSource("a", "a red circle", fps=50.0)
        assert loop.add(src).result(timeout=10) == "a"
        deadline = threading.Event()
        for _ in range(100):
            if got.get("a", 0) >= 6:
                break
            deadline.wait(0.05)
        src.end()
        assert ended.wait(10)
    finally:
        loop.stop()
        worker.join(10)
    assert not worker.is_alive()
    assert result[0].ended == {"a": "complete"} and got["a"] == loop.retired["a"]["frames"] >= 6


def test_text_slots_burst_pause_and_resume():
    t = [0.0]
    src = LiveSource("a", "x", fps=10.0, burst=5, max_frames=100)
    src.begin(1.0, lambda: t[0], lambda: None)
    assert src.received(0.99) == 0 and src.received(1.0) == 6  # frames 0..5 at once
    assert src.arrival_s(3) == 1.0 and src.arrival_s(6) == pytest.approx(1.1)
    t[0] = 1.25
    assert src.received(t[0]) == 8
    src.pause()
    assert src.paused and src.next_arrival_s(2.0) is None and src.received(5.0) == 8
    t[0] = 3.0
    src.resume()
    assert src.received(3.0) == 9 and src.arrival_s(8) == 3.0 and src.arrival_s(7) == pytest.approx(1.2)
    assert src.next_arrival_s(3.0) == pytest.approx(3.1)
    t[0] = 3.35
    src.end()
    assert src.delivered == 12 and src.received(9.0) == 12 and src.end_known_s() == 3.35


@pytest.mark.parametrize("stream_batch", [False, True])
def test_each_stream_has_its_own_decisions_and_they_add_up(stream_batch):
    """Per stream: step calls computed / cached / predicted and block verdicts, in the sequential
    loop and in the stream batch (where rows of both streams share forwards and one Stats)."""
    from accelframe.testing.policies import RandomStep, ThresholdBlock

    if stream_batch:
        p = Pipeline(RowAnalytic(steps=3, **TINY), drafter=RowAnalytic(steps=2, **TINY), hooks=make_hooks())
    else:
        base = {"plan": "block", "unit_frames": 2, "height": 4, "width": 4}
        p = Pipeline("analytic", drafter="analytic", hooks=make_hooks(), adapter_kwargs={**base, "steps": 3},
                     drafter_kwargs={**base, "steps": 2})
    p.use(RandomStep(seed=1, p_interval=0.0)).use(ThresholdBlock(tau=0.45))
    a = LiveSource("a", "a red circle", seed=1, max_frames=12)
    b = LiveSource("b", "a blue square", seed=2, max_frames=8)
    live = Live(p, [a, b], {}, stream_batch=stream_batch)
    seen = {}
    live.loop.on_end = lambda s, summary: (seen.__setitem__(s, summary["decisions"]),
                                           len(seen) == 2 and live.loop.stop())
    run = live.loop.run()
    total = run.stats.to_dict()
    for role in ("target", "drafter"):
        for k in ("computed", "cached", "predicted"):
            both = seen["a"]["calls"][role][k] + seen["b"]["calls"][role][k]
            assert both == total["calls"][role][k], (role, k)
    for k in ("accepted", "regenerated"):
        assert seen["a"]["blocks"][k] + seen["b"]["blocks"][k] == total["blocks"][k]
    assert all(seen[s]["calls"]["target"]["computed"] > 0 for s in "ab")
    assert sum(seen[s]["calls"]["target"][k] for s in "ab" for k in ("cached", "predicted")) > 0
    verdicts = {k: seen[k]["blocks"]["accepted"] + seen[k]["blocks"]["regenerated"] for k in "ab"}
    assert verdicts["a"] > 0 and verdicts["b"] > 0
    if not stream_batch:  # one unit per chunk, one verdict per unit: 12 and 8 frames of 2-frame units
        assert verdicts == {"a": 6, "b": 4}


def test_a_stream_sets_its_own_live_knobs_and_the_others_keep_theirs():
    from accelframe_policies import plugin as policies_plugin
    from tests.test_step_executor import mean_scorer

    base = {"plan": "block", "unit_frames": 2, "height": 4, "width": 4}
    p = Pipeline("analytic", drafter="analytic", hooks=make_hooks(policies_plugin),
                 adapter_kwargs={**base, "steps": 3}, drafter_kwargs={**base, "steps": 2})
    p.use("sdvg", tau=float("-inf"), scorer=mean_scorer)  # every draft passes, but block 0
    a = LiveSource("a", "a red circle", seed=1, max_frames=12)
    b = LiveSource("b", "a blue square", seed=2, max_frames=12)
    live = Live(p, [a, b], {1: [lambda loop: loop.set_knobs("a", "sdvg", tau="inf")]})
    seen = {}
    live.loop.on_end = lambda s, summary: (seen.__setitem__(s, summary["decisions"]["blocks"]),
                                           len(seen) == 2 and live.loop.stop())
    live.loop.run()
    assert seen["a"]["accepted"] == 0 and seen["b"]["accepted"] == 5  # a's drafts all regenerated after batch 1
    policy = p.stack[0].policy
    assert policy.tau == float("-inf") and policy.knob(99, "tau") == float("-inf")
    loop = StreamLoop(p, [], live=True)
    with pytest.raises(ConfigError, match="a stream in the loop"):
        loop.set_knobs("nobody", "sdvg", tau=0.0)
    with pytest.raises(ConfigError, match="live knobs: tau"):
        policy.set_stream_knobs(1, aggregation="mean")
    with pytest.raises(ConfigError, match="a number"):
        policy.set_stream_knobs(1, tau="high")
    assert policy.set_stream_knobs(1, tau=-1) == {"tau": -1.0} and policy.knob(1, "tau") == -1.0
    policy.clear_stream_knobs(1)
    assert policy.knob(1, "tau") == float("-inf")


def test_scope_checks_its_live_knobs_together():
    from accelframe_policies.scope import Scope

    s = Scope()
    assert s.set_stream_knobs(3, tau_c=0.3) == {"tau_c": 0.3} and s.knob(3, "tau_c") == 0.3
    with pytest.raises(ConfigError, match="tau_p = 0.2"):
        s.set_stream_knobs(3, tau_p=0.2)  # below the stream's tau_c: refused, nothing set
    assert s.knob(3, "tau_p") == 0.42 and s.knob(4, "tau_c") == 0.18
