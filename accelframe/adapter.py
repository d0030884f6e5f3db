"""The adapter contract: one model family behind one denoise + KV interface.

The engine never touches a network directly; it walks ``plan(request)`` and calls the methods of
:class:`Adapter`. What a family may offer beyond them is written as small protocols: those a
capability promises (:data:`FEATURES`: ``decode`` -> :class:`Decoder`, ``encode`` ->
:class:`Encoder`, ``snapshot`` -> :class:`Snapshots`, ``kv_window`` -> :class:`KVWindow`), checked
when a pipeline is built (:func:`check_features`), and those used when present (:class:`PixelFrames`,
:class:`ChunkEncoder`, :class:`RowDenoiser`, ...). Read optional members through the accessors at
the end of this module (``feature(adapter, Decoder)``, ``adapter_device(adapter)``), not with a bare
``getattr``: the defaults live there, once.
``accelframe.testing.AnalyticAdapter`` is a complete, cheap implementation to read first.
"""

from __future__ import annotations

from typing import Any, Iterable, Protocol, Sequence, TypeVar, runtime_checkable

import attrs
import torch

from accelframe import validators as v
from accelframe.errors import ConfigError
from accelframe.types import Iteration, KVWrite, Request, UnitSpan

# Capabilities an adapter may declare; policies and the pipeline check them before any model call.
# The last four promise methods (FEATURES below); the first three describe the plan and the state.
KV_CACHE = "kv_cache"  # keeps K/V of committed frames between units
UPDATE_MASK = "update_mask"  # plans expose per-frame update masks and valid intervals
BLOCK_UNITS = "block_units"  # each unit is denoised on its own, one after the other (drafting)
SNAPSHOT = "snapshot"  # snapshot / restore of KV and decode caches: Snapshots
DECODE = "decode"  # decode latents to pixels with a streaming cache: Decoder
ENCODE = "encode"  # encode pixels to latents (video-to-video streaming): Encoder
KV_WINDOW = "kv_window"  # stream-driven eviction, sinks and RoPE reset: KVWindow

CAPABILITIES = frozenset(
    {KV_CACHE, UPDATE_MASK, BLOCK_UNITS, SNAPSHOT, DECODE, ENCODE, KV_WINDOW}
)

# copies of a request's latents the engine holds at once (latents, a velocity, the next state), and of
# its decoded pixels (the decoded units, then the video they are joined into): the default estimate
LATENT_COPIES = 3
PIXEL_COPIES = 2


def _opt_count(inst: Any, attribute: Any, value: Any) -> None:
    if value is not None:
        v.number_in(1, integer=True)(inst, attribute, value)


@attrs.frozen(kw_only=True)
class Limits:
    """What one adapter can run: an adapter declares it as its ``limits`` attribute (one that declares
    none gets :func:`default_limits`). The pipeline and the stream loop check every request against
    it before anything is allocated (:mod:`accelframe.limits`), and refuse with a
    :class:`~accelframe.errors.LimitError` naming the limit.

    - ``max_frames``: the latent frame positions a request may reach, ``first_frame + num_frames -
      rope_offset`` (a RoPE table's length, the clips a model was trained on); None: no fixed bound.
    - ``max_batch``: prompts in one request; None: memory decides.
    - ``max_height`` / ``max_width``: the largest pixel frame the adapter may be configured for.
    - memory, per batch row: ``latent_frame_bytes`` per latent frame of a request (the engine's
      latents and working copies), ``kv_frame_bytes`` per latent frame held as context (the KV
      cache), of which at most ``kv_frames`` are held (a window; None: every frame so far), and
      ``pixel_frame_bytes`` per decoded pixel frame. Model weights are not counted: they are
      already loaded when a request is checked.
    """

    max_frames: int | None = attrs.field(default=None, validator=_opt_count)
    max_batch: int | None = attrs.field(default=None, validator=_opt_count)
    max_height: int | None = attrs.field(default=None, validator=_opt_count)
    max_width: int | None = attrs.field(default=None, validator=_opt_count)
    latent_frame_bytes: int = attrs.field(default=0, validator=v.number_in(0, integer=True))
    kv_frame_bytes: int = attrs.field(default=0, validator=v.number_in(0, integer=True))
    kv_frames: int | None = attrs.field(default=None, validator=_opt_count)
    pixel_frame_bytes: int = attrs.field(default=0, validator=v.number_in(0, integer=True))

    def request_bytes(self, *, batch: int, frames: int, pixel_frames: int, context_frames: int) -> int:
        """Estimated bytes of a request of ``frames`` latent frames (``pixel_frames`` decoded) whose
        KV cache would hold ``context_frames`` frames without a window."""
        held = context_frames if self.kv_frames is None else min(context_frames, self.kv_frames)
        return batch * (frames * self.latent_frame_bytes + held * self.kv_frame_bytes
                        + pixel_frames * self.pixel_frame_bytes)


