"""Velocity history of computed model calls, kept per (generation, model, unit).

Step policies that reuse or extrapolate velocities keep the last few *computed* velocities of a
unit, each with the per-frame noise levels it was computed at and which frames were computed (a
compute interval leaves the others at zero). Keying on the unit means a unit never reuses or
extrapolates another unit's velocities; a new generation starts empty.

Per-unit state is kept in :class:`RecentUnits`: only the ``UNIT_KEYS`` most recently used units. A
unit's state matters while it is denoised, and a live stream runs for hours: without a bound the
state of every finished unit would stay (and grow the policy's memory with the stream). A unit
whose state was dropped starts afresh, which every policy here answers with a recompute.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Callable, Hashable, Iterator

import attrs
import torch


# units whose state a policy keeps: well above the units in flight at once (streams x models x a
# staircase window), far below a long stream's units
UNIT_KEYS = 256


class RecentUnits:
    """A mapping of per-unit state that keeps the ``limit`` most recently used keys (reading or
    writing a key uses it); the least recently used one goes when a new key would exceed it."""

    def __init__(self, limit: int = UNIT_KEYS) -> None:
        self.limit = limit
        self._d: OrderedDict[Hashable, Any] = OrderedDict()

    def get(self, key: Hashable, default: Any = None) -> Any:
        if key in self._d:
            self._d.move_to_end(key)
            return self._d[key]
        return default

    def __getitem__(self, key: Hashable) -> Any:
        self._d.move_to_end(key)
        return self._d[key]

    def __setitem__(self, key: Hashable, value: Any) -> None:
        self._d[key] = value
        self._d.move_to_end(key)
        while len(self._d) > self.limit:
            self._d.popitem(last=False)

    def setdefault(self, key: Hashable, default: Any) -> Any:
        if key not in self._d:
            self[key] = default
        return self[key]

    def pop(self, key: Hashable, default: Any = None) -> Any:
        return self._d.pop(key, default)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._d

    def __len__(self) -> int:
        return len(self._d)

    def __iter__(self) -> Iterator[Hashable]:
        return iter(self._d)

    def values(self) -> Any:
        return self._d.values()

    def items(self) -> Any:
        return self._d.items()

    def clear(self) -> None:
        self._d.clear()


def recent_units(limit: int = UNIT_KEYS) -> Callable[[], RecentUnits]:
    """An attrs ``factory`` of :class:`RecentUnits`."""
    return lambda: RecentUnits(limit)


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
    _by_key: RecentUnits = attrs.field(factory=RecentUnits)
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


def l1(t: torch.Tensor, dim: tuple[int, ...] | None = None) -> torch.Tensor:
    """``sum |t|`` (over ``dim``, or all), summed in the same order whatever ``t``'s memory layout:
    a velocity that is a permuted view in one runtime and a packed buffer in another (a pipeline
    rank's) then gives the same bits, where a sum over strides would round differently."""
    a = t.contiguous().abs()
    return a.sum() if dim is None else a.sum(dim=dim)


def rel_l1(now: torch.Tensor, before: torch.Tensor, eps: float = 1e-8) -> float:
    """Normalised L1 change ``||now - before||_1 / (||before||_1 + eps)`` (SCOPE Eq. 4)."""
    return float(l1(now - before) / (l1(before) + eps))


__all__ = ["UNIT_KEYS", "Entry", "History", "RecentUnits", "entry", "l1", "recent_units", "rel_l1", "unit_key"]
