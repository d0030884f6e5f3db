"""The streaming runtime: invariant 7 and the rolling-window invariant 4 (property-based, on the
analytic adapter), the pixel-to-latent frame map, faults (stalled, ended and corrupt sources,
unsustainable load), sinks and metrics."""

from __future__ import annotations

import warnings

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from accelframe.errors import ConfigError, IncompatibleError, PolicyFallbackWarning
from accelframe.pipeline import Pipeline
from accelframe.plugins import EXACT, hookimpl
from accelframe.streaming.sinks import CallbackSink, Mp4Sink
from accelframe.streaming.source import (
    CorruptFrameError,
    CorruptFrameWarning,
    FrameMap,
    LoopedFrames,
    StreamSource,
    VirtualClock,
)
from accelframe.testing.fixtures import make_hooks
from accelframe_policies.rolling_kv import RollingKV
from accelframe_policies.slo_batch import SLOBatch, UnsustainableLoadWarning

SETTINGS = settings(max_examples=25, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def pipe(**kw) -> Pipeline:
    base = {"plan": "block", "unit_frames": 2, "steps": 2, "height": 4, "width": 4}
    return Pipeline("analytic", hooks=make_hooks(), adapter_kwargs={**base, **kw})


def frames(n: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, 4, 4, generator=torch.Generator().manual_seed(seed))  # [n, 3, 4, 4] in [0, 1]


class Recorder:
    """A sink that keeps what it was given."""

    def __init__(self) -> None:
        self.got: dict[str, list[torch.Tensor]] = {}
        self.closed = False

    def write(self, stream, fr):
        self.got.setdefault(stream, []).append(fr)

    def close(self):
        self.closed = True


# ------------------------------------------------------------------------------------------------
# invariants
# ------------------------------------------------------------------------------------------------


@SETTINGS
@given(n_streams=st.integers(1, 3), lengths=st.lists(st.integers(1, 13), min_size=3, max_size=3),
       fps=st.lists(st.sampled_from([2.0, 5.0, 20.0]), min_size=3, max_size=3),
       starts=st.lists(st.sampled_from([0.0, 0.4]), min_size=3, max_size=3),
       chunk=st.integers(1, 3), max_streams=st.integers(1, 3), cost=st.sampled_from([0.0, 0.3]),
       video=st.booleans(), rolling=st.booleans())
def test_inv7_every_frame_once_in_order_and_no_batch_beyond_arrivals(n_streams, lengths, fps, starts, chunk,
                                                                     max_streams, cost, video, rolling):
    """Inv 7 and 4: every delivered input frame is emitted exactly once and in order (padding of a
    last partial unit never is); no batch plans more frames than have arrived; with rolling-kv the
    cache never holds more than its window before a chunk and keeps its sinks."""
    p = pipe().use(SLOBatch(max_chunk_units=chunk, max_streams=max_streams))
    if rolling:
        p.use(RollingKV(window=4, sinks=1, tau=-1.0, t_reset=6))
    sources = [StreamSource(id=f"s{i}", prompt=f"prompt {i}", fps=fps[i], start_s=starts[i], seed=i,
                            frames=frames(lengths[i], i) if video else None,
                            num_frames=None if video else lengths[i]) for i in range(n_streams)]
    rec = Recorder()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnsustainableLoadWarning)
        run = p.stream(sources, clock=VirtualClock(batch_cost_s=cost), sinks=[rec])
    assert rec.closed
    for s in sources:
        out = run.outputs[s.id]
        assert len(out.emit_s) == s.total == sum(f.shape[0] for f in rec.got[s.id])
        assert out.arrival_s == [s.arrival_s(k) for k in range(s.total)]  # in order, once each
        assert all(e >= a for e, a in zip(out.emit_s, out.arrival_s))
        assert out.emit_s == sorted(out.emit_s)
    fm = FrameMap(unit=2, ratio=1, first=1)
    consumed = {s.id: 0 for s in sources}
    for b in run.batches:  # every planned entry had arrived when planned
        for stream, n in b["entries"]:
            src = next(s for s in sources if s.id == stream)
            got = src.received(b["t_s"])
            consumed[stream] += n
            assert consumed[stream] <= (fm.latents_total(src.total) if got >= src.total else got)
    if rolling:
        log = p.stack[-1].policy.log
        assert log or all(s.total <= 2 for s in sources)
        for entry in log:
            assert len(entry["kept"]) <= 4
            assert set(entry["sinks"]) <= set(entry["kept"]) and len(entry["sinks"]) == 1


