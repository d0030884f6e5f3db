"""The engine: walks an adapter's plan and asks the policies at every level.

Every plan iteration runs as a micro-step of one row on the step executor
(:mod:`accelframe.executor`: the step hooks, the model call, observe, advance). For units produced
by a drafter the engine asks the block hooks and accepts (commit the draft into the target's KV,
emit its decoded frames) or regenerates (restore the caches, target from the same initial noise).
Every decision and call goes into the trace.
"""

from __future__ import annotations

import itertools
from typing import Any, Callable, Iterable, Iterator

import attrs
import torch

from accelframe.adapter import Adapter, adapter_device, adapter_dtype
from accelframe.errors import IncompatibleError
from accelframe.executor import Executor, ModelSlot, Row
from accelframe.plugins import Hooks
from accelframe.trace import Stats, Trace
from accelframe.types import (
    BlockContext,
    GenerationInfo,
    Iteration,
    ModelRole,
    Request,
    Role,
    UnitSpan,
    Verdict,
)



@attrs.frozen(kw_only=True, eq=False)
class Result:
    """What a generation returns: latents, decoded frames, the trace and the statistics."""

    request: Request
    latents: torch.Tensor  # [B, F, C, H, W]
    frames: torch.Tensor | None  # [B, F_pix, 3, H, W], None when not decoded
    trace: Trace
    stats: Stats
    sources: tuple[str, ...]  # per unit: "target" or "draft"

    def to_json(self) -> dict[str, Any]:
        """A JSON-serialisable summary: shapes, statistics and the whole trace."""
        return {
            "request": {"prompts": list(self.request.prompts), "num_frames": self.request.num_frames,
                        "seed": self.request.seed},
            "latents_shape": list(self.latents.shape),
            "frames_shape": None if self.frames is None else list(self.frames.shape),
            "sources": list(self.sources),
            "stats": self.stats.to_dict(),
            "trace": self.trace.events,
        }


def group_by_unit(plan: Iterable[Iteration]) -> Iterator[tuple[int, list[Iteration]]]:
    """Consecutive iterations of a block-unit plan, grouped by the unit they belong to."""
    for unit, its in itertools.groupby(plan, key=lambda it: it.unit):
        yield unit, list(its)


