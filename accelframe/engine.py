"""The engine: walks an adapter's plan and asks the policies at every level.

At every denoising call it asks the step hooks (cache / predict / recompute, optionally on a
compute interval); for units produced by a drafter it asks the block hooks and accepts (commit the
draft into the target's KV, emit its decoded frames) or regenerates (restore the caches, target
from the same initial noise). Every decision and call goes into the trace. A policy that raises or
answers nonsense is answered by the exact path (``accelframe.fallback``), recorded, and named in a
warning; ``strict=True`` re-raises as :class:`~accelframe.errors.PolicyError`.
"""

from __future__ import annotations

import itertools
import time
from typing import Any, Callable, Iterable, Iterator

import attrs
import torch

from accelframe import fallback
from accelframe.adapter import Adapter, adapter_device, adapter_dtype
from accelframe.errors import IncompatibleError
from accelframe.plugins import EXACT, HookRaised, Hooks
from accelframe.rng import unit_generator
from accelframe.trace import Stats, Trace
from accelframe.types import (
    BlockContext,
    CallSite,
    BlockVerdict,
    GenerationInfo,
    Iteration,
    Mode,
    ModelCall,
    ModelRole,
    Request,
    Role,
    StepContext,
    StepDecision,
    UnitSpan,
    Verdict,
    finite_number,
)

perf = time.perf_counter
_MODE_COUNT = {Mode.RECOMPUTE: "computed", Mode.CACHE: "cached", Mode.PREDICT: "predicted"}
_MODE_NAME = {m: m.value for m in Mode}


@attrs.define(eq=False)
class ModelSlot:
    """One model of a generation: its adapter, its state and its latent buffer."""

    role: ModelRole
    name: str
    adapter: Adapter
    state: Any
    x: torch.Tensor  # [B, F, C, H, W], frames [offset, offset + F)
    offset: int
    impls: tuple[Any, Any] = (None, [])  # (decide list or None when only exact, observe list)
    counts: dict[str, int] = attrs.field(factory=dict)  # this model's call counters in Stats
    key: str = ""  # role.value, precomputed for the trace
    site: Any = None  # the CallSite its step contexts share
    gens: dict[int, torch.Generator] = attrs.field(factory=dict)


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


