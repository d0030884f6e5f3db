"""Distribution matching (DMD, Self-Forcing's objective) for the one-step drafter, on its own rollouts.

Why: regression (``distill.py``) teaches the student the teacher's block from the same noise. Where
the teacher's answer varies with details the student cannot see, regression teaches their mean, and
a mean of positions moves less than any one of them: the regression drafter's shape slows block
after block (docs/world.md). DMD matches the *distribution* of the student's blocks to the
teacher's, so it has no mean to fall to. Self-Forcing trains its generator this way, from an
ODE-regression initialisation; here the regression drafter is that initialisation.

Both scores are conditional on the student's own earlier blocks: every noisy block attends to the
student's clean blocks before it
(:func:`~accelframe_adapters.world.training.rollouts.parallel_blocks`, the KV-cache loop's
arithmetic), so DMD matches what the student draws *after its own drafts* to what the target would
draw there.

One generator step, for a batch of training-split prompts (``--objective dmd``):

1. **Critic steps** (``CRITIC_RATIO`` of them, Self-Forcing's ``dfake_gen_update_ratio``): a fresh
   student rollout (no gradient); each block noised at its own noise level (below); the critic (the
   "fake score", initialised from the target) learns the flow ``eps - x0`` of the student's blocks:
   ``|v_fake(x_t) - (eps - x0)|^2`` (Self-Forcing's ``denoising_loss_type: flow``).
2. **The student's rollout** (with gradient through each block's one call, as in ``distill.py``).
3. **The DMD gradient** (DMD eq. 7, 8): each block noised to ``x_t = (1 - sigma) x0 + sigma eps``;
   ``p_real`` the target's x0 under guidance, ``p_fake`` the critic's;
   ``grad = (p_fake - p_real) / mean|x0 - p_real|`` (per rollout), and the loss
   ``0.5 |x0 - sg(x0 - grad)|^2``, whose gradient on ``x0`` is ``grad``.

Noise levels as Self-Forcing samples them: ``u`` uniform, shifted by Wan's shift 5
(``sigma = 5u / (1 + 4u)``), clamped to timesteps [20, 980]; drawn per block (the blocks are
separate conditional samples here, each on its clean context), where Self-Forcing's bidirectional
scores take one level per video.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from accelframe_adapters.wan.dit import WanDiT
from accelframe_adapters.wan.flow import shift_sigma
from accelframe_adapters.world.models import CAUSAL_BLOCK
from accelframe_adapters.world.training import common as training
from accelframe_adapters.world.training.rollouts import (
    SHIFT, TEACHER_GUIDANCE, commit_all, parallel_blocks, rollout,
)

DEFAULTS = training.TrainSettings(steps=300, batch=4, lr=3e-5, seed=3, warmup=10, log_every=5)
CRITIC_RATIO = 5  # critic updates per generator update (Self-Forcing's dfake_gen_update_ratio)
CRITIC_LR = 1.0  # the critic's learning rate as a multiple of the generator's (ours; see docs/world.md)
CRITIC_BETAS = (0.0, 0.999)  # Self-Forcing's beta1_critic, beta2_critic
GUIDANCE = TEACHER_GUIDANCE  # the real score's guidance: the target's, as the regression teacher
T_MIN, T_MAX = 20.0, 980.0  # Self-Forcing's min_step, max_step (0.02 and 0.98 of 1000)


def noise_levels(batch: int, frames: int, g: torch.Generator, block: int = CAUSAL_BLOCK) -> torch.Tensor:
    """``[B, F]`` noise levels sigma, one per block (repeated over its frames): shifted uniform,
    clamped to the timesteps [T_MIN, T_MAX]."""
    u = torch.rand(batch, -(-frames // block), generator=g, dtype=torch.float64)
    sigma = shift_sigma(u, SHIFT).clamp(T_MIN / 1000.0, T_MAX / 1000.0)
    return sigma.repeat_interleave(block, dim=1)[:, :frames].float()


def noised(x0: torch.Tensor, sigma: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """``(1 - sigma) x0 + sigma eps``, ``sigma: [B, F]`` broadcast over ``x0: [B, C, F, H, W]``."""
    s = sigma[:, None, :, None, None]
    return (1.0 - s) * x0 + s * eps


def predicted_x0(dit: WanDiT, xt: torch.Tensor, sigma: torch.Tensor, cross: Any, cache: Any,
                 cross_u: Any | None = None, guidance: float = 1.0) -> torch.Tensor:
    """``x_t - sigma v``: the clean blocks ``dit`` predicts from ``xt``, each block on the clean
    context in ``cache``; with ``cross_u`` guided ``v_u + guidance (v - v_u)``."""
    t = sigma * 1000.0
    v = parallel_blocks(dit, xt, t, cross, cache)
    if cross_u is not None and guidance != 1.0:
        vu = parallel_blocks(dit, xt, t, cross_u, cache)
        v = vu + guidance * (v - vu)
    return xt - sigma[:, None, :, None, None] * v


def dmd_grad(x0: torch.Tensor, p_real: torch.Tensor, p_fake: torch.Tensor) -> torch.Tensor:
    """DMD eq. 7 with eq. 8's normaliser: ``(p_fake - p_real) / mean|x0 - p_real|`` per rollout."""
    norm = (x0 - p_real).abs().mean(dim=(1, 2, 3, 4), keepdim=True)
    return torch.nan_to_num((p_fake - p_real) / norm)


