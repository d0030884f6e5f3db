"""What the three Wan families share: the models (DiT, VAE, text encoder), their loading, the
per-generation state, and the adapter methods that do not depend on the loop.

A family module (``self_forcing``, ``krea``, ``skyreels_df``) subclasses :class:`WanAdapter` and
adds its knobs, its plan, its ``denoise`` / ``commit`` / ``advance`` and its checkpoint format.
Latents cross the engine boundary as ``[B, F, C, H, W]``; the DiT and the VAE use Wan's
``[B, C, F, H, W]``. Decoded pixels are ``[B, F_pix, 3, H, W]`` in [0, 1].
"""

from __future__ import annotations

import collections
import functools
import hashlib
import warnings
from typing import Any, Sequence

import attrs
import torch

from accelframe import adapter as caps
from accelframe.adapter import LATENT_COPIES, PIXEL_COPIES, Limits, frame_bytes
from accelframe import validators as v
from accelframe.errors import CheckpointError, ConfigError
from accelframe.types import Iteration, Request
from accelframe_adapters import checkpoints as ck
from accelframe_adapters import presets
from accelframe_adapters.compiling import CompileClock, compile_parts
from accelframe_adapters.wan.text import UMT5Encoder, UnknownWordsWarning, WordEncoder
from accelframe_adapters.wan.dit import CrossCache, KVCache, WanDiT, WanDiTConfig, reindex_cache
from accelframe_adapters.wan.vae import WanVAE, WanVAEConfig, load_wan_vae

# "world" / "world-drafter" name presets the embedded world registers (accelframe_adapters.presets)
SIZES = ("world", "world-drafter", "tiny", "1.3B", "14B")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
MAX_SIDE = 4096  # the largest frame side (pixels) a Wan adapter may be configured for


@attrs.frozen(kw_only=True)
class WanModelConfig:
    """Where the weights come from and how big the video is (every family has these knobs)."""

    checkpoint: str | None = None  # DiT weights in the family's format; None: the model `size` names
    # "world" / "world-drafter": the embedded world's trained target / drafter (with its VAE and text
    # encoder); "tiny", "1.3B", "14B": random weights of that size
    size: str = attrs.field(default="world", validator=v.one_of(*SIZES))
    vae: str | None = None  # Wan VAE weights (.pth or diffusers); None: the world VAE for the world
    #                         sizes, else random weights (tiny VAE for size "tiny")
    text_encoder: str = "word"  # "word" (built-in), a word-encoder .safetensors, or a UMT5 folder
    # what turns latents into frames: "vae" (the VAE's own decoder), "tiny" (the preset's tiny decoder in
    # TAEHV's shape, as real-time deployments decode Wan latents), or a tiny-decoder weights file
    decoder: str = attrs.field(default="vae",
                               validator=v.instance_of(str, "'vae', 'tiny' or a tiny-decoder weights file"))
    height: int = attrs.field(default=64, validator=v.number_in(16, MAX_SIDE, integer=True))
    width: int = attrs.field(default=64, validator=v.number_in(16, MAX_SIDE, integer=True))
    device: str = attrs.field(default="cpu", validator=v.device)
    dtype: str = attrs.field(default="float32", validator=v.one_of(*DTYPES))
    init_seed: int = attrs.field(default=0, validator=v.number_in(0, 2**31 - 1, integer=True))
    # torch.compile the DiT's blocks and head and the decoder (accelframe_adapters.compiling): the
    # first calls of each shape compile (seconds to minutes), later ones run the compiled graphs
    compile: bool = attrs.field(default=False, validator=v.boolean)

    def __attrs_post_init__(self) -> None:
        for name in ("height", "width"):
            value = getattr(self, name)
            if value % 16:
                raise ConfigError(type(self).__name__, name, value,
                                  "a multiple of 16 pixels (8x VAE compression times the 2x2 patch)")
            p = self.preset
            if p is not None:
                h, w = p.frame_size
                if value != (h if name == "height" else w):
                    raise ConfigError(type(self).__name__, name, value,
                                      f"{h if name == 'height' else w}: the embedded world's models (size "
                                      f"{self.size!r}) were trained on {h} x {w} clips (pass size='tiny' "
                                      "for random weights of any size)")

    @property
    def world(self) -> bool:
        """Whether the DiT is one of the registered presets' trained models (the embedded world's)."""
        return presets.is_preset("wan", self.size) and self.checkpoint is None

    @property
    def preset(self) -> presets.Preset | None:
        """The registered preset the DiT comes from (None: a checkpoint or random weights)."""
        return presets.preset("wan", self.size) if self.world else None


