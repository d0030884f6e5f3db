"""MAGI-1's diffusion transformer (SandAI's ``videodit_ardf``), compact and inference-only.

Read top-down: config, norms and embedders, RoPE, the packed KV cache, attention, the block, the
network. Parameter names are the released checkpoints' own (``x_embedder.weight``,
``videodit_blocks.layers.0.self_attention.linear_qkv.q.weight``, ...), with no prefix, so the
``inference_weight`` shards load as they are (:mod:`accelframe_adapters.magi.checkpoints`).

What sets MAGI apart from a Wan-style DiT (docs: the MAGI spec, sections 1 and 2):

- time conditions only two per-chunk gates: ``tanh(proj(SiLU(t_emb + y_adaln)))``; there is no
  shift/scale, and the gate multiplies *before* the post LayerNorm (sandwich norm:
  ``h + LN1p(gate * out)``); ``y_adaln`` ignores the prompt: it is one of two learned rows of
  ``null_caption_embedding`` (-2 text on, -1 text off);
- self- and cross-attention run in parallel from one pre-norm; their outputs are concatenated and
  interleaved over 8 blocks (MAGI's tensor-parallel layout) before one ``linear_proj``;
- learned RoPE bands (``rope.bands``, ``head_dim / 8`` per axis) over 3/4 of the head dims, time at
  absolute latent-frame positions, height and width centred and rescaled to a 16 x 16 grid;
- attention is full inside a chunk of ``chunk_width`` latent frames and reaches a contiguous range of
  chunks ``[lo, hi)`` in one absolute chunk index space; chunks before the call come from a packed
  per-chunk KV cache (:class:`MagiKVCache`).

The output is MAGI's velocity ``v = x_clean - noise`` in its time (0 = noise, 1 = clean).
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

FREQ_DIM = 256  # width of the timestep sinusoid
# MAGI rearranges [self | cross] as "(n hn hd) -> (hn n hd)" with hn = 8 hard-coded (its TP-8 layout). The
# rearrange is over flat columns, so 8 blocks work for every size here: Hq * d is a multiple of 8 because d is.
PROJ_BLOCKS = 8
ROPE_REFERENCE_TOKENS = 256  # h and w positions are rescaled as if the token grid were 16 x 16

_pos = v.number_in(1, integer=True)

# ------------------------------------------------------------------------------------------------
# config
# ------------------------------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class MagiDiTConfig:
    """Sizes of a MAGI-1 DiT. ``magi_4_5b()`` and ``magi_24b()`` are the released sizes.

    ``kv_channels`` is the head dim d; ``hidden_size`` need not equal ``heads * d`` (q is
    ``[Hq * d]`` projected from D). ``null_caption_tokens`` is how many leading rows of
    ``null_caption_embedding`` the unconditional caption marks valid."""

    hidden_size: int = attrs.field(validator=_pos)
    num_layers: int = attrs.field(validator=_pos)
    num_attention_heads: int = attrs.field(validator=_pos)
    num_query_groups: int = attrs.field(validator=_pos)
    kv_channels: int = attrs.field(validator=_pos)
    ffn_hidden_size: int = attrs.field(validator=_pos)
    in_channels: int = attrs.field(default=16, validator=_pos)
    out_channels: int = attrs.field(default=16, validator=_pos)
    patch_size: int = attrs.field(default=2, validator=_pos)
    t_patch_size: int = attrs.field(default=1, validator=_pos)
    cond_hidden_ratio: float = attrs.field(default=0.25, validator=v.number_in(0.0, lo_open=True))
    caption_channels: int = attrs.field(default=4096, validator=_pos)
    caption_max_length: int = attrs.field(default=800, validator=v.number_in(2, integer=True))
    gated_linear_unit: bool = attrs.field(default=False, validator=v.instance_of(bool, "True or False"))
    x_rescale_factor: float = attrs.field(default=1.0, validator=v.number_in(0.0, lo_open=True))
    half_channel_vae: bool = attrs.field(default=False, validator=v.instance_of(bool, "True or False"))
    layernorm_epsilon: float = attrs.field(default=1e-6, validator=v.number_in(0.0, 1.0, lo_open=True))
    chunk_width: int = attrs.field(default=6, validator=_pos)
    null_caption_tokens: int = attrs.field(default=50, validator=_pos)
    # Not in MAGI-1: a learned embedding per token of an (h, w) grid, added after the patch embedding
    # (key ``spatial_embedding``), as the world's Wan DiTs have: MAGI's RoPE is relative, so at full
    # noise no token can tell where in the frame it sits (docs/world.md). None: MAGI-1.
    spatial_grid: tuple[int, int] | None = attrs.field(default=None,
                                                       converter=lambda g: None if g is None else tuple(g))

    def __attrs_post_init__(self) -> None:
        own = "MagiDiTConfig"
        if self.spatial_grid is not None and (len(self.spatial_grid) != 2 or any(
                isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in self.spatial_grid)):
            raise ConfigError(own, "spatial_grid", self.spatial_grid, "None or two positive ints (h, w)")
        if self.num_attention_heads % self.num_query_groups:
            raise ConfigError(own, "num_query_groups", self.num_query_groups,
                              f"a divisor of num_attention_heads = {self.num_attention_heads} (GQA)")
        if self.kv_channels % 8:
            raise ConfigError(own, "kv_channels", self.kv_channels,
                              "a multiple of 8 (RoPE: kv_channels / 8 bands per axis t, h, w)")
        dc = self.hidden_size * self.cond_hidden_ratio
        if dc < 1 or abs(dc - round(dc)) > 1e-6:
            raise ConfigError(own, "cond_hidden_ratio", self.cond_hidden_ratio,
                              f"a ratio making hidden_size * ratio a positive integer "
                              f"(hidden_size = {self.hidden_size})")
        if self.t_patch_size != 1:
            raise ConfigError(own, "t_patch_size", self.t_patch_size, "1 (every released MAGI size; chunks "
                                                                      "address single latent frames)")
        if self.null_caption_tokens > self.caption_max_length:
            raise ConfigError(own, "null_caption_tokens", self.null_caption_tokens,
                              f"at most caption_max_length = {self.caption_max_length}")
        if self.half_channel_vae and (self.in_channels % 2 or self.out_channels % 2):
            raise ConfigError(own, "half_channel_vae", self.half_channel_vae,
                              f"False, or even in_channels / out_channels "
                              f"(got {self.in_channels} / {self.out_channels})")

    @property
    def cond_hidden_size(self) -> int:
        """Dc: the width of the time / adaln condition."""
        return round(self.hidden_size * self.cond_hidden_ratio)

    @property
    def rope_bands(self) -> int:
        return self.kv_channels // 8

    @property
    def latent_channels(self) -> int:
        """Channels of the latent the caller passes (half of ``in_channels`` with ``half_channel_vae``)."""
        return self.in_channels // 2 if self.half_channel_vae else self.in_channels

    @property
    def output_channels(self) -> int:
        return self.out_channels // 2 if self.half_channel_vae else self.out_channels

    def tokens_per_chunk(self, height: int, width: int) -> int:
        """Tokens of one chunk of a ``height x width`` latent."""
        return (self.chunk_width // self.t_patch_size) * (height // self.patch_size) * (width // self.patch_size)

    @classmethod
    def magi_4_5b(cls, **kw) -> MagiDiTConfig:
        return cls(**{"hidden_size": 3072, "num_layers": 34, "num_attention_heads": 24, "num_query_groups": 8,
                      "kv_channels": 128, "ffn_hidden_size": 12288, **kw})

    @classmethod
    def magi_24b(cls, **kw) -> MagiDiTConfig:
        return cls(**{"hidden_size": 6144, "num_layers": 48, "num_attention_heads": 48, "num_query_groups": 8,
                      "kv_channels": 128, "ffn_hidden_size": 16384, "in_channels": 32, "out_channels": 32,
                      "gated_linear_unit": True, "x_rescale_factor": 0.1, "half_channel_vae": True, **kw})

    @classmethod
    def tiny(cls, **kw) -> MagiDiTConfig:
        """A test model: D 64, 2 layers, 4 q heads over 2 kv groups of 16, caption 16 tokens x 32."""
        return cls(**{"hidden_size": 64, "num_layers": 2, "num_attention_heads": 4, "num_query_groups": 2,
                      "kv_channels": 16, "ffn_hidden_size": 128, "caption_channels": 32, "caption_max_length": 16,
                      "null_caption_tokens": 4, **kw})

    @classmethod
    def world(cls, **kw) -> MagiDiTConfig:
        """For the embedded world: its VAE's 8-channel 16 x 16 latents (patch 4 -> 4 x 4 tokens), its word
        encoder's 16 tokens x 32 channels."""
        return cls(**{"hidden_size": 128, "num_layers": 4, "num_attention_heads": 4, "num_query_groups": 2,
                      "kv_channels": 32, "ffn_hidden_size": 256, "in_channels": 8, "out_channels": 8,
                      "patch_size": 4, "caption_channels": 32, "caption_max_length": 16, "null_caption_tokens": 4,
                      **kw})