def dmd_loss(x0: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """``0.5 |x0 - sg(x0 - grad)|^2`` (mean): its gradient on ``x0`` is ``grad / x0.numel()``."""
    return 0.5 * (x0 - (x0 - grad).detach()).pow(2).mean()


def critic_loss(critic: WanDiT, x0: torch.Tensor, cross: Any, g: torch.Generator) -> torch.Tensor:
    """The critic's flow-matching loss on the student's clean blocks ``x0`` (no gradient into them),
    each block noised at its own level on the clean blocks before it."""
    x0 = x0.detach()
    b, _, f = x0.shape[:3]
    sigma = noise_levels(b, f, g)
    eps = torch.randn(x0.shape, generator=g)
    with torch.no_grad():
        cache = commit_all(critic, x0, cross)
    v = parallel_blocks(critic, noised(x0, sigma, eps), sigma * 1000.0, cross, cache)
    return (v - (eps - x0)).pow(2).mean()


def generator_step(student: WanDiT, target: WanDiT, critic: WanDiT, critic_opt: torch.optim.Optimizer,
                   *, draw: Callable[[], tuple[torch.Tensor, torch.Tensor]], g: torch.Generator,
                   cross_u_one: Any, critic_lr: float) -> dict[str, float]:
    """One DMD step (module docstring): ``CRITIC_RATIO`` critic updates, then the student's loss,
    backpropagated (the caller steps the student's optimiser). ``draw()`` gives ``(eps, text
    states)`` for a fresh batch."""
    crit = []
    for group in critic_opt.param_groups:
        group["lr"] = critic_lr
    for _ in range(CRITIC_RATIO):
        eps, states = draw()
        with torch.no_grad():
            x0 = rollout(student, eps, student.cross_cache(states))
        critic_opt.zero_grad(set_to_none=True)
        loss_c = critic_loss(critic, x0, critic.cross_cache(states), g)
        loss_c.backward()
        torch.nn.utils.clip_grad_norm_(critic.parameters(), 1.0)
        critic_opt.step()
        crit.append(loss_c.item())

    eps, states = draw()
    x0 = rollout(student, eps, student.cross_cache(states))
    b, _, f = x0.shape[:3]
    with torch.no_grad():
        ctx = x0.detach()
        sigma = noise_levels(b, f, g)
        xt = noised(ctx, sigma, torch.randn(ctx.shape, generator=g))
        cross_c = target.cross_cache(states)
        cross_u = type(cross_c)(k=[k.expand(b, -1, -1, -1) for k in cross_u_one.k],
                                v=[v.expand(b, -1, -1, -1) for v in cross_u_one.v])
        p_real = predicted_x0(target, xt, sigma, cross_c, commit_all(target, ctx, cross_c), cross_u, GUIDANCE)
        cross_f = critic.cross_cache(states)
        p_fake = predicted_x0(critic, xt, sigma, cross_f, commit_all(critic, ctx, cross_f))
        grad = dmd_grad(ctx, p_real, p_fake)
    loss = dmd_loss(x0, grad)
    loss.backward()
    return {"dmd": loss.item(), "critic": sum(crit) / len(crit), "grad": grad.abs().mean().item(),
            "real_gap": (ctx - p_real).abs().mean().item()}


def make_critic(target_cfg: Any, tensors: dict[str, torch.Tensor]) -> WanDiT:
    """The fake score: a copy of the target (Self-Forcing initialises it from a pretrained model)."""
    from accelframe_adapters import checkpoints as ck

    critic = WanDiT(target_cfg)
    ck.fit(critic, tensors, "the world target", what="the DMD critic")
    return critic.train()


__all__ = ["CRITIC_BETAS", "CRITIC_LR", "CRITIC_RATIO", "DEFAULTS", "GUIDANCE", "T_MAX", "T_MIN", "critic_loss",
           "dmd_grad", "dmd_loss", "generator_step", "make_critic", "noise_levels", "noised", "predicted_x0"]