def detect_format(path: str, sd: dict[str, torch.Tensor], raw_top: set[str] | None = None) -> str:
    """Name the layout of a DiT checkpoint: ``self-forcing`` (.pt with ``generator``),
    ``krea`` (``model.``-prefixed safetensors), ``diffusers`` or ``wan-original``; else raise."""
    if raw_top and raw_top & {"generator", "generator_ema"}:
        return "self-forcing"
    if any(k.startswith("model.blocks.") for k in sd):
        return "krea"
    if any(k.startswith("condition_embedder.") for k in sd):
        return "diffusers"
    if "patch_embedding.weight" in sd and any(k.startswith("blocks.") for k in sd):
        return "wan-original"
    if any(k.startswith(("encoder.", "decoder.")) for k in sd):
        raise CheckpointError(path, "holds a VAE, not a DiT (pass it as vae=...)")
    raise CheckpointError(path, "is not a Wan DiT checkpoint in any known layout (Self-Forcing .pt, Krea "
                                "safetensors, diffusers, original Wan); first keys: "
                                + ", ".join(sorted(sd)[:5]))


ADAPTER_OF_FORMAT = {"self-forcing": "self-forcing", "krea": "krea-realtime", "diffusers": "skyreels-v2-df",
                     "wan-original": "skyreels-v2-df"}


def read_dit_file(path: str, accepts: tuple[str, ...], expected: str) -> tuple[str, dict[str, Any]]:
    """Read a DiT weight file and name its layout; a layout of another family raises, naming the
    adapter that reads it. Returns (layout, everything the file holds)."""
    raw = ck.read_tensors(path)
    tensors = {k: t for k, t in raw.items() if isinstance(t, torch.Tensor)}
    fmt = detect_format(path, tensors, raw_top={k for k, t in raw.items() if isinstance(t, dict)})
    if fmt not in accepts:
        raise CheckpointError(path, f"is a {fmt} checkpoint, not {expected}; load it with the "
                                    f"{ADAPTER_OF_FORMAT[fmt]!r} adapter")
    return fmt, raw


def check_size(path: str, cfg: WanDiTConfig, size: str, family: str) -> None:
    """A checkpoint of another size than asked raises (random-init sizes are named in ``size``)."""
    if size == "tiny" or presets.is_preset("wan", size):
        return  # a small size with a checkpoint means: take the size from the file
    want = WanDiTConfig.wan_1_3b() if size == "1.3B" else WanDiTConfig.wan_14b()
    if (cfg.dim, cfg.num_layers) != (want.dim, want.num_layers):
        tiny = WanDiTConfig.tiny()
        name = "tiny" if (cfg.dim, cfg.num_layers) == (tiny.dim, tiny.num_layers) else cfg.size_name
        raise CheckpointError(path, f"is a {name} model ({cfg.num_layers} layers of dim {cfg.dim}) "
                                    f"but {family} was asked for size {size!r}")


def _copy_family(family: dict[str, Any]) -> dict[str, Any]:
    """A copy of loop state deep enough for snapshots: containers and generators are copied,
    tensors are shared (the adapters replace tensors, never write into them)."""
    def copy(val: Any) -> Any:
        if isinstance(val, collections.deque):
            return collections.deque(val, val.maxlen)
        if isinstance(val, dict):
            return dict(val)
        if isinstance(val, torch.Generator):
            gen = torch.Generator(device=val.device)
            gen.set_state(val.get_state())
            return gen
        return val
    return {k: copy(val) for k, val in family.items()}


