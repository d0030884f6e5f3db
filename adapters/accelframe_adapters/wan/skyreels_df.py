"""SkyReels-V2 diffusion forcing: the ``skyreels-v2-df`` adapter.

Every latent frame has its own noise level and its own UniPC solver. A *step matrix* says, per
model call (row), which step each causal block of frames is at; blocks start ``ar_step`` rows
after the one before them (``ar_step = 0``: all frames denoise in lockstep). Reference: SkyReels-V2's
``generate_timestep_matrix`` and its diffusion-forcing pipelines. The loop::

    for segment in segments(num_frames, base_num_frames, overlap_history):   # long videos
        prefix = the segment's first overlap frames (clean, from the previous segment)
        for row in step_matrix(segment frames, steps, ar_step, causal_block_size, prefix):
            x_in = window latents; prefix frames get (1 - a/1000) x + (a/1000) ε, t = a
                                                         # a = addnoise_condition (0: off)
            v = dit(x_in, t per frame, block-causal if causal_attention)     # CFG: 2 passes
            for each frame in the row's update mask: x = UniPC_frame.step(v, x)

Per-frame state of the step matrix becomes the iteration's ``sigma`` / ``sigma_next`` / ``update``
and ``valid``, which is what SCOPE's selective computation reads: only frames in the update mask
advance; frames not started yet sit at σ = 1 (t = 999) and finished frames at σ = 0 (t = 0).

Long videos overlap in latent space (as the diffusers pipeline does): segment k re-uses the last
``(overlap_history - 1) // 4 + 1`` clean latent frames of the video as its prefix. The original
pipeline instead decodes and re-encodes those frames through the VAE; with a causal VAE the two
are not numerically equal, and latent overlap needs no extra VAE pass.

Checkpoints: the diffusers layout (``config.json`` + ``diffusion_pytorch_model*.safetensors``,
sharded with an index) or the original layout (Wan key names, ``model*.safetensors``), a file or
a folder.
"""

from __future__ import annotations

import hashlib
from typing import Any, Iterator

import attrs
import torch

from accelframe import adapter as caps
from accelframe import validators as v
from accelframe.errors import CheckpointError, ConfigError
from accelframe.types import Iteration, KVWrite, Request, UnitSpan
from accelframe_adapters import checkpoints as ck
from accelframe_adapters.wan.unipc import UniPCState, unipc_step
from accelframe_adapters.wan.unipc import model_timesteps as unipc_model_timesteps, sigmas as unipc_sigmas
from accelframe_adapters.wan.common import WanAdapter, WanState, read_dit_file
from accelframe_adapters.wan.dit import CrossCache, from_diffusers_key

NOT_STARTED_T = 999.0  # the reference feeds frames that have not started at t = 999


