"""Train the world's frame reward with ImageReward's pairwise ranking loss.

Each pair holds a *good* frame (a rendered frame of the prompt's scene, or its reconstruction
through the world VAE) and a *bad* frame for the same prompt, one of seven kinds drawn uniformly:
the good frame blurred (Gaussian, 1 to 3 px), the scene with the wrong colour, the wrong shape or
the wrong background, the background alone, random latents decoded by the world VAE, or the good
frame plus Gaussian pixel noise (0.1 to 0.3). Loss: ``-log sigmoid(r_good - r_bad)``.

Afterwards the scores of held-out pairs are standardised (mean 0, spread 1; folded into the head)
and the pairwise accuracy per kind on held-out prompts is stored with the weights.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import attrs
import torch
import torch.nn.functional as F

from accelframe_adapters.world import clips
from accelframe_adapters.world.training import common as training
from accelframe_adapters.world.reward import FrameReward, RewardConfig, blur
from accelframe_adapters.world.models import load_text, load_vae

DEFAULTS = training.TrainSettings(steps=1000, batch=32, lr=1e-3, seed=2, warmup=100, log_every=25)
KINDS = ("blur", "colour", "shape", "background", "empty", "vae_noise", "pixel_noise")


def _other(options, not_in: set[str], rng: random.Random) -> str:
    return rng.choice([o for o in options if o not in not_in])


def _frame(scene: clips.Scene, seed: int, f: int) -> torch.Tensor:
    return clips.render(scene, seed, span=(f, f + 1))[0]  # [3, H, W]


@torch.no_grad()
def _vae_pools(vae, n: int, seed: int) -> tuple[list[tuple[clips.Scene, int, int]], torch.Tensor, torch.Tensor]:
    """Reconstructions of ``n`` rendered frames and ``n`` frames decoded from random latents."""
    rng = random.Random(seed)
    keys = [(s, rng.randrange(2**31), rng.randrange(clips.PIXEL_FRAMES)) for s in clips.sample_scenes(n, seed)]
    frames = torch.stack([_frame(*k) for k in keys])  # [n, 3, H, W]
    recon = []
    for i in range(0, n, 32):
        x = frames[i:i + 32].unsqueeze(2) * 2 - 1  # [b, 3, 1, H, W]
        recon.append((vae.decode(vae.encode(x))[:, :, 0] + 1) / 2)
    g = torch.Generator().manual_seed(seed)
    noise = []
    for _ in range(0, n, 32):
        r = vae.config.spatial_ratio
        z = torch.randn(32, vae.config.z_dim, 2, clips.HEIGHT // r, clips.WIDTH // r, generator=g)
        video = (vae.decode(z) + 1) / 2  # [32, 3, 5, H, W]
        noise.append(video[:, :, int(torch.randint(0, 5, (1,), generator=g))])
    return keys, torch.cat(recon).clamp(0, 1), torch.cat(noise)[:n].clamp(0, 1)


def make_pairs(b: int, rng: random.Random, g: torch.Generator, recon_keys, recon, noise,
               split: str = "train", kinds: tuple[str, ...] = KINDS
               ) -> tuple[torch.Tensor, torch.Tensor, list[str], list[str]]:
    """``b`` (good, bad) frame pairs ``[b, 3, H, W]`` each, their prompts and the kind of each bad frame."""
    good, bad, prompts, kind_of = [], [], [], []
    scenes = clips.sample_scenes(b, rng.randrange(2**31), split=split)
    for scene in scenes:
        seed, f = rng.randrange(2**31), rng.randrange(clips.PIXEL_FRAMES)
        kind = rng.choice(kinds)
        if split == "train" and rng.random() < 0.5:  # the good frame through the VAE
            j = rng.randrange(len(recon_keys))
            scene, seed, f = recon_keys[j]
            g_frame = recon[j]
        else:
            g_frame = _frame(scene, seed, f)
        if kind == "blur":
            b_frame = blur(g_frame.unsqueeze(0), torch.tensor([rng.uniform(1.0, 3.0)]))[0]
        elif kind == "pixel_noise":
            b_frame = (g_frame + rng.uniform(0.1, 0.3) * torch.randn(g_frame.shape, generator=g)).clamp(0, 1)
        elif kind == "vae_noise":
            b_frame = noise[rng.randrange(len(noise))]
        elif kind == "empty":
            b_frame = torch.tensor(clips.COLOURS[scene.background]).view(3, 1, 1).expand_as(g_frame).clone()
        else:
            field = kind
            if field == "shape":
                wrong = attrs.evolve(scene, shape=_other(clips.SHAPES, {scene.shape}, rng))
            elif field == "colour":
                wrong = attrs.evolve(scene, colour=_other(clips.COLOURS, {scene.colour, scene.background}, rng))
            else:
                wrong = attrs.evolve(scene,
                                     background=_other(clips.COLOURS, {scene.colour, scene.background}, rng))
            b_frame = _frame(wrong, seed, f)
        good.append(g_frame)
        bad.append(b_frame)
        prompts.append(scene.prompt)
        kind_of.append(kind)
    return torch.stack(good), torch.stack(bad), prompts, kind_of


def train(out: str | Path, *, vae: str | Path, text: str | Path, settings: training.TrainSettings = DEFAULTS,
          force: bool = False, quiet: bool = False, pool: int = 512, eval_pairs: int = 700) -> dict[str, Any]:
    path = training.check_out(out, force)
    cfg = RewardConfig()
    enc = load_text(text, cfg.text_dim, cfg.text_len)
    vae_model = load_vae(vae)
    recon_keys, recon, noise = _vae_pools(vae_model, pool, seed=settings.seed)
    torch.manual_seed(settings.seed)
    model = FrameReward(cfg)
    rng = random.Random(settings.seed)
    g = torch.Generator().manual_seed(settings.seed)

    def step(_: int) -> dict[str, float]:
        good, bad, prompts, _kinds = make_pairs(settings.batch, rng, g, recon_keys, recon, noise)
        text = enc(prompts)
        r = model(torch.cat([good, bad]), torch.cat([text, text]))  # [2B]
        margin = r[: settings.batch] - r[settings.batch:]
        loss = -F.logsigmoid(margin).mean()
        loss.backward()
        return {"loss": loss.item(), "accuracy": (margin > 0).float().mean().item()}

    log = training.run_loop("reward", settings, list(model.parameters()), step, quiet=quiet)
    model.eval()
    ev = evaluate(model, enc, recon_keys, recon, noise, n=eval_pairs, standardise=True)
    record = {"settings": attrs.asdict(settings), "machine": training.machine(), "wall_s": log["wall_s"],
              "parameters": sum(p.numel() for p in model.parameters()), "eval": ev,
              "command": f"accelframe world train reward --steps {settings.steps} --seed {settings.seed}"}
    training.save(path, model.state_dict(), config=attrs.asdict(cfg), training=record, log=log)
    return record


@torch.no_grad()
def evaluate(model: FrameReward, enc, recon_keys, recon, noise, *, n: int = 700, seed: int = 99,
             standardise: bool = False) -> dict[str, Any]:
    """Pairwise accuracy per kind on held-out prompts; ``standardise`` folds mean 0 / spread 1 into the head."""
    rng, g = random.Random(seed), torch.Generator().manual_seed(seed)
    good, bad, prompts, kinds = make_pairs(n, rng, g, recon_keys, recon, noise, split="eval")
    text = enc(prompts)
    rg, rb = model(good, text), model(bad, text)
    if standardise:
        both = torch.cat([rg, rb])
        mean, std = float(both.mean()), float(both.std())
        last = model.head[-1]
        last.weight /= std
        last.bias.sub_(mean).div_(std)
        rg, rb = (rg - mean) / std, (rb - mean) / std
    acc = {k: float(torch.tensor([float(a > c) for a, c, kk in zip(rg, rb, kinds) if kk == k]).mean())
           for k in KINDS}
    return {"pairs": n, "accuracy": float((rg > rb).float().mean()), "accuracy_by_kind": acc,
            "good_mean": float(rg.mean()), "bad_mean": float(rb.mean())}


__all__ = ["DEFAULTS", "KINDS", "evaluate", "make_pairs", "train"]
