"""The engine: walks an adapter's plan and asks the policies at every level.

Every plan iteration runs as a micro-step of one row on the step executor
(:mod:`accelframe.executor`: the step hooks, the model call, observe, advance). For units produced
by a drafter the engine asks the block hooks and accepts (commit the draft into the target's KV,
emit its decoded frames) or regenerates (restore the caches, target from the same initial noise).
Every decision and call goes into the trace. The target's commits are held until the target's next
call needs them (:meth:`Engine._iteration`), so a generation skips the commits no call reads.

With ``decode_worker=True`` decoding (and, with a drafter, scoring) runs on a thread of its own, in
the order the units finish, beside the denoising, as SDVG's deployment runs the VAE and the reward
on a second device: a finished unit is handed to the worker and the next unit's denoising starts at
once; with a drafter, the drafter drafts unit k + 1 while the worker decodes and judges draft k
(``drafter_context="own"``: the next draft does not depend on the verdict), and the verdict is
carried out when it is back. A draft decided by an early verdict (``accelframe_block_early_verdict``)
goes to no worker: its verdict is carried out before the next draft, which then runs beside the
decode of what it emitted. With ``drafter_context="emitted"`` the next draft needs the verdict, so
the drafts do not overlap; a draft's decode still runs on the worker, after the decodes of the
units before it (the decoder's state is causal). The frames, latents, trace and counts are those
of the inline run; the trace records a unit's verdict and emission when the denoising thread takes
them from the worker.
"""

from __future__ import annotations

