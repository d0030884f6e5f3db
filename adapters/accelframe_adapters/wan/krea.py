"""Krea Realtime: the ``krea-realtime`` adapter. Self-Forcing's network with Krea's cache loop.

The loop, per block of 3 latent frames (reference: Krea's realtime-video server session)::

    if block > 0:                                   # rebuild the KV cache, RoPE from 0
        anchor = latent 0            if keep_first_frame or (block - 1) * 3 < k
                 VAE.encode(oldest of the last 1 + 4 (k - 1) decoded pixel frames)   otherwise
        ctx = [anchor] + the last k - 1 clean latent frames
        kv = dit(ctx, t = 0, block-causal mask in blocks of 3)     # k = kv_cache_num_frames
    x = noise(seed, block)
    for k, t_k in enumerate(steps):                 # 5 steps: 1000, 937.5, 833.3, 625, 0
        v = dit(x, t_k, kv, RoPE positions len(ctx) ...)   # writes nothing that lasts
        x0 = x - σ_k v
        x = x0 if last else (1 - σ_{k+1}) x0 + σ_{k+1} ε

There is no commit pass: the block's clean latents (and its decoded pixels) are remembered, and
the rebuild, run here as the block's commit, makes them context. The step list is
``linspace(1000, 0, num_denoising_steps)`` warped through the shift grid; the final 0 is called
too: the reference re-noises to the grid's smallest σ (t = 4.98 for shift 5) and calls the model at
t = 0 there. The rebuild after a request's last block is not needed by that request; it is kept so
a stream continues from a ready cache.

Checkpoints: Krea's ``.safetensors`` file, keys ``model.blocks.0.self_attn.q.weight`` (the
Self-Forcing wrapper's names).
"""

from __future__ import annotations

import collections
from typing import Any

import attrs
import torch

from accelframe import adapter as caps
from accelframe import validators as v
from accelframe.errors import CheckpointError
from accelframe.types import Iteration, KVWrite
from accelframe_adapters import checkpoints as ck
from accelframe_adapters.wan.self_forcing import BlockLoopAdapter
from accelframe_adapters.wan.common import WanState, read_dit_file
from accelframe_adapters.wan.dit import CrossCache, KVCache


@attrs.frozen(kw_only=True)
class KreaConfig:
    """Krea Realtime's knobs, with the defaults of its server's generation parameters."""

    kv_cache_num_frames: int = attrs.field(default=3, validator=v.number_in(1, 1000, integer=True))
    num_denoising_steps: int = attrs.field(default=5, validator=v.number_in(2, 1000, integer=True))
    keep_first_frame: bool = False
    timestep_shift: float = attrs.field(default=5.0, validator=v.number_in(0.01, 100.0))
    num_frame_per_block: int = attrs.field(default=3, validator=v.number_in(1, 64, integer=True))

    def step_list(self) -> list[float]:
        """``linspace(1000, 0, n)`` truncated to integers, as the reference builds it."""
        n = self.num_denoising_steps
        return [float(int(t)) for t in torch.linspace(1000.0, 0.0, n, dtype=torch.float64).tolist()]


