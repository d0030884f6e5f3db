"""``accelframe world probe``: does a world DiT read the prompt? Its x0 estimate of block 0, per noise level.

Prompt adherence needs the model to draw, from the prompt alone, the named colour where the shape
is. This probe asks that directly, without a sampling loop in the way. For ``prompts`` scenes and
each noise level ``s``:

1. render the clip's first block (pixel frames 0 .. 8) and encode it with the world VAE:
   ``x0: [B, z, 3, h, w]``;
2. noise it, ``x_s = (1 - s) x0 + s eps``, every frame at ``s`` (block 0 has no context), and read the
   DiT's estimate ``x0_hat = x_s - s v`` (the flow convention ``v = eps - x0``);
3. decode ``x0_hat`` and take pixel frame 4: the mean colour where the true shape covers a pixel
   fully (``coverage > 0.9``) and where it covers none (the background);
4. a colour is *right* when its nearest world colour is the named one.

Reported per level: ``colour_right`` and ``background_right`` (fractions of scenes) and
``colour_distance`` (mean RGB distance of the shape's mean colour from the named colour; the
rendered truth gives 0). At ``s = 1`` the estimate is what the model believes the prompt alone
implies, which is what a few-step loop starts from.
"""

from __future__ import annotations

import random
from typing import Any, Callable, Sequence

import torch

from accelframe.errors import ConfigError
from accelframe_adapters.wan.vae import pixel_frames
from accelframe_adapters.world import clips
from accelframe_adapters.world.quality import nearest_colour
from accelframe_adapters.world.models import CAUSAL_BLOCK

LEVELS = (1.0, 0.9, 0.8, 0.6, 0.4)
BLOCK_PIXELS = pixel_frames(CAUSAL_BLOCK)  # 9 pixel frames make the first latent block
FRAME = 4  # the pixel frame read, inside block 0


def shape_mask(scene: clips.Scene, seed: int, frame: int = FRAME) -> torch.Tensor:
    """Pixels fully covered by the scene's shape at ``frame``: ``[H, W]`` bool."""
    return clips.shape_coverage(scene, seed, span=(frame, frame + 1))[0] > 0.9


def probe_scenes(prompts: int, seed: int, split: str = "eval") -> tuple[list[clips.Scene], list[int]]:
    """The probed scenes and their render seeds (the same for the same arguments)."""
    scenes = clips.sample_scenes(prompts, seed, split=split)
    rng = random.Random(seed)
    return scenes, [rng.randrange(2**31) for _ in scenes]


@torch.no_grad()
def first_block(vae: Any, scenes: Sequence[clips.Scene], seeds: Sequence[int]) -> torch.Tensor:
    """The rendered first blocks, encoded: ``[B, z, 3, h, w]``."""
    from accelframe_adapters.world.training.train_dit import encode_chunks

    video = torch.stack([clips.render(s, sd, span=(0, BLOCK_PIXELS)) for s, sd in zip(scenes, seeds)])
    return encode_chunks(vae, video.permute(0, 2, 1, 3, 4) * 2.0 - 1.0)  # [B, z, 3, h, w]


@torch.no_grad()
def binding(dit: Callable[..., torch.Tensor], vae: Any, encode_text: Callable[[list[str]], torch.Tensor], *,
            prompts: int = 16, seed: int = 7000, split: str = "eval",
            levels: Sequence[float] = LEVELS) -> dict[str, Any]:
    """The probe (module docstring). ``dit(x [B, z, F, h, w], t [B, F], context, causal_block=3)``
    returns the flow, as :class:`~accelframe_adapters.wan.dit.WanDiT` does."""
    from accelframe_adapters.world.training.common import at_least

    at_least("world probe", "prompts", prompts, 1)
    at_least("world probe", "seed", seed, 0)
    bad = [s for s in levels if not 0.0 < float(s) <= 1.0]
    if bad:
        raise ConfigError("world probe", "levels", bad, "noise levels in (0, 1]")
    scenes, seeds = probe_scenes(prompts, seed, split)
    x0 = first_block(vae, scenes, seeds)  # [B, z, 3, h, w]
    ctx = encode_text([s.prompt for s in scenes])  # [B, L, text_dim]
    masks = [shape_mask(s, sd) for s, sd in zip(scenes, seeds)]
    g = torch.Generator().manual_seed(seed)
    out: dict[str, Any] = {"prompts": prompts, "split": split, "frame": FRAME, "levels": []}
    for s in levels:
        eps = torch.randn(x0.shape, generator=g)
        xs = (1.0 - s) * x0 + s * eps
        t = torch.full((len(scenes), x0.shape[2]), 1000.0 * s)  # [B, F] Wan timesteps
        est = xs - s * dit(xs, t, ctx, causal_block=CAUSAL_BLOCK)  # [B, z, 3, h, w]
        pix = ((vae.decode(est) + 1.0) / 2.0).clamp(0.0, 1.0)[:, :, FRAME]  # [B, 3, H, W]
        right = bg_right = 0
        dist = 0.0
        for img, m, sc in zip(pix, masks, scenes):
            shape_rgb, bg_rgb = img[:, m].mean(1), img[:, ~m].mean(1)  # [3], [3]
            right += nearest_colour(shape_rgb) == sc.colour
            bg_right += nearest_colour(bg_rgb) == sc.background
            dist += float((shape_rgb - torch.tensor(clips.COLOURS[sc.colour])).norm())
        n = len(scenes)
        out["levels"].append({"sigma": float(s), "colour_right": right / n, "background_right": bg_right / n,
                              "colour_distance": round(dist / n, 4)})
    return out


def format_table(doc: dict[str, Any]) -> str:
    """The probe's result as a markdown table."""
    rows = ["| noise level | shape colour right | background right | shape colour distance |", "|---|---|---|---|"]
    for lv in doc["levels"]:
        rows.append(f"| {lv['sigma']:g} | {lv['colour_right']:.2f} | {lv['background_right']:.2f} | "
                    f"{lv['colour_distance']:.3f} |")
    return "\n".join(rows)


__all__ = ["BLOCK_PIXELS", "FRAME", "LEVELS", "binding", "first_block", "format_table", "probe_scenes",
           "shape_mask"]