def frame_bytes(shape: Sequence[int], dtype: Any = torch.float32) -> int:
    """Bytes of one tensor of ``shape`` in ``dtype``."""
    n = 1
    for d in shape:
        n *= int(d)
    return n * torch.empty((), dtype=dtype).element_size()


def default_limits(adapter: Any) -> Limits:
    """The limits of an adapter that declares none: no fixed bounds, memory from its shapes (the
    latents in its ``dtype``, one latent frame of context per cached frame when it keeps a KV cache,
    float32 pixels of its ``pixel_size``)."""
    latent = frame_bytes(tuple(adapter.latent_shape), adapter_dtype(adapter))
    ph, pw = pixel_size(adapter)
    kv = latent if KV_CACHE in capabilities(adapter) else 0
    return Limits(latent_frame_bytes=LATENT_COPIES * latent, kv_frame_bytes=kv,
                  pixel_frame_bytes=PIXEL_COPIES * frame_bytes((3, ph, pw)))


def limits_of(adapter: Any) -> Limits:
    """The adapter's declared ``limits``, or :func:`default_limits`."""
    declared = getattr(adapter, "limits", None)
    if declared is None:
        return default_limits(adapter)
    if not isinstance(declared, Limits):
        raise ConfigError(f"adapter {adapter_name(adapter)!r}", "limits",
                          type(declared).__name__, "an accelframe.adapter.Limits, or None")
    return declared


@runtime_checkable
class Adapter(Protocol):
    """What every model family implements. Tensors are ``[B, F, C, H, W]`` latents.

    Optional attributes, read through the accessors below: ``vae_key`` (:func:`vae_key`), a string
    naming the decoder (its config and weights), since a drafter whose key differs from its
    target's is refused (the target's VAE decodes the drafts); ``device`` and ``dtype`` of the
    latents (:func:`adapter_device`, :func:`adapter_dtype`: default CPU, float32), where start noise
    is drawn on the CPU from the unit's generator and moved, so bits do not depend on the device,
    and ``advance`` gets that CPU generator for re-noising and must do the same; ``limits``
    (:func:`limits_of`), a :class:`Limits`, and the pipeline refuses a request beyond them, or beyond
    the memory they estimate, before any model call; ``pixel_size`` (:func:`pixel_size`), the
    (height, width) of decoded frames; ``fps`` (:func:`adapter_fps`, default 16), the rate its
    videos are written at. Optional methods are the feature protocols below.
    """

    name: str
    capabilities: frozenset[str]
    unit_frames: int  # latent frames per unit; stream chunks are multiples of it
    latent_shape: tuple[int, int, int]  # (C, H, W)

    def validate(self, request: Request) -> None:
        """Raise a typed error for a request this family cannot run (before any model call)."""

    def units(self, request: Request) -> Sequence[UnitSpan]:
        """The units of the request, in generation order, with the frames each owns."""

    def encode_prompt(self, prompts: Sequence[str]) -> Any:
        """Text conditioning for a batch of prompts."""

    def init_state(self, request: Request, cond: Any) -> Any:
        """Fresh per-generation state: KV cache, cross-attention cache, solver and decode caches."""

    def plan(self, request: Request) -> Iterable[Iteration]:
        """The model calls of the request, in order."""

    def probe(self, x: torch.Tensor, it: Iteration, state: Any) -> torch.Tensor:
        """A cheap pre-forward signal of the call ``it`` on input ``x`` (e.g. a modulated input)."""

    def denoise(
        self, x: torch.Tensor, it: Iteration, frames: tuple[int, int], state: Any, kv_write: KVWrite
    ) -> torch.Tensor:
        """One model call over ``frames`` (the iteration's frames, or a compute interval inside
        them); ``x`` holds exactly those frames. Returns the velocity, same shape as ``x``."""

    def commit(self, x0: torch.Tensor, frames: tuple[int, int], state: Any) -> None:
        """Make clean frames the context of later units (may run the model: a commit pass)."""

    def advance(
        self,
        x: torch.Tensor,
        velocity: torch.Tensor,
        it: Iteration,
        generator: torch.Generator,
        state: Any,
    ) -> torch.Tensor:
        """Move the forwarded frames from ``it.sigma`` to ``it.sigma_next`` (only where
        ``it.update``); ``generator`` is the unit's seeded generator for re-noising."""


