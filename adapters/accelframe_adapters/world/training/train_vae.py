"""Train the world's causal VAE (the Wan 2.1 VAE in a tiny size, 8 latent channels).

Data: fresh clips of the training split every step, cut from a random point of a full-length clip
and cropped to ``crop x crop`` pixels around the shape (the network is convolutional; crops make a
step four times cheaper), 5 frames each (the first frame alone and one 4-frame chunk). The network
is kept *chunk-local* (:func:`chunk_local`) from the start. Why: the causal convs reach about 20
latent frames into the past, so a VAE trained on short clips meets states it never saw after a few
chunks and drifts over a 105-frame stream (measured on an earlier 8x VAE: reconstruction PSNR fell
from 25 dB on the first frames to 6-9 dB by frame 60, also after fine-tuning on 9- and 41-frame
clips). A chunk-local VAE is exactly stationary, so 5-frame clips train every chunk.

Loss: ``L1 + MSE`` on pixels in [-1, 1], pixels that differ from the crop's corner colour (the
shape) weighed 5x, with the latent perturbed by Gaussian noise of 0.1 times
the batch's latent spread (the decoder must tolerate the imperfect latents a DiT makes), plus
``1e-4 * mean(mu^2)`` to keep the latent scale in check.

After each phase the per-channel mean and spread of the posterior mean on held-out clips are folded
into the network (``conv1`` and ``conv2``), so that :meth:`WanVAE.encode` returns latents of zero mean
and unit spread per channel with the identity ``latents_mean`` / ``latents_std`` of a non-16-channel VAE.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import attrs
import torch

from accelframe_adapters.wan.vae import CausalConv3d, WanVAE
from accelframe_adapters.world import clips
from accelframe_adapters.world.training import common as training
from accelframe_adapters.world.models import vae_config

@attrs.frozen
class Phase:
    """One stage of VAE training: ``settings`` on clips of ``frames`` frames cropped to ``crop`` pixels."""

    name: str
    settings: training.TrainSettings
    frames: int
    crop: int
    local: bool = False  # keep the network chunk-local (:func:`chunk_local`) during and after the phase


PHASES = (
    Phase("local", training.TrainSettings(steps=1400, batch=8, lr=2e-3, seed=0, warmup=100), frames=5, crop=32,
          local=True),
)


@torch.no_grad()
def chunk_local(vae: WanVAE) -> None:
    """Zero every weight that reads an earlier chunk through the causal caches, so that each latent
    frame encodes only its own pixel frames and decodes only from itself (the stream is stationary:
    no state builds up over chunks). Kernel-3 temporal convs keep only their current-frame tap; the
    temporal downsampling conv (kernel 3, stride 2 over [previous frame, pair]) drops the previous
    frame. Shapes and key names stay those of the Wan VAE."""
    for m in vae.modules():
        if isinstance(m, CausalConv3d) and m.weight.shape[2] == 3:
            if m.stride[0] == 2:
                m.weight[:, :, 0] = 0.0  # [C_out, C_in, kT, kH, kW]: the frame before the pair
            else:
                m.weight[:, :, :2] = 0.0  # the two frames before the current one
DEFAULTS = PHASES[0].settings


def _crop_batch(step_seed: int, batch: int, crop: int, frames: int = 5) -> torch.Tensor:
    """``[B, 3, frames, crop, crop]`` in [-1, 1]: frames of training clips around the shape."""
    rng = random.Random(step_seed)
    out = []
    for scene in clips.sample_scenes(batch, step_seed):
        seed = rng.randrange(2**31)
        first = rng.randrange(clips.PIXEL_FRAMES - frames)
        video = clips.render(scene, seed, span=(first, first + frames))  # [frames, 3, H, W]
        m = clips.draw_motion(scene, seed)
        cx, cy = m.centre(first + frames // 2)
        x0 = int(min(max(cx - crop / 2 + rng.uniform(-crop / 3, crop / 3), 0), clips.WIDTH - crop)) // 8 * 8
        y0 = int(min(max(cy - crop / 2 + rng.uniform(-crop / 3, crop / 3), 0), clips.HEIGHT - crop)) // 8 * 8
        out.append(video[:, :, y0:y0 + crop, x0:x0 + crop])
    return torch.stack(out).permute(0, 2, 1, 3, 4) * 2.0 - 1.0  # [B, 3, frames, crop, crop]


def encode_train(vae: WanVAE, video: torch.Tensor) -> torch.Tensor:
    """The posterior mean of ``video [B, 3, 1 + 4k, H, W]`` with gradients (un-normalised)."""
    cache = vae.new_encode_cache()
    pieces = [video[:, :, :1], *video[:, :, 1:].split(vae.config.temporal_ratio, dim=2)]
    z = vae.config.z_dim
    return torch.cat([vae.conv1(vae.encoder(p, cache.feats))[:, :z] for p in pieces], dim=2)  # [B, z, F, h, w]


def decode_train(vae: WanVAE, mu: torch.Tensor) -> torch.Tensor:
    """Un-normalised latents ``[B, z, F, h, w]`` -> video ``[B, 3, 1 + 4(F - 1), H, W]`` with gradients."""
    cache = vae.new_decode_cache()
    return torch.cat([vae.decoder(vae.conv2(mu[:, :, i:i + 1]), cache.feats) for i in range(mu.shape[2])], dim=2)


@torch.no_grad()
def fold_normalisation(vae: WanVAE, videos: torch.Tensor) -> dict[str, list[float]]:
    """Fold the per-channel mean / spread of the posterior means of ``videos`` into conv1 / conv2."""
    mu = torch.cat([vae.encode(v.unsqueeze(0)) for v in videos])  # [N, z, F, h, w] (identity stats now)
    z = vae.config.z_dim
    mean = mu.transpose(0, 1).reshape(z, -1).mean(1)  # [z]
    std = mu.transpose(0, 1).reshape(z, -1).std(1).clamp_min(1e-3)  # [z]
    # encoder: mu' = (W f + b - mean) / std on the first z output channels of conv1
    vae.conv1.weight[:z] /= std.view(z, 1, 1, 1, 1)
    vae.conv1.bias[:z] = (vae.conv1.bias[:z] - mean) / std
    # decoder: conv2(std mu' + mean) = (W diag(std)) mu' + (W mean + b)
    w = vae.conv2.weight  # [z_out, z_in, 1, 1, 1]
    vae.conv2.bias += (w[:, :, 0, 0, 0] @ mean)
    vae.conv2.weight *= std.view(1, z, 1, 1, 1)
    return {"mean": mean.tolist(), "std": std.tolist()}


@torch.no_grad()
def evaluate(vae: WanVAE, n: int = 16, frames: int = clips.PIXEL_FRAMES, seed: int = 10_000) -> dict[str, float]:
    """Reconstruction PSNR (dB) and latent statistics on ``n`` held-out clips of ``frames`` frames
    (default: the full 105, so that drift of the causal caches over a long stream shows)."""
    mse, stats = [], []
    for i, scene in enumerate(clips.sample_scenes(n, seed, split="eval")):
        video = clips.render(scene, seed + i, frames=frames).permute(1, 0, 2, 3).unsqueeze(0) * 2 - 1
        lat = vae.encode(video)
        rec = vae.decode(lat)
        mse.append(float(((rec - video) / 2).pow(2).mean()))
        stats.append(lat)
    lat = torch.cat(stats)
    return {"psnr_db": float(-10 * torch.log10(torch.tensor(mse).mean())), "latent_mean": float(lat.mean()),
            "latent_std": float(lat.std())}


def train(out: str | Path, *, phases: tuple[Phase, ...] = PHASES, force: bool = False, quiet: bool = False,
          fit_clips: int = 32, eval_clips: int = 16) -> dict[str, Any]:
    """Run the ``phases`` in order, folding the latent statistics into the network after each."""
    path = training.check_out(out, force)
    seed = phases[0].settings.seed
    torch.manual_seed(seed)
    vae = WanVAE(vae_config())
    seeds = training.batches(seed)

    def make_step(phase: Phase):
        if phase.local:
            chunk_local(vae)
        def step(_: int) -> dict[str, float]:
            video = _crop_batch(next(seeds), phase.settings.batch, phase.crop, phase.frames)
            mu = encode_train(vae, video)
            spread = mu.detach().std().clamp_min(1e-3)
            rec = decode_train(vae, mu + 0.1 * spread * torch.randn_like(mu))
            # the shape covers a few percent of the pixels: weigh pixels off the background 5x
            corner = video[:, :, :, :1, :1]  # [B, 3, T, 1, 1]: crops rarely start on the shape
            weight = 1.0 + 4.0 * ((video - corner).abs().sum(1, keepdim=True) > 0.05).float()
            err = rec - video
            l1, l2 = (weight * err.abs()).mean(), (weight * err.pow(2)).mean()
            loss = l1 + l2 + 1e-4 * mu.pow(2).mean()
            loss.backward()
            return {"loss": loss.item(), "l1": l1.item()}
        return step

    fit = torch.stack([clips.render(s, 20_000 + i, frames=21).permute(1, 0, 2, 3) * 2 - 1
                       for i, s in enumerate(clips.sample_scenes(fit_clips, 20_000))])
    log: dict[str, Any] = {"step": [], "time_s": [], "wall_s": 0.0, "phase_ends": []}
    norms: list[dict[str, list[float]]] = []
    steps_done = 0
    for phase in phases:
        vae.train()
        part = training.run_loop(f"vae {phase.name} ({phase.frames}-frame clips)", phase.settings,
                                 list(vae.parameters()), make_step(phase), quiet=quiet,
                                 after_step=(lambda: chunk_local(vae)) if phase.local else None)
        vae.eval()
        norms.append(fold_normalisation(vae, fit))
        offset = {"step": steps_done, "time_s": log["wall_s"]}  # later phases continue the axes
        for k, val in part.items():
            if isinstance(val, list):
                log.setdefault(k, []).extend(v + offset.get(k, 0) for v in val)
        steps_done += phase.settings.steps
        log["wall_s"] = round(log["wall_s"] + part["wall_s"], 1)
        log["phase_ends"].append(steps_done)
    quality = evaluate(vae, n=eval_clips)
    record = {"phases": [{"name": p.name, "frames": p.frames, "crop": p.crop, **attrs.asdict(p.settings)}
                         for p in phases],
              "settings": attrs.asdict(phases[0].settings), "machine": training.machine(), "wall_s": log["wall_s"],
              "normalisations": norms, "eval": quality,
              "command": "accelframe world train vae " + " ".join(f"--{p.name}-steps {p.settings.steps}"
                                                              for p in phases) + f" --seed {seed}"}
    training.save(path, vae.state_dict(), config=attrs.asdict(vae.config), training=record, log=log)
    return record


__all__ = ["DEFAULTS", "PHASES", "Phase", "chunk_local", "decode_train", "encode_train", "evaluate",
           "fold_normalisation", "train"]
