"""Selective computation on asynchronous schedules (SCOPE section 3.4, Eq. 8 and 9).

The adapter's iteration carries the scheduler's update mask ``m_t`` (``Iteration.update``: frame j
advances at iteration t and is not terminal, Eq. 8). With ``F`` the forwarded frames of the
segment and ``B`` the scheduler's window (``Iteration.valid``), the interval end is

    ē_t = min(B, F)                              when no frame advances (kept >= ē_{t-1})
    ē_t = max(ē_{t-1}, 1 + max{j : m_t,j = 1})   otherwise

and the compute interval is ``V_t = [max(ē_t - B, 0), ē_t)`` (Eq. 9), in frames relative to the
call. ``ē`` is monotone within a unit, so ``V_t`` is a safe suffix-trimmed window: it holds every
advancing frame and everything before them that they attend to. Frames past ``ē_t`` have not
started (σ = 1); in a block-causal model nothing before them attends to them, which is why
dropping them changes no advancing frame's velocity.
"""

from __future__ import annotations

from typing import Hashable

import attrs

from accelframe.types import Iteration
from accelframe_policies.history import RecentUnits


def interval_end(update: tuple[bool, ...], previous: int | None, window: int) -> int:
    """``ē_t`` of Eq. 8 (relative to the call's first frame)."""
    f = len(update)
    last = max((j for j, m in enumerate(update) if m), default=None)
    if last is None:  # the paper's min(B, F); never below the previous end, which stays monotone
        return max(previous or 0, min(window, f))
    return max(previous or 0, last + 1)


def compute_interval(it: Iteration, end: int) -> tuple[int, int]:
    """``V_t`` of Eq. 9 in absolute frames, for an interval end ``end`` relative to ``it.frames``."""
    window = _window(it)
    s = it.frames[0]
    return (s + max(end - window, 0), s + end)


def _window(it: Iteration) -> int:
    valid = it.valid or it.frames
    return valid[1] - valid[0]


@attrs.define(eq=False)
class ActiveInterval:
    """Tracks ``ē`` per key (a unit of one model in one generation) across its iterations."""

    _ends: RecentUnits = attrs.field(factory=RecentUnits)

    def peek(self, key: Hashable, it: Iteration) -> int:
        """``ē_t`` for the iteration ``it`` without recording it."""
        return interval_end(it.update, self._ends.get(key), _window(it))

    def record(self, key: Hashable, end: int) -> None:
        self._ends[key] = end

    def clear(self) -> None:
        self._ends.clear()


__all__ = ["ActiveInterval", "compute_interval", "interval_end"]
