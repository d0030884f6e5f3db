"""StreamDiffusionV2 on the Wan family: the stream batch's batched forward, video-to-video through
the causal VAE's streaming encoder, the rolling KV with RoPE reset past the world's trained length,
and SCOPE + SDVG + StreamDiffusionV2 stacked in one pipeline on the tiny world."""

from __future__ import annotations

import pytest
import torch

from accelframe.pipeline import Pipeline
from accelframe.streaming.source import StreamSource, VirtualClock
from accelframe.testing.fixtures import make_hooks
from accelframe.types import Iteration, KVWrite, Request
from accelframe_adapters import plugin as adapters_plugin
from accelframe_policies import plugin as policies_plugin
from accelframe_policies.rolling_kv import RollingKV

SMALL = {"size": "tiny", "height": 32, "width": 32}  # 4x4 latents: 4 tokens per frame


def _pipe(adapter="self-forcing", **kw) -> Pipeline:
    return Pipeline(adapter, hooks=make_hooks(adapters_plugin, policies_plugin), **kw)


def _it(sigma: float, a: int, b: int) -> Iteration:
    n = b - a
    return Iteration(index=0, unit=a // 3, step=0, frames=(a, b), sigma=(sigma,) * n, sigma_next=(0.0,) * n,
                     update=(True,) * n)


def test_denoise_rows_equals_one_forward_per_row_with_its_own_cache_and_position():
    """Rows of two streams (different prompts, context lengths and positions) in one forward give
    each row's own forward; one row is exactly the adapter's denoise."""
    ad = _pipe(adapter_kwargs=SMALL).adapter
    states, starts = [], []
    for prompt, units in (("a red circle", 2), ("a blue square", 1)):
        req = Request(prompts=(prompt,), num_frames=3 * units, seed=units)
        st = ad.init_state(req, ad.encode_prompt([prompt]))
        for u in range(units):  # commit random clean blocks as context
            x0 = torch.randn(1, 3, *ad.latent_shape, generator=torch.Generator().manual_seed(u))
            ad.commit(x0, (3 * u, 3 * u + 3), st)
        states.append(st)
        starts.append(3 * units)
    xs = torch.randn(2, 3, *ad.latent_shape, generator=torch.Generator().manual_seed(9))
    sigmas = [0.9375, 0.625]
    got = ad.denoise_rows(xs, sigmas, starts, states)
    for r in range(2):
        want = ad.denoise(xs[r:r + 1], _it(sigmas[r], starts[r], starts[r] + 3), (starts[r], starts[r] + 3),
                          states[r], KVWrite.NONE)
        assert torch.allclose(got[r:r + 1], want, atol=1e-5), (got[r:r + 1] - want).abs().max()
    one = ad.denoise_rows(xs[:1], sigmas[:1], starts[:1], states[:1])
    want = ad.denoise(xs[:1], _it(sigmas[0], starts[0], starts[0] + 3), (starts[0], starts[0] + 3), states[0],
                      KVWrite.NONE)
    assert torch.equal(one, want)


def test_stream_batch_with_one_step_equals_sequential_generation():
    """With a one-step schedule only one chunk is ever in flight: the stream batch is sequential
    generation, bit for bit."""
    kw = {**SMALL, "denoising_step_list": (1000,)}
    src = StreamSource(id="s", prompt="a red circle", num_frames=21, fps=50.0, seed=3)  # 6 latent frames
    seq = _pipe(adapter_kwargs=kw).stream([src], clock=VirtualClock())
    sb = _pipe(adapter_kwargs=kw).stream([src], clock=VirtualClock(), stream_batch=True)
    assert torch.equal(seq.outputs["s"].frames, sb.outputs["s"].frames)


def test_stream_batch_keeps_chunks_in_flight_and_emits_every_frame_in_order():
    """Four steps: up to four chunks in flight per stream, two streams in one forward; every frame
    out once, in order; each stream's frames are what that stream alone gives in stream batch."""
    kw = dict(SMALL)
    srcs = [StreamSource(id=f"s{i}", prompt=p, num_frames=33, fps=200.0, seed=i)  # 9 latent frames
            for i, p in enumerate(("a red circle", "a blue square"))]
    both = _pipe(adapter_kwargs=kw).use("fixed-batch", max_streams=2).stream(
        srcs, clock=VirtualClock(), stream_batch=True, drain_when_idle=False)
    assert max(b["rows"] for b in both.batches) >= 4
    for s in srcs:
        out = both.outputs[s.id]
        assert out.frames.shape[0] == 33 and out.arrival_s == [s.arrival_s(k) for k in range(33)]
        alone = _pipe(adapter_kwargs=kw).stream([s], clock=VirtualClock(), stream_batch=True,
                                                drain_when_idle=False)
        assert torch.allclose(out.frames, alone.outputs[s.id].frames, atol=1e-4)


