"""The plugin manager a bench runs on: the one its caller passes, else the default built here.

The CLI passes its own manager (``run(args, hooks)``), so a third-party policy or adapter it loaded
is visible to every bench. A Python caller or a test that calls ``run(args)`` gets the default:
the adapters and the policies of this repository and no entry points, the same for every bench,
built once per run and shared by all of that run's pipelines.
"""

from __future__ import annotations

from typing import Any


def default_hooks() -> Any:
    """A new manager with the adapters' and the policies' plugins, no entry points."""
    from accelframe.plugins import create_hooks
    from accelframe_adapters import plugin as adapters
    from accelframe_policies import plugin as policies

    return create_hooks(autoload=False, disabled=(), plugins=(adapters, policies))


def or_default(hooks: Any) -> Any:
    """``hooks`` when given, else :func:`default_hooks`."""
    return hooks if hooks is not None else default_hooks()


__all__ = ["default_hooks", "or_default"]
