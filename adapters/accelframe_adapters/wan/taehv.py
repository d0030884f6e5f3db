"""A tiny streaming video decoder in TAEHV's shape (the Tiny AutoEncoder for Hunyuan Video / Wan).

Real-time deployments of Wan-family models decode with a tiny decoder instead of the full causal
VAE (TAEHV's ``taew2_1`` for Wan 2.1): the full decoder's 3-D convolutions cost more than a few-step
DiT's call at small sizes. This is TAEHV's decoder: per-frame 2-D convolutions, ``MemBlock``s that
read the previous frame's input at their layer (the only temporal context), ``TGrow`` 1 x 1
convolutions that turn one frame into ``stride`` frames, nearest-neighbour upsampling; its
``nn.Sequential`` indices (``decoder.1.weight``, ``decoder.3.conv.0.weight``, ...) are TAEHV's.
Three stages, each ``MemBlock`` x 3, ``Upsample``, ``TGrow``, ``conv``; ``space_upscale`` and
``time_upscale`` say which stages double the frame size and the frame count (TAEHV for Wan:
(True, True, True) and (False, True, True), so 8x in space and 4x in time; the embedded world's is
4x in space).

Streaming: each ``MemBlock`` keeps the last input frame it saw (:class:`TinyDecodeCache`), so a
stream decoded chunk by chunk equals the whole stream decoded at once; within a chunk every frame
runs in parallel. As in TAEHV, the stream's first latent frame gives ``4`` frames of which the
first ``3`` are dropped, so the frame counts are the Wan VAE's (1, then 4 per latent frame).

The object has the decode side of :class:`~accelframe_adapters.wan.vae.WanVAE`'s interface
(``new_decode_cache``, ``decode_chunk`` to [-1, 1], ``snapshot``, ``restore``), so the Wan adapters
use it in place of the VAE's decoder (``decoder="tiny"``).
"""

from __future__ import annotations

from typing import Any

import attrs
import torch
import torch.nn.functional as F
from torch import nn

from accelframe import validators as v
from accelframe.errors import ConfigError


@attrs.frozen(kw_only=True)
class TinyDecoderConfig:
    """Widths of the three stages and the output convolution (TAEHV: 256, 128, 64, 64)."""

    z_dim: int = attrs.field(default=16, validator=v.number_in(1, 1024, integer=True))
    widths: tuple[int, int, int, int] = attrs.field(default=(256, 128, 64, 64), converter=tuple)
    space_upscale: tuple[bool, bool, bool] = attrs.field(default=(True, True, True), converter=tuple)
    time_upscale: tuple[bool, bool, bool] = attrs.field(default=(False, True, True), converter=tuple)

    def __attrs_post_init__(self) -> None:
        if len(self.widths) != 4 or any(not isinstance(w, int) or w < 1 for w in self.widths):
            raise ConfigError("TinyDecoderConfig", "widths", self.widths, "four ints >= 1")
        for name in ("space_upscale", "time_upscale"):
            val = getattr(self, name)
            if len(val) != 3 or any(not isinstance(b, bool) for b in val):
                raise ConfigError("TinyDecoderConfig", name, val, "three bools (one per stage)")

    @property
    def spatial_ratio(self) -> int:
        return 2 ** sum(self.space_upscale)

    @property
    def temporal_ratio(self) -> int:
        return 2 ** sum(self.time_upscale)


def conv(n_in: int, n_out: int, **kw: Any) -> nn.Conv2d:
    return nn.Conv2d(n_in, n_out, 3, padding=1, **kw)


class Clamp(nn.Module):
    """A soft clamp of the latents to about [-3, 3]."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x / 3) * 3


class MemBlock(nn.Module):
    """A residual block that also reads the previous frame's input: ``relu(conv([x, past]) + skip(x))``."""

    def __init__(self, n_in: int, n_out: int) -> None:
        super().__init__()
        self.conv = nn.Sequential(conv(n_in * 2, n_out), nn.ReLU(), conv(n_out, n_out), nn.ReLU(), conv(n_out, n_out))
        self.skip = nn.Conv2d(n_in, n_out, 1, bias=False) if n_in != n_out else nn.Identity()

    def forward(self, x: torch.Tensor, past: torch.Tensor) -> torch.Tensor:
        return F.relu(self.conv(torch.cat([x, past], 1)) + self.skip(x))


