"""The world cards' loss curve: a PNG of the asked size, written whole, drawn without the bench
distribution (the adapters do not import it) and with matplotlib imported only when drawn."""

from __future__ import annotations

import math
import subprocess
import sys

from accelframe_adapters.world.training.plot import line_plot


def test_loss_curve_is_a_png_of_the_asked_size(tmp_path):
    from matplotlib.image import imread

    steps = list(range(0, 500, 10))
    loss = [1.0 / (1 + s / 50) for s in steps]
    loss[3] = math.nan  # a lost log entry is left out, not drawn at 0
    path = line_plot(tmp_path / "world-dit.loss.png", steps, [loss, [2 * v for v in loss]], log_y=True)
    assert path == tmp_path / "world-dit.loss.png" and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = imread(path)
    assert image.shape[:2] == (280, 480) and (image[..., :3] != image[0, 0, :3]).any()
    linear = imread(line_plot(tmp_path / "lin.png", [0, 1, 2], [[0.0, -1.0, 2.0]], log_y=False, width=300,
                              height=200))
    assert linear.shape[:2] == (200, 300)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lin.png", "world-dit.loss.png"]


def test_the_plot_imports_neither_the_benches_nor_matplotlib():
    code = ("import sys, accelframe_adapters.world.training.plot, accelframe_adapters.world.training.cards\n"
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('accelframe_bench', 'matplotlib'))\n"
            "assert not bad, bad\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def test_without_matplotlib_the_plot_says_what_to_install(monkeypatch, tmp_path):
    """matplotlib is the adapters' ``training`` extra: a plain install draws no loss curve, and is
    told which extra to install, before any file is written."""
    import pytest

    from accelframe.errors import ConfigError

    monkeypatch.setitem(sys.modules, "matplotlib.backends.backend_agg", None)  # import fails
    with pytest.raises(ConfigError, match=r"adapters\[training\]"):
        line_plot(tmp_path / "loss.png", [1, 2], [[0.5, 0.4]])
    assert not list(tmp_path.iterdir())
