"""Write generated frames to disk: PNG images, frame strips and H.264 mp4 videos.

Frames are a float tensor ``[T, 3, H, W]`` with values in ``[0, 1]`` (what the pipeline returns
after decoding). PNG images and mp4 videos are both encoded by PyAV (``av``, a dependency of the
core: FFmpeg's encoders, so no image library is needed), imported only when a file is written.

Every file is written whole or not at all (:func:`accelframe.outputs.atomic_path`: a temporary name
in the same folder, renamed into place when complete). The functions here never check whether a path
already exists: callers decide about overwriting (:func:`accelframe.outputs.check_output`).
"""

from __future__ import annotations

import math
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import ConfigError
from .outputs import atomic_path, atomic_paths, write_bytes

__all__ = ["check_fps", "frame_strip", "open_mp4", "pad_even", "to_uint8", "upscale", "write_mp4", "write_png",
           "write_video"]

VIDEO_SUFFIXES = (".mp4", ".png")


def _check_frames(owner: str, frames: Any) -> torch.Tensor:
    """Return ``frames`` as a tensor after checking it is ``[T, 3, H, W]`` with T, H, W >= 1."""
    if not isinstance(frames, torch.Tensor):
        raise ConfigError(owner, "frames", type(frames).__name__, "a torch.Tensor of shape [T, 3, H, W]")
    if frames.ndim != 4 or frames.shape[1] != 3 or min(frames.shape) < 1:
        raise ConfigError(owner, "frames", tuple(frames.shape), "shape [T, 3, H, W] with T, H, W >= 1")
    return frames


def to_uint8(frames: torch.Tensor) -> np.ndarray:
    """Convert float frames ``[T, 3, H, W]`` in ``[0, 1]`` to a uint8 array ``[T, H, W, 3]``.

    Values are clamped to ``[0, 1]``, scaled by 255 and rounded to the nearest integer.
    """
    frames = _check_frames("to_uint8", frames)
    scaled = frames.detach().to("cpu", torch.float32).clamp(0.0, 1.0).mul(255.0).round()
    return np.ascontiguousarray(scaled.to(torch.uint8).permute(0, 2, 3, 1).numpy())


def upscale(frames: torch.Tensor, factor: int) -> torch.Tensor:
    """Nearest-neighbour upscaling of ``[T, 3, H, W]`` frames to ``[T, 3, H*factor, W*factor]``.

    Each pixel becomes a ``factor x factor`` block. ``factor`` must be an integer >= 1;
    ``factor == 1`` returns ``frames`` unchanged.
    """
    frames = _check_frames("upscale", frames)
    if isinstance(factor, bool) or not isinstance(factor, int) or factor < 1:
        raise ConfigError("upscale", "factor", factor, "an integer >= 1")
    if factor == 1:
        return frames
    return frames.repeat_interleave(factor, dim=2).repeat_interleave(factor, dim=3)


def _image_to_hwc_uint8(image: torch.Tensor | np.ndarray) -> np.ndarray:
    """Return ``image`` as a contiguous uint8 array ``[H, W, 3]``."""
    if isinstance(image, torch.Tensor):
        if image.ndim != 3 or image.shape[0] != 3 or min(image.shape) < 1:
            raise ConfigError("write_png", "image", tuple(image.shape), "a [3, H, W] float tensor in [0, 1]")
        return to_uint8(image.unsqueeze(0))[0]
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3 or min(image.shape) < 1:
            raise ConfigError("write_png", "image", f"ndarray {image.dtype} {image.shape}",
                              "a [H, W, 3] uint8 array")
        return np.ascontiguousarray(image)
    raise ConfigError("write_png", "image", type(image).__name__,
                      "a [3, H, W] float tensor in [0, 1] or a [H, W, 3] uint8 numpy array")


def write_png(path: str | Path, image: torch.Tensor | np.ndarray) -> Path:
    """Write one RGB image as an 8-bit PNG (lossless: it reads back to the same pixels).

    ``image`` is a ``[3, H, W]`` float tensor in ``[0, 1]`` or a ``[H, W, 3]`` uint8 array. It is
    encoded by PyAV's ``png`` codec in memory and written whole or not at all. Raises
    :class:`ConfigError` for another image, or when PyAV is not installed. Returns the path written.
    """
    pixels = _image_to_hwc_uint8(image)
    try:
        import av
    except ImportError:
        raise ConfigError("write_png", "path", str(path), "PyAV installed (pip install av) to write .png") from None
    height, width, _ = pixels.shape
    codec = av.CodecContext.create("png", "w")
    codec.width, codec.height, codec.pix_fmt = width, height, "rgb24"
    packets = codec.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24"))
    packets += codec.encode(None)  # end of input: an encoder may hold a packet back until told
    return write_bytes(path, b"".join(bytes(p) for p in packets))


