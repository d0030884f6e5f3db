"""The analytic adapter: its closed form, its KV cache, its decoder, its three plan shapes and its
config validation."""

from __future__ import annotations

import math

import pytest
import torch

from accelframe.errors import ConfigError
from accelframe.pipeline import Pipeline
from accelframe.rng import unit_generator
from accelframe.testing import AnalyticAdapter, AnalyticConfig
from accelframe.types import Request, Role

PROMPTS = ["a red circle moves left", "a green triangle"]


def closed_form(adapter: AnalyticAdapter, prompts, num_frames: int, offset: int = 0):
    """mu_j = P cos(0.3 j) + D sin(0.3 j): ``[B, F, C, H, W]``."""
    base, direction = adapter.encode_prompt(prompts)
    j = torch.arange(num_frames, dtype=base.dtype).view(1, -1, 1, 1, 1) - offset
    return base.unsqueeze(1) * torch.cos(0.3 * j) + direction.unsqueeze(1) * torch.sin(0.3 * j)


def fresh_state(adapter: AnalyticAdapter, prompts=PROMPTS):
    return adapter.init_state(None, adapter.encode_prompt(prompts))


def run(af_hooks, num_frames=9, seed=0, prompts=PROMPTS, **kwargs):
    """(result, engine) of a plain generation with the analytic adapter."""
    pipe = Pipeline(AnalyticAdapter(**kwargs), hooks=af_hooks)
    engine = pipe.engine(generation=1)
    return engine.run(pipe.request(prompts, num_frames=num_frames, seed=seed)), engine


# ---- the closed form ----------------------------------------------------------------------------


@pytest.mark.parametrize("plan", ["block", "staircase", "window"])
@pytest.mark.parametrize("steps", [1, 4, 7])
def test_without_coupling_and_curvature_euler_lands_on_the_closed_form(af_hooks, plan, steps):
    if plan == "window" and steps % 2:
        steps += 1
    kw = dict(plan=plan, steps=steps, coupling=0.0, curvature=0.0, solver="euler")
    result, _ = run(af_hooks, num_frames=12, seed=5, **kw)
    expected = closed_form(AnalyticAdapter(**kw), PROMPTS, 12)
    assert torch.allclose(result.latents, expected.to(result.latents.dtype), atol=1e-5)


def test_coupling_and_curvature_move_the_result_off_the_closed_form(af_hooks):
    # with curvature the target bends: the result is no longer the closed form
    result, _ = run(af_hooks, coupling=0.0, curvature=0.5)
    expected = closed_form(AnalyticAdapter(), PROMPTS, 9).to(result.latents.dtype)
    assert not torch.allclose(result.latents, expected, atol=1e-3)
    # with coupling the context moves it
    result, _ = run(af_hooks, coupling=0.5, curvature=0.0)
    assert not torch.allclose(result.latents, expected, atol=1e-3)


def test_the_velocity_is_the_flow_towards_the_closed_form(af_hooks):
    adapter = AnalyticAdapter(coupling=0.0, curvature=0.0)
    req = Request(prompts=tuple(PROMPTS), num_frames=3)
    it = next(iter(adapter.plan(req)))
    state = fresh_state(adapter)
    mu = closed_form(adapter, PROMPTS, 3)
    x = torch.randn(2, 3, *adapter.latent_shape, generator=torch.Generator().manual_seed(1))
    x = x.to(mu.dtype)
    v = adapter.denoise(x, it, it.frames, state, it.kv_write)
    assert torch.allclose(v, (x - mu) / it.sigma[0], atol=1e-5)
    assert state.calls == 1


# ---- the KV cache -------------------------------------------------------------------------------


def test_the_kv_cache_holds_exactly_the_committed_clean_latents(af_hooks):
    result, engine = run(af_hooks, num_frames=12, seed=3)
    kv = engine.target_state.kv
    assert list(kv) == list(range(12))  # in order
    for j in range(12):
        assert torch.equal(kv[j], result.latents[:, j])
    assert result.stats.calls["target"]["commit"] == 4


def test_block_by_block_generation_with_kv_equals_one_generation(af_hooks):
    """Generating units one request at a time, carrying the KV and decode caches, gives the same
    bits as generating them all at once: the cache is the only context between units."""
    whole, _ = run(af_hooks, num_frames=9, seed=2)
    pipe = Pipeline(AnalyticAdapter(), hooks=af_hooks)
    state, latents, frames = None, [], []
    for first in (0, 3, 6):
        engine = pipe.engine(generation=first + 1)
        part = engine.run(pipe.request(PROMPTS, num_frames=3, seed=2, first_frame=first),
                          target_state=state)
        state = engine.target_state
        latents.append(part.latents)
        frames.append(part.frames)
    assert torch.equal(torch.cat(latents, dim=1), whole.latents)
    assert torch.equal(torch.cat(frames, dim=1), whole.frames)
    assert sorted(state.kv) == list(range(9))


