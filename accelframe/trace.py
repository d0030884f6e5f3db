"""The record of a generation: every decision and model call, and the statistics over them.

Both are plain JSON-serialisable data (``json.dumps`` works on ``Trace.events`` and
``Stats.to_dict()``), so a benchmark or a notebook can read them without accelframe.
"""

from __future__ import annotations

import time
from typing import Any

import attrs

from accelframe.types import Mode, ModelRole

_MODE_KEY = {Mode.RECOMPUTE: "computed", Mode.CACHE: "cached", Mode.PREDICT: "predicted"}
# decode_wait: time the denoising thread waited for a decode worker (Pipeline(decode_worker=True));
# with a worker, decode and block are spent on the worker's thread, beside the denoising
STAGES = ("policy", "probe", "model", "advance", "commit", "decode", "block", "batch", "decode_wait")


_STEP_FIELDS = ("model", "unit", "step", "iter", "frames", "mode", "interval", "by", "generation")


@attrs.define
class Trace:
    """An append-only list of events; each is a dict with at least ``"event"``.

    Step events, one per model call, are kept as tuples on the hot path and turned into dicts
    when ``events`` is read."""

    raw: list[Any] = attrs.field(factory=list)
    enabled: bool = True

    def add(self, event: str, **fields: Any) -> None:
        if self.enabled:
            fields["event"] = event
            self.raw.append(fields)

    def step(self, model: str, unit: int, step: int, index: int, frames: tuple[int, int],
             mode: str, interval: tuple[int, int] | None, by: str, generation: int = 0) -> None:
        """Record one denoising call (the executor's hot path: a tuple, no dict). ``interval`` is
        the computed frames of a recompute, None for a cached or predicted call; ``generation``
        tells the streams of a stream batch apart."""
        if self.enabled:
            self.raw.append((model, unit, step, index, frames, mode, interval, by, generation))

    @property
    def events(self) -> list[dict[str, Any]]:
        out = []
        for e in self.raw:
            if type(e) is tuple:
                d = dict(zip(_STEP_FIELDS, e))
                d["frames"] = list(d["frames"])
                d["interval"] = None if d["interval"] is None else list(d["interval"])
                d["event"] = "step"
                e = d
            out.append(e)
        return out

    def of(self, event: str) -> list[dict[str, Any]]:
        """The events of one kind, in order."""
        return [e for e in self.events if e["event"] == event]


def _model_counts() -> dict[str, int]:
    return {"computed": 0, "cached": 0, "predicted": 0, "commit": 0, "commit_skipped": 0,
            "frames_computed": 0, "frames_reused": 0}


@attrs.define
class Stats:
    """Counters of one generation (or one streaming run)."""

    calls: dict[str, dict[str, int]] = attrs.field(
        factory=lambda: {r.value: _model_counts() for r in ModelRole}
    )
    blocks: dict[str, int] = attrs.field(
        factory=lambda: {"accepted": 0, "regenerated": 0, "drafter_calls_wasted": 0,
                         "decodes_wasted": 0, "drafter_recommits": 0, "early_verdicts": 0}
    )
    fallbacks: dict[str, int] = attrs.field(factory=dict)
    time_s: dict[str, float] = attrs.field(factory=lambda: dict.fromkeys(STAGES, 0.0))
    adapters: dict[str, str | None] = attrs.field(factory=dict)  # model role -> adapter name
    units: int = 0
    frames: int = 0
    wall_s: float = 0.0
    _t0: float = attrs.field(factory=time.perf_counter, repr=False)

    def count_call(self, model: ModelRole, mode: Mode, frames: int) -> None:
        c = self.calls[model.value]
        c[_MODE_KEY[mode]] += 1
        if mode is Mode.RECOMPUTE:
            c["frames_computed"] += frames

    def count_fallback(self, hook: str) -> None:
        self.fallbacks[hook] = self.fallbacks.get(hook, 0) + 1

    def finish(self) -> None:
        self.wall_s = time.perf_counter() - self._t0

    def merge(self, other: Stats) -> None:
        """Add ``other``'s counters and stage times to these (a streaming run sums its chunks'
        engines). ``wall_s`` and ``adapters`` stay: the run's own clock and models."""
        for model, counts in other.calls.items():
            mine = self.calls.setdefault(model, _model_counts())
            for k, val in counts.items():
                mine[k] = mine.get(k, 0) + val
        for k, val in other.time_s.items():
            self.time_s[k] = self.time_s.get(k, 0.0) + val
        for k, n in other.fallbacks.items():
            self.fallbacks[k] = self.fallbacks.get(k, 0) + n
        for k, n in other.blocks.items():
            self.blocks[k] = self.blocks.get(k, 0) + n
        self.units += other.units
        self.frames += other.frames

    def model_calls(self, model: ModelRole = ModelRole.TARGET) -> int:
        """Model forwards of one model: computed denoising calls plus commit passes."""
        c = self.calls[model.value]
        return c["computed"] + c["commit"]

    def to_dict(self) -> dict[str, Any]:
        return {
            "adapters": dict(self.adapters),
            "calls": {k: dict(v) for k, v in self.calls.items()},
            "blocks": dict(self.blocks),
            "fallbacks": dict(self.fallbacks),
            "time_s": dict(self.time_s),
            "units": self.units,
            "frames": self.frames,
            "wall_s": self.wall_s,
        }
