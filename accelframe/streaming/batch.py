"""StreamDiffusionV2's stream batch on the step executor: chunks in flight at staggered steps.

With an n-step schedule a stream keeps up to n chunks in flight, each at its own step. Every
micro-step hands one row per in-flight chunk (of every stream in the batch) to the step executor
(:mod:`accelframe.executor`), which asks the step policies row by row and runs **one** batched
forward per model over the rows that recompute; each row advances one step. A chunk that reaches
σ = 0 is committed into its stream's KV cache (the adapter's commit pass), decoded and emitted. A
new chunk enters at its first level. So once the pipe is full, every call yields one clean chunk per
stream. A chunk is denoised as one block: a chunk of several units runs the first unit's schedule
over all its frames, its start noise drawn from the first unit's generator.

The rows attend to their stream's *committed* context, read only (the adapter's ``denoise_rows``).
A chunk therefore starts denoising before the chunks ahead of it are committed: its first steps see a
context up to n - 1 chunks old. That lag is what the stream batch trades for throughput; with one
chunk in flight it is sequential generation. (The reference keeps a cache per row and writes each
row's noisy K/V into it with no commit pass; here the cache holds clean committed frames only, as
everywhere else in accelframe.)

**With a drafter** (SDVG) a new chunk enters as the drafter's: its rows run in the same batches.
When the draft is done it is committed into the *drafter's* KV at once (the drafter's context is its
own drafts), so the drafter never waits for a verdict and drafts the next chunks meanwhile. When a
drafted chunk is the oldest of its stream, the target's caches are snapshot, the draft is decoded
with the target's decoder and scored (``accelframe_block_verdict``; a verdict of
``accelframe_block_early_verdict`` skips the snapshot, and the decode unless it accepts): on accept it is committed into
the target's KV and emitted; on reject the caches are restored and the target regenerates the chunk
from the same start noise, as rows of its own in the next micro-steps (with every chunk before it
committed, so the regenerated chunk is what sequential generation gives). As in the engine, the
target's commits (an accepted draft's, and a chunk of its own, with or without a drafter) are held
until something reads the target's KV: the target's next rows of the stream, or the stream loop
(its KV hook, a prompt switch, ``StreamLoop.target_state``), which calls the executor's ``release``
(:meth:`accelframe.executor.Executor.hold`); the commits a stream still holds when it ends are
skipped (``commit_skipped``).

Chunks of a stream leave in order: a chunk whose schedule is shorter than the one ahead of it (a
motion-aware noise level can shorten it) waits, clean, until that one is out.

**Lanes** (``lanes = R``, the pipeline-parallel schedule, StreamDiffusionV2 section 4.2): a chunk
enters the lane of the micro-step it enters at (micro-step ``m`` is lane ``m mod R``) and steps only
in its lane's micro-steps; a micro-step's forward is *launched* and its rows advance ``R - 1``
micro-steps later, after the next lanes' forwards were launched. On a ring of ``R`` ranks (an
adapter with ``submit_rows``) the forwards of ``R`` lanes are in flight on the ranks at once; in one
process the same schedule gives the same numbers (the ring's reference). ``lanes = 1`` is the
stream batch above.
"""

from __future__ import annotations

from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Sequence

import attrs
import torch

from accelframe.adapter import adapter_device, adapter_dtype
from accelframe.executor import Executor, ModelSlot, Row
from accelframe.types import (
    BlockContext,
    BlockVerdict,
    Iteration,
    ModelRole,
    Request,
    Role,
    UnitSpan,
    Verdict,
)


@attrs.define(eq=False)
class Chunk:
    """One chunk in flight: latent frames ``span`` of a stream, the model denoising it (its slot:
    adapter, the stream's state, the chunk's latents), its denoising steps and the step it is at."""

    request: Request
    span: UnitSpan
    slot: ModelSlot
    steps: list[Iteration]
    k: int = 0
    committed: bool = False  # a draft committed into the drafter's KV (drafter chunks only)
    lane: int = 0  # the micro-steps it steps in: those of its lane (lanes > 1)
    busy: bool = False  # a step launched and not yet ended
    # a regeneration's rejected draft: the block policies observe its verdict once the chunk is out
    verdict: tuple[BlockContext, BlockVerdict] | None = None

    @property
    def done(self) -> bool:
        return self.k >= len(self.steps)

    @property
    def drafted(self) -> bool:
        return self.slot.role is ModelRole.DRAFTER

    def row(self) -> Row:
        return Row(self.slot, self.steps[self.k], self.request, read_only=True)


