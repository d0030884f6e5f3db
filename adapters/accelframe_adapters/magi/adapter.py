"""MAGI-1: the ``magi-1`` adapter (chunk-causal DiT, staged pipelined denoising, packed KV).

The loop (the reference's ``SampleTransport`` in accelframe's terms; :mod:`magi_schedule` has the
grid and the window)::

    t_0 .. t_N = squared-and-shifted grid              # MAGI time: 0 noise, 1 clean; σ = 1 - t
    for it in 0 .. (chunks - 1) N / W + N - 1:         # W = window_size chunks, stages of N / W steps
        live = chunks c with 0 <= it - c N / W < N     # oldest first, oldest cleanest
        v = guided velocity of the live chunks, chunk c at t[p_c], attending to chunks
            [c + 1 - kv_range[stage_c], c]                  # [5, 4, 3, 2] for W = 4
        x_c += (t[p_c + 1] - t[p_c]) v_c  (Euler)      # accelframe: x += (σ' - σ) (-v)
        if the oldest chunk reached t = 1:
            run it at clean_t with the null caption, self-attention only, writing its K/V   # commit
            decode it

Guidance. The base model (``distill=False``) runs three passes per call and combines them per
chunk with the scales of the interval of ``cfg_t_range`` that holds its t::

    v = (1 - p) v_uncond + (p - s) v_context + s v_context_text
      v_context_text: captions, KV context              v_context: null caption, KV context
      v_uncond: each chunk alone, null caption, RoPE time restarted at 0

(p, s) = (1.5, 7.5) below t = 0.3 and (1, 0) above, so only the middle pass runs for the cleaner
part; passes whose weight is zero for every chunk are skipped. The distilled model
(``distill=True``) runs one pass with captions and adds the step-size embedding ``dt = N / 2``; while
the oldest chunk is still below ``1 - nearly_clean_threshold`` in σ (t > 0.3) its velocity is
``0.7 (with context) + 0.3 (alone)``.

K/V. Every denoising call writes its chunks' K/V (the null-caption pass of the base model, the
only pass of the distilled one) into the packed cache, as the reference does; a chunk's clean pass
overwrites its slot; chunks older than the one before the window are evicted, since no call
attends to them again. So a call that computes only some chunks (a partial recompute) reads the
others' K/V as of their last computation.

Frames: requests are whole chunks of ``chunk_width`` latent frames. The world model decodes with
the world's causal Wan VAE (1 + 4k pixel frames: the first chunk of 6 latent frames gives 21 pixel
frames, later ones 24); MAGI-1's own ViT VAE is not implemented, so a released checkpoint runs
without decoding (``decode=False``).
"""

from __future__ import annotations

import warnings
from typing import Any, Iterator, Sequence

import attrs
import torch

from accelframe import adapter as caps
from accelframe import validators as v
from accelframe.errors import ConfigError
from accelframe.types import Iteration, KVWrite, Request, Role, UnitSpan
from accelframe_adapters import presets
from accelframe_adapters.compiling import CompileClock, compile_parts
from accelframe_adapters.magi import schedule as ms
from accelframe_adapters.magi.dit import MagiDiT, MagiDiTConfig, MagiKVCache
from accelframe_adapters.wan.text import UnknownWordsWarning, WordEncoder

MAX_SIDE = 4096  # the largest frame side (pixels) the adapter may be configured for

SIZES = ("world", "tiny", "4.5B", "24B")  # "world": a preset the embedded world registers


def _scales(inst: Any, attribute: Any, value: tuple[float, ...]) -> None:
    if not value or any(not isinstance(x, (int, float)) or isinstance(x, bool) for x in value):
        raise ConfigError("MagiConfig", attribute.name, value, "a non-empty tuple of numbers")


