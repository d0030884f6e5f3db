"""The Wan 2.1 diffusion transformer, as Self-Forcing, Krea Realtime and SkyReels-V2 run it.

One compact implementation, read top-down: embeddings, RoPE, attention (with the causal KV cache),
the block, the network, then checkpoint key maps. Parameter names follow the original Wan code
(``blocks.0.self_attn.q.weight``, ``head.modulation``), so Self-Forcing ``.pt``, Krea and original
SkyReels-V2 files load as they are; :func:`from_diffusers_key` maps diffusers names onto them.

What the AR families need beyond the bidirectional Wan model:

- per-frame timesteps ``t: [B, F]``: every frame gets its own modulation (diffusion forcing,
  few-step blocks at one level, clean context at another);
- RoPE with a frame offset: frame ``j`` of a call sits at position ``frame_offset + j``;
- a block-causal mask for a full-sequence forward (frame ``i`` sees frame ``j`` iff
  ``j // block <= i // block``);
- a KV cache of earlier frames (:class:`KVCache`): a call attends to the cached frames plus its own
  frames; it can write its K/V as scratch (kept aside, not attended) or commit them as context; a
  local window with sink frames bounds it; snapshot / restore are O(layers) because cached tensors
  are never written in place;
- a per-prompt cross-attention cache (:class:`CrossCache`): text K/V are computed once.

Numerics follow diffusers' float32 islands (norms, modulation and the time embedding in float32)
so a bfloat16 model on a GPU behaves as the reference does.
"""

from __future__ import annotations

import math
from typing import Iterable, Sequence

import attrs
import torch
import torch.nn.functional as F
from torch import nn

from accelframe import validators as v
from accelframe.errors import ConfigError
from accelframe.types import KVWrite

