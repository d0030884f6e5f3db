"""World quality, measured analytically from pixels and the prompt (no learned model).

Input: a clip ``[T, 3, H, W]`` in [0, 1] and the :class:`~accelframe_adapters.world.clips.Scene` its
prompt names. Every part is in [0, 1]; ``docs/world.md`` states the same definitions.

1. **Segmentation.** Each pixel takes the nearest of the world's 10 colours (Euclidean RGB distance)
   if it lies within ``MATCH = 0.2`` of it, else no colour. The *object* of a frame is the set of pixels
   of the named colour; the frame *shows* it when it covers ``MIN_AREA``..``MAX_AREA`` pixels (the
   world's shapes cover 101..531) and it is a compact blob: some shape template (step 3) overlaps
   it with IoU >= ``MIN_IOU = 0.4``.
2. **presence** = fraction of frames that show the object.
3. **shape**: on each showing frame, the three shape templates are drawn at the object's centroid
   with the size its area implies, and their IoU with the object is computed; **shape** = mean IoU of
   the named shape's template; the frame's class is the template with the highest IoU.
4. **motion**: least-squares velocity ``v`` (pixels per frame) of the object's centroid over the showing
   frames (the centroid weighs each pixel by its position between the background and the named
   colour, so it moves by fractions of a pixel); **motion** = ``max(0, v . d) / |v|`` times
   ``min(1, (v . d) / MIN_SPEED)`` for the named unit direction ``d`` (right direction, and actually
   moving). The measured direction is the sign of the larger component of ``v`` (``"still"`` when ``|v| < STILL``).
5. **smoothness** = ``exp(-r / JITTER)`` (``JITTER = 2`` pixels) with ``r`` the RMS of the centroid's second
   differences over consecutive showing frames (pixels), times the **boundary** score
   ``min(1, (w + eps) / (b + eps))`` where ``b`` is the mean absolute pixel change across block boundaries
   and ``w`` within blocks.
6. **sharpness** = ``min(1, purity / 0.97) * min(1, EDGE / w)``: ``purity`` is the fraction of pixels
   within ``MATCH`` of a world colour (0.97 is what a rendered clip has: its edge pixels are blends);
   ``w`` is the edge width in pixels on the showing frames, the number of pixels whose coverage
   (step 4) lies in (0.1, 0.9) divided by the coverage's total variation (the outline's length).
   Rendered clips have ``w`` of 0.6 to 0.9, a 3 x 3 box blur about 2; ``EDGE = 1``.
7. **background** = ``min(1, f / 0.88)`` with ``f`` the fraction of pixels of the named background colour.

**quality** = mean of the six parts (presence, shape, motion, smoothness, sharpness, background).
**picture** = mean of ``min(1, purity / 0.97)``, the **boundary** score (step 5) and **background**:
the parts that do not depend on where the shape is or whether it is in view (blur and smudges
lower the purity and the background, flicker at block seams the boundary), so a long stream whose
shape has left the frame is still judged on them (the drift of ``accelframe bench stream``).
**adherence**: colour right (presence >= 0.5), shape right (the majority class of the showing frames is
the named shape) and direction right (the measured direction is the named one); a clip *adheres* when
all three are right.
"""

from __future__ import annotations

import math
from typing import Sequence

import attrs
import torch

from accelframe.errors import ConfigError
from accelframe_adapters.world import clips

MATCH = 0.2
MIN_AREA, MAX_AREA = 20, 600
MIN_SPEED = 0.07  # below the slowest speed of the world (0.08 px per frame)
MIN_IOU = 0.4
STILL = 0.03
JITTER = 2.0
EDGE = 1.0
PARTS = ("presence", "shape", "motion", "smoothness", "sharpness", "background")

_PALETTE = torch.tensor(list(clips.COLOURS.values()))  # [K, 3]
_NAMES = tuple(clips.COLOURS)


@attrs.frozen(kw_only=True)
class ClipQuality:
    quality: float
    presence: float
    shape: float
    motion: float
    smoothness: float
    sharpness: float
    background: float
    boundary: float
    purity: float
    picture: float
    colour_ok: bool
    shape_ok: bool
    direction_ok: bool
    measured_shape: str | None
    measured_direction: str | None
    velocity: tuple[float, float]

    @property
    def adheres(self) -> bool:
        return self.colour_ok and self.shape_ok and self.direction_ok

    def to_dict(self) -> dict:
        return {**attrs.asdict(self), "adheres": self.adheres}