def chunk_steps(adapter: Any, request: Request) -> list[Iteration]:
    """The denoising iterations of a chunk ``request`` as one block: its first unit's schedule over
    all its frames, the whole chunk starting (its noise) at the first step."""
    a, b = request.first_frame, request.first_frame + request.num_frames
    its = [it for it in adapter.plan(request) if it.role is Role.DENOISE]
    first = [it for it in its if it.unit == its[0].unit]
    if len(first) == len(its) and all(it.frames == (a, b) for it in its):
        return its  # one unit: the plan as it is
    n, span = b - a, UnitSpan(unit=its[0].unit, start=a, end=b)
    return [attrs.evolve(it, frames=(a, b), sigma=(it.sigma[0],) * n,
                         sigma_next=(it.sigma_next[0],) * n, update=(True,) * n,
                         starts=(span,) if k == 0 else (), finishes=())
            for k, it in enumerate(first)]


class PendingPixels:
    """The pixels ``[B, P, 3, H, W]`` of a chunk still decoding on a thread: :meth:`ready` says
    whether they are there, :meth:`result` waits for them (and raises the decode's error). The
    stream loop emits a stream's chunks in order, each once its pixels are there."""

    def __init__(self, future: Future) -> None:
        self.future = future

    def ready(self) -> bool:
        return self.future.done()

    def result(self) -> torch.Tensor:
        return self.future.result()


