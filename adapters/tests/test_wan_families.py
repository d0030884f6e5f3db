"""The three Wan families: schedules, solver, step matrix, plans, caches and generation."""

from __future__ import annotations

import pytest
import torch

from accelframe.errors import IncompatibleError
from accelframe.pipeline import Pipeline
from accelframe.testing.fixtures import make_hooks
from accelframe.testing.policies import AlwaysRecompute, ThresholdBlock
from accelframe.types import Request, Role
from accelframe_adapters import plugin as adapters_plugin
from accelframe_adapters.wan.flow import TrainGrid, few_step_schedule
from accelframe_adapters.wan.krea import KreaAdapter, KreaConfig
from accelframe_adapters.wan.self_forcing import SelfForcingAdapter
from accelframe_adapters.wan.skyreels_df import SkyReelsDFAdapter, step_matrix
from accelframe_adapters.wan.unipc import UniPCState, unipc_step

SMALL = {"size": "tiny", "height": 32, "width": 32}  # 4x4 latents: 4 tokens per frame


def _pipe(adapter, **kw) -> Pipeline:
    return Pipeline(adapter, hooks=make_hooks(adapters_plugin), **kw)


# ---- schedules ----------------------------------------------------------------------------------


def test_self_forcing_warp_gives_the_papers_list():
    ts = [t for t, _ in few_step_schedule([1000, 750, 500, 250], 5.0, warp=True)]
    assert ts == pytest.approx([1000.0, 937.5, 833.3333, 625.0], abs=1e-3)


def test_krea_five_steps_end_at_zero_called_at_the_grid_minimum():
    steps = KreaConfig().step_list()
    assert steps == [1000.0, 750.0, 500.0, 250.0, 0.0]
    pairs = few_step_schedule(steps, 5.0, warp=True)
    assert [t for t, _ in pairs] == pytest.approx([1000.0, 937.5, 833.3333, 625.0, 0.0], abs=1e-3)
    # the reference re-noises "to t = 0" with the nearest grid sigma, shift(1/1000)
    assert pairs[-1][1] == pytest.approx(5 * 0.001 / (1 + 4 * 0.001))
    assert TrainGrid(5.0).sigmas[0] == 1.0


def test_unipc_first_step_is_the_flow_euler_step():
    """Order 1 from σ_s to σ_t: (1 − σ_t) x0 + σ_t ε with x0 = x − σ_s v, ε = x + (1 − σ_s) v."""
    g = torch.Generator().manual_seed(0)
    x, v = torch.randn(3, 5, generator=g), torch.randn(3, 5, generator=g)
    levels = [0.9, 0.6, 0.2, 0.0]
    got, st = unipc_step(UniPCState(), x, v, levels)
    assert torch.allclose(got, x + v * (0.6 - 0.9), atol=1e-6)
    assert st.steps_done == 1 and st.order == 1


def test_unipc_equals_diffusers_multistep():
    diffusers = pytest.importorskip("diffusers")
    sch = diffusers.UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True,
                                            flow_shift=8.0, solver_order=2)
    sch.set_timesteps(8)
    levels = [float(s) for s in sch.sigmas]
    w = torch.randn(4, 4, generator=torch.Generator().manual_seed(1)) * 0.3
    field = lambda x, s: torch.tanh(x @ w) * (1 + s) + 0.5 * x  # noqa: E731
    xa = xb = torch.randn(2, 4, generator=torch.Generator().manual_seed(2))
    st = UniPCState()
    for k, t in enumerate(sch.timesteps):
        xa = sch.step(field(xa, levels[k]), t, xa).prev_sample
        xb, st = unipc_step(st, xb, field(xb, levels[k]), levels)
        assert torch.allclose(xa, xb, atol=1e-6), k


# ---- the step matrix ----------------------------------------------------------------------------


def test_step_matrix_hand_example():
    index, update, valid = step_matrix(4, 3, 4, ar_step=1)
    assert index == [[1, 0, 0, 0], [2, 1, 0, 0], [3, 2, 1, 0], [4, 3, 2, 1], [4, 4, 3, 2], [4, 4, 4, 3]]
    assert [[int(u) for u in row] for row in update] == [
        [1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0], [0, 1, 1, 1], [0, 0, 1, 1], [0, 0, 0, 1]]
    assert valid == [(0, 4)] * 6


