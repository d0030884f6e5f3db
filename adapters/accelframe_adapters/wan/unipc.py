"""UniPC multistep (bh2, x0 prediction, order 2), the solver SkyReels-V2 runs per latent frame.

In flow terms: α = 1 − σ, λ(σ) = log(α / σ), and the model's x0 estimate m = x − σ v. Step k of a
frame (at σ_k, with velocity v) is

1. corrector (k > 0): refine the sample the last predictor produced, using m_k and the stored
   m_{k−1} (and m_{k−2} for order 2);
2. predictor: x_{k+1} from m_k (and m_{k−1} for order 2).

With h = λ_t − λ_s, φ = B = expm1(−h) (the bh2 choice), a step from s to t is
``(σ_t / σ_s) x_s − α_t φ m_s − α_t B · (correction from earlier x0 estimates)``. The order is
``min(2, N − k, steps done + 1)`` (lower order at the first and last step); the corrector uses the
order of the predictor it corrects. At σ_t = 0 the step returns the x0 estimate. This is the same
math as SkyReels-V2's ``FlowUniPCMultistepScheduler``; the state is an immutable tuple per frame so
snapshots are shallow copies.
"""

from __future__ import annotations

import math

import attrs
import torch


@attrs.frozen
class UniPCState:
    """One frame's solver history: steps done, the last predictor's order and input sample, and
    the x0 estimates of the last two steps (newest last)."""

    steps_done: int = 0
    order: int = 0
    last_sample: torch.Tensor | None = attrs.field(default=None, eq=False)
    m: tuple[torch.Tensor, ...] = attrs.field(default=(), eq=False)


def _lam(s: float) -> float:
    if s <= 0.0:
        return math.inf
    return math.log(1.0 - s) - math.log(s)


# The reference scheduler builds its training sigmas 1 - linspace(1, 1/1000, 1000) in float64, stores
# them as float32 and keeps the first as a Python float: σ_max is float32(0.999) = 0.99900001287,
# not 0.999. The difference moves int(1000 σ) by one at 27 of N = 1..100 steps (shift 1).
SIGMA_MAX = float(torch.tensor(0.999, dtype=torch.float32))


def sigmas(num_steps: int, shift: float, sigma_max: float = SIGMA_MAX) -> list[float]:
    """SkyReels-V2's inference levels: shift(linspace(σ_max, 0, N + 1)[:-1]) and a final 0.

    In float64 as the reference's ``set_timesteps`` computes them (numpy's linspace: element i is
    ``i · (0 − σ_max) / N + σ_max``; ``torch.linspace`` rounds some elements differently)."""
    step = (0.0 - sigma_max) / num_steps
    u = [i * step + sigma_max for i in range(num_steps)]
    return [shift * x / (1.0 + (shift - 1.0) * x) for x in u] + [0.0]


def model_timesteps(levels: list[float]) -> list[int]:
    """The integer timesteps the model receives at every level but the final 0: ``int(1000 σ)``,
    truncated, as the reference casts its float64 ``σ · 1000`` to int64."""
    return [int(s * 1000.0) for s in levels[:-1]]


def _predict(x: torch.Tensor, m0: torch.Tensor, s0: float, t: float, m_prev: torch.Tensor | None,
             s_prev: float | None, order: int) -> torch.Tensor:
    """Predictor from σ = s0 to σ = t (order 1, or 2 with the previous x0 estimate)."""
    if t == 0.0:
        return m0
    a_t = 1.0 - t
    h = _lam(t) - _lam(s0)
    phi = math.expm1(-h)
    out = (t / s0) * x - a_t * phi * m0
    if order == 2:
        r1 = (_lam(s_prev) - _lam(s0)) / h
        d1 = (m_prev - m0) / r1
        out = out - a_t * phi * 0.5 * d1  # B = φ for bh2, ρ = 1/2
    return out


def _correct(x_prev: torch.Tensor, m0: torch.Tensor, m_t: torch.Tensor, s0: float, t: float,
             m_prev: torch.Tensor | None, s_prev: float | None, order: int) -> torch.Tensor:
    """Corrector of the step s0 -> t, given the new x0 estimate ``m_t`` at t."""
    a_t = 1.0 - t
    h = _lam(t) - _lam(s0)
    hh = -h
    phi = math.expm1(hh)
    base = (t / s0) * x_prev - a_t * phi * m0
    d1_t = m_t - m0
    if order == 1:
        return base - a_t * phi * 0.5 * d1_t
    r1 = (_lam(s_prev) - _lam(s0)) / h
    d1 = (m_prev - m0) / r1
    g = phi / hh - 1.0
    b1 = g / phi
    b2 = 2.0 * (g / hh - 0.5) / phi
    # solve [[1, 1], [r1, 1]] ρ = [b1, b2]
    rho0 = (b1 - b2) / (1.0 - r1)
    rho1 = b1 - rho0
    return base - a_t * phi * (rho0 * d1 + rho1 * d1_t)


def unipc_step(state: UniPCState, x: torch.Tensor, v: torch.Tensor, levels: list[float],
               solver_order: int = 2) -> tuple[torch.Tensor, UniPCState]:
    """One step of a frame at ``levels[state.steps_done]``; returns (x at the next level, state)."""
    k = state.steps_done
    n = len(levels) - 1
    assert k < n, f"frame already took all {n} steps"
    s = levels[k]
    m_k = x - s * v  # x0 estimate
    if k > 0 and state.last_sample is not None:
        m_prev2 = state.m[-2] if len(state.m) > 1 else None
        s_prev2 = levels[k - 2] if k >= 2 else None
        x = _correct(state.last_sample, state.m[-1], m_k, levels[k - 1], s, m_prev2, s_prev2, state.order)
    order = min(solver_order, n - k, k + 1)
    m_prev = state.m[-1] if state.m else None
    x_next = _predict(x, m_k, s, levels[k + 1], m_prev, levels[k - 1] if k > 0 else None, order)
    new = UniPCState(steps_done=k + 1, order=order, last_sample=x,
                     m=(*state.m[-(solver_order - 1):], m_k) if solver_order > 1 else (m_k,))
    return x_next, new


__all__ = ["SIGMA_MAX", "UniPCState", "model_timesteps", "sigmas", "unipc_step"]