# ---- features a capability promises ------------------------------------------------------------


@runtime_checkable
class Snapshots(Protocol):
    """``snapshot``: checkpoints of the KV and decode caches (a block policy's rejected draft is
    undone with them)."""

    def snapshot(self, state: Any) -> Any:
        """A checkpoint of the KV and decode caches."""

    def restore(self, state: Any, snap: Any) -> None:
        """Return the caches to a checkpoint taken by ``snapshot``."""


@runtime_checkable
class Decoder(Protocol):
    """``decode``: latents to pixels with a streaming decode cache."""

    def decode(self, latents: torch.Tensor, state: Any) -> torch.Tensor:
        """Decode the next latent frames with the streaming decode cache: ``[B, F_pix, 3, H, W]``."""


@runtime_checkable
class Encoder(Protocol):
    """``encode``: pixels to latents (video-to-video streaming)."""

    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        """Encode pixel frames ``[B, F_pix, 3, H, W]`` to latents ``[B, F, C, H, W]``."""


@runtime_checkable
class KVWindow(Protocol):
    """``kv_window``: the KV cache as stream policies drive it (eviction, sinks, RoPE reset)."""

    def kv_frames(self, state: Any) -> tuple[tuple[int, ...], tuple[int, ...], int | None]:
        """(frames in the KV cache, sink frames, window size or None)."""

    def kv_apply(
        self, state: Any, evict: tuple[int, ...], sinks: tuple[int, ...] | None, rope_reset: bool
    ) -> None:
        """Evict frames from the KV cache, set the sink frames, reset the RoPE offset (the Wan
        adapters move the cached frames to positions ``0 .. n - 1``, sinks first, and the next
        frame to ``n``, so the context keeps its distances to the frames that follow)."""


# capability name -> the protocol an adapter declaring it must implement (check_features)
FEATURES: dict[str, type] = {SNAPSHOT: Snapshots, DECODE: Decoder, ENCODE: Encoder, KV_WINDOW: KVWindow}


# ---- features used when present (no capability promises them) ----------------------------------


@runtime_checkable
class PixelFrames(Protocol):
    """A temporally compressing VAE: latent and pixel frame counts differ (the causal Wan VAE's
    ``1 + 4 (F - 1)``). Without it one latent frame is one pixel frame."""

    def pixel_frames(self, latent_frames: int) -> int:
        """Pixel frames decoded from ``latent_frames`` latent frames."""

    def latent_frames(self, pixel_frames: int) -> int:
        """Latent frames of ``pixel_frames`` pixel frames; a ConfigError for a count it cannot take."""


@runtime_checkable
class ChunkEncoder(Protocol):
    """Streaming encode: a stream's pixel frames chunk by chunk through a causal encode cache
    (the stream loop prefers it to :class:`Encoder`'s whole-clip ``encode``)."""

    def new_encode_cache(self) -> Any:
        """A fresh encode cache (one per input stream)."""

    def encode_chunk(self, frames: torch.Tensor, cache: Any) -> torch.Tensor:
        """The stream's next pixel frames ``[B, P, 3, H, W]`` -> their latents ``[B, F, C, H, W]``."""


