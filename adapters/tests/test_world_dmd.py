"""Distribution matching for the one-step drafter (``world/training/dmd.py``): Self-Forcing's noise
levels, DMD's normalised gradient and its surrogate loss, computed by hand; the critic learns the
flow of the student's blocks; the gradient vanishes where the critic scores as the teacher; and a
short run writes a file the adapter loads."""

from __future__ import annotations

import pytest
import torch

from accelframe import cli
from accelframe.errors import ConfigError
from accelframe_adapters.wan.dit import WanDiT, WanDiTConfig
from accelframe_adapters.world import models
from accelframe_adapters.world.training import common as training
from accelframe_adapters.world.training import distill, dmd, rollouts


def _tiny(seed: int = 0) -> WanDiT:
    torch.manual_seed(seed)
    cfg = WanDiTConfig(dim=32, ffn_dim=64, num_heads=2, num_layers=2, freq_dim=16, text_dim=8, text_len=4,
                       in_dim=4, out_dim=4, patch_size=(1, 2, 2))
    return WanDiT(cfg).eval()


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
    with pytest.raises(SystemExit):
        cli.main(["world", "distill", "--objective", "gan", "--out", str(tmp_path / "d.safetensors")])
    assert not (tmp_path / "d.safetensors").exists()