class KreaAdapter(BlockLoopAdapter):
    """The ``krea-realtime`` adapter (see the module docstring)."""

    name = "krea-realtime"
    config_class = KreaConfig
    denoise_kv_write = KVWrite.NONE

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._init_schedule(self.config.step_list(), self.config.timestep_shift, True)
        self._pixel_tail = 1 + (self.config.kv_cache_num_frames - 1) * 4

    def family_capabilities(self) -> frozenset[str]:
        return frozenset({caps.KV_CACHE, caps.BLOCK_UNITS})

    def world_frame_limit(self, trained: int) -> int:
        return 1 << 30  # every rebuild restarts RoPE at 0: positions stay inside the trained range

    def read_checkpoint(self, path: str) -> dict[str, torch.Tensor]:
        _, tensors = read_dit_file(path, ("krea",), "Krea's 'model.'-prefixed safetensors")
        inner = ck.strip_prefix(tensors, "model.")
        if len(inner) != len(tensors):
            raise CheckpointError(path, "mixes 'model.'-prefixed and unprefixed keys",
                                  unexpected=sorted(k for k in tensors if not k.startswith("model.")))
        return inner

    # its commit re-encodes a decoded pixel frame as the anchor: the engine lets a decode worker
    # finish before this adapter commits (accelframe.engine.Engine._iteration)
    commit_reads_pixels = True

    def init_state(self, request, cond) -> WanState:
        state = super().init_state(request, cond)
        state.family.update(latents={}, pixels=collections.deque(maxlen=self._pixel_tail), decoded=0,
                            next_frame=0)
        return state

    def new_kv(self) -> KVCache:
        return KVCache(num_layers=self.dit.cfg.num_layers, tokens_per_frame=self.tokens_per_frame)

    def kv_window_frames(self) -> int:
        return self.config.kv_cache_num_frames  # the cache is rebuilt from this many frames per block

    # ---- the loop -------------------------------------------------------------------------------

    @torch.no_grad()
    def denoise(self, x: torch.Tensor, it: Iteration, frames: tuple[int, int], state: WanState,
                kv_write: KVWrite) -> torch.Tensor:
        t = self.timesteps(it, frames).expand(x.shape[0], -1)  # [B, F]
        rope = len(state.kv) + frames[0] - it.frames[0]  # the block follows the rebuilt context
        out = self.dit(self.to_model(x), t, state.cross, frame_offset=frames[0], cache=state.kv,
                       kv_write=KVWrite.NONE, rope_start=rope)
        return self.from_model(out)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, state: WanState) -> torch.Tensor:
        pixels = super().decode(latents, state)  # [B, T, 3, H, W]
        fam = state.family
        fam["pixels"].extend(pixels.unbind(1))
        fam["decoded"] = fam.get("decoded", 0) + latents.shape[1]
        return pixels

    @torch.no_grad()
    def commit(self, x0: torch.Tensor, frames: tuple[int, int], state: WanState) -> None:
        fam, k = state.family, self.config.kv_cache_num_frames
        s, e = frames
        for j in range(s, e):
            fam["latents"][j] = x0[:, j - s].clone()  # [B, C, H, W]
        if fam["decoded"] < e and not self.config.keep_first_frame:
            # the engine did not decode (decode=False): decode here, later anchors need the pixels
            self.decode(torch.stack([fam["latents"][j] for j in range(fam["decoded"], e)], dim=1), state)
        for j in [j for j in fam["latents"] if 0 < j < e - k]:
            del fam["latents"][j]  # frame 0 (the anchor) and the last k - 1 frames are enough
        fam["next_frame"] = e
        self._rebuild(state, e)

    def _rebuild(self, state: WanState, e: int) -> None:
        """Rebuild the KV cache that serves the block after frame ``e`` under ``state.cross``: the
        anchor frame and the last ``k - 1`` frames, RoPE from 0."""
        fam, k = state.family, self.config.kv_cache_num_frames
        block = e // self.unit_frames  # the block the rebuilt cache serves
        first = self.config.keep_first_frame or (block - 1) * self.unit_frames < k
        if first:
            anchor, anchor_id = fam["latents"][0], 0
        else:
            pixel = fam["pixels"][0].unsqueeze(1)  # [B, 1, 3, H, W]: the oldest pixel frame kept
            anchor, anchor_id = self.encode(pixel)[:, 0], e - k
        recent = [j for j in range(max(e - (k - 1), 1), e)]
        ctx = torch.stack([anchor] + [fam["latents"][j] for j in recent], dim=1)  # [B, n, C, H, W]
        state.kv = self.new_kv()
        t = torch.zeros(ctx.shape[0], ctx.shape[1], device=self.device)
        self.dit(self.to_model(ctx), t, state.cross, frame_offset=0, cache=state.kv, kv_write=KVWrite.COMMIT,
                 causal_block=self.unit_frames, rope_start=0)
        state.kv.frames = (anchor_id, *recent)

    @torch.no_grad()
    def switch_prompt(self, state: WanState, cond: CrossCache, recache: bool = True) -> int:
        """The new prompt's cross-attention and, with ``recache``, the cache rebuilt under it now (the
        rebuild every commit runs; without it the next commit's rebuild takes the new prompt).
        Returns the calls (0 or 1)."""
        state.cross = cond
        e = state.family.get("next_frame")
        if not recache or not e:
            return 0
        self._rebuild(state, e)
        return 1

    def snapshot(self, state: WanState) -> dict[str, Any]:
        snap = super().snapshot(state)
        snap["kv_object"] = state.kv  # the rebuild replaces the cache object
        return snap

    def restore(self, state: WanState, snap: dict[str, Any]) -> None:
        state.kv = snap["kv_object"]
        super().restore(state, snap)


__all__ = ["KreaAdapter", "KreaConfig"]
