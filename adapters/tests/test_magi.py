"""The magi-1 adapter: MAGI-1's time convention, the staged window, guidance, bad input, and the loop
end to end on a tiny random model."""

from __future__ import annotations

import pytest
import torch

from accelframe.errors import ConfigError
from accelframe.pipeline import Pipeline
from accelframe.testing.fixtures import make_hooks
from accelframe.types import Request, Role
from accelframe_adapters.magi import schedule as ms
from accelframe_adapters import plugin as adapters_plugin
from accelframe_adapters.magi.adapter import MagiAdapter, MagiConfig
from accelframe_policies import plugin as policies_plugin

TINY = {"size": "tiny", "height": 32, "width": 32, "num_steps": 8, "window_size": 2}

pytestmark = pytest.mark.usefixtures("one_thread")


def _adapter(**kw) -> MagiAdapter:
    return MagiAdapter(**{**TINY, **kw})


# ------------------------------------------------------------------------------------------------
# time
# ------------------------------------------------------------------------------------------------


def test_the_grid_is_squared_then_shifted_by_hand():
    t = ms.t_grid(4, 3.0)
    # s = k / 4, u = s^2, t = u / (3 - 2u)
    want = [0.0, (1 / 16) / (3 - 2 / 16), 0.25 / 2.5, (9 / 16) / (3 - 18 / 16), 1.0]
    assert t == pytest.approx(want, abs=1e-15) and t[0] == 0.0 and t[-1] == 1.0
    assert all(a < b for a, b in zip(t, t[1:]))


@pytest.mark.parametrize("steps", [4, 12, 16, 32, 64])
def test_time_convention_round_trips_are_exact(steps):
    g = ms.TimeGrid(steps)
    for t, s in zip(g.t, g.sigma):
        assert g.sigma_of(t) == s and g.t_of(s) == t  # bit for bit, both ways
        assert g.t_of(g.sigma_of(t)) == t and g.sigma_of(g.t_of(s)) == s
    assert g.sigma[0] == 1.0 and g.sigma[-1] == 0.0