class TGrow(nn.Module):
    """One frame -> ``stride`` frames: a 1 x 1 convolution to ``stride`` times the channels, split in time."""

    def __init__(self, n_f: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        self.conv = nn.Conv2d(n_f, n_f * stride, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        nt, c, h, w = x.shape  # [N*T, C, H, W] -> [N*T*stride, C, H, W], frame-major within each sample
        return self.conv(x).reshape(nt * self.stride, c, h, w)


@attrs.define
class TinyDecodeCache:
    """Where a decoding stream stands: each MemBlock's last input frame ``[B, C, H, W]`` (None before the
    first chunk) and the latent frames decoded so far. Entries are replaced, never written in place."""

    memory: list
    frames: int = 0

    def clone(self) -> TinyDecodeCache:
        return attrs.evolve(self, memory=list(self.memory))


class TinyDecoder(nn.Module):
    """TAEHV's decoder (module docstring): normalised latents ``[B, z, F, h, w]`` -> frames."""

    COMPILED = ("run",)  # what compile=True compiles (accelframe_adapters.compiling)

    def __init__(self, config: TinyDecoderConfig | None = None) -> None:
        super().__init__()
        self.config = c = config or TinyDecoderConfig()
        n = c.widths
        layers: list[nn.Module] = [Clamp(), conv(c.z_dim, n[0]), nn.ReLU()]
        for i in range(3):
            layers += [MemBlock(n[i], n[i]), MemBlock(n[i], n[i]), MemBlock(n[i], n[i]),
                       nn.Upsample(scale_factor=2 if c.space_upscale[i] else 1),
                       TGrow(n[i], 2 if c.time_upscale[i] else 1), conv(n[i], n[i + 1], bias=False)]
        layers += [nn.ReLU(), conv(n[3], 3)]
        self.decoder = nn.Sequential(*layers)
        self.mem_slots = [i for i, m in enumerate(self.decoder) if isinstance(m, MemBlock)]

    # ---- the network over one chunk

    def run(self, z: torch.Tensor, memory: list) -> tuple[torch.Tensor, list]:
        """``z: [B, z_dim, F, h, w]`` -> frames ``[B, 3, F * temporal_ratio, H, W]`` in [0, 1] and the new
        memory. ``memory[k]``: MemBlock k's previous input frame (None: zeros, a stream's start)."""
        b, _, f, h, w = z.shape
        x = z.permute(0, 2, 1, 3, 4).reshape(b * f, -1, h, w)  # [B*F, z, h, w], frame-major per sample
        new = []
        k = 0
        for layer in self.decoder:
            if isinstance(layer, MemBlock):
                nt, ch, hh, ww = x.shape
                seq = x.view(b, nt // b, ch, hh, ww)  # [B, T, C, H, W]
                first = memory[k] if memory[k] is not None else torch.zeros_like(seq[:, 0])
                past = torch.cat([first.unsqueeze(1), seq[:, :-1]], dim=1).reshape(x.shape)  # frame t-1
                new.append(seq[:, -1])
                x = layer(x, past)
                k += 1
            else:
                x = layer(x)
        nt, ch, hh, ww = x.shape
        out = x.view(b, nt // b, ch, hh, ww).permute(0, 2, 1, 3, 4)  # [B, 3, T, H, W]
        return out.clamp(0.0, 1.0), new

    # ---- the WanVAE decode interface

    def new_decode_cache(self) -> TinyDecodeCache:
        return TinyDecodeCache(memory=[None] * len(self.mem_slots))

    @torch.no_grad()
    def decode_chunk(self, latents: torch.Tensor, cache: TinyDecodeCache) -> torch.Tensor:
        """The next latent frames of a stream -> their pixel frames in [-1, 1]: 1 for the stream's very
        first latent frame, ``temporal_ratio`` for every later one (the Wan VAE's counts)."""
        shape = tuple(latents.shape)
        if len(shape) != 5 or shape[1] != self.config.z_dim or shape[2] < 1:
            raise ConfigError("TinyDecoder.decode_chunk", "latents shape", shape,
                              f"[B, {self.config.z_dim}, F >= 1, h, w]")
        frames, cache.memory = self.run(latents.float(), cache.memory)
        if cache.frames == 0:
            frames = frames[:, :, self.config.temporal_ratio - 1:]  # TAEHV's trim of the first frames
        cache.frames += shape[2]
        return frames * 2.0 - 1.0

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """A whole stream at once (equal to decoding it chunk by chunk)."""
        return self.decode_chunk(latents, self.new_decode_cache())

    def snapshot(self, cache: TinyDecodeCache) -> TinyDecodeCache:
        return cache.clone()

    def restore(self, cache: TinyDecodeCache, snap: TinyDecodeCache) -> None:
        cache.memory, cache.frames = list(snap.memory), snap.frames


def config_from_state_dict(sd: dict[str, torch.Tensor], space_upscale: tuple[bool, bool, bool] = (True, True, True),
                           ) -> TinyDecoderConfig:
    """The decoder's config read from its weights' shapes (``decoder.N...`` keys, TAEHV's indices):
    widths and the latent channels from the convolutions, the time upscaling from the ``TGrow``s'
    output channels; upsampling has no weights, so ``space_upscale`` is given (TAEHV's: all three)."""
    n0, z = sd["decoder.1.weight"].shape[:2]
    widths = (n0, *(sd[f"decoder.{i}.weight"].shape[0] for i in (8, 14, 20)))
    time = tuple(sd[f"decoder.{i}.conv.weight"].shape[0] // w > 1 for i, w in zip((7, 13, 19), widths))
    return TinyDecoderConfig(z_dim=int(z), widths=tuple(int(w) for w in widths), space_upscale=space_upscale,
                             time_upscale=time)


def load_tiny_decoder(path: str) -> TinyDecoder:
    """A tiny decoder from a weights file in TAEHV's decoder layout (``decoder.N...`` keys; ``encoder.*``
    keys are ignored). A file a world trainer wrote carries its config in its metadata; for any other
    the config is read from the shapes (:func:`config_from_state_dict`). A file without the decoder's
    keys raises a :class:`~accelframe.errors.CheckpointError` naming it."""
    import json

    from accelframe.errors import CheckpointError
    from accelframe_adapters import checkpoints as ck

    raw = ck.read_tensors(path)
    sd = {k: t for k, t in raw.items() if isinstance(t, torch.Tensor) and k.startswith("decoder.")}
    if "decoder.1.weight" not in sd:
        raise CheckpointError(path, "holds no tiny decoder (TAEHV's 'decoder.N...' keys); first keys: "
                                    + ", ".join(sorted(raw)[:5]))
    meta: dict[str, Any] = {}
    if str(path).endswith(".safetensors"):
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    try:
        cfg = TinyDecoderConfig(**json.loads(meta["config"])) if "config" in meta else config_from_state_dict(sd)
    except (KeyError, ValueError, TypeError) as err:
        raise CheckpointError(path, f"is not a tiny decoder this code can build ({err})") from err
    dec = TinyDecoder(cfg)
    ck.fit(dec, sd, path, what="the tiny decoder")
    return dec.eval()


def decoder_for(spec: str, vae: Any, *, owner: str, world_file: str | None) -> Any:
    """What an adapter's ``decoder`` knob names, for ``vae``'s latents: the VAE itself (``"vae"``),
    the embedded world's tiny decoder (``"tiny"``: ``world_file``, None when the model is not the
    world's) or a tiny-decoder weights file. A tiny decoder for other latents (channels, 8x / 4x)
    is a :class:`~accelframe.errors.CheckpointError` naming the file."""
    from accelframe.errors import CheckpointError, ConfigError

    if spec == "vae":
        return vae
    if spec == "tiny":
        if world_file is None:
            raise ConfigError(owner, "decoder", spec, "'vae' or a tiny-decoder weights file: 'tiny' names "
                                                      "the embedded world's decoder, and this model is not the "
                                                      "world's")
        spec = world_file
    dec = load_tiny_decoder(spec)
    want = (vae.config.z_dim, vae.config.spatial_ratio, vae.config.temporal_ratio)
    got = (dec.config.z_dim, dec.config.spatial_ratio, dec.config.temporal_ratio)
    if got != want:
        raise CheckpointError(spec, f"is a tiny decoder for {got[0]} latent channels at {got[1]}x in space and "
                                    f"{got[2]}x in time; the VAE's latents need {want[0]}, {want[1]}x, {want[2]}x")
    return dec


__all__ = ["Clamp", "MemBlock", "TGrow", "TinyDecodeCache", "TinyDecoder", "TinyDecoderConfig", "config_from_state_dict",
           "decoder_for", "load_tiny_decoder"]