@SETTINGS
@given(window=st.integers(2, 6), sinks=st.integers(0, 5), unit=st.integers(1, 3), n=st.integers(1, 20),
       tau=st.sampled_from([-1.0, 0.5, 0.99]), t_reset=st.sampled_from([None, 4]))
def test_rolling_window_holds_at_every_chunk_on_the_analytic_adapter(window, sinks, unit, n, tau, t_reset):
    """Inv 4: whenever a chunk starts, the cache holds at most ``window`` frames with its sinks kept
    (once that many frames were cached); what a chunk leaves behind is at most the window plus
    that chunk. (The stream batch's rows are checked on the Wan DiT in test_streamv2_world.py.)"""
    sinks = min(sinks, window - 1)
    p = pipe(unit_frames=unit).use(RollingKV(window=window, sinks=sinks, tau=tau, t_reset=t_reset))
    seen = []

    class Watch:
        @staticmethod
        def write(stream, fr):
            seen.append(p.adapter.kv_frames(loop.target_state(stream)))

        @staticmethod
        def close():
            pass

    from accelframe.streaming import StreamLoop

    src = StreamSource(id="s", prompt="x", num_frames=n, fps=100.0)
    loop = StreamLoop(p, [src], clock=VirtualClock(), sinks=[Watch])
    run = loop.run()
    assert run.outputs["s"].frames.shape[0] == n
    log = next(q.policy for q in p.stack if q.name == "rolling-kv").log
    assert len(log) == (n + unit - 1) // unit - 1  # before every chunk but the first
    for r in log:
        assert len(r["kept"]) <= window and set(r["sinks"]) <= set(r["kept"])
        assert len(r["sinks"]) == min(sinks, r["next_frame"])
    for cached, kept_sinks, _ in seen[1:]:
        assert len(cached) <= window + unit and set(kept_sinks) <= set(cached)


# ------------------------------------------------------------------------------------------------
# the frame map
# ------------------------------------------------------------------------------------------------


def test_frame_map_of_a_causal_vae():
    fm = FrameMap(unit=3, ratio=4, first=1)
    assert [fm.pixels(n) for n in range(5)] == [0, 1, 5, 9, 13]
    assert fm.latents_total(9) == 3 and fm.latents_total(10) == 6 and fm.latents_total(105) == 27
    assert [fm.latents_complete(p) for p in (0, 1, 4, 5, 9)] == [0, 1, 1, 2, 3]


# ------------------------------------------------------------------------------------------------
# faults
# ------------------------------------------------------------------------------------------------


def test_a_stalled_source_ends_the_stream_cleanly_with_everything_that_arrived():
    arrivals = [0.1 * k for k in range(7)] + [50.0 + k for k in range(5)]  # silent for 44 s after frame 6
    src = StreamSource(id="cam", prompt="x", frames=frames(12), arrivals_s=arrivals, stall_timeout_s=2.0)
    assert src.delivered == 7 and src.stalled
    rec = Recorder()
    run = pipe().stream([src], clock=VirtualClock(), sinks=[rec])
    assert len(run.outputs["cam"].emit_s) == 7 and sum(f.shape[0] for f in rec.got["cam"]) == 7
    assert run.to_json()["streams"]["cam"]["ended"].startswith("stalled")
    assert run.outputs["cam"].emit_s[-1] < 50.0  # it did not wait for the frames after the stall


def test_an_ended_source_with_a_partial_unit_is_padded_and_the_padding_never_emitted():
    src = StreamSource(id="s", prompt="x", frames=frames(5))  # units of 2: 3 units, the last padded
    run = pipe().stream([src], clock=VirtualClock())
    assert run.outputs["s"].frames.shape[0] == 5
    assert run.to_json()["streams"]["s"]["ended"] == "complete"


