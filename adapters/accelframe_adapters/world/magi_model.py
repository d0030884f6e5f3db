"""The embedded world's MAGI-1 model: its config, loop defaults and shipped weights.

A :class:`~accelframe_adapters.magi.dit.MagiDiT` in a small size, trained on the world's clips
(``world/training/train_magi.py``) to denoise chunks of 6 latent frames in MAGI-1's time
convention, with the world's causal Wan VAE and frozen word encoder (the same data and quality
measure as the Wan-family world models).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from accelframe.errors import CheckpointError
from accelframe_adapters import checkpoints as ck
from accelframe_adapters.magi.dit import MagiDiT, MagiDiTConfig
from accelframe_adapters.world.models import (WEIGHTS, TEXT_DIM, TEXT_LEN, Z_DIM, config_from_metadata, load_text,
                                              load_vae, weights_path)

FILE = "world-magi.safetensors"
CHUNK = 6  # latent frames per chunk, MAGI-1's
LATENT_FRAMES = 24  # 4 chunks: what the model was trained on (RoPE positions 0 .. 23; 93 pixel frames)
LOOP_DEFAULTS: dict[str, Any] = {}  # the world model runs MAGI-1's released loop settings
SPATIAL_GRID = (4, 4)  # tokens of the VAE's 16 x 16 latents at patch 4: the spatial embedding's grid


# Width 192 as the Wan world target: a token carries a 4 x 4 patch of 8 channels (128 values) and a
# velocity-predicting DiT must pass the noise through it (world.md measured width 96 too narrow).
def config() -> MagiDiTConfig:
    return MagiDiTConfig.world(hidden_size=192, num_attention_heads=4, num_query_groups=2, kv_channels=48,
                               ffn_hidden_size=384, num_layers=4, in_channels=Z_DIM, out_channels=Z_DIM,
                               caption_channels=TEXT_DIM, caption_max_length=TEXT_LEN, chunk_width=CHUNK,
                               spatial_grid=SPATIAL_GRID)


def path() -> Path:
    return WEIGHTS / FILE


def load(*, device: torch.device | str = "cpu") -> tuple[MagiDiT, Any, Any]:
    """(the trained MAGI DiT, the world VAE, the world word encoder)."""
    p = path()
    if not p.exists():
        raise CheckpointError(str(p), "is missing: the world's MAGI model was not shipped with this install")
    cfg = config_from_metadata(MagiDiTConfig, p, default=config())
    with torch.device("meta"):
        dit = MagiDiT(cfg)
    dit = dit.to_empty(device=device)
    ck.fit(dit, ck.read_tensors(p), str(p), what="the world MAGI DiT")
    vae = load_vae(weights_path("vae")).to(device).eval()
    text = load_text(weights_path("text"), cfg.caption_channels, cfg.caption_max_length).to(device)
    return dit.eval(), vae, text


__all__ = ["CHUNK", "FILE", "LATENT_FRAMES", "LOOP_DEFAULTS", "config", "load", "path"]
