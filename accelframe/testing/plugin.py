"""The entry-point plugin of accelframe's own distribution: registers the ``analytic`` adapter
(imported when first built, so that registering it imports no torch)."""

from __future__ import annotations

from typing import Any, Callable

from accelframe import hookimpl
from accelframe.registry import lazy


@hookimpl
def accelframe_register_adapters(register: Callable[..., Any]) -> None:
    register("analytic", lazy("accelframe.testing.analytic:AnalyticAdapter"),
             description="closed-form velocity field with a KV cache; block, staircase or window plan")
