"""The values that cross the hook boundary: requests, plan iterations, contexts and decisions.

Everything here is an attrs class: frozen, keyword-only, validated. Tensor fields take no part in
equality or hashing (``eq=False``) and are not shown in reprs. Noise levels are σ in [0, 1]
(σ = 1 pure noise, σ = 0 clean); latents are ``[B, F, C, H, W]``; frame ranges are half-open
``(start, end)`` in absolute latent-frame indices.
"""

from __future__ import annotations

import enum
import functools
import math
from typing import TYPE_CHECKING, Any, Callable

import attrs

from accelframe import validators as v
from accelframe.errors import ConfigError

if TYPE_CHECKING:  # torch loads with the engine, not with the types (the CLI starts without it)
    import torch

# what a drafter conditions on: its own drafts (SDVG) or the emitted units (Pipeline, stack files)
DRAFTER_CONTEXTS = ("own", "emitted")
DRAFTER_CONTEXTS_ALLOWED = ("'own' (the drafter conditions on its own drafts, as in SDVG) or 'emitted' (on the "
                            "emitted units: a rejected draft is replaced in its KV by the target's)")


def _is_tensor(x: Any) -> bool:
    import torch

    return isinstance(x, torch.Tensor)


class Mode(enum.Enum):
    """What one model call does: reuse the last velocity, extrapolate one, or run the model."""

    CACHE = "cache"
    PREDICT = "predict"
    RECOMPUTE = "recompute"


class Role(enum.Enum):
    """What a plan iteration is for: advancing noisy frames, or writing clean context into KV."""

    DENOISE = "denoise"
    COMMIT = "commit"


class KVWrite(enum.Enum):
    """What a model call writes into the KV cache."""

    NONE = "none"  # read only
    SCRATCH = "scratch"  # K/V of noisy frames, visible to this call only
    COMMIT = "commit"  # clean K/V that later units attend to


class ModelRole(enum.Enum):
    """Which model of a pipeline a call belongs to."""

    TARGET = "target"
    DRAFTER = "drafter"


class AppliesTo(enum.Enum):
    """Which model(s) a step policy decides for."""

    TARGET = "target"
    DRAFTER = "drafter"
    BOTH = "both"

    def covers(self, model: ModelRole) -> bool:
        return self is AppliesTo.BOTH or self.value == model.value

    @classmethod
    def _missing_(cls, value: object) -> AppliesTo:
        # policies convert their ``applies_to`` keyword with ``AppliesTo``: a bad value must be a
        # ConfigError naming the field, the value and what is allowed, not a bare ValueError
        raise ConfigError("AppliesTo", "applies_to", value,
                          "one of " + ", ".join(repr(m.value) for m in cls))


class Verdict(enum.Enum):
    """A block policy's answer for a drafted unit."""

    ACCEPT = "accept"
    REGENERATE = "regenerate"


def _tuple_of_str(inst: Any, attribute: Any, value: Any) -> None:
    if not value or not all(isinstance(p, str) and p.strip() for p in value):
        raise ConfigError(
            type(inst).__name__, attribute.name, value, "a non-empty tuple of non-empty strings"
        )


def _prompts(value: Any) -> tuple[Any, ...]:
    """A single prompt string is one prompt, not a tuple of its characters."""
    if isinstance(value, str):
        return (value,)
    try:
        return tuple(value)
    except TypeError:  # not iterable: the validator names it
        return (value,)


# ------------------------------------------------------------------------------------------------
# requests and plans
# ------------------------------------------------------------------------------------------------


# frame counts and indices end up in int64 tensors (positions, masks, sizes): larger ones are refused
# here with a ConfigError instead of overflowing inside torch (adapters set their own, lower limits)
MAX_INDEX = 2**63 - 1


def _optional_tensor(inst: Any, attribute: Any, value: Any) -> None:
    if value is not None and not _is_tensor(value):
        raise ConfigError(type(inst).__name__, attribute.name, value, "None or a torch.Tensor of clean latents")


_optional_tensor.allowed = "None or a torch.Tensor of clean latents"  # type: ignore[attr-defined]