def test_a_hand_written_block_loop_matches_the_engine(af_hooks):
    """A reference implementation of Self-Forcing's loop: draw the unit's noise, denoise, advance
    with Euler, commit; the engine must produce the same bits."""
    adapter = AnalyticAdapter(steps=3)
    req = Request(prompts=tuple(PROMPTS), num_frames=9, seed=11)
    state = fresh_state(adapter)
    out = torch.zeros(2, 9, *adapter.latent_shape, dtype=adapter.dtype)
    for it in adapter.plan(req):
        s, e = it.frames
        for span in it.starts:
            noise = torch.randn((2, span.end - span.start, *adapter.latent_shape),
                                generator=unit_generator(req.seed, span.unit))
            out[:, span.start:span.end] = noise.to(out.dtype)
        if it.role is Role.COMMIT:
            adapter.commit(out[:, s:e], it.frames, state)
            continue
        v = adapter.denoise(out[:, s:e], it, it.frames, state, it.kv_write)
        out[:, s:e] = adapter.advance(out[:, s:e], v, it, unit_generator(req.seed, it.unit), state)
    result, _ = run(af_hooks, num_frames=9, seed=11, steps=3)
    assert torch.allclose(result.latents, out, atol=1e-6)


def test_a_rolling_kv_window_keeps_its_sinks_and_the_newest_frames(af_hooks):
    result, engine = run(af_hooks, num_frames=12, kv_window=5, sink_frames=2)
    state = engine.target_state
    assert state.sinks == (0, 1)
    assert sorted(state.kv) == [0, 1, 9, 10, 11]
    for j in state.kv:
        assert torch.equal(state.kv[j], result.latents[:, j])
    adapter = AnalyticAdapter(kv_window=5, sink_frames=2)
    assert adapter.kv_frames(state) == ((0, 1, 9, 10, 11), (0, 1), 5)


def test_kv_apply_evicts_sets_sinks_and_resets_rope(af_hooks):
    _, engine = run(af_hooks, num_frames=6)
    adapter, state = AnalyticAdapter(), engine.target_state
    adapter.kv_apply(state, evict=(1, 2, 3), sinks=(0,), rope_reset=True)
    assert sorted(state.kv) == [0, 4, 5]
    assert state.sinks == (0,)
    assert state.rope_offset == 6


def test_a_kv_change_changes_the_velocity():
    adapter = AnalyticAdapter(coupling=0.5)
    req = Request(prompts=tuple(PROMPTS), num_frames=6)
    it = [i for i in adapter.plan(req) if i.unit == 1][0]
    x = torch.ones(2, 3, *adapter.latent_shape, dtype=adapter.dtype)
    state = fresh_state(adapter)
    empty = adapter.denoise(x, it, it.frames, state, it.kv_write)
    adapter.commit(torch.full_like(x, 2.0), (0, 3), state)
    full = adapter.denoise(x, it, it.frames, state, it.kv_write)
    snap = adapter.snapshot(state)
    adapter.commit(torch.full_like(x, -3.0), (0, 3), state)  # overwrite the same frames
    changed = adapter.denoise(x, it, it.frames, state, it.kv_write)
    adapter.restore(state, snap)
    restored = adapter.denoise(x, it, it.frames, state, it.kv_write)
    assert not torch.equal(empty, full) and not torch.equal(full, changed)
    assert torch.equal(restored, full)


# ---- decoding -----------------------------------------------------------------------------------


def _latents(adapter: AnalyticAdapter, frames: int = 9, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, frames, *adapter.latent_shape, generator=g).to(adapter.dtype)


@pytest.mark.parametrize("chunks", [[9], [3, 3, 3], [1, 2, 6], [1] * 9])
def test_decoding_in_chunks_equals_decoding_at_once(chunks):
    adapter = AnalyticAdapter()
    latents = _latents(adapter)
    whole = adapter.decode(latents, fresh_state(adapter))
    state, parts, start = fresh_state(adapter), [], 0
    for n in chunks:
        parts.append(adapter.decode(latents[:, start:start + n], state))
        start += n
    streamed = torch.cat(parts, dim=1)
    assert streamed.shape == (2, 9, 3, *adapter.latent_shape[1:])
    assert torch.allclose(streamed, whole, atol=1e-6)


