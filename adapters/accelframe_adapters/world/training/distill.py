"""Distil the world target into a one-step drafter, trained on its own rollouts (Self-Forcing's way).

Why: a drafter trained like the target (diffusion forcing, ``train_dit.py``) needs the target's
four steps and guidance to draw anything, so it cannot be much cheaper, and it never sees its own
drafts as context: it fails most on motion (docs/world.md). Self-Forcing trains its generator on
autoregressive rollouts of its own blocks; this trainer does the same, with the world target as
teacher.

One training step, for a batch of training-split prompts:

1. **Rollout** (the student, as the ``self-forcing`` loop runs it with ``denoising_step_list =
   (1000,)`` and no guidance): for each block ``b`` in order, ``x0_b = eps_b - sigma v(eps_b)``
   given the student's KV cache, which holds its *own* earlier blocks (committed clean, no
   gradient). The gradient flows through each block's one call, not through the context
   (Self-Forcing's truncation).
2. **Teacher, on the student's context**: the target commits the student's clean blocks into its
   own cache in one block-causal pass, then denoises *every* block at once from the same
   ``eps_b`` (each noisy block attends to the clean blocks before it and to itself: the KV-cache
   loop's arithmetic, see :func:`~accelframe_adapters.world.training.rollouts.parallel_blocks`),
   with the loop's guidance and step list. So the teacher answers "what would the target draw
   here, after these drafts".
3. **Loss**: the squared error between the student's and the teacher's ``x0``, weighted ``1 +
   OBJECT_WEIGHT`` where the teacher's block differs from its own background (the latent pixels far
   from the frame's median), so the small shape is not drowned out.

Regression needs a teacher that is a function of ``eps``: the loop's re-noising draws fresh noise at
each step, and regressing on it would teach the student the mean over those draws (a blur). The
teacher therefore runs the loop's timesteps with Euler updates (``TEACHER = "euler"``: the flow ODE,
deterministic); ``"loop"`` (re-noise with fresh noise, as the adapter does) is kept for comparison.
**Target blocks as context** (``target_context = p > 0``, for SDVG): a router mixes the two models'
blocks in one video, so the drafter also has to continue a block the target drew. Each step then
adds a second, teacher-forced pass: every block's context is, with probability ``p`` per block, the
teacher's block from step 2 instead of the student's own; the student answers every block at once on
that context (its one call per block, as :func:`parallel_blocks` computes the loop), the teacher
answers on the same context, and the two losses are averaged. (The teacher's blocks in the context
were drawn on the student's own context, not on the mixed one: an approximation of SDVG's videos.)

Distribution matching (DMD, Self-Forcing's objective) needs no deterministic teacher but a second,
online "fake score" network: ``objective="dmd"`` trains it (:mod:`~accelframe_adapters.world.training.dmd`).
Measured against regression at the same wall time, it drew the shape less often and in the wrong
colour, so the shipped drafter is regression's (docs/world.md).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs
import torch

from accelframe.errors import ConfigError
from accelframe.validators import check_device
from accelframe_adapters.wan.dit import WanDiT
from accelframe_adapters.world import clips
from accelframe_adapters.world.models import CAUSAL_BLOCK, LATENT_FRAMES, load_text, weights_path
from accelframe_adapters.world.training import common as training
from accelframe_adapters.world.training import dmd
from accelframe_adapters.world.training.rollouts import (
    STUDENT_STEPS, TEACHER_GUIDANCE, commit_all, parallel_blocks, rollout, schedule,
)
from accelframe_adapters.world.training.train_dit import WeightAverage

DEFAULTS = training.TrainSettings(steps=500, batch=6, lr=3e-4, seed=2, warmup=30, log_every=10)
TEACHER_STEPS = (1000.0, 750.0, 500.0, 250.0)  # the self-forcing loop's list (warped, shift 5)
OBJECT_WEIGHT = 4.0
TEACHERS = ("euler", "loop")
OBJECTIVES = ("regression", "dmd")  # regression here; DMD in ``dmd.py``
EMA = 0.99


@torch.no_grad()
def teacher_x0(dit: WanDiT, ctx: torch.Tensor, eps: torch.Tensor, cross_c: Any, cross_u: Any, *,
               mode: str = "euler", guidance: float = TEACHER_GUIDANCE, g: torch.Generator | None = None) -> torch.Tensor:
    """The teacher's clean blocks ``[B, C, F, H, W]`` from ``eps`` (same shape), every block on the
    context ``ctx`` (the student's clean blocks): the loop's step list, guidance against ``cross_u``
    (the empty prompt, on the same cache), Euler or the loop's re-noising."""
    cache = commit_all(dit, ctx, cross_c)
    b, _, f = eps.shape[:3]
    pairs = schedule(TEACHER_STEPS)
    sigmas = [sg for _, sg in pairs] + [0.0]
    x = eps
    for k, (t, sg) in enumerate(pairs):
        tt = torch.full((b, f), t, device=eps.device)
        v = parallel_blocks(dit, x, tt, cross_c, cache)
        if guidance != 1.0:
            vu = parallel_blocks(dit, x, tt, cross_u, cache)
            v = vu + guidance * (v - vu)
        nxt = sigmas[k + 1]
        if nxt == 0.0:
            return x - sg * v
        if mode == "euler":
            x = x + (nxt - sg) * v
        else:
            x0 = x - sg * v
            x = (1 - nxt) * x0 + nxt * torch.randn(x.shape, generator=g).to(x.device)  # drawn on the CPU
    raise AssertionError("the step list ends at sigma 0")


def footprint(x0: torch.Tensor) -> torch.Tensor:
    """``[B, F, H, W]``: 1.0 on latent pixels far from their frame's background (the per-channel
    median over the frame), i.e. the shape, as the teacher drew it."""
    med = x0.flatten(3).median(dim=3).values[..., None, None]  # [B, C, F, 1, 1]
    dist = (x0 - med).pow(2).sum(1).sqrt()  # [B, F, H, W]
    return (dist > 0.5 * dist.flatten(2).amax(2)[..., None, None].clamp_min(1e-6)).float()


def distill(out: str | Path, *, teacher: str | Path | None = None, init: str | Path | None = None,
            text: str | Path | None = None, settings: training.TrainSettings | None = None,
            mode: str = "euler", objective: str = "regression", force: bool = False,
            quiet: bool = False, device: str = "cpu", target_context: float = 0.0) -> dict[str, Any]:
    """Train the one-step drafter into ``out``, by regression (module docstring) or by distribution
    matching (``objective="dmd"``, :mod:`~accelframe_adapters.world.training.dmd`); starts from ``init``
    (default: the installed drafter) with the installed target as teacher.

    ``device`` (regression only): where the student and the teacher run. The text states are encoded
    on the CPU, and every random draw (prompts, noise, the loop teacher's re-noising) is made on the
    CPU by the run's own generator and then moved, so a run on another device sees the CPU run's
    batches; its weights differ only by the device's arithmetic. ``target_context`` (regression only):
    the probability of a teacher's block as a block's context in the second pass (module docstring)."""
    if mode not in TEACHERS:
        raise ConfigError("world distill", "teacher_mode", mode, f"one of {TEACHERS}")
    if objective not in OBJECTIVES:
        raise ConfigError("world distill", "objective", objective, f"one of {OBJECTIVES}")
    if objective == "dmd" and mode != "euler":
        raise ConfigError("world distill", "teacher_mode", mode,
                          "'euler' (the default) with objective 'dmd': the teacher mode sets regression's "
                          "teacher, and DMD scores with the target in one pass, with no steps between")
    dev = check_device("world distill", "device", device)
    if not 0.0 <= target_context <= 1.0:  # NaN too
        raise ConfigError("world distill", "target_context", target_context, "a probability in [0, 1]")
    if objective == "dmd" and target_context > 0:
        raise ConfigError("world distill", "target_context", target_context,
                          "0 with objective 'dmd' (the teacher-forced pass is regression's)")
    if objective == "dmd" and dev.type != "cpu":
        raise ConfigError("world distill", "device", device,
                          "'cpu' with objective 'dmd' (its critic trains on the CPU only); regression runs anywhere")
    settings = settings or (dmd.DEFAULTS if objective == "dmd" else DEFAULTS)
    path = training.check_out(out, force)
    from accelframe_adapters import checkpoints as ck
    from accelframe_adapters.world.models import config_from_metadata
    from accelframe_adapters.wan.dit import WanDiTConfig

    init_path = Path(init) if init is not None else weights_path("drafter")
    teacher_path = Path(teacher) if teacher is not None else weights_path("target")
    cfg = config_from_metadata(WanDiTConfig, init_path)
    student = WanDiT(cfg)
    init_record = training.load_init(student, attrs.asdict(cfg), init_path, owner="world distill",
                                     what="the world drafter DiT")
    tcfg = config_from_metadata(WanDiTConfig, teacher_path)
    target = WanDiT(tcfg)
    teacher_tensors = ck.read_tensors(teacher_path)
    ck.fit(target, teacher_tensors, str(teacher_path), what="the world target DiT")
    target.eval().requires_grad_(False)
    student.to(dev)
    target.to(dev)
    enc = load_text(text or weights_path("text"), cfg.text_dim, cfg.text_len)
    torch.manual_seed(settings.seed)
    g = torch.Generator().manual_seed(settings.seed)
    prompts = [s.prompt for s in clips.sample_scenes(4096, settings.seed)]  # training split only
    with torch.no_grad():
        empty = enc([""]).to(dev)  # [1, L, text_dim]
        cross_u_one = target.cross_cache(empty)
    shape = (cfg.in_dim, LATENT_FRAMES, 16, 16)

    student.train()

    def draw() -> tuple[torch.Tensor, torch.Tensor]:
        """A fresh batch: the block noise ``[B, C, F, H, W]`` and the prompts' text states."""
        idx = torch.randint(0, len(prompts), (settings.batch,), generator=g).tolist()
        with torch.no_grad():
            states = enc([prompts[j] for j in idx]).to(dev)  # [B, L, text_dim]
        return torch.randn((settings.batch, *shape), generator=g).to(dev), states

    def regression_step(i: int) -> dict[str, float]:
        eps, states = draw()
        cross_s = student.cross_cache(states)
        x0 = rollout(student, eps, cross_s)
        with torch.no_grad():
            cross_c = target.cross_cache(states)
            cross_u = type(cross_c)(k=[k.expand(settings.batch, -1, -1, -1) for k in cross_u_one.k],
                                    v=[v.expand(settings.batch, -1, -1, -1) for v in cross_u_one.v])
            want = teacher_x0(target, x0.detach(), eps, cross_c, cross_u, mode=mode, g=g)
            weight = 1.0 + OBJECT_WEIGHT * footprint(want)  # [B, F, H, W]
        sq = (x0 - want).pow(2).mean(1)  # [B, F, H, W]
        loss = (sq * weight).sum() / weight.sum()
        logged = {"loss": loss.item(), "mse": sq.mean().item()}
        if target_context > 0:  # the teacher-forced pass on mixed contexts (drawn only then: p = 0 keeps the bits)
            b, _, f = eps.shape[:3]
            pick = torch.rand(b, f // CAUSAL_BLOCK, generator=g) < target_context  # [B, blocks]
            pick = pick.repeat_interleave(CAUSAL_BLOCK, 1).to(dev).view(b, 1, f, 1, 1)
            ctx = torch.where(pick, want, x0.detach())
            with torch.no_grad():
                want_m = teacher_x0(target, ctx, eps, cross_c, cross_u, mode=mode, g=g)
                weight_m = 1.0 + OBJECT_WEIGHT * footprint(want_m)
                cache = commit_all(student, ctx, cross_s)
            ((t, sg),) = schedule(STUDENT_STEPS)
            x0_m = eps - sg * parallel_blocks(student, eps, torch.full((b, f), t, device=eps.device), cross_s, cache)
            sq_m = (x0_m - want_m).pow(2).mean(1)
            loss_m = (sq_m * weight_m).sum() / weight_m.sum()
            logged["loss_forced"] = loss_m.item()
            loss = 0.5 * (loss + loss_m)
            logged["loss"] = loss.item()
        loss.backward()
        return logged

    step = regression_step
    if objective == "dmd":
        critic = dmd.make_critic(tcfg, teacher_tensors)
        critic_opt = torch.optim.AdamW(critic.parameters(), lr=settings.lr * dmd.CRITIC_LR,
                                       betas=dmd.CRITIC_BETAS, weight_decay=0.0)

        def dmd_step(i: int) -> dict[str, float]:
            return dmd.generator_step(student, target, critic, critic_opt, draw=draw, g=g, cross_u_one=cross_u_one,
                                      critic_lr=training.lr_at(i, settings) * dmd.CRITIC_LR)
        step = dmd_step

    ema = WeightAverage(student, EMA)
    log = training.run_loop(f"drafter (distil, {objective})", settings, list(student.parameters()), step,
                            quiet=quiet, after_step=ema.update)
    student.eval()
    objectives = {"regression": "self-rollout regression to the target",
                  "dmd": f"self-rollout distribution matching (DMD) against the target, guidance {dmd.GUIDANCE}, "
                         f"critic from the target, {dmd.CRITIC_RATIO} critic updates per step at "
                         f"{dmd.CRITIC_LR:g}x the lr"}
    teacher_id = {"file": teacher_path.name, "sha256": training.file_digest(teacher_path)}
    record = {"settings": attrs.asdict(settings), "objective": objectives[objective],
              "teacher": ({**teacher_id, "mode": mode, "steps": list(TEACHER_STEPS),
                           "guidance": TEACHER_GUIDANCE} if objective == "regression" else
                          {**teacher_id, "guidance": dmd.GUIDANCE, "critic_ratio": dmd.CRITIC_RATIO,
                           "critic_lr": dmd.CRITIC_LR, "timesteps": [dmd.T_MIN, dmd.T_MAX]}),
              "student_steps": list(STUDENT_STEPS), "object_weight": OBJECT_WEIGHT, "ema": EMA,
              **({"target_context": target_context} if target_context > 0 else {}),
              "init": init_record, "machine": training.machine(dev), "wall_s": log["wall_s"],
              "parameters": sum(p.numel() for p in student.parameters()),
              "command": f"accelframe world distill --steps {settings.steps} --batch {settings.batch} "
                         f"--seed {settings.seed} --lr {settings.lr:g} --warmup {settings.warmup} "
                         f"--teacher-mode {mode} --objective {objective} --init {init_path.name}"
                         + (f" --target-context {target_context:g}" if target_context > 0 else "")
                         + ("" if dev.type == "cpu" else f" --device {dev}")}
    training.save(path, ema.state_dict(), config=attrs.asdict(cfg), training=record, log=log)
    return record


__all__ = ["DEFAULTS", "EMA", "OBJECTIVES", "OBJECT_WEIGHT", "TEACHERS", "TEACHER_STEPS", "distill", "footprint",
           "teacher_x0"]
