"""Where every command writes: output paths checked before work, files written whole or not at all.

One rule for every output of every command (``generate``, ``stream``, the benchmarks, ``world``,
``python -m accelframe_adapters.parallel``):

- :func:`check_output` / :func:`check_folder` run before any model is loaded or called: the
  parent folder is created (as ``accelframe stream`` always did) or the path is refused with a
  :class:`~accelframe.errors.ConfigError`; an existing output is refused unless ``--force``.
- :func:`atomic_path` / :func:`atomic_paths` hand out a temporary name in the target's own folder
  (``.NAME.tmp-TOKEN.SUFFIX``, so writers that pick a format by suffix still work) and rename it
  into place with :func:`os.replace` only when the block ends without an error. An error, Ctrl-C or
  SIGTERM removes the temporary files, so an interrupted run leaves neither a half-written file nor
  one that blocks the rerun. Folders (a benchmark's ``--out``) work the same way: a new folder is
  renamed into place whole; into an existing one the finished files are moved one by one.
- :func:`sigterm_as_interrupt` makes SIGTERM raise :class:`KeyboardInterrupt` while it is active,
  so what runs ``finally`` on Ctrl-C (a stream's sinks flushing the emitted frames) runs on SIGTERM.

The one exception is a stream's incremental mp4 (:class:`accelframe.streaming.sinks.Mp4Sink`): it is
written under a temporary name as frames come and finalised and renamed into place on any exit.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import threading
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

from accelframe.errors import ConfigError

__all__ = ["atomic_path", "atomic_paths", "check_folder", "check_output", "sigterm_as_interrupt",
           "temp_name", "write_bytes", "write_text"]


def _make_parent(p: Path, owner: str, field: str, shown: str) -> None:
    parent = p.parent
    for above in (parent, *parent.parents):  # the nearest existing ancestor must be a folder
        if above.exists():
            if not above.is_dir():
                raise ConfigError(owner, field, shown, f"a path inside a folder ({str(above)!r} is a file)")
            break
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:  # a file in the way, no permission, a read-only disk
        raise ConfigError(owner, field, shown, f"a path whose folder {str(parent)!r} can be created "
                                               f"({err.strerror or err})") from None
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(owner, field, shown, f"a path in a folder this process may write ({str(parent)!r} "
                                               "is not writable)")


def check_output(path: str | os.PathLike | None, *, owner: str, field: str, force: bool = False,
                 flag: str = "--force", suffixes: Sequence[str] | None = None) -> Path | None:
    """Check the output file ``path`` before any work and return it as a :class:`Path`.

    Refused with a :class:`ConfigError` naming ``owner``, ``field`` and the path: a suffix outside
    ``suffixes`` (when given), a folder where a file is to go, an existing file unless ``force``
    (the message names ``flag``), a parent folder that cannot be created or written. The parent
    folder is created. ``None`` (the output was not asked for) returns ``None``.
    """
    if path is None:
        return None
    p = Path(path)
    shown = str(path)
    if suffixes is not None and p.suffix.lower() not in suffixes:
        raise ConfigError(owner, field, shown, "a path ending in " + ", ".join(suffixes))
    if p.is_dir():
        raise ConfigError(owner, field, shown, "a file path (this is a folder)")
    if (p.exists() or p.is_symlink()) and not force:
        raise ConfigError(owner, field, shown, f"a path that does not exist yet (or {flag} to replace it)")
    _make_parent(p, owner, field, shown)
    return p


def check_folder(path: str | os.PathLike, names: Iterable[str], *, owner: str, field: str,
                 force: bool = False, flag: str = "--force") -> Path:
    """Check an output folder before any work: refused when it is a file, or when it already holds
    one of ``names`` (earlier results) unless ``force``. Its parent folder is created."""
    p = Path(path)
    shown = str(path)
    if p.exists() and not p.is_dir():
        raise ConfigError(owner, field, shown, "a folder (this is a file)")
    clash = [n for n in names if (p / n).exists()]
    if clash and not force:
        raise ConfigError(owner, field, shown, f"a folder without earlier results ({', '.join(clash)} exist; "
                                               f"pass {flag} to replace them)")
    _make_parent(p, owner, field, shown)
    return p


def temp_name(path: str | os.PathLike, token: str | None = None) -> Path:
    """The temporary name :func:`atomic_path` writes ``path`` under: ``.STEM.tmp-TOKEN.SUFFIX`` in
    the same folder (same file system, so the rename is atomic; same suffix, so a writer that picks
    the format by suffix, as PyAV does, still works)."""
    p = Path(path)
    token = token or f"{os.getpid()}-{secrets.token_hex(4)}"
    return p.with_name(f".{p.stem}.tmp-{token}{p.suffix}")


def _remove(p: Path) -> None:
    try:
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
    except OSError:
        pass


def _commit(tmp: Path, target: Path, merge: bool = True) -> None:
    if not (tmp.exists() or tmp.is_symlink()):
        return  # the block chose not to write this one
    if tmp.is_dir() and target.is_dir() and not merge:  # the old folder out of the way, the new one in
        old = temp_name(target, f"old-{os.getpid()}-{secrets.token_hex(4)}")
        os.replace(target, old)
        try:
            os.replace(tmp, target)
        except BaseException:
            os.replace(old, target)  # the earlier folder back in place, whole
            raise
        _remove(old)
        return
    if tmp.is_dir() and target.is_dir():  # an existing folder: move the finished entries into it
        for entry in sorted(tmp.iterdir()):
            dest = target / entry.name
            if entry.is_dir() and dest.is_dir():
                _commit(entry, dest)
                continue
            if dest.is_dir():
                shutil.rmtree(dest)
            os.replace(entry, dest)
        tmp.rmdir()
        return
    os.replace(tmp, target)


@contextlib.contextmanager
def atomic_paths(paths: Sequence[str | os.PathLike], *, folder: bool = False,
                 merge: bool = True) -> Iterator[list[Path]]:
    """Temporary names for ``paths`` (one token for all, so ``a.mp4`` and ``a.png`` keep a common
    stem); on a clean exit each temporary that was written is renamed onto its target, on any
    exception, Ctrl-C or SIGTERM all are removed. With ``folder`` each temporary is an empty folder,
    created here; it is merged into an existing folder of that name (files of the same name
    replaced, others kept), or with ``merge=False`` replaces it whole."""
    targets = [Path(p) for p in paths]
    token = f"{os.getpid()}-{secrets.token_hex(4)}"
    temps = [temp_name(t, token) for t in targets]
    with sigterm_as_interrupt():
        try:
            if folder:
                for t in temps:
                    t.mkdir(parents=False)
            yield temps
            for tmp, target in zip(temps, targets):
                _commit(tmp, target, merge)
        finally:
            for t in temps:  # nothing is left of a failed or interrupted write (nor after a commit)
                _remove(t)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, folder: bool = False, merge: bool = True) -> Iterator[Path]:
    """:func:`atomic_paths` for one path: ``with atomic_path(p) as tmp: write(tmp)``."""
    with atomic_paths([path], folder=folder, merge=merge) as temps:
        yield temps[0]


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` whole or not at all (temporary name, then rename)."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` whole or not at all (temporary name, then rename)."""
    return write_bytes(path, text.encode("utf-8"))


class _Terminated:
    """The SIGTERM handler: the first signal raises KeyboardInterrupt where the main thread is;
    further ones are ignored while the interrupted work cleans up (flushing a video, removing
    temporary files)."""

    def __init__(self) -> None:
        self.fired = False

    def __call__(self, signum: int, frame: Any) -> None:
        if self.fired:
            return
        self.fired = True
        raise KeyboardInterrupt(f"signal {signum} (SIGTERM)")


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """While active, SIGTERM raises :class:`KeyboardInterrupt` in the main thread, as Ctrl-C does,
    so ``finally`` blocks and context managers run; the earlier handler is restored after. A
    handler someone else installed (or SIG_IGN) is left alone, as is every thread but the main one."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "SIGTERM"):
        yield
        return
    old = signal.getsignal(signal.SIGTERM)
    if old is not signal.SIG_DFL:
        yield
        return
    signal.signal(signal.SIGTERM, _Terminated())
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)
