"""Seeded generators: the noise a unit starts from is fixed by (seed, stream, unit).

A drafter and a target drawing the start noise of the same unit get the same bits, which is what
lets a block policy regenerate "from the same initial noise".
"""

from __future__ import annotations

from typing import Any

import torch

_MASK = (1 << 64) - 1


def _mix(z: int) -> int:
    """splitmix64's finaliser: a cheap, well-spread 64-bit hash."""
    z = (z + 0x9E3779B97F4A7C15) & _MASK
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
    return z ^ (z >> 31)


def unit_seed(seed: int, unit: int, stream: int = 0) -> int:
    """A 63-bit seed derived from the request seed, the stream and the unit index."""
    return _mix(_mix(_mix(seed) ^ stream) ^ unit) >> 1


def unit_generator(seed: int, unit: int, stream: int = 0, device: str | torch.device = "cpu") -> torch.Generator:
    """A fresh generator for one unit; every call with the same arguments gives the same stream."""
    return torch.Generator(device=device).manual_seed(unit_seed(seed, unit, stream))


def start_noise(seed: int, unit: int, stream: int, shape: tuple[int, ...], device: Any = "cpu",
                dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Generator]:
    """A unit's start noise of ``shape`` and the generator it was drawn from (which then re-noises
    the unit's steps). Drawn on the CPU, then moved: the same seed gives the same start noise on any
    device."""
    g = unit_generator(seed, unit, stream)
    return torch.randn(shape, generator=g).to(device, dtype), g
