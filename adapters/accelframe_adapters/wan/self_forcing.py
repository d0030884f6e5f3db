"""Self-Forcing (and CausVid-style few-step block loops): the ``self-forcing`` adapter.

The loop, per block of ``num_frame_per_block`` latent frames (reference: Self-Forcing's
``CausalInferencePipeline``)::

    x = noise(seed, block)
    for k, t_k in enumerate(steps):                 # warped shift-5 list: 1000, 937.5, 833.3, 625
        v = dit(x, t_k, kv=context + this block)    # writes the block's K/V as scratch
        x0 = x - σ_k v
        x = x0 if last else (1 - σ_{k+1}) x0 + σ_{k+1} ε   # ε from the block's seeded generator
    dit(x0, t = context_noise)                      # the commit pass writes clean K/V

``local_attn_size`` bounds attention to that many frames (the current block included), of which
the first ``sink_size`` frames ever written stay as sinks; -1 keeps every frame.

Checkpoints: the ``.pt`` files Self-Forcing saves, a dict with ``generator`` (and
``generator_ema``), each a state dict of the wrapper: keys ``model.blocks.0.self_attn.q.weight``.
Read with ``torch.load(weights_only=True)``; ``use_ema`` picks ``generator_ema`` when present.
"""

from __future__ import annotations

from typing import Any, Iterator, Sequence

import attrs
import torch

from accelframe import adapter as caps
from accelframe import validators as v
from accelframe.errors import CheckpointError, ConfigError
from accelframe.plans import block_plan, block_units, start_schedule
from accelframe.types import Iteration, KVWrite, Request, UnitSpan
from accelframe_adapters import checkpoints as ck
from accelframe_adapters.wan.flow import few_step_schedule, renoise
from accelframe_adapters.wan.common import WanAdapter, WanState, read_dit_file
from accelframe_adapters.wan.dit import CrossCache, KVCache, cat_cross, forward_rows


def _step_list(inst: Any, attribute: Any, value: tuple[float, ...]) -> None:
    if not value or any(not 0 <= t <= 1000 for t in value) or any(a <= b for a, b in zip(value, value[1:])):
        raise ConfigError(type(inst).__name__, attribute.name, value,
                          "a non-empty, strictly decreasing list of Wan timesteps in [0, 1000]")


@attrs.frozen(kw_only=True)
class SelfForcingConfig:
    """Self-Forcing's knobs, with the defaults of its released DMD config."""

    num_frame_per_block: int = attrs.field(default=3, validator=v.number_in(1, 64, integer=True))
    denoising_step_list: tuple[float, ...] = attrs.field(default=(1000, 750, 500, 250),
                                                         converter=tuple, validator=_step_list)
    warp_denoising_step: bool = True
    timestep_shift: float = attrs.field(default=5.0, validator=v.number_in(0.01, 100.0))
    context_noise: float = attrs.field(default=0.0, validator=v.number_in(0.0, 1000.0))
    local_attn_size: int = attrs.field(default=-1, validator=v.number_in(-1, 100_000, integer=True))
    sink_size: int = attrs.field(default=0, validator=v.number_in(0, 100_000, integer=True))
    use_ema: bool = True
    # Not in the released config (its DMD training baked guidance into the few-step generator):
    # classifier-free guidance on the block being denoised, for models that are not distilled. Above 1
    # each step also runs the DiT on ``negative_prompt`` against the same KV cache (no writes) and
    # returns ``v_u + guidance_scale (v_c - v_u)``. 1.0: off, the reference loop.
    guidance_scale: float = attrs.field(default=1.0, validator=v.number_in(1.0, 100.0))
    negative_prompt: str = ""

    def __attrs_post_init__(self) -> None:
        if self.local_attn_size == 0:
            raise ConfigError("SelfForcingConfig", "local_attn_size", 0, "-1 (global) or a frame count")
        if self.local_attn_size != -1 and self.local_attn_size <= self.num_frame_per_block + self.sink_size:
            raise ConfigError("SelfForcingConfig", "local_attn_size", self.local_attn_size,
                              f"-1, or more than num_frame_per_block + sink_size = "
                              f"{self.num_frame_per_block + self.sink_size} frames (the window holds the "
                              "block, the sinks and at least one recent frame)")

    @property
    def kv_window(self) -> int | None:
        """Committed frames kept: the window minus the block being denoised."""
        return None if self.local_attn_size == -1 else self.local_attn_size - self.num_frame_per_block


