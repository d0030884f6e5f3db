"""``compile=True``: ``torch.compile`` for the adapters' networks (DiTs and decoders).

A network class names its pure tensor parts in a class attribute ``COMPILED`` (method names); the
bookkeeping around them (KV caches, decode caches, chunk plans) stays eager, so a compiled part
never guards on cache objects and the KV length never fixes a graph. :func:`compile_parts` replaces
each named method of every submodule by ``torch.compile(method, dynamic=True)``: one graph serves
every token and context length, and the weights' names do not change (checkpoints, snapshots and
``state_dict`` are the eager network's).

Compilation is lazy: the first calls of each shape class (with and without cached context, a
stream's first decoded frame and the later ones) compile, and :class:`CompileClock` counts the
seconds they take. Outputs equal the eager network's to float rounding (inductor reorders sums):
``adapters/tests/test_compiling.py`` states the tolerance.
"""

from __future__ import annotations

import functools
import threading
import time
from typing import Any, Callable

import torch
from torch import nn

# compiled graphs a compiled part may keep (variants: cache or none, mask or none, grad or none)
RECOMPILE_LIMIT = 16
BACKEND = "inductor"  # torch.compile's backend for compile=True ("eager" traces without code generation)


class CompileClock:
    """Seconds spent compiling: the wall time of every compiled call that compiled a new graph (its
    own run is included; beside a compile it is small). Graph counts are process-wide, so two
    adapters compiling at once on two threads share their charges."""

    def __init__(self) -> None:
        self.compiles = 0
        self.seconds = 0.0
        self._lock = threading.Lock()


def _graph_count() -> int:
    return int(torch._dynamo.utils.counters["stats"]["unique_graphs"])


def _timed(fn: Callable[..., Any], clock: CompileClock) -> Callable[..., Any]:
    """``fn`` (compiled) with the time of calls that compiled a new graph charged to ``clock``."""

    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any) -> Any:
        before = _graph_count()
        t0 = time.perf_counter()
        out = fn(*args, **kwargs)
        graphs = _graph_count() - before
        if graphs > 0:
            with clock._lock:
                clock.compiles += graphs
                clock.seconds += time.perf_counter() - t0
        return out

    return call


def compile_parts(model: nn.Module, clock: CompileClock | None = None, *, backend: str | None = None) -> int:
    """Compile the ``COMPILED`` methods of every submodule of ``model`` in place; returns how many.
    A model with no such parts is left as it is (0). ``backend="eager"`` traces the graphs without
    generating code (what the fast tests use to check that the parts trace whole); None: :data:`BACKEND`."""
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT)
    clock = clock if clock is not None else CompileClock()
    n = 0
    for module in model.modules():
        for name in getattr(type(module), "COMPILED", ()):
            compiled = torch.compile(getattr(module, name), dynamic=True, backend=backend or BACKEND)
            object.__setattr__(module, name, _timed(compiled, clock))
            n += 1
    return n


__all__ = ["BACKEND", "RECOMPILE_LIMIT", "CompileClock", "compile_parts"]
