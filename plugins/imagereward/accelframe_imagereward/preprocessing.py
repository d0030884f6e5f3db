"""ImageReward's image preprocessing, on batched tensors.

The package preprocesses one PIL image at a time: resize the shorter side to 224 pixels (bicubic),
crop the centre 224 x 224, convert to [0, 1] and normalise with CLIP's channel mean and standard
deviation. :func:`preprocess` does the same to a batch of frames ``[N, 3, H, W]`` in [0, 1] with
torch ops. The output sizes and crop offsets follow torchvision's rules for ``Resize(224)`` and
``CenterCrop(224)``. The resize is torch's antialiased bicubic, which uses PIL's cubic kernel
(a = -0.5) and, like PIL, widens it when shrinking; and it runs as PIL's does, in two passes, width
first, clipping to [0, 1] after each (a single 2-D pass differs from PIL by up to 10 grey levels next
to sharp edges, where the first pass overshoots). PIL also rounds both passes to 8 bits and this does
not, so the two agree to about one grey level (the optional test measures it).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IMAGE_SIZE = 224
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def resized_size(height: int, width: int, size: int = IMAGE_SIZE) -> tuple[int, int]:
    """``(height, width)`` after resizing the shorter side to ``size``, as torchvision computes it."""
    short, long = (height, width) if height <= width else (width, height)
    new_long = int(size * long / short)
    return (size, new_long) if height <= width else (new_long, size)


def preprocess(frames: torch.Tensor, size: int = IMAGE_SIZE) -> torch.Tensor:
    """Frames ``[N, 3, H, W]`` in [0, 1] -> ImageReward's input ``[N, 3, size, size]`` (normalised)."""
    if frames.dim() != 4 or frames.shape[1] != 3:
        raise ValueError(f"preprocess expects frames [N, 3, H, W], got {tuple(frames.shape)}")
    x = frames.float()
    h, w = x.shape[-2:]
    nh, nw = resized_size(h, w, size)
    for size_hw in ((h, nw), (nh, nw)):  # width, then height; a pass with nothing to do is skipped
        if tuple(x.shape[-2:]) != size_hw:
            x = F.interpolate(x, size=size_hw, mode="bicubic", align_corners=False, antialias=True)
            x = x.clamp(0.0, 1.0)  # PIL's 8-bit passes cannot overshoot either
    top, left = int(round((nh - size) / 2.0)), int(round((nw - size) / 2.0))
    x = x[:, :, top:top + size, left:left + size]
    mean = torch.tensor(CLIP_MEAN, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


__all__ = ["CLIP_MEAN", "CLIP_STD", "IMAGE_SIZE", "preprocess", "resized_size"]
