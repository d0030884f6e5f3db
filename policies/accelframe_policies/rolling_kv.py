"""StreamDiffusionV2's rolling KV cache (section 4.1), registered as ``rolling-kv``.

Before each chunk of a stream (``accelframe_kv_manage``) it keeps the stream's KV cache bounded
and its anchors fresh:

1. **Sinks.** The first ``sinks`` frames ever cached become sink frames; eviction never takes them.
2. **Adaptive sink refresh.** With ``h_t`` the newest chunk's embedding (the mean of its frames'
   embeddings) and ``s_i`` each sink's, ``α_i = cos(h_t, s_i)``; every sink with ``α_i < tau`` is
   replaced by one of the newest chunk's frames (the most recent first), so
   ``s_i^t = s_i^{t-1}`` if ``α_i >= tau`` else ``h_t``. The replaced sink is evicted. Embeddings
   come from the adapter's ``kv_embeddings`` (the Wan family: each frame's token-mean K and V per
   layer; a cosine is the mean over those parts). ``tau = -1`` never refreshes.
3. **Rolling window.** The oldest non-sink frames are evicted until at most ``window`` frames
   (sinks included) stay cached; the chunk then attends to those and itself.
4. **RoPE reset.** Once the next frame's position ``t`` (frame index minus the cache's RoPE
   offset) reaches ``t_reset``, the RoPE offset is reset: ``θ_t = θ_{t - T_reset}``-style
   positions restart, the cached frames at ``0 .. n - 1`` (sinks first) and the next frame just
   after them (the adapter's ``rope_reset``; the Wan adapters rotate the cached keys there).

Defaults are the reference implementation's: a cache of 6 frames of which 3 are sinks, refresh
threshold 0.2 and ``t_reset`` 50 frames. The paper only says that tau "should be set large" (the
stream command takes 0.6, measured on a 5-minute world stream: docs/streaming.md, Drift). With
the embedded world's models (trained on 27 latent frames) use ``t_reset <= 24`` so positions stay
inside what they saw.
"""

from __future__ import annotations

from collections import deque
from typing import Any, ClassVar

import attrs
import torch

from accelframe import hookimpl
from accelframe.errors import ConfigError
from accelframe.types import KVAction, KVContext
from accelframe.validators import number_in

LOG_LIMIT = 1024  # decisions kept in ``log``


def similarity(a: torch.Tensor, b: torch.Tensor) -> float:
    """Cosine similarity of two embeddings ``[P, D]``, averaged over the P parts."""
    a2, b2 = a.double().reshape(a.shape[0], -1), b.double().reshape(b.shape[0], -1)
    return float(torch.nn.functional.cosine_similarity(a2, b2, dim=1, eps=1e-12).mean())


@attrs.define(eq=False, kw_only=True)
class RollingKV:
    """Sinks, adaptive sink refresh, a rolling window and RoPE reset (see the module docstring)."""

    window: int = attrs.field(default=6, validator=number_in(1, 1_000_000, integer=True))
    sinks: int = attrs.field(default=3, validator=number_in(0, 1_000_000, integer=True))
    tau: float = attrs.field(default=0.2, validator=number_in(-1.0, 1.0))
    t_reset: int | None = attrs.field(
        default=50, validator=attrs.validators.optional(number_in(1, 1_000_000, integer=True)))
    name: ClassVar[str] = "rolling-kv"  # the stack name; not a keyword argument
    _last_next: dict[str, int] = attrs.field(factory=dict, init=False)
    # the latest decisions, bounded so an hours-long stream keeps flat memory
    log: deque[dict[str, Any]] = attrs.field(factory=lambda: deque(maxlen=LOG_LIMIT), init=False)

    def __attrs_post_init__(self) -> None:
        if self.sinks >= self.window:
            raise ConfigError("rolling-kv", "sinks", self.sinks,
                              f"fewer than window = {self.window} frames (the window holds the sinks "
                              "and at least one recent frame)")

    @property
    def uses_kv_embeddings(self) -> bool:
        """Whether the sink refresh compares every layer's cached K/V (``tau > -1``): a ring of
        ranks, each holding its blocks' K/V only, then sends rank 0 their summaries."""
        return self.tau > -1.0

    def reset(self) -> None:
        self._last_next.clear()
        self.log.clear()

    def _refresh(self, ctx: KVContext, sinks: list[int], newest: list[int]) -> tuple[list[int], list[dict]]:
        emb = ctx.embeddings
        if self.tau <= -1.0 or not newest or not all(f in emb for f in sinks + newest):
            return sinks, []
        h = torch.stack([emb[f].double() for f in newest]).mean(dim=0)  # [P, D]
        alphas = {s: similarity(h, emb[s]) for s in sinks}
        stale = [s for s in sinks if alphas[s] < self.tau]
        fresh = sorted(newest, reverse=True)[: len(stale)]  # the most recent frames first
        replaced = dict(zip(stale, fresh))
        out = sorted([s for s in sinks if s not in replaced] + list(replaced.values()))
        return out, [{"sink": s, "alpha": alphas[s], "by": replaced.get(s)} for s in sinks]

    @hookimpl
    def accelframe_kv_manage(self, ctx: KVContext) -> KVAction:
        cached = list(ctx.cached_frames)
        sinks = list(ctx.sinks)
        if len(sinks) < self.sinks:  # the first frames ever cached become the sinks
            sinks = sorted(set(sinks) | set(sorted(cached)[: self.sinks]))[: self.sinks]
        prev = self._last_next.get(ctx.stream, 0)
        self._last_next[ctx.stream] = ctx.next_frame
        newest = [f for f in cached if prev <= f < ctx.next_frame and f not in sinks]
        sinks, alphas = self._refresh(ctx, sinks, newest) if len(sinks) == self.sinks else (sinks, [])
        evict = [f for f in cached if f in ctx.sinks and f not in sinks]  # refreshed-away sinks
        rest = [f for f in cached if f not in sinks and f not in evict]  # oldest first
        room = self.window - len(sinks)
        evict += rest[: max(len(rest) - room, 0)]
        position = ctx.next_frame - ctx.rope_offset
        reset = self.t_reset is not None and position >= self.t_reset
        record = {"stream": ctx.stream, "next_frame": ctx.next_frame, "sinks": sinks,
                  "evict": sorted(evict), "kept": [f for f in cached if f not in evict], "rope_reset": reset,
                  "alphas": alphas}
        self.log.append(record)
        return KVAction(evict=tuple(sorted(evict)), sinks=tuple(sinks), rope_reset=reset,
                        reason=f"rolling-kv: keep {len(cached) - len(evict)} of {len(cached)} frames, "
                               f"sinks {sinks}{', RoPE reset' if reset else ''}")


__all__ = ["RollingKV", "similarity"]
