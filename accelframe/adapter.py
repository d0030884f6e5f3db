"""The adapter contract: one model family behind one denoise + KV interface.

The engine never touches a network directly; it walks ``plan(request)`` and calls the methods
below. ``accelframe.testing.AnalyticAdapter`` is a complete, cheap implementation to read first.
"""

from __future__ import annotations

from typing import Any, Iterable, Protocol, Sequence, runtime_checkable

import torch

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
