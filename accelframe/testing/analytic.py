"""A cheap analytic adapter: a closed-form velocity field with a real KV cache and three plan shapes.

It exists so that the engine, the policies and third-party plugins can be tested without a
network. Everything is deterministic and costs microseconds per call (``cost_ms`` adds a busy wait
that stands in for a model's cost in benchmarks).

The field. Each prompt fixes a base pattern ``P`` and a direction ``D`` (``[C, H, W]`` each, seeded
from the prompt text). Frame ``j`` (RoPE position ``j - rope_offset``) should become

    mu_j = P cos(0.3 j) + D sin(0.3 j)
    m_j(σ) = mu_j + γ c_j + β sin(3 σ_j) D

where ``c_j`` is the weighted mean of what frame ``j`` attends to: the committed frames in the KV
cache (weight 1) and the forwarded frames before it in the same call (weight ``1 - σ_k``, so noisy
frames count little). The velocity is ``v_j = (x_j - m_j) / σ_j``: the exact flow velocity towards
``m_j``, which bends with σ through the β term, so reuse and extrapolation have real, small
errors. Dropping frames from a call changes ``c_j``, like attention context does in a real model.

Plan shapes (``plan=``):

- ``"block"``: Self-Forcing's block loop. Units of ``unit_frames`` frames, ``steps`` steps each,
  then a commit pass that writes the clean frames into the KV cache.
- ``"staircase"``: SkyReels-V2 diffusion forcing. Unit ``u`` starts ``u * ar_step`` iterations
  after unit 0 (``ar_step = 0`` is synchronous); every iteration forwards the valid interval
  ``[max(ē - window, 0), ē)`` with ``ē`` the end of the newest started unit, with an update mask.
  No KV cache; nothing is committed.
- ``"window"``: MAGI-1's staged window. Chunks start ``steps / window_units`` iterations apart and
  are denoised together at staggered levels; a finished chunk is committed into the KV cache.

The decoder stand-in mixes channels to RGB and smooths causally with a decode cache (the previous
pixel frame), so streaming decode, snapshot and restore matter as they do for a causal VAE.
"""

from __future__ import annotations

import hashlib
import math
import time
from typing import Any, Iterator, Sequence

import attrs
import torch

from accelframe import adapter as caps
from accelframe import validators as v
from accelframe.errors import ConfigError
from accelframe.plans import block_plan, block_units, start_schedule
from accelframe.types import Iteration, KVWrite, Request, Role, UnitSpan

MAX_SIDE = 512  # the largest latent (and frame) side the config allows


@attrs.frozen(kw_only=True)
class AnalyticConfig:
    """Knobs of the analytic adapter; every field is validated."""

    plan: str = attrs.field(default="block", validator=v.one_of("block", "staircase", "window"))
    unit_frames: int = attrs.field(default=3, validator=v.number_in(1, 64, integer=True))
    steps: int = attrs.field(default=4, validator=v.number_in(1, 1000, integer=True))
    shift: float = attrs.field(default=3.0, validator=v.number_in(0.1, 100.0))
    solver: str = attrs.field(default="euler", validator=v.one_of("euler", "renoise"))
    ar_step: int = attrs.field(default=2, validator=v.number_in(0, 1000, integer=True))
    window_frames: int | None = attrs.field(
        default=None, validator=attrs.validators.optional(v.number_in(1, integer=True)))
    window_units: int = attrs.field(default=2, validator=v.number_in(1, 64, integer=True))
    kv_window: int | None = attrs.field(
        default=None, validator=attrs.validators.optional(v.number_in(1, integer=True)))
    sink_frames: int = attrs.field(default=0, validator=v.number_in(0, integer=True))
    channels: int = attrs.field(default=4, validator=v.number_in(1, 64, integer=True))
    height: int = attrs.field(default=8, validator=v.number_in(1, MAX_SIDE, integer=True))
    width: int = attrs.field(default=8, validator=v.number_in(1, MAX_SIDE, integer=True))
    coupling: float = attrs.field(default=0.3, validator=v.number_in(0.0, 0.9))
    curvature: float = attrs.field(default=0.2, validator=v.number_in(0.0, 1.0))
    smoothing: float = attrs.field(default=0.25, validator=v.number_in(0.0, 0.9))
    cost_ms: float = attrs.field(default=0.0, validator=v.number_in(0.0, 10_000.0))
    dtype: str = attrs.field(default="float32", validator=v.one_of("float32", "float64"))

    def __attrs_post_init__(self) -> None:
        if self.plan == "window" and self.steps % self.window_units:
            raise ConfigError("AnalyticConfig", "steps", self.steps,
                              f"a multiple of window_units = {self.window_units} (stages of "
                              "steps / window_units)")
        if self.kv_window is not None and self.sink_frames >= self.kv_window:
            raise ConfigError("AnalyticConfig", "sink_frames", self.sink_frames,
                              f"fewer than kv_window = {self.kv_window}")

    def sigmas(self) -> list[float]:
        """``steps + 1`` shifted noise levels from 1 down to 0."""
        out = []
        for k in range(self.steps + 1):
            t = 1.0 - k / self.steps
            out.append(self.shift * t / (1.0 + (self.shift - 1.0) * t))
        out[-1] = 0.0
        return out


