"""Step and block policies in the stream batch on the step executor (DESIGN.md sections 8 and 11),
on the Wan family's self-forcing adapter: the tiny untrained configuration of
``test_streamv2_world.py`` (``SMALL``) for the properties, the trained world target and drafter
(``size="world"`` / ``"world-drafter"``) for SDVG's degenerate thresholds.

- SCOPE at exact settings (both thresholds 0) in the stream batch equals the stream batch alone,
  bit for bit (text- and video-to-video, one and two streams).
- SDVG with tau = +inf equals sequential generation; with tau = -inf the emitted chunks after
  chunk 0 are the drafter's, and the drafts judged are the drafter-only stream batch's latents.
- Every input frame is processed once and emitted once, in order; no batch runs frames not yet
  arrived; the target commits exactly the emitted chunks, in order; a rolling KV stays inside its
  window and keeps its sinks (with and without a drafter).
"""

from __future__ import annotations

import math
from typing import Any

import attrs
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from accelframe.errors import IncompatibleError
from accelframe.pipeline import Pipeline
from accelframe.plugins import hookimpl
from accelframe.streaming import StreamLoop, StreamSource, VirtualClock
from accelframe.streaming.source import FrameMap
from accelframe.testing.fixtures import make_hooks
from accelframe.testing.invariants import CommitRecorder, check_stream_run
from accelframe.testing.policies import AcceptUnits
from accelframe.types import BlockContext, BlockVerdict
from accelframe_adapters import plugin as adapters_plugin
from accelframe_policies import plugin as policies_plugin
from accelframe_policies.rolling_kv import RollingKV

SMALL = {"size": "tiny", "height": 32, "width": 32}  # 4x4 latents: 4 tokens per frame
WORLD = {"size": "world"}
DRAFTER = {"size": "world-drafter"}
SMALL_DRAFTER = {**SMALL, "denoising_step_list": (1000, 500)}
SETTINGS = settings(max_examples=15, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow])
INF = math.inf
PROMPTS = ("a red circle moves right on a blue background", "a green square moves up on a black background")


def _pipe(*plugins: Any, drafter: dict[str, Any] | None = None, **adapter: Any) -> Pipeline:
    return Pipeline("self-forcing", hooks=make_hooks(adapters_plugin, policies_plugin, *plugins),
                    adapter_kwargs=adapter or dict(SMALL),
                    drafter="self-forcing" if drafter is not None else None, drafter_kwargs=drafter)


def _sources(n: int, *, frames: int = 21, fps: float = 50.0, seed: int = 0, v2v: bool = False,
             side: int = 32) -> list[StreamSource]:
    """``n`` streams of ``frames`` pixel frames (21: 6 latent frames, two chunks of 3)."""
    out = []
    for i in range(n):
        pixels = None
        if v2v:
            g = torch.Generator().manual_seed(100 + seed + i)
            pixels = torch.rand(frames, 3, side, side, generator=g)  # [P, 3, H, W] in [0, 1]
        out.append(StreamSource(id=f"s{i}", prompt=PROMPTS[i % 2], num_frames=frames, frames=pixels, fps=fps,
                                seed=seed + i))
    return out


def _stream(pipe: Pipeline, srcs: list[StreamSource], **kw: Any) -> Any:
    kw.setdefault("clock", VirtualClock())
    kw.setdefault("stream_batch", True)
    return pipe.stream(srcs, **kw)


def mean_scorer(frames: torch.Tensor, prompts: Any) -> torch.Tensor:
    """A frame scorer for SDVG on any frame size: each pixel frame's mean, ``[B, F_pix]``."""
    return frames.float().mean(dim=(2, 3, 4))  # [B, P, 3, H, W] -> [B, P]


