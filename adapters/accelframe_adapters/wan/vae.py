"""The causal Wan 2.1 video VAE (used by Wan2.1, Self-Forcing, Krea Realtime and SkyReels-V2), in one file.

Shapes. A video is ``[B, 3, T, H, W]`` in [-1, 1] with ``T = 1 + 4k`` frames; its latents are
``[B, 16, 1 + k, H / 8, W / 8]``. The first frame is coded alone (latent frame 0 <-> pixel frame 0) and
every later latent frame stands for the next 4 pixel frames.

Causality. Every 3-D convolution looks only at the present and the past in time, so a video can be coded
piece by piece: each causal conv keeps the last two frames of its input seen so far (its *past*) in a
cache entry and reads them instead of zero padding on the next call. The network runs one piece at a time
(encoder: the first frame, then 4 frames per piece; decoder: one latent frame per piece), so streaming
(:meth:`WanVAE.decode_chunk`) and decoding all at once (:meth:`WanVAE.decode`) do exactly the same float
operations and agree bit for bit. Cache tensors are never written in place, so copying the cache's list
is a snapshot (:meth:`WanVAE.snapshot` / :meth:`WanVAE.restore`).

Temporal resampling, as in Wan. Downsampling by 2 in time keeps the stream's first frame as it is and then
turns each pair of frames (with the frame before them) into one. Upsampling by 2 in time leaves the
stream's first frame single and doubles every later one; the doubling conv of the second frame sees zeros,
not the first frame, as its past (the original marks this with a ``'Rep'`` cache entry; we store zeros).

Latent normalisation. The posterior mean ``mu`` has per-channel statistics far from N(0, 1); Wan's
transformer works on ``(mu - mean) / std`` with Wan's 16-channel ``mean`` and ``std``
(:data:`WAN21_LATENTS_MEAN`, :data:`WAN21_LATENTS_STD`; 0 and 1 for other ``z_dim``). The original Wan2.1
code, which Self-Forcing and SkyReels-V2 reuse, applies it inside the VAE's encode and decode; diffusers
keeps ``AutoencoderKLWan`` un-normalised and each pipeline applies the same formulas from
``vae.config.latents_mean`` / ``latents_std``. We follow the original: :meth:`WanVAE.encode` returns
normalised latents and :meth:`WanVAE.decode` takes them, so latents here are the transformer's latents.
(The original writes ``(mu - mean) * (1 / std)`` and ``z / (1 / std) + mean``; we write
``(mu - mean) / std`` and ``z * std + mean``, equal up to float rounding.) Encoding is deterministic: the
posterior mean, the log-variance is dropped. Decoded videos are clamped to [-1, 1] as in the original.

Parameter names follow the original ``wan/modules/vae.py`` (``encoder.conv1.weight``,
``encoder.downsamples.0.residual.0.gamma``, ``conv1.weight``, ``decoder.head.2.weight``, ...), so the
official ``Wan2.1_VAE.pth`` loads as it is; :func:`diffusers_to_wan` / :func:`wan_to_diffusers` map the
names of diffusers' ``AutoencoderKLWan`` (``quant_conv``, ``encoder.down_blocks.0.norm1.gamma``,
``decoder.up_blocks.0.resnets.0.conv1.weight``, ...). :func:`load_wan_vae` reads either layout.
"""

from __future__ import annotations

import itertools
import re
from pathlib import Path
from typing import Any, Mapping

import attrs
import torch
import torch.nn.functional as F
from torch import nn

from accelframe import validators as v
from accelframe.errors import CheckpointError, ConfigError
from accelframe_adapters.checkpoints import StateDict, check_sizing, fit, read_tensors, rename

CACHE_FRAMES = 2  # past input frames a causal conv of temporal kernel 3 keeps between calls

# On the CPU, torch runs a 3-D conv of these sizes on its slow reference kernel (``slow_conv3d``): 60 % of
# a world clip's decode. The fast path writes it as one 2-D conv over time windows, the kt frames of each
# window stacked along the channels (same sums, other order: equal up to float rounding); measured
# 2x to 4x faster per conv here. ``FAST_CPU = False`` restores the plain path.
FAST_CPU = True

# Wan 2.1's per-channel statistics of the posterior mean (z_dim = 16)
WAN21_LATENTS_MEAN = (
    -0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
    0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921,
)
WAN21_LATENTS_STD = (
    2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
    3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160,
)


# -----------------------------------------------------------------------------
# config and frame counts


