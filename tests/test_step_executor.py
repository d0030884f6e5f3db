"""The step executor (DESIGN.md section 11) on the analytic adapter.

- The engine (the executor with one row per micro-step) gives, bit for bit, what the engine before
  the executor gave: ``fixtures/engine_before_executor.pt``, recorded once by
  ``fixtures/make_engine_fixture.py`` on the commit before the executor.
- The stream batch on the executor (an analytic adapter with ``denoise_rows``): every input frame
  is processed and emitted once, in order; no batch runs frames that have not arrived; the target's
  KV holds exactly the emitted chunks, in order, with and without a drafter (SDVG).
- Bad configurations are refused before any model call.

The world adapters' stream batch is tested in ``policies/tests/test_stream_stack.py``.
"""

from __future__ import annotations

import importlib.util
import math
import threading
import time
from pathlib import Path
from typing import Any, Sequence

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from accelframe.errors import IncompatibleError
from accelframe.pipeline import Pipeline
from accelframe.streaming import StreamLoop, StreamSource, VirtualClock
from accelframe.streaming.source import FrameMap
from accelframe.testing import AnalyticAdapter
from accelframe.testing.fixtures import make_hooks
from accelframe.testing.invariants import CommitRecorder, check_stream_run
from accelframe.testing.policies import AcceptUnits
from accelframe.types import Iteration, KVWrite
from accelframe_policies import plugin as policies_plugin