@attrs.define(eq=False)
class Drafts:
    """Records the draft latents every block verdict saw, by (generation, unit) (a block observer)."""

    latents: dict[tuple[int, int], torch.Tensor] = attrs.field(factory=dict)

    @hookimpl
    def accelframe_block_observe(self, ctx: BlockContext, verdict: BlockVerdict) -> None:
        self.latents[(ctx.generation, ctx.unit)] = ctx.draft_latents.detach().clone()  # [B, F, C, H, W]


# ---- SCOPE at exact settings --------------------------------------------------------------------


@pytest.mark.parametrize("v2v", [False, True], ids=["t2v", "v2v"])
@pytest.mark.parametrize("streams", [1, 2])
def test_scope_at_exact_settings_in_the_stream_batch_equals_the_stream_batch_alone(v2v, streams):
    """Invariant 1 on the executor's rows: SCOPE with tau_c = tau_p = 0 recomputes every row, so
    every chunk's frames are the plain stream batch's, bit for bit; its decisions are traced."""
    srcs = _sources(streams, frames=33, v2v=v2v, fps=200.0)  # 9 latent frames: 3 chunks
    runs, commits = {}, CommitRecorder()
    for scope in (False, True):
        pipe = _pipe(commits).use("fixed-batch", max_streams=streams)
        if scope:
            pipe.use("scope", tau_c=0.0, tau_p=0.0)
        runs[scope] = _stream(pipe, srcs, clock=VirtualClock(start=5.0))  # all arrived: chunks pile up
    assert commits.rows >= 2 * streams  # forwards over chunks of every stream at staggered steps
    steps = [e for e in runs[True].trace.of("step") if e["model"] == "target"]
    assert steps and {e["mode"] for e in steps} == {"recompute"} and {e["by"] for e in steps} == {"scope"}
    for s in srcs:
        assert torch.equal(runs[True].outputs[s.id].frames, runs[False].outputs[s.id].frames)
        assert runs[True].outputs[s.id].frames.shape[0] == s.num_frames


# ---- SDVG's degenerate thresholds ---------------------------------------------------------------


@pytest.mark.parametrize("streams", [1, 2])
def test_sdvg_at_plus_inf_in_the_stream_batch_equals_sequential_generation(streams):
    """tau = +inf regenerates every draft. The oldest chunk is judged only once every chunk before it
    is committed, so its target rows run with the full context: what sequential generation (target
    only, ``stream_batch=False``) gives; bit for bit with one stream (one target row at a time, and
    a batched forward of one row is the adapter's denoise), to float tolerance with two (the two
    streams' target rows share a forward). The plain stream batch differs: its chunks start against
    a context up to n - 1 chunks old."""
    srcs = _sources(streams, fps=200.0)
    drafts = Drafts()
    sdvg = _pipe(drafts, drafter=dict(DRAFTER), **WORLD).use("fixed-batch", max_streams=streams)
    run = _stream(sdvg.use("sdvg", tau=INF), srcs)
    seq = _stream(_pipe(**WORLD).use("fixed-batch", max_streams=streams), srcs, stream_batch=False)
    plain = _stream(_pipe(**WORLD).use("fixed-batch", max_streams=streams), srcs, drain_when_idle=False)
    assert [e["source"] for e in run.trace.of("emit")] == ["target"] * 2 * streams
    assert [e["verdict"] for e in run.trace.of("block")] == ["regenerate"] * 2 * streams
    assert sorted(unit for _, unit in drafts.latents) == [0] * streams + [1] * streams
    for s in srcs:
        got = run.outputs[s.id].frames
        if streams == 1:
            assert torch.equal(got, seq.outputs[s.id].frames)
        assert torch.allclose(got, seq.outputs[s.id].frames, atol=1e-4)
        assert (got - plain.outputs[s.id].frames).abs().max() > 1e-3