def test_step_matrix_synchronous_prefix_window_and_blocks():
    index, update, _ = step_matrix(4, 3, 4, ar_step=0)
    assert index == [[1] * 4, [2] * 4, [3] * 4] and all(all(r) for r in update)
    index, update, _ = step_matrix(4, 3, 4, ar_step=1, num_pre_ready=1)
    assert index[0] == [4, 1, 0, 0] and update[0] == [False, True, False, False]
    assert all(not row[0] for row in update)  # the prefix frame never moves
    _, _, valid = step_matrix(4, 3, 2, ar_step=2)
    assert [w for i, w in enumerate(valid) if i == 0 or valid[i - 1] != w] == [(0, 2), (1, 3), (2, 4)]
    index, update, valid = step_matrix(6, 2, 6, ar_step=1, causal_block_size=3)
    assert index[0] == [1, 1, 1, 0, 0, 0] and valid[0] == (0, 6)


@pytest.mark.parametrize("frames,steps,base,ar,pre,cbs", [
    (4, 3, 4, 1, 0, 1), (6, 5, 6, 2, 2, 2), (8, 4, 4, 2, 0, 1), (10, 3, 10, 0, 0, 5), (9, 6, 9, 3, 3, 3)])
def test_step_matrix_equals_diffusers(frames, steps, base, ar, pre, cbs):
    pipe_mod = pytest.importorskip("diffusers.pipelines.skyreels_v2.pipeline_skyreels_v2_diffusion_forcing")
    template = torch.arange(steps, 0, -1) * (1000 // (steps + 1))
    _, ref_index, ref_update, ref_valid = pipe_mod.SkyReelsV2DiffusionForcingPipeline.generate_timestep_matrix(
        None, frames, template, base, ar, pre, cbs)
    index, update, valid = step_matrix(frames, steps, base, ar, pre, cbs)
    assert index == ref_index.tolist() and update == ref_update.tolist()
    assert valid == [tuple(w) for w in ref_valid]


# ---- plans ----------------------------------------------------------------------------------------


def test_self_forcing_plan_denoises_then_commits_each_block():
    a = SelfForcingAdapter(**SMALL)
    its = list(a.plan(Request(prompts="p", num_frames=6)))
    assert [it.role for it in its] == ([Role.DENOISE] * 4 + [Role.COMMIT]) * 2
    first = [it.sigma[0] for it in its[:4]]
    assert first == pytest.approx([1.0, 0.9375, 0.833333, 0.625], abs=1e-5)
    assert its[3].sigma_next == (0.0, 0.0, 0.0)
    assert [float(t) for t in a.timesteps(its[1], its[1].frames)] == pytest.approx([937.5] * 3)


def test_skyreels_plan_follows_the_matrix():
    a = SkyReelsDFAdapter(num_inference_steps=3, ar_step=1, guidance_scale=1.0, **SMALL)
    its = list(a.plan(Request(prompts="p", num_frames=4)))
    assert len(its) == 6 and all(it.frames == (0, 4) == it.valid for it in its)
    assert its[0].starts and [s.unit for s in its[0].starts] == [0, 1, 2, 3]
    assert [[s.unit for s in it.finishes] for it in its] == [[], [], [0], [1], [2], [3]]
    moves = [sum(it.update[j] for it in its) for j in range(4)]
    assert moves == [3, 3, 3, 3]  # every frame takes every step once
    assert its[0].sigma[1] == 1.0 and float(a.timesteps(its[0], (1, 2))[0]) == 999.0  # not started
    assert its[3].sigma[0] == 0.0 and not its[3].update[0]  # done


def test_skyreels_long_video_segments_overlap_in_latent_space():
    a = SkyReelsDFAdapter(num_inference_steps=2, base_num_frames=25, overlap_history=9, guidance_scale=1.0,
                          **SMALL)
    assert [(s.start, s.end, s.prefix) for s in a.segments(13)] == [(0, 7, 0), (4, 11, 3), (8, 13, 3)]
    its = list(a.plan(Request(prompts="p", num_frames=13)))
    later = [it for it in its if it.valid[0] == 4]
    assert later and all(not any(it.update[:3]) for it in later)  # the prefix is conditioning only
    assert sorted(s.unit for it in its for s in it.finishes) == list(range(13))


# ---- generation ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name,kw", [
    ("self-forcing", {}),
    ("krea-realtime", {"num_denoising_steps": 3}),
    ("skyreels-v2-df", {"num_inference_steps": 3, "ar_step": 1}),
])
def test_generation_is_deterministic_and_exact_under_a_recompute_policy(name, kw):
    pipe = _pipe(name, adapter_kwargs={**SMALL, **kw})
    a = pipe.generate("a red circle moves left", num_frames=6, seed=3)
    b = pipe.generate("a red circle moves left", num_frames=6, seed=3)
    c = pipe.generate("a red circle moves left", num_frames=6, seed=4)
    assert torch.equal(a.latents, b.latents) and torch.equal(a.frames, b.frames)
    assert not torch.equal(a.latents, c.latents)
    assert a.frames.shape == (1, 21, 3, 32, 32)  # 1 + 4 (6 - 1) pixel frames
    assert torch.isfinite(a.latents).all()
    pipe.use(AlwaysRecompute())
    assert torch.equal(pipe.generate("a red circle moves left", num_frames=6, seed=3).latents, a.latents)