def test_the_decode_cache_matters():
    adapter = AnalyticAdapter(smoothing=0.5)
    latents = _latents(adapter)
    state = fresh_state(adapter)
    adapter.decode(latents[:, :3], state)
    warm = adapter.decode(latents[:, 3:6], state)
    cold = adapter.decode(latents[:, 3:6], fresh_state(adapter))
    assert not torch.allclose(warm, cold)


def test_snapshot_decode_restore_decode_reproduces_the_same_bits():
    adapter = AnalyticAdapter()
    latents = _latents(adapter)
    state = fresh_state(adapter)
    adapter.commit(latents[:, :3], (0, 3), state)
    adapter.decode(latents[:, :3], state)
    snap = adapter.snapshot(state)
    first = adapter.decode(latents[:, 3:6], state)
    adapter.decode(latents[:, 6:9], state)  # move the cache on
    adapter.commit(latents[:, 3:6], (3, 6), state)  # and the KV
    adapter.restore(state, snap)
    again = adapter.decode(latents[:, 3:6], state)
    assert torch.equal(first, again)
    assert sorted(state.kv) == [0, 1, 2]


@pytest.mark.parametrize("channels", [1, 3])
def test_encode_inverts_decode_from_an_empty_cache(channels):
    """Latents -> pixels -> latents is the identity where the channel mix is injective."""
    adapter = AnalyticAdapter(channels=channels)
    latents = _latents(adapter, frames=6, seed=3)
    pixels = adapter.decode(latents, fresh_state(adapter))
    assert torch.allclose(adapter.encode(pixels), latents, atol=1e-4)


@pytest.mark.parametrize("channels", [3, 4, 8])
def test_decode_inverts_encode_from_an_empty_cache(channels):
    """Pixels -> latents -> pixels is the identity for every channel count >= 3 (video-to-video
    streaming encodes input frames and decodes the result)."""
    adapter = AnalyticAdapter(channels=channels)
    g = torch.Generator().manual_seed(4)
    pixels = torch.randn(2, 6, 3, *adapter.latent_shape[1:], generator=g).to(adapter.dtype)
    latents = adapter.encode(pixels)
    assert latents.shape == (2, 6, *adapter.latent_shape)
    assert torch.allclose(adapter.decode(latents, fresh_state(adapter)), pixels, atol=1e-4)


# ---- plan shapes --------------------------------------------------------------------------------


def _check_plan(adapter: AnalyticAdapter, req: Request) -> None:
    """Every unit starts once and finishes once, after it started; each frame's noise level never
    increases and reaches 0 exactly once, in the iteration that finishes its unit."""
    b = adapter.unit_frames
    units = [s.unit for s in adapter.units(req)]
    level = {j: 1.0 for j in range(req.first_frame, req.first_frame + req.num_frames)}
    reached: dict[int, int] = {}
    started: list[int] = []
    finished: list[int] = []
    for k, it in enumerate(adapter.plan(req)):
        started += [s.unit for s in it.starts]
        if it.role is Role.COMMIT:
            assert all(level[j] == 0.0 for j in range(*it.frames))
            continue
        for off, j in enumerate(range(*it.frames)):
            assert it.sigma[off] == pytest.approx(level[j]), (k, j)
            if it.update[off]:
                assert (j - req.first_frame) // b + units[0] in started
            if it.sigma_next[off] == 0.0 and level[j] > 0.0:
                assert j not in reached
                reached[j] = k
            level[j] = it.sigma_next[off]
        for span in it.finishes:
            assert span.unit in started
            assert all(reached.get(j) == k for j in range(span.start, span.end))
            finished.append(span.unit)
    assert sorted(started) == units and sorted(finished) == units
    assert finished == sorted(finished)
    assert set(reached) == set(level)


@pytest.mark.parametrize("unit_frames", [1, 3])
@pytest.mark.parametrize("ar_step", [0, 1, 2, 5])
@pytest.mark.parametrize("units", [1, 2, 5])
def test_staircase_plans_finish_every_unit_once(unit_frames, ar_step, units):
    steps = 4
    adapter = AnalyticAdapter(plan="staircase", unit_frames=unit_frames, ar_step=ar_step,
                              steps=steps)
    req = Request(prompts=("x",), num_frames=units * unit_frames)
    _check_plan(adapter, req)
    concurrent = units if ar_step == 0 else min(units, math.ceil(steps / ar_step))
    windowed = AnalyticAdapter(plan="staircase", unit_frames=unit_frames, ar_step=ar_step,
                               steps=steps, window_frames=concurrent * unit_frames)
    windowed.validate(req)
    _check_plan(windowed, req)
    its = list(windowed.plan(req))
    assert max(it.num_frames for it in its) <= concurrent * unit_frames
    assert all(it.valid == it.frames for it in its)


