"""The one-step drafter's distillation (``world/training/rollouts.py``, ``distill.py``, ``dmd.py``):
the teacher's all-blocks-at-once pass is the KV-cache loop's arithmetic, the rollout is the
adapter's one-step loop, and a short run trains and writes a file the adapter loads. For
distribution matching: Self-Forcing's noise levels, DMD's normalised gradient and its surrogate
loss, computed by hand; the critic learns the flow of the student's blocks; the gradient vanishes
where the critic scores as the teacher."""

from __future__ import annotations

import json

import pytest
import torch

from accelframe import cli
from accelframe.errors import ConfigError
from accelframe.types import KVWrite
from accelframe_adapters.wan.dit import KVCache, WanDiT, WanDiTConfig
from accelframe_adapters.world import models
from accelframe_adapters.world.training import common as training
from accelframe_adapters.world.training import distill, dmd, rollouts


def _tiny(seed: int = 0) -> WanDiT:
    torch.manual_seed(seed)
    cfg = WanDiTConfig(dim=32, ffn_dim=64, num_heads=2, num_layers=2, freq_dim=16, text_dim=8, text_len=4,
                       in_dim=4, out_dim=4, patch_size=(1, 2, 2))
    return WanDiT(cfg).eval()


def _loop_velocity(dit, ctx, x, t, cross, block):
    """Block ``block`` of ``x`` as the self-forcing loop calls the DiT: commit the clean blocks before
    it one by one, then denoise it on that cache."""
    cache = KVCache(num_layers=dit.cfg.num_layers, tokens_per_frame=4)
    for j in range(block):
        dit(ctx[:, :, 3 * j:3 * j + 3], torch.zeros(ctx.shape[0], 3), cross, frame_offset=3 * j, cache=cache,
            kv_write=KVWrite.COMMIT)
    s = 3 * block
    return dit(x[:, :, s:s + 3], t[:, s:s + 3], cross, frame_offset=s, cache=cache, kv_write=KVWrite.NONE)


@torch.no_grad()
def test_parallel_blocks_equal_the_kv_cache_loop():
    dit = _tiny()
    g = torch.Generator().manual_seed(1)
    ctx, x = torch.randn(2, 4, 9, 4, 4, generator=g), torch.randn(2, 4, 9, 4, 4, generator=g)
    t = torch.rand(2, 9, generator=g) * 1000
    cross = dit.cross_cache(torch.randn(2, 4, 8, generator=g))
    v = rollouts.parallel_blocks(dit, x, t, cross, rollouts.commit_all(dit, ctx, cross))
    for b in range(3):
        torch.testing.assert_close(v[:, :, 3 * b:3 * b + 3], _loop_velocity(dit, ctx, x, t, cross, b),
                                   atol=1e-5, rtol=1e-5)
    # the context matters from block 1 on, and not for block 0
    other = ctx + 1.0
    v2 = rollouts.parallel_blocks(dit, x, t, cross, rollouts.commit_all(dit, other, cross))
    assert torch.equal(v2[:, :, :3], v[:, :, :3]) and not torch.allclose(v2[:, :, 3:], v[:, :, 3:])


def test_rollout_is_the_one_step_loop_on_its_own_drafts_with_gradient():
    dit = _tiny()
    g = torch.Generator().manual_seed(2)
    eps = torch.randn(1, 4, 9, 4, 4, generator=g)
    cross = dit.cross_cache(torch.randn(1, 4, 8, generator=g))
    x0 = rollouts.rollout(dit, eps, cross)
    ((t, sigma),) = rollouts.schedule(rollouts.STUDENT_STEPS)
    with torch.no_grad():  # block by block on the drafts before it
        for b in range(3):
            v = _loop_velocity(dit, x0.detach(), eps, torch.full((1, 9), t), cross, b)
            torch.testing.assert_close(x0[:, :, 3 * b:3 * b + 3], eps[:, :, 3 * b:3 * b + 3] - sigma * v,
                                       atol=1e-5, rtol=1e-5)
    x0.sum().backward()
    assert dit.blocks[0].self_attn.q.weight.grad is not None