def test_self_forcing_window_keeps_kv_memory_flat():
    a = SelfForcingAdapter(local_attn_size=7, sink_size=1, **SMALL)
    short, long = _last_state(a, 6).kv, _last_state(a, 30).kv
    assert short.nbytes() == long.nbytes()
    assert long.frames == (0, 27, 28, 29)  # one sink, then the newest frames
    grows = SelfForcingAdapter(**SMALL)
    assert _last_state(grows, 30).kv.nbytes() == 5 * _last_state(grows, 6).kv.nbytes()


def _last_state(adapter, frames):
    eng = _pipe(adapter).engine()
    eng.run(Request(prompts="p", num_frames=frames, decode=False))
    return eng.target_state


def test_krea_rebuilds_from_an_anchor_plus_recent_frames():
    a = KreaAdapter(num_denoising_steps=2, **SMALL)
    st = _last_state(a, 9)  # three blocks: rebuilt after blocks 0, 1 and 2
    assert st.kv.frames == (6, 7, 8)  # re-encoded anchor (labelled e - k), then the last two frames
    b = KreaAdapter(num_denoising_steps=2, keep_first_frame=True, **SMALL)
    assert _last_state(b, 9).kv.frames == (0, 7, 8)


def test_krea_without_decode_reencodes_the_same_anchor():
    a = KreaAdapter(num_denoising_steps=2, **SMALL)
    pipe = _pipe(a)
    on = pipe.generate("p", num_frames=9, seed=1)
    off = pipe.generate("p", num_frames=9, seed=1, decode=False)
    assert torch.equal(on.latents, off.latents)


def test_adapter_snapshot_restore_reproduces_a_block():
    a = SelfForcingAdapter(**SMALL)
    req = Request(prompts="p", num_frames=6)
    eng = _pipe(a).engine()
    eng.run(Request(prompts="p", num_frames=3, decode=True))
    state = eng.target_state
    snap = a.snapshot(state)
    x = torch.randn(1, 3, *a.latent_shape, generator=torch.Generator().manual_seed(0))
    it = next(i for i in a.plan(Request(prompts="p", num_frames=3, first_frame=3)))
    v1 = a.denoise(x, it, it.frames, state, it.kv_write)
    a.commit(x, it.frames, state)
    px1 = a.decode(x, state)
    a.restore(state, snap)
    v2 = a.denoise(x, it, it.frames, state, it.kv_write)
    px2 = a.decode(x, state)
    assert torch.equal(v1, v2) and torch.equal(px1, px2)
    assert req.num_frames == 6


def test_drafted_generation_with_real_adapters_accepts_and_regenerates(tmp_path):
    from safetensors.torch import save_file

    # another random DiT (init_seed) with the target's VAE: the target's VAE decodes the drafts
    vae = tmp_path / "vae.safetensors"
    save_file(SelfForcingAdapter(**SMALL).vae.state_dict(), str(vae))
    with pytest.raises(IncompatibleError, match="VAEs differ"):
        _pipe("self-forcing", drafter="self-forcing", adapter_kwargs=SMALL, drafter_kwargs={**SMALL, "init_seed": 5})
    pipe = _pipe("self-forcing", drafter="self-forcing", adapter_kwargs={**SMALL, "vae": str(vae)},
                 drafter_kwargs={**SMALL, "init_seed": 5, "vae": str(vae)})
    pipe.use(ThresholdBlock(tau=-1e9))  # accept every block but block 0
    res = pipe.generate("p", num_frames=9)
    assert res.sources == ("target", "draft", "draft")
    assert res.frames.shape[1] == 33


