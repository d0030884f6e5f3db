"""Tools for plugin authors: the analytic adapter and pytest fixtures.

``from accelframe.testing import AnalyticAdapter``. The fixtures load with
``pytest_plugins = ["accelframe.testing.fixtures"]`` in a ``conftest.py``.
"""

from accelframe.testing.analytic import AnalyticAdapter, AnalyticConfig, AnalyticState

__all__ = ["AnalyticAdapter", "AnalyticConfig", "AnalyticState"]
