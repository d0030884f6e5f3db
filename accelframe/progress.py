"""Progress bars for long work: tqdm on stderr, off with ``quiet`` (``--json``) or off a terminal."""

from __future__ import annotations

from typing import Any

from tqdm import tqdm


def progress_bar(*, total: int, desc: str, unit: str, quiet: bool = False) -> Any:
    """A context-managed bar; ``disable=None`` lets tqdm turn itself off when stderr is no TTY."""
    return tqdm(total=total, desc=desc, unit=unit, disable=True if quiet else None,
                dynamic_ncols=True, leave=False)