class Engine(Executor):
    """Runs one request (or one chunk of a stream) through a target and an optional drafter: it walks
    the plans and hands each iteration to the step executor as a micro-step of one row."""

    def __init__(
        self,
        hooks: Hooks,
        *,
        target: Adapter,
        target_name: str,
        drafter: Adapter | None = None,
        drafter_name: str | None = None,
        strict: bool = False,
        generation: int = 0,
        stream: int = 0,
        trace: bool | Trace = True,
        registry: Any = None,
        max_reuse: int | None = None,
        on_unit: Callable[[UnitSpan, torch.Tensor | None, str], None] | None = None,
        drafter_context: str = "own",
    ) -> None:
        # a Trace object is recorded into (a stream's one trace over its chunks); a bool says
        # whether this engine keeps a trace of its own
        super().__init__(hooks, trace=trace if isinstance(trace, Trace) else Trace(enabled=trace),
                         stats=Stats(adapters={ModelRole.TARGET.value: target_name,
                                               ModelRole.DRAFTER.value: drafter_name}),
                         strict=strict, max_reuse=max_reuse, stream=stream, on_emit=self._emitted)
        self.drafter_context = drafter_context
        self.target, self.target_name = target, target_name
        self.drafter, self.drafter_name = drafter, drafter_name
        self.generation = generation
        self.registry = registry
        self.on_unit = on_unit
        self._decoded: list[torch.Tensor] = []
        self._sources: list[str] = []
        # the models' states after ``run``: a stream continues from them
        self.target_state: Any = None
        self.drafter_state: Any = None

    # ---- entry point ----------------------------------------------------------------------------

    def run(
        self,
        request: Request,
        *,
        target_state: Any = None,
        drafter_state: Any = None,
        lifecycle: bool = True,
    ) -> Result:
        """Generate ``request``; states may be passed in to continue a stream's caches."""
        info = GenerationInfo(generation=self.generation, request=request,
                              adapter=self.target_name, drafter=self.drafter_name,
                              registry=self.registry)
        target = self._slot(ModelRole.TARGET, self.target_name, self.target, request, target_state)
        drafter = None
        if self.drafter is not None:
            drafter = self._slot(ModelRole.DRAFTER, self.drafter_name or "drafter", self.drafter,
                                 request, drafter_state)
        if lifecycle:
            for err in self.hooks.generation_start(info):
                self._failed(err.hook, err.plugin, repr(err.error), err.error, fallback_used=False)
        try:
            if drafter is None:
                for it in self.target.plan(request):
                    self._iteration(target, it, request)
                    for span in it.finishes:
                        self.emit(target, span, decode=request.decode, source="target")
            else:
                self._run_drafted(target, drafter, request)
        finally:
            self.stats.finish()
            if lifecycle and self.hooks.implemented("accelframe_generation_end"):
                for err in self.hooks.generation_end(info, self.stats.to_dict()):
                    self._failed(err.hook, err.plugin, repr(err.error), err.error,
                                 fallback_used=False)
        frames = torch.cat(self._decoded, dim=1) if self._decoded else None
        self.target_state = target.state
        self.drafter_state = drafter.state if drafter is not None else None
        return Result(request=request, latents=target.x, frames=frames, trace=self.trace,
                      stats=self.stats, sources=tuple(self._sources))

    def _slot(self, role: ModelRole, name: str, adapter: Adapter, request: Request,
              state: Any) -> ModelSlot:
        if state is None:
            state = adapter.init_state(request, adapter.encode_prompt(request.prompts))
        c, h, w = adapter.latent_shape
        x = torch.zeros(request.batch, request.num_frames, c, h, w, device=adapter_device(adapter),
                        dtype=adapter_dtype(adapter))  # [B, F, C, H, W]
        return self.slot(role, name, adapter, state, x, request.first_frame, self.generation)

    # ---- block level ----------------------------------------------------------------------------

    def _run_drafted(self, target: ModelSlot, drafter: ModelSlot, request: Request) -> None:
        t_groups = group_by_unit(self.target.plan(request))
        d_groups = group_by_unit(drafter.adapter.plan(request))
        for (unit, t_its), (d_unit, d_its) in itertools.zip_longest(
            t_groups, d_groups, fillvalue=(None, None)
        ):
            if unit is None or unit != d_unit:
                raise IncompatibleError(
                    f"drafter {drafter.name!r} and target {target.name!r} plan different units "
                    f"({d_unit} against {unit}); block policies need the same unit sequence"
                )
            spans = [s for it in t_its for s in it.finishes]
            if len(spans) != 1 or spans[0].unit != unit:
                raise IncompatibleError(
                    f"adapter {target.name!r} does not denoise unit {unit} on its own; "
                    "block policies need a plan that finishes one unit at a time"
                )
            self._block(target, drafter, request, unit, spans[0], t_its, d_its)

    def _block(self, target: ModelSlot, drafter: ModelSlot, request: Request, unit: int,
               span: UnitSpan, t_its: list[Iteration], d_its: list[Iteration]) -> None:
        drafter_calls = 0
        d_snap = None  # the drafter's state before it commits its draft ("emitted" context only)
        for it in d_its:  # the drafter drafts, and commits its own draft into its own KV
            if it.role is Role.COMMIT and d_snap is None and self.drafter_context == "emitted":
                d_snap = drafter.adapter.snapshot(drafter.state)
            drafter_calls += it.role is Role.DENOISE
            self._iteration(drafter, it, request)
        a, b = span.start - drafter.offset, span.end - drafter.offset
        draft = drafter.x[:, a:b]  # [B, F_unit, C, H, W]
        snap = self.target.snapshot(target.state) if request.decode else None
        draft_frames = self.decode(target, draft) if request.decode else None
        ctx = BlockContext(generation=self.generation, unit=unit, frames=span.frames,
                           prompts=request.prompts, drafter=drafter.name, target=target.name,
                           draft_latents=draft, draft_frames=draft_frames)
        verdict = self.judge(ctx, drafter_calls=drafter_calls, decoded=request.decode)
        if verdict.verdict is Verdict.ACCEPT:
            target.x[:, span.start - target.offset:span.end - target.offset] = draft
            for it in t_its:  # commit the draft into the target's KV; no denoising
                if it.role is Role.COMMIT:
                    self._iteration(target, it, request)
            self.record_emit(span, draft_frames, "draft")
        else:
            if request.decode:
                self.target.restore(target.state, snap)
            for it in t_its:
                self._iteration(target, it, request)
            self.emit(target, span, decode=request.decode, source="target")
            if d_snap is not None:
                self._recommit_drafter(drafter, target, span, d_its, d_snap, request)
        self.block_observe(ctx, verdict)

    def _recommit_drafter(self, drafter: ModelSlot, target: ModelSlot, span: UnitSpan,
                          d_its: list[Iteration], d_snap: Any, request: Request) -> None:
        """``drafter_context="emitted"``: the drafter's KV takes the emitted (target's) unit instead
        of its rejected draft, so its next draft continues the video that was emitted."""
        drafter.adapter.restore(drafter.state, d_snap)
        a, b = span.start - drafter.offset, span.end - drafter.offset
        drafter.x[:, a:b] = target.x[:, span.start - target.offset:span.end - target.offset]
        for it in d_its:
            if it.role is Role.COMMIT:
                self._iteration(drafter, it, request)
        self.stats.blocks["drafter_recommits"] += 1

    # ---- step level -----------------------------------------------------------------------------

    def _iteration(self, m: ModelSlot, it: Iteration, request: Request) -> None:
        """One plan iteration: a micro-step of one row."""
        self.micro_step((Row(m, it, request),))

    def _emitted(self, span: UnitSpan, pixels: torch.Tensor | None, source: str) -> None:
        if pixels is not None:
            self._decoded.append(pixels)
        self._sources.append(source)
        if self.on_unit is not None:
            self.on_unit(span, pixels, source)


__all__ = ["Engine", "ModelSlot", "Result", "group_by_unit"]
