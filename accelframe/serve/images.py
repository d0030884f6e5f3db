"""Frames to and from the images a browser sends and shows (JPEG out; JPEG or PNG in), with Pillow."""

from __future__ import annotations

import io

import torch

from accelframe.media import to_uint8
from accelframe.serve.protocol import ProtocolError

JPEG_QUALITY = 90


def encode_jpeg(frame: torch.Tensor, quality: int = JPEG_QUALITY) -> bytes:
    """One frame ``[3, H, W]`` in [0, 1] as JPEG bytes."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(to_uint8(frame[None])[0]).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def decode_image(data: bytes, size: tuple[int, int]) -> torch.Tensor:
    """A client's input frame (JPEG or PNG bytes) as ``[3, H, W]`` in [0, 1] at ``size`` (area
    filter); a :class:`ProtocolError` for bytes that are not such an image."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as img:
            if img.format not in ("JPEG", "PNG"):
                raise ProtocolError("frame", f"a {img.format} image", "a JPEG or PNG image")
            rgb = torch.frombuffer(bytearray(img.convert("RGB").tobytes()), dtype=torch.uint8)
            w, h = img.size
    except (UnidentifiedImageError, OSError, ValueError):
        raise ProtocolError("frame", f"{len(data)} bytes that are no image", "a JPEG or PNG image") from None
    frame = rgb.view(h, w, 3).permute(2, 0, 1).float()[None] / 255.0  # [1, 3, h, w]
    if (h, w) != tuple(size):
        frame = torch.nn.functional.interpolate(frame, size=tuple(size), mode="area")
    return frame[0].clamp(0.0, 1.0)  # [3, H, W]


__all__ = ["decode_image", "encode_jpeg"]