@torch.no_grad()
def test_the_euler_teacher_is_a_function_of_the_noise_and_the_loop_teacher_is_not():
    dit = _tiny()
    g = torch.Generator().manual_seed(3)
    ctx, eps = torch.randn(1, 4, 9, 4, 4, generator=g), torch.randn(1, 4, 9, 4, 4, generator=g)
    text = torch.randn(1, 4, 8, generator=g)
    cc, cu = dit.cross_cache(text), dit.cross_cache(torch.zeros_like(text))
    a = distill.teacher_x0(dit, ctx, eps, cc, cu, mode="euler")
    assert torch.equal(a, distill.teacher_x0(dit, ctx, eps, cc, cu, mode="euler"))
    b1 = distill.teacher_x0(dit, ctx, eps, cc, cu, mode="loop", g=torch.Generator().manual_seed(0))
    b2 = distill.teacher_x0(dit, ctx, eps, cc, cu, mode="loop", g=torch.Generator().manual_seed(1))
    assert not torch.allclose(b1, b2)


def test_footprint_marks_what_differs_from_the_background():
    x = torch.zeros(1, 2, 3, 6, 6)
    x[:, :, :, 2:4, 2:4] = 3.0
    m = distill.footprint(x)
    assert m.shape == (1, 3, 6, 6) and m[0, 0, 2:4, 2:4].eq(1).all() and m.sum() == 3 * 4


def test_a_short_distillation_writes_weights_the_adapter_loads(tmp_path):
    out = tmp_path / "d.safetensors"
    s = training.TrainSettings(steps=2, batch=1, lr=1e-4, seed=0, warmup=1, log_every=1)
    before = models.read_metadata(models.weights_path("drafter"))
    rec = distill.distill(out, settings=s, quiet=True)
    assert rec["teacher"]["mode"] == "euler" and rec["student_steps"] == [1000.0]
    # the record names this version of its teacher; the card prints it, and the target's card the same digest
    import hashlib

    want = hashlib.sha256(models.weights_path("target").read_bytes()).hexdigest()[:16]
    assert rec["teacher"]["file"] == "world-target.safetensors" and rec["teacher"]["sha256"] == want
    from accelframe_adapters.world.training import cards

    (tmp_path / models.FILES["drafter"]).write_bytes(out.read_bytes())
    more = distill.distill(tmp_path / "more.safetensors", settings=s, init=out, quiet=True)
    (tmp_path / models.FILES["drafter"]).write_bytes((tmp_path / "more.safetensors").read_bytes())
    cards.write_card("drafter", tmp_path, [])
    card = (tmp_path / models.FILES["drafter"].replace(".safetensors", ".md")).read_text()
    assert f"- distilled against `world-target.safetensors` (sha256 `{want}`)" in card
    assert f"min, distilled against `world-target.safetensors` (sha256 `{want}`): `{rec['command']}`" in card
    digest = hashlib.sha256((tmp_path / models.FILES["drafter"]).read_bytes()).hexdigest()[:16]
    assert f"sha256 `{digest}`)" in card and more["init"]["file"] == "d.safetensors"
    meta = models.read_metadata(out)
    assert meta["config"] == before["config"] and meta["training"]["objective"].startswith("self-rollout")
    log = json.loads(out.with_suffix(".log.json").read_text())
    assert len(log["loss"]) == 2 and all(v > 0 for v in log["loss"])
    with pytest.raises(ConfigError, match="out"):  # never overwritten without force
        distill.distill(out, settings=s, quiet=True)