# ------------------------------------------------------------------------------------------------
# config
# ------------------------------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class WanDiTConfig:
    """Sizes of a Wan 2.1 DiT. ``wan_1_3b()`` and ``wan_14b()`` are the released sizes."""

    dim: int = attrs.field(default=1536, validator=v.number_in(2, integer=True))
    ffn_dim: int = attrs.field(default=8960, validator=v.number_in(1, integer=True))
    num_heads: int = attrs.field(default=12, validator=v.number_in(1, integer=True))
    num_layers: int = attrs.field(default=30, validator=v.number_in(1, integer=True))
    freq_dim: int = attrs.field(default=256, validator=v.number_in(2, integer=True))
    text_dim: int = attrs.field(default=4096, validator=v.number_in(1, integer=True))
    text_len: int = attrs.field(default=512, validator=v.number_in(1, integer=True))
    in_dim: int = attrs.field(default=16, validator=v.number_in(1, integer=True))
    out_dim: int = attrs.field(default=16, validator=v.number_in(1, integer=True))
    patch_size: tuple[int, int, int] = attrs.field(default=(1, 2, 2), converter=tuple)
    cross_attn_norm: bool = True
    qk_norm: bool = True
    eps: float = attrs.field(default=1e-6, validator=v.number_in(0.0, 1.0))
    inject_sample_info: bool = False  # SkyReels-V2: an fps embedding added to the modulation
    # Not in Wan: a learned embedding per token of an (h, w) grid, added after the patch embedding
    # (key ``spatial_embedding``). The embedded world's DiTs use it: RoPE positions are relative, so
    # at full noise a Wan DiT cannot tell where in the frame a token sits (docs/world.md). None: Wan.
    spatial_grid: tuple[int, int] | None = attrs.field(default=None,
                                                       converter=lambda g: None if g is None else tuple(g))
    rope_max_len: int = attrs.field(default=1024, validator=v.number_in(1, integer=True))

    def __attrs_post_init__(self) -> None:
        if self.dim % self.num_heads:
            raise ConfigError("WanDiTConfig", "num_heads", self.num_heads, f"a divisor of dim = {self.dim}")
        if (self.dim // self.num_heads) % 2:
            raise ConfigError("WanDiTConfig", "num_heads", self.num_heads,
                              "a head count leaving an even head dimension (RoPE rotates pairs)")
        if self.freq_dim % 2:
            raise ConfigError("WanDiTConfig", "freq_dim", self.freq_dim, "an even number")
        if len(self.patch_size) != 3 or any(int(p) < 1 for p in self.patch_size):
            raise ConfigError("WanDiTConfig", "patch_size", self.patch_size, "three positive integers")
        if self.patch_size[0] != 1:
            raise ConfigError("WanDiTConfig", "patch_size", self.patch_size,
                              "a temporal patch of 1 (AR units address single latent frames)")
        if self.spatial_grid is not None and (len(self.spatial_grid) != 2
                                              or any(not isinstance(n, int) or n < 1 for n in self.spatial_grid)):
            raise ConfigError("WanDiTConfig", "spatial_grid", self.spatial_grid, "None or two positive ints (h, w)")

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    @property
    def size_name(self) -> str:
        return {1536: "1.3B", 5120: "14B"}.get(self.dim, f"custom (dim {self.dim})")

    def flops(self, tokens: int, kv_tokens: int) -> float:
        """Multiply-adds x 2 of one forward over ``tokens`` query tokens attending to ``kv_tokens``
        (dense; a block-causal mask does not lower it): projections, attention, cross-attention on
        ``text_len`` tokens, FFN, patch embedding and head. Norms and RoPE are left out."""
        d, f, lt = self.dim, self.ffn_dim, self.text_len
        patch = self.in_dim * self.patch_size[0] * self.patch_size[1] * self.patch_size[2]
        per_layer = (2 * 4 * tokens * d * d + 2 * 2 * tokens * kv_tokens * d  # self-attention
                     + 2 * 2 * tokens * d * d + 2 * 2 * tokens * lt * d  # cross-attention (q, o)
                     + 2 * 2 * tokens * d * f)  # FFN
        return float(self.num_layers * per_layer + 2 * tokens * d * patch * 2)

    @classmethod
    def wan_1_3b(cls, **kw) -> WanDiTConfig:
        return cls(**{"dim": 1536, "ffn_dim": 8960, "num_heads": 12, "num_layers": 30, **kw})

    @classmethod
    def wan_14b(cls, **kw) -> WanDiTConfig:
        return cls(**{"dim": 5120, "ffn_dim": 13824, "num_heads": 40, "num_layers": 40, **kw})

    @classmethod
    def tiny(cls, **kw) -> WanDiTConfig:
        """A few-thousand-parameter model for tests: 2 layers, 2 heads of 16."""
        base = {"dim": 32, "ffn_dim": 64, "num_heads": 2, "num_layers": 2, "freq_dim": 16,
                "text_dim": 24, "text_len": 8, "in_dim": 4, "out_dim": 4}
        return cls(**{**base, **kw})

    @classmethod
    def from_state_dict(cls, sd: dict[str, torch.Tensor], **kw) -> WanDiTConfig:
        """Infer the sizes from tensor shapes (original key names). ``num_heads`` cannot be read
        from shapes: the released sizes fix it (dim 1536 -> 12, 5120 -> 40), else ``dim // 128``.
        A field given in ``kw`` (from a config) wins over the shapes: ``num_layers`` from a config
        is kept when the last blocks are missing, so that fitting names them."""
        pe = sd["patch_embedding.weight"]  # [dim, in_dim, pt, ph, pw]
        dim, in_dim = pe.shape[0], pe.shape[1]
        layers = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
        head = sd["head.head.weight"]  # [out_dim * prod(patch), dim]
        patch = tuple(pe.shape[2:])
        heads = {1536: 12, 5120: 40}.get(dim, max(dim // 128, 1))
        fields = dict(dim=dim, in_dim=in_dim, patch_size=patch, num_layers=layers, num_heads=heads,
                      ffn_dim=sd["blocks.0.ffn.0.weight"].shape[0],
                      freq_dim=sd["time_embedding.0.weight"].shape[1],
                      text_dim=sd["text_embedding.0.weight"].shape[1],
                      out_dim=head.shape[0] // math.prod(patch),
                      cross_attn_norm="blocks.0.norm3.weight" in sd,
                      qk_norm="blocks.0.self_attn.norm_q.weight" in sd,
                      inject_sample_info="fps_embedding.weight" in sd,
                      spatial_grid=spatial_grid(sd.get("spatial_embedding")))
        return cls(**{**fields, **kw})


def spatial_grid(table: torch.Tensor | None) -> tuple[int, int] | None:
    """The (h, w) grid of a ``spatial_embedding`` table ``[h, w, D]`` (None without one)."""
    return None if table is None else (int(table.shape[0]), int(table.shape[1]))


# ------------------------------------------------------------------------------------------------
# embeddings and RoPE
# ------------------------------------------------------------------------------------------------


def sinusoidal(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Wan's timestep embedding: ``[cos(t w), sin(t w)]`` with ``w_k = 10000^(-k / (dim/2))``,
    computed in float64 (t reaches 1000). ``t: [...]`` -> ``[..., dim]`` float32."""
    half = dim // 2
    w = torch.pow(10000.0, -torch.arange(half, dtype=torch.float64, device=t.device) / half)  # [half]
    arg = t.to(torch.float64).unsqueeze(-1) * w  # [..., half]
    return torch.cat([torch.cos(arg), torch.sin(arg)], dim=-1).float()


def rope_tables(head_dim: int, max_len: int, theta: float = 10000.0) -> tuple[torch.Tensor, ...]:
    """Per-axis rotations ``e^(i p w)`` as complex128 tables ``[max_len, d_axis / 2]`` for (frame,
    height, width). Wan splits the head dimension as ``d - 4 (d // 6)`` for frames and ``2 (d // 6)``
    for each spatial axis. Built on the CPU even under a meta-device context."""
    hw = 2 * (head_dim // 6)
    out = []
    for d in (head_dim - 2 * hw, hw, hw):
        inv = 1.0 / theta ** (torch.arange(0, d, 2, dtype=torch.float64, device="cpu") / d)  # [d / 2]
        ang = torch.outer(torch.arange(max_len, dtype=torch.float64, device="cpu"), inv)  # [max_len, d / 2]
        out.append(torch.polar(torch.ones_like(ang), ang))
    return tuple(out)


def rope_freqs(tables: tuple[torch.Tensor, ...], frames: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Rotations ``[F * h * w, 1, head_dim / 2]`` (complex64) for frame positions ``frames: [F]``."""
    tf, th, tw = tables
    f = frames.numel()
    af = tf[frames].view(f, 1, 1, -1).expand(f, h, w, -1)  # [F, h, w, d_f / 2]
    ah = th[:h].view(1, h, 1, -1).expand(f, h, w, -1)
    aw = tw[:w].view(1, 1, w, -1).expand(f, h, w, -1)
    return torch.cat([af, ah, aw], dim=-1).reshape(f * h * w, 1, -1).to(torch.complex64)


def apply_rope(x: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
    """Rotate interleaved pairs ``(x[2i], x[2i+1])`` as complex numbers, in float32.
    ``x: [B, N, H, D]``, ``freqs: [N, 1, D/2]`` complex."""
    xc = torch.view_as_complex(x.float().unflatten(-1, (-1, 2)))  # [B, N, H, D/2]
    return torch.view_as_real(xc * freqs).flatten(-2).type_as(x)


def block_causal_mask(num_frames: int, tokens_per_frame: int, block: int,
                      device: torch.device | None = None, first: int = 0) -> torch.Tensor:
    """``[N, N]`` boolean: token of frame i attends token of frame j iff j // block <= i // block,
    with frames numbered from ``first`` (blocks stay aligned when a call starts mid-video)."""
    fb = (torch.arange(num_frames, device=device) + first) // block  # [F] block index per frame
    allowed = fb.view(1, -1) <= fb.view(-1, 1)  # [F, F], row = query frame
    return allowed.repeat_interleave(tokens_per_frame, 0).repeat_interleave(tokens_per_frame, 1)


class RMSNorm(nn.Module):
    """RMS norm over the whole feature dimension (all heads), computed in float32."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).type_as(x) * self.weight


class FP32LayerNorm(nn.LayerNorm):
    """Affine LayerNorm computed in float32 whatever the weights' dtype (Wan's cross-attention norm)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x.float(), self.normalized_shape, self.weight.float(), self.bias.float(), self.eps)


def layer_norm(x: torch.Tensor, eps: float) -> torch.Tensor:
    """Affine-free LayerNorm in float32 (Wan's norm1 / norm2 / head norm)."""
    return F.layer_norm(x.float(), (x.shape[-1],), eps=eps)


# ------------------------------------------------------------------------------------------------
# caches
# ------------------------------------------------------------------------------------------------


@attrs.define(eq=False)
class KVCache:
    """Self-attention K/V of context frames, per layer, frame-major.

    ``k[l]`` / ``v[l]``: ``[B, Fc * S, H, D]`` with RoPE already applied to K (a frame keeps the
    position it was written at, ``positions``, until :func:`reindex_cache` moves it; a Krea-style
    rebuild rewrites the whole cache from position 0). ``frames`` names the latent frame each cached
    slot holds, ``sinks`` how many leading slots are sinks that eviction never touches, ``window``
    the most frames kept (sinks included; None = unbounded). Cached tensors are never modified in
    place, so a snapshot is a shallow copy.
    """

    num_layers: int
    tokens_per_frame: int
    window: int | None = None
    sink_size: int = 0
    k: list[torch.Tensor | None] = attrs.field(init=False)
    v: list[torch.Tensor | None] = attrs.field(init=False)
    frames: tuple[int, ...] = ()
    sinks: int = 0
    scratch_k: list[torch.Tensor | None] = attrs.field(init=False)
    scratch_v: list[torch.Tensor | None] = attrs.field(init=False)
    scratch_frames: tuple[int, ...] = ()
    rope_offset: int = 0  # subtracted from frame indices to get RoPE positions
    positions: tuple[int, ...] = ()  # the RoPE frame position each cached slot's K carries
    scratch_positions: tuple[int, ...] = ()

    def __attrs_post_init__(self) -> None:
        self.k = [None] * self.num_layers
        self.v = [None] * self.num_layers
        self.scratch_k = [None] * self.num_layers
        self.scratch_v = [None] * self.num_layers

    def __len__(self) -> int:
        return len(self.frames)

    def nbytes(self) -> int:
        """Bytes held by committed and scratch K/V."""
        return sum(t.numel() * t.element_size()
                   for t in (*self.k, *self.v, *self.scratch_k, *self.scratch_v) if t is not None)

    # -- called by the attention layers during a forward --

    def context(self, layer: int) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        return self.k[layer], self.v[layer]

    def write(self, layer: int, k: torch.Tensor, v: torch.Tensor, mode: KVWrite) -> None:
        """Store a call's K/V: SCRATCH keeps them aside (replacing older scratch), COMMIT appends
        them as context. The frame bookkeeping happens once per forward in :meth:`finish`."""
        if mode is KVWrite.SCRATCH:
            self.scratch_k[layer], self.scratch_v[layer] = k, v
        elif mode is KVWrite.COMMIT:
            old_k, old_v = self.k[layer], self.v[layer]
            self.k[layer] = k if old_k is None else torch.cat([old_k, k], dim=1)  # [B, (Fc + F) S, H, D]
            self.v[layer] = v if old_v is None else torch.cat([old_v, v], dim=1)

    def finish(self, frames: Iterable[int], mode: KVWrite, positions: Iterable[int] | None = None) -> None:
        """After a forward that wrote ``frames`` at RoPE ``positions`` (default: each frame minus
        ``rope_offset``): record them, then apply the window."""
        frames = tuple(frames)
        pos = tuple(f - self.rope_offset for f in frames) if positions is None else tuple(positions)
        assert len(pos) == len(frames), f"{len(frames)} frames written at {len(pos)} positions"
        if mode is KVWrite.SCRATCH:
            self.scratch_frames, self.scratch_positions = frames, pos
        elif mode is KVWrite.COMMIT:
            self.frames = self.frames + frames
            self.positions = self.positions + pos
            self.scratch_k = [None] * self.num_layers
            self.scratch_v = [None] * self.num_layers
            self.scratch_frames = self.scratch_positions = ()
            if self.sinks < self.sink_size:
                self.sinks = min(self.sink_size, len(self.frames))
            if self.window is not None and len(self.frames) > self.window:
                self.evict_oldest(len(self.frames) - self.window)

    def commit_scratch(self) -> None:
        """Promote the last scratch K/V to context (a commit without another model call)."""
        if not self.scratch_frames:
            return
        for layer in range(self.num_layers):
            self.write(layer, self.scratch_k[layer], self.scratch_v[layer], KVWrite.COMMIT)
        self.finish(self.scratch_frames, KVWrite.COMMIT, self.scratch_positions)

    # -- management --

    def keep(self, slots: list[int]) -> None:
        """Keep only the cached slots at these indices (in order)."""
        s = self.tokens_per_frame
        idx = torch.cat([torch.arange(i * s, (i + 1) * s) for i in slots]) if slots else None
        for layer in range(self.num_layers):
            if self.k[layer] is None:
                continue
            if idx is None:
                self.k[layer] = self.v[layer] = None
            else:
                dev = self.k[layer].device
                self.k[layer] = self.k[layer].index_select(1, idx.to(dev))
                self.v[layer] = self.v[layer].index_select(1, idx.to(dev))
        kept = [self.frames[i] for i in slots]
        self.sinks = sum(1 for i in slots if i < self.sinks)
        self.frames = tuple(kept)
        self.positions = tuple(self.positions[i] for i in slots)

    def evict_oldest(self, n: int) -> None:
        """Drop the ``n`` oldest non-sink frames."""
        slots = list(range(len(self.frames)))
        drop = set(slots[self.sinks:self.sinks + n])
        self.keep([i for i in slots if i not in drop])

    def evict(self, frames: Iterable[int]) -> None:
        gone = set(frames)
        self.keep([i for i, f in enumerate(self.frames) if f not in gone])

    def snapshot(self) -> tuple:
        return (list(self.k), list(self.v), self.frames, self.sinks, list(self.scratch_k),
                list(self.scratch_v), self.scratch_frames, self.rope_offset, self.positions,
                self.scratch_positions)

    def restore(self, snap: tuple) -> None:
        (k, v, self.frames, self.sinks, sk, sv, self.scratch_frames, self.rope_offset, self.positions,
         self.scratch_positions) = snap
        self.k, self.v, self.scratch_k, self.scratch_v = list(k), list(v), list(sk), list(sv)


def reindex_cache(dit: "WanDiT", cache: KVCache) -> None:
    """Move every cached frame's keys to the RoPE position of its slot (slot ``i`` at ``i``, sinks
    first), StreamingLLM's positions within the cache: the rotation by ``i - positions[i]`` on the
    frame axis composes with the one the key carries, so no model call is needed. Values carry no
    position. Layers this process does not hold (a pipeline rank's) are skipped."""
    target = tuple(range(len(cache.frames)))
    if cache.positions == target:
        return
    held = next((t for t in cache.k if t is not None), None)
    if held is not None:
        device = held.device
        tf, th, tw = dit.rope_on(device)
        delta = torch.tensor([j - p for j, p in zip(target, cache.positions)], device=device)  # [Fc]
        axis = tf[delta.abs()]  # [Fc, d_f / 2] complex128
        axis = torch.where(delta.view(-1, 1) < 0, axis.conj(), axis)
        still = torch.ones(len(target), th.shape[1] + tw.shape[1], dtype=axis.dtype, device=device)
        rot = torch.cat([axis, still], dim=1).to(torch.complex64)  # [Fc, Dh / 2]
        rot = rot.repeat_interleave(cache.tokens_per_frame, dim=0).unsqueeze(1)  # [Fc * S, 1, Dh / 2]
        cache.k = [None if t is None else apply_rope(t, rot) for t in cache.k]
    cache.positions = target


@attrs.define(eq=False)
class CrossCache:
    """Cross-attention K/V of one batch of prompts, per layer: ``[B, L, H, D]`` each."""

    k: list[torch.Tensor]
    v: list[torch.Tensor]


def cat_cross(caches: Sequence[CrossCache]) -> CrossCache:
    """The cross-attention K/V of several rows' prompts as one batch."""
    if len(caches) == 1:
        return caches[0]
    n = len(caches[0].k)
    return CrossCache(k=[torch.cat([c.k[i] for c in caches]) for i in range(n)],
                      v=[torch.cat([c.v[i] for c in caches]) for i in range(n)])


# ------------------------------------------------------------------------------------------------
# attention
# ------------------------------------------------------------------------------------------------


class Attention(nn.Module):
    """Projections q, k, v, o with RMS norms on q and k (over all heads), as Wan names them."""

    def __init__(self, cfg: WanDiTConfig) -> None:
        super().__init__()
        d = cfg.dim
        self.heads = cfg.num_heads
        self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))
        self.norm_q = RMSNorm(d, cfg.eps) if cfg.qk_norm else nn.Identity()
        self.norm_k = RMSNorm(d, cfg.eps) if cfg.qk_norm else nn.Identity()


class SelfAttention(Attention):
    """Self-attention over the call's tokens and the cached context before them (``past_k``,
    ``past_v``: ``[B, Nc, H, Dh]`` or None). Pure tensor work: the caller reads and writes the cache
    (so that a compiled block holds no cache bookkeeping)."""

    def forward(self, x: torch.Tensor, rope: torch.Tensor, mask: torch.Tensor | None,
                past_k: torch.Tensor | None, past_v: torch.Tensor | None,
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        b, n, d = x.shape  # [B, N, D], N = F * S tokens
        q = self.norm_q(self.q(x)).view(b, n, self.heads, -1)  # [B, N, H, Dh]
        k = self.norm_k(self.k(x)).view(b, n, self.heads, -1)
        val = self.v(x).view(b, n, self.heads, -1)
        q, k = apply_rope(q, rope), apply_rope(k, rope)
        keys, values = k, val
        if past_k is not None:  # attend to the cached context, then this call's own tokens
            keys = torch.cat([past_k, k], dim=1)  # [B, Nc + N, H, Dh]
            values = torch.cat([past_v, val], dim=1)
        out = F.scaled_dot_product_attention(
            q.transpose(1, 2), keys.transpose(1, 2), values.transpose(1, 2), attn_mask=mask
        )  # [B, H, N, Dh]
        return self.o(out.transpose(1, 2).reshape(b, n, d)), k, val  # and this call's K/V [B, N, H, Dh]


class CrossAttention(Attention):
    """Attention from the video tokens to the text; the text's K/V come from a :class:`CrossCache`."""

    def context_kv(self, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, n, _ = context.shape  # [B, L, D], the embedded text
        k = self.norm_k(self.k(context)).view(b, n, self.heads, -1)  # [B, L, H, Dh]
        return k, self.v(context).view(b, n, self.heads, -1)

    def forward(self, x: torch.Tensor, k: torch.Tensor, val: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q = self.norm_q(self.q(x)).view(b, n, self.heads, -1)  # [B, N, H, Dh]
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), val.transpose(1, 2))
        return self.o(out.transpose(1, 2).reshape(b, n, d))


# ------------------------------------------------------------------------------------------------
# the block and the network
# ------------------------------------------------------------------------------------------------


class WanBlock(nn.Module):
    """Self-attention, cross-attention, FFN; each modulated per frame by the timestep."""

    COMPILED = ("compute",)  # what compile=True compiles (accelframe_adapters.compiling)

    def __init__(self, cfg: WanDiTConfig) -> None:
        super().__init__()
        self.eps = cfg.eps
        self.self_attn = SelfAttention(cfg)
        self.norm3 = FP32LayerNorm(cfg.dim, cfg.eps) if cfg.cross_attn_norm else nn.Identity()
        self.cross_attn = CrossAttention(cfg)
        self.ffn = nn.Sequential(nn.Linear(cfg.dim, cfg.ffn_dim), nn.GELU(approximate="tanh"),
                                 nn.Linear(cfg.ffn_dim, cfg.dim))
        self.modulation = nn.Parameter(torch.randn(1, 6, cfg.dim) / cfg.dim**0.5)

    def modulated_input(self, x: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        """The self-attention input ``norm1(x) (1 + scale) + shift``; ``x: [B, F, S, D]``,
        ``e: [B, F, 6, D]``. This is what :meth:`WanDiT.probe` returns for block 0."""
        m = (self.modulation.unsqueeze(0) + e.float()).unsqueeze(2)  # [B, F, 1, 6, D]
        return layer_norm(x, self.eps) * (1 + m[..., 1, :]) + m[..., 0, :]

    def forward(self, x: torch.Tensor, e: torch.Tensor, ctx_k: torch.Tensor, ctx_v: torch.Tensor,
                rope: torch.Tensor, mask: torch.Tensor | None, cache: KVCache | RowsContext | None,
                layer: int, kv_write: KVWrite) -> torch.Tensor:
        """The block over ``x [B, F, S, D]``, attending to ``cache``'s context of this layer and
        writing this call's K/V there as ``kv_write`` says."""
        past_k, past_v = (None, None) if cache is None else cache.context(layer)
        x, k, val = self.compute(x, e, ctx_k, ctx_v, rope, mask, past_k, past_v)
        if cache is not None and kv_write is not KVWrite.NONE:
            cache.write(layer, k, val, kv_write)
        return x

    def compute(self, x: torch.Tensor, e: torch.Tensor, ctx_k: torch.Tensor, ctx_v: torch.Tensor,
                rope: torch.Tensor, mask: torch.Tensor | None, past_k: torch.Tensor | None,
                past_v: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The block's tensor work (what ``compile=True`` compiles): the new tokens and this call's
        self-attention K/V."""
        b, f, s, d = x.shape  # [B, F, S, D]
        m = (self.modulation.unsqueeze(0) + e.float()).unsqueeze(2)  # [B, F, 1, 6, D]
        shift, scale, gate, c_shift, c_scale, c_gate = m.unbind(3)  # each [B, F, 1, D]
        h = (layer_norm(x, self.eps) * (1 + scale) + shift).type_as(x)
        y, k, val = self.self_attn(h.view(b, f * s, d), rope, mask, past_k, past_v)
        x = (x.float() + y.view(b, f, s, d) * gate).type_as(x)
        h = self.norm3(x.float()).type_as(x).view(b, f * s, d)
        x = x + self.cross_attn(h, ctx_k, ctx_v).view(b, f, s, d)
        h = (layer_norm(x, self.eps) * (1 + c_scale) + c_shift).type_as(x)
        return (x.float() + self.ffn(h).float() * c_gate).type_as(x), k, val


class Head(nn.Module):
    COMPILED = ("forward",)

    def __init__(self, cfg: WanDiTConfig) -> None:
        super().__init__()
        self.eps = cfg.eps
        self.head = nn.Linear(cfg.dim, cfg.out_dim * math.prod(cfg.patch_size))
        self.modulation = nn.Parameter(torch.randn(1, 2, cfg.dim) / cfg.dim**0.5)

    def forward(self, x: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        m = (self.modulation.unsqueeze(0) + e.float().unsqueeze(2)).unsqueeze(2)  # [B, F, 1, 2, D]
        shift, scale = m.unbind(3)  # [B, F, 1, D]
        return self.head((layer_norm(x, self.eps) * (1 + scale) + shift).type_as(x))


class WanDiT(nn.Module):
    """The Wan 2.1 DiT. ``forward(x [B, C, F, H, W], t [B, F], context)`` -> flow ``[B, C, F, H, W]``."""

    def __init__(self, cfg: WanDiTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.dim
        self.patch_embedding = nn.Conv3d(cfg.in_dim, d, kernel_size=cfg.patch_size, stride=cfg.patch_size)
        self.text_embedding = nn.Sequential(nn.Linear(cfg.text_dim, d), nn.GELU(approximate="tanh"),
                                            nn.Linear(d, d))
        self.time_embedding = nn.Sequential(nn.Linear(cfg.freq_dim, d), nn.SiLU(), nn.Linear(d, d))
        self.time_projection = nn.Sequential(nn.SiLU(), nn.Linear(d, 6 * d))
        self.blocks = nn.ModuleList(WanBlock(cfg) for _ in range(cfg.num_layers))
        self.head = Head(cfg)
        if cfg.spatial_grid is not None:
            self.spatial_embedding = nn.Parameter(torch.randn(*cfg.spatial_grid, d) * 0.02)  # [h, w, D]
        if cfg.inject_sample_info:
            self.fps_embedding = nn.Embedding(2, d)
            self.fps_projection = nn.Sequential(nn.Linear(d, d), nn.SiLU(), nn.Linear(d, 6 * d))
        # plain attributes, not buffers: ``module.to(dtype)`` would cast complex tables to real
        self._rope = rope_tables(cfg.head_dim, cfg.rope_max_len)
        self._rope_on: dict[torch.device, tuple[torch.Tensor, ...]] = {}

    def rope_on(self, device: torch.device) -> tuple[torch.Tensor, ...]:
        """The RoPE tables on ``device`` (copied there once)."""
        found = self._rope_on.get(device)
        if found is None:
            found = self._rope_on[device] = tuple(t.to(device) for t in self._rope)
        return found

    # -- conditioning --

    def cross_cache(self, context: torch.Tensor) -> CrossCache:
        """Embed the text ``[B, L, text_dim]`` and compute every layer's cross-attention K/V once."""
        c = self.text_embedding(context)  # [B, L, D]
        ks, vs = zip(*(blk.cross_attn.context_kv(c) for blk in self.blocks))
        return CrossCache(k=list(ks), v=list(vs))

    def time_embed(self, t: torch.Tensor, fps: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``t: [B, F]`` -> (head modulation input ``[B, F, D]``, block modulation ``[B, F, 6, D]``)."""
        b, f = t.shape
        e = self.time_embedding(sinusoidal(t, self.cfg.freq_dim).to(self.time_embedding[0].weight.dtype))
        e0 = self.time_projection(e).unflatten(-1, (6, -1))  # [B, F, 6, D]
        if self.cfg.inject_sample_info:
            which = torch.full((b,), 0 if fps is None else int(fps), dtype=torch.long, device=t.device)
            extra = self.fps_projection(self.fps_embedding(which)).unflatten(-1, (6, -1))  # [B, 6, D]
            e0 = e0 + extra.unsqueeze(1)
        return e.float(), e0.float()


    # -- forward --

    def embed(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int, int]]:
        """Patchify ``x: [B, C, F, H, W]`` -> tokens ``[B, F, S, D]`` and the token grid."""
        y = self.patch_embedding(x)  # [B, D, F, h, w]
        b, d, f, h, w = y.shape
        tokens = y.permute(0, 2, 3, 4, 1)  # [B, F, h, w, D]
        if self.cfg.spatial_grid is not None:
            if (h, w) != self.cfg.spatial_grid:
                raise ConfigError("WanDiT input", "token grid", (h, w),
                                  f"{self.cfg.spatial_grid}: the grid this model's spatial embedding was trained "
                                  f"for ({self.cfg.spatial_grid[0] * self.cfg.patch_size[1]} x "
                                  f"{self.cfg.spatial_grid[1] * self.cfg.patch_size[2]} latents)")
            tokens = tokens + self.spatial_embedding.to(tokens.dtype)
        return tokens.reshape(b, f, h * w, d), (f, h, w)

    def probe(self, x: torch.Tensor, t: torch.Tensor, fps: int | None = None) -> torch.Tensor:
        """Block 0's timestep-modulated input ``[B, F, S, D]``: the cheap signal step policies
        compare between calls (TeaCache's and SCOPE's indicator)."""
        tokens, _ = self.embed(x)
        _, e0 = self.time_embed(t, fps)
        return self.blocks[0].modulated_input(tokens, e0)

    def forward(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor | CrossCache, *,
                frame_offset: int = 0, causal_block: int | None = None, cache: KVCache | None = None,
                kv_write: KVWrite = KVWrite.NONE, rope_start: int | None = None,
                fps: int | None = None) -> torch.Tensor:
        """One model call.

        ``x: [B, C, F, H, W]`` noisy latents, ``t: [B, F]`` Wan timesteps in [0, 1000],
        ``context``: text ``[B, L, text_dim]`` or a :class:`CrossCache`. Frame ``j`` takes RoPE
        position ``frame_offset + j - cache.rope_offset`` (or ``rope_start + j``). ``causal_block``
        masks a full-sequence forward block-causally (with a cache only while it is empty: a
        rebuild). With ``cache``, the call attends to the cached frames and writes its own K/V as
        ``kv_write`` says (as frames ``frame_offset ...``). Returns the flow ``[B, C_out, F, H, W]``.
        """
        b, c, f, hh, ww = x.shape
        assert t.shape == (b, f), f"t must be [B, F] = {(b, f)}, got {tuple(t.shape)}"
        assert cache is None or causal_block is None or len(cache) == 0, (
            "a call with cached context is causal by construction; a mask applies to a rebuild only")
        tokens, (f, h, w) = self.embed(x)  # [B, F, S, D]
        s = h * w
        if rope_start is None:
            rope_start = frame_offset - (cache.rope_offset if cache is not None else 0)
        assert 0 <= rope_start and rope_start + f <= self.cfg.rope_max_len, (
            f"RoPE frame positions {rope_start}..{rope_start + f - 1} outside [0, {self.cfg.rope_max_len})")
        pos = torch.arange(rope_start, rope_start + f, device=x.device)  # [F]
        rope = rope_freqs(self.rope_on(x.device), pos, h, w)  # [N, 1, Dh / 2]
        mask = None if causal_block is None else block_causal_mask(f, s, causal_block, x.device, frame_offset)
        e, e0 = self.time_embed(t, fps)  # [B, F, D], [B, F, 6, D]
        cross = context if isinstance(context, CrossCache) else self.cross_cache(context)
        for i, blk in enumerate(self.blocks):
            tokens = blk(tokens, e0, cross.k[i], cross.v[i], rope, mask, cache, i, kv_write)
        if cache is not None and kv_write is not KVWrite.NONE:
            cache.finish(range(frame_offset, frame_offset + f), kv_write, range(rope_start, rope_start + f))
        return unpatchify(self, self.head(tokens, e), (f, h, w))  # [B, C_out, F, H, W]


# ------------------------------------------------------------------------------------------------
# stream batch: rows with their own positions and caches
# ------------------------------------------------------------------------------------------------


@attrs.define(eq=False)
class RowsContext:
    """Read-only view of several rows' KV caches for one batched forward (StreamDiffusionV2's stream
    batch): row ``r`` attends to its own cache's frames, padded to the longest; nothing is written.
    ``mask`` is None when every row has the same context length (then the arithmetic is a plain
    batched forward's), else ``[R, 1, N, Nc_max + N]`` with padded keys masked out."""

    caches: list[KVCache | None]
    tokens: int  # query tokens per row, N
    lengths: list[int] = attrs.field(init=False)  # cached tokens per row, Nc
    mask: torch.Tensor | None = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        # from the frames, not a layer's K: a pipeline rank holds the K/V of its blocks only
        self.lengths = [0 if c is None else len(c.frames) * c.tokens_per_frame for c in self.caches]
        longest = max(self.lengths)
        self.mask = None
        if len(set(self.lengths)) > 1:
            m = torch.ones(len(self.caches), 1, self.tokens, longest + self.tokens, dtype=torch.bool)
            for r, n in enumerate(self.lengths):
                m[r, :, :, n:longest] = False  # padding slots
            self.mask = m

    def context(self, layer: int) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        longest = max(self.lengths)
        if longest == 0:
            return None, None
        ks, vs = [], []
        for c, n in zip(self.caches, self.lengths):
            if n:
                k, v = c.k[layer], c.v[layer]  # [1, Nc, H, Dh]
            else:
                like = next(x.k[layer] for x, m in zip(self.caches, self.lengths) if m)
                k = v = like.new_zeros(1, 0, *like.shape[2:])
            pad = longest - n
            if pad:
                k = torch.cat([k, k.new_zeros(k.shape[0], pad, *k.shape[2:])], dim=1)
                v = torch.cat([v, v.new_zeros(v.shape[0], pad, *v.shape[2:])], dim=1)
            ks.append(k)
            vs.append(v)
        return torch.cat(ks, dim=0), torch.cat(vs, dim=0)  # [R, Nc_max, H, Dh] each

    def write(self, layer: int, k: torch.Tensor, v: torch.Tensor, mode: KVWrite) -> None:
        raise AssertionError("a stream-batch forward writes no K/V")


@attrs.define(eq=False)
class RowsPass:
    """What every block of one batched rows pass needs besides the tokens: the time embeddings
    ``e [R, F, D]`` (the head's) and ``e0 [R, F, 6, D]`` (the blocks'), the RoPE rotations, the
    read-only context of the rows' caches and its padding mask. Any rank can build it from the
    rows' timesteps, RoPE starts and caches (what the pipeline-parallel ring does)."""

    e: torch.Tensor
    e0: torch.Tensor
    rope: torch.Tensor
    view: RowsContext
    mask: torch.Tensor | None
    grid: tuple[int, int, int]  # tokens (F, h, w)

    def blocks(self, dit: WanDiT, tokens: torch.Tensor, cross: CrossCache, lo: int = 0,
               hi: int | None = None) -> torch.Tensor:
        """Blocks ``[lo, hi)`` over ``tokens [R, F, S, D]`` (read only)."""
        for i in range(lo, len(dit.blocks) if hi is None else hi):
            tokens = dit.blocks[i](tokens, self.e0, cross.k[i], cross.v[i], self.rope, self.mask, self.view, i,
                                   KVWrite.NONE)
        return tokens

    def head(self, dit: WanDiT, tokens: torch.Tensor) -> torch.Tensor:
        """The head over the last block's tokens -> the flow ``[R, C_out, F, H, W]``."""
        return unpatchify(dit, dit.head(tokens, self.e), self.grid)


def rows_pass(dit: WanDiT, grid: tuple[int, int, int], t: torch.Tensor, rope_starts: list[int],
              caches: list[KVCache | None], device: torch.device, fps: int | None = None) -> RowsPass:
    """The :class:`RowsPass` of rows with token grid ``grid`` (F, h, w), timesteps ``t [R, F]``,
    these RoPE starts and caches."""
    f, h, w = grid
    ropes = []
    for start in rope_starts:
        assert 0 <= start and start + f <= dit.cfg.rope_max_len, f"RoPE positions from {start} out of range"
        pos = torch.arange(start, start + f, device=device)  # [F]
        ropes.append(rope_freqs(dit.rope_on(device), pos, h, w))  # [N, 1, Dh / 2]
    rope = ropes[0] if len(set(rope_starts)) == 1 else torch.stack(ropes)  # [N, 1, Dh/2] or [R, N, 1, Dh/2]
    view = RowsContext(caches=list(caches), tokens=f * h * w)
    mask = None if view.mask is None else view.mask.to(device)
    e, e0 = dit.time_embed(t, fps)  # [R, F, D], [R, F, 6, D]
    return RowsPass(e=e, e0=e0, rope=rope, view=view, mask=mask, grid=grid)


def unpatchify(dit: WanDiT, out: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
    """The head's tokens ``[B, F, S, pt * ph * pw * C_out]`` as latents ``[B, C_out, F, H, W]``."""
    b = out.shape[0]
    f, h, w = grid
    pt, ph, pw = dit.cfg.patch_size
    out = out.view(b, f, h, w, pt, ph, pw, -1).permute(0, 7, 1, 4, 2, 5, 3, 6)  # [B, C, F, pt, h, ph, w, pw]
    return out.reshape(b, -1, f * pt, h * ph, w * pw)


def forward_rows(dit: WanDiT, x: torch.Tensor, t: torch.Tensor, cross: CrossCache,
                 rope_starts: list[int], caches: list[KVCache | None], fps: int | None = None) -> torch.Tensor:
    """One batched call over rows that each have their own RoPE start and KV cache (read only).

    ``x: [R, C, F, H, W]``, ``t: [R, F]``, ``cross``: K/V of R prompts. Row ``r`` is the forward
    ``dit(x[r:r+1], t[r:r+1], ..., rope_start=rope_starts[r], cache=caches[r])`` with no writes; a
    batch of one row is exactly that call. Returns ``[R, C_out, F, H, W]``."""
    tokens, grid = dit.embed(x)  # [R, F, S, D]
    p = rows_pass(dit, grid, t, rope_starts, caches, x.device, fps)
    return p.head(dit, p.blocks(dit, tokens, cross))


# ------------------------------------------------------------------------------------------------
# checkpoint key names
# ------------------------------------------------------------------------------------------------

_DIFFUSERS_BLOCK = {
    "attn1.to_q": "self_attn.q", "attn1.to_k": "self_attn.k", "attn1.to_v": "self_attn.v",
    "attn1.to_out.0": "self_attn.o", "attn1.norm_q": "self_attn.norm_q", "attn1.norm_k": "self_attn.norm_k",
    "attn2.to_q": "cross_attn.q", "attn2.to_k": "cross_attn.k", "attn2.to_v": "cross_attn.v",
    "attn2.to_out.0": "cross_attn.o", "attn2.norm_q": "cross_attn.norm_q", "attn2.norm_k": "cross_attn.norm_k",
    "norm2": "norm3", "ffn.net.0.proj": "ffn.0", "ffn.net.2": "ffn.2", "scale_shift_table": "modulation",
}
_DIFFUSERS_TOP = {
    "condition_embedder.text_embedder.linear_1": "text_embedding.0",
    "condition_embedder.text_embedder.linear_2": "text_embedding.2",
    "condition_embedder.time_embedder.linear_1": "time_embedding.0",
    "condition_embedder.time_embedder.linear_2": "time_embedding.2",
    "condition_embedder.time_proj": "time_projection.1",
    "proj_out": "head.head", "scale_shift_table": "head.modulation", "patch_embedding": "patch_embedding",
    "fps_embedding": "fps_embedding", "fps_projection.net.0.proj": "fps_projection.0",
    "fps_projection.net.2": "fps_projection.2",
}


def from_diffusers_key(key: str) -> str | None:
    """Map a diffusers ``WanTransformer3DModel`` / ``SkyReelsV2Transformer3DModel`` key to ours
    (None for keys with no counterpart here)."""
    if key.startswith("blocks."):
        _, idx, rest = key.split(".", 2)
        for src, dst in _DIFFUSERS_BLOCK.items():
            if rest == src or rest.startswith(src + "."):
                return f"blocks.{idx}.{dst}{rest[len(src):]}"
        return None
    for src, dst in _DIFFUSERS_TOP.items():
        if key == src or key.startswith(src + "."):
            return dst + key[len(src):]
    return None


def to_diffusers_key(key: str) -> str:
    """The inverse of :func:`from_diffusers_key` (for writing diffusers-layout checkpoints)."""
    if key.startswith("blocks."):
        _, idx, rest = key.split(".", 2)
        for src, dst in _DIFFUSERS_BLOCK.items():
            if rest == dst or rest.startswith(dst + "."):
                return f"blocks.{idx}.{src}{rest[len(dst):]}"
    for src, dst in _DIFFUSERS_TOP.items():
        if key == dst or key.startswith(dst + "."):
            return src + key[len(dst):]
    raise KeyError(key)


def diffusers_config(cfg: WanDiTConfig, *, skyreels: bool = True) -> dict:
    """The diffusers ``config.json`` fields of the same network."""
    out = {"patch_size": list(cfg.patch_size), "num_attention_heads": cfg.num_heads,
           "attention_head_dim": cfg.head_dim, "in_channels": cfg.in_dim, "out_channels": cfg.out_dim,
           "text_dim": cfg.text_dim, "freq_dim": cfg.freq_dim, "ffn_dim": cfg.ffn_dim,
           "num_layers": cfg.num_layers, "cross_attn_norm": cfg.cross_attn_norm,
           "qk_norm": "rms_norm_across_heads" if cfg.qk_norm else None, "eps": cfg.eps,
           "rope_max_seq_len": cfg.rope_max_len}
    if skyreels:
        out["inject_sample_info"] = cfg.inject_sample_info
    return out


__all__ = ["CrossCache", "KVCache", "RowsContext", "RowsPass", "WanDiT", "WanDiTConfig", "block_causal_mask",
           "cat_cross", "diffusers_config", "forward_rows", "from_diffusers_key", "reindex_cache", "rows_pass",
           "to_diffusers_key", "unpatchify"]
