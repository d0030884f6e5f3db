"""MAGI-1's time convention, step grid, staged window and guidance scales (pure functions).

Time. MAGI-1 integrates ``t`` from 0 (noise) to 1 (clean), with ``x_t = t x_clean + (1 - t) ε`` and
the velocity ``dx/dt = x_clean - ε``. accelframe's σ is ``1 - t`` and its velocity ``dx/dσ`` is the
negative of MAGI's. The step grid squares a uniform grid and applies the reversed SD3 shift::

    u_k = (k / N)²,    t_k = u_k / (shift - (shift - 1) u_k)          k = 0 .. N   (shift 3)

so ``t`` moves slowly away from noise and fast near the clean end. The grid is kept as computed in
both conventions, so converting a grid level to σ and back returns the same float bit for bit
(:class:`TimeGrid`); ``1 - (1 - t)`` need not.

The staged window. Chunks of ``chunk_width`` latent frames; ``window`` chunks are denoised together
in stages of ``N / window`` steps; chunk ``c`` starts at stage ``c`` and so runs its step ``p`` at
global iteration ``c * N / window + p``: one stage behind the chunk before it, the oldest chunk of
the window the cleanest. A chunk that reaches ``t = 1`` leaves the window and is run once more at
``clean_t`` to write its K/V (the commit).

Each chunk attends to a band of chunks ending with itself: ``kv_range[stage]`` chunks for a chunk
in its stage ``0 .. window - 1`` (the reference's ``noise2clean_kvrange`` = [5, 4, 3, 2] for a
window of 4: the window's chunks older than it and exactly one clean chunk before the window), and
1 (itself) for the clean pass.
"""

from __future__ import annotations

import bisect
from typing import Sequence

from accelframe.errors import ConfigError


def t_grid(num_steps: int, shift: float = 3.0) -> tuple[float, ...]:
    """MAGI's ``t`` at steps ``0 .. num_steps`` (0 noise, 1 clean), squared then shifted."""
    out = []
    for k in range(num_steps + 1):
        u = (k / num_steps) ** 2
        out.append(u / (shift - (shift - 1.0) * u))
    return tuple(out)


class TimeGrid:
    """The grid in both conventions; ``sigma_of`` / ``t_of`` map grid levels exactly, other values
    by ``1 - x``."""

    def __init__(self, num_steps: int, shift: float = 3.0) -> None:
        self.t = t_grid(num_steps, shift)  # increasing, 0 .. 1
        self.sigma = tuple(1.0 - t for t in self.t)  # decreasing, 1 .. 0
        self._to_sigma = dict(zip(self.t, self.sigma))
        self._to_t = dict(zip(self.sigma, self.t))

    def sigma_of(self, t: float) -> float:
        return self._to_sigma.get(t, 1.0 - t)

    def t_of(self, sigma: float) -> float:
        return self._to_t.get(sigma, 1.0 - sigma)


def default_kv_ranges(window: int) -> tuple[int, ...]:
    """Chunks attended to by a chunk in stage ``0 .. window - 1``: ``window + 1`` down to 2."""
    return tuple(range(window + 1, 1, -1))


def step_of(chunk: int, iteration: int, steps_per_stage: int) -> int:
    """The step index chunk ``chunk`` runs at global denoising iteration ``iteration`` (may be out
    of ``0 .. N - 1``: then the chunk is not in the window)."""
    return iteration - chunk * steps_per_stage


def total_iterations(chunks: int, num_steps: int, window: int) -> int:
    """Denoising iterations of ``chunks`` chunks: the last starts at ``(chunks - 1) N / window``."""
    return (chunks - 1) * (num_steps // window) + num_steps


def live_chunks(iteration: int, chunks: int, num_steps: int, window: int) -> list[int]:
    """The chunks in the window at ``iteration``, oldest first."""
    sps = num_steps // window
    return [c for c in range(chunks) if 0 <= step_of(c, iteration, sps) < num_steps]


def kv_range(chunk: int, step: int, num_steps: int, window: int, ranges: Sequence[int]) -> tuple[int, int]:
    """The absolute chunk range ``[lo, chunk + 1)`` chunk ``chunk`` at step ``step`` attends to."""
    stage = step // (num_steps // window)
    n = ranges[stage]
    return max(0, chunk + 1 - n), chunk + 1


def cfg_scales(t: float, t_range: Sequence[float], prev: Sequence[float], text: Sequence[float]) -> tuple[float, float]:
    """The base model's (previous-chunk scale p, text scale s) at time ``t``: the interval of
    ``t_range`` that holds ``t`` (the reference's ``searchsorted(t_range - 1e-7, t) - 1``)."""
    i = bisect.bisect_left([x - 1e-7 for x in t_range], t) - 1
    i = min(max(i, 0), len(prev) - 1)
    return float(prev[i]), float(text[i])


def check_counts(num_frames: int, chunk_width: int, window: int, num_steps: int,
                 pixel_frames_of: object = None) -> int:
    """The number of chunks of a request, or a ConfigError naming what is allowed."""
    if num_frames % chunk_width or num_frames < chunk_width:
        valid = ", ".join(str(chunk_width * k) for k in range(1, 6))
        pix = ""
        if callable(pixel_frames_of):
            pix = " (pixel frames " + ", ".join(str(pixel_frames_of(chunk_width * k)) for k in range(1, 6)) + ", ...)"
        raise ConfigError("Request", "num_frames", num_frames,
                          f"a whole number of chunks of {chunk_width} latent frames: {valid}, ...{pix}")
    chunks = num_frames // chunk_width
    if window > chunks:
        raise ConfigError("MagiConfig", "window_size", window,
                          f"at most the request's {chunks} chunk(s) ({num_frames} latent frames of "
                          f"{chunk_width}): the window cannot be larger than the number of chunks")
    if num_steps % window:
        raise ConfigError("MagiConfig", "num_steps", num_steps,
                          f"a multiple of window_size = {window} (stages of num_steps / window_size steps)")
    return chunks


__all__ = ["TimeGrid", "cfg_scales", "check_counts", "default_kv_ranges", "kv_range", "live_chunks", "step_of",
           "t_grid", "total_iterations"]