@pytest.mark.parametrize("window_units", [1, 2, 4])
@pytest.mark.parametrize("units", [1, 2, 5])
def test_window_plans_finish_every_unit_once_and_commit_it(window_units, units):
    adapter = AnalyticAdapter(plan="window", steps=4, window_units=window_units)
    req = Request(prompts=("x",), num_frames=units * 3)
    _check_plan(adapter, req)
    its = list(adapter.plan(req))
    commits = [it.unit for it in its if it.role is Role.COMMIT]
    assert commits == list(range(units))
    # a chunk is committed right after the iteration that finished it
    for k, it in enumerate(its):
        for span in it.finishes:
            assert its[k + 1].role is Role.COMMIT and its[k + 1].frames == span.frames
    assert [it.index for it in its] == list(range(len(its)))


def test_block_plans_finish_every_unit_once():
    adapter = AnalyticAdapter(steps=5)
    _check_plan(adapter, Request(prompts=("x",), num_frames=12))
    _check_plan(adapter, Request(prompts=("x",), num_frames=6, first_frame=6))


@pytest.mark.parametrize("plan", ["block", "staircase", "window"])
def test_every_plan_emits_every_unit_once_in_the_engine(af_hooks, plan):
    result, _ = run(af_hooks, num_frames=15, plan=plan)
    assert [e["unit"] for e in result.trace.of("emit")] == [0, 1, 2, 3, 4]
    assert result.frames.shape[1] == 15
    assert result.stats.units == 5 and result.stats.frames == 15


# ---- config validation --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, field, value",
    [
        ({"plan": "window", "steps": 5, "window_units": 2}, "steps", 5),
        ({"plan": "window", "steps": 6, "window_units": 4}, "steps", 6),
        ({"kv_window": 3, "sink_frames": 3}, "sink_frames", 3),
        ({"kv_window": 2, "sink_frames": 5}, "sink_frames", 5),
        ({"plan": "magi"}, "plan", "magi"),
        ({"steps": 0}, "steps", 0),
        ({"unit_frames": 0}, "unit_frames", 0),
        ({"coupling": 1.5}, "coupling", 1.5),
        ({"solver": "heun"}, "solver", "heun"),
        ({"kv_window": 0}, "kv_window", 0),
        ({"window_frames": 2.5}, "window_frames", 2.5),
    ],
)
def test_config_errors_name_the_field(kwargs, field, value):
    with pytest.raises(ConfigError) as err:
        AnalyticAdapter(**kwargs)
    assert err.value.field == field and err.value.value == value
    assert field in str(err.value)
    with pytest.raises(ConfigError):
        AnalyticConfig(**kwargs)


def test_window_steps_message_names_window_units():
    with pytest.raises(ConfigError) as err:
        AnalyticAdapter(plan="window", steps=5, window_units=2)
    assert "window_units = 2" in err.value.allowed


def test_sink_frames_message_names_kv_window():
    with pytest.raises(ConfigError) as err:
        AnalyticAdapter(kv_window=3, sink_frames=3)
    assert "kv_window = 3" in err.value.allowed


def test_a_staircase_window_too_small_fails_before_any_model_call(af_hooks):
    adapter = AnalyticAdapter(plan="staircase", steps=4, ar_step=2, window_frames=5)
    with pytest.raises(ConfigError) as err:
        Pipeline(adapter, hooks=af_hooks).generate("x", num_frames=9)
    e = err.value
    assert (e.field, e.value) == ("window_frames", 5)
    assert ">= 6" in e.allowed  # two units of three frames denoise at once
    # one unit fits in a window of three frames
    Pipeline(adapter, hooks=af_hooks).generate("x", num_frames=3)
    # with ar_step = 0 every unit denoises at once
    sync = AnalyticAdapter(plan="staircase", steps=4, ar_step=0, window_frames=6)
    with pytest.raises(ConfigError, match=">= 9"):
        sync.validate(Request(prompts=("x",), num_frames=9))


def test_request_errors_name_the_field():
    adapter = AnalyticAdapter(unit_frames=3)
    with pytest.raises(ConfigError) as err:
        adapter.validate(Request(prompts=("x",), num_frames=4))
    assert err.value.field == "num_frames" and "3, 6, 9" in err.value.allowed
    with pytest.raises(ConfigError) as err:
        adapter.validate(Request(prompts=("x",), num_frames=3, first_frame=2))
    assert err.value.field == "first_frame"
    with pytest.raises(ConfigError) as err:
        adapter.validate(Request(prompts=("x",), num_frames=3,
                                 init_latents=torch.zeros(1, 3, 2, 8, 8)))
    assert err.value.field == "init_latents"