@attrs.frozen(kw_only=True)
class MagiConfig:
    """MAGI-1's loop knobs, with the defaults of its released 4.5B configs."""

    num_steps: int = attrs.field(default=64, validator=v.number_in(1, 10_000, integer=True))
    window_size: int = attrs.field(default=4, validator=v.number_in(1, 64, integer=True))
    chunk_width: int = attrs.field(default=6, validator=v.number_in(1, 64, integer=True))
    shift: float = attrs.field(default=3.0, validator=v.number_in(0.01, 100.0))
    distill: bool = False
    cfg_t_range: tuple[float, ...] = attrs.field(default=(0.0, 0.0217, 0.1, 0.3, 0.999), converter=tuple,
                                                 validator=_scales)
    prev_chunk_scales: tuple[float, ...] = attrs.field(default=(1.5, 1.5, 1.5, 1.0, 1.0), converter=tuple,
                                                       validator=_scales)
    text_scales: tuple[float, ...] = attrs.field(default=(7.5, 7.5, 7.5, 0.0, 0.0), converter=tuple,
                                                 validator=_scales)
    noise2clean_kvrange: tuple[int, ...] | None = attrs.field(
        default=None, converter=attrs.converters.optional(tuple))
    clean_t: float = attrs.field(default=0.9999, validator=v.number_in(0.0, 1.0))
    nearly_clean_threshold: float = attrs.field(default=0.3, validator=v.number_in(0.0, 1.0))
    nearly_clean_scale: float = attrs.field(default=0.7, validator=v.number_in(0.0, 1.0))

    def __attrs_post_init__(self) -> None:
        if self.num_steps % self.window_size:
            near = self.window_size * max(self.num_steps // self.window_size, 1)
            raise ConfigError("MagiConfig", "num_steps", self.num_steps,
                              f"a multiple of window_size = {self.window_size} (stages of num_steps / "
                              f"window_size steps; e.g. {near})")
        n = len(self.cfg_t_range)
        for name in ("prev_chunk_scales", "text_scales"):
            if len(getattr(self, name)) != n:
                raise ConfigError("MagiConfig", name, getattr(self, name),
                                  f"{n} values, one per interval of cfg_t_range")
        if self.noise2clean_kvrange is not None:
            r = self.noise2clean_kvrange
            if len(r) != self.window_size or any(not isinstance(x, int) or x < 1 for x in r):
                raise ConfigError("MagiConfig", "noise2clean_kvrange", r,
                                  f"{self.window_size} chunk counts >= 1, one per stage (default "
                                  f"{ms.default_kv_ranges(self.window_size)})")

    @property
    def kv_ranges(self) -> tuple[int, ...]:
        return self.noise2clean_kvrange or ms.default_kv_ranges(self.window_size)

    @property
    def steps_per_stage(self) -> int:
        return self.num_steps // self.window_size


@attrs.frozen(kw_only=True)
class MagiModelConfig:
    """Where the weights come from and how big the video is."""

    checkpoint: str | None = None  # a MAGI-1 model folder (inference_weight[.distill]/...) or file
    # "world": the embedded world's trained MAGI model (with the world VAE and word encoder); "tiny":
    # random tiny weights; "4.5B" / "24B": a released checkpoint (there are no random weights that big)
    size: str = attrs.field(default="world", validator=v.one_of(*SIZES))
    height: int = attrs.field(default=64, validator=v.number_in(16, MAX_SIDE, integer=True))
    width: int = attrs.field(default=64, validator=v.number_in(16, MAX_SIDE, integer=True))
    device: str = attrs.field(default="cpu", validator=v.device)
    init_seed: int = attrs.field(default=0, validator=v.number_in(0, 2**31 - 1, integer=True))
    # torch.compile the DiT's pure parts (the modulation and the MLP of every block) and the VAE decoder
    # (accelframe_adapters.compiling); the chunk-ranged attention and its cache stay eager
    compile: bool = attrs.field(default=False, validator=v.boolean)
    # what turns latents into frames: "vae" (the VAE's decoder), "tiny" (the embedded world's tiny
    # decoder of its VAE's latents) or a tiny-decoder weights file (accelframe_adapters.wan.taehv)
    decoder: str = attrs.field(default="vae",
                               validator=v.instance_of(str, "'vae', 'tiny' or a tiny-decoder weights file"))

    def __attrs_post_init__(self) -> None:
        if self.size in ("4.5B", "24B") and self.checkpoint is None:
            raise ConfigError("MagiModelConfig", "checkpoint", None,
                              f"a MAGI-1 {self.size} model folder: released sizes load their weights")
        p = self.preset
        if p is not None:
            h, w = p.frame_size
            for name, want in (("height", h), ("width", w)):
                if getattr(self, name) != want:
                    raise ConfigError("MagiModelConfig", name, getattr(self, name),
                                      f"{want}: the world's MAGI model was trained on {h} x {w} clips")

    @property
    def world(self) -> bool:
        """Whether the model is a registered preset's trained one (the embedded world's)."""
        return presets.is_preset("magi", self.size) and self.checkpoint is None

    @property
    def preset(self) -> presets.Preset | None:
        """The registered preset the model comes from (None: a checkpoint or random weights)."""
        return presets.preset("magi", self.size) if self.world else None


@attrs.define(eq=False)
class MagiState:
    """Per-generation state: captions, the packed KV cache, the VAE's decode cache."""

    caption: torch.Tensor  # [B, L, Cc]
    mask: torch.Tensor  # [B, L] bool
    null: torch.Tensor  # [B, L, Cc]
    null_mask: torch.Tensor  # [B, L] bool
    kv: MagiKVCache
    vae_cache: Any
    family: dict[str, Any] = attrs.field(factory=dict)


class MagiAdapter:
    """MAGI-1's loop on :class:`~accelframe_adapters.magi.dit.MagiDiT` (see the module docstring)."""

    name = "magi-1"
    accelframe_knobs = (MagiModelConfig, MagiConfig)  # its keyword arguments (accelframe.knobs)

    def __init__(self, **kwargs: Any) -> None:
        model_fields = {f.name for f in attrs.fields(MagiModelConfig)}
        self.model_config = MagiModelConfig(**{k: kwargs.pop(k) for k in list(kwargs) if k in model_fields})
        mc = self.model_config
        self.preset = mc.preset
        if self.preset is not None:  # the loop knobs measured best with its model (the user's values win)
            kwargs = {**self.preset.defaults.get(self.name, {}), **kwargs}
        self.config = MagiConfig(**kwargs)
        self.device = torch.device(mc.device)
        self.dtype = torch.float32
        self.dit, self.vae, self.text = self._load()
        self.decoder = self._load_decoder()  # decodes (None without a VAE); self.vae encodes
        self.compile_clock = CompileClock()  # seconds spent compiling (compile=True)
        if mc.compile:
            compile_parts(self.dit, self.compile_clock)
            if self.decoder is not None:
                compile_parts(self.decoder, self.compile_clock)
        c = self.dit.cfg
        if c.chunk_width != self.config.chunk_width:
            self.dit.cfg = attrs.evolve(c, chunk_width=self.config.chunk_width)
            c = self.dit.cfg
        r = 8 if self.vae is None else self.vae.config.spatial_ratio  # MAGI-1's VAE: 8x
        self.latent_shape = (c.in_channels if not c.half_channel_vae else c.in_channels // 2,
                             mc.height // r, mc.width // r)
        if self.latent_shape[1] % c.patch_size or self.latent_shape[2] % c.patch_size:
            raise ConfigError("MagiModelConfig", "height", mc.height,
                              f"a size whose latent grid ({self.latent_shape[1]} x {self.latent_shape[2]}) divides by "
                              f"the patch {c.patch_size}")
        self.unit_frames = self.config.chunk_width
        self.pixel_size = (mc.height, mc.width)
        self.grid = ms.TimeGrid(self.config.num_steps, self.config.shift)
        self._index = {t: k for k, t in enumerate(self.grid.t)}
        caps_ = {caps.KV_CACHE, caps.SNAPSHOT, caps.UPDATE_MASK}
        if self.vae is not None:
            caps_.add(caps.DECODE)
        self.capabilities = frozenset(caps_)
        # no RoPE table to outgrow (learned bands); a preset's model was trained on its latent_frames.
        # Memory: latents, the packed K/V of every layer (every chunk stays cached), pixels
        max_frames = None if self.preset is None else self.preset.latent_frames
        tokens = (self.latent_shape[1] // c.patch_size) * (self.latent_shape[2] // c.patch_size)
        weights = next(self.dit.parameters()).dtype
        self.limits = caps.Limits(
            max_frames=max_frames, max_height=MAX_SIDE, max_width=MAX_SIDE,
            latent_frame_bytes=caps.LATENT_COPIES * caps.frame_bytes(self.latent_shape, self.dtype),
            kv_frame_bytes=caps.frame_bytes((c.num_layers, tokens, c.num_query_groups, 2 * c.kv_channels), weights),
            pixel_frame_bytes=caps.PIXEL_COPIES * caps.frame_bytes((3, mc.height, mc.width)))

    # ---- models ---------------------------------------------------------------------------------

    def _load(self) -> tuple[MagiDiT, Any, Any]:
        mc = self.model_config
        if self.preset is not None:
            dit, vae, text = self.preset.load(device=self.device)
            return dit, vae, text
        if mc.checkpoint is not None:
            from accelframe_adapters.magi.checkpoints import load_magi_checkpoint

            dit, _ = load_magi_checkpoint(mc.checkpoint, distill=self.config.distill)
        else:  # tiny, random
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(mc.init_seed)
                dit = MagiDiT(MagiDiTConfig.tiny(chunk_width=self.config.chunk_width))
        dit = dit.to(self.device).eval()
        c = dit.cfg
        vae = None
        if mc.size == "tiny" and mc.checkpoint is None:
            from accelframe_adapters.wan.vae import WanVAE, WanVAEConfig

            z = c.in_channels // 2 if c.half_channel_vae else c.in_channels
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(mc.init_seed + 1)
                vae = WanVAE(attrs.evolve(WanVAEConfig.tiny(), z_dim=z)).eval()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(mc.init_seed + 2)
            text = WordEncoder(c.caption_channels, c.caption_max_length)
        return dit, vae, text.to(self.device)

    def _load_decoder(self) -> Any:
        """The VAE itself (``decoder="vae"``), or a tiny decoder for its latents; None without a VAE."""
        from accelframe_adapters.wan.taehv import decoder_for

        spec = self.model_config.decoder
        if self.vae is None:
            if spec != "vae":
                raise ConfigError("MagiModelConfig", "decoder", spec,
                                  "'vae': this model has no VAE here (MAGI-1's own VAE is not implemented), so "
                                  "there are no VAE latents for a tiny decoder to decode")
            return None
        p = self.preset
        world = p.weights_file("decoder") if p is not None and p.weights_file is not None else None
        return decoder_for(spec, self.vae, owner="MagiModelConfig", world_file=world)

    # ---- frames and requests --------------------------------------------------------------------

    def pixel_frames(self, latent_frames: int) -> int:
        """Pixel frames of ``latent_frames`` latent frames (the causal Wan VAE: 1 + 4 (F - 1))."""
        return 1 + 4 * (latent_frames - 1)

    def latent_frames(self, pixel_frames: int) -> int:
        if pixel_frames < 1 or (pixel_frames - 1) % 4:
            raise ConfigError(type(self).__name__, "pixel_frames", pixel_frames,
                              "1 + 4k frames: " + ", ".join(str(self.pixel_frames(self.unit_frames * k))
                                                           for k in range(1, 5)) + ", ... for whole chunks")
        return 1 + (pixel_frames - 1) // 4

    def validate(self, request: Request) -> None:
        c = self.config
        ms.check_counts(request.num_frames, c.chunk_width, c.window_size, c.num_steps, self.pixel_frames)
        if request.first_frame % c.chunk_width:
            raise ConfigError("Request", "first_frame", request.first_frame,
                              f"a multiple of chunk_width = {c.chunk_width}")
        if request.init_latents is not None:
            raise ConfigError("Request", "init_latents", "a tensor",
                              "None: the magi-1 adapter generates from text (no video-to-video)")
        if isinstance(self.text, WordEncoder) and self.model_config.world:
            for prompt in request.prompts:
                unknown = self.text.unknown_words(prompt)
                if unknown:
                    warnings.warn(UnknownWordsWarning(prompt, unknown, self.text.vocab), stacklevel=3)
        if self.preset is not None:
            trained = self.preset.latent_frames
            if request.first_frame + request.num_frames > trained:
                raise ConfigError("Request", "num_frames", request.num_frames,
                                  f"at most {trained - request.first_frame} latent frames from frame "
                                  f"{request.first_frame}: the world's MAGI model was trained on "
                                  f"{trained} latent frames ({self.pixel_frames(trained)} pixel frames)")

    def units(self, request: Request) -> list[UnitSpan]:
        w, a = self.config.chunk_width, request.first_frame
        return [UnitSpan(unit=(a + k) // w, start=a + k, end=a + k + w) for k in range(0, request.num_frames, w)]

    def plan(self, request: Request) -> Iterator[Iteration]:
        c = self.config
        spans = self.units(request)
        n, sps, sig = c.num_steps, c.steps_per_stage, self.grid.sigma
        idx = 0
        for i in range(ms.total_iterations(len(spans), n, c.window_size)):
            live = ms.live_chunks(i, len(spans), n, c.window_size)
            start, end = spans[live[0]].start, spans[live[-1]].end
            sigma, sigma_next = [], []
            for k in live:
                p = ms.step_of(k, i, sps)
                sigma += [sig[p]] * c.chunk_width
                sigma_next += [sig[p + 1]] * c.chunk_width
            done = [spans[k] for k in live if ms.step_of(k, i, sps) == n - 1]
            yield Iteration(index=idx, unit=spans[live[0]].unit, step=ms.step_of(live[0], i, sps),
                            frames=(start, end), valid=(start, end), sigma=tuple(sigma),
                            sigma_next=tuple(sigma_next), update=(True,) * (end - start),
                            units=tuple(spans[k].unit for k in live),
                            starts=tuple(spans[k] for k in live if ms.step_of(k, i, sps) == 0),
                            finishes=tuple(done))
            idx += 1
            for span in done:  # the finished chunk at the clean time: its K/V is written
                w = span.end - span.start
                yield Iteration(index=idx, unit=span.unit, step=n, frames=span.frames, sigma=(0.0,) * w,
                                sigma_next=(0.0,) * w, update=(False,) * w, role=Role.COMMIT,
                                kv_write=KVWrite.COMMIT, units=(span.unit,))
                idx += 1

    # ---- state ----------------------------------------------------------------------------------

    @torch.no_grad()
    def encode_prompt(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        emb = self.text(list(prompts)).to(self.device)  # [B, L, Cc]
        mask = torch.ones(emb.shape[:2], dtype=torch.bool, device=self.device)  # [B, L]
        return emb, mask

    def init_state(self, request: Request, cond: tuple[torch.Tensor, torch.Tensor]) -> MagiState:
        caption, mask = cond
        null, null_mask = self.dit.null_caption(caption.shape[0])
        c = self.dit.cfg
        tokens = c.chunk_width * (self.latent_shape[1] // c.patch_size) * (self.latent_shape[2] // c.patch_size)
        vae_cache = self.decoder.new_decode_cache() if self.decoder is not None else None
        return MagiState(caption=caption, mask=mask, null=null.to(self.device), null_mask=null_mask.to(self.device),
                         kv=MagiKVCache(c.num_layers, tokens), vae_cache=vae_cache)

    def snapshot(self, state: MagiState) -> dict[str, Any]:
        return {"kv": state.kv.snapshot(),
                "vae": self.decoder.snapshot(state.vae_cache) if self.decoder is not None else None}

    def restore(self, state: MagiState, snap: dict[str, Any]) -> None:
        state.kv.restore(snap["kv"])
        if self.decoder is not None:
            self.decoder.restore(state.vae_cache, snap["vae"])

    # ---- the network ----------------------------------------------------------------------------

    def to_model(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(0, 2, 1, 3, 4)  # [B, F, C, H, W] -> [B, C, F, H, W]

    def from_model(self, y: torch.Tensor) -> torch.Tensor:
        return y.permute(0, 2, 1, 3, 4).float()  # [B, C, F, H, W] -> [B, F, C, H, W]

    def _chunks(self, it: Iteration, frames: tuple[int, int]) -> list[tuple[int, float]]:
        """(chunk, MAGI t) of each chunk in ``frames`` (whole chunks of the call ``it``)."""
        w = self.config.chunk_width
        if frames[0] % w or frames[1] % w:
            raise ConfigError("magi-1", "frames", frames, f"whole chunks of {w} latent frames")
        s0 = it.frames[0]
        return [(a // w, self.grid.t_of(it.sigma[a - s0])) for a in range(frames[0], frames[1], w)]

    def _ranges(self, chunks: list[tuple[int, float]]) -> list[tuple[int, int]]:
        c = self.config
        out = []
        for chunk, t in chunks:
            step = self._index.get(t)
            if step is None:  # a level off the grid (a policy's σ): its stage by position
                step = min(range(len(self.grid.t)), key=lambda k: abs(self.grid.t[k] - t))
            out.append(ms.kv_range(chunk, min(step, c.num_steps - 1), c.num_steps, c.window_size, c.kv_ranges))
        return out

    def _dt(self) -> float | None:
        return self.config.num_steps / 2 if self.config.distill else None

    @torch.no_grad()
    def denoise(self, x: torch.Tensor, it: Iteration, frames: tuple[int, int], state: MagiState,
                kv_write: KVWrite) -> torch.Tensor:
        """accelframe's velocity ``dx/dσ`` ``[B, F, C, H, W]`` of the chunks in ``frames``."""
        c = self.config
        chunks = self._chunks(it, frames)
        first = chunks[0][0]
        b = x.shape[0]
        xm = self.to_model(x)  # [B, C, F, H, W]
        ts = [t for _, t in chunks]
        t = torch.tensor([ts] * b, dtype=torch.float32, device=self.device)  # [B, n]
        ranges = self._ranges(chunks)
        common = dict(first_chunk=first, kv_ranges=ranges, cache=state.kv, dt=self._dt())
        if c.distill:
            v = self.dit(xm, t, state.caption, state.mask, write=True, text=True, **common)
            v = self._nearly_clean(v, xm, chunks, state)
            return -self.from_model(v)
        scales = [ms.cfg_scales(tc, c.cfg_t_range, c.prev_chunk_scales, c.text_scales) for tc in ts]
        need_text = any(s != 0.0 for _, s in scales)
        need_uncond = any(p != 1.0 for p, _ in scales)
        v_text = self.dit(xm, t, state.caption, state.mask, write=False, text=True, **common) if need_text else None
        v_ctx = self.dit(xm, t, state.null, state.null_mask, write=True, text=False, **common)
        v_unc = self._alone(xm, chunks, state.null, state.null_mask, text=False, rope_first=0) if need_uncond else None
        w = c.chunk_width
        out = torch.empty_like(v_ctx)
        for j, (p, s) in enumerate(scales):
            sl = slice(j * w, (j + 1) * w)
            vj = (p - s) * v_ctx[:, :, sl]
            if s != 0.0:
                vj = vj + s * v_text[:, :, sl]
            if p != 1.0:
                vj = vj + (1.0 - p) * v_unc[:, :, sl]
            out[:, :, sl] = vj
        return -self.from_model(out)  # MAGI's dx/dt -> accelframe's dx/dσ

    def _alone(self, xm: torch.Tensor, chunks: list[tuple[int, float]], caption: torch.Tensor,
               mask: torch.Tensor, *, text: bool, rope_first: int | None) -> torch.Tensor:
        """Each chunk on its own (no cache, self-attention only), batched over the chunks."""
        w, b = self.config.chunk_width, xm.shape[0]
        n = len(chunks)
        xs = torch.cat([xm[:, :, j * w:(j + 1) * w] for j in range(n)])  # [n B, C, w, H, W]
        t = torch.tensor([[tc] for _, tc in chunks for _ in range(b)], dtype=torch.float32, device=self.device)
        cap = caption.repeat(n, 1, 1)  # [n B, L, Cc]
        msk = mask.repeat(n, 1)
        out = self.dit(xs, t, cap, msk, first_chunk=0, kv_ranges=[(0, 1)], cache=None, write=False, text=text,
                       rope_first_frame=rope_first, dt=self._dt())  # [n B, C, w, H, W]
        return torch.cat(out.split(b), dim=2)  # [B, C, n w, H, W]

    def _nearly_clean(self, v: torch.Tensor, xm: torch.Tensor, chunks: list[tuple[int, float]],
                      state: MagiState) -> torch.Tensor:
        """The distilled model's fix for the oldest chunk while its t is above the threshold."""
        c = self.config
        chunk, t = chunks[0]
        if t <= c.nearly_clean_threshold:
            return v
        w = c.chunk_width
        past = (chunks[-1][0] + 1) * w  # one chunk past the last one, as the reference places the copy
        alone = self._alone(xm[:, :, :w], [(chunk, t)], state.caption, state.mask, text=True, rope_first=past)
        out = v.clone()
        out[:, :, :w] = c.nearly_clean_scale * v[:, :, :w] + (1.0 - c.nearly_clean_scale) * alone
        return out

    @torch.no_grad()
    def commit(self, x0: torch.Tensor, frames: tuple[int, int], state: MagiState) -> None:
        """The finished chunk at ``clean_t`` with the null caption, attending to itself: writes its
        K/V; chunks before it are evicted (no later call attends to them)."""
        w = self.config.chunk_width
        chunk = frames[0] // w
        b = x0.shape[0]
        t = torch.full((b, 1), float(self.config.clean_t), device=self.device)
        self.dit(self.to_model(x0), t, state.null, state.null_mask, first_chunk=chunk,
                 kv_ranges=[(chunk, chunk + 1)], cache=state.kv, write=True, text=False, dt=self._dt())
        state.kv.evict([k for k in state.kv.chunks() if k < chunk])

    def advance(self, x: torch.Tensor, velocity: torch.Tensor, it: Iteration, generator: torch.Generator,
                state: MagiState) -> torch.Tensor:
        """Euler: ``x + (σ' - σ) v`` per frame (MAGI's ``x + (t' - t) v_t``)."""
        step = torch.tensor([sn - s if u else 0.0 for s, sn, u in zip(it.sigma, it.sigma_next, it.update)],
                            dtype=x.dtype, device=x.device).view(1, -1, 1, 1, 1)  # [1, F, 1, 1, 1]
        return x + step * velocity

    @torch.no_grad()
    def probe(self, x: torch.Tensor, it: Iteration, state: MagiState) -> torch.Tensor:
        """Layer 0's gated, normalised input ``[B, F, S, D]``: the patch embedding of ``x`` after the
        first LayerNorm, scaled by ``1 + g_msa`` of its chunk (what SCOPE and TeaCache compare)."""
        dit, cfg = self.dit, self.dit.cfg
        chunks = self._chunks(it, it.frames)
        t = torch.tensor([[tc for _, tc in chunks]] * x.shape[0], dtype=torch.float32, device=self.device)  # [B, n]
        xs = self.to_model(x).float() * cfg.x_rescale_factor  # [B, C, F, H, W]
        if cfg.half_channel_vae:
            xs = torch.cat([xs, xs], dim=1)
        tokens = torch.nn.functional.conv3d(xs, dit.x_embedder.weight.float(), stride=dit.x_embedder.stride)
        b, d, f, h, w = tokens.shape  # [B, D, F, h, w]
        layer = dit.videodit_blocks.layers[0]
        a = layer.self_attention.linear_qkv.layer_norm(tokens.flatten(2).transpose(1, 2))  # [B, S, D]
        cond = dit.t_embedder(t) + dit.y_embedder.adaln(True)  # [B, n, Dc]
        if self._dt() is not None:
            cond = cond + dit.t_embedder(torch.full_like(t, self._dt()))
        g_msa = layer.ada_modulate_layer(cond)[..., :d]  # [B, n, D]
        out = a.view(b, len(chunks), -1, d) * (1.0 + g_msa.unsqueeze(2))  # [B, n, S_chunk, D]
        return out.reshape(b, f, h * w, d).float()  # [B, F, S, D]

    # ---- pixels ---------------------------------------------------------------------------------

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, state: MagiState) -> torch.Tensor:
        if self.decoder is None:
            raise ConfigError("magi-1", "decode", True,
                              "False: MAGI-1's own VAE is not implemented; decode the latents elsewhere")
        z = latents.permute(0, 2, 1, 3, 4).float()  # [B, C, T, h, w]
        video = self.decoder.decode_chunk(z, state.vae_cache)  # [B, 3, T, H, W]
        return ((video.permute(0, 2, 1, 3, 4) + 1.0) / 2.0).clamp(0.0, 1.0)  # [B, T, 3, H, W] in [0, 1]

    def measure_quality(self, frames: torch.Tensor, prompts: Sequence[str]) -> list[dict[str, Any]] | None:
        """Quality of decoded clips by the preset's measure (the world's; else None)."""
        if self.preset is None or self.preset.measure_quality is None:
            return None
        return self.preset.measure_quality(frames, prompts, block=self.unit_frames)

    def describe_quality(self, record: dict[str, Any]) -> str | None:
        """One line for a person about a record of :meth:`measure_quality` (None: nothing to say)."""
        if self.preset is None or self.preset.describe_quality is None:
            return None
        return self.preset.describe_quality(record)

    # ---- KV -------------------------------------------------------------------------------------

    def kv_frames(self, state: MagiState) -> tuple[tuple[int, ...], tuple[int, ...], int | None]:
        w = self.config.chunk_width
        return tuple(f for c in state.kv.chunks() for f in range(c * w, (c + 1) * w)), (), None

    def kv_apply(self, state: MagiState, evict: tuple[int, ...], sinks: tuple[int, ...] | None,
                 rope_reset: bool) -> None:
        w = self.config.chunk_width
        state.kv.evict(sorted({f // w for f in evict}))

    def call_flops(self, kind: str, frames: tuple[int, int]) -> float:
        """Estimated FLOPs of one call: 2 x parameters x tokens per pass, plus attention."""
        c = self.dit.cfg
        tok = (frames[1] - frames[0]) * (self.latent_shape[1] // c.patch_size) * (self.latent_shape[2] // c.patch_size)
        params = sum(p.numel() for p in self.dit.parameters())
        passes = 1 if kind == "commit" or self.config.distill else 3
        return passes * 2.0 * params * tok


__all__ = ["MagiAdapter", "MagiConfig", "MagiModelConfig", "MagiState"]