class BlockLoopAdapter(WanAdapter):
    """A few-step block loop on the Wan DiT: shared by Self-Forcing and Krea."""

    def _init_schedule(self, step_list: list[float], shift: float, warp: bool) -> None:
        pairs = few_step_schedule(step_list, shift, warp)
        self._sigmas = [s for _, s in pairs] + [0.0]  # the last call predicts x0
        self._t_of = {s: t for t, s in pairs}  # model timestep of each level

    @property
    def unit_frames(self) -> int:
        return self.config.num_frame_per_block

    def validate(self, request: Request) -> None:
        super().validate(request)
        b = self.unit_frames
        if request.num_frames % b:
            ok = ", ".join(str(b * k) for k in range(1, 5))
            raise ConfigError("Request", "num_frames", request.num_frames,
                              f"a multiple of num_frame_per_block = {b} latent frames ({ok}, ...; pixel "
                              f"frames {', '.join(str(self.pixel_frames(b * k)) for k in range(1, 5))}, ...)")
        if request.first_frame % b:
            raise ConfigError("Request", "first_frame", request.first_frame, f"a multiple of {b}")

    def units(self, request: Request) -> list[UnitSpan]:
        return block_units(request.first_frame, request.num_frames, self.unit_frames)

    def schedule(self, start_sigma: float) -> list[float]:
        return start_schedule(self._sigmas, start_sigma)

    def plan(self, request: Request) -> Iterator[Iteration]:
        return block_plan(self.units(request), self.schedule(request.start_sigma),
                          denoise_kv_write=self.denoise_kv_write)

    denoise_kv_write = KVWrite.SCRATCH

    def advance(self, x: torch.Tensor, velocity: torch.Tensor, it: Iteration, generator: torch.Generator,
                state: WanState) -> torch.Tensor:
        sigma, nxt = it.sigma[0], it.sigma_next[0]  # one level per block
        if nxt == 0.0:
            return x - sigma * velocity  # x0
        noise = torch.randn(x.shape, generator=generator).to(x.device, x.dtype)  # drawn on the CPU
        return renoise(x, velocity, sigma, nxt, noise)