@attrs.frozen(kw_only=True, init=False)
class Request:
    """One generation: prompts (one per batch row), how many latent frames, and the seed.

    ``start_sigma < 1`` with ``init_latents`` is video-to-video: the engine noises the given clean
    latents to ``start_sigma`` and the plan starts there. ``first_frame`` continues a stream whose
    earlier frames are already in the KV cache.

    Every field is a keyword argument; an unknown or missing one is a ConfigError that names it
    (and lists the valid ones, closest first), as is a value outside its range.
    """

    prompts: tuple[str, ...] = attrs.field(converter=_prompts, validator=_tuple_of_str)
    num_frames: int = attrs.field(validator=v.number_in(1, MAX_INDEX, integer=True))
    seed: int = attrs.field(default=0, validator=v.number_in(0, 2**63 - 1, integer=True))
    start_sigma: float = attrs.field(
        default=1.0, validator=v.number_in(0.0, 1.0, lo_open=True)
    )
    first_frame: int = attrs.field(default=0, validator=v.number_in(0, MAX_INDEX, integer=True))
    decode: bool = attrs.field(default=True, validator=v.boolean)
    init_latents: torch.Tensor | None = attrs.field(default=None, eq=False, repr=False,
                                                    validator=_optional_tensor)
    # a stream past a RoPE reset: frame j takes position j - rope_offset (adapters check positions)
    rope_offset: int = attrs.field(default=0, validator=v.number_in(0, MAX_INDEX, integer=True))

    def __init__(self, **kwargs: Any) -> None:
        from accelframe.knobs import check_keywords

        check_keywords("Request", type(self), kwargs)  # unknown / missing keywords: ConfigError
        self.__attrs_init__(**kwargs)  # type: ignore[attr-defined]

    def __attrs_post_init__(self) -> None:
        if self.first_frame + self.num_frames > MAX_INDEX:
            raise ConfigError("Request", "num_frames", self.num_frames,
                              f"first_frame + num_frames <= {MAX_INDEX} (first_frame = {self.first_frame})")

    @property
    def batch(self) -> int:
        return len(self.prompts)


@attrs.frozen(kw_only=True)
class UnitSpan:
    """A unit (block or chunk) and the latent frames ``[start, end)`` it owns."""

    unit: int = attrs.field(validator=v.number_in(0, integer=True))
    start: int = attrs.field(validator=v.number_in(0, integer=True))
    end: int = attrs.field(validator=v.number_in(1, integer=True))

    def __attrs_post_init__(self) -> None:
        if self.end <= self.start:
            raise ConfigError("UnitSpan", "end", self.end, f"an int > start = {self.start}")

    @property
    def frames(self) -> tuple[int, int]:
        return (self.start, self.end)


@attrs.frozen(kw_only=True)
class Iteration:
    """One step of an adapter's plan: one model call over frames ``[start, end)``.

    ``sigma`` and ``sigma_next`` hold one noise level per forwarded frame; ``update`` says which
    frames advance (σ_next < σ). ``unit`` and ``step`` key the call for step policies (a block and
    its step in a block loop; the segment and its iteration in a staircase). ``starts`` lists units
    whose initial noise is drawn before this call; ``finishes`` units that are clean after it.
    ``valid`` is the scheduler's valid interval (staircase schedules), else equal to ``frames``.
    """

    index: int
    unit: int
    step: int
    frames: tuple[int, int] = attrs.field(validator=v.frame_range)
    sigma: tuple[float, ...]
    sigma_next: tuple[float, ...]
    update: tuple[bool, ...]
    role: Role = Role.DENOISE
    kv_write: KVWrite = KVWrite.SCRATCH
    valid: tuple[int, int] | None = None
    units: tuple[int, ...] = ()
    starts: tuple[UnitSpan, ...] = ()
    finishes: tuple[UnitSpan, ...] = ()

    def __attrs_post_init__(self) -> None:
        n = self.frames[1] - self.frames[0]
        for name in ("sigma", "sigma_next", "update"):
            if len(getattr(self, name)) != n:
                raise ConfigError("Iteration", name, getattr(self, name), f"{n} entries, one per frame")
        for s, sn in zip(self.sigma, self.sigma_next):
            if not (0.0 <= sn <= s <= 1.0):
                raise ConfigError(
                    "Iteration", "sigma_next", self.sigma_next,
                    "per-frame levels with 0 <= sigma_next <= sigma <= 1 (noise never increases)",
                )
        if self.valid is not None and not (
            self.valid[0] <= self.frames[0] and self.frames[1] <= self.valid[1]
        ):
            raise ConfigError("Iteration", "valid", self.valid, f"an interval containing {self.frames}")

    @property
    def num_frames(self) -> int:
        return self.frames[1] - self.frames[0]

    @functools.cached_property
    def active(self) -> tuple[int, int] | None:
        """The smallest interval holding every advancing frame, or None when none advances."""
        idx = [i for i, u in enumerate(self.update) if u]
        if not idx:
            return None
        return (self.frames[0] + idx[0], self.frames[0] + idx[-1] + 1)


