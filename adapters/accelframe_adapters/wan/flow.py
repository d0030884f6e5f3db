"""Flow-matching schedules of the Wan family, in accelframe's σ convention.

Wan trains on x_σ = (1 − σ) x0 + σ ε with the model predicting the flow v = ε − x0, and feeds it
the timestep t = 1000 σ. Timesteps are *shifted*: σ = s u / (1 + (s − 1) u) for a uniform u.

- :class:`TrainGrid` is the 1000-point grid Self-Forcing and Krea look timesteps up in
  (``FlowMatchScheduler(shift, sigma_min=0, extra_one_step=True)``); its :meth:`~TrainGrid.warp`
  is Self-Forcing's ``warp_denoising_step`` ([1000, 750, 500, 250] -> [1000, 937.5, 833.3, 625]).
- :func:`few_step_schedule` turns a denoising step list into (model timestep, σ) pairs.
- :func:`euler` and :func:`renoise` are the two single-step updates; :mod:`accelframe_adapters.wan.unipc`
  holds the multistep solver SkyReels-V2 uses.
"""

from __future__ import annotations

import attrs
import torch

from accelframe.errors import ConfigError


def shift_sigma(u: float | torch.Tensor, shift: float) -> float | torch.Tensor:
    """Wan's timestep shift: σ = s u / (1 + (s − 1) u)."""
    return shift * u / (1.0 + (shift - 1.0) * u)


@attrs.frozen
class TrainGrid:
    """The shifted 1000-step training grid: σ_i = shift(1 − i / 1000), t_i = 1000 σ_i, i < 1000."""

    shift: float
    steps: int = 1000

    @property
    def sigmas(self) -> torch.Tensor:  # [steps], float64, from 1 down to shift(1 / steps)
        u = torch.linspace(1.0, 0.0, self.steps + 1, dtype=torch.float64)[:-1]
        return shift_sigma(u, self.shift)

    @property
    def timesteps(self) -> torch.Tensor:
        return self.sigmas * 1000.0

    def warp(self, steps: list[float]) -> list[float]:
        """Self-Forcing's warp: step value t picks ``cat(timesteps, [0])[1000 − t]``."""
        table = torch.cat([self.timesteps, torch.zeros(1, dtype=torch.float64)])
        out = []
        for t in steps:
            i = self.steps - int(t)
            if not 0 <= i <= self.steps:
                raise ConfigError("denoising_step_list", "entry", t, f"a timestep in [0, {self.steps}]")
            out.append(float(table[i]))
        return out

    def nearest_sigma(self, t: float) -> float:
        """σ of the grid timestep nearest to ``t`` (how the reference converts t to σ: t = 0 maps
        to the smallest grid σ, not to 0)."""
        i = int(torch.argmin((self.timesteps - t).abs()))
        return float(self.sigmas[i])


def few_step_schedule(step_list: list[float], shift: float, warp: bool) -> list[tuple[float, float]]:
    """The (model timestep, σ) of each call of a few-step block loop.

    ``step_list`` holds Wan timesteps (e.g. [1000, 750, 500, 250]); with ``warp`` each is first
    mapped through the shifted grid. σ is the grid σ nearest to the (warped) timestep, as the
    reference converts x0 = x_t − σ v and re-noises with it.
    """
    grid = TrainGrid(shift)
    ts = grid.warp(step_list) if warp else [float(t) for t in step_list]
    return [(t, grid.nearest_sigma(t)) for t in ts]


def euler(x: torch.Tensor, v: torch.Tensor, sigma: torch.Tensor, sigma_next: torch.Tensor) -> torch.Tensor:
    """x(σ') = x(σ) + v (σ' − σ); ``sigma`` broadcast against ``x``."""
    return x + v * (sigma_next - sigma)


def renoise(x: torch.Tensor, v: torch.Tensor, sigma: torch.Tensor, sigma_next: torch.Tensor,
            noise: torch.Tensor) -> torch.Tensor:
    """Few-step update: x0 = x − σ v, then x(σ') = (1 − σ') x0 + σ' ε with fresh noise ε."""
    x0 = x - sigma * v
    return (1.0 - sigma_next) * x0 + sigma_next * noise


__all__ = ["TrainGrid", "euler", "few_step_schedule", "renoise", "shift_sigma"]
