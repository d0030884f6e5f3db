"""Velocity extrapolation along the noise level σ (SCOPE section 3.3, Eq. 6 and 7).

Given computed velocities ``v_k, v_{k-1}, v_{k-2}`` at per-frame levels ``σ_k, σ_{k-1}, σ_{k-2}``
(newest first) and the level ``σ*`` of the call to predict, with ``Δ = σ* - σ_k``,
``Δ1 = σ_k - σ_{k-1}`` and ``Δ2 = σ_{k-1} - σ_{k-2}``:

    first order   v1 = v_k + (v_k - v_{k-1}) / Δ1 · Δ                                (Eq. 6)
    second order  v2 = v1 + ½ · [(v_k - v_{k-1}) / Δ1 - (v_{k-1} - v_{k-2}) / Δ2]
                            / ((Δ1 + Δ2) / 2) · Δ²                                   (Eq. 7)
    momentum      v_k + m · Δ, m the derivative estimates averaged with weight ``beta``
                  on the older one (with two points it is first order)
    auto          the order (0, 1 or 2) that best predicted ``v_k`` from the older entries

Everything is per frame: in an asynchronous schedule each frame has its own σ. Stability checks,
per frame: a difference needs both entries to have computed the frame and a level change
``|Δ1| > min_step`` (a frame that did not move has no derivative), and the extrapolation may
reach at most ``max_ratio`` times the history's own span (``|Δ| <= max_ratio |Δ1|``); a frame that
fails drops to the highest order that passes (order 0 is reuse). Conservative clipping: the
correction ``v - v_k`` of a frame is scaled down to at most ``clip`` times ``||v_k||_1`` of that
frame; a non-finite correction is dropped.
"""

from __future__ import annotations

from typing import Sequence

import torch

from accelframe_policies.history import Entry, l1

PREDICTORS = ("taylor1", "taylor2", "momentum", "auto")
# entries a predictor needs for its full order (fewer: it degrades, see the module docstring)
NEEDS = {"taylor1": 2, "taylor2": 3, "momentum": 3, "auto": 4}


def _per_frame(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """An ``[F]`` tensor shaped to broadcast over ``[B, F, C, H, W]``."""
    return t.to(like.dtype).view(1, -1, *([1] * (like.dim() - 2)))


def extrapolate(hist: Sequence[Entry], sigma_now: torch.Tensor, *, order: int, momentum: float | None = None,
                max_ratio: float = 8.0, min_step: float = 1e-6, clip: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Predict the velocity at levels ``sigma_now`` ``[F]`` from ``hist`` (newest first).

    Returns ``(velocity [B, F, C, H, W], order used per frame [F])``. ``hist[0]`` must exist; frames
    it did not compute keep its (zero) velocity and order -1, and a caller must not use them.
    """
    v0 = hist[0].velocity
    s0 = hist[0].sigma
    used = torch.where(hist[0].computed, 0, -1)
    if order == 0 or len(hist) < 2:
        return v0, used
    delta = sigma_now.to(torch.float64) - s0  # [F]
    d1 = s0 - hist[1].sigma
    ok1 = (hist[0].computed & hist[1].computed & (d1.abs() > min_step)
           & (delta.abs() <= max_ratio * d1.abs()))
    safe1 = torch.where(ok1, d1, torch.ones_like(d1))
    g1 = (v0 - hist[1].velocity) / _per_frame(safe1, v0)  # dv/dσ between the newest two
    corr = g1 * _per_frame(delta, v0) * _per_frame(ok1, v0)
    used = torch.where(ok1, 1, used)
    if order >= 2 and len(hist) >= 3:
        d2 = hist[1].sigma - hist[2].sigma
        ok2 = ok1 & hist[2].computed & (d2.abs() > min_step)
        safe2 = torch.where(ok2, d2, torch.ones_like(d2))
        g2 = (hist[1].velocity - hist[2].velocity) / _per_frame(safe2, v0)
        m2 = _per_frame(ok2, v0)
        if momentum is not None:  # the derivative as a weighted average of the two estimates
            corr = corr + (momentum * (g2 - g1) * _per_frame(delta, v0)) * m2
        else:
            span = torch.where(ok2, (d1 + d2) / 2.0, torch.ones_like(d1))
            curv = (g1 - g2) / _per_frame(span, v0)
            corr = corr + 0.5 * curv * _per_frame(delta * delta, v0) * m2
        used = torch.where(ok2, 2, used)
    return v0 + clip_correction(corr, v0, clip), used


def clip_correction(corr: torch.Tensor, base: torch.Tensor, clip: float) -> torch.Tensor:
    """Scale each frame's correction to at most ``clip · ||base||_1`` of that frame; non-finite: 0."""
    corr = torch.where(torch.isfinite(corr), corr, torch.zeros_like(corr))
    dims = tuple(d for d in range(corr.dim()) if d != 1)
    size = l1(corr, dims)  # [F]
    cap = clip * l1(base, dims)
    scale = torch.where(size > cap, cap / size.clamp_min(1e-30), torch.ones_like(size))
    return corr * _per_frame(scale, corr)


def auto_order(hist: Sequence[Entry], **kw: float) -> int:
    """The order among 0, 1, 2 whose prediction of ``hist[0]`` from the older entries has the
    smallest L1 error over the frames all of them computed (0 when nothing can be compared)."""
    older = hist[1:]
    if len(older) < 2:
        return 0
    truth = hist[0].velocity
    best, best_err = 0, None
    for order in range(0, min(2, len(older) - 1) + 1):
        guess, used = extrapolate(older, hist[0].sigma, order=order, **kw)
        ok = _per_frame(hist[0].computed & (used >= 0), truth)
        err = float(l1((guess - truth) * ok))
        if best_err is None or err < best_err - 1e-12:
            best, best_err = order, err
    return best


def predict(hist: Sequence[Entry], sigma_now: torch.Tensor, predictor: str, *, momentum: float = 0.5,
            max_ratio: float = 8.0, min_step: float = 1e-6, clip: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """The velocity of ``predictor`` (one of :data:`PREDICTORS`) at ``sigma_now``; see the module."""
    kw = {"max_ratio": max_ratio, "min_step": min_step, "clip": clip}
    if predictor == "taylor1":
        return extrapolate(hist, sigma_now, order=1, **kw)
    if predictor == "taylor2":
        return extrapolate(hist, sigma_now, order=2, **kw)
    if predictor == "momentum":
        return extrapolate(hist, sigma_now, order=2, momentum=momentum, **kw)
    if predictor == "auto":
        return extrapolate(hist, sigma_now, order=auto_order(hist, **kw), **kw)
    raise ValueError(f"unknown predictor {predictor!r}; one of {', '.join(PREDICTORS)}")


__all__ = ["NEEDS", "PREDICTORS", "auto_order", "clip_correction", "extrapolate", "predict"]