# ------------------------------------------------------------------------------------------------
# norms, embedders, RoPE
# ------------------------------------------------------------------------------------------------


def _lin(layer: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """``layer(x)`` in the layer's dtype."""
    return layer(x.to(layer.weight.dtype))


def _lin32(layer: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """``layer(x)`` in float32 whatever the weights' dtype (MAGI's float32 islands)."""
    bias = None if layer.bias is None else layer.bias.float()
    return F.linear(x.float(), layer.weight.float(), bias)


class FP32LayerNorm(nn.LayerNorm):
    """Affine LayerNorm computed in float32 (the pre-norms: ``linear_qkv.layer_norm``, ``mlp.layer_norm``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x.float(), self.normalized_shape, self.weight.float(), self.bias.float(), self.eps)


class LayerNorm1p(nn.Module):
    """Megatron's "1p" LayerNorm: ``layer_norm(x, 1 + weight, bias)`` with zero-centred stored weights.
    Computed in float32, or in the input's dtype with ``fp32=False`` (the cross-attention q / k norms)."""

    def __init__(self, dim: int, eps: float, *, fp32: bool = True) -> None:
        super().__init__()
        self.eps, self.fp32 = eps, fp32
        self.weight = nn.Parameter(torch.zeros(dim))
        self.bias = nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dt = torch.float32 if self.fp32 else x.dtype
        return F.layer_norm(x.to(dt), (x.shape[-1],), (self.weight + 1).to(dt), self.bias.to(dt), self.eps)


class TimestepEmbedder(nn.Module):
    """``mlp(sinusoid(1000 t))`` in float32; the sinusoid is ``[cos | sin]`` over 128 frequencies."""

    def __init__(self, dc: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(FREQ_DIM, dc), nn.SiLU(), nn.Linear(dc, dc))

    def forward(self, t: torch.Tensor) -> torch.Tensor:  # [...] -> [..., Dc]
        half = FREQ_DIM // 2
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
        arg = (t.float() * 1000.0).unsqueeze(-1) * freqs  # [..., 128]
        emb = torch.cat([torch.cos(arg), torch.sin(arg)], dim=-1)  # [..., 256]
        return _lin32(self.mlp[2], F.silu(_lin32(self.mlp[0], emb)))


class CaptionEmbedder(nn.Module):
    """Caption tokens -> cross-attention inputs; the adaln condition comes from a learned row."""

    def __init__(self, cfg: MagiDiTConfig) -> None:
        super().__init__()
        cc = cfg.caption_channels
        self.y_proj_xattn = nn.Sequential(nn.Linear(cc, cfg.hidden_size), nn.SiLU())
        self.y_proj_adaln = nn.Sequential(nn.Linear(cc, cfg.cond_hidden_size))
        self.null_caption_embedding = nn.Parameter(torch.randn(cfg.caption_max_length, cc) / cc**0.5)

    def xattn(self, caption: torch.Tensor) -> torch.Tensor:  # [B, L, Cc] -> [B, L, D] float32
        return F.silu(_lin32(self.y_proj_xattn[0], caption))

    def adaln(self, text: bool) -> torch.Tensor:  # [Dc] float32
        row = self.null_caption_embedding[-2 if text else -1]
        return _lin32(self.y_proj_adaln[0], row)


class LearnedRope(nn.Module):
    """MAGI's RoPE with learned frequencies ``bands: [d / 8]`` shared by the t, h and w axes."""

    def __init__(self, head_dim: int) -> None:
        super().__init__()
        nb = head_dim // 8
        self.bands = nn.Parameter(10000.0 ** (-torch.arange(nb, dtype=torch.float32) / nb))

    def angles(self, t0: int, frames: int, h: int, w: int, device: torch.device) -> torch.Tensor:
        """Rotation angles ``[frames * h * w, 3 * d / 8]`` ([t | h | w] bands), frames at ``t0 ...``."""
        scale = math.sqrt(h * w / ROPE_REFERENCE_TOKENS)

        def axis(n: int) -> torch.Tensor:  # centred, then rescaled from n to n / scale positions
            c = torch.arange(n, dtype=torch.float32, device=device) - (n - 1) / 2
            return c / (n - 1) * (n / scale - 1) if n > 1 else c

        tpos = torch.arange(t0, t0 + frames, dtype=torch.float32, device=device)  # absolute, not rescaled
        grid = torch.stack(torch.meshgrid(tpos, axis(h), axis(w), indexing="ij"), dim=-1)  # [F, h, w, 3]
        ang = grid.unsqueeze(-1) * self.bands.float().to(device)  # [F, h, w, 3, nb]
        return ang.reshape(frames * h * w, -1)


def apply_rope(x: torch.Tensor, ang: torch.Tensor) -> torch.Tensor:
    """Non-interleaved rotary over the first ``2 * ang.shape[-1]`` head dims: pairs ``(x[i], x[i + r])``
    rotate by ``ang[:, i]``; the remaining dims pass through. ``x: [B, S, H, d]``, ``ang: [S, r]``; float32."""
    r = ang.shape[-1]
    cos, sin = ang.cos()[:, None], ang.sin()[:, None]  # [S, 1, r]
    xf = x.float()
    x1, x2, rest = xf[..., :r], xf[..., r:2 * r], xf[..., 2 * r:]
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos, rest], dim=-1)