@pytest.mark.parametrize("name", ["krea-realtime", "self-forcing"])
def test_a_rejected_draft_and_a_decode_worker_change_no_frame(name, tmp_path):
    """Target alone, with a decode worker, and with SDVG rejecting every draft (tau = +inf), inline
    and with the worker: the same latents and the same pixel frames. Krea's commit reads the pixels
    its decode kept: the regenerated unit is decoded before it commits (as the target alone does),
    and a commit waits for the worker's decodes (it used to decode block 0 twice: 24 frames, not 21)."""
    from safetensors.torch import save_file

    vae = tmp_path / "vae.safetensors"
    save_file(SelfForcingAdapter(**SMALL).vae.state_dict(), str(vae))
    kw = {**SMALL, "vae": str(vae)}
    alone = _pipe(name, adapter_kwargs=kw).generate("p", num_frames=9, seed=3)
    assert alone.frames.shape[1] == 33
    for worker in (False, True):
        runs = [_pipe(name, adapter_kwargs=kw, decode_worker=worker)]
        drafted = _pipe(name, adapter_kwargs=kw, drafter=name, drafter_kwargs={**kw, "init_seed": 5},
                        decode_worker=worker)
        runs.append(drafted.use(ThresholdBlock(tau=float("inf"))))
        for pipe in runs:
            res = pipe.generate("p", num_frames=9, seed=3)
            assert torch.equal(res.latents, alone.latents)
            assert res.frames.shape == alone.frames.shape and torch.equal(res.frames, alone.frames)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_adapter_networks_keep_relative_rope_after_dtype_casts(dtype):
    """RoPE is relative: shifting every position leaves the output unchanged (a cast must not
    damage the rotation tables)."""
    a = SelfForcingAdapter(dtype=dtype, **SMALL)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, a.latent_shape[0], 3, 4, 4, generator=g).to(a.model_dtype)
    t = torch.full((1, 3), 500.0)
    cross = a.encode_prompt(["a red circle"])
    with torch.no_grad():
        y0, y5 = a.dit(x, t, cross, rope_start=0), a.dit(x, t, cross, rope_start=5)
    tol = 1e-5 if dtype == "float32" else 3e-2
    assert float((y0.float() - y5.float()).norm() / y0.float().norm()) < tol


def test_self_forcing_loop_equals_a_cache_free_reference_loop():
    """The adapter's loop with its KV cache equals a loop that re-runs every earlier clean frame
    through the network with the block-causal mask at each call (no cache at all)."""
    from accelframe.rng import unit_generator
    from accelframe_adapters.wan.flow import renoise

    a = SelfForcingAdapter(**SMALL)
    got = _pipe(a).generate("a red circle", num_frames=9, seed=2, decode=False).latents  # [B, F, C, H, W]
    cross = a.encode_prompt(["a red circle"])
    sig = a.schedule(1.0)
    clean = torch.zeros(1, 0, *a.latent_shape)
    with torch.no_grad():
        for unit in range(3):
            g = unit_generator(2, unit, 0)
            x = torch.randn(1, 3, *a.latent_shape, generator=g)
            for k in range(len(sig) - 1):
                inp = torch.cat([clean, x], dim=1)  # [B, F_clean + 3, C, H, W]
                t = torch.tensor([[0.0] * clean.shape[1] + [a._t_of[sig[k]]] * 3])
                v = a.from_model(a.dit(a.to_model(inp), t, cross, causal_block=3))[:, -3:]
                if sig[k + 1] == 0.0:
                    x = x - sig[k] * v
                else:
                    x = renoise(x, v, sig[k], sig[k + 1], torch.randn(x.shape, generator=g))
            clean = torch.cat([clean, x], dim=1)
    assert float((got - clean).norm() / clean.norm()) < 1e-5