def segment(video: torch.Tensor) -> torch.Tensor:
    """Colour index per pixel ``[T, H, W]`` (int64): the nearest world colour, or -1 beyond ``MATCH``."""
    px = video.permute(0, 2, 3, 1).float().reshape(-1, 3)  # [N, 3]
    d2 = px.pow(2).sum(1, keepdim=True) - 2 * px @ _PALETTE.T + _PALETTE.pow(2).sum(1)  # [N, K] squared
    best, idx = d2.min(dim=-1)
    idx = torch.where(best <= MATCH**2, idx, torch.full_like(idx, -1))
    return idx.view(video.shape[0], video.shape[2], video.shape[3])


def nearest_colour(rgb: torch.Tensor) -> str:
    """The name of the world colour nearest to ``rgb: [3]`` in [0, 1] (no ``MATCH`` cut-off)."""
    return _NAMES[int((_PALETTE - rgb).norm(dim=1).argmin())]


def soft_mask(video: torch.Tensor, colour: str, background: str) -> torch.Tensor:
    """Soft coverage ``[T, H, W]`` in [0, 1] of ``colour`` over ``background``: the position of each
    pixel along the line between the two colours, 0 for pixels farther than ``MATCH`` from that line."""
    fg, bg = torch.tensor(clips.COLOURS[colour]), torch.tensor(clips.COLOURS[background])
    px = video.permute(0, 2, 3, 1).float()  # [T, H, W, 3]
    axis = fg - bg
    a = ((px - bg) @ axis) / axis.pow(2).sum()  # [T, H, W]
    off = (px - bg - a.clamp(0, 1).unsqueeze(-1) * axis).norm(dim=-1)
    return torch.where(off <= MATCH, a.clamp(0, 1), torch.zeros_like(a))


def _templates(centroid: torch.Tensor, area: torch.Tensor, h: int, w: int) -> dict[str, torch.Tensor]:
    """Coverage masks ``[N, H, W]`` of each shape with the given centroids ``[N, 2]`` (x, y) and areas."""
    ys = torch.arange(h, dtype=torch.float32).view(1, -1, 1) + 0.5
    xs = torch.arange(w, dtype=torch.float32).view(1, 1, -1) + 0.5
    out = {}
    for shape, area_per_r2, centroid_dy in (("circle", math.pi, 0.0), ("square", 1.7**2, 0.0),
                                            ("triangle", 1.8, 0.2)):
        r = (area / area_per_r2).sqrt().view(-1, 1, 1)  # [N, 1, 1]
        cx = centroid[:, 0].view(-1, 1, 1)
        cy = centroid[:, 1].view(-1, 1, 1) - centroid_dy * r  # the drawing centre of the shape
        out[shape] = clips.coverage(shape, xs - cx, ys - cy, r)
    return out


def _direction(v: tuple[float, float]) -> str | None:
    vx, vy = v
    if math.hypot(vx, vy) < STILL:
        return "still"
    if abs(vx) >= abs(vy):
        return "right" if vx > 0 else "left"
    return "down" if vy > 0 else "up"


def boundary_pairs(pixel_frames: int, block: int = 3, temporal_ratio: int = 4) -> list[int]:
    """Pixel frames ``t`` whose step ``t -> t + 1`` crosses a block boundary of ``block`` latent frames
    (latent frame ``f > 0`` decodes to pixel frames ``1 + 4 (f - 1) .. 4 f``)."""
    latent = (pixel_frames - 1) // temporal_ratio + 1
    return [temporal_ratio * (f - 1) for f in range(block, latent, block)]


def frame_changes(video: torch.Tensor) -> torch.Tensor:
    """Mean absolute pixel change from each frame of a clip ``[T, 3, H, W]`` to the next: ``[T - 1]``."""
    return (video[1:] - video[:-1]).abs().mean(dim=(1, 2, 3))


