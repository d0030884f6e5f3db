"""A dependency-free line plot (for loss curves in model cards): axes, ticks with numbers drawn in
a 3 x 5 pixel font, one or more series on a log or linear y axis, written as PNG by
:func:`accelframe.media.write_png`."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np

from accelframe.media import write_png

# 3 x 5 glyphs, rows top to bottom, "1" = ink
_FONT = {
    "0": ("111", "101", "101", "101", "111"), "1": ("010", "110", "010", "010", "111"),
    "2": ("111", "001", "111", "100", "111"), "3": ("111", "001", "111", "001", "111"),
    "4": ("101", "101", "111", "001", "001"), "5": ("111", "100", "111", "001", "111"),
    "6": ("111", "100", "111", "101", "111"), "7": ("111", "001", "010", "010", "010"),
    "8": ("111", "101", "111", "101", "111"), "9": ("111", "101", "111", "001", "111"),
    ".": ("000", "000", "000", "000", "010"), "-": ("000", "000", "111", "000", "000"),
    "e": ("000", "111", "111", "100", "111"), "k": ("100", "101", "110", "101", "101"),
    " ": ("000", "000", "000", "000", "000"),
}
COLOURS = ((31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189))


def _text(img: np.ndarray, x: int, y: int, s: str, scale: int = 2) -> None:
    for ch in s:
        glyph = _FONT.get(ch, _FONT[" "])
        for r, row in enumerate(glyph):
            for c, bit in enumerate(row):
                if bit == "1":
                    img[y + r * scale:y + (r + 1) * scale, x + c * scale:x + (c + 1) * scale] = 40
        x += 4 * scale


def _line(img: np.ndarray, x0: float, y0: float, x1: float, y1: float, colour: tuple[int, int, int]) -> None:
    n = int(max(abs(x1 - x0), abs(y1 - y0))) + 1
    xs = np.linspace(x0, x1, n).round().astype(int)
    ys = np.linspace(y0, y1, n).round().astype(int)
    for dx in (0, 1):
        img[np.clip(ys, 0, img.shape[0] - 1), np.clip(xs + dx, 0, img.shape[1] - 1)] = colour


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
        _text(img, 4, y - 5, _label(t))
    for t in np.linspace(x_lo, x_hi, 5):
        xx = int(px(t))
        img[bottom:bottom + 4, xx] = 0
        _text(img, max(xx - 12, 0), bottom + 8, _label(float(round(t))))
    for s, colour in zip(series, COLOURS):
        pts = [(px(a), py(b)) for a, b in zip(x, s) if math.isfinite(b) and (b > 0 or not log_y)]
        for (x0, y0), (x1, y1) in zip(pts, pts[1:]):
            _line(img, x0, y0, x1, y1, colour)
    return write_png(path, img)


__all__ = ["COLOURS", "line_plot"]