import itertools
import time
from concurrent.futures import Future, ThreadPoolExecutor
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
        decode_worker: bool = False,
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
        self.decode_worker = decode_worker
        self._worker: ThreadPoolExecutor | None = None  # one thread: jobs run in submission order
        self._pending: list[tuple[UnitSpan, Future, str]] = []  # units decoding on the worker, in order
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
        keep_state: bool = True,
    ) -> Result:
        """Generate ``request``; states may be passed in to continue a stream's caches.

        The target commits a unit into its KV only when a later call of the target needs it (see
        :meth:`_iteration`). ``keep_state``: run the commits still held at the end, so that
        ``target_state`` holds every unit (a stream's next chunk continues from it); ``False``
        skips them, as ``Pipeline.generate`` does: no call reads that state again."""
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
        if self.decode_worker and request.decode:
            self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="accelframe-decode")
        try:
            if drafter is None:
                for it in self.target.plan(request):
                    self._iteration(target, it, request)
                    for span in it.finishes:
                        self.emit(target, span, decode=request.decode, source="target")
            elif self._worker is not None and self.drafter_context == "own":
                self._run_drafted_overlapped(target, drafter, request)
            else:
                self._run_drafted(target, drafter, request)
            if keep_state:
                self.release(target.state)
            else:
                self.drop(target.state)
            self._drain(wait=True)
        finally:
            if self._worker is not None:
                self._worker.shutdown(wait=True)  # a failed run leaves no job behind
                self._worker = None
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

    # ---- decode worker ----------------------------------------------------------------------------

    def emit(self, m: ModelSlot, span: UnitSpan, *, decode: bool, source: str) -> torch.Tensor | None:
        """As :meth:`Executor.emit`; with a decode worker the unit is decoded there and emitted (in
        order) when its pixels are back. Returns the pixels when decoded here, else None."""
        if not decode or self._worker is None:
            return super().emit(m, span, decode=decode, source=source)
        latents = m.x[:, span.start - m.offset:span.end - m.offset].clone()
        self._pending.append((span, self._worker.submit(self.decode, m, latents), source))
        self._drain(wait=False)
        return None

    def _drain(self, *, wait: bool) -> None:
        """Emit the units whose decode is back, in order; ``wait``: all of them."""
        while self._pending and (wait or self._pending[0][1].done()):
            span, fut, source = self._pending.pop(0)
            self.record_emit(span, self._wait(fut), source)

    def _wait(self, fut: Future) -> Any:
        t0 = time.perf_counter()
        out = fut.result()  # a worker's exception is raised here, on the denoising thread
        self.stats.time_s["decode_wait"] += time.perf_counter() - t0
        return out

    def _units(self, target: ModelSlot, drafter: ModelSlot, request: Request,
               ) -> Iterator[tuple[int, UnitSpan, list[Iteration], list[Iteration]]]:
        """The drafted plan, unit by unit: (unit, its span, target iterations, drafter iterations)."""
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
            yield unit, spans[0], t_its, d_its

    def _run_drafted(self, target: ModelSlot, drafter: ModelSlot, request: Request) -> None:
        for unit, span, t_its, d_its in self._units(target, drafter, request):
            self._block(target, drafter, request, unit, span, t_its, d_its)

    def _draft(self, drafter: ModelSlot, request: Request, d_its: list[Iteration]) -> int:
        """The drafter drafts a unit and commits it into its own KV; returns its denoising calls."""
        calls = 0
        for it in d_its:
            calls += it.role is Role.DENOISE
            self._iteration(drafter, it, request)
        return calls

    def _run_drafted_overlapped(self, target: ModelSlot, drafter: ModelSlot, request: Request) -> None:
        """The drafted plan with a decode worker: draft k + 1 runs while the worker decodes and judges
        draft k (module docstring); the verdict is carried out as :meth:`_block` does."""
        units = list(self._units(target, drafter, request))

        def submit(k: int) -> Future | tuple[BlockContext, Any, Any, bool]:
            unit, span, _, _ = units[k]
            a, b = span.start - drafter.offset, span.end - drafter.offset
            draft = drafter.x[:, a:b].clone()  # [B, F_unit, C, H, W]
            ctx = BlockContext(generation=self.generation, unit=unit, frames=span.frames, prompts=request.prompts,
                               drafter=drafter.name, target=target.name, draft_latents=draft, draft_frames=None)
            early = self.ask_verdict(ctx, early=True)
            if early is not None:  # decided without pixels: nothing to decode or judge on the worker
                return ctx, early, None, False  # (ctx, the answer, snapshot, decoded to be judged)

            def decode_and_judge() -> tuple[BlockContext, Any, Any, bool]:
                # on the worker, after every earlier decode; the denoising thread leaves the target's
                # state alone until the verdict is back (it drafts the next unit meanwhile)
                snap, frames = self._snap_and_decode(target, draft)
                judged = attrs.evolve(ctx, draft_frames=frames)
                return judged, self.ask_verdict(judged), snap, True

            return self._worker.submit(decode_and_judge)

        def draft(k: int) -> int:
            return self._draft(drafter, request, units[k][3]) if k < len(units) else 0

        if not units:
            return
        calls = draft(0)
        job = submit(0)
        for k, (unit, span, t_its, _) in enumerate(units):
            # draft k + 1 while the worker decodes and judges draft k; a draft decided early has
            # nothing on the worker, so its verdict is carried out first (a regeneration's decode
            # then runs on the worker beside the next draft)
            overlap = isinstance(job, Future)
            next_calls = draft(k + 1) if overlap else 0
            ctx, asked, snap, decoded = self._wait(job) if overlap else job
            self._drain(wait=False)
            verdict = self.record_verdict(ctx, asked, drafter_calls=calls, decoded=decoded, early=not decoded)
            if verdict.verdict is Verdict.ACCEPT:
                self._accept(target, span, t_its, request, ctx, decoded=decoded)
            else:
                if decoded:  # the decode cache as before the draft's decode
                    self.target.restore(target.state, snap)
                self._regenerate(target, span, t_its, request)
            self.block_observe(ctx, verdict)
            calls = next_calls if overlap else draft(k + 1)
            if k + 1 < len(units):
                job = submit(k + 1)

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
        ctx = BlockContext(generation=self.generation, unit=unit, frames=span.frames,
                           prompts=request.prompts, drafter=drafter.name, target=target.name,
                           draft_latents=draft, draft_frames=None)

        def decode() -> tuple[Any, torch.Tensor]:  # on the worker when there is one: after the units before
            return (self._snap_and_decode(target, draft) if self._worker is None else
                    self._wait(self._worker.submit(self._snap_and_decode, target, draft)))

        ctx, verdict, snap, decoded = self.judge_draft(ctx, drafter_calls=drafter_calls,
                                                       decode=decode if request.decode else None)
        if verdict.verdict is Verdict.ACCEPT:
            self._accept(target, span, t_its, request, ctx, decoded=decoded)
        else:
            if decoded:
                self.target.restore(target.state, snap)
            self._regenerate(target, span, t_its, request)
            if d_snap is not None:
                self._recommit_drafter(drafter, target, span, d_its, d_snap, request)
        self.block_observe(ctx, verdict)

    def _accept(self, target: ModelSlot, span: UnitSpan, t_its: list[Iteration], request: Request,
                ctx: BlockContext, *, decoded: bool) -> None:
        """Carry out an accept: the draft becomes the target's unit, its commit into the target's KV
        is held (no denoising), and its frames are emitted after the units before it: the pixels
        judged (``decoded``), or a decode of the draft now (an early verdict judged none)."""
        target.x[:, span.start - target.offset:span.end - target.offset] = ctx.draft_latents
        for it in t_its:
            if it.role is Role.COMMIT:
                self._iteration(target, it, request)
        if decoded:
            self._drain(wait=True)  # with a worker, the units before it are out first
            self.record_emit(span, ctx.draft_frames, "draft")
        else:
            self.emit(target, span, decode=request.decode, source="draft")

    def _snap_and_decode(self, target: ModelSlot, draft: torch.Tensor) -> tuple[Any, torch.Tensor]:
        """The target's state before a draft's decode (restored if the draft is rejected) and the
        draft's pixels. The decoder's state is causal, so with a worker this runs there, after every
        earlier unit's decode."""
        snap = self.target.snapshot(target.state)
        return snap, self.decode(target, draft)

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
        """One plan iteration: a micro-step of one row.

        The target's commit is held (:meth:`Executor.hold`) until the target's next other call
        (a denoising step, or a commit that starts a unit), which runs the held commits first: the
        commits after the last call the target makes (every accepted draft's, when no later draft
        is rejected) need not run at all (``run(keep_state=False)``). Nothing else reads the
        target's KV, so the frames are those of committing at once.

        An adapter whose commit reads the pixels its decode kept (``commit_reads_pixels``)
        commits at once, and only when every decode on the worker is back, so that its state is
        never read and written on two threads."""
        if (it.role is Role.COMMIT and self._pending
                and getattr(m.adapter, "commit_reads_pixels", False)):
            self._drain(wait=True)
        if m.role is ModelRole.TARGET:
            if it.role is Role.COMMIT and not it.starts:
                s, e = it.frames
                self.hold(m, m.x[:, s - m.offset:e - m.offset], it.frames, unit=it.unit, step=it.step)
                return
            self.release(m.state)
        self.micro_step((Row(m, it, request),))

    def _regenerate(self, target: ModelSlot, span: UnitSpan, t_its: list[Iteration], request: Request) -> None:
        """The target denoises a unit whose draft was rejected, and emits it when the unit finishes,
        before it commits the unit: the order of the target alone (an adapter's commit may rely on
        the unit's decode having run)."""
        emitted = False
        for it in t_its:
            self._iteration(target, it, request)
            if not emitted and any(s.unit == span.unit for s in it.finishes):
                self.emit(target, span, decode=request.decode, source="target")
                emitted = True
        if not emitted:
            self.emit(target, span, decode=request.decode, source="target")

    def _emitted(self, span: UnitSpan, pixels: torch.Tensor | None, source: str) -> None:
        if pixels is not None:
            self._decoded.append(pixels)
        self._sources.append(source)
        if self.on_unit is not None:
            self.on_unit(span, pixels, source)


__all__ = ["Engine", "ModelSlot", "Result", "group_by_unit"]
