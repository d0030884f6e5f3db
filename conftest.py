import os

# one thread for every test and for every process a test spawns (set before torch is imported):
# tiny models run fastest on one thread, and several threads fight other work for the cores
os.environ["OMP_NUM_THREADS"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402

pytest_plugins = ["accelframe.testing.fixtures"]

# tests see only the plugins they register themselves
os.environ.setdefault("ACCELFRAME_DISABLE_PLUGIN_AUTOLOAD", "1")


@pytest.fixture(autouse=True)
def _no_autoload(monkeypatch):
    monkeypatch.setenv("ACCELFRAME_DISABLE_PLUGIN_AUTOLOAD", "1")
    monkeypatch.delenv("ACCELFRAME_DISABLE_PLUGINS", raising=False)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Every test module runs on one torch thread (autouse: no module opts in); the name stays for
    modules that still list it with ``pytest.mark.usefixtures("one_thread")``."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
