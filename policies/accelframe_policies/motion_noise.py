"""StreamDiffusionV2's motion-aware noise controller (section 4.1), registered as ``motion-noise``.

Before each video-to-video chunk of a stream it sets the noise level the chunk's input is noised
to. With consecutive frames ``v_t, v_{t-1}`` of ``C x H x W`` values:

    d_t   = sqrt(mean((v_t - v_{t-1})^2))                          (frame-difference motion)
    d̂_t   = clip(max_{i in t-k..t} d_i / scale, 0, 1)              (normalised, window of k)
    s_t   = ema * [s_max - (s_max - s_min) d̂_t] + (1 - ema) s_{t-1}

Fast motion (d̂ near 1) lowers the level towards ``s_min`` (more of the input is kept: conservative
denoising against tearing); a still scene raises it towards ``s_max`` (stronger refinement).

Defaults are the reference implementation's (the paper gives no numbers): frames compared in pixel
space scaled to [-1, 1]; ``scale`` 0.2; ``s_max`` 0.8 (its ``noise_scale``) and ``s_min`` 0.7 (it
subtracts 0.1 d̂); ``ema`` 0.9 on the new value; the window is the chunk's frames and the frame
before them. As in the reference, a stream's first chunk is noised at ``s_max`` (its initial
``noise_scale``) and the controller runs from the second chunk on, starting from ``s = s_max``; the
first chunk's differences still enter ``window``. ``space="latent"`` compares the chunk's clean
latents instead (the paper's equation is written on latent frames).

Not matched on purpose: the reference tells its model ``t = int(1000 s) − 100`` for a chunk noised
to ``s`` (700 at 0.8, the first entry of its step list 700, 500, 400, 200). Here the hook returns
a level; the chunk is noised to it and the adapter's schedule starts there, the model seeing the
adapter's timestep for that level (1000 s on the Wan block loops). See docs/streaming.md.
"""

from __future__ import annotations

from collections import deque
from typing import Any, ClassVar

import attrs
import torch

from accelframe import hookimpl
from accelframe.errors import ConfigError
from accelframe.types import NoiseContext
from accelframe.validators import number_in, one_of

LOG_LIMIT = 1024  # chunks kept in ``history``


def frame_motion(frames: torch.Tensor) -> list[float]:
    """``d_i`` between consecutive frames of ``frames: [F, C, H, W]``: F - 1 values."""
    if frames.shape[0] < 2:
        return []
    diff = (frames[1:].double() - frames[:-1].double()).pow(2)  # [F - 1, C, H, W]
    return diff.flatten(1).mean(dim=1).sqrt().tolist()


@attrs.define(eq=False, kw_only=True)
class MotionNoise:
    """The controller; one state per stream (see the module docstring)."""

    s_min: float = attrs.field(default=0.7, validator=number_in(0.0, 1.0, lo_open=True))
    s_max: float = attrs.field(default=0.8, validator=number_in(0.0, 1.0, lo_open=True))
    scale: float = attrs.field(default=0.2, validator=number_in(0.0, 1e6, lo_open=True))
    ema: float = attrs.field(default=0.9, validator=number_in(0.0, 1.0, lo_open=True))
    window: int | None = attrs.field(
        default=None, validator=attrs.validators.optional(number_in(1, 100_000, integer=True)))
    space: str = attrs.field(default="pixel", validator=one_of("pixel", "latent"))
    name: ClassVar[str] = "motion-noise"  # the stack name; not a keyword argument
    _streams: dict[str, dict[str, Any]] = attrs.field(factory=dict, init=False)

    def __attrs_post_init__(self) -> None:
        if self.s_min > self.s_max:
            raise ConfigError("motion-noise", "s_min", self.s_min, f"a level <= s_max = {self.s_max}")

    def reset(self) -> None:
        self._streams.clear()

    def history(self, stream: str) -> list[dict[str, float]]:
        """Per chunk of ``stream`` (the latest ``LOG_LIMIT``): the raw motion (max d), d̂, the target
        level and the level s."""
        return list(self._streams.get(stream, {}).get("log", []))

    def _frames(self, ctx: NoiseContext) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.space == "latent":
            if ctx.latents is None:
                raise ConfigError("motion-noise", "space", "latent",
                                  "'pixel' here: the runtime gave this chunk no latents")
            return ctx.latents, None
        frames = ctx.frames * 2.0 - 1.0  # [F, 3, H, W] in [-1, 1], as the reference compares
        prev = None if ctx.previous is None else ctx.previous * 2.0 - 1.0
        return frames, prev

    @hookimpl
    def accelframe_noise_level(self, ctx: NoiseContext) -> float:
        first = ctx.stream not in self._streams
        st = self._streams.setdefault(ctx.stream, {"s": self.s_max, "last": None, "d": deque(),
                                                      "log": deque(maxlen=LOG_LIMIT)})
        frames, prev = self._frames(ctx)
        if prev is None:
            prev = st["last"]  # latent space: the previous chunk's last latent frame
        seq = frames if prev is None else torch.cat([prev[None].to(frames.dtype), frames])  # [k + 1, ...]
        d_new = frame_motion(seq)
        st["last"] = frames[-1]
        if self.window is None:
            window = d_new
        else:
            st["d"].extend(d_new)
            while len(st["d"]) > self.window:
                st["d"].popleft()
            window = list(st["d"])
        raw = max(window) if window else 0.0
        d_hat = min(max(raw / self.scale, 0.0), 1.0)
        target = self.s_max - (self.s_max - self.s_min) * d_hat
        if not first:  # a stream's first chunk is noised at the initial level s_max, as the reference
            st["s"] = self.ema * target + (1.0 - self.ema) * st["s"]
        st["log"].append({"motion": raw, "d_hat": d_hat, "target": target, "s": st["s"]})
        return float(st["s"])


__all__ = ["MotionNoise", "frame_motion"]