@runtime_checkable
class RowDenoiser(Protocol):
    """Stream batch: one forward over rows of several streams (``stream_batch=True`` needs it)."""

    def denoise_rows(self, xs: torch.Tensor, sigmas: Sequence[float], starts: Sequence[int],
                     states: Sequence[Any]) -> torch.Tensor:
        """Rows ``xs: [R, F, C, H, W]``, row ``r`` a block at level ``sigmas[r]`` starting at frame
        ``starts[r]`` with ``states[r]``'s committed context (read only); the velocities."""


@runtime_checkable
class StageRing(Protocol):
    """Pipeline parallelism: the DiT's blocks split over torch.distributed ranks in a ring
    (``pipe.stream(..., ranks=R)``). ``stage_ring`` joins the process group (RANK, WORLD_SIZE,
    MASTER_ADDR, MASTER_PORT from the environment, as torchrun sets them) and returns the ring:
    ``driver`` (rank 0), ``adapter`` (rank 0's side: this adapter with ``submit_rows`` and its
    commits, KV changes and new states sent down the ring), ``serve()`` (the other ranks: run
    what rank 0 sends until it ends) and ``close()``."""

    def stage_ring(self, ranks: int, *, partition: Sequence[int] | None, timeout_s: float,
                   decode_rank: int | None, rebalance: Any, kv_embeddings: bool) -> Any:
        """Join the ring of ``ranks`` ranks, blocks split by ``partition`` (None: evenly), streams
        decoded on ``decode_rank`` (None: spread over the ranks), the partition rebalanced once
        from measured times (``rebalance``: True, False or the ring's settings); with
        ``kv_embeddings`` rank 0's side offers ``kv_embeddings`` (every block's K/V summarised on the
        rank that holds it)."""


@runtime_checkable
class PromptSwitch(Protocol):
    """A running stream's prompt changes (a live session's prompt box): later calls attend to the
    new prompt, and the self-attention cache of the frames already made is recomputed under it
    (LongLive's KV recache), so the context does not hold the old prompt's conditioning."""

    def switch_prompt(self, state: Any, cond: Any, recache: bool = True) -> int:
        """Condition ``state``'s next calls on ``cond`` (an :meth:`encode_prompt` result) and, with
        ``recache``, recompute its cached context under it. Returns the model calls that took."""


@runtime_checkable
class RopeOffset(Protocol):
    """Where the RoPE positions of a state start (what a rolling cache's reset moves)."""

    def rope_offset(self, state: Any) -> int:
        """The RoPE offset of ``state``; 0 without one."""


@runtime_checkable
class KVEmbeddings(Protocol):
    """A summary vector per cached frame, for policies that choose sinks by similarity."""

    def kv_embeddings(self, state: Any) -> dict[int, torch.Tensor]:
        """Per cached frame, an embedding of its K/V."""


@runtime_checkable
class QualityMeter(Protocol):
    """A quality measure of decoded clips that the adapter knows how to take (the world's models)."""

    def measure_quality(self, frames: torch.Tensor, prompts: Sequence[str]) -> list[dict[str, Any]] | None:
        """One dict per prompt for clips ``[B, T, 3, H, W]``, or None when it has no measure."""


@runtime_checkable
class QualityDescriber(Protocol):
    """Words for a :class:`QualityMeter` record: the record's fields are the adapter's measure's,
    so the adapter, not the core, says what they mean (``accelframe generate`` prints the line)."""

    def describe_quality(self, record: dict[str, Any]) -> str | None:
        """One line for a person about one record of ``measure_quality`` (None: nothing to say)."""


# ---- accessors: how the core reads optional members ---------------------------------------------

_F = TypeVar("_F")

_MEMBERS: dict[type, tuple[str, ...]] = {}