@torch.no_grad()
def measure(video: torch.Tensor, scene: clips.Scene, *, block: int = 3) -> ClipQuality:
    """The quality of one clip ``[T, 3, H, W]`` in [0, 1] against the scene its prompt names."""
    if video.dim() != 4 or video.shape[1] != 3:
        raise ConfigError("measure", "video", tuple(video.shape), "a clip [T, 3, H, W]")
    video = video.float().cpu()
    t, _, h, w = video.shape
    seg = segment(video)  # [T, H, W]
    obj = seg == _NAMES.index(scene.colour)  # [T, H, W]
    area = obj.sum(dim=(1, 2)).float()  # [T]
    in_range = (area >= MIN_AREA) & (area <= MAX_AREA)

    ys = torch.arange(h, dtype=torch.float32).view(1, -1, 1) + 0.5
    xs = torch.arange(w, dtype=torch.float32).view(1, 1, -1) + 0.5
    soft = soft_mask(video, scene.colour, scene.background)  # [T, H, W]; sub-pixel centroids
    mass = soft.sum(dim=(1, 2)).clamp_min(1e-6)
    centroid = torch.stack([(soft * xs).sum(dim=(1, 2)) / mass,
                            (soft * ys).sum(dim=(1, 2)) / mass], dim=1)  # [T, 2]

    shows = torch.zeros_like(in_range)
    cand = in_range.nonzero().flatten()
    ious: dict[str, torch.Tensor] = {}
    if cand.numel():
        temps = _templates(centroid[cand], area[cand], h, w)
        m = obj[cand].float()
        ious = {s: ((tm * m).sum(dim=(1, 2)) / ((tm + m - tm * m).sum(dim=(1, 2))).clamp_min(1.0))
                for s, tm in temps.items()}  # each [N]
        blob = torch.stack(list(ious.values())).amax(dim=0) >= MIN_IOU  # a compact blob, not scattered pixels
        shows[cand[blob]] = True
        ious = {s: val[blob] for s, val in ious.items()}
    presence = float(shows.float().mean())
    idx = shows.nonzero().flatten()
    shape_score, measured_shape = 0.0, None
    if idx.numel():
        shape_score = float(ious[scene.shape].mean())
        votes = torch.stack([ious[s] for s in clips.SHAPES]).argmax(dim=0)  # [N]
        measured_shape = clips.SHAPES[int(torch.bincount(votes, minlength=len(clips.SHAPES)).argmax())]

    motion, velocity, measured_direction, smooth = 0.0, (0.0, 0.0), None, 0.0
    if idx.numel() >= 2:
        tt = idx.float()
        tc = tt - tt.mean()
        c = centroid[idx]
        vel = (tc.unsqueeze(1) * (c - c.mean(0))).sum(0) / tc.pow(2).sum()  # [2] pixels per frame
        velocity = (float(vel[0]), float(vel[1]))
        d = torch.tensor(clips.DIRECTIONS[scene.direction], dtype=torch.float32)
        along, speed = float(vel @ d), float(vel.norm())
        motion = (max(0.0, along) / max(speed, 1e-6)) * min(1.0, max(along, 0.0) / MIN_SPEED)
        measured_direction = _direction(velocity)
        consecutive = (idx[1:] - idx[:-1] == 1)
        if idx.numel() >= 3:
            second = c[2:] - 2 * c[1:-1] + c[:-2]  # [N - 2, 2]
            ok = consecutive[1:] & consecutive[:-1]
            rms = float(second[ok].pow(2).sum(1).mean().sqrt()) if ok.any() else float("inf")
            smooth = math.exp(-rms / JITTER)

    change = frame_changes(video)  # [T - 1]
    cross = boundary_pairs(t, block)
    inside = sorted(set(range(t - 1)) - set(cross))
    boundary = 1.0
    if cross and inside:
        b, wv = float(change[cross].mean()), float(change[inside].mean())
        boundary = min(1.0, (wv + 1e-3) / (b + 1e-3))
    smoothness = smooth * boundary

    purity = float((seg >= 0).float().mean())
    pure = min(1.0, purity / 0.97)  # a rendered clip's purity scores 1
    sharpness = pure
    if idx.numel():  # edge width: pixels part-way between background and colour per unit of outline
        a = soft[idx]  # [N, H, W]
        outline = (a[:, 1:] - a[:, :-1]).abs().sum() + (a[:, :, 1:] - a[:, :, :-1]).abs().sum()
        between = ((a > 0.1) & (a < 0.9)).sum()
        sharpness *= min(1.0, EDGE / max(float(between) / max(float(outline), 1e-6), 1e-6))
    background = min(1.0, float((seg == _NAMES.index(scene.background)).float().mean()) / 0.88)

    parts = {"presence": presence, "shape": shape_score, "motion": motion, "smoothness": smoothness,
             "sharpness": sharpness, "background": background}
    picture = (pure + boundary + background) / 3
    return ClipQuality(quality=sum(parts.values()) / len(parts), **parts, boundary=boundary,
                       purity=purity, picture=picture,
                       colour_ok=presence >= 0.5, shape_ok=measured_shape == scene.shape,
                       direction_ok=measured_direction == scene.direction, measured_shape=measured_shape,
                       measured_direction=measured_direction, velocity=velocity)