def test_distill_refuses_bad_input_before_training(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("ACCELFRAME_DISABLE_PLUGIN_AUTOLOAD", raising=False)
    with pytest.raises(ConfigError, match="teacher_mode"):
        distill.distill(tmp_path / "d.safetensors", mode="ddim")
    assert cli.main(["world", "distill", "--steps", "0", "--out", str(tmp_path / "d.safetensors")]) == 2
    assert "--steps = 0" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["world", "distill", "--teacher-mode", "ddim"])
    assert not (tmp_path / "d.safetensors").exists()


def test_a_distilled_file_runs_its_own_steps_without_guidance():
    from accelframe_adapters.world.presets import WAN_DEFAULTS, distilled_defaults

    assert distilled_defaults({}) is WAN_DEFAULTS
    d = distilled_defaults({"student_steps": [1000.0]})
    assert d["self-forcing"] == {"denoising_step_list": (1000.0,), "guidance_scale": 1.0}
    assert d["skyreels-v2-df"] == WAN_DEFAULTS["skyreels-v2-df"]
    from accelframe_adapters.wan.self_forcing import SelfForcingAdapter

    shipped = models.read_metadata(models.weights_path("drafter"))["training"]
    cfg = SelfForcingAdapter(size="world-drafter").config
    want = tuple(shipped.get("student_steps", cfg.denoising_step_list))
    assert cfg.denoising_step_list == want
    assert SelfForcingAdapter(size="world-drafter", guidance_scale=2.0).config.guidance_scale == 2.0  # yours win


def test_noise_levels_are_self_forcings_shifted_uniform_one_per_block():
    g = torch.Generator().manual_seed(0)
    s = dmd.noise_levels(512, 9, g)
    assert s.shape == (512, 9) and s.dtype == torch.float32
    assert torch.equal(s[:, 0], s[:, 2]) and torch.equal(s[:, 3], s[:, 5]) and not torch.equal(s[:, 0], s[:, 3])
    assert s.min() >= 0.02 and s.max() <= 0.98
    # shift 5 puts the median at sigma(0.5) = 2.5 / 3 (clamping moves only the tails)
    assert abs(s[:, 0].median().item() - 2.5 / 3) < 0.05
    # a frame count that is not a multiple of the block: the last block is cut short
    assert dmd.noise_levels(2, 7, g).shape == (2, 7)


def test_the_dmd_gradient_and_loss_by_hand():
    x0 = torch.zeros(2, 1, 1, 1, 2)
    p_real = torch.tensor([1.0, 3.0, -2.0, 2.0]).view(2, 1, 1, 1, 2)
    p_fake = torch.tensor([2.0, 3.0, -2.0, 0.0]).view(2, 1, 1, 1, 2)
    grad = dmd.dmd_grad(x0, p_real, p_fake)
    # rollout 0: (p_fake - p_real) = [1, 0], mean|x0 - p_real| = 2; rollout 1: [0, -2] over 2
    assert torch.equal(grad.flatten(), torch.tensor([0.5, 0.0, 0.0, -1.0]))
    x = x0.clone().requires_grad_(True)
    loss = dmd.dmd_loss(x, grad)
    assert loss.item() == pytest.approx(0.5 * (0.25 + 1.0) / 4)
    loss.backward()
    torch.testing.assert_close(x.grad, grad / 4)
    # a rollout already at the teacher's answer has a zero normaliser: no NaN, no step
    assert torch.isfinite(dmd.dmd_grad(p_real, p_real, p_fake)).all()


@torch.no_grad()
def test_predicted_x0_is_the_flow_step_with_guidance():
    dit = _tiny()
    g = torch.Generator().manual_seed(1)
    ctx, xt = torch.randn(1, 4, 9, 4, 4, generator=g), torch.randn(1, 4, 9, 4, 4, generator=g)
    sigma = dmd.noise_levels(1, 9, g)
    text = torch.randn(1, 4, 8, generator=g)
    cc, cu = dit.cross_cache(text), dit.cross_cache(torch.zeros_like(text))
    cache = rollouts.commit_all(dit, ctx, cc)
    v = rollouts.parallel_blocks(dit, xt, sigma * 1000, cc, cache)
    vu = rollouts.parallel_blocks(dit, xt, sigma * 1000, cu, cache)
    s = sigma[:, None, :, None, None]
    torch.testing.assert_close(dmd.predicted_x0(dit, xt, sigma, cc, cache), xt - s * v)
    guided = dmd.predicted_x0(dit, xt, sigma, cc, cache, cu, 1.5)
    torch.testing.assert_close(guided, xt - s * (vu + 1.5 * (v - vu)))


