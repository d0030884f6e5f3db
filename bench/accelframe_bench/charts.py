"""Dependency-free PNG charts for benchmarks: scatter (a speed / fidelity plane), grouped bars and a
decision timeline. Text is drawn in a 3 x 5 pixel font (upper case; lower case is shown upper);
files are written by :func:`accelframe.media.write_png`.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np

from accelframe.media import write_png

# 3 x 5 glyphs, rows top to bottom, "1" = ink
FONT = {
    "0": "111101101101111", "1": "010110010010111", "2": "111001111100111", "3": "111001111001111",
    "4": "101101111001001", "5": "111100111001111", "6": "111100111101111", "7": "111001010010010",
    "8": "111101111101111", "9": "111101111001111", "A": "010101111101101", "B": "110101110101110",
    "C": "011100100100011", "D": "110101101101110", "E": "111100110100111", "F": "111100110100100",
    "G": "011100101101011", "H": "101101111101101", "I": "111010010010111", "J": "001001001101010",
    "K": "101101110101101", "L": "100100100100111", "M": "101111111101101", "N": "110101101101101",
    "O": "010101101101010", "P": "110101110100100", "Q": "010101101110011", "R": "110101110101101",
    "S": "011100010001110", "T": "111010010010010", "U": "101101101101111", "V": "101101101101010",
    "W": "101101111111101", "X": "101101010101101", "Y": "101101010010010", "Z": "111001010100111",
    ".": "000000000000010", "-": "000000111000000", "_": "000000000000111", ":": "000010000010000",
    "=": "000111000111000", "+": "000010111010000", "/": "001001010100100", "(": "010100100100010",
    ")": "010001001001010", ",": "000000000010100", "%": "101001010100101", "#": "101111101111101",
    " ": "000000000000000",
}
COLOURS = ((31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189), (255, 127, 14),
           (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207))
INK = (40, 40, 40)


def text(img: np.ndarray, x: int, y: int, s: str, scale: int = 2,
         colour: tuple[int, int, int] = INK) -> int:
    """Draw ``s`` with its top-left corner at (x, y); returns the x after the last glyph."""
    for ch in s.upper():
        glyph = FONT.get(ch, FONT[" "])
        for i, bit in enumerate(glyph):
            if bit == "1":
                r, c = divmod(i, 3)
                y0, x0 = y + r * scale, x + c * scale
                if 0 <= y0 < img.shape[0] - scale and 0 <= x0 < img.shape[1] - scale:
                    img[y0:y0 + scale, x0:x0 + scale] = colour
        x += 4 * scale
    return x


def text_width(s: str, scale: int = 2) -> int:
    return 4 * scale * len(s)


def line(img: np.ndarray, x0: float, y0: float, x1: float, y1: float, colour: tuple[int, int, int]) -> None:
    """A two-pixel line from (x0, y0) to (x1, y1)."""
    n = int(max(abs(x1 - x0), abs(y1 - y0))) + 1
    xs = np.linspace(x0, x1, n).round().astype(int)
    ys = np.linspace(y0, y1, n).round().astype(int)
    for dx in (0, 1):
        img[np.clip(ys, 0, img.shape[0] - 1), np.clip(xs + dx, 0, img.shape[1] - 1)] = colour


def _ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    step = (hi - lo) / max(n - 1, 1)
    return [lo + i * step for i in range(n)]


def _axes(img: np.ndarray, box: tuple[int, int, int, int], xr: tuple[float, float], yr: tuple[float, float],
          xlabel: str, ylabel: str) -> None:
    left, top, right, bottom = box
    img[top:bottom + 1, left] = 0
    img[bottom, left:right + 1] = 0
    for t in _ticks(*yr):
        y = int(bottom - (t - yr[0]) / (yr[1] - yr[0]) * (bottom - top))
        img[y, left - 4:left] = 0
        img[y, left + 1:right:6] = 210
        text(img, 4, y - 5, f"{t:.3g}")
    for t in _ticks(*xr):
        x = int(left + (t - xr[0]) / (xr[1] - xr[0]) * (right - left))
        img[bottom:bottom + 4, x] = 0
        text(img, max(x - 10, 0), bottom + 8, f"{t:.3g}")
    text(img, (left + right) // 2 - text_width(xlabel) // 2, bottom + 22, xlabel)
    text(img, 4, max(top - 14, 0), ylabel)


def _range(values: Sequence[float], pad: float = 0.08) -> tuple[float, float]:
    vals = [v for v in values if math.isfinite(v)]
    lo, hi = (min(vals), max(vals)) if vals else (0.0, 1.0)
    if hi - lo < 1e-9:
        lo, hi = lo - 0.5, hi + 0.5
    span = hi - lo
    return lo - pad * span, hi + pad * span


def scatter(path: str | Path, points: Sequence[tuple[float, float, str]], *, xlabel: str, ylabel: str,
            width: int = 720, height: int = 440) -> Path:
    """Labelled points ``(x, y, label)``; non-finite y values are drawn at the top edge."""
    img = np.full((height, width, 3), 255, dtype=np.uint8)
    box = (64, 24, width - 16, height - 40)
    xr = _range([p[0] for p in points])
    yr = _range([p[1] for p in points])
    _axes(img, box, xr, yr, xlabel, ylabel)
    left, top, right, bottom = box
    for i, (x, y, label) in enumerate(points):
        colour = COLOURS[i % len(COLOURS)]
        px = int(left + (x - xr[0]) / (xr[1] - xr[0]) * (right - left))
        py = top if not math.isfinite(y) else int(bottom - (y - yr[0]) / (yr[1] - yr[0]) * (bottom - top))
        img[max(py - 3, 0):py + 4, max(px - 3, 0):px + 4] = colour
        tx = px + 6 if px + 6 + text_width(label, 1) < width else px - 6 - text_width(label, 1)
        text(img, tx, py - 2, label, scale=1, colour=colour)
    return write_png(path, img)


def grouped_bars(path: str | Path, groups: Sequence[str], series: Sequence[Sequence[float]],
                 names: Sequence[str], *, ylabel: str, notes: Sequence[str] | None = None,
                 width: int = 640, height: int = 360) -> Path:
    """Bars of ``series[k][g]`` per group ``g``; ``notes[g]`` is written above each group."""
    img = np.full((height, width, 3), 255, dtype=np.uint8)
    left, top, right, bottom = 64, 40, width - 16, height - 44
    hi = max([v for s in series for v in s if math.isfinite(v)] + [1e-9]) * 1.15
    _axes(img, (left, top, right, bottom), (0.0, 1.0), (0.0, hi), "", ylabel)
    img[bottom + 1:bottom + 12, left:right] = 255  # groups are labelled below instead of x ticks
    gw = (right - left) / max(len(groups), 1)
    bw = max(int(gw * 0.7 / max(len(series), 1)), 2)
    for g, label in enumerate(groups):
        x0 = int(left + g * gw + gw * 0.15)
        for k, s in enumerate(series):
            v = s[g] if math.isfinite(s[g]) else 0.0
            h = int(v / hi * (bottom - top))
            img[bottom - h:bottom, x0 + k * bw:x0 + (k + 1) * bw - 1] = COLOURS[k % len(COLOURS)]
        text(img, int(left + g * gw + gw / 2 - text_width(label) / 2), bottom + 8, label)
        if notes is not None:
            top_v = max(s[g] for s in series if math.isfinite(s[g]))
            y = bottom - int(top_v / hi * (bottom - top)) - 14
            text(img, int(left + g * gw + gw / 2 - text_width(notes[g]) / 2), y, notes[g])
    x = left + 8
    for k, name in enumerate(names):
        img[8:18, x:x + 10] = COLOURS[k % len(COLOURS)]
        x = text(img, x + 14, 9, name) + 16
    return write_png(path, img)


MODE_COLOURS = {"cache": (44, 160, 44), "predict": (255, 127, 14), "recompute": (31, 119, 180)}


def timeline(path: str | Path, panels: Sequence[tuple[str, Sequence[str]]], *, width: int = 900) -> Path:
    """Per panel (title, modes per model call): three rows, one per mode, a tick where the call
    took that mode (SCOPE's Figure 6)."""
    row_h, gap = 14, 34
    height = 20 + len(panels) * (3 * row_h + gap)
    img = np.full((height, width, 3), 255, dtype=np.uint8)
    left, right = 110, width - 12
    y = 8
    for title, modes in panels:
        counts = {m: sum(1 for x in modes if x == m) for m in MODE_COLOURS}
        text(img, 4, y, f"{title}: {len(modes)} calls " + " ".join(f"{m} {counts[m]}" for m in MODE_COLOURS))
        y += 16
        n = max(len(modes), 1)
        for r, mode in enumerate(MODE_COLOURS):
            top = y + r * row_h
            text(img, 4, top + 2, mode, colour=MODE_COLOURS[mode])
            img[top + row_h - 1, left:right] = 225
            for i, m in enumerate(modes):
                if m == mode:
                    x0 = int(left + i / n * (right - left))
                    x1 = max(int(left + (i + 1) / n * (right - left)) - 1, x0 + 1)
                    img[top + 1:top + row_h - 2, x0:x1] = MODE_COLOURS[mode]
        y += 3 * row_h + gap - 16
    return write_png(path, img)


__all__ = ["COLOURS", "FONT", "grouped_bars", "line", "scatter", "text", "timeline"]
