"""SDVG: speculative decoding for block-autoregressive video, as a BlockPolicy.

Hu and Zhang, "Speculative Decoding for Autoregressive Video Generation" (2026). A small drafter
proposes each block; an image-quality router accepts the draft into the big target's KV cache or
has the target regenerate the block. The engine carries out the protocol (``accelframe.engine``,
``_block``); this module is the router. Per block b:

1. The drafter denoises the block in its own S steps from the same initial noise the target would
   use (noise is fixed by seed and unit), and commits it into its own KV cache whatever the verdict:
   the drafter always conditions on its own drafts.
2. The engine snapshots the target's caches and decodes the draft with the target's VAE.
3. This policy scores the F decoded frames with a frame scorer R(f, p) (a registered scorer: the
   world's reward by default, ImageReward through its plugin) and aggregates them (Eq. 1):

       q_b = min_i R(f_i, p)          aggregation "min" (worst frame, the paper's choice);
                                      "mean" and "quantile" (the q-quantile) are options

   With a batch of several prompts the block is judged by its worst row.
4. Accept iff q_b >= tau, except block 0, which is always regenerated (it sets the scene that every
   later block inherits). On accept the engine commits the draft into the target's KV and emits its
   decoded frames; on reject it restores the decode cache and the target regenerates the block from
   the same noise. Drafter calls and decodes of rejected drafts are counted as wasted.

tau = +inf is the target alone, tau = -inf the drafter alone except block 0. The default tau = -0.7
is the paper's operating point for ImageReward (min-frame, 73 % of blocks accepted there); a
scorer on another scale needs its own, which ``accelframe bench block`` calibrates on training
prompts.

A scorer that raises, or returns scores that are not finite or not ``[B, F_pix]``, makes this
policy raise :class:`ScorerError`: the engine regenerates that block with the target, records the
failure in the trace and statistics, and warns naming the policy (``strict=True`` re-raises).
"""

from __future__ import annotations

import math
from typing import Any, Callable, ClassVar, Sequence

import attrs
import torch

from accelframe import hookimpl
from accelframe.errors import AccelframeError, ConfigError
from accelframe.stream_knobs import StreamKnobs
from accelframe.types import BlockContext, BlockVerdict, Request

AGGREGATIONS = ("min", "mean", "quantile")
DEFAULT_TAU = -0.7  # the paper's operating point (ImageReward, worst frame)
DEFAULT_SCORER = "world-reward"

Scorer = Callable[[torch.Tensor, Sequence[str]], torch.Tensor]


class ScorerError(AccelframeError):
    """A scorer raised, or returned scores that cannot judge a block."""


TAU_ALLOWED = "a number (+inf: target only, -inf: drafter only)"


def _tau(value: Any) -> float:
    try:
        tau = float(value)
    except (TypeError, ValueError):
        raise ConfigError("sdvg", "tau", value, "a number (+inf: target only, -inf: drafter only)") from None
    if math.isnan(tau) or isinstance(value, bool):
        raise ConfigError("sdvg", "tau", value, "a number (+inf: target only, -inf: drafter only)")
    return tau


def aggregate(scores: torch.Tensor, how: str, q: float = 0.1) -> torch.Tensor:
    """Per-row block score of per-frame scores ``[B, F]``: ``[B]`` (Eq. 1 for ``how="min"``)."""
    if how == "min":
        return scores.min(dim=1).values
    if how == "mean":
        return scores.mean(dim=1)
    return torch.quantile(scores.double(), q, dim=1).to(scores.dtype)


def check_scores(scores: Any, frames: torch.Tensor, who: str) -> torch.Tensor:
    """``scores`` as a float tensor ``[B, F_pix]`` for ``frames [B, F_pix, 3, H, W]``, or ScorerError."""
    want = tuple(frames.shape[:2])
    if not isinstance(scores, torch.Tensor):
        raise ScorerError(f"scorer {who} returned {type(scores).__name__}, not a tensor of shape {want}")
    if tuple(scores.shape) != want:
        raise ScorerError(f"scorer {who} returned scores of shape {tuple(scores.shape)}; the block needs "
                          f"one per frame, {want}")
    scores = scores.detach().float().cpu()
    if not bool(torch.isfinite(scores).all()):
        bad = int((~torch.isfinite(scores)).sum())
        raise ScorerError(f"scorer {who} returned {bad} non-finite score(s)")
    return scores


