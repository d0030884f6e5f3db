"""Registers the built-in policies through the entry-point group ``accelframe``."""

from __future__ import annotations

from typing import Callable

from accelframe import hookimpl
from accelframe_policies.fixed_batch import FixedBatch


@hookimpl
def accelframe_register_policies(register: Callable[..., None]) -> None:
    register("fixed-batch", FixedBatch, kind="batch",
             description="fixed chunk length, up to max_streams streams, oldest pending first")
