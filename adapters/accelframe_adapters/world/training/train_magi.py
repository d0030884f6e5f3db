"""Train the world's MAGI-1 model on the world VAE's latents (the Wan-family models' data).

Data: the training-split clips of ``train_dit`` (rendered, encoded once by the world VAE), their
first 24 latent frames: 4 chunks of 6. Objective in MAGI-1's convention: per chunk a time ``t`` in
[0, 1] (1 clean), ``x_t = t x0 + (1 - t) ε``, the network predicts ``v = x0 - ε``; the loss is the
mean squared error over the chunks with ``t < 1`` (a clean chunk is context only), weighted
``1 + OBJECT_WEIGHT`` on the shape's latent footprint as for the Wan world models.

Per-chunk times, one pattern per clip, shaped like what the staged window feeds the model:

- 50 %: *staged*: levels drawn independently and sorted so older chunks are cleaner (the window);
  with probability one half the chunks before a random one are clean (context);
- 25 %: an independent level per chunk;
- 25 %: one level for every chunk.

Levels are drawn on MAGI's grid shape: ``t = u² / (3 - 2 u²)`` with ``u`` uniform, so training spends
its steps where the loop does. Each chunk attends to a band of chunks ending with itself, its length
drawn from 2 .. 5 (the loop's [5, 4, 3, 2] by stage), or to all earlier chunks. One clip in ten drops
its caption (the model's null caption and ``text=False``), so the loop's guidance has its
unconditional passes; the first chunk of a clip always has RoPE time 0, what the guidance's
context-free pass uses.

As for the Wan world models, a **short first phase** (``short_steps``) trains on the first chunk
alone (6 latent frames, a quarter of a clip's tokens): the start of a clip, where the shape must
appear in the right colour from pure noise, gets most of the early steps at a fraction of their cost.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs
import torch


from accelframe_adapters.magi.dit import MagiDiT
from accelframe_adapters.world import magi_model
from accelframe_adapters.world.training import common as training
from accelframe_adapters.world.models import load_text, load_vae
from accelframe_adapters.world.training.train_dit import EMA, OBJECT_WEIGHT, WeightAverage, build_dataset, object_masks

# the shipped model's run (2026-12-03): 8000 steps, the first 4000 on the first chunk alone
DEFAULTS = training.TrainSettings(steps=8000, batch=8, lr=1e-3, seed=4, warmup=100, log_every=25)
SHORT_STEPS = 4000
SHIFT = 3.0


def chunk_times(b: int, chunks: int, g: torch.Generator) -> torch.Tensor:
    """Per-chunk MAGI times ``[b, chunks]`` in [0, 1] (see the module docstring)."""
    def draw(*shape: int) -> torch.Tensor:
        u = torch.rand(shape, generator=g) ** 2
        return u / (SHIFT - (SHIFT - 1.0) * u)

    out = torch.empty(b, chunks)
    kind = torch.rand(b, generator=g)
    for i in range(b):
        if kind[i] < 0.5:
            lv = draw(chunks).sort(descending=True).values  # older (earlier) chunks cleaner
            if torch.rand(1, generator=g) < 0.5:
                cut = int(torch.randint(0, chunks, (1,), generator=g))
                lv[:cut] = 1.0
            out[i] = lv
        elif kind[i] < 0.75:
            out[i] = draw(chunks)
        else:
            out[i] = draw(1).expand(chunks)
    return out


def band_ranges(chunks: int, g: torch.Generator) -> list[tuple[int, int]]:
    """Per chunk the range it attends to: a band of 2 .. 5 chunks ending with itself, or all before."""
    n = int(torch.randint(2, 7, (1,), generator=g))  # 6: every earlier chunk
    return [(0 if n == 6 else max(0, j + 1 - n), j + 1) for j in range(chunks)]


def train(out: str | Path, *, vae: str | Path, text: str | Path, clips_n: int = 1000,
          settings: training.TrainSettings | None = None, data: str | Path | None = None, force: bool = False,
          init: str | Path | None = None, short_steps: int | None = None, quiet: bool = False) -> dict[str, Any]:
    """Train the world MAGI model and write it (with its config and record) to ``out``; ``init``
    continues from the weights of an earlier run of the same config (its record is kept). The first
    ``short_steps`` (default ``SHORT_STEPS``) see only the first chunk."""
    settings = settings or DEFAULTS
    short_steps = SHORT_STEPS if short_steps is None else short_steps
    training.at_least("world train magi", "short_steps", short_steps, 0)
    training.at_least("world train magi", "clips", clips_n, 1)
    path = training.check_out(out, force)
    training.check_data(data)
    cfg = magi_model.config()
    # the network (and --init's weights in it) before the data: a bad --init is refused before any clip
    # is encoded (the steps draw only from their own generator: the order leaves the run's bits alone)
    torch.manual_seed(settings.seed)
    dit = MagiDiT(cfg)
    init_record = None if init is None else training.load_init(
        dit, attrs.asdict(cfg), init, owner="world train magi", what="the world MAGI DiT")
    vae_model = load_vae(vae)
    enc = load_text(text, cfg.caption_channels, cfg.caption_max_length)
    ds = training.encoded_clips(data, force, clips_n, vae,
                                build=lambda: build_dataset(vae_model, clips_n, seed=1234, quiet=quiet))
    frames = magi_model.LATENT_FRAMES
    latents = ds["latents"][:, :frames]  # [N, F, z, h, w]
    masks = object_masks(ds["prompts"], ds["seeds"], ds["latents"].shape[1], tuple(latents.shape[-2:]))[:, :frames]
    with torch.no_grad():
        states = enc(ds["prompts"])  # [N, L, Cc]

    dit.train()
    g = torch.Generator().manual_seed(settings.seed)
    full_mask = torch.ones(settings.batch, cfg.caption_max_length, dtype=torch.bool)

    def step(i: int) -> dict[str, float]:
        idx = torch.randint(0, latents.shape[0], (settings.batch,), generator=g)
        f = cfg.chunk_width if i < short_steps else frames
        chunks = f // cfg.chunk_width
        x0 = latents[idx, :f]  # [B, f, z, h, w]
        weight = 1.0 + OBJECT_WEIGHT * masks[idx, :f]  # [B, f, h, w]
        b = x0.shape[0]
        t = chunk_times(b, chunks, g)  # [B, n]
        tf = t.repeat_interleave(cfg.chunk_width, dim=1).view(b, f, 1, 1, 1)  # [B, f, 1, 1, 1]
        eps = torch.randn(x0.shape, generator=g)
        xt = tf * x0 + (1.0 - tf) * eps
        drop = bool(torch.rand(1, generator=g) < 0.1)
        if drop:
            cap, mask = dit.null_caption(b)
        else:
            cap, mask = states[idx], full_mask
        pred = dit(xt.permute(0, 2, 1, 3, 4), t, cap, mask, kv_ranges=band_ranges(chunks, g),
                   text=not drop)  # [B, z, F, h, w]
        sq = (pred.permute(0, 2, 1, 3, 4) - (x0 - eps)).pow(2).mean(dim=2)  # [B, F, h, w]
        err = (sq * weight).sum(dim=(2, 3)) / weight.sum(dim=(2, 3))  # [B, f]
        w = (tf.view(b, f) < 1.0).float()
        loss = (err * w).sum() / w.sum().clamp_min(1.0)
        loss.backward()
        return {"loss": loss.item()}

    ema = WeightAverage(dit, EMA)
    log = training.run_loop("magi", settings, list(dit.parameters()), step, quiet=quiet, after_step=ema.update)
    dit.eval()
    record = {"settings": attrs.asdict(settings), "clips": clips_n, "latent_frames": frames, "ema": EMA,
              "short_steps": short_steps, "short_frames": cfg.chunk_width,
              **({"init": init_record} if init_record is not None else {}),
              "object_weight": OBJECT_WEIGHT, "machine": training.machine(), "wall_s": log["wall_s"],
              "parameters": sum(p.numel() for p in dit.parameters()),
              "command": f"accelframe world train magi --steps {settings.steps} --seed {settings.seed} "
                         f"--clips {clips_n} --short-steps {short_steps}"
                         + (f" --lr {settings.lr:g} --init {Path(init).name}" if init else "")}
    # stored in float16 (MAGI-1 ships 16-bit weights): the world's weights stay within their 20 MB
    record["stored_dtype"] = "float16"
    training.save(path, ema.state_dict(), config=attrs.asdict(cfg), training=record, log=log, dtype=torch.float16)
    return record


__all__ = ["DEFAULTS", "SHORT_STEPS", "band_ranges", "chunk_times", "train"]
