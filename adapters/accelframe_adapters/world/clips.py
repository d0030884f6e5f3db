"""The embedded tiny world: short clips of one coloured shape moving over a plain background.

A clip is fixed by a :class:`Scene` (what the prompt says: shape, colour, direction, background,
and optionally size and speed) and a seed (everything the prompt leaves open: the exact size and
speed within their class, a small offset of the path). Rendering is deterministic: the same scene
and seed give the same bits on every machine (float32 arithmetic on a fixed grid, no library RNG).

Geometry, in pixels of a ``W x H`` frame (default 64 x 64, 105 frames = 27 latent frames = 9
blocks of 3):

- radius ``r``: small 7.5 .. 8.5, large 12 .. 13 (a prompt without a size draws either class);
- speed in pixels per frame: slowly 0.08 .. 0.09, quickly 0.13 .. 0.14 (likewise);
- the path *starts* at the frame's centre, moved by up to ``JITTER`` = 3 px along each axis (kept
  where the whole shape stays inside the frame for all ``frames``), and moves the named way. The
  first frames then show the shape at one place whatever the prompt says. At full noise a DiT's
  input says nothing about where the shape is, so (with the world DiTs' spatial embedding) its
  estimate of the first block can put the shape only where the data always has it (measured: with
  paths that started anywhere, or passed the centre at mid-clip, the tiny DiTs averaged the shape
  away at full noise, 0 of 16 held-out scenes);
- shapes: a disc of radius ``r``; a square of half-side ``0.85 r``; a triangle pointing up, apex at
  ``-r``, base at ``+0.8 r`` with half-width ``r``;
- each pixel is ``(1 - a) * background + a * colour`` with the anti-aliased coverage
  ``a = clamp(0.5 - d, 0, 1)`` of the signed distance ``d`` from the pixel centre to the outline, so
  slow sub-pixel motion moves the shape's centroid continuously.

Prompts follow one grammar, ``"a [small|large] COLOUR SHAPE moves [slowly|quickly] DIRECTION on a
BACKGROUND background"``: 3 shapes x 10 colours x 4 directions x 9 backgrounds x 3 sizes x 3 speeds
= 9720 distinct prompts. One combination in eight of (shape, colour, direction, background) is held
out of training (every phrasing of it): :func:`held_out` names them and the evaluation uses only those.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import random
from typing import Iterator

import attrs
import torch

from accelframe.errors import ConfigError

SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
# name -> RGB in [0, 1]; chosen far apart so that nearest-colour segmentation is unambiguous
COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.86, 0.12, 0.12), "green": (0.12, 0.70, 0.20), "blue": (0.14, 0.26, 0.88),
    "yellow": (0.95, 0.88, 0.15), "white": (0.96, 0.96, 0.96), "black": (0.05, 0.05, 0.05),
    "orange": (0.98, 0.55, 0.08), "purple": (0.55, 0.18, 0.75), "cyan": (0.15, 0.82, 0.86),
    "gray": (0.50, 0.50, 0.50),
}
DIRECTIONS: dict[str, tuple[int, int]] = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
SIZES: dict[str, tuple[float, float]] = {"small": (7.5, 8.5), "large": (12.0, 13.0)}
SPEEDS: dict[str, tuple[float, float]] = {"slowly": (0.08, 0.09), "quickly": (0.13, 0.14)}
JITTER = 3.0  # pixels the path's start may move from the frame's centre, along each axis

HEIGHT = WIDTH = 64
PIXEL_FRAMES = 105  # 27 latent frames of the causal VAE = 9 blocks of 3
FPS = 16
HELD_OUT_EVERY = 8  # one (shape, colour, direction, background) combination in 8 is held out


def _choice(field: str, value: str | None, allowed, optional: bool = False) -> None:
    if value is None and optional:
        return
    if value not in allowed:
        raise ConfigError("Scene", field, value, "one of " + ", ".join(allowed) + (" or None" if optional else ""))


@attrs.frozen(kw_only=True)
class Scene:
    """What a prompt says. ``size`` / ``speed`` None: the prompt leaves them open."""

    shape: str = attrs.field(validator=lambda i, a, v: _choice(a.name, v, SHAPES))
    colour: str = attrs.field(validator=lambda i, a, v: _choice(a.name, v, tuple(COLOURS)))
    direction: str = attrs.field(validator=lambda i, a, v: _choice(a.name, v, tuple(DIRECTIONS)))
    background: str = attrs.field(validator=lambda i, a, v: _choice(a.name, v, tuple(COLOURS)))
    size: str | None = attrs.field(default=None, validator=lambda i, a, v: _choice(a.name, v, tuple(SIZES), True))
    speed: str | None = attrs.field(default=None,
                                    validator=lambda i, a, v: _choice(a.name, v, tuple(SPEEDS), True))

    def __attrs_post_init__(self) -> None:
        if self.colour == self.background:
            raise ConfigError("Scene", "background", self.background,
                              f"a colour other than the shape's ({self.colour})")

    @property
    def prompt(self) -> str:
        parts = ["a", self.size, self.colour, self.shape, "moves", self.speed, self.direction, "on a",
                 self.background, "background"]
        return " ".join(p for p in parts if p)

    @property
    def combination(self) -> tuple[str, str, str, str]:
        return (self.shape, self.colour, self.direction, self.background)


def parse_prompt(prompt: str) -> Scene | None:
    """The scene a prompt of the world's grammar describes, or None when it names no complete scene
    (the words are read in any order: the first shape, colour, direction; the colour after "on" is
    the background)."""
    words = prompt.lower().replace(",", " ").split()
    found: dict[str, str] = {}
    after_on = False
    for w in words:
        if w in ("on", "over"):
            after_on = True
        elif w in COLOURS:
            found.setdefault("background" if after_on else "colour", w)
        elif w in SHAPES:
            found.setdefault("shape", w)
        elif w in DIRECTIONS:
            found.setdefault("direction", w)
        elif w in SIZES or w == "big":
            found.setdefault("size", "large" if w == "big" else w)
        elif w in SPEEDS:
            found.setdefault("speed", w)
    if not {"shape", "colour", "direction", "background"} <= set(found) or found["colour"] == found["background"]:
        return None
    return Scene(**found)


def all_combinations() -> list[tuple[str, str, str, str]]:
    return [(s, c, d, b) for s, c, d, b in itertools.product(SHAPES, COLOURS, DIRECTIONS, COLOURS) if c != b]


def held_out(combination: tuple[str, str, str, str]) -> bool:
    """Whether a combination is kept out of training (a fixed hash, the same on every machine)."""
    digest = hashlib.sha256("/".join(combination).encode()).digest()
    return digest[0] % HELD_OUT_EVERY == 0


def all_scenes() -> Iterator[Scene]:
    for (s, c, d, b), size, speed in itertools.product(all_combinations(), (None, *SIZES), (None, *SPEEDS)):
        yield Scene(shape=s, colour=c, direction=d, background=b, size=size, speed=speed)


def sample_scenes(n: int, seed: int, *, split: str = "train") -> list[Scene]:
    """``n`` scenes drawn with replacement from the ``"train"`` or ``"eval"`` (held-out) split."""
    if split not in ("train", "eval"):
        raise ConfigError("sample_scenes", "split", split, "'train' or 'eval'")
    combos = [c for c in all_combinations() if held_out(c) == (split == "eval")]
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        s, c, d, b = rng.choice(combos)
        out.append(Scene(shape=s, colour=c, direction=d, background=b, size=rng.choice((None, *SIZES)),
                         speed=rng.choice((None, *SPEEDS))))
    return out


@attrs.frozen
class Motion:
    """The drawn unknowns of a clip: radius, speed, start centre (pixels) and the step per frame."""

    radius: float
    speed: float
    start: tuple[float, float]
    step: tuple[float, float]

    def centre(self, frame: int) -> tuple[float, float]:
        return (self.start[0] + frame * self.step[0], self.start[1] + frame * self.step[1])


def draw_motion(scene: Scene, seed: int, *, frames: int = PIXEL_FRAMES, height: int = HEIGHT,
                width: int = WIDTH) -> Motion:
    """Everything the prompt leaves open, drawn from ``seed`` (Python's Mersenne Twister: portable)."""
    rng = random.Random(f"{seed}/{scene.prompt}")
    size = scene.size or rng.choice(tuple(SIZES))
    speed = scene.speed or rng.choice(tuple(SPEEDS))
    r = rng.uniform(*SIZES[size])
    v = rng.uniform(*SPEEDS[speed])
    dx, dy = DIRECTIONS[scene.direction]
    travel = v * (frames - 1)
    margin = r + 1.0

    def start(extent: int, d: int) -> float:
        lo, hi = margin, extent - margin
        if d > 0:
            hi -= travel
        elif d < 0:
            lo += travel
        if hi < lo:  # too long a clip for this speed: the shape leaves the frame
            return extent / 2.0
        return min(max(extent / 2.0 + rng.uniform(-JITTER, JITTER), lo), hi)

    return Motion(radius=r, speed=v, start=(start(width, dx), start(height, dy)), step=(dx * v, dy * v))


def signed_distance(shape: str, dx: torch.Tensor, dy: torch.Tensor, r: torch.Tensor | float) -> torch.Tensor:
    """Signed distance (pixels, negative inside) from points at offsets ``(dx, dy)`` of the shape's
    centre to its outline: exact for the disc; for the square and the triangle the largest distance
    to an edge's line (exact inside and along the edges, which is where anti-aliasing looks)."""
    if shape == "circle":
        return (dx * dx + dy * dy).sqrt() - r
    if shape == "square":
        return torch.maximum(dx.abs(), dy.abs()) - 0.85 * r
    # triangle pointing up: apex (0, -r), base corners (+-r, 0.8 r); the slanted edges have normals
    # (+-1.8, -1) / |(1.8, 1)| and pass through the apex
    n = math.hypot(1.8, 1.0)
    slant = (1.8 * dx.abs() - (dy + r)) / n
    return torch.maximum(slant, dy - 0.8 * r)


def coverage(shape: str, dx: torch.Tensor, dy: torch.Tensor, r: torch.Tensor | float) -> torch.Tensor:
    """Anti-aliased coverage in [0, 1] of pixels whose centres sit at ``(dx, dy)`` from the centre."""
    return (0.5 - signed_distance(shape, dx, dy, r)).clamp(0.0, 1.0)


def shape_coverage(scene: Scene, seed: int, *, frames: int = PIXEL_FRAMES, height: int = HEIGHT,
                   width: int = WIDTH, span: tuple[int, int] | None = None) -> torch.Tensor:
    """The shape's anti-aliased coverage in the clip of ``scene`` drawn with ``seed``:
    ``[frames, height, width]`` in [0, 1] (``span = (a, b)``: only frames ``a .. b - 1``)."""
    m = draw_motion(scene, seed, frames=frames, height=height, width=width)
    first, end = span if span is not None else (0, frames)
    if not 0 <= first < end <= frames:
        raise ConfigError("render", "span", span, f"0 <= a < b <= frames = {frames}")
    ys = torch.arange(height, dtype=torch.float32) + 0.5  # [H] pixel centres
    xs = torch.arange(width, dtype=torch.float32) + 0.5  # [W]
    t = torch.arange(first, end, dtype=torch.float32)
    n = end - first
    cx = (m.start[0] + t * m.step[0]).view(n, 1, 1)  # [T, 1, 1]
    cy = (m.start[1] + t * m.step[1]).view(n, 1, 1)
    return coverage(scene.shape, xs.view(1, 1, -1) - cx, ys.view(1, -1, 1) - cy, m.radius)  # [T, H, W]


def render(scene: Scene, seed: int, *, frames: int = PIXEL_FRAMES, height: int = HEIGHT,
           width: int = WIDTH, span: tuple[int, int] | None = None) -> torch.Tensor:
    """The clip of ``scene`` drawn with ``seed``: ``[frames, 3, height, width]`` float32 in [0, 1];
    ``span = (a, b)`` renders only its frames ``a .. b - 1`` (``[b - a, 3, height, width]``)."""
    alpha = shape_coverage(scene, seed, frames=frames, height=height, width=width, span=span)  # [T, H, W]
    fg = torch.tensor(COLOURS[scene.colour]).view(1, 3, 1, 1)
    bg = torch.tensor(COLOURS[scene.background]).view(1, 3, 1, 1)
    a = alpha.unsqueeze(1)  # [T, 1, H, W]
    return (1.0 - a) * bg + a * fg  # [T, 3, H, W]


__all__ = ["COLOURS", "DIRECTIONS", "FPS", "HEIGHT", "JITTER", "Motion", "PIXEL_FRAMES", "SHAPES", "SIZES",
           "SPEEDS", "Scene", "WIDTH", "all_combinations", "all_scenes", "coverage", "draw_motion", "held_out",
           "parse_prompt", "render", "sample_scenes", "shape_coverage", "signed_distance"]
