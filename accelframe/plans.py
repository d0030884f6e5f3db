"""Plan builders that several adapters share: block units, a start-σ cut and the block loop.

A block loop (Self-Forcing, Krea, the analytic adapter's ``"block"`` plan) denoises one unit at a
time over the same levels, then yields a commit iteration that makes the clean unit context.
Adapters with other shapes (a step matrix, a staged window) build their own iterations.
"""

from __future__ import annotations

from typing import Iterator, Sequence

from accelframe.types import Iteration, KVWrite, Role, UnitSpan


def block_units(first_frame: int, num_frames: int, block: int) -> list[UnitSpan]:
    """Units of ``block`` frames covering ``[first_frame, first_frame + num_frames)``; unit ``u``
    owns frames ``[u * block, (u + 1) * block)`` (the caller checks divisibility)."""
    return [UnitSpan(unit=(first_frame + k) // block, start=first_frame + k, end=first_frame + k + block)
            for k in range(0, num_frames, block)]


def start_schedule(sigmas: Sequence[float], start_sigma: float) -> list[float]:
    """The levels a unit walks when it starts at ``start_sigma`` (video-to-video): that level, then
    every level of ``sigmas`` below it. ``start_sigma >= 1`` keeps ``sigmas`` whole."""
    if start_sigma >= 1.0:
        return list(sigmas)
    return [start_sigma] + [s for s in sigmas if s < start_sigma]


def block_plan(spans: Sequence[UnitSpan], sigmas: Sequence[float], *,
               denoise_kv_write: KVWrite = KVWrite.SCRATCH) -> Iterator[Iteration]:
    """Per unit: one denoising call per step from ``sigmas[k]`` to ``sigmas[k + 1]`` (the unit
    starts at step 0 and finishes at the last), then a commit iteration at σ = 0."""
    n, idx = len(sigmas) - 1, 0
    for span in spans:
        b = span.end - span.start
        for k in range(n):
            yield Iteration(index=idx, unit=span.unit, step=k, frames=span.frames,
                            sigma=(sigmas[k],) * b, sigma_next=(sigmas[k + 1],) * b, update=(True,) * b,
                            kv_write=denoise_kv_write, units=(span.unit,),
                            starts=(span,) if k == 0 else (), finishes=(span,) if k == n - 1 else ())
            idx += 1
        yield Iteration(index=idx, unit=span.unit, step=n, frames=span.frames, sigma=(0.0,) * b,
                        sigma_next=(0.0,) * b, update=(False,) * b, role=Role.COMMIT,
                        kv_write=KVWrite.COMMIT, units=(span.unit,))
        idx += 1


__all__ = ["block_plan", "block_units", "start_schedule"]