def frame_strip(frames: torch.Tensor, count: int = 8, gap: int = 2,
                gap_value: float = 1.0) -> tuple[torch.Tensor, list[int]]:
    """Lay ``count`` frames, evenly spaced over T, side by side in one image.

    The first and last frames are always picked; all T frames are used when ``T <= count``.
    Frames are separated by ``gap`` columns filled with ``gap_value`` (1.0 = white). Returns
    ``(image, indices)``: ``image`` is ``[3, H, W*n + gap*(n-1)]`` for the ``n`` picked frames,
    ``indices`` the picked frame indices in increasing order.
    """
    frames = _check_frames("frame_strip", frames)
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ConfigError("frame_strip", "count", count, "an integer >= 1")
    if isinstance(gap, bool) or not isinstance(gap, int) or gap < 0:
        raise ConfigError("frame_strip", "gap", gap, "an integer >= 0")
    total, _, height, width = frames.shape
    if total <= count:
        indices = list(range(total))
    elif count == 1:
        indices = [0]
    else:  # round(i * (T-1) / (count-1)) in exact integer arithmetic, half up
        indices = [(2 * i * (total - 1) + count - 1) // (2 * (count - 1)) for i in range(count)]
    n = len(indices)
    image = torch.full((3, height, width * n + gap * (n - 1)), float(gap_value),
                       dtype=frames.dtype, device=frames.device)
    for slot, index in enumerate(indices):
        left = slot * (width + gap)
        image[:, :, left:left + width] = frames[index]
    return image, indices


def _pick_codec(av: Any) -> str:
    """``"libx264"`` when this PyAV build can encode it, else ``"mpeg4"``."""
    try:
        av.codec.Codec("libx264", "w")
    except Exception:  # UnknownCodecError, or an older PyAV raising ValueError
        return "mpeg4"
    return "libx264"


def write_mp4(path: str | Path, frames: torch.Tensor, fps: float) -> Path:
    """Encode ``[T, 3, H, W]`` float frames in ``[0, 1]`` to an mp4 with PyAV.

    Uses H.264 (``libx264``, ``yuv420p``, crf 18) when available, else MPEG-4 part 2. H and W
    must be even (yuv420p halves the chroma planes). Raises :class:`ConfigError` for odd sizes, an
    ``fps`` that is not a finite number > 0, or when PyAV is not installed. Returns the path written.
    """
    frames = _check_frames("write_mp4", frames)
    _, _, height, width = frames.shape
    if height % 2:
        raise ConfigError("write_mp4", "height", height, "an even frame height for yuv420p (pad, crop or upscale)")
    if width % 2:
        raise ConfigError("write_mp4", "width", width, "an even frame width for yuv420p (pad, crop or upscale)")
    check_fps("write_mp4", fps)
    try:
        import av
    except ImportError:
        raise ConfigError("write_mp4", "path", str(path),
                          "a .pt path, or install PyAV (pip install av) to write .mp4") from None

    path = Path(path)
    with atomic_path(path) as tmp:
        _encode_mp4(av, tmp, frames, fps)
    return path


def check_fps(owner: str, fps: Any) -> None:
    """A frame rate an mp4 can carry: a finite number > 0 (a ConfigError naming ``owner`` else)."""
    if isinstance(fps, bool) or not isinstance(fps, (int, float, Fraction)) or not 0 < fps < math.inf:
        raise ConfigError(owner, "fps", fps, "a finite number > 0")


def pad_even(frames: torch.Tensor) -> torch.Tensor:
    """``[T, 3, H, W]`` frames padded to an even height and width (yuv420p halves the chroma planes)
    by repeating the last row / column."""
    _, _, height, width = frames.shape
    if height % 2 or width % 2:
        frames = torch.nn.functional.pad(frames, (0, width % 2, 0, height % 2), mode="replicate")
    return frames


def open_mp4(av: Any, path: str | Path, fps: float, height: int, width: int) -> tuple[Any, Any]:
    """An mp4 container open for writing at ``path`` and its video stream of ``height`` x ``width``
    (even) frames: H.264 (crf 18) when available, else MPEG-4 part 2. The container is closed again
    if the stream cannot be set up."""
    codec = _pick_codec(av)
    container = av.open(str(path), mode="w")
    try:
        stream = container.add_stream(codec, rate=Fraction(fps).limit_denominator(1001),
                                      options={"crf": "18"} if codec == "libx264" else {})
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        if codec != "libx264":
            stream.bit_rate = 8_000_000
    except BaseException:
        container.close()
        raise
    return container, stream


def _encode_mp4(av: Any, path: Path, frames: torch.Tensor, fps: float) -> None:
    _, _, height, width = frames.shape
    container, stream = open_mp4(av, path, fps, height, width)
    try:
        for array in to_uint8(frames):
            frame = av.VideoFrame.from_ndarray(array, format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))  # flush the frames the encoder still holds
    finally:
        container.close()


def write_video(path: str | Path, frames: torch.Tensor, fps: float, *,
                upscale_factor: int = 1) -> dict[str, Any]:
    """Write frames to ``path``, chosen by suffix, after optional nearest-neighbour upscaling.

    ``.mp4`` writes the video and a PNG frame strip beside it (same stem, ``.png``); ``.png``
    writes only the strip. Returns ``{"video": str | None, "strip": str, "strip_frames": [...]}``
    where ``strip_frames`` are the frame indices shown in the strip. The video and its strip are
    renamed into place together, after both are complete. An odd frame height or width is padded
    in the video by repeating the last row or column (yuv420p needs even sizes).
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in VIDEO_SUFFIXES:
        raise ConfigError("write_video", "path", str(path), "a path ending in " + " or ".join(VIDEO_SUFFIXES))
    from .limits import check_upscale

    frames = _check_frames("write_video", frames)
    t, _, height, width = frames.shape
    check_upscale("write_video", "upscale_factor", upscale_factor, (height, width), frames=t,
                  device=frames.device)  # before allocating: a factor of 100000 is refused, not tried
    frames = upscale(frames, upscale_factor)
    image, indices = frame_strip(frames)
    if suffix != ".mp4":
        write_png(path, image)
        return {"video": None, "strip": str(path), "strip_frames": indices}
    strip_path = path.with_suffix(".png")
    frames = pad_even(frames)
    with atomic_paths([path, strip_path]) as (tmp_video, tmp_strip):
        write_mp4(tmp_video, frames, fps)
        write_png(tmp_strip, image)
    return {"video": str(path), "strip": str(strip_path), "strip_frames": indices}
