import os

import pytest

pytest_plugins = ["accelframe.testing.fixtures"]

# tests see only the plugins they register themselves
os.environ.setdefault("ACCELFRAME_DISABLE_PLUGIN_AUTOLOAD", "1")


@pytest.fixture(autouse=True)
def _no_autoload(monkeypatch):
    monkeypatch.setenv("ACCELFRAME_DISABLE_PLUGIN_AUTOLOAD", "1")
    monkeypatch.delenv("ACCELFRAME_DISABLE_PLUGINS", raising=False)