def members(protocol: type) -> tuple[str, ...]:
    """The method names a feature protocol defines, in the order written."""
    found = _MEMBERS.get(protocol)
    if found is None:
        found = tuple(n for n, v in vars(protocol).items() if not n.startswith("_") and callable(v))
        _MEMBERS[protocol] = found
    return found


def feature(adapter: Any, protocol: type[_F]) -> _F | None:
    """``adapter`` when it has every method of ``protocol`` (a feature protocol above), else None::

        dec = feature(adapter, Decoder)
        if dec is not None:
            pixels = dec.decode(latents, state)
    """
    ok = all(callable(getattr(adapter, m, None)) for m in members(protocol))
    return adapter if ok else None


def check_features(adapter: Any, name: str | None = None) -> None:
    """Every capability the adapter declares that promises methods (:data:`FEATURES`) has them;
    else a ConfigError naming the adapter, the capability and the missing method. The pipeline
    runs it for its target and its drafter when it is built, so that a policy relying on a
    capability never meets a missing method halfway through a generation."""
    for cap in sorted(capabilities(adapter) & FEATURES.keys()):
        protocol = FEATURES[cap]
        missing = [m for m in members(protocol) if not callable(getattr(adapter, m, None))]
        if missing:
            raise ConfigError(f"adapter {name or adapter_name(adapter)!r}", "capabilities", cap,
                              f"capabilities whose methods it has: {cap!r} promises "
                              f"{', '.join(m + '()' for m in members(protocol))} "
                              f"(accelframe.adapter.{protocol.__name__}), and it lacks "
                              f"{', '.join(m + '()' for m in missing)}")


def adapter_name(adapter: Any) -> str:
    """Its ``name``, else its class name."""
    return getattr(adapter, "name", None) or type(adapter).__name__


def capabilities(adapter: Any) -> frozenset[str]:
    """The capability names it declares (none when it declares none)."""
    return frozenset(getattr(adapter, "capabilities", ()))


def adapter_device(adapter: Any) -> Any:
    """The device of its latents (``torch.device`` or a name): its ``device``, else the CPU."""
    declared = getattr(adapter, "device", None)
    return declared if declared is not None else "cpu"


def adapter_dtype(adapter: Any) -> torch.dtype:
    """The dtype of its latents: its ``dtype``, else float32."""
    declared = getattr(adapter, "dtype", None)
    return declared if declared is not None else torch.float32


def vae_key(adapter: Any) -> str | None:
    """The key naming its decoder (config and weights), or None when it names none."""
    return getattr(adapter, "vae_key", None)


def pixel_size(adapter: Any) -> tuple[int, int]:
    """(height, width) of its decoded frames: its ``pixel_size``, else its latent grid."""
    declared = getattr(adapter, "pixel_size", None)
    return tuple(declared) if declared else tuple(adapter.latent_shape[1:])


def pixel_frames(adapter: Any, latents: int) -> int:
    """Pixel frames of ``latents`` latent frames: its ``pixel_frames`` (half of :class:`PixelFrames`,
    enough on its own), else one each."""
    to_pixels = getattr(adapter, "pixel_frames", None)  # one method of PixelFrames suffices here
    if latents <= 0:
        return 0
    return int(to_pixels(latents)) if callable(to_pixels) else latents


def latent_frames(adapter: Any, pixels: int) -> int:
    """Latent frames of ``pixels`` pixel frames: its ``latent_frames`` (half of :class:`PixelFrames`,
    whose ConfigError names the counts its VAE can make), else one each."""
    to_latents = getattr(adapter, "latent_frames", None)  # one method of PixelFrames suffices here
    return int(to_latents(pixels)) if callable(to_latents) else pixels


DEFAULT_FPS = 16  # the Wan family's rate, what a video is written at when the adapter names none


def adapter_fps(adapter: Any) -> int:
    """Frames per second its decoded video plays at: its ``fps``, else :data:`DEFAULT_FPS`."""
    declared = getattr(adapter, "fps", None)
    return int(declared) if declared is not None else DEFAULT_FPS