def test_the_critic_learns_the_flow_of_the_students_blocks():
    critic = _tiny(1).train()
    g = torch.Generator().manual_seed(2)
    x0 = torch.randn(2, 4, 9, 4, 4, generator=g).requires_grad_(True)
    cross = critic.cross_cache(torch.randn(2, 4, 8, generator=g))
    loss = dmd.critic_loss(critic, x0, cross, torch.Generator().manual_seed(3))
    # by hand, with the same draws
    g2 = torch.Generator().manual_seed(3)
    sigma = dmd.noise_levels(2, 9, g2)
    eps = torch.randn(x0.shape, generator=g2)
    with torch.no_grad():
        v = rollouts.parallel_blocks(critic, dmd.noised(x0, sigma, eps), sigma * 1000, cross,
                                    rollouts.commit_all(critic, x0, cross))
        torch.testing.assert_close(loss, (v - (eps - x0)).pow(2).mean())
    loss.backward()
    assert x0.grad is None  # the student's blocks are data to the critic
    assert critic.head.head.weight.grad is not None


def _step_models():
    student, target, critic = _tiny(0).train(), _tiny(1), _tiny(1).train()
    target.requires_grad_(False)
    return student, target, critic


def _draw(seed: int):
    g = torch.Generator().manual_seed(seed)
    return lambda: (torch.randn(2, 4, 9, 4, 4, generator=g), torch.randn(2, 4, 8, generator=g))


def test_the_gradient_vanishes_where_the_critic_scores_as_the_teacher(monkeypatch):
    student, target, critic = _step_models()
    monkeypatch.setattr(dmd, "GUIDANCE", 1.0)
    opt = torch.optim.AdamW(critic.parameters(), lr=0.0)  # the critic stays the teacher's copy
    u = target.cross_cache(torch.zeros(1, 4, 8))
    out = dmd.generator_step(student, target, critic, opt, draw=_draw(0), g=torch.Generator().manual_seed(0),
                             cross_u_one=u, critic_lr=0.0)
    assert out["dmd"] == 0.0 and out["grad"] == 0.0 and out["real_gap"] > 0
    assert all(p.grad is None or p.grad.abs().max() == 0 for p in student.parameters())


def test_a_generator_step_moves_the_critic_and_gives_the_student_a_gradient():
    student, target, critic = _step_models()
    before = {k: v.clone() for k, v in critic.state_dict().items()}
    frozen = {k: v.clone() for k, v in target.state_dict().items()}
    opt = torch.optim.AdamW(critic.parameters(), lr=1e-3, betas=dmd.CRITIC_BETAS)
    u = target.cross_cache(torch.zeros(1, 4, 8))
    out = dmd.generator_step(student, target, critic, opt, draw=_draw(1), g=torch.Generator().manual_seed(1),
                             cross_u_one=u, critic_lr=1e-3)
    assert out["dmd"] > 0 and out["critic"] > 0
    assert any(not torch.equal(before[k], v) for k, v in critic.state_dict().items())
    assert all(torch.equal(frozen[k], v) for k, v in target.state_dict().items())
    assert student.blocks[0].self_attn.q.weight.grad.abs().sum() > 0


