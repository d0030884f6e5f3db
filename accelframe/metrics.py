"""Fidelity of an accelerated output to its baseline: PSNR and SSIM of decoded frames.

Frames are ``[..., 3, H, W]`` in [0, 1] (any leading dims: ``[F, 3, H, W]`` or ``[B, F, 3, H, W]``).
SSIM is Wang et al. (2004): an 11-tap Gaussian window with σ = 1.5, constants
``C1 = (0.01 L)^2``, ``C2 = (0.03 L)^2`` with L = 1, per channel, averaged over pixels, channels
and frames (the window is applied with zero padding cropped away: "valid" positions only).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def psnr(a: torch.Tensor, b: torch.Tensor, peak: float = 1.0) -> float:
    """Peak signal-to-noise ratio in dB over all elements; ``inf`` when equal."""
    mse = float(((a.double() - b.double()) ** 2).mean())
    return math.inf if mse == 0.0 else 10.0 * math.log10(peak * peak / mse)


def _window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2.0
    g = torch.exp(-(x * x) / (2 * sigma * sigma))
    g = g / g.sum()
    return g[:, None] * g[None, :]  # [size, size]


def ssim(a: torch.Tensor, b: torch.Tensor, size: int = 11, sigma: float = 1.5) -> float:
    """Mean structural similarity of two frame stacks ``[..., C, H, W]`` in [0, 1]."""
    if a.shape != b.shape:
        raise ValueError(f"ssim needs equal shapes, got {tuple(a.shape)} and {tuple(b.shape)}")
    c, h, w = a.shape[-3:]
    x = a.reshape(-1, 1, h, w).double()  # [N C, 1, H, W]
    y = b.reshape(-1, 1, h, w).double()
    size = min(size, h, w)
    win = _window(size, sigma).view(1, 1, size, size)
    mu_x, mu_y = F.conv2d(x, win), F.conv2d(y, win)
    sxx = F.conv2d(x * x, win) - mu_x ** 2
    syy = F.conv2d(y * y, win) - mu_y ** 2
    sxy = F.conv2d(x * y, win) - mu_x * mu_y
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    s = ((2 * mu_x * mu_y + c1) * (2 * sxy + c2)) / ((mu_x ** 2 + mu_y ** 2 + c1) * (sxx + syy + c2))
    return float(s.mean())


__all__ = ["psnr", "ssim"]
