"""The benchmarks' charts: each a PNG of the asked size that any decoder reads, written whole, with
matplotlib imported only when one is drawn."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest

from accelframe_bench import charts


def _read(path) -> np.ndarray:
    """The image at ``path`` as [H, W, C] (matplotlib's own PNG reader)."""
    from matplotlib.image import imread

    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return imread(path)


def _drawn(image: np.ndarray) -> bool:
    """Not a blank canvas: some pixels differ from the background."""
    return bool((image[..., :3] != image[0, 0, :3]).any())


def test_scatter_with_a_point_at_infinity(tmp_path):
    pts = [(1.8, 31.2, "SCOPE"), (2.5, math.inf, "exact"), (3.1, 20.0, "reuse")]
    path = charts.scatter(tmp_path / "pareto.png", pts, xlabel="speedup", ylabel="PSNR (dB)", width=500, height=300)
    image = _read(path)
    assert path == tmp_path / "pareto.png" and image.shape[:2] == (300, 500) and _drawn(image)


def test_scatter_draws_unlabelled_points_as_grey_dots(tmp_path):
    named = [(1.0, 0.9, "chosen")]
    one = _read(charts.scatter(tmp_path / "a.png", named, xlabel="speedup", ylabel="retention", width=500, height=300))
    crowd = _read(charts.scatter(tmp_path / "b.png", named + [(1.2, 0.95, ""), (0.8, math.inf, "")],
                                 xlabel="speedup", ylabel="retention", width=500, height=300))
    assert crowd.shape == one.shape and (crowd != one).any()
    def grey(image):  # pixels of the unlabelled points' colour
        return int((abs(image[..., :3] - 0.7) < 0.02).all(-1).sum())

    assert grey(crowd) > grey(one) + 20


def test_labels_of_close_points_do_not_overlap():
    """Points closer than a label's height get their names at different spots, none overlapping."""
    fig = charts.figure(720, 440)
    ax = fig.add_subplot()
    pts = [(1.20, 0.768, "block + stream"), (1.30, 0.768, "block"), (1.41, 0.761, "step + block + stream"),
           (1.54, 0.761, "step + block"), (1.66, 0.782, "step"), (1.0, 0.781, "baseline"), (1.0, 0.56, "far")]
    for x, y, _ in pts:
        ax.plot([x], [y], "o")
    anns = charts.place_labels(ax, [(name, x, y, "k") for x, y, name in pts])
    renderer = fig.canvas.get_renderer()
    boxes = [a.get_window_extent(renderer) for a in anns]
    assert [a.get_text() for a in anns] == [name for _, _, name in pts]
    assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:])
    # a lone point keeps the first spot: above right of it
    assert anns[-1].xyann == charts.LABEL_SPOTS[0][:2]


def test_scatter_with_a_reference_segment_draws_it(tmp_path):
    pts = [(0.0, 0.73, "target"), (1.0, 0.64, "draft"), (0.3, 0.70, "tau 0.5")]
    plain = _read(charts.scatter(tmp_path / "a.png", pts, xlabel="accept rate", ylabel="q", width=500, height=300))
    lined = _read(charts.scatter(tmp_path / "b.png", pts, xlabel="accept rate", ylabel="q", width=500, height=300,
                                 segment=((0.0, 0.73), (1.0, 0.64), "straight line")))
    assert lined.shape == plain.shape and (lined != plain).any()


@pytest.mark.parametrize("notes", [None, ["2.0x", "2.1x"]])
def test_grouped_bars(tmp_path, notes):
    path = charts.grouped_bars(tmp_path / "bars.png", ["9 F", "18 F"], [[1.0, 2.0], [0.5, math.nan]],
                               ["original", "SCOPE"], ylabel="s", notes=notes)
    image = _read(path)
    assert image.shape[:2] == (360, 640) and _drawn(image)


def test_timeline_has_a_panel_each_and_takes_an_empty_one(tmp_path):
    modes = ["recompute", "cache", "predict", "recompute"] * 5
    one = _read(charts.timeline(tmp_path / "one.png", [("SCOPE", modes)], width=600))
    two = _read(charts.timeline(tmp_path / "two.png", [("SCOPE", modes), ("nothing", [])], width=600))
    assert one.shape[1] == two.shape[1] == 600 and two.shape[0] > one.shape[0] and _drawn(one)


def test_a_chart_is_written_whole_or_not_at_all(tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    def broken(self, fname, **kw):
        with open(fname, "wb") as f:
            f.write(b"\x89PNG half")
        raise OSError("disk full")

    monkeypatch.setattr(Figure, "savefig", broken)
    with pytest.raises(OSError, match="disk full"):
        charts.scatter(tmp_path / "pareto.png", [(1.0, 1.0, "a")], xlabel="x", ylabel="y")
    assert list(tmp_path.iterdir()) == []


def test_importing_the_benches_and_the_cards_imports_no_matplotlib():
    code = ("import sys, accelframe_bench.charts, accelframe_bench.step, accelframe_bench.block, "
            "accelframe_adapters.world.training.cards\n"
            "assert 'matplotlib' not in sys.modules, 'matplotlib imported'\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