def _as_tuple(value: Any) -> Any:
    return tuple(value) if isinstance(value, (list, tuple)) else value


def _tuple_of(kind: type, allowed: str, *, nonempty: bool = False, positive: bool = False) -> v.Validator:
    def check(inst: Any, attribute: Any, value: Any) -> None:
        ok = isinstance(value, tuple) and (len(value) > 0 or not nonempty) and all(
            isinstance(x, kind) and (kind is bool or not isinstance(x, bool)) and (not positive or x > 0)
            for x in value)
        if not ok:
            raise ConfigError(type(inst).__name__, attribute.name, value, allowed)

    return check


@attrs.frozen(kw_only=True)
class WanVAEConfig:
    """Sizes of the Wan 2.1 VAE. The defaults are the released model (8x spatial, 4x temporal)."""

    base_dim: int = attrs.field(default=96, validator=v.number_in(1, 4096, integer=True))
    z_dim: int = attrs.field(default=16, validator=v.number_in(1, 1024, integer=True))
    dim_mult: tuple[int, ...] = attrs.field(
        default=(1, 2, 4, 4), converter=_as_tuple,
        validator=_tuple_of(int, "a non-empty tuple of positive ints", nonempty=True, positive=True))
    num_res_blocks: int = attrs.field(default=2, validator=v.number_in(1, 64, integer=True))
    attn_scales: tuple[float, ...] = attrs.field(
        default=(), converter=_as_tuple, validator=_tuple_of((int, float), "a tuple of numbers"))
    temporal_downsample: tuple[bool, ...] = attrs.field(
        default=(False, True, True), converter=_as_tuple, validator=_tuple_of(bool, "a tuple of bools"))
    dropout: float = attrs.field(default=0.0, validator=v.number_in(0.0, 1.0, hi_open=True))

    def __attrs_post_init__(self) -> None:
        if len(self.temporal_downsample) != len(self.dim_mult) - 1:
            raise ConfigError(type(self).__name__, "temporal_downsample", self.temporal_downsample,
                              f"one bool per downsampling, {len(self.dim_mult) - 1} for dim_mult={self.dim_mult}")

    @property
    def spatial_ratio(self) -> int:
        return 2 ** (len(self.dim_mult) - 1)

    @property
    def temporal_ratio(self) -> int:
        return 2 ** sum(self.temporal_downsample)

    @property
    def latents_mean(self) -> tuple[float, ...]:
        return WAN21_LATENTS_MEAN if self.z_dim == 16 else (0.0,) * self.z_dim

    @property
    def latents_std(self) -> tuple[float, ...]:
        return WAN21_LATENTS_STD if self.z_dim == 16 else (1.0,) * self.z_dim

    @classmethod
    def tiny(cls) -> WanVAEConfig:
        """A 0.2M-parameter VAE with the real layout (8x / 4x, 16 latent channels): fast on a CPU, for tests."""
        return cls(base_dim=8, dim_mult=(1, 2, 2, 2), num_res_blocks=1)

    @classmethod
    def from_state_dict(cls, sd: Mapping[str, torch.Tensor], *, path: str = "state dict") -> WanVAEConfig:
        """The config of a state dict in the original Wan naming, read off its tensor shapes."""
        for key in ("encoder.conv1.weight", "conv2.weight"):
            if key not in sd:
                raise CheckpointError(path, f"not a Wan 2.1 VAE: it has no {key!r} tensor")
        check_sizing(path, sd, ("encoder.conv1.weight", "conv2.weight"), what="the VAE's sizes")
        base_dim, z_dim = sd["encoder.conv1.weight"].shape[0], sd["conv2.weight"].shape[0]
        # walk the encoder's flat block list: residual blocks, attention, and a resample ending each stage
        dim_mult, temporal, scales, res_in_stage, width, scale = [], [], [], 0, None, 1.0
        for n in itertools.count():
            p = f"encoder.downsamples.{n}."
            if p + "residual.2.weight" in sd:
                width, res_in_stage = sd[p + "residual.2.weight"].shape[0], res_in_stage + 1
            elif p + "to_qkv.weight" in sd:
                if scale not in scales:
                    scales.append(scale)
            elif p + "resample.1.weight" in sd and width is not None:
                dim_mult.append(width // base_dim)
                temporal.append(p + "time_conv.weight" in sd)
                res_in_stage, scale = 0, scale / 2
            else:
                break
        if width is None or res_in_stage == 0:
            raise CheckpointError(path, "not a Wan 2.1 VAE: no residual blocks under 'encoder.downsamples'")
        dim_mult.append(width // base_dim)
        return cls(base_dim=base_dim, z_dim=z_dim, dim_mult=tuple(dim_mult), num_res_blocks=res_in_stage,
                   attn_scales=tuple(scales), temporal_downsample=tuple(temporal))


def _frame_counts_text(n: Any, r: int) -> str:
    """What a valid pixel frame count is, with the ones nearest to ``n``."""
    rule = f"1 + {r}k frames for an integer k >= 0: 1, {1 + r}, {1 + 2 * r}, {1 + 3 * r}, ..."
    if not isinstance(n, int) or isinstance(n, bool):
        return rule
    if n < 1:
        return f"{rule} (nearest: 1)"
    below = 1 + (n - 1) // r * r
    return f"{rule} (nearest: {below} or {below + r})"


def latent_frames(pixel_frames: int, *, temporal_ratio: int = 4) -> int:
    """Latent frames of a video of ``pixel_frames`` frames; ConfigError unless it is ``1 + 4k``."""
    n, r = pixel_frames, temporal_ratio
    if not isinstance(n, int) or isinstance(n, bool) or n < 1 or (n - 1) % r:
        raise ConfigError("WanVAE", "pixel_frames", n, _frame_counts_text(n, r))
    return 1 + (n - 1) // r


def pixel_frames(latent_frames: int, *, temporal_ratio: int = 4) -> int:
    """Pixel frames that ``latent_frames`` latent frames decode to: the first 1, every later one 4."""
    if not isinstance(latent_frames, int) or isinstance(latent_frames, bool) or latent_frames < 1:
        raise ConfigError("WanVAE", "latent_frames", latent_frames, "an integer >= 1")
    return 1 + temporal_ratio * (latent_frames - 1)


def valid_pixel_frames(upto: int, *, temporal_ratio: int = 4) -> list[int]:
    """Every pixel frame count up to ``upto`` that the VAE encodes and decodes: 1, 5, 9, ..."""
    return list(range(1, upto + 1, temporal_ratio))


# -----------------------------------------------------------------------------
# building blocks


class CausalConv3d(nn.Conv3d):
    """A 3-D conv that pads time only in front (zeros, or the cached past) so no output sees the future.

    Called with ``cache`` (a list with one entry per causal conv of the encoder or decoder), it takes
    the past input frames from ``cache[self.slot]`` instead of zeros and stores the new last frames there.
    """

    def __init__(self, c_in: int, c_out: int, kernel: int | tuple[int, int, int], *,
                 stride: int | tuple[int, int, int] = 1, padding: int | tuple[int, int, int] = 0) -> None:
        super().__init__(c_in, c_out, kernel, stride=stride)  # no built-in padding: we pad ourselves
        pt, ph, pw = (padding,) * 3 if isinstance(padding, int) else padding
        self.pad = (pw, pw, ph, ph, 2 * pt, 0)  # F.pad order: W left/right, H top/bottom, T front/back
        self.slot = -1  # this conv's cache entry, numbered by the encoder / decoder that holds it

    def forward(self, x: torch.Tensor, cache: list | None = None) -> torch.Tensor:
        # x: [B, C, T, H, W]
        pad = list(self.pad)
        if cache is not None:
            assert self.slot >= 0 and self.pad[4] == CACHE_FRAMES, "only numbered temporal-kernel-3 convs cache"
            past = cache[self.slot]
            if past is not None:
                x = torch.cat([past, x], dim=2)  # [B, C, P + T, H, W]
                pad[4] -= past.shape[2]
            cache[self.slot] = x[:, :, -CACHE_FRAMES:].clone()  # [B, C, <= 2, H, W]
        x = F.pad(x, pad)
        if FAST_CPU and x.device.type == "cpu":
            return _windowed_conv(x, self.weight, self.bias, self.stride)
        return super().forward(x)  # [B, C_out, T, H, W] for stride 1


def _windowed_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                   stride: tuple[int, int, int]) -> torch.Tensor:
    """``F.conv3d(x, weight, bias, stride)`` (no padding, no dilation) as one 2-D conv."""
    b, c, _, _, _ = x.shape  # [B, C, T, H, W], already padded
    o, _, kt, kh, kw = weight.shape
    win = x.unfold(2, kt, stride[0])  # [B, C, T_out, H, W, kt]
    t_out = win.shape[2]
    win = win.permute(0, 2, 5, 1, 3, 4).reshape(b * t_out, kt * c, *x.shape[-2:])  # [B*T_out, kt*C, H, W]
    w2 = weight.permute(0, 2, 1, 3, 4).reshape(o, kt * c, kh, kw)  # [O, kt*C, kh, kw], window-major
    y = F.conv2d(win, w2, bias, stride=stride[1:])  # [B*T_out, O, H', W']
    return y.view(b, t_out, o, *y.shape[-2:]).permute(0, 2, 1, 3, 4)  # [B, O, T_out, H', W']


class RMSNorm(nn.Module):
    """Scale each position's channel vector to norm sqrt(C), then by a learned per-channel gamma."""

    def __init__(self, dim: int, *, images: bool) -> None:
        super().__init__()
        self.scale = dim**0.5
        # broadcast over [H, W] of [N, C, H, W] images or over [T, H, W] of [B, C, T, H, W] videos
        self.gamma = nn.Parameter(torch.ones(dim, 1, 1) if images else torch.ones(dim, 1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        low = x.dtype in (torch.float16, torch.bfloat16)  # normalise half precision in float32
        y = x.float() if low else x
        # F.normalize(y, dim=1) reduces along a strided dim and was 16x slower here; same formula
        unit = (y * torch.rsqrt((y * y).sum(1, keepdim=True).clamp_min(1e-24))).to(x.dtype)
        return unit * self.scale * self.gamma


class ResidualBlock(nn.Module):
    """Two (RMSNorm, SiLU, causal 3x3x3 conv) steps plus a shortcut (a 1x1x1 conv when widths differ)."""

    def __init__(self, c_in: int, c_out: int, dropout: float) -> None:
        super().__init__()
        self.residual = nn.Sequential(  # indices matter: they are the checkpoint's key names
            RMSNorm(c_in, images=False), nn.SiLU(), CausalConv3d(c_in, c_out, 3, padding=1),
            RMSNorm(c_out, images=False), nn.SiLU(), nn.Dropout(dropout), CausalConv3d(c_out, c_out, 3, padding=1),
        )
        self.shortcut = CausalConv3d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor, cache: list) -> torch.Tensor:
        # x: [B, C_in, T, H, W] -> [B, C_out, T, H, W]
        h = self.shortcut(x)
        for layer in self.residual:
            x = layer(x, cache) if isinstance(layer, CausalConv3d) else layer(x)
        return x + h


class AttentionBlock(nn.Module):
    """Single-head self-attention among the H*W positions of each frame (frames never mix: causal)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = RMSNorm(dim, images=True)
        self.to_qkv = nn.Conv2d(dim, 3 * dim, 1)
        self.proj = nn.Conv2d(dim, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, t, h, w = x.shape
        y = x.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w)  # [B*T, C, H, W]
        qkv = self.to_qkv(self.norm(y))  # [B*T, 3C, H, W]
        qkv = qkv.reshape(b * t, 1, 3 * c, h * w).permute(0, 1, 3, 2).contiguous()  # [B*T, 1, H*W, 3C]
        q, k, val = qkv.chunk(3, dim=-1)  # each [B*T, 1, H*W, C]
        y = F.scaled_dot_product_attention(q, k, val)  # [B*T, 1, H*W, C]
        y = y.squeeze(1).permute(0, 2, 1).reshape(b * t, c, h, w)  # [B*T, C, H, W]
        y = self.proj(y).view(b, t, c, h, w).permute(0, 2, 1, 3, 4)  # [B, C, T, H, W]
        return y + x


class Upsample2x(nn.Module):
    """Nearest-exact 2x upsampling of H and W, computed in float32 (bfloat16 has no kernel for it)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x.float(), scale_factor=2.0, mode="nearest-exact").type_as(x)


class Resample(nn.Module):
    """Halve ('down') or double ('up') H and W by a 2-D conv per frame; in the '3d' modes T as well."""

    MODES = ("downsample2d", "downsample3d", "upsample2d", "upsample3d")

    def __init__(self, dim: int, mode: str) -> None:
        super().__init__()
        assert mode in self.MODES, f"Resample mode {mode!r} is not one of {self.MODES}"
        self.mode = mode
        if mode.startswith("up"):  # upsampling also halves the channels, as in Wan
            self.resample = nn.Sequential(Upsample2x(), nn.Conv2d(dim, dim // 2, 3, padding=1))
        else:  # pad right and bottom by one, then a stride-2 conv: H, W -> H / 2, W / 2
            self.resample = nn.Sequential(nn.ZeroPad2d((0, 1, 0, 1)), nn.Conv2d(dim, dim, 3, stride=2))
        if mode == "upsample3d":  # each frame -> two frames, stacked along the channels
            self.time_conv = CausalConv3d(dim, 2 * dim, (3, 1, 1), padding=(1, 0, 0))
        elif mode == "downsample3d":  # a frame with the one before and after it -> one frame
            self.time_conv = CausalConv3d(dim, dim, (3, 1, 1), stride=(2, 1, 1))

    def forward(self, x: torch.Tensor, cache: list) -> torch.Tensor:
        if self.mode == "upsample3d":
            x = self._double_time(x, cache)
        b, c, t, h, w = x.shape
        y = self.resample(x.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w))  # [B*T, C', H', W']
        x = y.view(b, t, *y.shape[1:]).permute(0, 2, 1, 3, 4)  # [B, C', T, H', W']
        if self.mode == "downsample3d":
            x = self._halve_time(x, cache)
        return x

    def _double_time(self, x: torch.Tensor, cache: list) -> torch.Tensor:
        b, c, t, h, w = x.shape
        if cache[self.time_conv.slot] is None:
            # the stream's first frame stays single; the next frame's doubling sees zeros as its past
            cache[self.time_conv.slot] = x.new_zeros(b, c, CACHE_FRAMES, h, w)
            return x
        y = self.time_conv(x, cache)  # [B, 2C, T, H, W]
        return y.view(b, 2, c, t, h, w).permute(0, 2, 3, 1, 4, 5).reshape(b, c, 2 * t, h, w)  # [B, C, 2T, H, W]

    def _halve_time(self, x: torch.Tensor, cache: list) -> torch.Tensor:
        slot = self.time_conv.slot
        past = cache[slot]  # [B, C, 1, H, W], the last frame of the previous call, or None
        cache[slot] = x[:, :, -1:].clone()
        if past is None:  # the stream's first frame stands alone
            return x
        assert x.shape[2] % 2 == 0, f"after the first frame, time is halved in pairs; got {x.shape[2]} frames"
        return self.time_conv(torch.cat([past, x], dim=2))  # [B, C, 1 + T, H, W] -> [B, C, T / 2, H, W]


def _run(layers: nn.Sequential, x: torch.Tensor, cache: list) -> torch.Tensor:
    """Apply ``layers`` in turn, handing the stream cache to those that keep state between calls."""
    for layer in layers:
        x = layer(x, cache) if isinstance(layer, (CausalConv3d, ResidualBlock, Resample)) else layer(x)
    return x


def _number_slots(module: nn.Module) -> int:
    """Give every causal conv inside ``module`` its own cache entry; return how many entries there are."""
    convs = [m for m in module.modules() if isinstance(m, CausalConv3d)]
    for i, conv in enumerate(convs):
        conv.slot = i
    return len(convs)


def _middle(dim: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(ResidualBlock(dim, dim, dropout), AttentionBlock(dim), ResidualBlock(dim, dim, dropout))


def _head(dim: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(RMSNorm(dim, images=False), nn.SiLU(), CausalConv3d(dim, c_out, 3, padding=1))


# -----------------------------------------------------------------------------
# encoder and decoder


class Encoder3d(nn.Module):
    """Video -> (mean, log-variance) features, 8x smaller in H and W and 4x in T (first frame alone)."""

    def __init__(self, config: WanVAEConfig) -> None:
        super().__init__()
        dims = [config.base_dim * m for m in (1, *config.dim_mult)]
        self.conv1 = CausalConv3d(3, dims[0], 3, padding=1)
        blocks, scale = [], 1.0
        for i, (c_in, c_out) in enumerate(zip(dims[:-1], dims[1:])):
            for _ in range(config.num_res_blocks):
                blocks.append(ResidualBlock(c_in, c_out, config.dropout))
                if scale in config.attn_scales:
                    blocks.append(AttentionBlock(c_out))
                c_in = c_out
            if i < len(config.dim_mult) - 1:
                blocks.append(Resample(c_out, "downsample3d" if config.temporal_downsample[i] else "downsample2d"))
                scale /= 2
        self.downsamples = nn.Sequential(*blocks)
        self.middle = _middle(dims[-1], config.dropout)
        self.head = _head(dims[-1], 2 * config.z_dim)
        self.num_slots = _number_slots(self)

    def forward(self, x: torch.Tensor, cache: list) -> torch.Tensor:
        # x: [B, 3, T, H, W], T = 1 for the stream's first piece, else 4 -> [B, 2 z_dim, 1, H / 8, W / 8]
        x = self.conv1(x, cache)
        for part in (self.downsamples, self.middle, self.head):
            x = _run(part, x, cache)
        return x


class Decoder3d(nn.Module):
    """Latents -> video, one latent frame per call: the stream's first gives 1 frame, every later one 4."""

    COMPILED = ("forward",)  # what compile=True compiles: the causal convs' cache list is its input

    def __init__(self, config: WanVAEConfig) -> None:
        super().__init__()
        mult = config.dim_mult
        dims = [config.base_dim * m for m in (mult[-1], *reversed(mult))]
        temporal_upsample = config.temporal_downsample[::-1]
        self.conv1 = CausalConv3d(config.z_dim, dims[0], 3, padding=1)
        self.middle = _middle(dims[0], config.dropout)
        blocks, scale = [], 1.0 / 2 ** (len(mult) - 2)
        for i, (c_in, c_out) in enumerate(zip(dims[:-1], dims[1:])):
            if i > 0:
                c_in //= 2  # the upsampling that ended the previous stage halved the channels
            for _ in range(config.num_res_blocks + 1):
                blocks.append(ResidualBlock(c_in, c_out, config.dropout))
                if scale in config.attn_scales:
                    blocks.append(AttentionBlock(c_out))
                c_in = c_out
            if i < len(mult) - 1:
                blocks.append(Resample(c_out, "upsample3d" if temporal_upsample[i] else "upsample2d"))
                scale *= 2
        self.upsamples = nn.Sequential(*blocks)
        self.head = _head(dims[-1], 3)
        self.num_slots = _number_slots(self)

    def forward(self, x: torch.Tensor, cache: list) -> torch.Tensor:
        # x: [B, z_dim, 1, h, w] -> [B, 3, 1 or 4, 8h, 8w]
        assert x.shape[2] == 1, f"the decoder takes one latent frame per call, got {x.shape[2]}"
        x = self.conv1(x, cache)
        for part in (self.middle, self.upsamples, self.head):
            x = _run(part, x, cache)
        return x


# -----------------------------------------------------------------------------
# the VAE


@attrs.define
class DecodeCache:
    """Where a decoding stream stands: ``feats[i]`` is the past input of causal conv ``i`` (None before
    its first call) and ``frames`` counts the latent frames decoded so far."""

    feats: list
    frames: int = 0

    def clone(self) -> DecodeCache:
        return attrs.evolve(self, feats=list(self.feats))  # entries are never written in place


@attrs.define
class EncodeCache(DecodeCache):
    """Where an encoding stream stands; ``frames`` counts the pixel frames encoded so far."""


class WanVAE(nn.Module):
    """The Wan 2.1 VAE: ``encode`` video to normalised latents, ``decode`` them back, or stream either."""

    def __init__(self, config: WanVAEConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or WanVAEConfig()
        z = config.z_dim
        self.encoder = Encoder3d(config)
        self.conv1 = CausalConv3d(2 * z, 2 * z, 1)  # encoder features -> (mean, log-variance)
        self.conv2 = CausalConv3d(z, z, 1)  # latents -> decoder input
        self.decoder = Decoder3d(config)
        # not in the state dict: the official checkpoint holds only the network
        mean, std = torch.tensor(config.latents_mean), torch.tensor(config.latents_std)
        self.register_buffer("latents_mean", mean.view(1, z, 1, 1, 1), persistent=False)
        self.register_buffer("latents_std", std.view(1, z, 1, 1, 1), persistent=False)

    # ---- encoding

    def new_encode_cache(self) -> EncodeCache:
        return EncodeCache(feats=[None] * self.encoder.num_slots)

    @torch.no_grad()
    def encode(self, video: torch.Tensor) -> torch.Tensor:
        """``[B, 3, 1 + 4k, H, W]`` in [-1, 1] -> normalised posterior means ``[B, z_dim, 1 + k, H/8, W/8]``."""
        return self.encode_chunk(video, self.new_encode_cache())

    @torch.no_grad()
    def encode_chunk(self, video: torch.Tensor, cache: EncodeCache) -> torch.Tensor:
        """The next frames of a stream: ``1 + 4k`` frames for its first chunk, ``4k`` (k >= 1) after."""
        self._check_shape("encode", "video", video, 3, self.config.spatial_ratio)
        r, t, first = self.config.temporal_ratio, video.shape[2], cache.frames == 0
        if first:
            latent_frames(t, temporal_ratio=r)
        elif t == 0 or t % r:
            raise ConfigError("WanVAE.encode_chunk", "frames", t, f"a multiple of {r} after the first chunk")
        rest = video[:, :, 1:] if first else video
        pieces = ([video[:, :, :1]] if first else []) + (list(rest.split(r, dim=2)) if rest.shape[2] else [])
        means = []
        for piece in pieces:  # each [B, 3, 1 or 4, H, W]
            feats = self.conv1(self.encoder(piece, cache.feats))  # [B, 2 z_dim, 1, H/8, W/8]
            means.append(feats[:, : self.config.z_dim])  # the posterior mean; the log-variance is dropped
        cache.frames += t
        mu = torch.cat(means, dim=2)  # [B, z_dim, F, H/8, W/8]
        return (mu - self.latents_mean) / self.latents_std

    # ---- decoding

    def new_decode_cache(self) -> DecodeCache:
        return DecodeCache(feats=[None] * self.decoder.num_slots)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Normalised latents ``[B, z_dim, F, h, w]`` -> video ``[B, 3, 1 + 4(F - 1), 8h, 8w]`` in [-1, 1]."""
        return self.decode_chunk(latents, self.new_decode_cache())

    @torch.no_grad()
    def decode_chunk(self, latents: torch.Tensor, cache: DecodeCache) -> torch.Tensor:
        """The next latent frames of a stream -> their pixel frames: 1 for the stream's very first latent
        frame, 4 for every later one, exactly the frames :meth:`decode` gives for the whole stream."""
        self._check_shape("decode", "latents", latents, self.config.z_dim, 1)
        r = self.config.temporal_ratio
        z = latents * self.latents_std + self.latents_mean  # [B, z_dim, F, h, w], un-normalised
        frames = []
        for i in range(z.shape[2]):
            x = self.decoder(self.conv2(z[:, :, i : i + 1]), cache.feats)  # [B, 3, 1 or 4, 8h, 8w]
            assert x.shape[2] == (1 if cache.frames == 0 else r), f"latent frame {cache.frames} gave {x.shape[2]}"
            frames.append(x)
            cache.frames += 1
        return torch.cat(frames, dim=2).clamp(-1.0, 1.0)  # [B, 3, T, 8h, 8w]

    # ---- stream state

    def snapshot(self, cache: DecodeCache) -> DecodeCache:
        """A copy of ``cache`` that later calls on ``cache`` leave untouched."""
        return cache.clone()

    def restore(self, cache: DecodeCache, snap: DecodeCache) -> None:
        """Put ``cache`` back to ``snap`` in place (``snap`` stays usable for further restores)."""
        cache.feats, cache.frames = list(snap.feats), snap.frames

    def _check_shape(self, method: str, name: str, x: torch.Tensor, channels: int, multiple: int) -> None:
        shape = tuple(x.shape)
        if len(shape) != 5 or shape[1] != channels or shape[2] < 1:
            raise ConfigError(f"WanVAE.{method}", f"{name} shape", shape, f"[B, {channels}, T >= 1, H, W]")
        if shape[3] % multiple or shape[4] % multiple:
            raise ConfigError(f"WanVAE.{method}", f"{name} shape", shape, f"H and W multiples of {multiple}")


# -----------------------------------------------------------------------------
# checkpoints: original Wan names <-> diffusers AutoencoderKLWan names

_PREFIXES = [  # (original Wan, diffusers), module prefixes
    ("conv1.", "quant_conv."),
    ("conv2.", "post_quant_conv."),
    ("encoder.downsamples.", "encoder.down_blocks."),
    *[pair for side in ("encoder", "decoder") for pair in (
        (f"{side}.conv1.", f"{side}.conv_in."),
        (f"{side}.middle.0.", f"{side}.mid_block.resnets.0."),
        (f"{side}.middle.1.", f"{side}.mid_block.attentions.0."),
        (f"{side}.middle.2.", f"{side}.mid_block.resnets.1."),
        (f"{side}.head.0.", f"{side}.norm_out."),
        (f"{side}.head.2.", f"{side}.conv_out."),
    )],
]
_RESIDUAL_PARTS = [  # (original Wan, diffusers), inside a residual block
    (".residual.0.", ".norm1."),
    (".residual.2.", ".conv1."),
    (".residual.3.", ".norm2."),
    (".residual.6.", ".conv2."),
    (".shortcut.", ".conv_shortcut."),
]


def _upsample_prefixes(sd: Mapping[str, torch.Tensor]) -> dict[str, str]:
    """Our flat ``decoder.upsamples.{n}.`` -> diffusers' ``decoder.up_blocks.{stage}.resnets.{j}.`` or
    ``.upsamplers.0.`` (a stage ends with its upsampler). Decoder attention has no diffusers counterpart."""
    entries = sorted({int(k.split(".")[2]) for k in sd if k.startswith("decoder.upsamples.")})
    out, stage, j = {}, 0, 0
    for n in entries:
        ours = f"decoder.upsamples.{n}."
        if any(k.startswith(ours + "resample.") for k in sd):
            out[ours], stage, j = f"decoder.up_blocks.{stage}.upsamplers.0.", stage + 1, 0
        elif not any(k.startswith(ours + "to_qkv.") for k in sd):
            out[ours], j = f"decoder.up_blocks.{stage}.resnets.{j}.", j + 1
    return out


def _up_block_prefixes(sd: Mapping[str, torch.Tensor]) -> dict[str, str]:
    """Diffusers' nested ``decoder.up_blocks.{stage}.{resnets.j | upsamplers.0}.`` -> our flat index."""
    pattern = re.compile(r"decoder\.up_blocks\.(\d+)\.(resnets|upsamplers)\.(\d+)\.")
    found = sorted({(int(m[1]), m[2] == "upsamplers", int(m[3])) for k in sd if (m := pattern.match(k))})
    return {f"decoder.up_blocks.{s}.{'upsamplers' if up else 'resnets'}.{j}.": f"decoder.upsamples.{n}."
            for n, (s, up, j) in enumerate(found)}


def _renamer(parts: list[tuple[str, str]], prefixes: dict[str, str]):
    def new_name(key: str) -> str:
        for old, new in parts:  # first inside residual blocks (before 'encoder.conv_in' could be touched)
            key = key.replace(old, new)
        for old, new in prefixes.items():
            if key.startswith(old):
                return new + key[len(old):]
        return key  # unknown keys stay, so that fitting reports them

    return new_name


def wan_to_diffusers(sd: Mapping[str, torch.Tensor]) -> StateDict:
    """A state dict in the original Wan naming, renamed for diffusers' ``AutoencoderKLWan``."""
    prefixes = dict(_PREFIXES) | _upsample_prefixes(sd)
    return rename(sd, _renamer(_RESIDUAL_PARTS, prefixes))


def diffusers_to_wan(sd: Mapping[str, torch.Tensor]) -> StateDict:
    """A state dict of diffusers' ``AutoencoderKLWan``, renamed to the original Wan naming used here."""
    prefixes = {d: w for w, d in _PREFIXES} | _up_block_prefixes(sd)
    return rename(sd, _renamer([(d, w) for w, d in _RESIDUAL_PARTS], prefixes))


def is_diffusers_layout(sd: Mapping[str, torch.Tensor]) -> bool:
    return any(k.startswith(("quant_conv.", "encoder.conv_in.", "decoder.conv_in.")) for k in sd)


def load_wan_vae(path: str | Path) -> WanVAE:
    """A Wan 2.1 VAE from ``Wan2.1_VAE.pth`` (original names), a diffusers ``vae`` folder or a
    safetensors file in either naming; the config is read off the tensor shapes. Float32, eval mode."""
    sd = read_tensors(path)
    if is_diffusers_layout(sd):
        sd = diffusers_to_wan(sd)
    config = WanVAEConfig.from_state_dict(sd, path=str(path))
    vae = WanVAE(config)
    fit(vae, sd, str(path), what=f"the Wan 2.1 VAE of {config}")
    return vae.eval().requires_grad_(False)


__all__ = [
    "CACHE_FRAMES", "WAN21_LATENTS_MEAN", "WAN21_LATENTS_STD", "DecodeCache", "EncodeCache", "WanVAE",
    "WanVAEConfig", "diffusers_to_wan", "is_diffusers_layout", "latent_frames", "load_wan_vae", "pixel_frames",
    "valid_pixel_frames", "wan_to_diffusers",
]