class SelfForcingAdapter(BlockLoopAdapter):
    """The ``self-forcing`` adapter (see the module docstring)."""

    name = "self-forcing"
    config_class = SelfForcingConfig

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        c = self.config
        self._init_schedule(list(c.denoising_step_list), c.timestep_shift, c.warp_denoising_step)

    def family_capabilities(self) -> frozenset[str]:
        return frozenset({caps.KV_CACHE, caps.BLOCK_UNITS, caps.KV_WINDOW})

    def read_checkpoint(self, path: str) -> dict[str, torch.Tensor]:
        _, raw = read_dit_file(path, ("self-forcing",), "a Self-Forcing .pt (a dict with 'generator' / "
                                                        "'generator_ema')")
        key = "generator_ema" if self.config.use_ema and "generator_ema" in raw else "generator"
        sd = raw[key]
        inner = ck.strip_prefix(sd, "model.")
        if not inner:
            raise CheckpointError(path, f"{key!r} holds no 'model.'-prefixed keys; first keys: "
                                        + ", ".join(sorted(sd)[:5]))
        if len(inner) != len(sd):
            stray = sorted(k for k in sd if not k.startswith("model."))
            raise CheckpointError(path, f"{key!r} mixes prefixed and unprefixed keys",
                                  unexpected=stray)
        return inner

    def kv_window_frames(self) -> int | None:
        window = self.config.local_attn_size  # the committed window plus the block's scratch K/V
        return None if window == -1 else window

    def attention_frames(self, frames: tuple[int, int]) -> int:
        window = self.config.local_attn_size
        return frames[1] if window == -1 else min(frames[1], window)

    def new_kv(self) -> KVCache:
        c = self.config
        return KVCache(num_layers=self.dit.cfg.num_layers, tokens_per_frame=self.tokens_per_frame,
                       window=c.kv_window, sink_size=c.sink_size)

    def init_state(self, request: Request, cond) -> WanState:
        state = super().init_state(request, cond)
        if self.config.guidance_scale > 1.0:
            batch = cond.k[0].shape[0]
            state.family["uncond"] = self.encode_prompt([self.config.negative_prompt] * batch)
        return state

    @torch.no_grad()
    def denoise(self, x: torch.Tensor, it: Iteration, frames: tuple[int, int], state: WanState,
                kv_write: KVWrite) -> torch.Tensor:
        t = self.timesteps(it, frames).expand(x.shape[0], -1)  # [B, F]
        xm = self.to_model(x)
        out = self.dit(xm, t, state.cross, frame_offset=frames[0], cache=state.kv, kv_write=kv_write)
        uncond = state.family.get("uncond")
        if uncond is not None:  # guidance: the unconditional pass reads the same context, writes nothing
            out_u = self.dit(xm, t, uncond, frame_offset=frames[0], cache=state.kv, kv_write=KVWrite.NONE)
            out = out_u + self.config.guidance_scale * (out - out_u)
        return self.from_model(out)  # [B, F, C, H, W]

    @torch.no_grad()
    def denoise_rows(self, xs: torch.Tensor, sigmas: Sequence[float], starts: Sequence[int],
                     states: Sequence[WanState]) -> torch.Tensor:
        """Stream batch: one forward over rows ``xs: [R, F, C, H, W]``; row ``r`` is a block at level
        ``sigmas[r]`` whose first frame is ``starts[r]``, attending to ``states[r]``'s committed
        context (read only: nothing is written). Rows may come from different streams. Returns the
        velocities ``[R, F, C, H, W]``; one row equals :meth:`denoise` with no K/V write."""
        t, ropes = self.rows_timing(sigmas, starts, states, xs.shape[1])
        caches = [st.kv for st in states]
        xm = self.to_model(xs)  # [R, C, F, H, W]
        out = forward_rows(self.dit, xm, t, cat_cross([st.cross for st in states]), ropes, caches)
        if self.config.guidance_scale > 1.0:
            uncond = cat_cross([st.family["uncond"] for st in states])
            out_u = forward_rows(self.dit, xm, t, uncond, ropes, caches)
            out = out_u + self.config.guidance_scale * (out - out_u)
        return self.from_model(out)  # [R, F, C, H, W]

    def rows_timing(self, sigmas: Sequence[float], starts: Sequence[int], states: Sequence[WanState],
                    frames: int) -> tuple[torch.Tensor, list[int]]:
        """Rows' timesteps ``[R, F]`` and RoPE starts (each row's first frame less its cache's RoPE
        offset): what every stage of a rows pass computes alike."""
        t = torch.tensor([[self._t_of.get(s, 1000.0 * s)] * frames for s in sigmas], dtype=torch.float32,
                         device=self.device)  # [R, F]
        return t, [s - (0 if st.kv is None else st.kv.rope_offset) for s, st in zip(starts, states)]

    def stage_ring(self, ranks: int, *, partition: Sequence[int] | None = None, timeout_s: float = 60.0,
                   decode_rank: int | None = None, rebalance: Any = True, kv_embeddings: bool = False) -> Any:
        """Join a pipeline-parallel ring of ``ranks`` ranks (:mod:`accelframe_adapters.parallel.ring`)."""
        from accelframe_adapters.parallel.ring import join

        return join(self, ranks, partition=partition, timeout_s=timeout_s, decode_rank=decode_rank,
                    rebalance=rebalance, kv_embeddings=kv_embeddings)

    @torch.no_grad()
    def commit(self, x0: torch.Tensor, frames: tuple[int, int], state: WanState) -> None:
        t = torch.full((x0.shape[0], x0.shape[1]), float(self.config.context_noise), device=self.device)
        self.dit(self.to_model(x0), t, state.cross, frame_offset=frames[0], cache=state.kv,
                 kv_write=KVWrite.COMMIT)
        state.family["next_frame"] = frames[1]
        # the clean latents of the cached frames, for a prompt switch's recache (small beside the K/V)
        kept = {f: lat for f, lat in state.family.get("context", {}).items() if f in state.kv.frames}
        kept.update({f: x0[:, f - frames[0]] for f in range(*frames) if f in state.kv.frames})  # [B, C, H, W]
        state.family["context"] = kept

    @torch.no_grad()
    def switch_prompt(self, state: WanState, cond: CrossCache, recache: bool = True) -> int:
        """The new prompt's cross-attention and, with ``recache``, the cached frames committed again
        under it (LongLive's KV recache): one call over the cached frames, sinks first, at
        consecutive RoPE positions from 0 as after a RoPE reset (the next frame follows them).
        Returns the calls (0 or 1)."""
        state.cross = cond
        kv = state.kv
        context = state.family.get("context", {})
        if not recache or kv is None or not kv.frames or any(f not in context for f in kv.frames):
            return 0
        frames, sinks = kv.frames, kv.sinks
        x0 = torch.stack([context[f] for f in frames], dim=1)  # [B, n, C, H, W]
        fresh = self.new_kv()
        t = torch.full((x0.shape[0], x0.shape[1]), float(self.config.context_noise), device=self.device)
        self.dit(self.to_model(x0), t, cond, frame_offset=0, cache=fresh, kv_write=KVWrite.COMMIT,
                 causal_block=self.unit_frames, rope_start=0)
        kv.restore(fresh.snapshot())  # the same cache object: whoever holds it sees the new K/V
        kv.frames, kv.sinks = frames, sinks
        kv.rope_offset = state.family.get("next_frame", frames[-1] + 1) - len(frames)
        return 1


__all__ = ["BlockLoopAdapter", "SelfForcingAdapter", "SelfForcingConfig"]