def test_an_idle_stream_batch_drains_its_chunks_instead_of_waiting_for_arrivals():
    """At a light load, advancing the in-flight chunks while no frame is due cuts the latency from
    about n chunk intervals to the chunk's own steps; every frame still leaves once, in order."""
    src = StreamSource(id="s", prompt="a red circle", num_frames=33, fps=16.0, seed=0)
    runs = {drain: _pipe(adapter_kwargs=dict(SMALL)).stream(
        [src], clock=VirtualClock(batch_cost_s=0.01), stream_batch=True, drain_when_idle=drain)
        for drain in (False, True)}
    lat = {d: r.to_json()["streams"]["s"]["mean_latency_s"] for d, r in runs.items()}
    for r in runs.values():
        assert r.outputs["s"].frames.shape[0] == 33
        assert r.outputs["s"].arrival_s == [src.arrival_s(k) for k in range(33)]
    assert max(b["rows"] for b in runs[True].batches) <= 1 and lat[True] < lat[False] / 2


def test_world_video_to_video_stream_with_rolling_kv_runs_past_the_trained_length():
    """A looped world clip of 41 latent frames (> 27 trained) streams with rolling-kv resetting RoPE;
    the cache stays bounded; the motion-aware level follows the input."""
    from accelframe.streaming.source import LoopedFrames
    from accelframe_adapters.world import clips

    pipe = _pipe(adapter_kwargs={"size": "world", "denoising_step_list": (1000, 500)})
    pipe.use("rolling-kv", window=6, sinks=3, t_reset=18).use("motion-noise")
    scene = clips.parse_prompt("a red circle moves right on a blue background")
    clip = clips.render(scene, 1)
    n_pix = 1 + 4 * 44  # 45 latent frames: 15 units
    src = StreamSource(id="w", prompt=scene.prompt, frames=LoopedFrames(clip, n_pix), fps=16.0, seed=1)
    run = pipe.stream([src], clock=VirtualClock(batch_cost_s=0.1))
    assert run.outputs["w"].frames.shape[0] == n_pix
    kv = [e for e in run.trace.events if e["event"] == "kv"]
    assert any(e["rope_reset"] for e in kv)
    log = next(p.policy for p in pipe.stack if p.name == "rolling-kv").log
    assert all(len(r["kept"]) <= 6 and set(r["sinks"]) <= set(r["kept"]) for r in log)
    sigmas = [e["sigma"] for e in run.trace.events if e["event"] == "noise"]
    assert len(sigmas) == 15 and all(0.7 - 1e-9 <= s <= 0.8 + 1e-9 for s in sigmas)


@pytest.mark.parametrize("stream_batch", [False, True])
def test_scope_sdvg_and_streamdiffusionv2_stack_on_the_tiny_world(stream_batch):
    """DESIGN.md section 6: the stream level plans and manages KV, SDVG routes each block between the
    world drafter and the world target, SCOPE decides the target's calls; the invariants hold:
    every frame out once and in order, block 0 of the stream regenerated, every emitted block the
    drafter's or the target's, the target's cache bounded with its sinks. Sequentially and in the
    stream batch (where a chunk of two units is one block)."""
    pipe = Pipeline("self-forcing", drafter="self-forcing", hooks=make_hooks(adapters_plugin, policies_plugin),
                    adapter_kwargs={"size": "world"}, drafter_kwargs={"size": "world-drafter"})
    pipe.use("slo-batch", max_chunk_units=2).use(RollingKV(window=6, sinks=3, t_reset=18)).use("motion-noise")
    pipe.use("sdvg", tau=-0.7).use("scope", tau_c=0.2, tau_p=0.2)
    from accelframe_adapters.world import clips

    scene = clips.parse_prompt("a green square moves up on a black background")
    src = StreamSource(id="w", prompt=scene.prompt, frames=clips.render(scene, 2, frames=57), fps=16.0, seed=2)
    run = pipe.stream([src], clock=VirtualClock(batch_cost_s=0.05), stream_batch=stream_batch)
    out = run.outputs["w"]
    assert out.frames.shape[0] == 57 and out.arrival_s == [src.arrival_s(k) for k in range(57)]
    blocks = [e for e in run.trace.events if e["event"] == "block"]
    assert blocks and blocks[0]["unit"] == 0 and blocks[0]["verdict"] == "regenerate"
    assert {e["verdict"] for e in blocks} <= {"accept", "regenerate"}
    # 57 pixel frames: 15 latent frames, judged once each, in order
    assert [f for e in blocks for f in range(*e["frames"])] == list(range(15))
    emits = run.trace.of("emit")
    assert [f for e in emits for f in range(*e["frames"])] == list(range(15))
    assert [e["source"] for e in emits] == ["draft" if b["verdict"] == "accept" else "target" for b in blocks]
    # the target's KV: the emitted chunks, in order; the stream batch skips the commits it still
    # holds when the stream ends
    commits = [e for e in run.trace.of("commit") if e["model"] == "target"]
    assert [e["frames"] for e in commits] == [e["frames"] for e in emits][:len(commits)]
    assert len(emits) - len(commits) == run.stats.calls["target"]["commit_skipped"]
    steps = [e for e in run.trace.events if e["event"] == "step" and e["model"] == "target"]
    assert steps and {e["mode"] for e in steps} <= {"recompute", "cache", "predict"}
    log = next(p.policy for p in pipe.stack if p.name == "rolling-kv").log
    assert log and all(len(r["kept"]) <= 6 and set(r["sinks"]) <= set(r["kept"]) for r in log)


