"""StreamDiffusionV2's stream batch: the denoising steps of consecutive chunks as one forward.

With an n-step schedule a stream keeps up to n chunks in flight, each at its own step. Every
micro-step runs **one** batched model call over all in-flight rows (of every stream in the batch:
rows may come from several user streams), advances each row one step, and the row that reaches
σ = 0 is committed into its stream's KV cache (the adapter's commit pass), decoded and emitted.
A new chunk enters at its first level. So once the pipe is full, every call yields one clean chunk
per stream.

The rows attend to their stream's *committed* context, read only (the adapter's
``denoise_rows``). A chunk therefore starts denoising before the chunks ahead of it are
committed: its first steps see a context up to n - 1 chunks old. That lag is what the stream batch
trades for throughput; with one chunk in flight it is sequential generation. (The reference keeps a
cache per row and writes each row's noisy K/V into it with no commit pass; here the cache holds
clean committed frames only, as everywhere else in accelframe.)

Chunks of a stream finish in order: a chunk whose schedule is shorter than the one ahead of it (a
motion-aware noise level can shorten it) waits, clean, until that one is out.
"""

from __future__ import annotations

from time import perf_counter as perf
from typing import Any

import attrs
import torch

from accelframe.adapter import adapter_device, adapter_dtype
from accelframe.rng import unit_generator
from accelframe.trace import Stats
from accelframe.types import Iteration, Mode, ModelRole, Request, Role


@attrs.define(eq=False)
class Row:
    """One chunk in flight: latent frames ``[a, b)`` of a stream, its plan's denoising iterations and
    the step it is at."""

    stream: str
    a: int
    b: int
    x: torch.Tensor  # [1, F, C, H, W]
    steps: list[Iteration]
    generator: torch.Generator
    k: int = 0

    @property
    def done(self) -> bool:
        return self.k >= len(self.steps)


def new_row(adapter: Any, stream: str, stream_index: int, request: Request) -> Row:
    """A chunk entering the pipe: its start noise from the unit's generator (the engine's bits)."""
    a, b = request.first_frame, request.first_frame + request.num_frames
    unit = a // adapter.unit_frames
    steps = [it for it in adapter.plan(request) if it.role is Role.DENOISE]
    g = unit_generator(request.seed, unit, stream_index)
    noise = torch.randn((1, b - a, *adapter.latent_shape), generator=g)  # [1, F, C, H, W], on the CPU
    x = noise.to(adapter_device(adapter), adapter_dtype(adapter))
    if request.init_latents is not None:  # video-to-video: noise the clean latents to the start level
        s = request.start_sigma
        x = (1.0 - s) * request.init_latents.to(x.dtype) + s * x
    return Row(stream=stream, a=a, b=b, x=x, steps=steps, generator=g)


def micro_step(adapter: Any, rows: list[Row], states: dict[str, Any], stats: Stats) -> None:
    """Advance every unfinished row one step with batched forwards (one per chunk length)."""
    live = [r for r in rows if not r.done]
    by_len: dict[int, list[Row]] = {}
    for r in live:
        by_len.setdefault(r.b - r.a, []).append(r)
    for group in by_len.values():
        t0 = perf()
        xs = torch.cat([r.x for r in group])  # [R, F, C, H, W]
        its = [r.steps[r.k] for r in group]
        v = adapter.denoise_rows(xs, [it.sigma[0] for it in its], [r.a for r in group],
                                 [states[r.stream] for r in group])  # [R, F, C, H, W]
        stats.time_s["model"] += perf() - t0
        for r in group:  # one computed call per row, as the engine counts a call
            stats.count_call(ModelRole.TARGET, Mode.RECOMPUTE, r.b - r.a)
        t0 = perf()
        for i, (r, it) in enumerate(zip(group, its)):
            r.x = adapter.advance(r.x, v[i:i + 1], it, r.generator, states[r.stream])
            r.k += 1
        stats.time_s["advance"] += perf() - t0


__all__ = ["Row", "micro_step", "new_row"]