@pytest.mark.parametrize("name", ["self-forcing", "krea-realtime", "skyreels-v2-df"])
def test_cli_generates_with_tiny_random_weights(name, capsys, monkeypatch, tmp_path):
    import json

    from accelframe import cli

    monkeypatch.delenv("ACCELFRAME_DISABLE_PLUGIN_AUTOLOAD")
    extra = ["--set", "num_inference_steps=3"] if name == "skyreels-v2-df" else []
    out = tmp_path / "video.pt"
    code = cli.main(["generate", "--adapter", name, "--latent-frames", "3", "--set", "size=tiny", "--set", "height=32",
                     "--set", "width=32", *extra, "--out", str(out), "--json"])
    assert code == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["frames_shape"] == [1, 9, 3, 32, 32] and out.exists()


def test_cli_bench_wan_help_and_bad_frames(capsys, monkeypatch):
    from accelframe import cli

    monkeypatch.delenv("ACCELFRAME_DISABLE_PLUGIN_AUTOLOAD")
    with pytest.raises(SystemExit):
        cli.main(["bench", "wan", "--help"])
    assert "--long-factor" in capsys.readouterr().out
    assert cli.main(["bench", "wan", "--frames", "4"]) == 2
    assert "frames = 4" in capsys.readouterr().err