# ------------------------------------------------------------------------------------------------
# generation lifecycle
# ------------------------------------------------------------------------------------------------


@attrs.frozen(kw_only=True, eq=False)
class GenerationInfo:
    """Passed to the lifecycle hooks: what is about to run (or has run)."""

    generation: int
    request: Request
    adapter: str
    drafter: str | None
    registry: Any = attrs.field(repr=False)


# ------------------------------------------------------------------------------------------------
# step level
# ------------------------------------------------------------------------------------------------


@attrs.frozen(kw_only=True, eq=False)
class CallSite:
    """What every step context of one model in one generation shares (made once, not per call):
    the generation, the model, its adapter's name and unit size (latent frames per unit: a chunk
    policy splits a call's frames into units with it), and how to compute the adapter's probe."""

    generation: int
    model: ModelRole
    adapter: str
    probe: Callable[[torch.Tensor, Iteration], torch.Tensor] = attrs.field(repr=False)
    unit_frames: int = 1


@attrs.frozen(kw_only=True, eq=False)
class StepContext:
    """What a step policy sees before one model call.

    ``x`` is the input of the call, the forwarded frames only, ``[B, F, C, H, W]``. ``probe`` is
    the adapter's cheap pre-forward signal, computed on first access and then kept.
    ``generation``, ``model`` and ``adapter`` come from the call site shared by the model's calls.
    """

    site: CallSite
    iteration: Iteration
    x: torch.Tensor = attrs.field(repr=False)

    @property
    def generation(self) -> int:
        return self.site.generation

    @property
    def model(self) -> ModelRole:
        return self.site.model

    @property
    def adapter(self) -> str:
        return self.site.adapter

    @property
    def unit(self) -> int:
        return self.iteration.unit

    @property
    def step(self) -> int:
        return self.iteration.step

    @property
    def frames(self) -> tuple[int, int]:
        return self.iteration.frames

    @property
    def unit_frames(self) -> int:
        return self.site.unit_frames

    @property
    def sigma(self) -> tuple[float, ...]:
        return self.iteration.sigma

    @property
    def sigma_next(self) -> tuple[float, ...]:
        return self.iteration.sigma_next

    @functools.cached_property
    def probe(self) -> torch.Tensor:
        return self.site.probe(self.x, self.iteration)


def _interval(inst: Any, attribute: Any, value: Any) -> None:
    if value is not None:
        v.frame_range(inst, attribute, value)


