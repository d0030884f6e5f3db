"""A dependency-free line plot (for loss curves in model cards): axes, ticks with numbers drawn in
:mod:`accelframe_bench.charts`' 3 x 5 pixel font, one or more series on a log or linear y axis, written as
PNG by :func:`accelframe.media.write_png`."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np

from accelframe_bench.charts import line as _line
from accelframe_bench.charts import text
from accelframe.media import write_png

COLOURS = ((31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189))


def _label(v: float) -> str:
    if v >= 1000:
        return f"{v / 1000:g}k"
    return f"{v:.3g}"


def line_plot(path: str | Path, x: Sequence[float], series: Sequence[Sequence[float]], *, log_y: bool = True,
              width: int = 480, height: int = 280) -> Path:
    """Plot ``series`` (each the length of ``x``) against ``x``; colours in the order of :data:`COLOURS`."""
    img = np.full((height, width, 3), 255, dtype=np.uint8)
    left, right, top, bottom = 56, width - 12, 10, height - 30
    ys = [v for s in series for v in s if math.isfinite(v) and (v > 0 or not log_y)]
    f = (lambda v: math.log10(v)) if log_y else (lambda v: v)
    lo, hi = f(min(ys)), f(max(ys))
    if hi - lo < 1e-9:
        lo, hi = lo - 0.5, hi + 0.5
    x_lo, x_hi = min(x), max(x)
    px = lambda v: left + (v - x_lo) / max(x_hi - x_lo, 1e-9) * (right - left)  # noqa: E731
    py = lambda v: bottom - (f(v) - lo) / (hi - lo) * (bottom - top)  # noqa: E731
    img[top:bottom + 1, left] = 0
    img[bottom, left:right + 1] = 0
    # y ticks: powers of ten (and 2x, 5x) inside the range for log axes, 5 even steps otherwise
    ticks = ([m * 10**e for e in range(math.floor(lo), math.ceil(hi) + 1) for m in (1, 2, 5)
              if lo <= math.log10(m * 10**e) <= hi]
             if log_y else list(np.linspace(10**lo if log_y else lo, hi, 5)))
    for t in ticks:
        y = int(py(t))
        img[y, left - 4:left] = 0
        img[y, left + 1:right:6] = 200
        text(img, 4, y - 5, _label(t))
    for t in np.linspace(x_lo, x_hi, 5):
        xx = int(px(t))
        img[bottom:bottom + 4, xx] = 0
        text(img, max(xx - 12, 0), bottom + 8, _label(float(round(t))))
    for s, colour in zip(series, COLOURS):
        pts = [(px(a), py(b)) for a, b in zip(x, s) if math.isfinite(b) and (b > 0 or not log_y)]
        for (x0, y0), (x1, y1) in zip(pts, pts[1:]):
            _line(img, x0, y0, x1, y1, colour)
    return write_png(path, img)


__all__ = ["COLOURS", "line_plot"]
