"""The loss curves of the world's model cards: one or more series against the step, on a log or
linear y axis, drawn with matplotlib.

The figure has its own Agg canvas (never pyplot's global state) and is written whole or not at all
(:func:`accelframe.outputs.atomic_path`). matplotlib is imported when a curve is drawn, so importing
the adapters does not import it.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

from accelframe.errors import ConfigError
from accelframe.outputs import atomic_path

COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd")
DPI = 100


def line_plot(path: str | Path, x: Sequence[float], series: Sequence[Sequence[float]], *, log_y: bool = True,
              width: int = 480, height: int = 280) -> Path:
    """Plot ``series`` (each the length of ``x``) against ``x``, ``width`` x ``height`` pixels;
    colours in the order of :data:`COLOURS`. Non-finite values (and, on a log axis, values <= 0)
    are left out. Returns the path written."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:  # an optional dependency of the adapters: only a model author draws
        raise ConfigError("line_plot", "path", str(path),
                          "matplotlib installed to draw loss curves: pip install -c constraints.txt "
                          "-e './adapters[training]'") from None

    fig = Figure(figsize=(width / DPI, height / DPI), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for values, colour in zip(series, COLOURS):
        kept = [(a, b) for a, b in zip(x, values) if math.isfinite(b) and (b > 0 or not log_y)]
        ax.plot([a for a, _ in kept], [b for _, b in kept], color=colour, linewidth=1.2)
    if log_y:
        from matplotlib.ticker import LogFormatter

        class Plain(LogFormatter):
            """The ticks matplotlib would label, as plain numbers (0.09, not 9e-02)."""

            def __call__(self, x: float, pos: int | None = None) -> str:
                return f"{x:g}" if super().__call__(x, pos) else ""

        ax.set_yscale("log")
        # a loss often spans less than a decade: the minor ticks (2..9 x 10^k) are labelled too
        for set_formatter in (ax.yaxis.set_major_formatter, ax.yaxis.set_minor_formatter):
            set_formatter(Plain(labelOnlyBase=False, minor_thresholds=(2, 0.5)))
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(True, which="both", color="0.92")
    path = Path(path)
    with atomic_path(path) as tmp:
        # no "Software" text: the bytes depend on the curve, not on the installed version
        fig.savefig(tmp, format="png", dpi=DPI, metadata={"Software": None})
    return path


__all__ = ["COLOURS", "line_plot"]
