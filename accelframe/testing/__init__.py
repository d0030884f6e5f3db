"""Tools for plugin authors: the analytic adapter and pytest fixtures.

``from accelframe.testing import AnalyticAdapter``. The fixtures load with
``pytest_plugins = ["accelframe.testing.fixtures"]`` in a ``conftest.py``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from accelframe.testing.analytic import AnalyticAdapter, AnalyticConfig, AnalyticState


def __getattr__(name: str) -> Any:  # imported on first use: registering the plugin imports no torch
    if name in __all__:
        from accelframe.testing import analytic

        return getattr(analytic, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["AnalyticAdapter", "AnalyticConfig", "AnalyticState"]