FIXTURES = Path(__file__).with_name("fixtures")
SETTINGS = settings(max_examples=15, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
INF = math.inf
TINY = {"channels": 4, "height": 4, "width": 4}


def _generator() -> Any:
    """The fixture's generator module (it names the cases and their pipelines)."""
    spec = importlib.util.spec_from_file_location("make_engine_fixture", FIXTURES / "make_engine_fixture.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


GEN = _generator()
RECORDED = torch.load(FIXTURES / "engine_before_executor.pt")


# ---- 1. the engine, bit for bit with the engine before the executor -----------------------------


def test_the_fixture_records_every_case_and_stays_small():
    assert sorted(RECORDED) == sorted(name for name, _ in GEN.cases())
    assert (FIXTURES / "engine_before_executor.pt").stat().st_size < 300_000
    # the step policies changed the latents in every plan: the comparison below sees them act
    for plan in GEN.PLANS:
        for pol in ("scope", "teacache", "taylorseer"):
            assert not torch.equal(RECORDED[f"{plan}/{pol}"]["latents"], RECORDED[f"{plan}/none"]["latents"])
    assert RECORDED["drafter/sdvg-tau0"]["sources"] == ["target", "target", "draft"]


@pytest.mark.parametrize("name", sorted(RECORDED))
def test_the_engine_equals_the_engine_before_the_executor(name):
    """Latents, decoded frames and emitted sources of every case equal the old engine's, bit for
    bit: plans block / staircase / window with no policy, SCOPE, TeaCache, TaylorSeer, and a
    drafter under SDVG (tau = 0, one draft accepted, one regenerated)."""
    pipe = dict(GEN.cases())[name]
    res = pipe.generate(list(GEN.PROMPTS), num_frames=GEN.FRAMES, seed=GEN.SEED)
    want = RECORDED[name]
    assert list(res.sources) == want["sources"]
    assert res.latents.dtype == want["latents"].dtype and torch.equal(res.latents, want["latents"])
    assert torch.equal(res.frames, want["frames"])


# ---- an analytic adapter for the stream batch -----------------------------------------------------


class RowAnalytic(AnalyticAdapter):
    """The analytic adapter with ``denoise_rows``: each row is its own ``denoise`` (no K/V write)
    on its own state, so the stream batch can run on the analytic field."""

    def denoise_rows(self, xs: torch.Tensor, sigmas: Sequence[float], starts: Sequence[int],
                     states: Sequence[Any]) -> torch.Tensor:
        f = xs.shape[1]
        out = []
        for r, (sigma, a, state) in enumerate(zip(sigmas, starts, states)):
            it = Iteration(index=0, unit=a // self.unit_frames, step=0, frames=(a, a + f),
                           sigma=(sigma,) * f, sigma_next=(0.0,) * f, update=(True,) * f)
            out.append(self.denoise(xs[r:r + 1], it, (a, a + f), state, KVWrite.NONE))
        return torch.cat(out)  # [R, F, C, H, W]


def _sources(n: int, fps: float, seed: int, frames: int = 12) -> list[StreamSource]:
    return [StreamSource(id=f"s{i}", prompt=("a red circle", "a blue square")[i % 2], num_frames=frames,
                         fps=fps, seed=seed + i) for i in range(n)]


def check_kv_holds_the_emitted_frames(loop: StreamLoop, run: Any) -> None:
    """The analytic target's KV holds exactly the emitted chunks, from frame 0 up to its last
    commit (the commits a stream still held when it ended are skipped): its latents decode to the
    emitted pixels."""
    fmap = FrameMap.of(loop.adapter)
    for s in run.sources:
        total = fmap.latents_total(s.num_frames)
        kv = loop.target_state(s.id).kv
        n = len(kv)
        assert sorted(kv) == list(range(n)) and 0 <= n <= total
        assert n == total or run.stats.calls["target"]["commit_skipped"] > 0
        if n == 0:  # every commit of the stream was skipped
            continue
        latents = torch.stack([kv[j] for j in range(n)], dim=1)  # [1, F, C, H, W]
        fresh = loop.adapter.init_state(None, loop.adapter.encode_prompt([s.prompt]))
        p = min(fmap.pixels(n), s.num_frames)
        pixels = loop.adapter.decode(latents, fresh)[0, :p]
        assert torch.allclose(pixels, run.outputs[s.id].frames[:p], atol=1e-5)


def mean_scorer(frames: torch.Tensor, prompts: Any) -> torch.Tensor:
    return frames.float().mean(dim=(2, 3, 4))  # [B, P, 3, H, W] -> [B, P]


@SETTINGS
@given(seed=st.integers(0, 50), fps=st.sampled_from([8.0, 50.0, 400.0]), streams=st.integers(1, 2),
       drafter=st.booleans(), tau=st.sampled_from([-INF, -0.1, 0.0, INF]), steps=st.integers(1, 4),
       step=st.sampled_from([None, "scope", "teacache", "taylorseer"]))
def test_the_stream_batch_emits_every_frame_once_in_order_and_commits_what_it_emits(
        seed, fps, streams, drafter, tau, steps, step):
    """Invariants 7 and 4 on the analytic stream batch (chunks of two streams in flight at
    staggered steps, with and without an SDVG drafter and a step policy)."""
    commits = CommitRecorder()
    pipe = Pipeline(RowAnalytic(steps=steps, **TINY),
                    drafter=RowAnalytic(steps=2, **TINY) if drafter else None,
                    hooks=make_hooks(policies_plugin, commits))
    pipe.use("fixed-batch", max_streams=streams)
    if drafter:
        pipe.use("sdvg", tau=tau, scorer=mean_scorer)
    if step is not None:
        pipe.use(step)
    srcs = _sources(streams, fps, seed)
    loop = StreamLoop(pipe, srcs, clock=VirtualClock(batch_cost_s=0.01), stream_batch=True)
    run = loop.run()
    check_stream_run(loop, run, commits)
    check_kv_holds_the_emitted_frames(loop, run)
    assert not run.trace.of("fallback")
    if not drafter:
        assert max(b["rows"] for b in run.batches) <= steps * streams
    else:
        blocks = run.trace.of("block")
        assert len(blocks) == streams * 4 and all(e["unit"] != 0 or e["verdict"] == "regenerate"
                                                  for e in blocks)
        if tau == INF:
            assert {e["source"] for e in run.trace.of("emit")} == {"target"}


class RowAnalyticAtOnce(RowAnalytic):
    """A commit that reads its decode's pixels: the stream batch commits its accepted drafts at once
    (the reference for the held commits)."""

    commit_reads_pixels = True


@SETTINGS
@given(seed=st.integers(0, 50), fps=st.sampled_from([8.0, 400.0]), streams=st.integers(1, 2),
       accept=st.sets(st.integers(0, 3)), steps=st.integers(1, 4))
def test_held_commits_in_the_stream_batch_give_the_frames_of_committing_at_once(
        seed, fps, streams, accept, steps):
    """The stream batch holds an accepted draft's commit until the target's KV is read (its next
    rows, its own next commit, the loop): every stream's frames are those of committing at once,
    and the commits a stream holds when it ends are skipped, counted."""
    runs = {}
    for name, cls in (("held", RowAnalytic), ("at once", RowAnalyticAtOnce)):
        pipe = Pipeline(cls(steps=steps, **TINY), drafter=RowAnalytic(steps=2, **TINY),
                        hooks=make_hooks(policies_plugin))
        pipe.use("fixed-batch", max_streams=streams).use(AcceptUnits(accept=frozenset(accept)))
        srcs = _sources(streams, fps, seed)
        runs[name] = StreamLoop(pipe, srcs, clock=VirtualClock(batch_cost_s=0.01), stream_batch=True).run()
    held, ref = runs["held"], runs["at once"]
    for s in srcs:
        assert torch.equal(held.outputs[s.id].frames, ref.outputs[s.id].frames)
    calls, ref_calls = held.stats.calls["target"], ref.stats.calls["target"]
    assert ref_calls["commit_skipped"] == 0 and ref_calls["commit"] == len(ref.trace.of("emit"))
    assert calls["commit"] + calls["commit_skipped"] == ref_calls["commit"]
    assert calls["computed"] == ref_calls["computed"]
    # 4 units a stream: the commits before the last regenerated unit run; its own and the rest
    # are skipped (no target rows come after it)
    last = max((u for u in range(4) if u not in accept), default=0)
    assert calls["commit_skipped"] == streams * (4 - last)


class RowAnalyticCounting(RowAnalytic):
    """Counts the units it decodes (the stream batch decodes on the denoising thread)."""

    decodes = 0

    def decode(self, latents, state):
        self.decodes += 1
        return super().decode(latents, state)


@SETTINGS
@given(seed=st.integers(0, 50), streams=st.integers(1, 2), accept=st.sets(st.integers(0, 3)))
def test_an_early_verdict_in_the_stream_batch_gives_the_frames_of_the_same_verdict_after_the_decode(
        seed, streams, accept):
    """The stream batch asks ``accelframe_block_early_verdict`` before a draft's decode: the same
    routing given there gives every stream's frames, and no rejected draft is decoded."""
    runs = {}
    for early in (False, True):
        target = RowAnalyticCounting(steps=3, **TINY)
        pipe = Pipeline(target, drafter=RowAnalytic(steps=2, **TINY), hooks=make_hooks(policies_plugin))
        pipe.use("fixed-batch", max_streams=streams).use(AcceptUnits(accept=frozenset(accept), early=early))
        srcs = _sources(streams, 400.0, seed)
        run = StreamLoop(pipe, srcs, clock=VirtualClock(batch_cost_s=0.01), stream_batch=True).run()
        runs[early] = (run, target.decodes)
    (late, late_decodes), (res, decodes) = runs[False], runs[True]
    for s in srcs:
        assert torch.equal(res.outputs[s.id].frames, late.outputs[s.id].frames)
    rejected = streams * (4 - len(accept))
    assert late_decodes == 4 * streams + rejected and decodes == 4 * streams
    assert res.stats.blocks["decodes_wasted"] == 0 and late.stats.blocks["decodes_wasted"] == rejected
    assert (late.stats.blocks["early_verdicts"], res.stats.blocks["early_verdicts"]) == (0, 4 * streams)


class RowAnalyticThreads(RowAnalytic):
    """Records the threads that decode, and decodes slowly enough for the next micro-steps to run
    beside a decode on the worker."""

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.threads = []

    def decode(self, latents, state):
        self.threads.append(threading.current_thread().name)
        time.sleep(0.001)
        return super().decode(latents, state)


@SETTINGS
@given(seed=st.integers(0, 50), streams=st.integers(1, 2), drafter=st.booleans(),
       accept=st.sets(st.integers(0, 3)), steps=st.integers(1, 3))
def test_a_stream_batch_with_a_decode_worker_equals_the_one_without(seed, streams, drafter, accept, steps):
    """``Pipeline(decode_worker=True)`` with ``stream_batch=True``: the target's chunks are decoded on
    the worker thread (a draft is still decoded and judged on the loop's thread, after them); every
    stream's frames, the emitted chunks, the verdicts and the counts equal the run without it."""
    runs = {}
    for worker in (False, True):
        target = RowAnalyticThreads(steps=steps, **TINY)
        pipe = Pipeline(target, drafter=RowAnalytic(steps=2, **TINY) if drafter else None,
                        hooks=make_hooks(policies_plugin), decode_worker=worker)
        pipe.use("fixed-batch", max_streams=streams)
        if drafter:
            pipe.use(AcceptUnits(accept=frozenset(accept)))
        srcs = _sources(streams, 400.0, seed)
        runs[worker] = (StreamLoop(pipe, srcs, clock=VirtualClock(batch_cost_s=0.01), stream_batch=True).run(),
                        target.threads)
    (plain, plain_threads), (run, threads) = runs[False], runs[True]
    for s in srcs:
        assert torch.equal(run.outputs[s.id].frames, plain.outputs[s.id].frames)
    for event in ("emit", "block", "commit"):
        assert ([(e.get("unit"), e.get("frames"), e.get("verdict")) for e in run.trace.of(event)]
                == [(e.get("unit"), e.get("frames"), e.get("verdict")) for e in plain.trace.of(event)])
    assert run.stats.calls == plain.stats.calls and run.stats.blocks == plain.stats.blocks
    assert not any(name.startswith("accelframe-decode") for name in plain_threads)
    on_worker = sum(name.startswith("accelframe-decode") for name in threads)
    # the target's chunks on the worker: every chunk without a drafter, the regenerated ones with it
    regenerated = streams * (4 - len(accept)) if drafter else 4 * streams
    assert on_worker == regenerated and len(threads) == len(plain_threads)


def test_a_failing_decode_on_the_stream_batchs_worker_is_raised_by_the_run():
    class Broken(RowAnalytic):
        def decode(self, latents, state):
            raise RuntimeError("decoder down")

    pipe = Pipeline(Broken(steps=2, **TINY), hooks=make_hooks(policies_plugin), decode_worker=True)
    pipe.use("fixed-batch", max_streams=1)
    with pytest.raises(RuntimeError, match="decoder down"):
        StreamLoop(pipe, _sources(1, 400.0, 0), clock=VirtualClock(), stream_batch=True).run()


# ---- 5. bad input, refused before any model call ------------------------------------------------


def _refused(pipe: Pipeline, commits: CommitRecorder, match: str) -> None:
    with pytest.raises(IncompatibleError, match=match):
        pipe.stream(_sources(1, 50.0, 0), clock=VirtualClock(), stream_batch=True)
    assert commits.calls == 0


def test_an_adapter_without_denoise_rows_is_refused_by_the_stream_batch():
    commits = CommitRecorder()
    _refused(Pipeline(AnalyticAdapter(**TINY), hooks=make_hooks(commits)), commits, "denoise_rows")
    commits = CommitRecorder()
    _refused(Pipeline(RowAnalytic(**TINY), drafter=AnalyticAdapter(**TINY), hooks=make_hooks(commits)),
             commits, "drafter .* has no denoise_rows")


def test_a_drafter_reading_the_emitted_context_is_refused_by_the_stream_batch():
    """The stream batch drafts ahead of the verdicts: ``drafter_context="emitted"`` cannot hold."""
    commits = CommitRecorder()
    pipe = Pipeline(RowAnalytic(**TINY), drafter=RowAnalytic(steps=2, **TINY), drafter_context="emitted",
                    hooks=make_hooks(policies_plugin, commits))
    pipe.use("sdvg", tau=0.0, scorer=mean_scorer)
    _refused(pipe, commits, "drafter_context='emitted'")
    # sequential streaming takes it
    run = pipe.stream(_sources(1, 50.0, 0), clock=VirtualClock())
    assert run.outputs["s0"].frames.shape[0] == 12 and commits.calls > 0


def test_the_stream_invariant_check_fails_on_a_run_that_breaks_them():
    """``check_stream_run`` is not vacuous: a run missing a commit, or missing an emitted frame, fails."""
    commits = CommitRecorder()
    pipe = Pipeline(RowAnalytic(steps=2, **TINY), hooks=make_hooks(policies_plugin, commits))
    loop = StreamLoop(pipe, _sources(1, 50.0, 0), clock=VirtualClock(), stream_batch=True)
    run = loop.run()
    check_stream_run(loop, run, commits)
    commit = next(e for e in run.trace.raw if isinstance(e, dict) and e["event"] == "commit")
    at = run.trace.raw.index(commit)
    run.trace.raw.remove(commit)
    with pytest.raises(AssertionError, match="the target committed"):
        check_stream_run(loop, run, commits)
    run.trace.raw.insert(at, commit)
    check_stream_run(loop, run, commits)
    run.outputs["s0"].chunks.pop()
    with pytest.raises(AssertionError, match="stream 's0' emitted"):
        check_stream_run(loop, run, commits)


def test_step_events_of_a_stream_batch_name_their_stream():
    """Rows of two streams at the same unit and step are told apart by their generation."""
    pipe = Pipeline(RowAnalytic(steps=2, **TINY), hooks=make_hooks(policies_plugin))
    pipe.use("fixed-batch", max_streams=2)
    loop = StreamLoop(pipe, _sources(2, 50.0, 0), clock=VirtualClock(), stream_batch=True)
    run = loop.run()
    gens = {loop._state[s.id].generation for s in run.sources}
    steps = run.trace.of("step")
    assert len(gens) == 2 and {e["generation"] for e in steps} == gens
    for g in gens:  # per stream: every (unit, step) once
        keys = [(e["unit"], e["step"]) for e in steps if e["generation"] == g]
        assert len(keys) == len(set(keys)) == 4 * 2


def test_a_read_only_row_of_a_batch_of_videos_is_refused():
    """``denoise_rows`` takes one block per row: a read-only row holding two videos cannot go in."""
    from accelframe.executor import Executor, Row
    from accelframe.trace import Stats, Trace
    from accelframe.types import ModelRole, Request

    ad = RowAnalytic(steps=2, **TINY)
    ex = Executor(make_hooks(), trace=Trace(), stats=Stats())
    req = Request(prompts=("a", "b"), num_frames=3, seed=0)
    state = ad.init_state(req, ad.encode_prompt(list(req.prompts)))
    slot = ex.slot(ModelRole.TARGET, "analytic", ad, state, torch.zeros(2, 3, *ad.latent_shape), 0, 0)
    it = next(iter(ad.plan(req)))
    with pytest.raises(IncompatibleError, match="batch of 2"):
        ex.micro_step([Row(slot, it, req, read_only=True)])
