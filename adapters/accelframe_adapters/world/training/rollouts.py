"""The student's rollouts and the target's all-blocks-at-once pass: what both of the drafter's
distillation objectives (regression, ``distill.py``; distribution matching, ``dmd.py``) are built on.

- :func:`rollout`: the one-step self-forcing loop of the student on its own earlier blocks, with
  gradient through each block's one call (Self-Forcing's truncation).
- :func:`commit_all` and :func:`parallel_blocks`: a DiT's answer for every block at once, each
  block on the clean blocks before it: the KV-cache loop's arithmetic in one forward.
"""

from __future__ import annotations

from typing import Any

import torch

from accelframe.types import KVWrite
from accelframe_adapters.wan.dit import KVCache, WanDiT, rope_freqs, unpatchify
from accelframe_adapters.wan.flow import few_step_schedule
from accelframe_adapters.world.models import CAUSAL_BLOCK

STUDENT_STEPS = (1000.0,)
SHIFT = 5.0  # the world's Wan timestep shift
TEACHER_GUIDANCE = 1.5  # the world's default guidance in the loop (presets.WAN_DEFAULTS)


def schedule(steps: tuple[float, ...]) -> list[tuple[float, float]]:
    """(Wan timestep, sigma) of each call, as the self-forcing adapter converts its step list."""
    return few_step_schedule(list(steps), SHIFT, True)


def parallel_blocks(dit: WanDiT, x: torch.Tensor, t: torch.Tensor, cross: Any, cache: KVCache,
                    block: int = CAUSAL_BLOCK) -> torch.Tensor:
    """Every block of ``x: [B, C, F, H, W]`` denoised at once, each as the block loop would call the
    DiT for it: block ``k`` attends to the cached clean frames of the blocks before it and to its
    own frames, at RoPE positions ``0 .. F - 1``. ``cache`` holds the clean K/V of the same ``F``
    frames (a block-causal commit pass). Returns the flow ``[B, C, F, H, W]``; writes nothing."""
    b, _, f, _, _ = x.shape
    assert len(cache) == f, f"the cache must hold the {f} clean frames, holds {len(cache)}"
    tokens, (f, h, w) = dit.embed(x)  # [B, F, S, D]
    s = h * w
    rope = rope_freqs(dit.rope_on(x.device), torch.arange(f, device=x.device), h, w)  # [N, 1, Dh / 2]
    fb = torch.arange(f, device=x.device) // block  # [F]
    clean = fb.view(1, -1) < fb.view(-1, 1)  # [F, F]: query frame i sees clean frame j of an earlier block
    own = fb.view(1, -1) == fb.view(-1, 1)  # and the noisy frames of its own block
    mask = torch.cat([clean, own], dim=1).repeat_interleave(s, 0).repeat_interleave(s, 1)  # [N, 2N]
    e, e0 = dit.time_embed(t)
    for i, blk in enumerate(dit.blocks):
        tokens = blk(tokens, e0, cross.k[i], cross.v[i], rope, mask, cache, i, KVWrite.NONE)
    return unpatchify(dit, dit.head(tokens, e), (f, h, w))


def commit_all(dit: WanDiT, x0: torch.Tensor, cross: Any, block: int = CAUSAL_BLOCK) -> KVCache:
    """A cache holding the clean frames ``x0: [B, C, F, H, W]`` as the loop's commits would write them
    (context noise 0, block-causal)."""
    b, _, f, hh, ww = x0.shape
    p = dit.cfg.patch_size
    cache = KVCache(num_layers=dit.cfg.num_layers, tokens_per_frame=(hh // p[1]) * (ww // p[2]))
    dit(x0, torch.zeros(b, f, device=x0.device), cross, causal_block=block, cache=cache, kv_write=KVWrite.COMMIT)
    return cache


def rollout(dit: WanDiT, eps: torch.Tensor, cross: Any, block: int = CAUSAL_BLOCK) -> torch.Tensor:
    """The student's blocks ``x0: [B, C, F, H, W]`` from ``eps``, one call per block (with gradient)
    on its own earlier blocks (committed without gradient): the one-step self-forcing loop."""
    b, _, f, hh, ww = eps.shape
    p = dit.cfg.patch_size
    cache = KVCache(num_layers=dit.cfg.num_layers, tokens_per_frame=(hh // p[1]) * (ww // p[2]))
    ((t, sg),) = schedule(STUDENT_STEPS)
    out = []
    for s in range(0, f, block):
        x = eps[:, :, s:s + block]
        v = dit(x, torch.full((b, block), t, device=eps.device), cross, frame_offset=s, cache=cache,
                kv_write=KVWrite.NONE)
        x0 = x - sg * v
        out.append(x0)
        with torch.no_grad():
            dit(x0.detach(), torch.zeros(b, block, device=eps.device), cross, frame_offset=s, cache=cache,
                kv_write=KVWrite.COMMIT)
    return torch.cat(out, dim=2)


__all__ = ["SHIFT", "STUDENT_STEPS", "TEACHER_GUIDANCE", "commit_all", "parallel_blocks", "rollout", "schedule"]