class Engine:
    """Runs one request (or one chunk of a stream) through a target and an optional drafter."""

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
        self.hooks = hooks
        self.drafter_context = drafter_context
        self.target, self.target_name = target, target_name
        self.drafter, self.drafter_name = drafter, drafter_name
        self.strict = strict
        self.generation = generation
        self.stream = stream
        # a Trace object is recorded into (a stream's one trace over its chunks); a bool says
        # whether this engine keeps a trace of its own
        self.trace = trace if isinstance(trace, Trace) else Trace(enabled=trace)
        self.stats = Stats(adapters={ModelRole.TARGET.value: target_name,
                                     ModelRole.DRAFTER.value: drafter_name})
        self.registry = registry
        self.on_unit = on_unit
        self.max_reuse = max_reuse
        self._reuse: dict[str, int] = {}  # model -> consecutive non-recompute calls
        self.warned: set[tuple[str, str]] = set()  # (plugin, hook) pairs warned about
        self._wrapped = hooks.wraps_model_calls
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
        decide, observe = self.hooks.step_impls(role)
        # the exact fallback's answer is known (recompute): asking it is left to the engine
        decide = [impl for impl in decide if impl[2] != EXACT] or None
        m = ModelSlot(role=role, name=name, adapter=adapter, state=state, x=x,
                      offset=request.first_frame, impls=(decide, observe),
                      counts=self.stats.calls[role.value], key=role.value)
        m.site = CallSite(generation=self.generation, model=role, adapter=name,
                          probe=lambda xs, it: self._probe(m, xs, it),
                          unit_frames=int(adapter.unit_frames))
        return m

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
        t0 = perf()
        snap = self.target.snapshot(target.state) if request.decode else None
        draft_frames = self.target.decode(draft, target.state) if request.decode else None
        self.stats.time_s["decode"] += perf() - t0
        ctx = BlockContext(generation=self.generation, unit=unit, frames=span.frames,
                           prompts=request.prompts, drafter=drafter.name, target=target.name,
                           draft_latents=draft, draft_frames=draft_frames)
        t0 = perf()
        verdict, by = self._verdict(ctx)
        self.stats.time_s["block"] += perf() - t0
        self.trace.add("block", model="drafter", unit=unit, frames=list(span.frames),
                       verdict=verdict.verdict.value, score=verdict.score, by=by,
                       reason=verdict.reason, frame_scores=_frame_scores(verdict))
        if verdict.verdict is Verdict.ACCEPT:
            self.stats.blocks["accepted"] += 1
            target.x[:, span.start - target.offset:span.end - target.offset] = draft
            for it in t_its:  # commit the draft into the target's KV; no denoising
                if it.role is Role.COMMIT:
                    self._iteration(target, it, request)
            self._record_emit(span, draft_frames, "draft")
        else:
            self.stats.blocks["regenerated"] += 1
            self.stats.blocks["drafter_calls_wasted"] += drafter_calls
            if request.decode:
                self.stats.blocks["decodes_wasted"] += 1
                self.target.restore(target.state, snap)
            for it in t_its:
                self._iteration(target, it, request)
            self.emit(target, span, decode=request.decode, source="target")
            if d_snap is not None:
                self._recommit_drafter(drafter, target, span, d_its, d_snap, request)
        for err in self.hooks.block_observe(ctx, verdict):
            self._failed(err.hook, err.plugin, repr(err.error), err.error, fallback_used=False)

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

    def _verdict(self, ctx: BlockContext) -> tuple[BlockVerdict, str]:
        hook = "accelframe_block_verdict"
        try:
            verdict, by = self.hooks.block_verdict(ctx)
        except HookRaised as err:
            self._failed(hook, err.plugin, repr(err.error), err.error)
            return fallback.REGENERATE, EXACT
        if not isinstance(verdict, BlockVerdict):
            self._failed(hook, by, f"returned {verdict!r}, not a BlockVerdict")
            return fallback.REGENERATE, EXACT
        if verdict.score is not None and not finite_number(verdict.score):
            self._failed(hook, by, f"returned a non-finite score {verdict.score!r}")
            return fallback.REGENERATE, EXACT
        return verdict, by

    # ---- step level -----------------------------------------------------------------------------

    def _iteration(self, m: ModelSlot, it: Iteration, request: Request) -> None:
        """One plan iteration: ask the step hooks, run or reuse, observe, advance. Hot path."""
        if it.starts:
            for span in it.starts:
                self._start_unit(m, span, request)
        s, e = it.frames
        xs = m.x[:, s - m.offset:e - m.offset]  # [B, F_it, C, H, W], a view
        if it.role is Role.COMMIT:
            self.commit(m, xs, it.frames, unit=it.unit, step=it.step)
            return
        decide, observe = m.impls
        t0 = perf()
        ctx = None
        if decide is None:  # no step policy applies to this model: the exact answer
            decision, by = fallback.RECOMPUTE, EXACT
        else:
            ctx = StepContext(site=m.site, iteration=it, x=xs)
            decision, by = self._decide(ctx, decide, m.key)
        t1 = perf()
        mode, interval = decision.mode, decision.interval
        if mode is Mode.RECOMPUTE:
            velocity = self._call(m, it, xs, interval or it.frames)
            if decision.velocity is not None:  # a partial recompute: the fill outside the interval
                velocity = _filled(velocity, decision.velocity, interval, it.frames[0])
        else:
            velocity = decision.velocity
        t2 = perf()
        if observe:
            if ctx is None:
                ctx = StepContext(site=m.site, iteration=it, x=xs)
            for err in self.hooks.step_observe(observe, ctx, decision, velocity):
                self._failed(err.hook, err.plugin, repr(err.error), err.error,
                             fallback_used=False)
        t3 = perf()
        gen = m.gens.get(it.unit)
        if gen is None:
            gen = self._gen(m, it.unit, request)
        m.x[:, s - m.offset:e - m.offset] = m.adapter.advance(xs, velocity, it, gen, m.state)
        t4 = perf()
        st = self.stats.time_s
        st["policy"] += (t1 - t0) + (t3 - t2)
        st["model"] += t2 - t1
        st["advance"] += t4 - t3
        counts = m.counts
        if mode is Mode.RECOMPUTE:
            counts["computed"] += 1
            counts["frames_computed"] += (interval[1] - interval[0]) if interval else e - s
            if decision.velocity is not None:
                counts["frames_reused"] += (e - s) - (interval[1] - interval[0])
        else:
            counts[_MODE_COUNT[mode]] += 1
        self.trace.step(m.key, it.unit, it.step, it.index, it.frames, _MODE_NAME[mode],
                        (interval or it.frames) if mode is Mode.RECOMPUTE else None, by)

    def _decide(self, ctx: StepContext, impls: list[Any], key: str) -> tuple[StepDecision, str]:
        """Ask the step policies; ``key`` is the model whose reuse run ``max_reuse`` bounds (a
        unit's first call is always computed, so a run never spans units)."""
        hook = "accelframe_step_decide"
        try:
            decision, by = self.hooks.first_ctx(hook, impls, ctx)
        except HookRaised as err:
            self._failed(hook, err.plugin, repr(err.error), err.error)
            return fallback.RECOMPUTE, EXACT
        if decision is None:  # no policy had an opinion: the exact answer
            self._reuse[key] = 0
            return fallback.RECOMPUTE, EXACT
        problem = _check_decision(decision, ctx)
        if problem is not None:
            self._failed(hook, by, problem)
            return fallback.RECOMPUTE, EXACT
        if decision.mode is Mode.RECOMPUTE:
            self._reuse[key] = 0
            return decision, by
        if ctx.step == 0 or ctx.iteration.starts:
            # a unit starts here: nothing of it was computed yet, a reuse would come from elsewhere
            starting = [u.unit for u in ctx.iteration.starts] or [ctx.unit]
            self._failed(hook, by, f"{decision.mode.value} at the first step of unit(s) {starting}")
            return fallback.RECOMPUTE, EXACT
        run = self._reuse.get(key, 0)
        if self.max_reuse is not None and run >= self.max_reuse:
            self.trace.add("guard", model=ctx.model.value, unit=ctx.unit, step=ctx.step, by=by,
                           problem=f"{run} non-recompute calls in a row (max_reuse)")
            self.stats.count_fallback("max_reuse")
            self._reuse[key] = 0
            return fallback.RECOMPUTE, EXACT
        self._reuse[key] = run + 1
        return decision, by

    def _call(self, m: ModelSlot, it: Iteration, xs: torch.Tensor,
              frames: tuple[int, int]) -> torch.Tensor:
        """Run the model on ``frames`` (inside ``it.frames``); zeros elsewhere."""
        s, e = it.frames
        if frames == it.frames:
            run = lambda: m.adapter.denoise(xs, it, frames, m.state, it.kv_write)  # noqa: E731
        else:
            sub = xs[:, frames[0] - s:frames[1] - s]  # [B, F_interval, C, H, W]

            def run() -> torch.Tensor:
                out = torch.zeros_like(xs)
                out[:, frames[0] - s:frames[1] - s] = m.adapter.denoise(
                    sub, it, frames, m.state, it.kv_write)
                return out
        if not self._wrapped:
            return run()
        out = self.hooks.model_call(ModelCall(
            generation=self.generation, model=m.role, adapter=m.name, kind="denoise",
            unit=it.unit, step=it.step, frames=frames, run=run))
        if not isinstance(out, torch.Tensor) or out.shape != xs.shape:
            # a wrapper replaced the model's output: nothing but the model may compute a frame
            self._failed("accelframe_model_call", "a model-call wrapper",
                         f"returned {type(out).__name__} "
                         f"{tuple(out.shape) if isinstance(out, torch.Tensor) else ''} instead of "
                         f"the model's output {tuple(xs.shape)}")
            return run()
        return out

    def commit(self, m: ModelSlot, xs: torch.Tensor, frames: tuple[int, int], *, unit: int,
               step: int) -> None:
        """Commit the clean latents ``xs`` of ``frames`` into ``m``'s state: one model call,
        wrapped by ``accelframe_model_call``, timed, counted and traced. A plan's commit
        iterations come here, and so do the stream batch's finished chunks."""
        t0 = perf()

        def run() -> None:
            m.adapter.commit(xs, frames, m.state)
        if self._wrapped:
            self.hooks.model_call(ModelCall(
                generation=self.generation, model=m.role, adapter=m.name, kind="commit",
                unit=unit, step=step, frames=frames, run=run))
        else:
            run()
        self.stats.time_s["commit"] += perf() - t0
        self.stats.calls[m.role.value]["commit"] += 1
        self.trace.add("commit", model=m.role.value, unit=unit, frames=list(frames))

    def _probe(self, m: ModelSlot, xs: torch.Tensor, it: Iteration) -> torch.Tensor:
        t0 = perf()
        out = m.adapter.probe(xs, it, m.state)
        self.stats.time_s["probe"] += perf() - t0
        return out

    # ---- units ----------------------------------------------------------------------------------

    def _gen(self, m: ModelSlot, unit: int, request: Request) -> torch.Generator:
        g = m.gens[unit] = unit_generator(request.seed, unit, self.stream)
        return g

    def _start_unit(self, m: ModelSlot, span: UnitSpan, request: Request) -> None:
        """Draw the unit's initial noise from its own generator (same bits for every model)."""
        g = self._gen(m, span.unit, request)
        a, b = span.start - m.offset, span.end - m.offset
        shape = (request.batch, b - a, *m.adapter.latent_shape)
        # drawn on the CPU, then moved: the same seed gives the same start noise on any device
        noise = torch.randn(shape, generator=g).to(m.x.device, m.x.dtype)  # [B, F_unit, C, H, W]
        if request.init_latents is not None:  # video-to-video: noise the given latents
            sigma = request.start_sigma
            m.x[:, a:b] = (1.0 - sigma) * request.init_latents[:, a:b] + sigma * noise
        else:
            m.x[:, a:b] = noise

    def emit(self, m: ModelSlot, span: UnitSpan, *, decode: bool, source: str) -> torch.Tensor | None:
        """Emit the finished unit ``span`` of ``m``'s latents: decode it (when ``decode``; timed),
        count and trace it, and hand it to ``on_unit``. Returns its pixels ``[B, P, 3, H, W]``
        (None when not decoded). The stream batch's finished chunks come here too."""
        pixels = None
        if decode:
            t0 = perf()
            latents = m.x[:, span.start - m.offset:span.end - m.offset]  # [B, F_unit, C, H, W]
            pixels = m.adapter.decode(latents, m.state)
            self.stats.time_s["decode"] += perf() - t0
        self._record_emit(span, pixels, source)
        return pixels

    def _record_emit(self, span: UnitSpan, pixels: torch.Tensor | None, source: str) -> None:
        if pixels is not None:
            self._decoded.append(pixels)
        self._sources.append(source)
        self.stats.units += 1
        self.stats.frames += span.end - span.start
        self.trace.add("emit", unit=span.unit, frames=list(span.frames), source=source)
        if self.on_unit is not None:
            self.on_unit(span, pixels, source)

    # ---- failures -------------------------------------------------------------------------------

    def _failed(self, hook: str, plugin: str, problem: str, exc: BaseException | None = None,
                *, fallback_used: bool = True) -> None:
        fallback.record_failure(self, hook, plugin, problem, exc, fallback_used=fallback_used)