# ------------------------------------------------------------------------------------------------
# the staged window
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("steps, window, chunks", [(8, 2, 3), (8, 4, 4), (12, 4, 6), (64, 4, 5)])
def test_the_staged_schedule_gives_every_chunk_exactly_its_steps_oldest_cleanest(steps, window, chunks):
    ad = _adapter(num_steps=steps, window_size=window, chunk_width=2)
    req = Request(prompts=("a red circle",), num_frames=2 * chunks)
    plan = list(ad.plan(req))
    den = [it for it in plan if it.role is not Role.COMMIT]
    assert len(den) == ms.total_iterations(chunks, steps, window) == (chunks - 1) * steps // window + steps
    seen: dict[int, list[float]] = {}
    for it in den:
        levels = [it.sigma[k] for k in range(0, it.frames[1] - it.frames[0], 2)]  # one per chunk
        assert levels == sorted(levels)  # oldest chunk (first) cleanest
        assert len(levels) <= window
        for j, u in enumerate(it.units):
            seen.setdefault(u, []).append(levels[j])
    grid = ad.grid.sigma
    for u in range(chunks):
        assert seen[u] == list(grid[:-1])  # each step once, in order
    # a chunk enters one stage after the one before it; its commit follows its last step at once
    firsts = [next(i for i, it in enumerate(den) if u in it.units) for u in range(chunks)]
    assert [b - a for a, b in zip(firsts, firsts[1:])] == [steps // window] * (chunks - 1)
    for i, it in enumerate(plan):
        if it.role is Role.COMMIT:
            assert plan[i - 1].finishes and plan[i - 1].finishes[0].unit == it.unit
            assert it.sigma == (0.0,) * 2


def test_kv_ranges_follow_the_stage_window_plus_one_clean_chunk():
    assert ms.default_kv_ranges(4) == (5, 4, 3, 2)
    r = (5, 4, 3, 2)
    # 64 steps, window 4: 16 steps a stage; chunk 6 at its stage 0 sees chunks 2..6, at stage 3 only 5..6
    assert ms.kv_range(6, 0, 64, 4, r) == (2, 7) and ms.kv_range(6, 63, 64, 4, r) == (5, 7)
    assert ms.kv_range(1, 0, 64, 4, r) == (0, 2)


def test_base_guidance_scales_by_time():
    c = MagiConfig()
    assert ms.cfg_scales(0.0, c.cfg_t_range, c.prev_chunk_scales, c.text_scales) == (1.5, 7.5)
    assert ms.cfg_scales(0.29, c.cfg_t_range, c.prev_chunk_scales, c.text_scales) == (1.5, 7.5)
    assert ms.cfg_scales(0.3, c.cfg_t_range, c.prev_chunk_scales, c.text_scales) == (1.0, 0.0)
    assert ms.cfg_scales(0.9999, c.cfg_t_range, c.prev_chunk_scales, c.text_scales) == (1.0, 0.0)


# ------------------------------------------------------------------------------------------------
# bad input
# ------------------------------------------------------------------------------------------------


def test_a_frame_count_that_is_not_whole_chunks_names_the_valid_counts():
    ad = _adapter()
    with pytest.raises(ConfigError, match=r"num_frames.*7.*6, 12, 18, 24, 30"):
        ad.validate(Request(prompts=("x",), num_frames=7))


def test_a_window_larger_than_the_number_of_chunks_is_refused():
    ad = _adapter(window_size=4)
    with pytest.raises(ConfigError, match=r"window_size.*4.*2 chunk"):
        ad.validate(Request(prompts=("x",), num_frames=12))


def test_a_step_count_not_divisible_by_the_stages_is_refused():
    with pytest.raises(ConfigError, match=r"num_steps.*10.*multiple of window_size = 4"):
        MagiConfig(num_steps=10, window_size=4)
    with pytest.raises(ConfigError, match="prev_chunk_scales"):
        MagiConfig(prev_chunk_scales=(1.0,))
    with pytest.raises(ConfigError, match="noise2clean_kvrange"):
        MagiConfig(noise2clean_kvrange=(5, 4))
    with pytest.raises(ConfigError, match="checkpoint"):
        MagiAdapter(size="4.5B")


# ------------------------------------------------------------------------------------------------
# the loop
# ------------------------------------------------------------------------------------------------


def _pipe(**kw) -> Pipeline:
    return Pipeline("magi-1", hooks=make_hooks(adapters_plugin, policies_plugin), adapter_kwargs={**TINY, **kw})


def test_the_loop_runs_end_to_end_and_keeps_the_packed_cache_bounded():
    pipe = _pipe()
    res = pipe.generate(["a red circle moves left"], num_frames=18, seed=0)  # 3 chunks of 6
    assert res.latents.shape == (1, 18, *pipe.adapter.latent_shape) and torch.isfinite(res.latents).all()
    assert res.frames.shape[1] == pipe.adapter.pixel_frames(18)
    calls = res.stats.calls["target"]
    assert calls["computed"] == ms.total_iterations(3, 8, 2)
    assert (calls["commit"], calls["commit_skipped"]) == (2, 1)  # the last chunk's is not needed
    ad = pipe.adapter
    state = ad.init_state(Request(prompts=("x",), num_frames=18), ad.encode_prompt(["x"]))
    for it in ad.plan(Request(prompts=("x",), num_frames=18)):
        if it.role is Role.COMMIT:
            ad.commit(torch.zeros(1, 6, *ad.latent_shape), it.frames, state)
            assert state.kv.chunks()[0] >= it.unit - 1 and len(state.kv.chunks()) <= 2


def test_guidance_runs_only_the_passes_with_weight():
    ad = _adapter()
    calls = []
    forward = ad.dit.forward

    def counting(*a, **kw):
        calls.append((kw.get("text"), kw.get("cache") is None))
        return forward(*a, **kw)

    ad.dit.forward = counting
    req = Request(prompts=("x",), num_frames=12)
    state = ad.init_state(req, ad.encode_prompt(["x"]))
    its = [it for it in ad.plan(req) if it.role is not Role.COMMIT]
    x = torch.randn(1, its[0].frames[1] - its[0].frames[0], *ad.latent_shape)
    ad.denoise(x, its[0], its[0].frames, state, its[0].kv_write)  # t = 0: p 1.5, s 7.5: three passes
    assert sorted(calls, key=str) == sorted([(True, False), (False, False), (False, True)], key=str)
    calls.clear()
    last = its[-1]  # t >= 0.3 for every chunk: p 1, s 0: the null-caption pass with context alone
    x = torch.randn(1, last.frames[1] - last.frames[0], *ad.latent_shape)
    ad.denoise(x, last, last.frames, state, last.kv_write)
    assert calls == [(False, False)]


def test_the_distilled_loop_runs_one_pass_with_the_step_size_embedding():
    ad = _adapter(distill=True)
    seen = []
    forward = ad.dit.forward

    def spy(*a, **kw):
        seen.append(kw.get("dt"))
        return forward(*a, **kw)

    ad.dit.forward = spy
    req = Request(prompts=("x",), num_frames=12)
    state = ad.init_state(req, ad.encode_prompt(["x"]))
    it = next(ad.plan(req))
    ad.denoise(torch.randn(1, 6, *ad.latent_shape), it, it.frames, state, it.kv_write)
    assert seen == [4.0]  # dt = num_steps / 2, one pass (t = 0: not nearly clean)


def test_scope_runs_on_magi_with_its_preset():
    pipe = _pipe().use("scope", preset="magi-1")
    base = _pipe().generate(["a red circle"], num_frames=12, seed=1)
    res = pipe.generate(["a red circle"], num_frames=12, seed=1)
    assert res.latents.shape == base.latents.shape and torch.isfinite(res.latents).all()
    calls = res.stats.calls["target"]
    assert calls["computed"] + calls["cached"] + calls["predicted"] == ms.total_iterations(2, 8, 2)


# ------------------------------------------------------------------------------------------------
# the world's MAGI model
# ------------------------------------------------------------------------------------------------


def test_training_draws_times_and_bands_the_loop_uses():
    from accelframe_adapters.world.training.train_magi import band_ranges, chunk_times

    g = torch.Generator().manual_seed(0)
    t = chunk_times(64, 4, g)
    assert t.shape == (64, 4) and (t >= 0).all() and (t <= 1).all()
    assert any(bool((row[:-1] >= row[1:]).all()) and row[0] == 1.0 for row in t)  # staged, with clean context
    for _ in range(20):
        r = band_ranges(4, g)
        assert [hi for _, hi in r] == [1, 2, 3, 4] and all(0 <= lo < hi for lo, hi in r)


def test_the_world_magi_model_generates_a_clip_the_world_can_measure():
    pipe = Pipeline("magi-1", hooks=make_hooks(adapters_plugin, policies_plugin), adapter_kwargs={"num_steps": 8})
    res = pipe.generate(["a red circle moves left on a blue background"], num_frames=24, seed=0)
    assert res.frames.shape == (1, 93, 3, 64, 64) and torch.isfinite(res.frames).all()
    q = pipe.adapter.measure_quality(res.frames, ["a red circle moves left on a blue background"])
    assert 0.0 <= q[0]["quality"] <= 1.0
    with pytest.raises(ConfigError, match="trained on 24 latent frames"):
        pipe.adapter.validate(Request(prompts=("x",), num_frames=30))


def test_the_magi_card_quotes_bench_step_and_the_wan_cards_bench_world():
    from accelframe_adapters.world.training import cards

    step = {"config": {"adapter": "magi-1", "prompts": 4, "latent_frames": 24, "threads": 2},
            "methods": [{"name": "original", "quality": 0.61, "adherence": 0.25, "time_s": 10.0}]}
    (line,) = cards._quality("magi", {}, [step])
    assert "**0.610**" in line and "adherence **0.25**" in line and "2.50 s" in line
    assert cards._quality("target", {}, [step]) == [
        "- not measured (pass `--quality` with the output of `accelframe bench world --json`)"]


def test_bench_step_knows_magi_and_its_reduced_steps():
    from accelframe_bench.step import methods, setup
    from accelframe_policies.reduced_steps import reduced_step_kwargs

    s = setup("magi-1")
    assert s.frames == 24 and s.preset == "magi-1" and s.warmup_frames == 24 and s.quick_frames == 24
    assert reduced_step_kwargs("magi-1", 16, {}) == {"num_steps": 16}
    with pytest.raises(ConfigError, match="multiple of window_size = 4"):
        reduced_step_kwargs("magi-1", 10, {})
    quick = {m.name: m for m in methods("magi-1", quick=True)}
    assert quick["FlowCache"].policies[0][1]["warmup"] == 5  # FlowCache's MAGI-1 default
    assert not any(m.name == "SCOPE no selective" for m in methods("magi-1"))  # chunk-synchronised


def test_the_world_magi_model_decodes_with_the_tiny_decoder_too():
    """``decoder="tiny"``: the world's tiny decoder of the world VAE's latents (the VAE still encodes);
    the same latents, frames of the same shape close to the VAE's; not for a model without the
    world's VAE."""
    runs = {}
    for dec in ("vae", "tiny"):
        pipe = Pipeline("magi-1", hooks=make_hooks(adapters_plugin),
                        adapter_kwargs={"size": "world", "decoder": dec, "window_size": 2, "num_steps": 4})
        runs[dec] = (pipe.generate("a red circle moves left on a blue background", num_frames=12, seed=2),
                     pipe.engine().target)
    (vae, _), (tiny, tiny_ad) = runs["vae"], runs["tiny"]
    assert torch.equal(vae.latents, tiny.latents) and vae.frames.shape == tiny.frames.shape
    assert type(tiny_ad.decoder).__name__ == "TinyDecoder" and tiny_ad.decoder is not tiny_ad.vae
    mse = float((vae.frames - tiny.frames).pow(2).mean())
    assert 10 * torch.log10(torch.tensor(1.0 / mse)) > 15  # 17.9 dB measured on these rough 4-step latents
    with pytest.raises(ConfigError, match="decoder"):
        MagiAdapter(size="tiny", decoder="tiny")