def measure_prompts(frames: torch.Tensor, prompts: Sequence[str], *, block: int = 3) -> list[dict]:
    """What the adapters' ``measure_quality`` reports: per decoded clip of ``frames: [B, T, 3, H, W]``
    its prompt and quality parts, or ``quality`` None when the prompt names no complete scene."""
    out = []
    for video, prompt in zip(frames, prompts):
        scene = clips.parse_prompt(prompt)
        if scene is None:
            out.append({"prompt": prompt, "quality": None,
                        "reason": "the prompt names no shape, colour, direction and background of the world"})
        else:
            out.append({"prompt": prompt, **measure(video, scene, block=block).to_dict()})
    return out


def describe(q: dict) -> str | None:
    """One line for a person about a :func:`measure_prompts` record (what ``accelframe generate``
    prints); None when its prompt names no complete scene."""
    if q.get("quality") is None:
        return None
    return (f"world quality {q['quality']:.3f} (presence {q['presence']:.2f}, shape {q['shape']:.2f}, "
            f"motion {q['motion']:.2f}, smoothness {q['smoothness']:.2f}, sharpness "
            f"{q['sharpness']:.2f}, background {q['background']:.2f}); measured "
            f"{q['measured_shape']} moving {q['measured_direction']}: {q['prompt']!r}")


def summarise(results: Sequence[ClipQuality]) -> dict[str, float]:
    """Means of every part over clips, and the adherence rates."""
    n = max(len(results), 1)
    out = {k: sum(getattr(r, k) for r in results) / n for k in ("quality", *PARTS, "boundary")}
    for k in ("colour_ok", "shape_ok", "direction_ok"):
        out[k] = sum(getattr(r, k) for r in results) / n
    out["adherence"] = sum(r.adheres for r in results) / n
    out["clips"] = len(results)
    return out


def check_scorer_input(owner: str, frames: torch.Tensor, prompts: Sequence[str]) -> None:
    """A world scorer's input: ``frames [B, T, 3, H, W]`` and one prompt per row, else a
    ConfigError of ``owner`` naming the field."""
    if frames.dim() != 5 or frames.shape[2] != 3:
        raise ConfigError(owner, "frames", tuple(frames.shape), "a tensor [B, T, 3, H, W] in [0, 1]")
    if len(prompts) != len(frames):
        raise ConfigError(owner, "prompts", len(prompts), f"one prompt per batch row ({len(frames)})")


class MeasureScorer:
    """The measure as an accelframe scorer, a reference for reward routers: ``(frames [B, T, 3, H, W]
    in [0, 1], prompts) -> [B, T]``, each row's frames all scored with :func:`measure` of that row
    as one clip. Unlike a frame reward (ImageReward) it sees the motion within the frames it is
    given; like one it sees nothing before them (the clip's seams and its earlier blocks)."""

    @torch.no_grad()
    def __call__(self, frames: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        check_scorer_input("world-quality", frames, prompts)
        scenes = [clips.parse_prompt(p) for p in prompts]
        for p, scene in zip(prompts, scenes):
            if scene is None:
                raise ConfigError("world-quality", "prompts", p,
                                  "a prompt naming a shape, colour, direction and background of the world")
        t = frames.shape[1]
        scores = [measure(video, scene).quality for video, scene in zip(frames.clamp(0, 1), scenes)]
        return torch.tensor(scores, dtype=torch.float32).view(-1, 1).expand(-1, t).clone()


__all__ = ["ClipQuality", "MATCH", "MeasureScorer", "PARTS", "boundary_pairs", "check_scorer_input", "describe",
           "frame_changes", "measure", "measure_prompts", "nearest_colour", "segment", "summarise"]