@attrs.define(eq=False)
class AnalyticState:
    """Per-generation state: conditioning, KV cache of clean frames, decode cache, RoPE offset."""

    base: torch.Tensor  # [B, C, H, W]
    direction: torch.Tensor  # [B, C, H, W]
    kv: dict[int, torch.Tensor] = attrs.field(factory=dict)  # frame -> [B, C, H, W]
    sinks: tuple[int, ...] = ()
    rope_offset: int = 0
    decode_prev: torch.Tensor | None = None  # [B, 3, H, W]
    calls: int = 0
    kv_version: int = 0  # bumped on every change of ``kv``
    _kv_sum: tuple[int, torch.Tensor] | None = None  # (version summed, sum [B, 1, C, H, W])

    def kv_sum(self) -> torch.Tensor:
        """Sum of the cached frames ``[B, 1, C, H, W]``, recomputed only when the KV changed."""
        key = self.kv_version
        if self._kv_sum is None or self._kv_sum[0] != key:
            total = torch.stack(list(self.kv.values()), dim=1).sum(dim=1, keepdim=True)
            self._kv_sum = (key, total)
        return self._kv_sum[1]


def _prompt_tensor(prompt: str, salt: str, shape: tuple[int, ...]) -> torch.Tensor:
    digest = hashlib.sha256(f"{salt}:{prompt}".encode()).digest()
    g = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)
    return torch.randn(shape, generator=g)