# ------------------------------------------------------------------------------------------------
# the packed KV cache
# ------------------------------------------------------------------------------------------------


class MagiKVCache:
    """Self-attention K/V per layer and absolute chunk index (MAGI's packed, chunk-major cache).

    Entry ``[layer][c]`` holds chunk ``c``'s K (after k_layernorm and RoPE at its own position) and V
    side by side, ``[B, tokens_per_chunk, Hkv, 2 d]`` (K in ``[..., :d]``, V in ``[..., d:]``), as MAGI's
    buffer does. A call reading chunks ``lo .. hi-1`` gets them concatenated in index order; a batch-1
    entry serves a batch-B call. Entries are replaced, never written in place, so a snapshot is a
    shallow copy of the per-layer maps."""

    def __init__(self, num_layers: int, tokens_per_chunk: int) -> None:
        self.num_layers, self.tokens_per_chunk = num_layers, tokens_per_chunk
        self._kv: list[dict[int, torch.Tensor]] = [{} for _ in range(num_layers)]

    def __repr__(self) -> str:
        return (f"MagiKVCache(layers={self.num_layers}, tokens_per_chunk={self.tokens_per_chunk}, "
                f"chunks={self.chunks()})")

    def chunks(self) -> tuple[int, ...]:
        """Cached chunk indices, sorted."""
        return tuple(sorted(self._kv[0])) if self._kv else ()

    def evict(self, chunks: Iterable[int]) -> None:
        for c in tuple(chunks):
            for layer in self._kv:
                layer.pop(int(c), None)

    def clear(self) -> None:
        self._kv = [{} for _ in range(self.num_layers)]

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for layer in self._kv for t in layer.values())

    def snapshot(self) -> object:
        return [dict(layer) for layer in self._kv]

    def restore(self, snap: object) -> None:
        assert isinstance(snap, list) and len(snap) == self.num_layers, "not a snapshot of this cache"
        self._kv = [dict(layer) for layer in snap]

    # -- called by the attention layers during a forward --

    def put(self, layer: int, chunk: int, k: torch.Tensor, val: torch.Tensor) -> None:
        """Store one chunk's ``k, val: [B, tokens_per_chunk, Hkv, d]``."""
        assert k.shape[1] == self.tokens_per_chunk, (
            f"chunk of {k.shape[1]} tokens in a cache of {self.tokens_per_chunk} tokens per chunk")
        self._kv[layer][chunk] = torch.cat([k, val], dim=-1)  # [B, ctn, Hkv, 2d]

    def read(self, layer: int, lo: int, hi: int, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Chunks ``lo .. hi-1`` as ``k, v: [batch, (hi - lo) * tokens_per_chunk, Hkv, d]``."""
        kv = torch.cat([self._kv[layer][c] for c in range(lo, hi)], dim=1)  # [B', n ctn, Hkv, 2d]
        if kv.shape[0] != batch:
            assert kv.shape[0] == 1, f"cached batch {kv.shape[0]} cannot serve a batch of {batch}"
            kv = kv.expand(batch, *kv.shape[1:])
        d = kv.shape[-1] // 2
        return kv[..., :d], kv[..., d:]


@attrs.frozen
class _Plan:
    """What one forward's self-attention reads and writes (absolute chunk indices)."""

    first: int  # absolute index of the call's first chunk
    ctn: int  # tokens per chunk
    ranges: tuple[tuple[int, int], ...]  # per current chunk: [lo, hi)
    writes: tuple[int, ...]  # current chunks whose K/V go into the cache


# ------------------------------------------------------------------------------------------------
# attention, the block, the network
# ------------------------------------------------------------------------------------------------


def _gqa(q: torch.Tensor, k: torch.Tensor, val: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """``q: [B, Sq, Hq, d]``, ``k, val: [B, Sk, Hkv, d]`` -> ``[B, Sq, Hq, d]``; q head h reads kv head
    ``h // (Hq / Hkv)`` (flash-attn's GQA)."""
    g = q.shape[2] // k.shape[2]
    k, val = k.repeat_interleave(g, dim=2), val.repeat_interleave(g, dim=2)  # [B, Sk, Hq, d]
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), val.transpose(1, 2), attn_mask=mask)
    return out.transpose(1, 2)  # [B, Sq, Hq, d]


