"""The benchmarks' PNG charts, drawn with matplotlib: a labelled scatter (a speed / quality plane),
grouped bars, a line over time and a decision timeline.

Each chart is its own ``Figure`` on the Agg canvas (never pyplot, whose global state would be
shared by every caller in the process), ``width`` x ``height`` pixels, written whole or not at all
(:func:`accelframe.outputs.atomic_path`). matplotlib is imported when a chart is drawn, so
importing this module (or a bench) does not import it.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

from accelframe.outputs import atomic_path

DPI = 100
# matplotlib's default cycle (tab10), so a series keeps its colour from chart to chart
COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#7f7f7f",
           "#bcbd22", "#17becf")
MODE_COLOURS = {"cache": "#2ca02c", "predict": "#ff7f0e", "recompute": "#1f77b4"}


def figure(width: int, height: int) -> Any:
    """A ``width`` x ``height`` pixel figure on its own Agg canvas."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width / DPI, height / DPI), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save(fig: Any, path: str | Path) -> Path:
    """Write ``fig`` as a PNG at ``path`` (whole or not at all); returns the path."""
    path = Path(path)
    with atomic_path(path) as tmp:
        # no "Software" text: the bytes depend on the drawing, not on the installed version
        fig.savefig(tmp, format="png", dpi=DPI, metadata={"Software": None})
    return path


def scatter(path: str | Path, points: Sequence[tuple[float, float, str]], *, xlabel: str, ylabel: str,
            segment: tuple[tuple[float, float], tuple[float, float], str] | None = None,
            width: int = 720, height: int = 440) -> Path:
    """Labelled points ``(x, y, label)``; a point with an empty label is drawn small and grey,
    unnamed (the crowd behind the named ones). Non-finite y values (an exact match's PSNR) are drawn
    as triangles on the top edge. ``segment = ((x0, y0), (x1, y1), name)``: a dashed reference line,
    named in the legend."""
    fig = figure(width, height)
    ax = fig.add_subplot()
    if segment is not None:
        (x0, y0), (x1, y1), name = segment
        ax.plot([x0, x1], [y0, y1], "--", color="0.55", linewidth=1, label=name)
        ax.legend(loc="best", fontsize=8, frameon=False)
    finite = [y for _, y, _ in points if math.isfinite(y)]
    span = (max(finite) - min(finite) or 1.0) if finite else 1.0
    top = max(finite) + 0.08 * span if finite else 1.0  # where the non-finite values go
    named, labels = 0, []
    for x, y, label in points:
        on_top = not math.isfinite(y)
        if not label:
            ax.plot([x], [top if on_top else y], "^" if on_top else "o", color="0.7", markersize=4)
            continue
        colour = COLOURS[named % len(COLOURS)]
        named += 1
        ax.plot([x], [top if on_top else y], "^" if on_top else "o", color=colour, markersize=7)
        labels.append((f"{label} ({y})" if on_top else label, x, top if on_top else y, colour))
    if len(finite) < len(points):
        ax.set_ylim(top=top + 0.04 * span)
    ax.margins(x=0.1)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, color="0.9")
    place_labels(ax, labels)
    return save(fig, path)


# where a point's label may go, in offset points from the point, tried in this order
LABEL_SPOTS = ((5, 3, "left"), (5, -11, "left"), (-5, 3, "right"), (-5, -11, "right"), (5, 13, "left"),
               (5, -21, "left"), (-5, 13, "right"), (-5, -21, "right"))


def place_labels(ax: Any, labels: Sequence[tuple[str, float, float, str]]) -> list[Any]:
    """Annotate each point ``(text, x, y, colour)`` at the first of :data:`LABEL_SPOTS` where its text
    overlaps no label placed before it (the first spot when every one does): close points keep
    readable names. Call it after the axes' limits are final. Returns the annotations."""
    fig = ax.get_figure()
    fig.get_layout_engine().execute(fig)  # the final axes box: the labels are measured against it
    renderer = fig.canvas.get_renderer()
    boxes: list[Any] = []
    out = []
    for text, x, y, colour in labels:
        def put(spot: tuple[int, int, str]) -> tuple[Any, Any]:
            dx, dy, ha = spot
            ann = ax.annotate(text, (x, y), xytext=(dx, dy), textcoords="offset points", fontsize=8,
                              color=colour, ha=ha)
            return ann, ann.get_window_extent(renderer)

        for spot in LABEL_SPOTS:
            ann, box = put(spot)
            if not any(box.overlaps(other) for other in boxes):
                break
            ann.remove()
        else:  # no spot is free: the first one
            ann, box = put(LABEL_SPOTS[0])
        boxes.append(box)
        out.append(ann)
    return out


