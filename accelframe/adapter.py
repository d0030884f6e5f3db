"""The adapter contract: one model family behind one denoise + KV interface.

The engine never touches a network directly; it walks ``plan(request)`` and calls the methods
below. ``accelframe.testing.AnalyticAdapter`` is a complete, cheap implementation to read first.
"""

from __future__ import annotations

from typing import Any, Iterable, Protocol, Sequence, runtime_checkable

import attrs
import torch

from accelframe import validators as v
from accelframe.errors import ConfigError
from accelframe.types import Iteration, KVWrite, Request, UnitSpan

# Capabilities an adapter may declare; policies and the pipeline check them before any model call.
KV_CACHE = "kv_cache"  # keeps K/V of committed frames between units
UPDATE_MASK = "update_mask"  # plans expose per-frame update masks and valid intervals
BLOCK_UNITS = "block_units"  # each unit is denoised on its own, one after the other (drafting)
SNAPSHOT = "snapshot"  # snapshot / restore of KV and decode caches
DECODE = "decode"  # decode latents to pixels with a streaming cache
ENCODE = "encode"  # encode pixels to latents (video-to-video streaming)
KV_WINDOW = "kv_window"  # stream-driven eviction, sinks and RoPE reset

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
    c, h, w = adapter.latent_shape
    latent = frame_bytes((c, h, w), getattr(adapter, "dtype", torch.float32))
    ph, pw = tuple(getattr(adapter, "pixel_size", None) or (h, w))
    kv = latent if KV_CACHE in getattr(adapter, "capabilities", ()) else 0
    return Limits(latent_frame_bytes=LATENT_COPIES * latent, kv_frame_bytes=kv,
                  pixel_frame_bytes=PIXEL_COPIES * frame_bytes((3, ph, pw)))


def limits_of(adapter: Any) -> Limits:
    """The adapter's declared ``limits``, or :func:`default_limits`."""
    declared = getattr(adapter, "limits", None)
    if declared is None:
        return default_limits(adapter)
    if not isinstance(declared, Limits):
        raise ConfigError(f"adapter {getattr(adapter, 'name', type(adapter).__name__)!r}", "limits",
                          type(declared).__name__, "an accelframe.adapter.Limits, or None")
    return declared


@runtime_checkable
class Adapter(Protocol):
    """What every model family implements. Tensors are ``[B, F, C, H, W]`` latents."""

    name: str
    capabilities: frozenset[str]
    unit_frames: int  # latent frames per unit; stream chunks are multiples of it
    latent_shape: tuple[int, int, int]  # (C, H, W)
    # Optional: ``vae_key``, a string naming the decoder (its config and weights); a drafter whose
    # key differs from its target's is refused, since the target's VAE decodes the drafts.
    # Optional: ``device`` and ``dtype`` of the latents (default CPU, float32). Start noise is
    # drawn on the CPU from the unit's generator and moved, so bits do not depend on the device;
    # ``advance`` gets that CPU generator for re-noising and must do the same.
    # Optional: ``limits``, a :class:`Limits` (frames, batch, frame size, bytes per frame); the
    # pipeline refuses a request beyond them, or beyond the memory they estimate, before any model call.

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

    def snapshot(self, state: Any) -> Any:
        """A checkpoint of the KV and decode caches."""

    def restore(self, state: Any, snap: Any) -> None:
        """Return the caches to a checkpoint taken by ``snapshot``."""

    def decode(self, latents: torch.Tensor, state: Any) -> torch.Tensor:
        """Decode the next latent frames with the streaming decode cache: ``[B, F_pix, 3, H, W]``."""

    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        """Encode pixel frames ``[B, F_pix, 3, H, W]`` to latents ``[B, F, C, H, W]``."""

    def kv_frames(self, state: Any) -> tuple[tuple[int, ...], tuple[int, ...], int | None]:
        """(frames in the KV cache, sink frames, window size or None)."""

    def kv_apply(
        self, state: Any, evict: tuple[int, ...], sinks: tuple[int, ...] | None, rope_reset: bool
    ) -> None:
        """Evict frames from the KV cache, set the sink frames, reset the RoPE offset."""