def test_cli_frames_are_pixel_frames_converted_or_the_valid_counts_named(capsys, monkeypatch):
    import json

    from accelframe import cli

    monkeypatch.delenv("ACCELFRAME_DISABLE_PLUGIN_AUTOLOAD")
    small = ["--set", "size=tiny", "--set", "height=32", "--set", "width=32"]
    assert cli.main(["generate", "--adapter", "self-forcing", "--frames", "21", *small, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["latents_shape"][1] == 6
    assert cli.main(["generate", "--adapter", "self-forcing", "--frames", "10", *small]) == 2
    assert "9, 21, 33" in capsys.readouterr().err
    assert cli.main(["generate", "--adapter", "analytic", "--frames", "9", "--json"]) == 0  # no VAE: pixel = latent
    assert json.loads(capsys.readouterr().out)["latents_shape"][1] == 9


@pytest.mark.parametrize("ar,cbs,guidance", [(0, 1, 1.0), (1, 1, 1.0), (1, 2, 1.0), (2, 1, 3.0)])
def test_skyreels_generation_equals_the_diffusers_pipeline(ar, cbs, guidance):
    """The whole adapter (step matrix, per-frame UniPC, block-causal mask, CFG) against diffusers'
    SkyReels-V2 diffusion-forcing pipeline on the same weights, text states and start noise. The
    scheduler gets the original repository's sigmas, which this adapter follows."""
    import numpy as np

    module = pytest.importorskip("diffusers.pipelines.skyreels_v2.pipeline_skyreels_v2_diffusion_forcing")
    diffusers = pytest.importorskip("diffusers")
    from accelframe.rng import unit_generator
    from accelframe_adapters.wan.dit import diffusers_config, to_diffusers_key

    frames, steps, pixels = 4, 3, 13
    a = SkyReelsDFAdapter(num_inference_steps=steps, ar_step=ar, causal_block_size=cbs, guidance_scale=guidance,
                          base_num_frames=pixels, **SMALL)
    ours = _pipe(a).generate("a red circle", num_frames=frames, seed=5, decode=False).latents
    c, h, w = a.latent_shape
    noise = torch.cat([torch.randn(1, cbs, c, h, w, generator=unit_generator(5, u, 0))
                       for u in range(frames // cbs)], dim=1)  # the engine's per-unit start noise
    ref = diffusers.SkyReelsV2Transformer3DModel(**diffusers_config(a.dit.cfg)).eval()
    ref.load_state_dict({to_diffusers_key(k): t for k, t in a.dit.state_dict().items()}, strict=True)
    base = np.linspace(0.999, 0.0, steps + 1)[:-1]  # shifted by the scheduler: the original's levels

    class OriginalSigmas(diffusers.UniPCMultistepScheduler):
        def set_timesteps(self, num_inference_steps=None, device=None, **kw):
            return super().set_timesteps(device=device, sigmas=base.copy())

    sched = OriginalSigmas(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=8.0, solver_order=2)
    pipe = module.SkyReelsV2DiffusionForcingPipeline(tokenizer=None, text_encoder=None, transformer=ref, vae=None,
                                                     scheduler=sched)
    start = noise.permute(0, 2, 1, 3, 4).contiguous()  # [B, C, F, H, W]
    # diffusers' prepare_latents returns one value instead of four when given latents: hand them over here
    pipe.prepare_latents = lambda *args, **kw: (start.clone(), frames, None, 0)
    pipe.set_progress_bar_config(disable=True)
    out = pipe(prompt=None, prompt_embeds=a.text(["a red circle"]), negative_prompt_embeds=a.text([""]),
               guidance_scale=guidance, height=32, width=32, num_frames=pixels, num_inference_steps=steps,
               ar_step=ar, causal_block_size=cbs, base_num_frames=pixels, output_type="latent").frames
    want = out.permute(0, 2, 1, 3, 4)  # [B, F, C, H, W]
    assert float((ours - want).norm() / want.norm()) < 1e-5


def test_krea_call_on_a_rebuilt_cache_equals_a_full_forward_over_context_and_block():
    """After a rebuild, a denoising call equals one masked forward over [context at t = 0, block]
    with RoPE from 0: the rebuilt cache is exact."""
    a = KreaAdapter(num_denoising_steps=3, **SMALL)
    eng = _pipe(a).engine()
    eng.run(Request(prompts="p", num_frames=3, decode=False))
    state = eng.target_state
    assert state.kv.frames == (0, 1, 2)
    ctx = torch.stack([state.family["latents"][j] for j in range(3)], dim=1)  # [B, 3, C, H, W]
    x = torch.randn(1, 3, *a.latent_shape, generator=torch.Generator().manual_seed(4))
    it = next(iter(a.plan(Request(prompts="p", num_frames=3, first_frame=3))))
    v = a.denoise(x, it, it.frames, state, it.kv_write)
    t = torch.cat([torch.zeros(3), a.timesteps(it, it.frames)]).unsqueeze(0)
    with torch.no_grad():
        full = a.dit(a.to_model(torch.cat([ctx, x], dim=1)), t, state.cross, causal_block=3)
    want = a.from_model(full)[:, 3:]
    assert float((v - want).norm() / want.norm()) < 1e-5


def test_skyreels_snapshot_restores_solver_and_addnoise_generator():
    a = SkyReelsDFAdapter(num_inference_steps=3, ar_step=1, guidance_scale=1.0, addnoise_condition=20.0,
                          base_num_frames=9, overlap_history=5, **SMALL)
    req = Request(prompts="p", num_frames=4, decode=False)
    state = a.init_state(req, a.encode_prompt(["p"]))
    its = list(a.plan(req))
    later = next(it for it in its if it.valid[0] > 0)  # a segment with a prefix: addnoise draws
    x = torch.randn(1, later.num_frames, *a.latent_shape, generator=torch.Generator().manual_seed(1))
    snap = a.snapshot(state)
    v1 = a.denoise(x, later, later.frames, state, later.kv_write)
    a.restore(state, snap)
    v2 = a.denoise(x, later, later.frames, state, later.kv_write)
    assert torch.equal(v1, v2)


def test_self_forcing_guidance_mixes_a_negative_pass_that_writes_nothing():
    from accelframe.errors import ConfigError
    from accelframe.types import KVWrite

    a = SelfForcingAdapter(**SMALL, guidance_scale=3.0)
    req = Request(prompts=("a red circle",), num_frames=6, seed=1)
    state = a.init_state(req, a.encode_prompt(list(req.prompts)))
    first = next(iter(a.plan(req)))  # block 0, first step: no context yet
    x = torch.randn(1, 3, *a.latent_shape, generator=torch.Generator().manual_seed(0))  # [B, F, C, H, W]
    got = a.denoise(x, first, (0, 3), state, KVWrite.SCRATCH)
    t = a.timesteps(first, (0, 3)).expand(1, -1)
    with torch.no_grad():
        v_c = a.from_model(a.dit(a.to_model(x), t, a.encode_prompt(["a red circle"])))
        v_u = a.from_model(a.dit(a.to_model(x), t, a.encode_prompt([""])))
    torch.testing.assert_close(got, v_u + 3.0 * (v_c - v_u), rtol=1e-5, atol=1e-5)
    assert state.kv.scratch_frames == (0, 1, 2)  # the conditional pass's scratch K/V, kept
    assert "uncond" not in SelfForcingAdapter(**SMALL).init_state(req, state.cross).family  # 1.0: the reference
    with pytest.raises(ConfigError, match="guidance_scale"):
        SelfForcingAdapter(**SMALL, guidance_scale=0.5)
