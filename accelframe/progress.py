"""Progress on stderr: tqdm bars for long work (off with ``quiet`` or ``--json``; off a terminal,
such as a log file, a plain line at most every ``LOG_INTERVAL_S`` seconds instead of a redrawn bar),
one redrawn status line for live counters (``accelframe stream``), and :func:`write_above` for a
message (a warning, an error) that must never land inside either: the status line is cleared, the
message printed on a line of its own, and the status line drawn again below it.
"""

from __future__ import annotations

import sys
import threading
from typing import Any

ERASE = "\x1b[K"  # erase to the end of the line
_lock = threading.RLock()
_status: list[str] = []  # the open status line's text (at most one), empty when none is open
LOG_INTERVAL_S = 30.0  # off a terminal: the least time between two progress lines


class _Lines:
    """A stream for tqdm off a terminal: each redraw becomes one line, its clearing writes nothing."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream

    def write(self, text: str) -> None:
        line = text.replace("\r", "").strip()
        if line:
            self.stream.write(line + "\n")

    def flush(self) -> None:
        self.stream.flush()


def progress_bar(*, total: int, desc: str, unit: str, quiet: bool = False) -> Any:
    """A context-managed bar on stderr: redrawn on a terminal, else a line when it starts, at most
    every ``LOG_INTERVAL_S`` seconds while it runs, and when it ends (a long run's log shows how far
    it is); nothing with ``quiet``."""
    from tqdm import tqdm

    if quiet:
        return tqdm(total=total, disable=True)
    if sys.stderr.isatty():
        return tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True, leave=False)
    return tqdm(total=total, desc=desc, unit=unit, file=_Lines(sys.stderr), ncols=120,
                mininterval=LOG_INTERVAL_S, miniters=1, leave=True)


def status(text: str) -> None:
    """Draw (or redraw) the one status line on stderr: no newline, so the next call replaces it."""
    with _lock:
        sys.stderr.write("\r" + text + ERASE)
        sys.stderr.flush()
        _status[:] = [text]


def end_status() -> None:
    """End the status line with a newline (its last text stays on screen); nothing when none is open."""
    with _lock:
        if _status:
            _status.clear()
            sys.stderr.write("\n")
            sys.stderr.flush()


def write_above(text: str) -> None:
    """Print ``text`` as a line of its own on stderr, above the status line and any tqdm bar."""
    with _lock:
        shown = _status[0] if _status else None
        if shown is not None:
            sys.stderr.write("\r" + ERASE)
        tqdm_module = sys.modules.get("tqdm")
        if tqdm_module is not None:  # clears the bars, prints, draws them again
            tqdm_module.tqdm.write(text, file=sys.stderr)
        else:
            sys.stderr.write(text + "\n")
        if shown is not None:
            sys.stderr.write("\r" + shown + ERASE)
        sys.stderr.flush()
