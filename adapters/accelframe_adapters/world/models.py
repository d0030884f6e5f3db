"""The embedded world's models: their configs, where their shipped weights are, and how a trained
file's config is read back (what the adapters load at run time; the trainers write these files).

All of them are the real architectures in tiny sizes: the Wan 2.1 causal VAE, the Wan 2.1 DiT for the
target and the drafter (one set of weights serves the Self-Forcing / Krea block loops and the
SkyReels-V2 staircase: it was trained with independent per-frame noise levels), the word-level text
encoder, and a prompt-conditioned frame reward (:mod:`accelframe_adapters.world.reward`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from accelframe.errors import CheckpointError
from accelframe_adapters import checkpoints as ck
from accelframe_adapters.wan.dit import WanDiT, WanDiTConfig
from accelframe_adapters.wan.text import WordEncoder
from accelframe_adapters.wan.vae import WanVAE, WanVAEConfig

WEIGHTS = Path(__file__).parent / "weights"
FILES = {
    "vae": "world-vae.safetensors",
    "text": "world-text.safetensors",
    "target": "world-target.safetensors",
    "drafter": "world-drafter.safetensors",
    "reward": "world-reward.safetensors",
    "magi": "world-magi.safetensors",
    "decoder": "world-decoder.safetensors",
}

Z_DIM = 8
TEXT_DIM = 32
TEXT_LEN = 16
CAUSAL_BLOCK = 3  # latent frames per block (Self-Forcing's num_frame_per_block)
LATENT_FRAMES = 27  # 9 blocks: the length the DiTs were trained on (RoPE positions 0 .. 26)


def vae_config() -> WanVAEConfig:
    # 4x spatial compression (16 x 16 latents at 64 x 64): at 8x a VAE this small, trained this briefly,
    # loses the shapes (measured: presence 0 in 4 of 6 held-out clips); the DiTs patch 4 x 4
    return WanVAEConfig(base_dim=12, z_dim=Z_DIM, dim_mult=(1, 2, 2), temporal_downsample=(True, True),
                        num_res_blocks=1)


def tiny_decoder_config():
    """The world's tiny decoder (TAEHV's shape, :mod:`accelframe_adapters.wan.taehv`) for the VAE's
    latents: 4x in space (the VAE's), 4x in time; narrow stages (a block decodes in about a sixth of
    the VAE decoder's FLOPs; docs/world.md)."""
    from accelframe_adapters.wan.taehv import TinyDecoderConfig

    return TinyDecoderConfig(z_dim=Z_DIM, widths=(32, 24, 12, 8), space_upscale=(False, True, True),
                             time_upscale=(False, True, True))


# Both DiTs carry a learned spatial embedding over their 4 x 4 token grid (WanDiTConfig.spatial_grid, not
# in Wan): with RoPE alone a token cannot tell where in the frame it sits when its input is pure noise,
# so no estimate of the first block can place the shape (measured: docs/world.md).
SPATIAL_GRID = (4, 4)  # 64 x 64 pixels -> 16 x 16 latents -> 4 x 4 tokens of 4 x 4 latents


# A token carries a 4 x 4 patch of 8 channels (128 values). A velocity-predicting DiT must pass the
# noise through its tokens (v = eps - x0), so the width must exceed 128 (Wan 1.3B: 1536 against 64);
# at width 96 the measured x0 error at full noise was worse than predicting the background alone.
def target_config() -> WanDiTConfig:
    return WanDiTConfig(dim=192, ffn_dim=512, num_heads=4, num_layers=4, freq_dim=64, text_dim=TEXT_DIM,
                        text_len=TEXT_LEN, in_dim=Z_DIM, out_dim=Z_DIM, patch_size=(1, 4, 4),
                        spatial_grid=SPATIAL_GRID)


def drafter_config() -> WanDiTConfig:
    return WanDiTConfig(dim=160, ffn_dim=320, num_heads=4, num_layers=2, freq_dim=32, text_dim=TEXT_DIM,
                        text_len=TEXT_LEN, in_dim=Z_DIM, out_dim=Z_DIM, patch_size=(1, 4, 4),
                        spatial_grid=SPATIAL_GRID)


def weights_path(name: str) -> Path:
    """The shipped weights of ``name`` (vae, text, target, drafter, reward); a missing file raises."""
    p = WEIGHTS / FILES[name]
    if not p.exists():
        raise CheckpointError(str(p), f"the embedded world's {name} weights are not installed; train them "
                                      f"with 'accelframe world train {name}' (see docs/world.md)")
    return p


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The ``config`` / ``training`` JSON a trainer stored in a safetensors file (empty when absent)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as err:  # safetensors raises its own error types
        raise CheckpointError(str(path), f"not a readable safetensors file ({err})") from err
    out = {k: ck.parse_json(v, path, f"the {k!r} metadata")
           for k, v in meta.items() if k in ("config", "training")}
    for k, val in out.items():
        if not isinstance(val, dict):
            raise CheckpointError(str(path), f"the {k!r} metadata is a {type(val).__name__}, not a JSON object")
    return out


def config_from_metadata(cls: type, path: str | Path, default: Any = None) -> Any:
    """The config class ``cls`` built from a trained file's ``config`` metadata (``default`` when it
    has none, an error when ``default`` is None); fields the class does not take raise naming the file."""
    fields = read_metadata(path).get("config")
    if fields is None:
        if default is None:
            raise CheckpointError(str(path), "has no 'config' in its safetensors metadata (not a file "
                                             "written by a world trainer)")
        return default
    try:
        return cls(**fields)
    except (TypeError, ValueError) as err:  # ConfigError is a ValueError
        raise CheckpointError(str(path), f"its 'config' metadata is not a valid {cls.__name__} ({err})") from err


def load_vae(path: str | Path) -> WanVAE:
    """The world VAE from ``path``, in eval mode; a damaged or foreign file raises naming it."""
    vae = WanVAE(vae_config())
    ck.fit(vae, ck.read_tensors(path), str(path), what="the world VAE")
    return vae.eval()


def load_text(path: str | Path, text_dim: int, text_len: int) -> WordEncoder:
    """The world's word encoder from ``path``, in eval mode."""
    enc = WordEncoder(text_dim, text_len)
    ck.fit(enc, ck.read_tensors(path), str(path), what="the world word encoder")
    return enc.eval()


def load_decoder(path: str | Path | None = None):
    """The world's tiny decoder (shipped weights, or ``path``), in eval mode."""
    from accelframe_adapters.wan.taehv import TinyDecoder, TinyDecoderConfig

    path = path or weights_path("decoder")
    dec = TinyDecoder(config_from_metadata(TinyDecoderConfig, path, default=tiny_decoder_config()))
    ck.fit(dec, ck.read_tensors(path), str(path), what="the world tiny decoder")
    return dec.eval()


def load_dit(name: str, *, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> WanDiT:
    """The shipped ``target`` or ``drafter`` DiT; its config is read from the file's metadata."""
    path = weights_path(name)
    cfg = config_from_metadata(WanDiTConfig, path)
    with torch.device("meta"):
        dit = WanDiT(cfg)
    dit = dit.to(dtype).to_empty(device=device)
    ck.fit(dit, ck.read_tensors(path), str(path), what=f"the world {name} DiT")
    return dit.eval()


def load_scorer(*, device: str = "cpu", weights: str | None = None, text: str | None = None):
    """The world reward as a scorer ``(frames [B, T, 3, H, W] in [0, 1], prompts) -> [B, T]``."""
    from accelframe_adapters.world.reward import FrameReward, RewardConfig, WorldScorer

    path = weights or str(weights_path("reward"))
    cfg = config_from_metadata(RewardConfig, path, default=RewardConfig())
    model = FrameReward(cfg)
    ck.fit(model, ck.read_tensors(path), path, what="the world reward")
    enc = load_text(text or weights_path("text"), cfg.text_dim, cfg.text_len)
    return WorldScorer(model, enc, device=device)


__all__ = ["CAUSAL_BLOCK", "FILES", "LATENT_FRAMES", "SPATIAL_GRID", "TEXT_DIM", "TEXT_LEN", "WEIGHTS", "Z_DIM",
           "config_from_metadata", "drafter_config", "load_decoder", "load_dit", "load_scorer", "load_text", "load_vae",
           "read_metadata", "target_config", "tiny_decoder_config", "vae_config", "weights_path"]