@attrs.define(eq=False, kw_only=True)  # eq=False: pluggy tells plugins apart by identity
class SDVG(StreamKnobs):
    """The reward router; see the module docstring. Build it with ``pipe.use("sdvg", ...)``. A live
    stream may set its own ``tau`` (:mod:`accelframe.stream_knobs`)."""

    live_knobs = ("tau",)

    # checked in __attrs_post_init__; the metadata says what is allowed (accelframe plugins sdvg)
    tau: float = attrs.field(default=DEFAULT_TAU, converter=_tau, metadata={"allowed": TAU_ALLOWED})
    aggregation: str = attrs.field(default="min", metadata={
        "allowed": "one of " + ", ".join(map(repr, AGGREGATIONS))})
    quantile: float = attrs.field(default=0.1, metadata={
        "allowed": "a number in [0, 1] (the quantile taken when aggregation='quantile')"})
    scorer: str | Scorer = attrs.field(default=DEFAULT_SCORER, metadata={
        "allowed": "a registered scorer name or a callable (frames, prompts) -> scores"})
    scorer_kwargs: dict[str, Any] = attrs.field(factory=dict, metadata={
        "allowed": "a dict of keyword arguments of the named scorer (empty for a callable)"})
    name: ClassVar[str] = "sdvg"  # the stack name; not a keyword argument
    _score_fn: Scorer | None = attrs.field(default=None, init=False, repr=False)

    def __attrs_post_init__(self) -> None:
        if self.aggregation not in AGGREGATIONS:
            raise ConfigError("sdvg", "aggregation", self.aggregation, "one of " + ", ".join(AGGREGATIONS))
        if (isinstance(self.quantile, bool) or not isinstance(self.quantile, (int, float))
                or not 0.0 <= self.quantile <= 1.0):
            raise ConfigError("sdvg", "quantile", self.quantile, "a number in [0, 1]")
        if not isinstance(self.scorer_kwargs, dict):  # first: a tensor has no truth value to test
            raise ConfigError("sdvg", "scorer_kwargs", self.scorer_kwargs, "a dict of keyword arguments")
        if isinstance(self.scorer, str):
            if not self.scorer.strip():
                raise ConfigError("sdvg", "scorer", self.scorer, "a registered scorer name or a callable")
        elif callable(self.scorer):
            if self.scorer_kwargs:
                raise ConfigError("sdvg", "scorer_kwargs", self.scorer_kwargs,
                                  "empty when the scorer is given as a callable")
            self._score_fn = self.scorer
        else:
            raise ConfigError("sdvg", "scorer", self.scorer, "a registered scorer name or a callable")

    # ---- set-up (called by the pipeline, before anything runs) ----------------------------------

    def bind(self, *, registry: Any, pipeline: Any = None) -> None:
        """Build the named scorer from the registry: an unknown name or a bad keyword fails here."""
        if self._score_fn is not None:
            return
        from accelframe.pipeline import call_factory

        entry = registry.get("scorer", self.scorer)
        self._score_fn = call_factory(entry.factory, f"scorer {self.scorer!r}", dict(self.scorer_kwargs))

    def check_request(self, request: Request) -> None:
        if not request.decode:
            raise ConfigError("sdvg", "request.decode", request.decode,
                              "True: SDVG scores the decoded frames of every draft")

    @property
    def scorer_name(self) -> str:
        return self.scorer if isinstance(self.scorer, str) else getattr(self.scorer, "__name__",
                                                                        type(self.scorer).__name__)

    # ---- the router -----------------------------------------------------------------------------

    def score(self, frames: torch.Tensor, prompts: Sequence[str]) -> tuple[float, torch.Tensor]:
        """The block score (worst row) and the per-frame scores ``[B, F_pix]`` of decoded frames."""
        if self._score_fn is None:
            raise ScorerError(f"scorer {self.scorer_name!r} is not bound: add the policy with pipe.use(...)")
        try:
            raw = self._score_fn(frames, list(prompts))
        except Exception as exc:  # noqa: BLE001 - any scorer failure regenerates the block
            raise ScorerError(f"scorer {self.scorer_name!r} raised {exc!r}") from exc
        scores = check_scores(raw, frames, repr(self.scorer_name))
        return float(aggregate(scores, self.aggregation, self.quantile).min()), scores

    @hookimpl
    def accelframe_block_early_verdict(self, ctx: BlockContext) -> BlockVerdict | None:
        """Block 0 anchors the scene: it is regenerated whatever its draft, so its draft is neither
        decoded nor scored (the paper's figure 1: blocks 1 to 8 are decoded and scored)."""
        if ctx.unit == 0:
            return BlockVerdict.regenerate(reason="block 0 is always regenerated")
        return None

    @hookimpl
    def accelframe_block_verdict(self, ctx: BlockContext) -> BlockVerdict:
        early = self.accelframe_block_early_verdict(ctx)
        if early is not None:
            return early
        if ctx.draft_frames is None:
            raise ScorerError("the draft was not decoded (request.decode is False): nothing to score")
        q, scores = self.score(ctx.draft_frames, ctx.prompts)
        per_frame = tuple(scores.flatten().tolist())
        tau = self.knob(ctx.generation, "tau")
        if q >= tau:
            return BlockVerdict.accept(q, reason=f"{self.aggregation} score {q:.3f} >= tau {tau:g}",
                                       frame_scores=per_frame)
        return BlockVerdict.regenerate(q, reason=f"{self.aggregation} score {q:.3f} < tau {tau:g}",
                                       frame_scores=per_frame)


def make_sdvg(**kwargs: Any) -> SDVG:
    """``pipe.use("sdvg", tau=-0.7, aggregation="min", scorer="world-reward", scorer_kwargs={})``."""
    return SDVG(**kwargs)


def accept_rate(trace_events: Sequence[dict[str, Any]]) -> float | None:
    """Accepted drafts over routed blocks, block 0 excluded (the paper's accept rate); None without any."""
    routed = [e for e in trace_events if e.get("event") == "block" and e.get("unit") != 0]
    if not routed:
        return None
    return sum(e["verdict"] == "accept" for e in routed) / len(routed)


__all__ = ["AGGREGATIONS", "DEFAULT_SCORER", "DEFAULT_TAU", "SDVG", "ScorerError", "accept_rate", "aggregate",
           "check_scores", "make_sdvg"]