@attrs.frozen(kw_only=True, eq=False)
class StepDecision:
    """A step policy's answer: the mode, the velocity for CACHE / PREDICT, and for RECOMPUTE an
    optional compute interval ``[start, end)`` inside the forwarded frames (selective computation).

    A RECOMPUTE with an interval may carry a ``velocity`` as well: a *partial recompute*. The model
    runs on the interval and the given velocity fills the frames outside it (a chunk-wise cache
    reuses some chunks and computes the others). Without it, the interval must hold every
    advancing frame.
    """

    mode: Mode = attrs.field(validator=v.instance_of(Mode, "a Mode"))
    velocity: torch.Tensor | None = attrs.field(default=None, repr=False)
    interval: tuple[int, int] | None = attrs.field(default=None, validator=_interval)
    reason: str = ""

    def __attrs_post_init__(self) -> None:
        if self.mode is Mode.RECOMPUTE:
            if self.velocity is not None and self.interval is None:
                raise ConfigError("StepDecision", "velocity", "a tensor",
                                  "None for RECOMPUTE without a compute interval (a fill for the "
                                  "frames outside an interval otherwise)")
            if self.velocity is not None and not _is_tensor(self.velocity):
                raise ConfigError("StepDecision", "velocity", self.velocity, "a tensor or None")
        else:
            if not _is_tensor(self.velocity):
                raise ConfigError(
                    "StepDecision", "velocity", self.velocity, f"a tensor for {self.mode.name}"
                )
            if self.interval is not None:
                raise ConfigError(
                    "StepDecision", "interval", self.interval, "None unless mode is RECOMPUTE"
                )

    @classmethod
    def recompute(cls, interval: tuple[int, int] | None = None, reason: str = "",
                  fill: torch.Tensor | None = None) -> StepDecision:
        """Run the model (on ``interval`` when given); ``fill`` is the velocity of the frames
        outside the interval (a partial recompute), shaped like the call's input."""
        return cls(mode=Mode.RECOMPUTE, interval=interval, reason=reason, velocity=fill)

    @classmethod
    def cache(cls, velocity: torch.Tensor, reason: str = "") -> StepDecision:
        return cls(mode=Mode.CACHE, velocity=velocity, reason=reason)

    @classmethod
    def predict(cls, velocity: torch.Tensor, reason: str = "") -> StepDecision:
        return cls(mode=Mode.PREDICT, velocity=velocity, reason=reason)


@attrs.frozen(kw_only=True, eq=False)
class ModelCall:
    """One model call, as the ``accelframe_model_call`` wrapper hook sees it.

    ``kind`` is ``"denoise"`` or ``"commit"``; ``run()`` performs the call and returns its output
    (the velocity of the computed frames, or None for a commit pass). ``rows`` is how many rows the
    call runs: a stream batch's batched forward over several rows (of one or more streams) is one
    call; its ``generation``, ``unit``, ``step`` and ``frames`` are its first row's.
    """

    generation: int
    model: ModelRole
    adapter: str
    kind: str
    unit: int
    step: int
    frames: tuple[int, int]
    run: Callable[[], torch.Tensor | None] = attrs.field(repr=False)
    rows: int = 1


# ------------------------------------------------------------------------------------------------
# block level
# ------------------------------------------------------------------------------------------------


@attrs.frozen(kw_only=True, eq=False)
class BlockContext:
    """A drafted unit waiting for its verdict.

    ``draft_latents`` is ``[B, F, C, H, W]``; ``draft_frames`` the decoded pixels
    ``[B, F_pix, 3, H, W]`` (decoded after a snapshot of the target's decode cache), or None when
    the request asked for no decoding.
    """

    generation: int
    unit: int
    frames: tuple[int, int]
    prompts: tuple[str, ...]
    drafter: str
    target: str
    draft_latents: torch.Tensor = attrs.field(repr=False)
    draft_frames: torch.Tensor | None = attrs.field(repr=False)


@attrs.frozen(kw_only=True)
class BlockVerdict:
    """A block policy's answer: accept the draft or regenerate with the target, and the score."""

    verdict: Verdict = attrs.field(validator=v.instance_of(Verdict, "a Verdict"))
    score: float | None = None
    frame_scores: tuple[float, ...] | None = None
    reason: str = ""

    @classmethod
    def accept(cls, score: float | None = None, reason: str = "", **kw: Any) -> BlockVerdict:
        return cls(verdict=Verdict.ACCEPT, score=score, reason=reason, **kw)

    @classmethod
    def regenerate(cls, score: float | None = None, reason: str = "", **kw: Any) -> BlockVerdict:
        return cls(verdict=Verdict.REGENERATE, score=score, reason=reason, **kw)