class QKV(nn.Module):
    """The pre-norm and the four projections fed by it (``linear_qkv.{layer_norm, q, qx, k, v}``)."""

    def __init__(self, cfg: MagiDiTConfig) -> None:
        super().__init__()
        d = cfg.hidden_size
        hq, hkv = cfg.num_attention_heads * cfg.kv_channels, cfg.num_query_groups * cfg.kv_channels
        self.layer_norm = FP32LayerNorm(d, eps=cfg.layernorm_epsilon)
        self.q = nn.Linear(d, hq, bias=False)
        self.qx = nn.Linear(d, hq, bias=False)
        self.k = nn.Linear(d, hkv, bias=False)
        self.v = nn.Linear(d, hkv, bias=False)


class ParallelAttention(nn.Module):
    """Self-attention (RoPE, chunk ranges, KV cache) and cross-attention (the caption), side by side."""

    def __init__(self, cfg: MagiDiTConfig) -> None:
        super().__init__()
        self.hq, self.hkv, self.d = cfg.num_attention_heads, cfg.num_query_groups, cfg.kv_channels
        eps, d = cfg.layernorm_epsilon, cfg.kv_channels
        self.linear_qkv = QKV(cfg)
        self.linear_kv_xattn = nn.Linear(cfg.hidden_size, 2 * self.hkv * d, bias=False)  # rows: (group, k | v)
        self.linear_proj = nn.Linear(2 * self.hq * d, cfg.hidden_size, bias=False)
        self.q_layernorm = LayerNorm1p(d, eps)
        self.k_layernorm = LayerNorm1p(d, eps)
        self.q_layernorm_xattn = LayerNorm1p(d, eps, fp32=False)
        self.k_layernorm_xattn = LayerNorm1p(d, eps, fp32=False)

    def forward(self, h: torch.Tensor, rope: torch.Tensor, y: torch.Tensor, y_mask: torch.Tensor, plan: _Plan,
                cache: MagiKVCache | None, layer: int) -> torch.Tensor:
        b, s, _ = h.shape  # [B, S, D]
        qkv = self.linear_qkv
        a = qkv.layer_norm(h)
        dt = qkv.v.weight.dtype
        q = self.q_layernorm(_lin(qkv.q, a).view(b, s, self.hq, self.d))  # [B, S, Hq, d]
        k = self.k_layernorm(_lin(qkv.k, a).view(b, s, self.hkv, self.d))  # [B, S, Hkv, d]
        q, k = apply_rope(q, rope).to(dt), apply_rope(k, rope).to(dt)
        val = _lin(qkv.v, a).view(b, s, self.hkv, self.d)
        qx = self.q_layernorm_xattn(_lin(qkv.qx, a).view(b, s, self.hq, self.d))
        kvx = _lin(self.linear_kv_xattn, y).view(b, y.shape[1], self.hkv, 2 * self.d)  # [B, L, Hkv, 2d]
        kx, vx = self.k_layernorm_xattn(kvx[..., :self.d]), kvx[..., self.d:]

        o_self = self._self_attention(q, k, val, plan, cache, layer)  # [B, S, Hq, d]
        o_cross = _gqa(qx, kx, vx, y_mask[:, None, None, :])  # [B, S, Hq, d]
        # a row with no valid caption token gets no cross-attention output (flash-attn varlen with k length 0)
        o_cross = torch.where(y_mask.any(-1)[:, None, None, None], o_cross, 0)
        cat = torch.cat([o_self.reshape(b, s, -1), o_cross.reshape(b, s, -1)], dim=-1)  # [B, S, 2 Hq d]
        cat = cat.view(b, s, 2, PROJ_BLOCKS, -1).transpose(2, 3).reshape(b, s, -1)  # (n hn hd) -> (hn n hd)
        return _lin(self.linear_proj, cat)  # [B, S, D]

    @staticmethod
    def _self_attention(q: torch.Tensor, k: torch.Tensor, val: torch.Tensor, plan: _Plan,
                        cache: MagiKVCache | None, layer: int) -> torch.Tensor:
        """Chunk j's queries attend to chunks ``[lo, hi)``: the cached ones before the call, then this
        call's (MAGI's per-chunk flash-attn loop; no mask inside a range)."""
        b, n = q.shape[0], plan.ctn
        first = plan.first
        if cache is not None:
            for c in plan.writes:
                j = c - first
                cache.put(layer, c, k[:, j * n:(j + 1) * n], val[:, j * n:(j + 1) * n])
        outs = []
        for j, (lo, hi) in enumerate(plan.ranges):
            ks, vs = [], []
            if lo < first:
                ck, cv = cache.read(layer, lo, min(hi, first), b)  # [B, Nc, Hkv, d]
                ks.append(ck.to(k.dtype))
                vs.append(cv.to(val.dtype))
            a, e = max(lo, first) - first, hi - first
            if e > a:
                ks.append(k[:, a * n:e * n])
                vs.append(val[:, a * n:e * n])
            keys = ks[0] if len(ks) == 1 else torch.cat(ks, dim=1)
            values = vs[0] if len(vs) == 1 else torch.cat(vs, dim=1)
            outs.append(_gqa(q[:, j * n:(j + 1) * n], keys, values))  # [B, ctn, Hq, d]
        return torch.cat(outs, dim=1)


