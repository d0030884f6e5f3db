"""What the benchmarks of this package share: the ``--out`` guard and the written tables."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable


def fresh_out(owner: str, out: Path, names: tuple[str, ...], force: bool) -> None:
    """Before any work: refuse an ``--out`` folder that holds earlier results unless ``--force``, or
    one that cannot be made (:func:`accelframe.outputs.check_folder`)."""
    from accelframe.outputs import check_folder

    check_folder(out, names, owner=owner, field="--out", force=force)


def write_tables(doc: dict[str, Any], out: Path, markdown: Callable[[dict[str, Any]], str]) -> list[Path]:
    """``results.json`` (the document) and ``results.md`` (``markdown(doc)``) in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(doc, indent=1) + "\n")
    (out / "results.md").write_text(markdown(doc))
    return [out / "results.json", out / "results.md"]


def cell(value: Any, spec: str) -> str:
    """A table cell: ``value`` formatted by ``spec``, or ``-`` when there is none."""
    return "-" if value is None else format(value, spec)


def report(doc: dict[str, Any], out: Path, write: Callable[[dict[str, Any], Path], Any],
           markdown: Callable[[dict[str, Any]], str], as_json: bool) -> int:
    """Write the outputs, then print the document as JSON or the table and where it went. The files
    are written into a temporary folder beside ``out`` and moved into it when all are complete, so
    an error or an interrupt leaves no half-written results."""
    from accelframe.outputs import atomic_path

    with atomic_path(out, folder=True) as tmp:
        write(doc, tmp)
    if as_json:
        print(json.dumps(doc, indent=1))
        return 0
    print(markdown(doc))
    print(f"written to {out}/")
    return 0


__all__ = ["cell", "fresh_out", "report", "write_tables"]