def _decoded_latents(pipe: Pipeline) -> dict[tuple[int, int], torch.Tensor]:
    """Wraps the pipeline's target ``decode``: the latents of every decoded chunk, by (id of the
    state decoded with, unit), the units counted in decoding order (a run without a drafter decodes
    each chunk once, in order, to emit it)."""
    ad, seen, count = pipe.adapter, {}, {}
    decode = ad.decode

    def recording(latents: torch.Tensor, state: Any) -> torch.Tensor:
        unit = count.get(id(state), 0)
        count[id(state)] = unit + 1
        seen[(id(state), unit)] = latents.detach().clone()  # [B, F, C, H, W]
        return decode(latents, state)
    ad.decode = recording
    return seen


@pytest.mark.parametrize("streams", [1, 2])
def test_sdvg_at_minus_inf_in_the_stream_batch_emits_the_drafters_chunks_after_chunk_zero(streams):
    """tau = -inf accepts every draft but chunk 0's. The drafter's context is its own drafts and its
    rows run in the same micro-steps and batches as in the drafter-only stream batch (every frame has
    arrived: the chunks enter alike), so every draft judged from chunk 1 on is the drafter-only
    stream batch's latents, bit for bit, and it is emitted."""
    srcs = _sources(streams, frames=29, side=64)  # 8 latent frames: 3 chunks (the last one padded)
    drafts = Drafts()
    sdvg = _pipe(drafts, drafter=dict(DRAFTER), **WORLD).use("fixed-batch", max_streams=streams)
    loop = StreamLoop(sdvg.use("sdvg", tau=-INF), srcs, clock=VirtualClock(start=5.0), stream_batch=True)
    run = loop.run()
    emits = [(e["unit"], e["source"]) for e in run.trace.of("emit")]
    assert sorted(emits) == sorted([(0, "target"), (1, "draft"), (2, "draft")] * streams)
    alone = _pipe(**DRAFTER).use("fixed-batch", max_streams=streams)
    decoded = _decoded_latents(alone)
    ref_loop = StreamLoop(alone, srcs, clock=VirtualClock(start=5.0), stream_batch=True)
    ref = ref_loop.run()
    for s in srcs:
        gen, state = loop._state[s.id].generation, ref_loop.target_state(s.id)
        for unit in (1, 2):
            assert torch.equal(drafts.latents[(gen, unit)], decoded[(id(state), unit)]), (s.id, unit)
        assert run.outputs[s.id].frames.shape[0] == ref.outputs[s.id].frames.shape[0] == 29


# ---- every frame once, in order; the target's KV; a rolling window -----------------------------


def check_chunks_of_one_unit(loop: StreamLoop, run: Any, commits: CommitRecorder) -> None:
    """Every stream's target commits each chunk of 3 latent frames once, in order."""
    fmap = FrameMap.of(loop.adapter)
    for s in run.sources:
        total = fmap.latents_total(s.num_frames)
        spans = commits.frames[(loop._state[s.id].generation, "target")]
        assert spans == [(a, a + 3) for a in range(0, total, 3)]


@SETTINGS
@given(seed=st.integers(0, 20), fps=st.sampled_from([16.0, 200.0]), streams=st.integers(1, 2),
       drafter=st.booleans(), tau=st.sampled_from([-INF, 0.6, INF]), rolling=st.booleans(),
       step=st.sampled_from([None, "scope", "teacache", "taylorseer", "first-block-cache", "flowcache"]))
