"""Train the world's tiny decoder (TAEHV's shape, :mod:`accelframe_adapters.wan.taehv`) on the world
VAE's latent space.

Why: decoding a block of 3 latent frames through the world's full causal VAE costs 2.83 GFLOP, the
target's whole block (4 guided steps and a commit) 1.5 GFLOP, so on the world the decoder, not the
target, dominates, the reverse of a real deployment (a 14B target against the same Wan VAE) and the
reason no block-level acceleration could pay on the world (issue 23). Real-time deployments decode
Wan latents with TAEHV; the world now has its own.

The VAE's encoder stays as it is (the DiTs were trained on its latents); only a decoder is trained.
Data: fresh training-split clips every step, 13 frames (4 latent frames: the first alone, then
three chunks of 4) at random points of full-length clips, cropped to 32 x 32 around the shape, as
the VAE was trained; encoded by the frozen world VAE. The latents get Gaussian noise of 0.1 times
their spread (the decoder must take the imperfect latents a DiT makes), and the loss is the VAE's:
``L1 + MSE`` on pixels in [-1, 1] against the rendered clip, pixels off the background weighed 5x.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs
import torch

from accelframe_adapters.wan.taehv import TinyDecoder
from accelframe_adapters.world import clips
from accelframe_adapters.world.models import load_vae, tiny_decoder_config, weights_path
from accelframe_adapters.world.training import common as training
from accelframe_adapters.world.training.train_vae import _crop_batch

DEFAULTS = training.TrainSettings(steps=1500, batch=8, lr=2e-3, seed=3, warmup=100, log_every=25)
FRAMES = 13  # pixel frames per training clip: 4 latent frames
CROP = 32


@torch.no_grad()
def evaluate(decoder: TinyDecoder, vae: Any, n: int = 16, seed: int = 10_000) -> dict[str, float]:
    """Reconstruction PSNR (dB) of full held-out clips through the VAE's encoder and this decoder, beside
    the VAE's own decoder, and their decode times per latent frame on this machine."""
    import time

    mse, ref, t_tiny, t_vae, frames = [], [], 0.0, 0.0, 0
    for i, scene in enumerate(clips.sample_scenes(n, seed, split="eval")):
        video = clips.render(scene, seed + i).permute(1, 0, 2, 3).unsqueeze(0) * 2 - 1  # [1, 3, T, H, W]
        lat = vae.encode(video)
        t0 = time.perf_counter()
        rec = decoder.decode(lat)
        t1 = time.perf_counter()
        full = vae.decode(lat)
        t2 = time.perf_counter()
        t_tiny, t_vae, frames = t_tiny + t1 - t0, t_vae + t2 - t1, frames + lat.shape[2]
        mse.append(float(((rec - video) / 2).pow(2).mean()))
        ref.append(float(((full - video) / 2).pow(2).mean()))

    def db(v: list[float]) -> float:
        return float(-10 * torch.log10(torch.tensor(v).mean()))

    return {"psnr_db": db(mse), "vae_psnr_db": db(ref), "ms_per_latent_frame": 1e3 * t_tiny / frames,
            "vae_ms_per_latent_frame": 1e3 * t_vae / frames}


def train(out: str | Path, *, vae: str | Path | None = None, settings: training.TrainSettings | None = None,
          init: str | Path | None = None, force: bool = False, quiet: bool = False,
          eval_clips: int = 16) -> dict[str, Any]:
    """Train the tiny decoder into ``out`` (see the module docstring)."""
    settings = settings or DEFAULTS
    path = training.check_out(out, force)
    cfg = tiny_decoder_config()
    torch.manual_seed(settings.seed)
    decoder = TinyDecoder(cfg)
    init_record = None if init is None else training.load_init(
        decoder, attrs.asdict(cfg), init, owner="world train decoder", what="the world tiny decoder")
    vae_path = Path(vae) if vae is not None else weights_path("vae")
    enc = load_vae(vae_path).requires_grad_(False)
    seeds = training.batches(settings.seed)
    decoder.train()

    def step(_: int) -> dict[str, float]:
        video = _crop_batch(next(seeds), settings.batch, CROP, FRAMES)  # [B, 3, T, h, w] in [-1, 1]
        with torch.no_grad():
            lat = enc.encode(video)  # [B, z, F, h/4, w/4], normalised
            lat = lat + 0.1 * lat.std() * torch.randn_like(lat)
        rec, _ = decoder.run(lat, [None] * len(decoder.mem_slots))
        rec = rec[:, :, cfg.temporal_ratio - 1:] * 2.0 - 1.0  # [B, 3, T, h, w]
        corner = video[:, :, :, :1, :1]
        weight = 1.0 + 4.0 * ((video - corner).abs().sum(1, keepdim=True) > 0.05).float()
        err = rec - video
        l1, l2 = (weight * err.abs()).mean(), (weight * err.pow(2)).mean()
        loss = l1 + l2
        loss.backward()
        return {"loss": loss.item(), "l1": l1.item()}

    log = training.run_loop("tiny decoder", settings, list(decoder.parameters()), step, quiet=quiet)
    decoder.eval()
    quality = evaluate(decoder, enc, n=eval_clips)
    record = {"settings": attrs.asdict(settings), "frames": FRAMES, "crop": CROP, "vae": vae_path.name,
              **({"init": init_record} if init_record is not None else {}), "eval": quality,
              "machine": training.machine(), "wall_s": log["wall_s"],
              "parameters": sum(p.numel() for p in decoder.parameters()),
              "command": f"accelframe world train decoder --steps {settings.steps} --seed {settings.seed}"}
    training.save(path, decoder.state_dict(), config=attrs.asdict(cfg), training=record, log=log)
    return record


__all__ = ["CROP", "DEFAULTS", "FRAMES", "evaluate", "train"]