def test_corrupt_frames_are_held_warned_and_counted_or_raise():
    fr = frames(6)
    fr[2, 0, 1, 1] = float("nan")
    fr[4] = 7.0  # out of [0, 1]
    src = StreamSource(id="s", prompt="x", frames=fr)
    with pytest.warns(CorruptFrameWarning, match="frame 2"):
        run = pipe().stream([src], clock=VirtualClock())
    assert run.corrupt == {"s": [2, 4]}
    assert run.to_json()["streams"]["s"]["corrupt_frames"] == 2
    assert run.outputs["s"].frames.shape[0] == 6 and torch.isfinite(run.outputs["s"].frames).all()
    clean = fr.clone()
    clean[2], clean[4] = fr[1], fr[3]  # what holding the last good frame means
    want = pipe().stream([StreamSource(id="s", prompt="x", frames=clean)], clock=VirtualClock())
    assert torch.equal(run.outputs["s"].frames, want.outputs["s"].frames)
    with pytest.raises(CorruptFrameError, match="frame 2"):
        pipe().stream([src], clock=VirtualClock(), on_corrupt="error")


def test_an_unsustainable_rate_is_reported_and_deadlines_counted():
    src = StreamSource(id="s", prompt="x", num_frames=40, fps=100.0, deadline_s=0.5)
    p = pipe().use(SLOBatch(max_chunk_units=2))
    with pytest.warns(UnsustainableLoadWarning, match="no chunk"):
        run = p.stream([src], clock=VirtualClock(batch_cost_s=0.4))
    m = run.to_json()["streams"]["s"]
    assert m["frames"] == 40 and m["deadline_miss_rate"] > 0.5
    assert any("unsustainable" in b["reason"] for b in run.batches)
    assert max(n for b in run.batches for _, n in b["entries"]) == 4  # degraded to the longest chunk


def test_metrics_by_hand_on_the_virtual_clock():
    src = StreamSource(id="s", prompt="x", num_frames=4, fps=2.0, deadline_s=1.0)  # arrivals 0, .5, 1, 1.5
    run = pipe().stream([src], clock=VirtualClock(batch_cost_s=0.25))
    m = run.to_json()["streams"]["s"]
    # batch of one unit: frames 0-1 run at 0.5 and leave at 0.75; frames 2-3 run at 1.5, leave at 1.75
    assert run.outputs["s"].emit_s == [0.75, 0.75, 1.75, 1.75]
    assert m["ttff_s"] == pytest.approx(0.75)
    lat = [0.75, 0.25, 0.75, 0.25]
    assert m["jitter_ms"] == pytest.approx(1000 * 0.25)
    assert m["fps"] == pytest.approx(4 / 1.75)
    assert m["deadline_miss_rate"] == 0.0 and m["max_latency_s"] == pytest.approx(max(lat))


# ------------------------------------------------------------------------------------------------
# bad input
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kw, field", [
    ({"frames": torch.zeros(3, 4, 4)}, "frames"), ({"arrivals_s": (0.0, 1.0)}, "arrivals_s"),
    ({"arrivals_s": (1.0, 0.5, 2.0)}, "arrivals_s"), ({"stall_timeout_s": 0.0}, "stall_timeout_s"),
    ({"deadline_s": -1.0}, "deadline_s"), ({"fps": 0.0}, "fps")])
def test_bad_sources(kw, field):
    base = {"id": "s", "prompt": "x", "frames": frames(3)}
    with pytest.raises(ConfigError, match=field):
        StreamSource(**{**base, **kw})


def test_bad_runtime_arguments():
    src = StreamSource(id="s", prompt="x", num_frames=4)
    with pytest.raises(ConfigError, match="on_corrupt"):
        pipe().stream([src], on_corrupt="skip")
    with pytest.raises(ConfigError, match="sinks"):
        pipe().stream([src], sinks=[object()])
    with pytest.raises(IncompatibleError, match="denoise_rows"):
        pipe().stream([src], stream_batch=True)
    with pytest.raises(ConfigError, match="frames"):
        pipe().stream([StreamSource(id="s", prompt="x", frames=torch.rand(4, 3, 8, 8))])


