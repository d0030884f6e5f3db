"""Velocity history of computed model calls, kept per (generation, model, unit).

Step policies that reuse or extrapolate velocities keep the last few *computed* velocities of a
unit, each with the per-frame noise levels it was computed at and which frames were computed (a
compute interval leaves the others at zero). Keying on the unit means a unit never reuses or
extrapolates another unit's velocities; a new generation starts empty.
"""

from __future__ import annotations

from typing import Any, Hashable

import attrs
import torch


@attrs.frozen(eq=False)
class Entry:
    """One computed call: velocity ``[B, F, C, H, W]``, levels ``[F]`` and computed frames ``[F]``."""

    velocity: torch.Tensor
    sigma: torch.Tensor  # float64 [F], the level each frame was at when computed
    computed: torch.Tensor  # bool [F], frames the model ran on
    step: int  # the call's step index within its unit


def entry(velocity: torch.Tensor, sigma: tuple[float, ...], frames: tuple[int, int],
          interval: tuple[int, int] | None, step: int) -> Entry:
    """An entry for a call over ``frames`` that computed ``interval`` (None: all of them)."""
    f = frames[1] - frames[0]
    computed = torch.zeros(f, dtype=torch.bool)
    a, b = (0, f) if interval is None else (interval[0] - frames[0], interval[1] - frames[0])
    computed[a:b] = True
    return Entry(velocity=velocity, sigma=torch.tensor(sigma, dtype=torch.float64), computed=computed,
                 step=step)


@attrs.define(eq=False)
class History:
    """The last ``size`` computed entries per key, newest first; tracks the bytes it holds."""

    size: int
    _by_key: dict[Hashable, list[Entry]] = attrs.field(factory=dict)
    peak_bytes: int = 0

    def get(self, key: Hashable, shape: Any = None) -> list[Entry]:
        """Entries of ``key``, newest first; with ``shape``, only those of that velocity shape
        (a call over other frames cannot reuse them)."""
        out = self._by_key.get(key, [])
        if shape is not None:
            out = [e for e in out if tuple(e.velocity.shape) == tuple(shape)]
        return out

    def push(self, key: Hashable, e: Entry) -> None:
        self._by_key[key] = ([e] + self._by_key.get(key, []))[:self.size]
        self.peak_bytes = max(self.peak_bytes, self.bytes())

    def drop(self, key: Hashable) -> None:
        self._by_key.pop(key, None)

    def clear(self) -> None:
        self._by_key.clear()

    def bytes(self) -> int:
        return sum(e.velocity.numel() * e.velocity.element_size()
                   for entries in self._by_key.values() for e in entries)


def unit_key(ctx: Any) -> tuple[int, str, int]:
    """The key of a step context's unit: (generation, model, unit)."""
    return (ctx.generation, ctx.model.value, ctx.unit)


def rel_l1(now: torch.Tensor, before: torch.Tensor, eps: float = 1e-8) -> float:
    """Normalised L1 change ``||now - before||_1 / (||before||_1 + eps)`` (SCOPE Eq. 4)."""
    return float((now - before).abs().sum() / (before.abs().sum() + eps))


__all__ = ["Entry", "History", "entry", "rel_l1", "unit_key"]