class AdaModulate(nn.Module):
    COMPILED = ("forward",)  # what compile=True compiles (accelframe_adapters.compiling)

    def __init__(self, cfg: MagiDiTConfig) -> None:
        super().__init__()
        self.proj = nn.Sequential(nn.Linear(cfg.cond_hidden_size, 2 * cfg.hidden_size))

    def forward(self, c: torch.Tensor) -> torch.Tensor:  # [B, n, Dc] -> gates [B, n, 2D], softcap 1.0
        return torch.tanh(_lin(self.proj[0], F.silu(c)).float())


class MLP(nn.Module):
    COMPILED = ("forward",)

    def __init__(self, cfg: MagiDiTConfig) -> None:
        super().__init__()
        d, f = cfg.hidden_size, cfg.ffn_hidden_size
        self.glu = cfg.gated_linear_unit
        self.layer_norm = FP32LayerNorm(d, eps=cfg.layernorm_epsilon)
        self.linear_fc1 = nn.Linear(d, 2 * f if self.glu else f, bias=False)  # GLU: [gate (SiLU) ; up]
        self.linear_fc2 = nn.Linear(f, d, bias=False)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        z = _lin(self.linear_fc1, self.layer_norm(h))
        if self.glu:
            gate, up = z.chunk(2, dim=-1)
            z = F.silu(gate) * up
        else:
            z = F.gelu(z)
        return _lin(self.linear_fc2, z)