@attrs.define(eq=False)
class WanState:
    """Per-generation state of a Wan family adapter."""

    cross: CrossCache
    kv: KVCache | None
    vae_cache: Any
    family: dict[str, Any] = attrs.field(factory=dict)  # loop-specific state (solver, history)


class WanAdapter:
    """Shared Wan machinery; a family subclass sets ``name``, ``family_config`` and the loop."""

    name = "wan"
    config_class: type = object

    @classmethod
    def accelframe_knobs(cls) -> tuple[type, ...]:
        """The keyword arguments it takes: the model's and the family's (accelframe.knobs)."""
        return (WanModelConfig, cls.config_class)

    def __init__(self, **kwargs: Any) -> None:
        model_fields = {f.name for f in attrs.fields(WanModelConfig)}
        self.model_config = WanModelConfig(**{k: kwargs.pop(k) for k in list(kwargs) if k in model_fields})
        self.preset = self.model_config.preset
        if self.preset is not None:  # the knobs measured best with its models (the user's values win)
            kwargs = {**self.preset.defaults.get(self.name, {}), **kwargs}
        self.config = self.config_class(**kwargs)
        mc = self.model_config
        self.device = torch.device(mc.device)
        self.dtype = torch.float32  # latents stay float32; the networks run in model_dtype
        self.model_dtype = DTYPES[mc.dtype]
        self.dit = self._load_dit().to(self.device, self.model_dtype).eval()
        self.vae = self._load_vae().to(self.device).eval()
        self.decoder = self._load_decoder().to(self.device).eval()  # decodes; self.vae encodes
        self.text = self._load_text()
        self.compile_clock = CompileClock()  # seconds spent compiling (compile=True)
        if mc.compile:
            compile_parts(self.dit, self.compile_clock)
            compile_parts(self.decoder, self.compile_clock)
        c = self.dit.cfg
        pt, ph, pw = c.patch_size
        r = self.vae.config.spatial_ratio  # 8 for Wan's VAE (4 for the world's)
        self.latent_shape = (c.in_dim, mc.height // r, mc.width // r)
        if self.latent_shape[1] % ph or self.latent_shape[2] % pw:
            raise ConfigError(type(self).__name__, "height", mc.height,
                              f"a size whose latent grid divides by the patch {c.patch_size}")
        self.tokens_per_frame = (self.latent_shape[1] // ph) * (self.latent_shape[2] // pw)
        self.pixel_size = (mc.height, mc.width)  # the frames decode gives and encode takes
        self.capabilities = frozenset({caps.SNAPSHOT, caps.DECODE, caps.ENCODE}) | self.family_capabilities()

    # ---- models -----------------------------------------------------------------------------------

    def family_capabilities(self) -> frozenset[str]:
        return frozenset()

    @functools.cached_property
    def vae_key(self) -> str:
        """Names the decoder: its config and a fingerprint of its weights (sizes and sums), so that a
        drafter whose decoder differs from its target's is refused (the target's decoder decodes drafts)."""
        h = hashlib.sha1(repr(self.decoder.config).encode())
        with torch.no_grad():
            for name, t in self.decoder.state_dict().items():
                t = t.double()
                h.update(f"{name}{tuple(t.shape)}{t.sum().item():.12e}{t.abs().sum().item():.12e}".encode())
        return f"{type(self.decoder).__name__}(z_dim={self.decoder.config.z_dim}, weights {h.hexdigest()[:12]})"

    def _random_dit(self) -> WanDiT:
        size = self.model_config.size
        cfg = {"tiny": WanDiTConfig.tiny, "1.3B": WanDiTConfig.wan_1_3b, "14B": WanDiTConfig.wan_14b}[size](
            **self.dit_overrides())
        # tiny weights are drawn on the CPU (same bits everywhere); released sizes on the device
        device = torch.device("cpu") if size == "tiny" else self.device
        forked = [device] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=forked), torch.device(device):
            torch.manual_seed(self.model_config.init_seed)
            return WanDiT(cfg)

    def dit_overrides(self) -> dict[str, Any]:
        return {}

    def _preset_file(self, name: str) -> str:
        assert self.preset is not None and self.preset.weights_file is not None
        return self.preset.weights_file(name)

    def _load_dit(self) -> WanDiT:
        path = self.model_config.checkpoint
        if self.preset is not None:
            return self.preset.load(device=self.device, dtype=self.model_dtype)
        if path is None:
            return self._random_dit()
        sd = self.read_checkpoint(path)  # original key names, no prefix
        sizing = ("patch_embedding.weight", "head.head.weight", "blocks.0.ffn.0.weight",
                  "time_embedding.0.weight", "text_embedding.0.weight")
        ck.check_sizing(path, sd, sizing, what="the Wan DiT's sizes")  # present, no empty dimension
        # Shapes give every size but the head count and the text length: take those from a
        # config.json beside the weights (original or diffusers field names); else a file with the
        # tiny config's shapes is the tiny config (so a saved random tiny model loads as itself),
        # and the released sizes fix the head count (WanDiTConfig.from_state_dict). A layer count
        # in config.json wins over the blocks found (missing last blocks are named by fit).
        meta = ck.read_config(path) or {}
        known = {"num_heads": meta.get("num_heads", meta.get("num_attention_heads")),
                 "text_len": meta.get("text_len"), "num_layers": meta.get("num_layers")}
        known = {k: val for k, val in known.items() if isinstance(val, int) and not isinstance(val, bool)}
        for release in (WanDiTConfig.tiny(), WanDiTConfig.wan_1_3b(), WanDiTConfig.wan_14b()):
            if sd["patch_embedding.weight"].shape[0] != release.dim:
                continue
            guess = WanDiTConfig.from_state_dict(sd, num_heads=release.num_heads, text_len=release.text_len)
            if attrs.evolve(guess, num_layers=release.num_layers,
                            inject_sample_info=release.inject_sample_info) != release:
                continue  # not this release's shapes
            if "num_layers" not in known:  # no config says how many: a release's shapes mean the release
                name = "tiny" if release.dim == WanDiTConfig.tiny().dim else f"Wan {release.size_name}"
                ck.check_layer_count(path, guess.num_layers, name, release.num_layers, "blocks.",
                                     hint="a model that has fewer layers needs a config.json beside it "
                                          "with num_layers")
            if guess.num_layers == release.num_layers:  # the release itself: its head count and text length
                known = {"num_heads": release.num_heads, "text_len": release.text_len, **known}
        cfg = WanDiTConfig.from_state_dict(sd, **{**known, **self.dit_overrides()})
        check_size(path, cfg, self.model_config.size, self.name)
        with torch.device("meta"):  # no memory for weights that are overwritten anyway
            dit = WanDiT(cfg)
        dit = dit.to(self.model_dtype).to_empty(device=self.device)
        ck.fit(dit, sd, path, what=f"the {cfg.size_name} Wan DiT of {self.name}")
        return dit

    def read_checkpoint(self, path: str) -> dict[str, torch.Tensor]:
        """The family's checkpoint, mapped to original Wan key names (subclasses override)."""
        raise NotImplementedError

    def _load_vae(self) -> WanVAE:
        path = self.model_config.vae
        z = self.dit.cfg.in_dim
        if path is None and self.preset is not None:
            path = self._preset_file("vae")
        if path is None:
            small = self.model_config.size == "tiny" or presets.is_preset("wan", self.model_config.size)
            cfg = WanVAEConfig.tiny() if z != 16 or small else WanVAEConfig()
            cfg = attrs.evolve(cfg, z_dim=z)
            device = torch.device("cpu") if small else self.device
            with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), torch.device(device):
                torch.manual_seed(self.model_config.init_seed + 1)
                return WanVAE(cfg)
        vae = load_wan_vae(path)
        if vae.config.z_dim != z:
            raise CheckpointError(path, f"is a VAE with {vae.config.z_dim} latent channels; the DiT takes {z}")
        return vae

    def _load_decoder(self) -> Any:
        """The VAE itself (``decoder="vae"``), or a tiny decoder for its latents."""
        from accelframe_adapters.wan.taehv import decoder_for

        world = self._preset_file("decoder") if self.preset is not None else None
        return decoder_for(self.model_config.decoder, self.vae, owner=type(self).__name__, world_file=world)

    def _load_text(self):
        spec, c = self.model_config.text_encoder, self.dit.cfg
        if spec == "word" and self.preset is not None:
            spec = self._preset_file("text")
        if spec == "word" or spec.endswith(".safetensors"):
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.model_config.init_seed + 2)
                enc = WordEncoder(c.text_dim, c.text_len)
            if spec != "word":
                ck.fit(enc, ck.read_tensors(spec), spec, what="the word-level text encoder")
            return enc.to(self.device)
        enc = UMT5Encoder(spec, text_len=c.text_len, device=self.device)
        if enc.text_dim != c.text_dim:
            raise ConfigError(type(self).__name__, "text_encoder", spec,
                              f"a UMT5 with d_model = {c.text_dim} (the DiT's text_dim); it has {enc.text_dim}")
        return enc

    # ---- requests -------------------------------------------------------------------------------

    def latent_frames(self, pixel_frames: int) -> int:
        """Latent frames for a pixel frame count the causal VAE can produce (1 + 4k)."""
        if pixel_frames < 1 or (pixel_frames - 1) % 4:
            b = self.unit_frames
            ok = ", ".join(str(4 * f - 3) for f in range(b, 4 * b + 1, b))
            raise ConfigError(type(self).__name__, "pixel_frames", pixel_frames,
                              f"1 + 4k frames (the causal VAE makes 1 frame from the first latent and 4 "
                              f"from each later one); with units of {b} latent frames: {ok}, ...")
        return 1 + (pixel_frames - 1) // 4

    def pixel_frames(self, latent_frames: int) -> int:
        return 1 + 4 * (latent_frames - 1)

    def kv_window_frames(self) -> int | None:
        """The most latent frames the family's KV cache holds (None: every frame so far)."""
        return None

    @functools.cached_property
    def limits(self) -> Limits:
        """Frame positions (the RoPE table, or the world's trained clips, for a family whose positions
        grow with the video), frame size, and bytes per frame: latents, K/V of every layer, pixels."""
        c = self.dit.cfg
        if self.preset is not None:
            positions = self.world_frame_limit(self.preset.latent_frames)
        else:
            positions = self.world_frame_limit(c.rope_max_len)
        kv = 0 if self.new_kv() is None else frame_bytes((2, c.num_layers, self.tokens_per_frame, c.dim),
                                                          self.model_dtype)
        return Limits(max_frames=positions if positions < 1 << 30 else None,
                      max_height=MAX_SIDE, max_width=MAX_SIDE,
                      latent_frame_bytes=LATENT_COPIES * frame_bytes(self.latent_shape, self.dtype),
                      kv_frame_bytes=kv, kv_frames=self.kv_window_frames(),
                      pixel_frame_bytes=PIXEL_COPIES * frame_bytes((3, *self.pixel_size)))

    def world_frame_limit(self, trained: int) -> int:
        """The last latent frame (exclusive) a request may reach with the world's models: the RoPE
        positions they were trained on (a family whose positions restart may allow more)."""
        return trained

    def validate(self, request: Request) -> None:
        if isinstance(self.text, WordEncoder):
            for prompt in request.prompts:
                unknown = self.text.unknown_words(prompt)
                if unknown:
                    warnings.warn(UnknownWordsWarning(prompt, unknown, self.text.vocab), stacklevel=3)
        if self.preset is not None:
            trained = self.preset.latent_frames
            end = request.first_frame + request.num_frames - request.rope_offset  # RoPE positions
            if end > self.world_frame_limit(trained):
                room = self.world_frame_limit(trained) - request.first_frame + request.rope_offset
                raise ConfigError("Request", "num_frames", request.num_frames,
                                  f"at most {room} "
                                  f"latent frames from frame {request.first_frame}: the embedded world's models were "
                                  f"trained on clips of {trained} latent frames "
                                  f"({self.pixel_frames(trained)} pixel frames)")
        if request.init_latents is not None:
            want = (request.batch, request.num_frames, *self.latent_shape)
            if tuple(request.init_latents.shape) != want:
                raise ConfigError("Request", "init_latents", tuple(request.init_latents.shape),
                                  f"a tensor of shape {want}")

    # ---- conditioning and state -----------------------------------------------------------------

    @torch.no_grad()
    def encode_prompt(self, prompts: Sequence[str]) -> CrossCache:
        states = self.text(list(prompts)).to(self.device, self.model_dtype)  # [B, L, text_dim]
        return self.dit.cross_cache(states)

    def new_kv(self) -> KVCache | None:
        return None

    def init_state(self, request: Request, cond: CrossCache) -> WanState:
        return WanState(cross=cond, kv=self.new_kv(), vae_cache=self.decoder.new_decode_cache())

    def snapshot(self, state: WanState) -> dict[str, Any]:
        return {"kv": state.kv.snapshot() if state.kv is not None else None,
                "vae": self.decoder.snapshot(state.vae_cache), "family": self.family_snapshot(state)}

    def restore(self, state: WanState, snap: dict[str, Any]) -> None:
        if state.kv is not None:
            state.kv.restore(snap["kv"])
        self.decoder.restore(state.vae_cache, snap["vae"])
        self.family_restore(state, snap["family"])

    def family_snapshot(self, state: WanState) -> Any:
        return _copy_family(state.family)

    def family_restore(self, state: WanState, snap: Any) -> None:
        state.family = _copy_family(snap)  # the snapshot stays reusable

    # ---- the network ----------------------------------------------------------------------------

    # model timestep of a level where it is not 1000 σ (grid-snapped, integer, "not started" 999)
    _t_of: dict[float, float] = {}

    def timesteps(self, it: Iteration, frames: tuple[int, int]) -> torch.Tensor:
        """Wan timesteps ``[F]`` the model sees for the frames ``frames`` of the call ``it``."""
        s0 = it.frames[0]
        sig = it.sigma[frames[0] - s0:frames[1] - s0]
        return torch.tensor([self._t_of.get(s, 1000.0 * s) for s in sig], dtype=torch.float32,
                            device=self.device)

    def to_model(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(0, 2, 1, 3, 4).to(self.model_dtype)  # [B, F, C, H, W] -> [B, C, F, H, W]

    def from_model(self, y: torch.Tensor) -> torch.Tensor:
        return y.permute(0, 2, 1, 3, 4).float()  # [B, C, F, H, W] -> [B, F, C, H, W]

    @torch.no_grad()
    def probe(self, x: torch.Tensor, it: Iteration, state: WanState) -> torch.Tensor:
        t = self.timesteps(it, it.frames).expand(x.shape[0], -1)  # [B, F]
        return self.dit.probe(self.to_model(x), t, fps=self._fps()).float()  # [B, F, S, D]

    def _fps(self) -> int | None:
        """The fps embedding index the family feeds the DiT (None: the DiT has none)."""
        return None

    def call_flops(self, kind: str, frames: tuple[int, int]) -> float:
        """Estimated FLOPs of one model call over ``frames`` (``kind`` ``"denoise"`` or
        ``"commit"``), every DiT pass of it counted (guidance runs two)."""
        n = frames[1] - frames[0]
        ctx = self.attention_frames(frames)
        passes = self.passes(kind)
        return passes * self.dit.cfg.flops(n * self.tokens_per_frame, ctx * self.tokens_per_frame)

    def attention_frames(self, frames: tuple[int, int]) -> int:
        """Frames a call over ``frames`` attends to (its own; families with a KV cache add theirs)."""
        return frames[1] - frames[0]

    def passes(self, kind: str) -> int:
        """DiT passes of one call: two for a guided denoising call."""
        return 2 if kind == "denoise" and getattr(self.config, "guidance_scale", 1.0) > 1.0 else 1

    # ---- pixels ---------------------------------------------------------------------------------

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, state: WanState) -> torch.Tensor:
        video = self.decoder.decode_chunk(latents.permute(0, 2, 1, 3, 4).float(), state.vae_cache)  # [B, 3, T, H, W]
        return ((video.permute(0, 2, 1, 3, 4) + 1.0) / 2.0).clamp(0.0, 1.0)  # [B, T, 3, H, W] in [0, 1]

    @torch.no_grad()
    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        video = frames.permute(0, 2, 1, 3, 4).to(self.device).float() * 2.0 - 1.0  # [B, 3, T, H, W]
        return self.vae.encode(video).permute(0, 2, 1, 3, 4).float()  # [B, F, C, H, W]

    def new_encode_cache(self) -> Any:
        """A streaming encode cache for :meth:`encode_chunk` (one per input stream)."""
        return self.vae.new_encode_cache()

    @torch.no_grad()
    def encode_chunk(self, frames: torch.Tensor, cache: Any) -> torch.Tensor:
        """The next pixel frames of a stream ``[B, P, 3, H, W]`` -> their latents: ``P = 1 + 4k`` for
        the stream's first chunk, ``4k`` after (the causal VAE's streaming encode)."""
        video = frames.permute(0, 2, 1, 3, 4).to(self.device).float() * 2.0 - 1.0  # [B, 3, P, H, W]
        return self.vae.encode_chunk(video, cache).permute(0, 2, 1, 3, 4).float()  # [B, F, C, H, W]

    def measure_quality(self, frames: torch.Tensor, prompts: Sequence[str]) -> list[dict[str, Any]] | None:
        """World quality of decoded clips ``[B, T, 3, H, W]`` (the world's models only; else None):
        one dict per prompt, ``quality`` None when the prompt names no complete scene of the world."""
        if self.preset is None or self.preset.measure_quality is None:
            return None
        return self.preset.measure_quality(frames, prompts)

    def describe_quality(self, record: dict[str, Any]) -> str | None:
        """One line for a person about a record of :meth:`measure_quality` (None: nothing to say)."""
        if self.preset is None or self.preset.describe_quality is None:
            return None
        return self.preset.describe_quality(record)

    # ---- KV management --------------------------------------------------------------------------

    def kv_frames(self, state: WanState) -> tuple[tuple[int, ...], tuple[int, ...], int | None]:
        kv = state.kv
        if kv is None:
            return (), (), None
        return kv.frames, kv.frames[:kv.sinks], kv.window

    def kv_embeddings(self, state: WanState) -> dict[int, torch.Tensor]:
        """Per cached frame, its token-mean K and V in every layer: ``[2 L, B H Dh]`` each (what the
        reference's sink refresh compares)."""
        kv = state.kv
        if kv is None or not kv.frames or kv.k[0] is None:
            return {}
        fc, s = len(kv.frames), kv.tokens_per_frame
        parts = []
        for t in (*kv.k, *kv.v):  # each [B, Fc * S, H, Dh]
            b, _, h, d = t.shape
            parts.append(t.view(b, fc, s, h * d).float().mean(dim=2).permute(1, 0, 2).reshape(fc, -1))
        stacked = torch.stack(parts, dim=1)  # [Fc, 2 L, B H Dh]
        return {f: stacked[i] for i, f in enumerate(kv.frames)}

    def rope_offset(self, state: WanState) -> int:
        return 0 if state.kv is None else state.kv.rope_offset

    def kv_apply(self, state: WanState, evict: tuple[int, ...], sinks: tuple[int, ...] | None,
                 rope_reset: bool) -> None:
        kv = state.kv
        if kv is None:
            return
        kv.evict(evict)
        if sinks is not None:  # sinks lead the cache: move them to the front
            order = [i for i, f in enumerate(kv.frames) if f in sinks]
            order += [i for i, f in enumerate(kv.frames) if f not in sinks]
            kv.keep(order)
            kv.sinks = len([f for f in kv.frames if f in sinks])
        if rope_reset:  # the cached frames move to positions 0 .. n - 1, the next frame follows them
            reindex_cache(self.dit, kv)
            nxt = state.family.get("next_frame", 0)
            kv.rope_offset = nxt - len(kv.frames)


__all__ = ["SIZES", "WanAdapter", "WanModelConfig", "WanState", "check_size", "detect_format",
           "read_dit_file"]
