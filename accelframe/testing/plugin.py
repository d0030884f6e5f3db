"""The entry-point plugin of accelframe's own distribution: registers the ``analytic`` adapter."""

from __future__ import annotations

from typing import Any, Callable

from accelframe.plugins import hookimpl
from accelframe.testing.analytic import AnalyticAdapter


@hookimpl
def accelframe_register_adapters(register: Callable[..., Any]) -> None:
    register("analytic", AnalyticAdapter,
             description="closed-form velocity field with a KV cache; block, staircase or window plan")
