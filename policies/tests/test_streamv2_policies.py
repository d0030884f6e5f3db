"""StreamDiffusionV2's policies by hand: motion-aware noise, rolling KV with sinks, SLO batching."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

from accelframe.errors import ConfigError
from accelframe.types import BatchContext, KVContext, NoiseContext, StreamStatus
from accelframe_policies.motion_noise import MotionNoise, frame_motion
from accelframe_policies.rolling_kv import RollingKV, similarity
from accelframe_policies.slo_batch import LatencyModel, SLOBatch, UnsustainableLoadWarning

# ------------------------------------------------------------------------------------------------
# motion-aware noise
# ------------------------------------------------------------------------------------------------


def _ctx(frames, previous=None, latents=None, stream="s"):
    return NoiseContext(stream=stream, unit=0, frames=frames, default_sigma=0.7, previous=previous,
                        latents=latents)


def test_frame_motion_is_the_rms_difference():
    a = torch.zeros(3, 2, 2)
    b = torch.full((3, 2, 2), 0.3)
    c = b.clone()
    c[0, 0, 0] = 1.5  # one value of 12 moves by 1.2 more
    d = frame_motion(torch.stack([a, b, c]))
    assert d[0] == pytest.approx(0.3)
    assert d[1] == pytest.approx(math.sqrt(1.2**2 / 12))


def test_motion_noise_by_hand_and_its_defaults():
    p = MotionNoise()
    assert (p.s_min, p.s_max, p.scale, p.ema, p.space) == (0.7, 0.8, 0.2, 0.9, "pixel")
    still = torch.full((4, 3, 2, 2), 0.5)
    assert p.accelframe_noise_level(_ctx(still)) == pytest.approx(0.8)  # no motion: s_max
    # pixels step by 0.05 per frame: 0.1 in [-1, 1] space, d̂ = 0.1 / 0.2 = 0.5
    moving = torch.stack([torch.full((3, 2, 2), 0.05 * k) for k in range(4)])
    target = 0.8 - 0.1 * 0.5
    s1 = p.accelframe_noise_level(_ctx(moving, previous=torch.zeros(3, 2, 2)))
    # the previous frame (0.0) to the first (0.0) adds a zero difference; the max is still 0.1
    assert s1 == pytest.approx(0.9 * target + 0.1 * 0.8)
    fast = torch.stack([torch.full((3, 2, 2), 0.2 * (k % 2)) for k in range(4)])  # 0.4 steps: d̂ = 1
    s2 = p.accelframe_noise_level(_ctx(fast))
    assert s2 == pytest.approx(0.9 * 0.7 + 0.1 * s1)
    log = p.history("s")
    assert [round(e["d_hat"], 6) for e in log] == [0.0, 0.5, 1.0]
    p.reset()
    assert p.history("s") == []


def test_motion_noise_keeps_one_state_per_stream_and_a_window_across_chunks():
    p = MotionNoise(window=2, ema=1.0)
    jump = torch.stack([torch.zeros(3, 2, 2), torch.full((3, 2, 2), 0.1)])  # d = 0.2 in [-1, 1]: d̂ = 1
    flat = torch.zeros(2, 3, 2, 2)
    # a stream's first chunk is at the initial level s_max (the reference's); its difference enters the window
    assert p.accelframe_noise_level(_ctx(jump)) == pytest.approx(0.8)
    assert p.accelframe_noise_level(_ctx(flat, stream="other")) == pytest.approx(0.8)  # its own state
    # the window of the last 2 differences still holds the jump's... after one more flat chunk
    # with the previous frame (0.1 -> 0): differences 0.2 (prev -> first) and 0: d̂ = 1 again
    assert p.accelframe_noise_level(_ctx(flat, previous=torch.full((3, 2, 2), 0.1))) == pytest.approx(0.7)
    assert p.accelframe_noise_level(_ctx(flat, previous=torch.zeros(3, 2, 2))) == pytest.approx(0.8)


def test_motion_noise_in_latent_space():
    p = MotionNoise(space="latent", ema=1.0, scale=1.0)
    lat = torch.stack([torch.zeros(4, 2, 2), torch.full((4, 2, 2), 0.5)])  # d = 0.5
    first = torch.zeros(1, 4, 2, 2)  # the first chunk is at s_max; its last latent frame is the next's previous
    assert p.accelframe_noise_level(_ctx(torch.zeros(5, 3, 2, 2), latents=first)) == pytest.approx(0.8)
    assert p.accelframe_noise_level(_ctx(torch.zeros(5, 3, 2, 2), latents=lat)) == pytest.approx(0.8 - 0.1 * 0.5)
    with pytest.raises(ConfigError, match="space"):
        p.accelframe_noise_level(_ctx(torch.zeros(5, 3, 2, 2)))


@pytest.mark.parametrize("kw, field", [({"s_min": 0.9}, "s_min"), ({"s_max": 1.5}, "s_max"),
                                       ({"scale": 0.0}, "scale"), ({"ema": 0.0}, "ema"),
                                       ({"window": 0}, "window"), ({"space": "flow"}, "space")])
def test_motion_noise_bad_knobs(kw, field):
    with pytest.raises(ConfigError, match=field):
        MotionNoise(**kw)


# ------------------------------------------------------------------------------------------------
# rolling KV with sinks
# ------------------------------------------------------------------------------------------------


def _emb(vectors):
    return {f: torch.tensor(v, dtype=torch.float64).view(1, -1) for f, v in vectors.items()}


def test_rolling_kv_sinks_window_and_eviction_by_hand():
    p = RollingKV(window=6, sinks=3, tau=-1.0, t_reset=None)
    ctx = KVContext(stream="s", unit=3, cached_frames=tuple(range(9)), sinks=(), window=None, next_frame=9)
    act = p.accelframe_kv_manage(ctx)
    assert act.sinks == (0, 1, 2)  # the first frames ever cached
    assert act.evict == (3, 4, 5)  # sinks + the 3 most recent stay
    assert not act.rope_reset


def test_rolling_kv_refreshes_dissimilar_sinks_with_the_newest_frames():
    p = RollingKV(window=5, sinks=2, tau=0.5, t_reset=None)
    first = KVContext(stream="s", unit=1, cached_frames=(0, 1, 2), sinks=(), window=None, next_frame=3,
                      embeddings=_emb({0: [1, 0], 1: [1, 0], 2: [1, 0]}))
    act = p.accelframe_kv_manage(first)
    assert act.sinks == (0, 1) and act.evict == ()
    # the newest chunk (frames 3..5) points along [0, 1]: cos with sink 0 = 0 < 0.5, sink 1 (cos 0.8) stays
    emb = _emb({0: [1, 0], 1: [0.6, 0.8], 2: [1, 0], 3: [0, 1], 4: [0, 1], 5: [0, 1]})
    nxt = KVContext(stream="s", unit=2, cached_frames=(0, 1, 2, 3, 4, 5), sinks=(0, 1), window=None,
                    next_frame=6, embeddings=emb)
    act = p.accelframe_kv_manage(nxt)
    assert act.sinks == (1, 5)  # sink 0 replaced by the most recent frame
    assert 0 in act.evict
    kept = [f for f in nxt.cached_frames if f not in act.evict]
    assert len(kept) <= 5 and set(act.sinks) <= set(kept)
    assert kept == [1, 2, 3, 4, 5]  # sinks 1 and 5 and the 3 most recent others: the window of 5
    alphas = {a["sink"]: a["alpha"] for a in p.log[-1]["alphas"]}
    assert alphas[0] == pytest.approx(0.0) and alphas[1] == pytest.approx(0.8)


def test_rolling_kv_rope_reset_at_t_reset():
    p = RollingKV(window=4, sinks=1, tau=-1.0, t_reset=9)
    ctx = KVContext(stream="s", unit=2, cached_frames=(0, 1, 2, 3, 4, 5), sinks=(0,), window=None,
                    next_frame=6, rope_offset=0)
    assert not p.accelframe_kv_manage(ctx).rope_reset
    ctx = KVContext(stream="s", unit=3, cached_frames=(0, 3, 4, 5, 6, 7, 8), sinks=(0,), window=None,
                    next_frame=9, rope_offset=0)
    assert p.accelframe_kv_manage(ctx).rope_reset
    ctx = KVContext(stream="s", unit=4, cached_frames=(0, 7, 8, 9, 10, 11), sinks=(0,), window=None,
                    next_frame=12, rope_offset=5)  # position 7 after an earlier reset
    assert not p.accelframe_kv_manage(ctx).rope_reset


def test_similarity_averages_parts():
    a = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    b = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    assert similarity(a, b) == pytest.approx(0.5)


@pytest.mark.parametrize("kw, field", [({"window": 3, "sinks": 3}, "sinks"), ({"tau": 2.0}, "tau"),
                                       ({"t_reset": 0}, "t_reset"), ({"window": 0}, "window")])
def test_rolling_kv_bad_knobs(kw, field):
    with pytest.raises(ConfigError, match=field):
        RollingKV(**kw)


# ------------------------------------------------------------------------------------------------
# SLO-aware batching
# ------------------------------------------------------------------------------------------------


def test_latency_model_recovers_a_line_and_forgets():
    m = LatencyModel(forget=1.0)
    for x in (3, 6, 9, 12):
        m.observe(x, 0.2 + 0.05 * x)
    a, b = m.coefficients()
    assert a == pytest.approx(0.2) and b == pytest.approx(0.05)
    assert m(3, 2) == pytest.approx(0.2 + 0.05 * 6)
    one = LatencyModel()
    one.observe(6, 0.6)
    assert one.coefficients() == pytest.approx((0.0, 0.1))  # through the origin until two sizes


def _status(stream, received, consumed=0, total=None, fps=4.0, oldest=0.0, deadline=None):
    return StreamStatus(stream=stream, received=received, consumed=consumed, emitted=consumed, total=total, fps=fps,
                        oldest_pending_s=oldest if received > consumed else None, next_deadline_s=deadline)


def test_slo_batch_picks_the_smallest_sustainable_chunk():
    p = SLOBatch(max_chunk_units=4, headroom=1.0)
    for x in (3, 6, 12):
        p.model.observe(x, 0.3 + 0.05 * x)  # L = 0.3 + 0.05 x
    # 2 streams of 4 frames/s: rate 8. T = 3: 6 / 0.6 = 10 >= 8 sustainable
    ctx = BatchContext(now_s=1.0, streams=(_status("a", 6), _status("b", 3)), unit_frames=3, last_latency_s=None)
    assert p.chunk_choice(ctx) == (3, True)
    plan = p.accelframe_batch_plan(ctx)
    assert [(e.stream, e.frames) for e in plan.entries] == [("a", 3), ("b", 3)]
    # 2 streams of 6 frames/s (rate 12): T = 3 gives 10, T = 6 gives 12 / 0.9 = 13.3: T* = 6
    busier = BatchContext(now_s=1.0, streams=(_status("a", 12, fps=6.0), _status("b", 5, fps=6.0)),
                          unit_frames=3, last_latency_s=None)
    assert p.chunk_choice(busier) == (6, True)
    plan = p.accelframe_batch_plan(busier)  # b has only 5 pending: never more than has arrived
    assert [(e.stream, e.frames) for e in plan.entries] == [("a", 6)]


def test_slo_batch_says_when_the_load_cannot_be_met_and_serves_the_longest_chunks():
    p = SLOBatch(max_chunk_units=2)
    for x in (3, 6):
        p.model.observe(x, 1.0 + 0.1 * x)  # throughput at most 12 / 2.2 = 5.5 frames/s
    ctx = BatchContext(now_s=5.0, streams=(_status("a", 30, fps=16.0),), unit_frames=3, last_latency_s=None)
    with pytest.warns(UnsustainableLoadWarning, match="no chunk"):
        plan = p.accelframe_batch_plan(ctx)
    assert [(e.stream, e.frames) for e in plan.entries] == [("a", 6)]
    assert "unsustainable" in plan.reason and p.log[-1]["sustainable"] is False
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        p.accelframe_batch_plan(ctx)  # warned once per run


def test_slo_batch_waits_for_a_chunk_unless_a_deadline_would_be_missed():
    p = SLOBatch(max_chunk_units=4, headroom=1.0)
    for x in (3, 12):
        p.model.observe(x, 0.2 + 0.1 * x)
    # a slow stream of 2 frames/s: T* = 3 (3 / 0.5 = 6 frames/s)
    ctx = BatchContext(now_s=1.0, streams=(_status("a", 2, fps=2.0, deadline=10.0),), unit_frames=3,
                       last_latency_s=None)
    assert p.accelframe_batch_plan(ctx).entries == ()  # 2 < 3 pending: wait
    ctx = BatchContext(now_s=9.6, streams=(_status("a", 2, fps=2.0, deadline=10.0),), unit_frames=3,
                       last_latency_s=None)  # waiting would miss the deadline, but no whole unit is there
    assert p.accelframe_batch_plan(ctx).entries == () and p.log[-1]["urgent"]
    ctx = BatchContext(now_s=9.6, streams=(_status("a", 4, fps=2.0, deadline=10.0),), unit_frames=3,
                       last_latency_s=None)
    assert [e.frames for e in p.accelframe_batch_plan(ctx).entries] == [3]  # T* = 3 is there anyway
    ctx = BatchContext(now_s=1.0, streams=(_status("a", 2, fps=2.0, total=2),), unit_frames=3, last_latency_s=None)
    assert [(e.frames) for e in p.accelframe_batch_plan(ctx).entries] == [2]  # the source ended: run the rest


@pytest.mark.parametrize("kw, field", [({"max_chunk_units": 0}, "max_chunk_units"), ({"max_streams": 0}, "max_streams"),
                                       ({"headroom": 0.5}, "headroom"), ({"forget": 0.0}, "forget")])
def test_slo_batch_bad_knobs(kw, field):
    with pytest.raises(ConfigError, match=field):
        SLOBatch(**kw)