def test_looped_frames_and_sinks(tmp_path):
    clip = frames(3)
    loop = LoopedFrames(clip, 8)
    assert loop.shape[0] == 8 and torch.equal(loop[[3, 4, 7]], clip[[0, 1, 1]])
    with pytest.raises(ConfigError, match="total"):
        LoopedFrames(clip, 0)
    got = []
    run = pipe().stream([StreamSource(id="s", prompt="x", frames=loop)], clock=VirtualClock(),
                        sinks=[CallbackSink(lambda s, f: got.append(f.shape[0]))], keep_frames=False)
    assert sum(got) == 8 and run.outputs["s"].chunks == []
    sink = Mp4Sink(tmp_path / "{stream}.mp4", 8.0)
    pipe().stream([StreamSource(id="a", prompt="x", num_frames=4), StreamSource(id="b", prompt="y", num_frames=2)],
                  clock=VirtualClock(), sinks=[sink])
    assert sink.frames == {"a": 4, "b": 2} and (tmp_path / "a.mp4").stat().st_size > 0
    with pytest.raises(ConfigError, match="exist"):
        Mp4Sink(tmp_path / "{stream}.mp4", 8.0).check(["a"])
    with pytest.raises(ConfigError, match="pattern"):
        Mp4Sink(tmp_path / "one.mp4", 8.0).check(["a", "b"])


def positions_pipe(max_frames: int) -> Pipeline:
    """An analytic pipeline whose adapter addresses ``max_frames`` latent frame positions, as a Wan model."""
    import attrs

    p = pipe()
    p.adapter.limits = attrs.evolve(p.adapter.limits, max_frames=max_frames)
    return p


@pytest.mark.parametrize("policy", ["slo", "fixed"])
def test_batch_policies_cut_chunks_at_the_adapters_last_frame_position_before_a_rope_reset(policy):
    """A backlog (every frame arrived) on an adapter of 10 frame positions, with rolling-kv resetting
    RoPE once a chunk would start at position 8 or later: a chunk of 3 units (6 frames) starting at
    position 6 would cross position 10, so the batch policies cut it there (``StreamStatus.runnable``)
    instead of having their plans refused; plans are checked at the positions after the reset (the KV
    hook runs before the plan); every frame is emitted once, in order, and no batch falls back to the
    exact batch of one."""
    from accelframe_policies.fixed_batch import FixedBatch

    base = SLOBatch if policy == "slo" else FixedBatch
    seen: list = []

    class Seen(base):  # the policy, recording the streams it was shown
        @hookimpl
        def accelframe_batch_plan(self, ctx):
            seen.extend(ctx.streams)
            return super().accelframe_batch_plan(ctx)

    p = positions_pipe(10)
    p.use(Seen(max_chunk_units=3) if policy == "slo" else Seen(chunk_units=3))
    p.use(RollingKV(window=4, sinks=1, tau=-1.0, t_reset=8))
    src = StreamSource(id="s", prompt="a long stream", num_frames=40, fps=20.0, seed=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error", PolicyFallbackWarning)
        warnings.simplefilter("ignore", UnsustainableLoadWarning)
        run = p.stream([src], clock=VirtualClock(start=10.0, batch_cost_s=0.5))  # slo-batch: longest chunks
    out = run.outputs["s"]
    assert len(out.emit_s) == 40 and out.arrival_s == [src.arrival_s(k) for k in range(40)]
    assert not run.stats.fallbacks and all(b["by"] != EXACT for b in run.batches)
    sizes = [n for b in run.batches for _, n in b["entries"]]
    assert sum(sizes) == 40 and max(sizes) == 6 and any(n < 6 for n in sizes[:-1])  # cut, then full
    cut = [s for s in seen if s.runnable is not None]
    assert cut and all(0 < s.runnable < s.pending - s.pending % 2 and s.runnable % 2 == 0 for s in cut)