def test_a_chunk_of_two_units_in_the_stream_batch_is_one_block_denoised_once():
    """A chunk of several units runs its schedule once over all its frames (the stream batch once
    ran the schedule once per unit over the whole chunk, denoising it twice)."""
    src = StreamSource(id="s", prompt="a red circle", num_frames=45, fps=200.0, seed=0)  # 12 latent frames
    pipe = _pipe(adapter_kwargs=dict(SMALL)).use("fixed-batch", chunk_units=2)
    run = pipe.stream([src], clock=VirtualClock(), stream_batch=True)
    steps = len(pipe.adapter.schedule(1.0)) - 1
    calls = [e for e in run.trace.of("step") if e["model"] == "target"]
    assert run.stats.calls["target"]["computed"] == 2 * steps == len(calls)  # 2 chunks of 6 frames
    assert sorted((tuple(e["frames"]), e["step"]) for e in calls) == sorted(
        ((a, a + 6), k) for a in (0, 6) for k in range(steps))
    assert run.outputs["s"].frames.shape[0] == 45


def test_the_stream_batch_keeps_the_rolling_window_and_its_sinks():
    """Inv 4 with chunks in flight: every chunk starts with at most ``window`` frames cached, its
    stream's sinks among them, while rows of two streams share each forward."""
    pipe = _pipe(adapter_kwargs=dict(SMALL, num_frame_per_block=1)).use("fixed-batch", max_streams=2)
    pipe.use(RollingKV(window=4, sinks=2, tau=0.5, t_reset=6))
    srcs = [StreamSource(id=f"s{i}", prompt="a red circle", num_frames=1 + 4 * 9, fps=100.0, seed=i)
            for i in range(2)]
    run = pipe.stream(srcs, clock=VirtualClock(start=5.0), stream_batch=True)  # all arrived: rows pile up
    assert max(b["rows"] for b in run.batches) >= 4
    log = next(p.policy for p in pipe.stack if p.name == "rolling-kv").log
    assert len(log) == 2 * 9 and any(r["rope_reset"] for r in log)
    for r in log:
        cached = len(r["kept"]) + len(r["evict"])  # early chunks start before any chunk is committed
        assert len(r["kept"]) <= 4 and set(r["sinks"]) <= set(r["kept"]) and len(r["sinks"]) == min(2, cached)
    assert max(len(r["kept"]) for r in log) == 4
    assert all(run.outputs[s.id].frames.shape[0] == 37 for s in srcs)


def test_a_rope_reset_without_sinks_leaves_the_stream_unchanged():
    """With no sinks the rolling window holds consecutive frames, so a RoPE reset only shifts every
    position alike: the cached frames move to 0 .. n - 1 and the next frame follows them, and the
    stream equals the one that never resets (RoPE attends by distance). Left at their old positions,
    the cached frames would sit after the next frame (the stall measured in docs/streaming.md)."""
    frames = {}
    for t_reset in (None, 9):
        pipe = _pipe(adapter_kwargs=dict(SMALL)).use(RollingKV(window=6, sinks=0, tau=-1.0, t_reset=t_reset))
        src = StreamSource(id="s", prompt="a red circle", num_frames=1 + 4 * 17, fps=200.0, seed=0)
        run = pipe.stream([src], clock=VirtualClock())
        log = next(p.policy for p in pipe.stack if p.name == "rolling-kv").log
        assert any(r["rope_reset"] for r in log) == (t_reset is not None)
        frames[t_reset] = run.outputs["s"].frames
    assert frames[9].shape[0] == 69
    assert torch.allclose(frames[9], frames[None], atol=1e-4)
