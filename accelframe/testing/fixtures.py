"""pytest fixtures for plugin authors. Load them in a ``conftest.py``::

    pytest_plugins = ["accelframe.testing.fixtures"]

``af_hooks`` is a fresh plugin manager with autoloading off and only the analytic adapter
registered: tests see exactly the plugins they register themselves. ``af_pipeline(...)`` builds a
pipeline on it; ``af_register(plugin)`` registers a throwaway plugin and unregisters it after the
test.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator

import pytest

from accelframe.pipeline import Pipeline
from accelframe.plugins import Hooks, create_hooks
from accelframe.testing import plugin as analytic_plugin


def make_hooks(*plugins: Any) -> Hooks:
    """A plugin manager with no autoloading, the analytic adapter and ``plugins``."""
    return create_hooks(autoload=False, disabled=(), plugins=(analytic_plugin, *plugins))


@pytest.fixture
def af_hooks() -> Hooks:
    return make_hooks()


@pytest.fixture
def af_pipeline(af_hooks: Hooks) -> Callable[..., Pipeline]:
    """``af_pipeline(drafter=None, strict=False, **adapter_kwargs)``: an analytic pipeline."""

    def build(*, drafter: dict[str, Any] | None = None, strict: bool = False,
              max_reuse: int | None = None, **adapter_kwargs: Any) -> Pipeline:
        return Pipeline("analytic", adapter_kwargs=adapter_kwargs, hooks=af_hooks,
                        drafter="analytic" if drafter is not None else None,
                        drafter_kwargs=drafter, strict=strict, max_reuse=max_reuse)

    return build


@pytest.fixture
def af_register(af_hooks: Hooks) -> Iterator[Callable[[Any], str]]:
    """Register a throwaway plugin on ``af_hooks``; it is unregistered after the test."""
    added: list[Any] = []

    def register(plugin: Any) -> str:
        name = af_hooks.register(plugin)
        added.append(plugin)
        return name

    yield register
    for plugin in added:
        if af_hooks.pm.is_registered(plugin):
            af_hooks.unregister(plugin)