class MagiBlock(nn.Module):
    """``h + LN1p(g_msa * attn(h))``, then ``h + LN1p(g_mlp * mlp(h))``; gates per chunk."""

    def __init__(self, cfg: MagiDiTConfig) -> None:
        super().__init__()
        self.ada_modulate_layer = AdaModulate(cfg)
        self.self_attention = ParallelAttention(cfg)
        self.self_attn_post_norm = LayerNorm1p(cfg.hidden_size, cfg.layernorm_epsilon)
        self.mlp = MLP(cfg)
        self.mlp_post_norm = LayerNorm1p(cfg.hidden_size, cfg.layernorm_epsilon)

    def forward(self, h: torch.Tensor, cond: torch.Tensor, rope: torch.Tensor, y: torch.Tensor,
                y_mask: torch.Tensor, plan: _Plan, cache: MagiKVCache | None, layer: int) -> torch.Tensor:
        b, s, d = h.shape  # [B, S, D] float32, S = n * ctn
        n = cond.shape[1]
        g_msa, g_mlp = self.ada_modulate_layer(cond).unsqueeze(2).chunk(2, dim=-1)  # [B, n, 1, D] each
        out = self.self_attention(h, rope, y, y_mask, plan, cache, layer).float().view(b, n, -1, d)
        h = self.self_attn_post_norm((out * g_msa).view(b, s, d)) + h
        out = self.mlp(h).float().view(b, n, -1, d)
        return self.mlp_post_norm((out * g_mlp).view(b, s, d)) + h


class VideoDiTBlocks(nn.Module):
    def __init__(self, cfg: MagiDiTConfig) -> None:
        super().__init__()
        self.layers = nn.ModuleList(MagiBlock(cfg) for _ in range(cfg.num_layers))
        self.final_layernorm = LayerNorm1p(cfg.hidden_size, cfg.layernorm_epsilon)


class FinalLinear(nn.Module):
    def __init__(self, cfg: MagiDiTConfig) -> None:
        super().__init__()
        patch = cfg.t_patch_size * cfg.patch_size**2
        self.linear = nn.Linear(cfg.hidden_size, patch * cfg.out_channels, bias=False)  # (pT pH pW C)