class StreamBatch:
    """The stream batch of one stream loop: enters chunks, runs micro-steps and lets finished
    chunks out, in order, on the loop's executor.

    With a decode worker (:meth:`start_worker`, ``Pipeline(decode_worker=True)``) a target chunk is
    decoded on a thread of its own, in the order the chunks finish, while the next micro-steps run:
    :meth:`finish` hands back its pixels as :class:`PendingPixels`. A draft is still decoded and
    judged here, after the decodes of the stream's chunks before it (:meth:`wait_decodes`: the
    decoder's state is causal)."""

    def __init__(self, executor: Executor, *, target: Any, target_name: str,
                 drafter: Any = None, drafter_name: str | None = None, lanes: int = 1) -> None:
        self.ex = executor
        self.target, self.target_name = target, target_name
        self.drafter, self.drafter_name = drafter, drafter_name
        self.lanes = lanes
        self.tick = 0  # micro-steps run; micro-step m is lane m mod lanes
        self.pending: deque[tuple[list[Chunk], list[Any] | None, Any]] = deque()  # launched, not ended
        self.worker: ThreadPoolExecutor | None = None  # one thread: decodes run in submission order
        self.decoding: dict[int, Future] = {}  # id of a target state -> its last decode on the worker

    # ---- the decode worker ------------------------------------------------------------------------

    def start_worker(self) -> None:
        """Decode the target's chunks on a thread of their own from now on."""
        self.worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="accelframe-decode")

    def stop_worker(self) -> None:
        """Wait for the decodes still running (their errors were or will be raised by the pixels'
        ``result``) and end the thread."""
        if self.worker is not None:
            self.worker.shutdown(wait=True)
            self.worker = None
        self.decoding.clear()

    def wait_decodes(self, state: Any) -> None:
        """Return once every decode of ``state`` handed to the worker has run: before anything else
        reads or writes its decoder's state (a draft's decode, a restore, a prompt switch)."""
        fut = self.decoding.pop(id(state), None)
        if fut is not None:
            fut.result()

    def _emit_later(self, c: Chunk) -> PendingPixels:
        """Count and trace the chunk as emitted and decode it on the worker (after the decodes
        handed over before it)."""
        fut = self.worker.submit(self.ex.decode, c.slot, c.slot.x)
        self.decoding[id(c.slot.state)] = fut
        self.ex.record_emit(c.span, None, "target")
        return PendingPixels(fut)

    def chunk(self, role: ModelRole, request: Request, state: Any, generation: int) -> Chunk:
        """A chunk of ``request`` for the target or the drafter, with the stream's ``state``."""
        adapter, name = ((self.target, self.target_name) if role is ModelRole.TARGET
                         else (self.drafter, self.drafter_name or "drafter"))
        a, b = request.first_frame, request.first_frame + request.num_frames
        x = torch.zeros(request.batch, b - a, *adapter.latent_shape, device=adapter_device(adapter),
                        dtype=adapter_dtype(adapter))  # [B, F, C, H, W]; the first step draws the noise
        slot = self.ex.slot(role, name, adapter, state, x, a, generation)
        return Chunk(request=request, span=UnitSpan(unit=a // adapter.unit_frames, start=a, end=b),
                     slot=slot, steps=chunk_steps(adapter, request))

    def enter(self, chunks: list[Chunk], request: Request, target: Any, drafter: Any,
              generation: int) -> None:
        """A new chunk of a stream enters: the drafter's when there is one, else the target's."""
        if self.drafter is not None:
            c = self.chunk(ModelRole.DRAFTER, request, drafter, generation)
        else:
            c = self.chunk(ModelRole.TARGET, request, target, generation)
        c.lane = self.tick % self.lanes  # it steps in the micro-step about to run
        chunks.append(c)

    def micro_step(self, chunks: Sequence[Chunk]) -> None:
        """Every unfinished chunk of this micro-step's lane advances one step: one row each, one
        executor micro-step (with lanes, launched now and ended ``lanes - 1`` micro-steps later)."""
        lane = self.tick % self.lanes
        self.tick += 1
        live = [c for c in chunks if not c.done and not c.busy and c.lane == lane]
        if self.ex.held:  # the target's rows attend to their stream's committed context
            for c in live:
                if not c.drafted:
                    self.ex.release(c.slot.state)
        if live:
            for c in live:
                c.busy = True
            todo = self.ex.begin([c.row() for c in live])
            self.pending.append((live, todo, None if todo is None else self.ex.launch(todo)))
        elif self.pending:  # an idle lane: the oldest step in flight ends (a drain makes progress)
            self._end()
        while len(self.pending) > self.lanes - 1:
            self._end()

    def _end(self) -> None:
        live, todo, velocities = self.pending.popleft()
        if todo is not None:
            self.ex.end(todo, velocities())
        for c in live:
            c.k += 1
            c.busy = False

    def finish(self, chunks: list[Chunk], target: Any, drafter: Any, generation: int,
               prompts: tuple[str, ...]) -> list[tuple[UnitSpan, torch.Tensor, str]]:
        """Let the finished chunks of one stream out, oldest first: drafts are committed into the
        drafter's KV as soon as they are done (in order); the oldest chunk, once done, is judged
        (a draft) or committed and decoded (the target's). Returns the emitted chunks as
        ``(span, pixels [B, P, 3, H, W], source)``; with a decode worker a target chunk's pixels are
        :class:`PendingPixels`."""
        for c in chunks:  # the drafter's context is its own drafts: commit them in order, now
            if not c.drafted or c.committed:
                continue
            if not c.done:
                break
            self.ex.commit(c.slot, c.slot.x, c.span.frames, unit=c.span.unit, step=len(c.steps))
            c.committed = True
        out = []
        while chunks and chunks[0].done:
            c = chunks[0]
            if c.drafted:
                accepted = self._judge(c, chunks, target, generation, prompts)
                if accepted is None:  # rejected: the target regenerates it in the next micro-steps
                    break
                out.append(accepted)
            else:
                # held too, after the drafts accepted before it, until the target's KV is read
                self.ex.hold(c.slot, c.slot.x, c.span.frames, unit=c.span.unit, step=len(c.steps))
                pixels = (self._emit_later(c) if self.worker is not None else
                          self.ex.emit(c.slot, c.span, decode=True, source="target"))
                out.append((c.span, pixels, "target"))
                if c.verdict is not None:  # a regeneration: the verdict was carried out
                    self.ex.block_observe(*c.verdict)
            chunks.pop(0)
        return out

    def _judge(self, c: Chunk, chunks: list[Chunk], target: Any, generation: int,
               prompts: tuple[str, ...]) -> tuple[UnitSpan, torch.Tensor, str] | None:
        """The verdict on the oldest chunk, a draft: accept (commit into the target's KV, emit) or
        regenerate (restore the target's caches; the chunk becomes the target's, from its start).
        The block policies observe the verdict once the unit was emitted (the regeneration's, later)."""
        regen = self.chunk(ModelRole.TARGET, c.request, target, generation)
        self.wait_decodes(target)  # the decoder's state holds every chunk before it
        draft = c.slot.x  # [B, F, C, H, W]
        ctx = BlockContext(generation=generation, unit=c.span.unit, frames=c.span.frames,
                           prompts=prompts, drafter=c.slot.name, target=self.target_name,
                           draft_latents=draft, draft_frames=None)
        ctx, verdict, snap, decoded = self.ex.judge_draft(
            ctx, drafter_calls=len(c.steps),
            decode=lambda: (self.target.snapshot(target), self.ex.decode(regen.slot, draft)))
        if verdict.verdict is Verdict.ACCEPT:
            # an early verdict judged no pixels: the draft is decoded now, to be emitted
            pixels = ctx.draft_frames if decoded else self.ex.decode(regen.slot, draft)
            # held until something reads the target's KV (module docstring)
            self.ex.hold(regen.slot, draft, c.span.frames, unit=c.span.unit, step=len(c.steps))
            self.ex.record_emit(c.span, pixels, "draft")
            self.ex.block_observe(ctx, verdict)
            return c.span, pixels, "draft"
        if decoded:
            self.target.restore(target, snap)
        regen.verdict = (ctx, verdict)  # observed once the regenerated chunk was emitted
        chunks[0] = regen
        return None


__all__ = ["Chunk", "PendingPixels", "StreamBatch", "chunk_steps"]