def line(path: str | Path, series: Sequence[tuple[str, Sequence[tuple[float, float]]]], *, xlabel: str,
         ylabel: str, band: tuple[float, float] | None = None, width: int = 720, height: int = 400) -> Path:
    """One line per ``(name, [(x, y), ...])`` series (a measure over time), named in the legend;
    ``band = (reference, fraction)`` shades ``reference * (1 +- fraction)`` (a tolerance around a
    first value)."""
    fig = figure(width, height)
    ax = fig.add_subplot()
    if band is not None:
        ref, frac = band
        ax.axhspan(ref * (1 - frac), ref * (1 + frac), color=COLOURS[2], alpha=0.12,
                   label=f"within {100 * frac:g} % of {ref:.3f}")
    for k, (name, points) in enumerate(series):
        ax.plot([x for x, _ in points], [y for _, y in points], "o-", color=COLOURS[k % len(COLOURS)],
                markersize=4, label=name)
    ax.legend(loc="best", fontsize=8, frameon=False)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, color="0.9")
    return save(fig, path)


def grouped_bars(path: str | Path, groups: Sequence[str], series: Sequence[Sequence[float]],
                 names: Sequence[str], *, ylabel: str, notes: Sequence[str] | None = None,
                 width: int = 640, height: int = 360) -> Path:
    """Bars of ``series[k][g]`` per group ``g`` (non-finite values drawn as 0); ``notes[g]`` is
    written above each group; ``names[k]`` in the legend."""
    fig = figure(width, height)
    ax = fig.add_subplot()
    k_all = max(len(series), 1)
    bar_w = 0.8 / k_all
    for k, (values, name) in enumerate(zip(series, names)):
        xs = [g - 0.4 + bar_w * (k + 0.5) for g in range(len(groups))]
        ax.bar(xs, [v if math.isfinite(v) else 0.0 for v in values], bar_w * 0.95,
               color=COLOURS[k % len(COLOURS)], label=name)
    tallest = max([v for s in series for v in s if math.isfinite(v)] + [0.0])
    if notes is not None:
        for g, note in enumerate(notes):
            top = max([s[g] for s in series if math.isfinite(s[g])] + [0.0])
            ax.annotate(note, (g, top), xytext=(0, 3), textcoords="offset points", ha="center", fontsize=9)
    ax.set_ylim(0, (tallest or 1.0) * 1.18)  # room for the notes and the legend
    ax.set_xticks(range(len(groups)), list(groups))
    ax.set_ylabel(ylabel)
    ax.legend(loc="upper left", fontsize=8, frameon=False)
    ax.grid(True, axis="y", color="0.9")
    ax.set_axisbelow(True)
    return save(fig, path)


def timeline(path: str | Path, panels: Sequence[tuple[str, Sequence[str]]], *, width: int = 900) -> Path:
    """Per panel (title, modes per model call): three rows, one per mode, a tick where the call
    took that mode (SCOPE's Figure 6)."""
    fig = figure(width, 40 + 130 * max(len(panels), 1))
    axes = fig.subplots(max(len(panels), 1), 1, squeeze=False)[:, 0]
    rows = list(MODE_COLOURS)
    for ax, (title, modes) in zip(axes, panels):
        counts = {m: sum(1 for x in modes if x == m) for m in rows}
        ax.set_title(f"{title}: {len(modes)} calls, " + ", ".join(f"{m} {counts[m]}" for m in rows),
                     fontsize=9, loc="left")
        for r, mode in enumerate(rows):
            ticks = [(i, 1) for i, m in enumerate(modes) if m == mode]
            ax.broken_barh(ticks, (r - 0.4, 0.8), color=MODE_COLOURS[mode])
        ax.set_xlim(0, max(len(modes), 1))
        ax.set_ylim(len(rows) - 0.5, -0.5)  # the first mode on top
        ax.set_yticks(range(len(rows)), rows)
        for label, mode in zip(ax.get_yticklabels(), rows):
            label.set_color(MODE_COLOURS[mode])
        ax.xaxis.get_major_locator().set_params(integer=True)  # calls are counted, never halves
        ax.set_xlabel("model call", fontsize=8)
    return save(fig, path)


__all__ = ["COLOURS", "LABEL_SPOTS", "MODE_COLOURS", "figure", "grouped_bars", "line", "place_labels", "save",
           "scatter", "timeline"]