class MagiDiT(nn.Module):
    """The MAGI-1 DiT: ``forward(x [B, C, n * chunk_width, H, W], t [B, n], caption, mask)`` -> velocity."""

    def __init__(self, cfg: MagiDiTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        pt, p = cfg.t_patch_size, cfg.patch_size
        self.x_embedder = nn.Conv3d(cfg.in_channels, cfg.hidden_size, kernel_size=(pt, p, p), stride=(pt, p, p),
                                    bias=False)
        self.t_embedder = TimestepEmbedder(cfg.cond_hidden_size)
        self.y_embedder = CaptionEmbedder(cfg)
        self.rope = LearnedRope(cfg.kv_channels)
        if cfg.spatial_grid is not None:  # starts at zero: the network begins as MAGI-1's
            self.spatial_embedding = nn.Parameter(torch.zeros(*cfg.spatial_grid, cfg.hidden_size))  # [h, w, D]
        self.videodit_blocks = VideoDiTBlocks(cfg)
        self.final_linear = FinalLinear(cfg)

    def new_cache(self, height: int, width: int) -> MagiKVCache:
        """An empty KV cache for ``height x width`` latents."""
        return MagiKVCache(self.cfg.num_layers, self.cfg.tokens_per_chunk(height, width))

    def null_caption(self, batch: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """The unconditional caption: ``null_caption_embedding`` ``[B, L, Cc]`` with its first
        ``null_caption_tokens`` rows valid (mask ``[B, L]`` bool)."""
        emb = self.y_embedder.null_caption_embedding  # not detached: training learns the null rows
        mask = torch.zeros(batch, emb.shape[0], dtype=torch.bool, device=emb.device)
        mask[:, :self.cfg.null_caption_tokens] = True
        return emb.unsqueeze(0).expand(batch, -1, -1), mask

    def _plan(self, n: int, ctn: int, first_chunk: int, kv_ranges: Sequence[tuple[int, int]] | None,
              cache: MagiKVCache | None, write: bool, write_chunks: Iterable[int] | None) -> _Plan:
        own = "MagiDiT.forward"
        end = first_chunk + n
        if first_chunk < 0:
            raise ConfigError(own, "first_chunk", first_chunk, "a chunk index >= 0")
        if kv_ranges is None:
            ranges = tuple((0, first_chunk + j + 1) for j in range(n))
        else:
            ranges = tuple((int(lo), int(hi)) for lo, hi in kv_ranges)
            if len(ranges) != n:
                raise ConfigError(own, "kv_ranges", kv_ranges, f"one (lo, hi) per chunk of the call ({n})")
            for lo, hi in ranges:
                if not 0 <= lo < hi <= end:
                    raise ConfigError(own, "kv_ranges", kv_ranges,
                                      f"ranges with 0 <= lo < hi <= first_chunk + n = {end}")
        needed = sorted({c for lo, hi in ranges for c in range(lo, min(hi, first_chunk))})
        if needed:
            have = set(cache.chunks()) if cache is not None else set()
            if cache is None or not set(needed) <= have:
                raise ConfigError(own, "kv_ranges", ranges,
                                  f"ranges whose chunks before first_chunk = {first_chunk} are cached "
                                  f"(needed {needed}, cached {sorted(have)})")
            if cache.tokens_per_chunk != ctn:
                raise ConfigError(own, "cache", cache, f"a cache of {ctn} tokens per chunk (this latent's size)")
        writes: tuple[int, ...] = ()
        if write:
            if cache is None:
                raise ConfigError(own, "write", write, "False when no cache is given")
            if cache.tokens_per_chunk != ctn:
                raise ConfigError(own, "cache", cache, f"a cache of {ctn} tokens per chunk (this latent's size)")
            writes = tuple(range(first_chunk, end) if write_chunks is None else (int(c) for c in write_chunks))
            if any(not first_chunk <= c < end for c in writes):
                raise ConfigError(own, "write_chunks", write_chunks, f"chunk indices in [{first_chunk}, {end})")
        return _Plan(first=first_chunk, ctn=ctn, ranges=ranges, writes=writes)

    def forward(self, x: torch.Tensor, t: torch.Tensor, caption: torch.Tensor, caption_mask: torch.Tensor, *,
                first_chunk: int = 0, kv_ranges: Sequence[tuple[int, int]] | None = None,
                cache: MagiKVCache | None = None, write: bool = False, text: bool = True,
                rope_first_frame: int | None = None, dt: float | None = None,
                write_chunks: Iterable[int] | None = None) -> torch.Tensor:
        """One model call over ``n`` consecutive chunks ``first_chunk .. first_chunk + n - 1``.

        ``x: [B, C, n * chunk_width, H, W]`` latents, ``t: [B, n]`` MAGI time per chunk (0 noise, 1
        clean), ``caption: [B, L, Cc]`` with ``caption_mask: [B, L]`` (bool; every chunk of a row
        attends to that row's valid tokens). Chunk j attends to chunks ``kv_ranges[j] = [lo, hi)``
        (default ``[0, first_chunk + j + 1)``); those before ``first_chunk`` come from ``cache``. With
        ``write``, this call's chunks (or only ``write_chunks``) store their K/V in ``cache`` at their
        absolute index. ``text`` picks the adaln row (-2 text, -1 no text); ``rope_first_frame`` is the
        temporal RoPE position of frame 0 (default ``first_chunk * chunk_width``); ``dt`` adds the
        distilled model's step embedding. Returns the velocity ``[B, C, n * chunk_width, H, W]``."""
        cfg = self.cfg
        b, c, f, hh, ww = x.shape
        n, cw, p = f // cfg.chunk_width, cfg.chunk_width, cfg.patch_size
        assert c == cfg.latent_channels, f"x has {c} channels, the model takes {cfg.latent_channels}"
        assert f % cw == 0 and f > 0, f"x has {f} frames, not a positive multiple of chunk_width = {cw}"
        assert hh % p == 0 and ww % p == 0, f"latent {hh} x {ww} is not a multiple of patch_size = {p}"
        assert t.shape == (b, n), f"t must be [B, n] = {(b, n)}, got {tuple(t.shape)}"
        assert caption.dim() == 3 and caption.shape[0] == b and caption.shape[2] == cfg.caption_channels, (
            f"caption must be [B, L, {cfg.caption_channels}], got {tuple(caption.shape)}")
        assert caption_mask.shape == caption.shape[:2], (
            f"caption_mask must be [B, L] = {tuple(caption.shape[:2])}, got {tuple(caption_mask.shape)}")
        h, w = hh // p, ww // p
        ctn = cfg.tokens_per_chunk(hh, ww)
        plan = self._plan(n, ctn, first_chunk, kv_ranges, cache, write, write_chunks)
        rope_first_frame = first_chunk * cw if rope_first_frame is None else rope_first_frame

        xs = x.float() * cfg.x_rescale_factor
        if cfg.half_channel_vae:
            xs = torch.cat([xs, xs], dim=1)  # [B, 2C, F, H, W]
        wx = self.x_embedder.weight.float()
        tokens = F.conv3d(xs, wx, stride=self.x_embedder.stride)  # [B, D, F, h, w]
        if cfg.spatial_grid is not None:
            if (h, w) != cfg.spatial_grid:
                raise ConfigError("MagiDiT input", "token grid", (h, w),
                                  f"{cfg.spatial_grid}: the grid this model's spatial embedding was trained for "
                                  f"({cfg.spatial_grid[0] * p} x {cfg.spatial_grid[1] * p} latents)")
            tokens = tokens + self.spatial_embedding.float().permute(2, 0, 1)[:, None]  # [D, 1, h, w]
        hs = tokens.flatten(2).transpose(1, 2)  # [B, S, D], S = (F h w), frame-major
        rope = self.rope.angles(rope_first_frame // cfg.t_patch_size, f // cfg.t_patch_size, h, w, x.device)

        cond = self.t_embedder(t)  # [B, n, Dc]
        if dt is not None:
            cond = cond + self.t_embedder(torch.full_like(t, float(dt), dtype=torch.float32))
        cond = cond + self.y_embedder.adaln(text)
        y = self.y_embedder.xattn(caption)  # [B, L, D]
        y_mask = caption_mask.to(torch.bool)

        blocks = self.videodit_blocks
        for i, layer in enumerate(blocks.layers):
            hs = layer(hs, cond, rope, y, y_mask, plan, cache, i)
        out = _lin32(self.final_linear.linear, blocks.final_layernorm(hs))  # [B, S, pT pH pW C]
        pt = cfg.t_patch_size
        out = out.view(b, f // pt, h, w, pt, p, p, -1)  # [B, F', h, w, pT, pH, pW, C]: C fastest
        out = out.permute(0, 7, 1, 4, 2, 5, 3, 6)  # [B, C, F', pT, h, pH, w, pW]
        out = out.reshape(b, -1, f, hh, ww)  # [B, C_out, F, H, W]
        if cfg.half_channel_vae:
            out = out[:, :cfg.output_channels]
        return (out / cfg.x_rescale_factor).to(x.dtype)


__all__ = ["MagiDiT", "MagiDiTConfig", "MagiKVCache", "apply_rope"]