def _frame_scores(verdict: BlockVerdict) -> list[float] | None:
    """The verdict's per-frame scores for the trace (JSON: non-finite values become None)."""
    if verdict.frame_scores is None:
        return None
    return [float(x) if finite_number(x) else None for x in verdict.frame_scores]


def _filled(computed: torch.Tensor, fill: torch.Tensor, interval: tuple[int, int],
            first: int) -> torch.Tensor:
    """The fill velocity with the computed frames of ``interval`` written in: ``[B, F, C, H, W]``."""
    out = fill.clone()
    a, b = interval[0] - first, interval[1] - first
    out[:, a:b] = computed[:, a:b]
    return out


def _check_decision(decision: Any, ctx: StepContext) -> str | None:
    """Why a step decision cannot be carried out, or None when it can."""
    if not isinstance(decision, StepDecision):
        return f"returned {decision!r}, not a StepDecision"
    it = ctx.iteration
    if decision.mode is Mode.RECOMPUTE:
        if decision.interval is None:
            return None
        (cs, ce), (s, e) = decision.interval, it.frames
        if cs < s or ce > e:
            return f"compute interval {decision.interval} is not inside the forwarded frames {it.frames}"
        if decision.velocity is not None:  # partial recompute: the fill covers the rest
            return _check_velocity("recompute fill", decision.velocity, ctx)
        active = it.active
        if active is not None and (active[0] < cs or active[1] > ce):
            return f"compute interval {decision.interval} misses advancing frames {active}"
        return None
    return _check_velocity(decision.mode.value, decision.velocity, ctx)


def _check_velocity(what: str, v: torch.Tensor, ctx: StepContext) -> str | None:
    if v.shape != ctx.x.shape:
        return f"{what} velocity has shape {tuple(v.shape)}, the call needs {tuple(ctx.x.shape)}"
    if not bool(torch.isfinite(v).all()):
        return f"{what} velocity is not finite"
    return None


__all__ = ["Engine", "ModelSlot", "Result", "group_by_unit"]
