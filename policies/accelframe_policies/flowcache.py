"""FlowCache: chunk-wise caching for autoregressive video diffusion.

Reference: "Flow Caching for Autoregressive Video Generation" and its SkyReels-V2 / MAGI-1 code.
Every chunk (``ctx.unit_frames`` latent frames) of a call keeps its own state. For each chunk that
advances in the call, with ``n`` the steps it has advanced so far and φ its slice of the
adapter's probe::

    n < warmup, its first step or its last step (it reaches σ = 0)  ->  compute, acc = 0
    otherwise acc += poly(mean|φ_k - φ_{k-1}| / mean|φ_{k-1}|)      (φ_{k-1}: the previous call)
              acc >= threshold  ->  compute, acc = 0
              else              ->  reuse the chunk's last computed velocity

The model runs on ``[first frame, end of the last chunk to compute)``: chunks before it are
forwarded anyway as context, so they are computed too; chunks after it that advance reuse their
velocity (a partial recompute, ``StepDecision.recompute(interval, fill=...)``), and chunks that
have not started are not forwarded. When no chunk needs computing the whole call is a CACHE.

Defaults are the MAGI-1 configuration (no rescale, threshold 0.01, warm-up 5); the SkyReels-V2
configuration rescales with the Wan polynomial (``coefficients="wan2.1-t2v-1.3b-ret"``, threshold
0.1 slow / 0.15 fast, warm-up 5).
"""

from __future__ import annotations

from typing import Any

import attrs
import torch

from accelframe import hookimpl
from accelframe.types import AppliesTo, Mode, StepContext, StepDecision
from accelframe.validators import number_in
from accelframe_policies.history import RecentUnits, rel_l1, unit_key
from accelframe_policies.teacache import coefficients_converter, polyval


@attrs.define(eq=False)
class _Chunk:
    phi: torch.Tensor | None = None  # the previous call's probe slice
    acc: float = 0.0
    steps: int = 0  # steps advanced so far
    velocity: torch.Tensor | None = None  # the last computed velocity of the chunk


@attrs.define(eq=False, kw_only=True)
class FlowCache:
    """FlowCache as a step policy; see the module docstring."""

    name = "flowcache"
    threshold: float = attrs.field(default=0.01, validator=number_in(0.0, 1e6))
    warmup: int = attrs.field(default=5, validator=number_in(0, 10_000, integer=True))
    coefficients: tuple[float, ...] = attrs.field(default="identity", converter=coefficients_converter("FlowCache"))
    applies_to: AppliesTo = attrs.field(default=AppliesTo.BOTH, converter=AppliesTo)
    _chunks: RecentUnits = attrs.field(init=False, factory=RecentUnits)
    peak_bytes: int = attrs.field(init=False, default=0)

    def reset(self) -> None:
        self._chunks.clear()

    def memory_bytes(self) -> int:
        return self.peak_bytes

    def _spans(self, ctx: StepContext) -> list[tuple[int, int, int]]:
        """(chunk index, start, end) of the call's chunks, relative to its first frame."""
        s, e = ctx.frames
        b = max(ctx.unit_frames, 1)
        out, j = [], s
        while j < e:
            end = min((j // b + 1) * b, e)
            out.append((j // b, j - s, end - s))
            j = end
        return out

    @hookimpl
    def accelframe_step_decide(self, ctx: StepContext) -> StepDecision:
        it, key = ctx.iteration, unit_key(ctx)
        phi = ctx.probe
        compute_end, reuse = 0, []
        for g, a, b in self._spans(ctx):
            ch = self._chunks.setdefault((*key, g), _Chunk())
            now = phi[:, a:b]
            if ch.phi is not None and ch.phi.shape == now.shape:
                change = polyval(self.coefficients, rel_l1(now, ch.phi, 1e-8))
            else:
                change = None
            ch.phi = now
            if not any(it.update[a:b]):
                continue
            last = any(n == 0.0 for n in it.sigma_next[a:b])
            if (ch.steps < max(self.warmup, 1) or last or change is None or ch.velocity is None
                    or ch.velocity.shape[1] != b - a):
                ch.acc = 0.0
                compute_end = b
                continue
            ch.acc += change
            if ch.acc >= self.threshold:
                ch.acc = 0.0
                compute_end = b
            else:
                reuse.append((a, b, ch.velocity))
        if compute_end == 0:
            if not reuse:
                return StepDecision.recompute(reason="nothing advances")
            return StepDecision.cache(_fill(ctx.x, reuse), reason=f"{len(reuse)} chunk(s) reused")
        s = ctx.frames[0]
        interval = (s, s + compute_end)
        outside = [(a, b, v) for a, b, v in reuse if a >= compute_end]
        if outside:
            return StepDecision.recompute(interval=interval, fill=_fill(ctx.x, outside),
                                          reason=f"{len(outside)} chunk(s) reused")
        if compute_end == ctx.x.shape[1]:
            return StepDecision.recompute(reason="every chunk computed")
        return StepDecision.recompute(interval=interval, reason="chunks past the interval have not started")

    @hookimpl
    def accelframe_step_observe(self, ctx: StepContext, decision: StepDecision,
                                velocity: torch.Tensor) -> None:
        it, key = ctx.iteration, unit_key(ctx)
        computed = (decision.interval or ctx.frames) if decision.mode is Mode.RECOMPUTE else None
        for g, a, b in self._spans(ctx):
            ch = self._chunks.setdefault((*key, g), _Chunk())
            if any(it.update[a:b]):
                ch.steps += 1
            s = ctx.frames[0]
            if computed is not None and computed[0] - s <= a and b <= computed[1] - s:
                ch.velocity = velocity[:, a:b].clone()
        held = sum(c.velocity.numel() * c.velocity.element_size()
                   for c in self._chunks.values() if c.velocity is not None)
        self.peak_bytes = max(self.peak_bytes, held)


def _fill(x: torch.Tensor, parts: list[tuple[int, int, Any]]) -> torch.Tensor:
    """Zeros shaped like ``x`` with the reused chunks' velocities written in."""
    out = torch.zeros_like(x)  # [B, F, C, H, W]
    for a, b, v in parts:
        out[:, a:b] = v
    return out


__all__ = ["FlowCache"]