def test_the_stream_batch_emits_every_frame_once_in_order_and_keeps_its_kv(
        seed, fps, streams, drafter, tau, rolling, step):
    """Invariants 7, 4 and 2 with chunks of one or two streams in flight, a step policy deciding
    row by row, with or without an SDVG drafter and a rolling KV: every frame out once and in order,
    the target's KV takes exactly the emitted chunks in order, the rolling window holds with its
    sinks, and every chunk's first step is computed."""
    commits = CommitRecorder()
    pipe = _pipe(commits, drafter=dict(SMALL_DRAFTER) if drafter else None)
    pipe.use("fixed-batch", max_streams=streams)
    if drafter:
        pipe.use("sdvg", tau=tau, scorer=mean_scorer)
    if rolling:
        pipe.use(RollingKV(window=4, sinks=2, tau=0.5, t_reset=6))
    if step is not None:
        pipe.use(step)
    srcs = _sources(streams, frames=33, fps=fps, seed=seed)  # 9 latent frames: 3 chunks
    kv_seen = []

    def on_batch(record: dict[str, Any]) -> None:
        for s in srcs:
            state = loop.target_state(s.id)
            if state is not None:
                kv_seen.append(pipe.adapter.kv_frames(state))
    loop = StreamLoop(pipe, srcs, clock=VirtualClock(batch_cost_s=0.01), stream_batch=True, on_batch=on_batch)
    run = loop.run()
    check_stream_run(loop, run, commits)
    check_chunks_of_one_unit(loop, run, commits)
    assert all(set(sinks) <= set(cached) for cached, sinks, _ in kv_seen)
    steps = run.trace.of("step")
    assert steps and all(e["mode"] == "recompute" for e in steps if e["step"] == 0)
    assert not run.trace.of("fallback")
    if rolling:
        log = next(p.policy for p in pipe.stack if p.name == "rolling-kv").log
        assert len(log) == 2 * streams  # before every chunk but the first (no cache yet)
        assert all(len(r["kept"]) <= 4 and set(r["sinks"]) <= set(r["kept"]) for r in log)
    if drafter:
        blocks = run.trace.of("block")
        assert len(blocks) == 3 * streams and all(e["verdict"] == "regenerate" for e in blocks if e["unit"] == 0)
        emitted = [e["source"] for e in run.trace.of("emit")]
        if tau == INF:
            assert set(emitted) == {"target"}
        if tau == -INF:
            assert emitted.count("target") == streams


@pytest.mark.parametrize("accept", [{1, 2, 4}, {1, 3, 4}, {2}], ids=str)
def test_held_commits_with_a_rolling_kv_give_the_frames_of_committing_at_once(accept):
    """The stream batch holds an accepted draft's commit into the target's KV; the rolling KV hook
    reads the cache before every chunk, so the held commits run before it: the window, its sinks
    and every frame are those of committing at once (an adapter that says its commit reads its
    decode's pixels commits at once)."""
    runs, logs = {}, {}
    for at_once in (False, True):
        pipe = _pipe(drafter=dict(SMALL_DRAFTER)).use("fixed-batch", max_streams=1)
        pipe.use(AcceptUnits(accept=frozenset(accept)))
        pipe.use(RollingKV(window=4, sinks=2, tau=0.5, t_reset=9))
        if at_once:
            pipe.adapter.commit_reads_pixels = True
        runs[at_once] = _stream(pipe, _sources(1, frames=57, fps=16.0))  # 15 latent frames: 5 chunks
        logs[at_once] = next(p.policy for p in pipe.stack if p.name == "rolling-kv").log
    held, ref = runs[False], runs[True]
    assert torch.equal(held.outputs["s0"].frames, ref.outputs["s0"].frames)
    assert logs[False] == logs[True] and len(logs[False]) == 4
    calls, ref_calls = held.stats.calls["target"], ref.stats.calls["target"]
    assert calls["commit"] + calls["commit_skipped"] == ref_calls["commit"] == 5
    # the last chunk's is left (an accepted draft's or the target's own): no KV hook reads it
    assert calls["commit_skipped"] == 1


# ---- refusals -----------------------------------------------------------------------------------


def test_a_drafter_reading_the_emitted_context_is_refused_before_any_model_call():
    commits = CommitRecorder()
    pipe = Pipeline("self-forcing", drafter="self-forcing", drafter_context="emitted",
                    hooks=make_hooks(adapters_plugin, policies_plugin, commits), adapter_kwargs=dict(SMALL),
                    drafter_kwargs=dict(SMALL_DRAFTER)).use("sdvg", tau=0.0, scorer=mean_scorer)
    with pytest.raises(IncompatibleError, match="drafter_context='emitted'"):
        _stream(pipe, _sources(1))
    assert commits.calls == 0 and not commits.frames
