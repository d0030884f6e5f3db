"""The world's frame reward: ImageReward's shape in a tiny size.

ImageReward scores a (prompt, image) pair with BLIP: a ViT encodes the image, a text encoder whose
layers cross-attend to the image patches reads the prompt, and an MLP maps the first text token to
one number, trained with a pairwise ranking loss so that preferred images score higher. The world
reward keeps that shape:

- image: 8 x 8 patches of a 64 x 64 frame -> ``dim`` channels + learned positions -> ``layers``
  pre-norm transformer layers (``[B, 64, dim]``);
- text: the world's word encoder states (frozen), projected to ``dim``, behind a learned ``[ENC]``
  token; ``layers`` layers of self-attention, cross-attention to the image tokens and an MLP;
- head: LayerNorm and an MLP on the ``[ENC]`` token -> one score per frame.

After training the scores are standardised (an affine map folded into the last layer) so that the
training pairs' scores have mean 0 and spread 1, as ImageReward standardises its outputs.
:func:`scorer` wraps the network as an accelframe scorer: ``scorer(frames [B, T, 3, H, W] in [0, 1],
prompts) -> [B, T]``.
"""

from __future__ import annotations

from typing import Sequence

import attrs
import torch
import torch.nn.functional as F
from torch import nn

from accelframe import validators as v
from accelframe.errors import ConfigError
from accelframe_adapters.world.quality import check_scorer_input


@attrs.frozen(kw_only=True)
class RewardConfig:
    image_size: int = attrs.field(default=64, validator=v.number_in(8, 4096, integer=True))
    patch: int = attrs.field(default=8, validator=v.number_in(1, 256, integer=True))
    dim: int = attrs.field(default=64, validator=v.number_in(8, 4096, integer=True))
    heads: int = attrs.field(default=4, validator=v.number_in(1, 64, integer=True))
    layers: int = attrs.field(default=2, validator=v.number_in(1, 64, integer=True))
    text_dim: int = attrs.field(default=32, validator=v.number_in(1, 4096, integer=True))
    text_len: int = attrs.field(default=16, validator=v.number_in(1, 4096, integer=True))

    def __attrs_post_init__(self) -> None:
        if self.image_size % self.patch:
            raise ConfigError("RewardConfig", "patch", self.patch, f"a divisor of image_size = {self.image_size}")
        if self.dim % self.heads:
            raise ConfigError("RewardConfig", "heads", self.heads, f"a divisor of dim = {self.dim}")


class _Layer(nn.Module):
    """Pre-norm self-attention (+ optional cross-attention) + MLP."""

    def __init__(self, dim: int, heads: int, cross: bool) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.cross = cross
        if cross:
            self.norm2 = nn.LayerNorm(dim)
            self.cross_attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm3 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x: torch.Tensor, image: torch.Tensor | None = None,
                pad: torch.Tensor | None = None) -> torch.Tensor:
        h = self.norm1(x)
        x = x + self.attn(h, h, h, key_padding_mask=pad, need_weights=False)[0]
        if self.cross:
            h = self.norm2(x)
            x = x + self.cross_attn(h, image, image, need_weights=False)[0]
        return x + self.mlp(self.norm3(x))


class FrameReward(nn.Module):
    """``forward(frames [N, 3, H, W] in [0, 1], text [N, L, text_dim]) -> scores [N]``."""

    def __init__(self, cfg: RewardConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg = cfg or RewardConfig()
        n = (cfg.image_size // cfg.patch) ** 2
        self.patch_embed = nn.Conv2d(3, cfg.dim, cfg.patch, stride=cfg.patch)
        self.image_pos = nn.Parameter(torch.randn(1, n, cfg.dim) * 0.02)
        self.vision = nn.ModuleList(_Layer(cfg.dim, cfg.heads, cross=False) for _ in range(cfg.layers))
        self.vision_norm = nn.LayerNorm(cfg.dim)
        self.text_proj = nn.Linear(cfg.text_dim, cfg.dim)
        self.enc_token = nn.Parameter(torch.randn(1, 1, cfg.dim) * 0.02)
        self.text_pos = nn.Parameter(torch.randn(1, cfg.text_len + 1, cfg.dim) * 0.02)
        self.text = nn.ModuleList(_Layer(cfg.dim, cfg.heads, cross=True) for _ in range(cfg.layers))
        self.head = nn.Sequential(nn.LayerNorm(cfg.dim), nn.Linear(cfg.dim, cfg.dim), nn.GELU(),
                                  nn.Linear(cfg.dim, 1))

    def forward(self, frames: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        img = self.patch_embed(frames * 2.0 - 1.0).flatten(2).transpose(1, 2) + self.image_pos  # [N, P, D]
        for layer in self.vision:
            img = layer(img)
        img = self.vision_norm(img)
        pad = torch.cat([torch.zeros_like(text[:, :1, 0], dtype=torch.bool),
                         text.abs().sum(-1) == 0], dim=1)  # [N, 1 + L]: padding rows of the prompt
        tok = torch.cat([self.enc_token.expand(len(text), -1, -1), self.text_proj(text)], dim=1)
        tok = tok + self.text_pos  # [N, 1 + L, D]
        for layer in self.text:
            tok = layer(tok, img, pad)
        return self.head(tok[:, 0]).squeeze(-1)  # [N]


class WorldScorer:
    """A trained reward as an accelframe scorer: ``(frames [B, T, 3, H, W], prompts) -> [B, T]``."""

    def __init__(self, model: FrameReward, text, device: str | torch.device = "cpu", chunk: int = 256) -> None:
        self.model = model.to(device).eval()
        self.text = text
        self.device = torch.device(device)
        self.chunk = chunk

    @torch.no_grad()
    def __call__(self, frames: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        check_scorer_input("world-reward", frames, prompts)
        b, t = frames.shape[:2]
        size = self.model.cfg.image_size
        if frames.shape[-2:] != (size, size):
            raise ConfigError("world-reward", "frames", tuple(frames.shape),
                              f"frames of {size} x {size} pixels (the world's size)")
        states = self.text(list(prompts)).to(self.device)  # [B, L, text_dim]
        flat = frames.reshape(b * t, 3, size, size).to(self.device).float()
        text = states.repeat_interleave(t, dim=0)  # [B*T, L, text_dim]
        out = torch.cat([self.model(flat[i:i + self.chunk], text[i:i + self.chunk])
                         for i in range(0, b * t, self.chunk)])
        return out.view(b, t).cpu()


def blur(frames: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Gaussian blur of ``frames [N, 3, H, W]`` with a per-frame ``sigma [N]`` (pixels)."""
    radius = 6
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-x.view(1, -1) ** 2 / (2 * sigma.view(-1, 1) ** 2))  # [N, K]
    k = k / k.sum(1, keepdim=True)
    n, c, h, w = frames.shape
    y = F.pad(frames.reshape(1, n * c, h, w), (radius, radius, radius, radius), mode="replicate")
    kc = k.repeat_interleave(c, dim=0)  # [N*C, K]
    y = F.conv2d(y, kc.view(n * c, 1, 1, -1), groups=n * c)
    y = F.conv2d(y, kc.view(n * c, 1, -1, 1), groups=n * c)
    return y.view(n, c, h, w)


__all__ = ["FrameReward", "RewardConfig", "WorldScorer", "blur"]