def test_a_short_dmd_distillation_writes_a_one_step_drafter(tmp_path, monkeypatch):
    from accelframe_adapters.world.presets import distilled_defaults

    monkeypatch.setattr(dmd, "CRITIC_RATIO", 1)
    out = tmp_path / "d.safetensors"
    s = training.TrainSettings(steps=1, batch=1, lr=1e-5, seed=0, warmup=1, log_every=1)
    rec = distill.distill(out, settings=s, objective="dmd", quiet=True)
    assert rec["objective"].startswith("self-rollout distribution matching")
    assert rec["teacher"]["critic_ratio"] == 1
    assert "--objective dmd" in rec["command"]
    meta = models.read_metadata(out)
    assert meta["config"] == models.read_metadata(models.weights_path("drafter"))["config"]
    assert distilled_defaults(meta["training"])["self-forcing"] == {"denoising_step_list": (1000.0,),
                                                                    "guidance_scale": 1.0}
    from accelframe_adapters import checkpoints as ck

    student = WanDiT(models.config_from_metadata(WanDiTConfig, out))
    ck.fit(student, ck.read_tensors(out), str(out), what="the distilled drafter")  # every key, every shape


def test_an_unknown_objective_is_refused_before_training(tmp_path):
    with pytest.raises(ConfigError, match="objective"):
        distill.distill(tmp_path / "d.safetensors", objective="gan")
    with pytest.raises(ConfigError, match="teacher_mode"):  # regression's option does nothing under DMD
        distill.distill(tmp_path / "d.safetensors", objective="dmd", mode="loop")
    with pytest.raises(SystemExit):
        cli.main(["world", "distill", "--objective", "gan", "--out", str(tmp_path / "d.safetensors")])
    assert not (tmp_path / "d.safetensors").exists()


def test_distill_on_the_cpu_device_is_the_default_run_bit_for_bit(tmp_path):
    """``device="cpu"`` is the default; every draw is made on the CPU generator, so a GPU run sees the same
    batches. A device this machine lacks, or DMD off the CPU, is refused before anything is written."""
    from accelframe_adapters import checkpoints as ck

    s = training.TrainSettings(steps=2, batch=1, lr=1e-4, seed=0, warmup=1, log_every=1)
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    distill.distill(a, settings=s, quiet=True)
    rec = distill.distill(b, settings=s, quiet=True, device="cpu")
    ta, tb = ck.read_tensors(a), ck.read_tensors(b)
    assert ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)
    assert "--device" not in rec["command"] and "device" not in rec["machine"]
    for kw in ({"device": "banana"}, {"device": "cuda:99"}, {"device": "cuda", "objective": "dmd"}):
        with pytest.raises(ConfigError) as err:
            distill.distill(tmp_path / "c.safetensors", settings=s, quiet=True, **kw)
        assert err.value.field == "device"
    assert not (tmp_path / "c.safetensors").exists()


def test_target_context_adds_a_teacher_forced_pass_and_is_refused_out_of_range(tmp_path):
    """``target_context > 0``: a second pass whose contexts mix the teacher's blocks in (logged as
    ``loss_forced``, named in the record and the command); a value outside [0, 1], or with DMD, is
    refused before anything is written."""
    s = training.TrainSettings(steps=2, batch=2, lr=1e-4, seed=0, warmup=1, log_every=1)
    out = tmp_path / "m.safetensors"
    rec = distill.distill(out, settings=s, quiet=True, target_context=0.5)
    assert rec["target_context"] == 0.5 and "--target-context 0.5" in rec["command"]
    log = json.loads(out.with_suffix(".log.json").read_text())
    assert len(log["loss_forced"]) == 2 and all(v > 0 for v in log["loss_forced"])
    plain = distill.distill(tmp_path / "p.safetensors", settings=s, quiet=True)
    assert "target_context" not in plain and "--target-context" not in plain["command"]
    for kw in ({"target_context": 1.5}, {"target_context": float("nan")},
               {"target_context": 0.5, "objective": "dmd"}):
        with pytest.raises(ConfigError) as err:
            distill.distill(tmp_path / "c.safetensors", settings=s, quiet=True, **kw)
        assert err.value.field == "target_context"
    assert not (tmp_path / "c.safetensors").exists()
