"""Registers the benchmark and measuring commands through the entry-point group ``accelframe``.

Each command module has ``configure(parser)`` and ``run(args, hooks)``; both are imported on first
use (``accelframe.registry.lazy``), so that ``accelframe --help`` imports no torch. ``hooks`` is the
CLI's plugin manager: a third-party policy or adapter loaded by the CLI is visible to every bench.
"""

from __future__ import annotations

from typing import Callable

from accelframe import hookimpl
from accelframe.registry import lazy

# (group, name, module, help)
COMMANDS: tuple[tuple[str | None, str, str, str], ...] = (
    ("bench", "overhead", "overhead", "engine cost per model call against direct calls"),
    ("bench", "wan", "wan", "time the Wan-family adapters and their KV-cache memory"),
    ("bench", "world", "world", "quality of the world's target, drafter and decoded noise on held-out prompts"),
    ("bench", "step", "step",
     "step policies against the original on the tiny world (SCOPE's Table 1 and 2 protocol)"),
    ("bench", "block", "block",
     "SDVG against the target and the drafter on the tiny world (the paper's Table 1 and 2 protocol)"),
    ("bench", "stream", "stream",
     "StreamDiffusionV2 on the tiny world: first frame, fps, jitter, deadline misses against load, streams "
     "and ranks"),
    ("bench", "stack", "stack",
     "the step, block and stream levels alone, in pairs and all three on the tiny world: speedup, quality, "
     "composition efficiency"),
    ("bench", "serve", "serve",
     "accelframe serve under N concurrent WebSocket clients: fps, first frame, latency, deadline misses, "
     "dropped frames and admission refusals against N; the prompt switch's cost"),
    ("bench", "costs", "costs",
     "seconds per component (target, drafter, commit, decode, score) at the papers' configurations, projected "
     "from FLOPs"),
    ("bench", "compat", "compat",
     "which policy acts, is exact or is refused in which adapter's loop, measured (docs/compatibility.md)"),
    (None, "calibrate", "calibrate", "fit TeaCache's rescale polynomial for an adapter from recorded full runs"),
    (None, "tune", "tune", "the fastest stack (step, block and stream levels) within a quality budget, written as a "
                           "stack file and checked on held-out prompts"),
)


@hookimpl
def accelframe_register_commands(register: Callable[..., None]) -> None:
    for group, name, module, help_ in COMMANDS:
        register(name, lazy(f"accelframe_bench.{module}:configure"), lazy(f"accelframe_bench.{module}:run"),
                 help=help_, group=group)