# ------------------------------------------------------------------------------------------------
# batch / stream level
# ------------------------------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class StreamStatus:
    """One stream as a batch policy sees it. Frame counts are the model's (latent) frames: a frame
    is received once the pixel frames that encode to it have all arrived (the stream loop's
    ``FrameMap``); ``fps`` is the source's pixel rate in latent frames per second. Deadlines and
    arrival times are the pixel frames'."""

    stream: str
    received: int  # latent frames whose pixels arrived so far
    consumed: int  # latent frames already taken into batches
    emitted: int  # latent frames already emitted
    total: int | None  # latent frames the source will deliver, None when unknown
    fps: float  # latent frames per second
    oldest_pending_s: float | None  # arrival time of the oldest pending frame, None if none
    next_deadline_s: float | None
    deadline_s: float | None = None  # the stream's per-frame latency budget (arrival to emission), if any
    # the longest chunk (latent frames, a multiple of the unit) that the adapter can run from the
    # stream's next frame, when it is shorter than the pending frames (its frame positions, a staircase
    # window); None when every pending frame can run as one chunk. A plan over it is refused.
    runnable: int | None = None

    @property
    def pending(self) -> int:
        return self.received - self.consumed

    def bounded(self, frames: int) -> int:
        """``frames``, cut to the stream's remaining frames (once known) and to ``runnable``: the
        longest chunk of at most that many a batch policy may plan for it (pending frames aside)."""
        for bound in (None if self.total is None else self.total - self.consumed, self.runnable):
            if bound is not None:
                frames = min(frames, bound)
        return frames


@attrs.frozen(kw_only=True)
class BatchContext:
    """Everything a batch policy needs to plan the next batch."""

    now_s: float
    streams: tuple[StreamStatus, ...]
    unit_frames: int  # chunk lengths must be a multiple of this
    last_latency_s: float | None


@attrs.frozen(kw_only=True)
class BatchEntry:
    """Run ``frames`` input frames of ``stream`` in this batch."""

    stream: str
    frames: int = attrs.field(validator=v.number_in(1, integer=True))


@attrs.frozen(kw_only=True)
class BatchPlan:
    """The next batch; no entries means wait for more input."""

    entries: tuple[BatchEntry, ...] = attrs.field(converter=tuple)
    reason: str = ""

    @property
    def frames(self) -> int:
        return sum(e.frames for e in self.entries)


@attrs.frozen(kw_only=True)
class KVContext:
    """A stream's KV cache before its next chunk: which latent frames it holds and its sinks.

    ``next_frame`` is the first latent frame of the chunk about to run and ``rope_offset`` the
    cache's RoPE offset (frame ``j`` takes position ``j - rope_offset``). ``embeddings`` maps each
    cached frame to a vector summarising its K/V (the adapter's ``kv_embeddings``; empty when the
    adapter has none), for policies that compare frames (sink refresh)."""

    stream: str
    unit: int
    cached_frames: tuple[int, ...]
    sinks: tuple[int, ...]
    window: int | None
    next_frame: int = 0
    rope_offset: int = 0
    embeddings: dict[int, torch.Tensor] = attrs.field(factory=dict, eq=False, repr=False)


@attrs.frozen(kw_only=True)
class KVAction:
    """Frames to evict, a new sink set (None keeps the current one), and whether to reset RoPE."""

    evict: tuple[int, ...] = attrs.field(default=(), converter=tuple)
    sinks: tuple[int, ...] | None = None
    rope_reset: bool = False
    reason: str = ""


@attrs.frozen(kw_only=True, eq=False)
class NoiseContext:
    """A stream chunk about to be noised for video-to-video: its input pixel frames
    ``[F_pix, 3, H, W]`` in [0, 1] and, when known, the pixel frame just before them
    (``previous``, ``[3, H, W]``) and the chunk's clean latents ``[F, C, H, W]``."""

    stream: str
    unit: int
    frames: torch.Tensor = attrs.field(repr=False)
    default_sigma: float
    previous: torch.Tensor | None = attrs.field(default=None, repr=False)
    latents: torch.Tensor | None = attrs.field(default=None, repr=False)


def finite_number(value: Any) -> bool:
    """True for a finite real number (bools, NaN and infinities are not)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def finite_sigma(value: Any) -> bool:
    """True for a noise level the engine can start a chunk from: a real number in (0, 1]."""
    return finite_number(value) and 0.0 < value <= 1.0
