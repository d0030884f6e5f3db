"""Where a stream's output frames go: an mp4 file per stream, written as frames come, or a callback.

A sink has ``write(stream, frames)`` (``frames [F, 3, H, W]`` in [0, 1], in order) and
``close()``; the streaming runtime closes its sinks when the run ends, also after an error or an
interrupt (Ctrl-C, and SIGTERM under ``accelframe stream``), so what was emitted is always flushed
into a playable file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import torch

from accelframe.errors import ConfigError
from accelframe.media import check_fps, open_mp4, pad_even, to_uint8, upscale
from accelframe.outputs import check_output, temp_name


STREAM_FIELD = "{stream}"  # the one placeholder a path pattern may hold: the stream's id


def check_pattern(owner: str, field: str, path: str | Path) -> str:
    """``path`` as a pattern whose only braces are literal ``{stream}`` placeholders, else a
    ConfigError naming ``field``: ``{strem}``, ``{0}`` or ``{stream.x}`` would fail or write a file
    named so only after the model ran."""
    text = str(path)
    if "{" in text.replace(STREAM_FIELD, "") or "}" in text.replace(STREAM_FIELD, ""):
        raise ConfigError(owner, field, text, "a path whose only braces are {stream} (replaced by each "
                                              "stream's id); no other {...} is filled in")
    return text


def stream_pattern(path: str | Path, streams: int) -> str:
    """The file pattern of ``streams`` streams written to ``path``: ``path`` itself for one stream
    or when it holds ``{stream}``; otherwise ``-{stream}`` goes before the suffix, so that each
    stream gets its own file (``stream.mp4`` -> ``stream-s0.mp4``, ``stream-s1.mp4``, ...)."""
    text = str(path)
    if streams <= 1 or STREAM_FIELD in text:
        return text
    p = Path(text)
    return str(p.with_name(p.stem + "-" + STREAM_FIELD + p.suffix))


class Mp4Sink:
    """One mp4 per stream, encoded incrementally (memory stays flat however long the stream).

    ``path`` is a file for a single stream, or a pattern with ``{stream}`` for several. Existing
    files are refused unless ``force`` (``overwrite`` is the same); missing folders are created.
    ``upscale_factor`` enlarges tiny frames (nearest neighbour) so that players show them.

    Each file is encoded under a temporary name beside it (``.NAME.tmp-TOKEN.mp4``) and finalised
    (the encoder flushed, the index written) and renamed into place by :meth:`close`, which the
    streaming runtime calls on any exit: a stream stopped part-way leaves a playable file of the
    frames emitted so far, never a truncated one."""

    def __init__(self, path: str | Path, fps: float, *, force: bool = False, overwrite: bool = False,
                 upscale_factor: int = 1) -> None:
        check_fps("Mp4Sink", fps)
        if not isinstance(upscale_factor, int) or isinstance(upscale_factor, bool) or upscale_factor < 1:
            raise ConfigError("Mp4Sink", "upscale_factor", upscale_factor, "an int >= 1")
        if str(path).lower().endswith(".mp4") is False:
            raise ConfigError("Mp4Sink", "path", str(path), "a path ending in .mp4")
        check_pattern("Mp4Sink", "path", path)
        try:
            import av  # noqa: F401
        except ImportError:
            raise ConfigError("Mp4Sink", "path", str(path), "PyAV installed (pip install av)") from None
        self.pattern, self.fps, self.factor = str(path), fps, upscale_factor
        self.force = self.overwrite = bool(force or overwrite)
        self._open: dict[str, tuple[Any, Any, Path]] = {}
        self.paths: dict[str, Path] = {}
        self.frames: dict[str, int] = {}

    def path_for(self, stream: str) -> Path:
        return Path(self.pattern.replace(STREAM_FIELD, stream))

    def check(self, streams: list[str]) -> None:
        """Refuse before any model runs: a shared path for several streams, or a file that exists."""
        paths = [self.path_for(s) for s in streams]
        if len(set(paths)) != len(paths):
            raise ConfigError("Mp4Sink", "path", self.pattern,
                              "a pattern with {stream} when several streams are written")
        for p in paths:
            self._check(p)

    def _check(self, path: Path) -> None:
        check_output(path, owner="Mp4Sink", field="path", force=self.force, flag="force=True")

    def _container(self, stream: str, height: int, width: int) -> tuple[Any, Any]:
        import av

        if stream in self._open:
            return self._open[stream][:2]
        path = self.path_for(stream)
        self._check(path)
        tmp = temp_name(path)
        try:
            container, out = open_mp4(av, tmp, self.fps, height, width)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        self._open[stream] = (container, out, tmp)
        self.paths[stream] = path
        self.frames[stream] = 0
        return container, out

    def write(self, stream: str, frames: torch.Tensor) -> None:
        import av

        from accelframe.limits import check_upscale

        f, _, h, w = frames.shape
        check_upscale("Mp4Sink", "upscale_factor", self.factor, (h, w), frames=f)  # before allocating
        frames = pad_even(upscale(frames.detach().float().cpu(), self.factor))  # [F, 3, H, W], even H, W
        _, _, h, w = frames.shape
        container, out = self._container(stream, h, w)
        for array in to_uint8(frames):
            container.mux(out.encode(av.VideoFrame.from_ndarray(array, format="rgb24")))
            self.frames[stream] += 1

    def close(self) -> None:
        """Finalise every open file and rename it into place; one that cannot be finalised is
        removed (its temporary) and the first such error raised after the others are closed."""
        pending, self._open = self._open, {}
        failed: BaseException | None = None
        for stream, (container, out, tmp) in pending.items():
            try:
                try:
                    container.mux(out.encode(None))  # flush what the encoder holds
                finally:
                    container.close()  # writes the index: the file plays from here on
                os.replace(tmp, self.paths[stream])
            except BaseException as err:  # noqa: BLE001 - close the others, then re-raise
                tmp.unlink(missing_ok=True)
                failed = failed or err
        if failed is not None:
            raise failed


class CallbackSink:
    """Calls ``fn(stream, frames)`` for every emitted chunk."""

    def __init__(self, fn: Callable[[str, torch.Tensor], None]) -> None:
        self.fn = fn

    def write(self, stream: str, frames: torch.Tensor) -> None:
        self.fn(stream, frames)

    def close(self) -> None:
        pass


__all__ = ["STREAM_FIELD", "CallbackSink", "Mp4Sink", "check_pattern", "stream_pattern"]
