import os

import pytest
import torch

pytest_plugins = ["accelframe.testing.fixtures"]

# tests see only the plugins they register themselves
os.environ.setdefault("ACCELFRAME_DISABLE_PLUGIN_AUTOLOAD", "1")


@pytest.fixture(autouse=True)
def _no_autoload(monkeypatch):
    monkeypatch.setenv("ACCELFRAME_DISABLE_PLUGIN_AUTOLOAD", "1")
    monkeypatch.delenv("ACCELFRAME_DISABLE_PLUGINS", raising=False)


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run fastest on one thread (and do not fight other work for the cores); a module
    opts in with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