def step_matrix(num_frames: int, num_steps: int, base_num_frames: int, ar_step: int,
                num_pre_ready: int = 0, causal_block_size: int = 1) -> tuple[list[list[int]], list[list[bool]],
                                                                            list[tuple[int, int]]]:
    """SkyReels-V2's diffusion-forcing schedule, per latent frame.

    Returns ``(index, update, valid)``, one entry per model call: ``index[r][j]`` is frame j's
    position in ``[not started, step 0, ..., step N-1, done]`` (0 .. N + 1); ``update[r][j]`` says
    whether frame j advances in that call; ``valid[r]`` is the window ``[s, e)`` the call forwards.
    """
    cbs, n = causal_block_size, num_steps
    blocks, base_blocks = num_frames // cbs, base_num_frames // cbs
    if base_blocks < blocks and ar_step < n / base_blocks:
        raise ConfigError("SkyReelsDFConfig", "ar_step", ar_step,
                          f">= {-(-n // base_blocks)} when {blocks} blocks share a window of {base_blocks}")
    row = [n + 1 if b < num_pre_ready // cbs else 0 for b in range(blocks)]
    index, update = [], []
    while not all(r >= n for r in row):
        new = []
        for b in range(blocks):
            nxt = row[b] + 1 if b == 0 or row[b - 1] >= n else new[b - 1] - ar_step
            new.append(min(max(nxt, 0), n + 1))
        update.append([a != p and a != n + 1 for a, p in zip(new, row)])
        index.append(new)
        row = new
    valid, end = [], base_blocks
    for mask in update:
        if end < blocks and mask[end]:
            end += 1
        valid.append((max(end - base_blocks, 0) * cbs, end * cbs))
    per_frame = lambda rows: [[x for x in r for _ in range(cbs)] for r in rows]  # noqa: E731
    return per_frame(index), per_frame(update), valid


def _multiple(of: str):
    def check(inst: Any, attribute: Any, value: int) -> None:
        base = getattr(inst, of)
        if value % base:
            raise ConfigError(type(inst).__name__, attribute.name, value, f"a multiple of {of} = {base}")
    return check


@attrs.frozen(kw_only=True)
class SkyReelsDFConfig:
    """Diffusion-forcing knobs, with the defaults of SkyReels-V2's ``generate_video_df.py``.
    ``base_num_frames`` and ``overlap_history`` count *pixel* frames, as the reference does."""

    num_inference_steps: int = attrs.field(default=30, validator=v.number_in(1, 1000, integer=True))
    shift: float = attrs.field(default=8.0, validator=v.number_in(0.01, 100.0))
    ar_step: int = attrs.field(default=0, validator=v.number_in(0, 1000, integer=True))
    causal_block_size: int = attrs.field(default=1, validator=v.number_in(1, 64, integer=True))
    base_num_frames: int = attrs.field(default=97, validator=v.number_in(1, 100_000, integer=True))
    overlap_history: int | None = attrs.field(
        default=None, validator=attrs.validators.optional(v.number_in(1, 100_000, integer=True)))
    addnoise_condition: float = attrs.field(default=0.0, validator=v.number_in(0.0, 999.0))
    guidance_scale: float = attrs.field(default=6.0, validator=v.number_in(0.0, 100.0))
    negative_prompt: str = ""
    fps: int = attrs.field(default=24, validator=v.number_in(1, 1000, integer=True))
    causal_attention: bool | None = None  # None: block-causal when causal_block_size > 1 (diffusers)

    def __attrs_post_init__(self) -> None:
        for name in ("base_num_frames", "overlap_history"):
            value = getattr(self, name)
            if value is not None and (value - 1) % 4:
                raise ConfigError("SkyReelsDFConfig", name, value,
                                  "1 + 4k pixel frames (a whole number of causal-VAE latent frames), e.g. 17, 97")
        cbs = self.causal_block_size
        if self.base_latents % cbs:
            raise ConfigError("SkyReelsDFConfig", "causal_block_size", cbs,
                              f"a divisor of the {self.base_latents} latent frames of base_num_frames = "
                              f"{self.base_num_frames}")
        if self.overlap_history is not None:
            if self.overlap_latents % cbs:
                raise ConfigError("SkyReelsDFConfig", "overlap_history", self.overlap_history,
                                  f"pixel frames making a multiple of causal_block_size = {cbs} latent frames "
                                  f"(e.g. {4 * cbs - 3}, {8 * cbs - 3})")
            if self.overlap_latents >= self.base_latents:
                raise ConfigError("SkyReelsDFConfig", "overlap_history", self.overlap_history,
                                  f"fewer pixel frames than base_num_frames = {self.base_num_frames}")

    @property
    def base_latents(self) -> int:
        return (self.base_num_frames - 1) // 4 + 1

    @property
    def overlap_latents(self) -> int:
        return 0 if self.overlap_history is None else (self.overlap_history - 1) // 4 + 1

    @property
    def block_causal(self) -> bool:
        return self.causal_block_size > 1 if self.causal_attention is None else self.causal_attention


@attrs.frozen
class Segment:
    """One pass of the long-video loop: the latent window ``[start, end)`` and its clean prefix."""

    start: int
    end: int
    prefix: int


class SkyReelsDFAdapter(WanAdapter):
    """The ``skyreels-v2-df`` adapter (see the module docstring)."""

    name = "skyreels-v2-df"
    config_class = SkyReelsDFConfig

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        c = self.config
        trained = None if self.preset is None else self.preset.latent_frames
        if trained is not None and c.base_latents > trained:
            raise ConfigError("SkyReelsDFConfig", "base_num_frames", c.base_num_frames,
                              f"at most {self.pixel_frames(trained)} pixel frames ({trained} latent frames) "
                              "with the embedded world's models: the clips they were trained on")
        self.levels = unipc_sigmas(c.num_inference_steps, c.shift)  # N + 1 levels, last 0
        # the model sees the reference's int timesteps
        self._t_of = {s: float(t) for s, t in zip(self.levels, unipc_model_timesteps(self.levels))}
        self._t_of[1.0], self._t_of[0.0] = NOT_STARTED_T, 0.0

    @property
    def unit_frames(self) -> int:
        return self.config.causal_block_size

    def world_frame_limit(self, trained: int) -> int:
        return 1 << 30  # each segment's window starts at RoPE position 0; base_num_frames bounds it

    def family_capabilities(self) -> frozenset[str]:
        return frozenset({caps.UPDATE_MASK})

    def dit_overrides(self) -> dict[str, Any]:
        return {"inject_sample_info": True} if self.model_config.checkpoint is None else {}

    # ---- checkpoints ----------------------------------------------------------------------------

    def read_checkpoint(self, path: str) -> dict[str, torch.Tensor]:
        fmt, tensors = read_dit_file(path, ("diffusers", "wan-original"),
                                     "a SkyReels-V2 transformer (diffusers or original layout)")
        cfg = ck.read_config(path) or {}
        cls = cfg.get("_class_name")
        if cls is not None and cls not in ("SkyReelsV2Transformer3DModel", "WanTransformer3DModel", "WanModel"):
            raise CheckpointError(path, f"config.json names {cls!r}, not a SkyReels-V2 / Wan transformer")
        if fmt == "diffusers":
            mapped = {}
            for k, t in tensors.items():
                new = from_diffusers_key(k)
                mapped[new if new is not None else f"<unmapped diffusers key> {k}"] = t
            return mapped
        return tensors

    # ---- requests and plans ---------------------------------------------------------------------

    def validate(self, request: Request) -> None:
        super().validate(request)
        c, cbs = self.config, self.config.causal_block_size
        if request.num_frames % cbs:
            ok = ", ".join(str(cbs * k) for k in range(1, 5))
            raise ConfigError("Request", "num_frames", request.num_frames,
                              f"a multiple of causal_block_size = {cbs} latent frames ({ok}, ...)")
        if request.first_frame != 0:
            raise ConfigError("Request", "first_frame", request.first_frame,
                              "0: diffusion forcing makes a whole video per request (long videos overlap "
                              "segments inside it; set overlap_history)")
        if request.start_sigma < 1.0:
            raise ConfigError("Request", "start_sigma", request.start_sigma,
                              "1.0: the skyreels-v2-df adapter starts from noise")
        if request.num_frames > c.base_latents and c.overlap_history is None:
            raise ConfigError("SkyReelsDFConfig", "overlap_history", None,
                              f"a pixel overlap (e.g. 17) for {request.num_frames} latent frames: more than "
                              f"base_num_frames = {c.base_num_frames} ({c.base_latents} latent) needs segments")

    def segments(self, num_frames: int) -> list[Segment]:
        c = self.config
        base, ov = c.base_latents, c.overlap_latents
        if num_frames <= base:
            return [Segment(0, num_frames, 0)]
        out, done = [Segment(0, base, 0)], base
        while done < num_frames:
            size = min(num_frames - done + ov, base)
            out.append(Segment(done - ov, done - ov + size, ov))
            done = done - ov + size
        return out

    def units(self, request: Request) -> list[UnitSpan]:
        b = self.unit_frames
        return [UnitSpan(unit=k // b, start=k, end=k + b) for k in range(0, request.num_frames, b)]

    def plan(self, request: Request) -> Iterator[Iteration]:
        c, n, b = self.config, self.config.num_inference_steps, self.unit_frames
        lv = self.levels
        started, idx = set(), 0
        for seg_no, seg in enumerate(self.segments(request.num_frames)):
            size = seg.end - seg.start
            index, update, valid = step_matrix(size, n, size, c.ar_step, seg.prefix, b)
            for r, (row, mask, (vs, ve)) in enumerate(zip(index, update, valid)):
                s, e = seg.start + vs, seg.start + ve
                sigma, sigma_next = [], []
                for j in range(vs, ve):
                    i = row[j]
                    if mask[j]:  # advancing from step i - 1 to step i
                        sigma.append(lv[i - 1])
                        sigma_next.append(lv[i])
                    else:
                        level = 1.0 if i == 0 else 0.0 if i >= n else lv[i]
                        sigma.append(level)
                        sigma_next.append(level)
                spans = [UnitSpan(unit=u, start=u * b, end=(u + 1) * b) for u in range(s // b, e // b)]
                starts = tuple(sp for sp in spans if sp.unit not in started)
                started.update(sp.unit for sp in starts)
                finishes = tuple(sp for sp in spans
                                 if mask[sp.start - seg.start] and row[sp.start - seg.start] == n)
                moving = tuple(sp.unit for sp in spans if mask[sp.start - seg.start])
                yield Iteration(index=idx, unit=seg_no, step=r, frames=(s, e), valid=(s, e),
                                sigma=tuple(sigma), sigma_next=tuple(sigma_next),
                                update=tuple(mask[vs:ve]), kv_write=KVWrite.NONE, units=moving,
                                starts=starts, finishes=finishes)
                idx += 1

    # ---- state and the network ------------------------------------------------------------------

    @torch.no_grad()
    def encode_prompt(self, prompts) -> tuple[CrossCache, CrossCache | None]:
        cond = super().encode_prompt(prompts)
        if self.config.guidance_scale <= 1.0:
            return cond, None
        return cond, super().encode_prompt([self.config.negative_prompt] * len(prompts))

    def init_state(self, request: Request, cond) -> WanState:
        state = super().init_state(request, cond[0])
        digest = hashlib.sha256(f"addnoise:{request.seed}".encode()).digest()
        state.family.update(uncond=cond[1], solver={}, segments=self.segments(request.num_frames),
                            gen=torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1))
        return state

    def _prefix(self, state: WanState, frames: tuple[int, int], valid: tuple[int, int]) -> range:
        """The clean prefix frames of this call's segment inside ``frames``."""
        for seg in state.family["segments"]:
            if seg.start == valid[0] and seg.prefix:
                return range(max(seg.start, frames[0]), min(seg.start + seg.prefix, frames[1]))
        return range(0)

    @torch.no_grad()
    def denoise(self, x: torch.Tensor, it: Iteration, frames: tuple[int, int], state: WanState,
                kv_write: KVWrite) -> torch.Tensor:
        c = self.config
        t = self.timesteps(it, frames)  # [F]
        xin = x
        a = c.addnoise_condition
        prefix = self._prefix(state, frames, it.valid or it.frames)
        if a > 0 and len(prefix):  # noise the conditioning frames a little, and say so in t
            p0, p1 = prefix[0] - frames[0], prefix[-1] + 1 - frames[0]
            noise = torch.randn(x[:, p0:p1].shape, generator=state.family["gen"]).to(x.device, x.dtype)
            xin = x.clone()
            xin[:, p0:p1] = x[:, p0:p1] * (1.0 - a / 1000.0) + noise * (a / 1000.0)
            t = t.clone()
            t[p0:p1] = a
        block = c.causal_block_size if c.block_causal else None
        t = t.expand(x.shape[0], -1)  # [B, F]
        xm = self.to_model(xin)
        # as in the reference, RoPE positions count from the call's window (no 1024-frame limit);
        # the mask's blocks count from frame 0, which segments keep aligned
        kw = {"frame_offset": frames[0], "rope_start": frames[0] - it.frames[0], "causal_block": block,
              "fps": self._fps()}
        out = self.dit(xm, t, state.cross, **kw)
        uncond = state.family["uncond"]
        if uncond is not None:
            out_u = self.dit(xm, t, uncond, **kw)
            out = out_u + c.guidance_scale * (out - out_u)
        return self.from_model(out)

    def _fps(self) -> int | None:
        return (0 if self.config.fps == 16 else 1) if self.dit.cfg.inject_sample_info else None

    def advance(self, x: torch.Tensor, velocity: torch.Tensor, it: Iteration, generator: torch.Generator,
                state: WanState) -> torch.Tensor:
        solvers = state.family["solver"]
        out = x.clone()
        for j, moving in enumerate(it.update):
            if not moving:
                continue
            frame = it.frames[0] + j
            st = solvers.get(frame, UniPCState())
            out[:, j], solvers[frame] = unipc_step(st, x[:, j], velocity[:, j], self.levels)
        return out

    def commit(self, x0: torch.Tensor, frames: tuple[int, int], state: WanState) -> None:
        """No KV cache: nothing to commit (plans never ask)."""


__all__ = ["Segment", "SkyReelsDFAdapter", "SkyReelsDFConfig", "step_matrix"]
