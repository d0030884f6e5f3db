"""Registers the model-family adapters through the entry-point group ``accelframe``.

No family has landed yet, so the hook registers nothing; each family's module adds one
``register(name, factory, description=...)`` line here.
"""

from __future__ import annotations

from typing import Callable

from accelframe import hookimpl

FAMILIES: dict[str, tuple[Callable[..., object], str]] = {}


@hookimpl
def accelframe_register_adapters(register: Callable[..., None]) -> None:
    for name, (factory, description) in FAMILIES.items():
        register(name, factory, description=description)