class AnalyticAdapter:
    """The analytic adapter (see the module docstring). Build with ``AnalyticAdapter(**knobs)``."""

    accelframe_knobs = (AnalyticConfig,)  # its keywords (accelframe.knobs)

    def __init__(self, **kwargs: Any) -> None:
        self.config = AnalyticConfig(**kwargs)
        c = self.config
        self.name = "analytic"
        self.unit_frames = c.unit_frames
        self.latent_shape = (c.channels, c.height, c.width)
        self.device = torch.device("cpu")
        self.dtype = getattr(torch, c.dtype)
        self._sigmas = c.sigmas()
        kinds = {caps.SNAPSHOT, caps.DECODE, caps.ENCODE}
        if c.plan == "block":
            kinds |= {caps.KV_CACHE, caps.BLOCK_UNITS, caps.KV_WINDOW}
        elif c.plan == "staircase":
            kinds |= {caps.UPDATE_MASK}
        else:
            kinds |= {caps.KV_CACHE, caps.UPDATE_MASK}
        self.capabilities = frozenset(kinds)
        mix = torch.linspace(-1.0, 1.0, 3 * c.channels).reshape(3, c.channels)
        self._mix = (mix + torch.eye(3, c.channels)).to(self.dtype)  # [3, C], full rank
        self._unmix = torch.linalg.pinv(self._mix)  # [C, 3]
        # what decodes latents: two analytic adapters decode alike iff these knobs agree
        self.vae_key = f"analytic-decoder(channels={c.channels}, smoothing={c.smoothing})"
        self._phases: dict[Any, tuple[torch.Tensor, torch.Tensor]] = {}
        # no position or batch bound (the field is closed-form); memory: the engine's latent copies,
        # one latent per cached frame (all of them, or the rolling window), decoded frames
        latent = caps.frame_bytes(self.latent_shape, self.dtype)
        self.limits = caps.Limits(
            max_height=MAX_SIDE, max_width=MAX_SIDE,
            latent_frame_bytes=caps.LATENT_COPIES * latent, kv_frame_bytes=latent, kv_frames=c.kv_window,
            pixel_frame_bytes=caps.PIXEL_COPIES * caps.frame_bytes((3, c.height, c.width), self.dtype))

    def __repr__(self) -> str:
        return f"AnalyticAdapter({self.config!r})"

    # ---- requests and plans ---------------------------------------------------------------------

    def validate(self, request: Request) -> None:
        c, b = self.config, self.config.unit_frames
        if request.num_frames % b:
            raise ConfigError("Request", "num_frames", request.num_frames,
                              f"a multiple of unit_frames = {b} (e.g. {b}, {2 * b}, {3 * b})")
        if request.first_frame % b:
            raise ConfigError("Request", "first_frame", request.first_frame,
                              f"a multiple of unit_frames = {b}")
        if c.plan == "staircase":
            units = request.num_frames // b
            concurrent = units if c.ar_step == 0 else min(units, math.ceil(c.steps / c.ar_step))
            need = concurrent * b
            if c.window_frames is not None and c.window_frames < need:
                raise ConfigError("AnalyticConfig", "window_frames", c.window_frames,
                                  f">= {need}: {concurrent} units denoise at once with "
                                  f"steps = {c.steps}, ar_step = {c.ar_step}")
        if request.init_latents is not None:
            want = (request.batch, request.num_frames, *self.latent_shape)
            if tuple(request.init_latents.shape) != want:
                raise ConfigError("Request", "init_latents", tuple(request.init_latents.shape),
                                  f"a tensor of shape {want}")

    def units(self, request: Request) -> list[UnitSpan]:
        return block_units(request.first_frame, request.num_frames, self.config.unit_frames)

    def plan(self, request: Request) -> Iterator[Iteration]:
        sig = start_schedule(self._sigmas, request.start_sigma)
        kind = self.config.plan
        if kind == "block":
            return block_plan(self.units(request), sig)
        if kind == "staircase":
            return self._staircase_plan(self.units(request), sig, request.first_frame)
        return self._window_plan(self.units(request), sig)

    def _staircase_plan(self, spans: list[UnitSpan], sig: list[float],
                        first: int) -> Iterator[Iteration]:
        n, ar, b = len(sig) - 1, self.config.ar_step, self.config.unit_frames
        window = self.config.window_frames
        total, idx = (len(spans) - 1) * ar + n, 0
        for t in range(total):
            started = [k for k in range(len(spans)) if k * ar <= t]
            end = spans[started[-1]].end  # ē_t: end of the newest started unit
            start = max(end - window, first) if window is not None else first
            sigma, sigma_next, update = [], [], []
            for j in range(start, end):
                k = (j - first) // b
                p = min(max(t - k * ar, 0), n)  # steps done by unit k before iteration t
                active = t - k * ar < n
                sigma.append(sig[p])
                sigma_next.append(sig[p + 1] if active else sig[p])
                update.append(active)
            units = tuple(spans[k].unit for k in started if t - k * ar < n)
            if not units:  # ar_step > steps leaves gaps where no frame advances: no call
                continue
            yield Iteration(
                index=idx, unit=spans[0].unit, step=t, frames=(start, end), valid=(start, end),
                sigma=tuple(sigma), sigma_next=tuple(sigma_next), update=tuple(update),
                kv_write=KVWrite.NONE, units=units,
                starts=tuple(spans[k] for k in started if k * ar == t),
                finishes=tuple(spans[k] for k in started if t - k * ar == n - 1))
            idx += 1

    def _window_plan(self, spans: list[UnitSpan], sig: list[float]) -> Iterator[Iteration]:
        n = len(sig) - 1
        stage = max(n // self.config.window_units, 1)
        total, idx = (len(spans) - 1) * stage + n, 0
        for t in range(total):
            live = [k for k in range(len(spans)) if 0 <= t - k * stage < n]
            start, end = spans[live[0]].start, spans[live[-1]].end
            sigma, sigma_next = [], []
            for k in live:
                p = t - k * stage
                b = spans[k].end - spans[k].start
                sigma += [sig[p]] * b
                sigma_next += [sig[p + 1]] * b
            done = [spans[k] for k in live if t - k * stage == n - 1]
            yield Iteration(
                index=idx, unit=spans[live[0]].unit, step=t - live[0] * stage,
                frames=(start, end), valid=(start, end), sigma=tuple(sigma),
                sigma_next=tuple(sigma_next), update=(True,) * (end - start),
                units=tuple(spans[k].unit for k in live),
                starts=tuple(spans[k] for k in live if t == k * stage), finishes=tuple(done))
            idx += 1
            for span in done:  # MAGI prepends the finished chunk at the clean time
                bsz = span.end - span.start
                yield Iteration(index=idx, unit=span.unit, step=n, frames=span.frames,
                                sigma=(0.0,) * bsz, sigma_next=(0.0,) * bsz,
                                update=(False,) * bsz, role=Role.COMMIT,
                                kv_write=KVWrite.COMMIT, units=(span.unit,))
                idx += 1

    # ---- state ----------------------------------------------------------------------------------

    def encode_prompt(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        shape = self.latent_shape
        base = torch.stack([_prompt_tensor(p, "base", shape) for p in prompts])  # [B, C, H, W]
        direction = torch.stack([_prompt_tensor(p, "dir", shape) for p in prompts])
        return base.to(self.dtype), direction.to(self.dtype)

    def init_state(self, request: Request, cond: tuple[torch.Tensor, torch.Tensor]) -> AnalyticState:
        return AnalyticState(base=cond[0], direction=cond[1])

    def snapshot(self, state: AnalyticState) -> dict[str, Any]:
        return {"kv": dict(state.kv), "sinks": state.sinks, "rope_offset": state.rope_offset,
                "decode_prev": state.decode_prev}

    def restore(self, state: AnalyticState, snap: dict[str, Any]) -> None:
        state.kv = dict(snap["kv"])
        state.kv_version += 1
        state.sinks = snap["sinks"]
        state.rope_offset = snap["rope_offset"]
        state.decode_prev = snap["decode_prev"]

    # ---- the model ------------------------------------------------------------------------------

    def _busy(self) -> None:
        if self.config.cost_ms:
            end = time.perf_counter() + self.config.cost_ms / 1000.0
            while time.perf_counter() < end:
                pass

    def _phase(self, frames: tuple[int, int], offset: int,
               dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        key = (frames, offset, dtype)
        found = self._phases.get(key)
        if found is None:
            pos = torch.arange(frames[0], frames[1], dtype=dtype) - offset  # [F]
            f = frames[1] - frames[0]
            found = (torch.cos(0.3 * pos).view(1, f, 1, 1, 1), torch.sin(0.3 * pos).view(1, f, 1, 1, 1))
            if len(self._phases) > 4096:
                self._phases.clear()
            self._phases[key] = found
        return found

    def _targets(self, x: torch.Tensor, sigma: torch.Tensor, frames: tuple[int, int],
                 state: AnalyticState) -> torch.Tensor:
        """m_j(σ) for the forwarded frames: ``[B, F, C, H, W]``."""
        c = self.config
        f = x.shape[1]
        cos, sin = self._phase(frames, state.rope_offset, x.dtype)  # [1, F, 1, 1, 1] each
        base, direc = state.base.unsqueeze(1), state.direction.unsqueeze(1)  # [B, 1, C, H, W]
        mu = base * cos + direc * sin  # [B, F, C, H, W]
        # context: KV frames (weight 1) plus earlier forwarded frames (weight 1 - σ)
        w = (1.0 - sigma).view(1, f, 1, 1, 1)  # [1, F, 1, 1, 1]
        wx = torch.cumsum(w * x, dim=1) - w * x  # [B, F, C, H, W], strictly earlier frames
        ww = torch.cumsum(w, dim=1) - w  # [1, F, 1, 1, 1]
        if state.kv:
            wx = wx + state.kv_sum()
            ww = ww + len(state.kv)
        ctx = wx / ww.clamp_min(1e-6)
        bend = torch.sin(3.0 * sigma).view(1, f, 1, 1, 1) * direc
        return mu + c.coupling * ctx + c.curvature * bend

    def denoise(self, x: torch.Tensor, it: Iteration, frames: tuple[int, int],
                state: AnalyticState, kv_write: KVWrite) -> torch.Tensor:
        self._busy()
        state.calls += 1
        s0 = it.frames[0]
        sigma = torch.tensor(it.sigma[frames[0] - s0:frames[1] - s0], dtype=x.dtype)  # [F]
        m = self._targets(x, sigma, frames, state)
        return (x - m) / sigma.clamp_min(1e-3).view(1, -1, 1, 1, 1)  # [B, F, C, H, W]

    def probe(self, x: torch.Tensor, it: Iteration, state: AnalyticState) -> torch.Tensor:
        sigma = torch.tensor(it.sigma, dtype=x.dtype).view(1, -1, 1)
        return (1.0 - sigma) * x.mean(dim=(-2, -1)) + sigma  # [B, F, C]

    def advance(self, x: torch.Tensor, velocity: torch.Tensor, it: Iteration,
                generator: torch.Generator, state: AnalyticState) -> torch.Tensor:
        sigma = torch.tensor(it.sigma, dtype=x.dtype).view(1, -1, 1, 1, 1)
        nxt = torch.tensor(it.sigma_next, dtype=x.dtype).view(1, -1, 1, 1, 1)
        if self.config.solver == "euler":
            return x + velocity * (nxt - sigma)  # frames with σ_next = σ stay put
        x0 = x - sigma * velocity  # [B, F, C, H, W]
        noise = torch.randn(x.shape, generator=generator).to(x.dtype)  # drawn on the CPU
        renoised = (1.0 - nxt) * x0 + nxt * noise
        keep = torch.tensor(it.update).view(1, -1, 1, 1, 1)
        return torch.where(keep, renoised, x)

    def commit(self, x0: torch.Tensor, frames: tuple[int, int], state: AnalyticState) -> None:
        self._busy()
        state.calls += 1
        for j in range(frames[0], frames[1]):
            state.kv[j] = x0[:, j - frames[0]].clone()
        state.kv_version += 1
        c = self.config
        if c.sink_frames and len(state.sinks) < c.sink_frames:
            state.sinks = tuple(sorted(state.kv))[: c.sink_frames]
        if c.kv_window is not None:  # rolling window: sinks plus the most recent frames
            recent = [j for j in sorted(state.kv) if j not in state.sinks]
            for j in recent[: max(len(recent) - (c.kv_window - len(state.sinks)), 0)]:
                del state.kv[j]
            state.kv_version += 1

    # ---- pixels ---------------------------------------------------------------------------------

    def decode(self, latents: torch.Tensor, state: AnalyticState) -> torch.Tensor:
        rgb = torch.einsum("rc,bfchw->bfrhw", self._mix, latents)  # [B, F, 3, H, W]
        out, prev, a = [], state.decode_prev, self.config.smoothing
        for t in range(rgb.shape[1]):
            y = rgb[:, t] if prev is None else rgb[:, t] + a * prev
            out.append(y)
            prev = y
        state.decode_prev = prev
        return torch.stack(out, dim=1)

    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        """Inverse of ``decode`` for a chunk decoded from an empty decode cache."""
        a = self.config.smoothing
        raw = frames.clone()
        raw[:, 1:] = frames[:, 1:] - a * frames[:, :-1]
        return torch.einsum("cr,bfrhw->bfchw", self._unmix, raw)  # [B, F, C, H, W]

    # ---- KV management for stream policies ------------------------------------------------------

    def kv_frames(self, state: AnalyticState) -> tuple[tuple[int, ...], tuple[int, ...], int | None]:
        return tuple(sorted(state.kv)), state.sinks, self.config.kv_window

    def kv_embeddings(self, state: AnalyticState) -> dict[int, torch.Tensor]:
        """Each cached frame's latent, flattened: ``[1, B C H W]``."""
        return {j: x.reshape(1, -1) for j, x in state.kv.items()}

    def rope_offset(self, state: AnalyticState) -> int:
        return state.rope_offset

    def kv_apply(self, state: AnalyticState, evict: tuple[int, ...],
                 sinks: tuple[int, ...] | None, rope_reset: bool) -> None:
        for j in evict:
            state.kv.pop(j, None)
        state.kv_version += 1
        if sinks is not None:
            state.sinks = tuple(sinks)
        if rope_reset:
            state.rope_offset = max(state.kv) + 1 if state.kv else 0
