"""The step executor: the one place a denoising step runs (DESIGN.md section 11).

A *micro-step* runs over *rows*. A row is one model call of one unit: a model (its adapter, its
state, the latent buffer its unit lives in), the plan iteration to run (frames, per-frame σ, step)
and the request the unit belongs to. For every row the executor asks the step hooks (cache /
predict / recompute, optionally on a compute interval); it runs **one forward per model** over
the rows that recompute; rows that cache or predict take their velocity from the decision and cost
no model work; then every row's policies observe the velocity used and the row advances. Commit
passes, decoding, emission, counting and tracing happen here too, and nowhere else.

Every runtime is this executor:

- sequential generation (:class:`~accelframe.engine.Engine`) runs one row per micro-step;
- the stream batch (:mod:`accelframe.streaming.batch`) runs rows of staggered steps of one or more
  streams in one micro-step. Its rows are ``read_only``: they attend to their state's committed
  context and write nothing into it, so rows of one model run as one batched forward (the
  adapter's ``denoise_rows``), each with its own σ, RoPE start, cache and compute interval.

A policy that raises or answers nonsense is answered by the exact path (``accelframe.fallback``),
recorded, and named in a warning; ``strict=True`` re-raises as
:class:`~accelframe.errors.PolicyError`.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable, Sequence

import attrs
import torch

from accelframe import fallback
from accelframe.adapter import Adapter
from accelframe.errors import IncompatibleError
from accelframe.plugins import EXACT, HookRaised, Hooks
from accelframe.rng import start_noise, unit_generator
from accelframe.trace import Stats, Trace
from accelframe.types import (
    BlockContext,
    BlockVerdict,
    CallSite,
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


def decisions() -> dict[str, Any]:
    """Empty decision counts of one stream: step calls per model and block verdicts (every key
    present, so a reader on another thread never sees the dicts change size)."""
    return {"calls": {r.value: dict.fromkeys(("computed", "cached", "predicted"), 0) for r in ModelRole},
            "blocks": {"accepted": 0, "regenerated": 0}}


def merge_decisions(into: dict[str, Any], part: dict[str, Any]) -> None:
    """Add one :func:`decisions` dict to another."""
    for role, counts in part["calls"].items():
        for k, n in counts.items():
            into["calls"][role][k] += n
    for k, n in part["blocks"].items():
        into["blocks"][k] += n


def add_decisions(into: dict[str, Any], stats: Any) -> None:
    """Add a run's :class:`~accelframe.trace.Stats` decisions to ``into`` (a :func:`decisions` dict)."""
    for role, counts in into["calls"].items():
        for k in counts:
            counts[k] += stats.calls.get(role, {}).get(k, 0)
    for k in into["blocks"]:
        into["blocks"][k] += stats.blocks.get(k, 0)



@attrs.define(eq=False)
class ModelSlot:
    """One model of one generation (or of one chunk of a stream in flight): its adapter, its state
    and the latent buffer its units live in."""

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
    gens: dict[int, torch.Generator] = attrs.field(factory=dict)  # per unit: noise and re-noise
    reuse: int = 0  # consecutive non-recompute calls (what ``max_reuse`` bounds)


@attrs.define(eq=False, slots=True)
class Row:
    """One model call of one unit in a micro-step. ``read_only`` rows attend to their state's
    committed context without writing into it (the stream batch's rows): the executor runs those of
    one model as one batched forward."""

    slot: ModelSlot
    it: Iteration
    request: Request
    read_only: bool = False


class Executor:
    """Runs micro-steps over rows; see the module docstring.

    ``trace`` and ``stats`` are what the runs record into; ``stream`` is the stream index of the
    units' noise generators (:func:`accelframe.rng.unit_generator`). ``on_emit(span, pixels,
    source)`` is called for every emitted unit."""

    def __init__(self, hooks: Hooks, *, trace: Trace, stats: Stats, strict: bool = False,
                 max_reuse: int | None = None, stream: int = 0,
                 warned: set[tuple[str, str]] | None = None,
                 on_emit: Callable[[UnitSpan, torch.Tensor | None, str], None] | None = None) -> None:
        self.hooks = hooks
        self.trace = trace
        self.stats = stats
        self.strict = strict
        self.max_reuse = max_reuse
        self.stream = stream
        self.warned: set[tuple[str, str]] = set() if warned is None else warned
        self.on_emit = on_emit
        self._decode_time = threading.Lock()  # decodes may run on a worker thread and on this one
        self._wrapped = hooks.wraps_model_calls
        # per state (its id): commits no call has read yet, oldest first (:meth:`hold`)
        self.held: dict[int, list[tuple[ModelSlot, torch.Tensor, tuple[int, int], int, int]]] = {}
        # per generation, its decisions (``decisions()``'s shape), when the owner asks for them: a
        # stream batch's rows of several streams count into one ``stats``; this tells them apart
        self.tally: dict[int, dict[str, Any]] | None = None

    def tally_of(self, generation: int) -> dict[str, Any]:
        """This executor's decisions for ``generation`` (made on first use; ``tally`` must be on)."""
        assert self.tally is not None
        got = self.tally.get(generation)
        if got is None:
            got = self.tally[generation] = decisions()
        return got

    # ---- models ---------------------------------------------------------------------------------

    def slot(self, role: ModelRole, name: str, adapter: Adapter, state: Any, x: torch.Tensor,
             offset: int, generation: int) -> ModelSlot:
        """A model of ``generation`` holding latents ``x`` (frames from ``offset`` on)."""
        decide, observe = self.hooks.step_impls(role)
        # the exact fallback's answer is known (recompute): asking it is left to the executor
        decide = [impl for impl in decide if impl[2] != EXACT] or None
        m = ModelSlot(role=role, name=name, adapter=adapter, state=state, x=x, offset=offset,
                      impls=(decide, observe), counts=self.stats.calls[role.value], key=role.value)
        m.site = CallSite(generation=generation, model=role, adapter=name,
                          probe=lambda xs, it: self._probe(m, xs, it),
                          unit_frames=int(adapter.unit_frames))
        return m

    # ---- the micro-step -------------------------------------------------------------------------

    def micro_step(self, rows: Sequence[Row]) -> None:
        """Run every row's call: decide, one forward per model over the recomputing rows, observe,
        advance; commit rows commit. The hot path of every runtime."""
        step = self.begin(rows)
        if step is not None:
            self.end(step, self.launch(step)())

    def begin(self, rows: Sequence[Row]) -> list[Any] | None:
        """A micro-step's first half: start noise where a unit starts, commit rows, and every other
        row's decision. Returns the rows to forward (None when there are none), for :meth:`launch`
        and :meth:`end`."""
        todo = []  # (row, xs, decision, by, ctx)
        pol = 0.0
        for row in rows:
            m, it = row.slot, row.it
            if it.starts:
                for span in it.starts:
                    self._start_unit(m, span, row.request)
            s, e = it.frames
            xs = m.x[:, s - m.offset:e - m.offset]  # [B, F_it, C, H, W], a view
            if it.role is Role.COMMIT:
                self.commit(m, xs, it.frames, unit=it.unit, step=it.step)
                continue
            decide = m.impls[0]
            if decide is None:  # no step policy applies to this model: the exact answer
                todo.append((row, xs, fallback.RECOMPUTE, EXACT, None))
                continue
            t0 = perf()
            ctx = StepContext(site=m.site, iteration=it, x=xs)
            decision, by = self._decide(ctx, decide, m)
            pol += perf() - t0
            todo.append((row, xs, decision, by, ctx))
        self.stats.time_s["policy"] += pol
        return todo or None

    def end(self, todo: list[Any], velocities: list[torch.Tensor]) -> None:
        """A micro-step's second half: every row's policies observe the velocity used, the row
        advances, and the call is counted and traced."""
        st = self.stats.time_s
        pol = adv = 0.0
        for (row, xs, decision, by, ctx), velocity in zip(todo, velocities):
            m, it = row.slot, row.it
            observe = m.impls[1]
            if observe:
                t3 = perf()
                if ctx is None:
                    ctx = StepContext(site=m.site, iteration=it, x=xs)
                for err in self.hooks.step_observe(observe, ctx, decision, velocity):
                    self._failed(err.hook, err.plugin, repr(err.error), err.error,
                                 fallback_used=False)
                pol += perf() - t3
            t3 = perf()
            gen = m.gens.get(it.unit)
            if gen is None:
                gen = self._gen(m, it.unit, row.request)
            s, e = it.frames
            m.x[:, s - m.offset:e - m.offset] = m.adapter.advance(xs, velocity, it, gen, m.state)
            adv += perf() - t3
            mode, interval = decision.mode, decision.interval
            counts = m.counts
            if mode is Mode.RECOMPUTE:
                counts["computed"] += 1
                counts["frames_computed"] += (interval[1] - interval[0]) if interval else e - s
                if decision.velocity is not None:
                    counts["frames_reused"] += (e - s) - (interval[1] - interval[0])
            else:
                counts[_MODE_COUNT[mode]] += 1
            if self.tally is not None:
                self.tally_of(m.site.generation)["calls"][m.key][_MODE_COUNT[mode]] += 1
            self.trace.step(m.key, it.unit, it.step, it.index, it.frames, _MODE_NAME[mode],
                            (interval or it.frames) if mode is Mode.RECOMPUTE else None, by,
                            m.site.generation)
        st["policy"] += pol
        st["advance"] += adv

    def launch(self, todo: list[Any]) -> Callable[[], list[torch.Tensor]]:
        """Start the forwards of :meth:`begin`'s rows; returns the call that gives every row's
        velocity. The velocities of cached and predicted rows are the decisions'; recomputing rows
        run one forward per row, or one batched forward per (model, frame count) over
        ``read_only`` rows. An adapter with ``submit_rows`` (a pipeline-parallel ring) only starts
        a batched forward here; the returned call waits for it."""
        t1 = perf()
        out: list[Any] = [None] * len(todo)
        batch: dict[tuple[int, int], list[int]] = {}
        for i, (row, xs, decision, _, _) in enumerate(todo):
            if decision.mode is not Mode.RECOMPUTE:
                out[i] = decision.velocity
                continue
            it = row.it
            frames = decision.interval or it.frames
            if row.read_only and hasattr(row.slot.adapter, "denoise_rows"):
                if xs.shape[0] != 1:
                    raise IncompatibleError(f"a read-only row holds one video (denoise_rows: one block per "
                                            f"row); this one holds a batch of {xs.shape[0]}")
                batch.setdefault((id(row.slot.adapter), frames[1] - frames[0]), []).append(i)
                continue
            out[i] = self._call(row.slot, it, xs, frames)
        started = [(idx, self._call_rows([todo[i] for i in idx])) for idx in batch.values()]
        self.stats.time_s["model"] += perf() - t1

        def velocities() -> list[torch.Tensor]:
            t2 = perf()
            for idx, got in started:
                for i, v in zip(idx, got()):
                    out[i] = v
            for i, (row, _xs, decision, _, _) in enumerate(todo):
                if decision.mode is Mode.RECOMPUTE and decision.velocity is not None:
                    # a partial recompute: the fill outside the interval
                    out[i] = _filled(out[i], decision.velocity, decision.interval, row.it.frames[0])
            self.stats.time_s["model"] += perf() - t2
            return out
        return velocities

    def _decide(self, ctx: StepContext, impls: list[Any], m: ModelSlot) -> tuple[StepDecision, str]:
        """Ask the step policies; ``m.reuse`` is the run of reuses that ``max_reuse`` bounds (a
        unit's first call is always computed, so a run never spans units)."""
        hook = "accelframe_step_decide"
        try:
            decision, by = self.hooks.first_ctx(hook, impls, ctx)
        except HookRaised as err:
            m.reuse = 0  # the exact recompute answers: it ends the run like any recompute
            self._failed(hook, err.plugin, repr(err.error), err.error)
            return fallback.RECOMPUTE, EXACT
        if decision is None:  # no policy had an opinion: the exact answer
            m.reuse = 0
            return fallback.RECOMPUTE, EXACT
        problem = _check_decision(decision, ctx)
        if problem is not None:
            m.reuse = 0
            self._failed(hook, by, problem)
            return fallback.RECOMPUTE, EXACT
        if decision.mode is Mode.RECOMPUTE:
            m.reuse = 0
            return decision, by
        if ctx.step == 0 or ctx.iteration.starts:
            # a unit starts here: nothing of it was computed yet, a reuse would come from elsewhere
            starting = [u.unit for u in ctx.iteration.starts] or [ctx.unit]
            m.reuse = 0
            self._failed(hook, by, f"{decision.mode.value} at the first step of unit(s) {starting}")
            return fallback.RECOMPUTE, EXACT
        run = m.reuse
        if self.max_reuse is not None and run >= self.max_reuse:
            self.trace.add("guard", model=ctx.model.value, unit=ctx.unit, step=ctx.step, by=by,
                           problem=f"{run} non-recompute calls in a row (max_reuse)")
            self.stats.count_fallback("max_reuse")
            m.reuse = 0
            return fallback.RECOMPUTE, EXACT
        m.reuse = run + 1
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
        return self._wrap(m, it, frames, xs.shape, run)

    def _call_rows(self, group: list[Any]) -> Callable[[], list[torch.Tensor]]:
        """One batched forward over read-only rows of one model with equally long compute
        intervals (the adapter's ``denoise_rows``, or ``submit_rows`` when it has one: started
        now, waited for by the returned call, which gives each row's velocity, zeros outside its
        interval)."""
        subs, sigmas, starts, states = [], [], [], []
        for row, xs, decision, _, _ in group:
            s = row.it.frames[0]
            a, b = decision.interval or row.it.frames
            subs.append(xs[:, a - s:b - s])
            sigmas.append(row.it.sigma[a - s])
            starts.append(a)
            states.append(row.slot.state)
        m0, it0 = group[0][0].slot, group[0][0].it
        xcat = torch.cat(subs)  # [R, F_interval, C, H, W]
        submit = getattr(m0.adapter, "submit_rows", None)
        if submit is not None:  # a ring: the forward runs on other ranks meanwhile
            if self._wrapped:
                raise IncompatibleError("a model-call wrapper (accelframe_model_call) needs the forward's "
                                        "output where it is called; a pipeline-parallel ring returns it later")
            pending = submit(xcat, sigmas, starts, states)
            wait = pending.result
        else:
            v = self._wrap(m0, it0, group[0][2].interval or it0.frames, xcat.shape,
                           lambda: m0.adapter.denoise_rows(xcat, sigmas, starts, states),
                           rows=len(group))
            wait = lambda: v  # noqa: E731

        def rows() -> list[torch.Tensor]:
            v = wait()  # [R, F_interval, C, H, W]
            out = []
            for i, (row, xs, decision, _, _) in enumerate(group):
                vi = v[i:i + 1]
                if decision.interval is None or decision.interval == row.it.frames:
                    out.append(vi)
                    continue
                s = row.it.frames[0]
                a, b = decision.interval
                full = torch.zeros_like(xs)
                full[:, a - s:b - s] = vi
                out.append(full)
            return out
        return rows

    def _wrap(self, m: ModelSlot, it: Iteration, frames: tuple[int, int], shape: Any,
              run: Callable[[], torch.Tensor], rows: int = 1) -> torch.Tensor:
        """``run()`` through the ``accelframe_model_call`` wrappers, when any are registered."""
        if not self._wrapped:
            return run()
        out = self.hooks.model_call(ModelCall(
            generation=m.site.generation, model=m.role, adapter=m.name, kind="denoise",
            unit=it.unit, step=it.step, frames=frames, run=run, rows=rows))
        if not isinstance(out, torch.Tensor) or out.shape != shape:
            # a wrapper replaced the model's output: nothing but the model may compute a frame
            self._failed("accelframe_model_call", "a model-call wrapper",
                         f"returned {type(out).__name__} "
                         f"{tuple(out.shape) if isinstance(out, torch.Tensor) else ''} instead of "
                         f"the model's output {tuple(shape)}")
            return run()
        return out

    def _probe(self, m: ModelSlot, xs: torch.Tensor, it: Iteration) -> torch.Tensor:
        t0 = perf()
        out = m.adapter.probe(xs, it, m.state)
        self.stats.time_s["probe"] += perf() - t0
        return out

    # ---- units: noise, commit, emit -------------------------------------------------------------

    def _gen(self, m: ModelSlot, unit: int, request: Request) -> torch.Generator:
        g = m.gens[unit] = unit_generator(request.seed, unit, self.stream)
        return g

    def _start_unit(self, m: ModelSlot, span: UnitSpan, request: Request) -> None:
        """Draw the unit's initial noise from its own generator (same bits for every model)."""
        a, b = span.start - m.offset, span.end - m.offset
        noise, m.gens[span.unit] = start_noise(request.seed, span.unit, self.stream,
                                               (request.batch, b - a, *m.adapter.latent_shape),
                                               m.x.device, m.x.dtype)  # [B, F_unit, C, H, W]
        if request.init_latents is not None:  # video-to-video: noise the given latents
            sigma = request.start_sigma
            first = span.start - request.first_frame
            init = request.init_latents[:, first:first + b - a].to(m.x.dtype)
            m.x[:, a:b] = (1.0 - sigma) * init + sigma * noise
        else:
            m.x[:, a:b] = noise

    def commit(self, m: ModelSlot, xs: torch.Tensor, frames: tuple[int, int], *, unit: int,
               step: int) -> None:
        """Commit the clean latents ``xs`` of ``frames`` into ``m``'s state: one model call,
        wrapped by ``accelframe_model_call``, timed, counted and traced."""
        t0 = perf()

        def run() -> None:
            m.adapter.commit(xs, frames, m.state)
        if self._wrapped:
            self.hooks.model_call(ModelCall(
                generation=m.site.generation, model=m.role, adapter=m.name, kind="commit",
                unit=unit, step=step, frames=frames, run=run))
        else:
            run()
        self.stats.time_s["commit"] += perf() - t0
        self.stats.calls[m.role.value]["commit"] += 1
        self.trace.add("commit", model=m.role.value, unit=unit, frames=list(frames))

    def hold(self, m: ModelSlot, xs: torch.Tensor, frames: tuple[int, int], *, unit: int,
             step: int) -> None:
        """Commit ``xs`` into ``m``'s state when something reads that state (:meth:`release`), not
        now: a unit's KV is written only for a later call that reads it, and the commits run in
        the same order on the same state, so what that call sees is what committing at once gives.
        An adapter whose commit reads the pixels its decode kept (``commit_reads_pixels``: Krea
        re-encodes a decoded frame as its anchor) commits at once, after what it already holds."""
        if getattr(m.adapter, "commit_reads_pixels", False):
            self.release(m.state)
            self.commit(m, xs, frames, unit=unit, step=step)
        else:
            self.held.setdefault(id(m.state), []).append((m, xs, frames, unit, step))

    def release(self, state: Any) -> None:
        """Run the commits held for ``state``, oldest first: before anything reads it."""
        for m, xs, frames, unit, step in self.held.pop(id(state), ()):
            self.commit(m, xs, frames, unit=unit, step=step)

    def drop(self, state: Any) -> None:
        """Nothing will read ``state`` again: its held commits never run (``commit_skipped``)."""
        for m, *_ in self.held.pop(id(state), ()):
            self.stats.calls[m.role.value]["commit_skipped"] += 1

    def decode(self, m: ModelSlot, latents: torch.Tensor) -> torch.Tensor:
        """Decode ``latents [B, F, C, H, W]`` with ``m``'s adapter and decode cache, timed.
        Returns pixels ``[B, P, 3, H, W]``."""
        t0 = perf()
        pixels = m.adapter.decode(latents, m.state)
        with self._decode_time:
            self.stats.time_s["decode"] += perf() - t0
        return pixels

    def emit(self, m: ModelSlot, span: UnitSpan, *, decode: bool, source: str) -> torch.Tensor | None:
        """Emit the finished unit ``span`` of ``m``'s latents: decode it (when ``decode``), count,
        trace and hand it to ``on_emit``. Returns its pixels ``[B, P, 3, H, W]`` (None when not
        decoded)."""
        pixels = None
        if decode:
            pixels = self.decode(m, m.x[:, span.start - m.offset:span.end - m.offset])
        self.record_emit(span, pixels, source)
        return pixels

    def record_emit(self, span: UnitSpan, pixels: torch.Tensor | None, source: str) -> None:
        """Count and trace an emitted unit (already decoded, or not) and hand it on."""
        self.stats.units += 1
        self.stats.frames += span.end - span.start
        self.trace.add("emit", unit=span.unit, frames=list(span.frames), source=source)
        if self.on_emit is not None:
            self.on_emit(span, pixels, source)

    # ---- block level ----------------------------------------------------------------------------

    def judge(self, ctx: BlockContext, *, drafter_calls: int, decoded: bool) -> BlockVerdict:
        """Ask the block hooks for the verdict on a drafted unit (the exact regenerate answers a
        failure), timed, traced and counted: ``drafter_calls`` and a decode (``decoded``) are
        wasted on a regenerate."""
        return self.record_verdict(ctx, self.ask_verdict(ctx), drafter_calls=drafter_calls, decoded=decoded)

    def judge_draft(self, ctx: BlockContext, *, drafter_calls: int,
                    decode: Callable[[], tuple[Any, torch.Tensor]] | None,
                    ) -> tuple[BlockContext, BlockVerdict, Any, bool]:
        """The verdict on a draft, recorded: an early verdict (``accelframe_block_early_verdict``)
        when a policy gives one, else ``decode()`` (the target's state before the draft's decode and
        the draft's pixels; None: no decoding) and the verdict on the pixels. Returns the context
        judged, the verdict, that state (None when nothing was decoded) and whether the draft was
        decoded to be judged."""
        early = self.ask_verdict(ctx, early=True)
        if early is not None:
            return ctx, self.record_verdict(ctx, early, drafter_calls=drafter_calls, decoded=False, early=True), \
                None, False
        snap = None
        if decode is not None:
            snap, pixels = decode()
            ctx = attrs.evolve(ctx, draft_frames=pixels)
        return ctx, self.judge(ctx, drafter_calls=drafter_calls, decoded=decode is not None), snap, decode is not None

    def ask_verdict(self, ctx: BlockContext, *,
                    early: bool = False) -> tuple[BlockVerdict, str, tuple | None, float] | None:
        """The block hooks' answer on ``ctx`` without recording anything: (verdict, by, the failure to
        record or None, seconds). Safe on a decode worker's thread; :meth:`record_verdict` records it.
        ``early``: the answer of ``accelframe_block_early_verdict`` on a draft not yet decoded, None
        when no policy gives one (the draft must be decoded and judged)."""
        if early and not self.hooks.implemented("accelframe_block_early_verdict"):
            return None
        t0 = perf()
        failures: list[tuple] = []
        verdict, by = self._verdict(ctx, failures, early=early)
        if verdict is None:
            return None
        return verdict, by, (failures[0] if failures else None), perf() - t0

    def record_verdict(self, ctx: BlockContext, asked: tuple[BlockVerdict, str, tuple | None, float], *,
                       drafter_calls: int, decoded: bool, early: bool = False) -> BlockVerdict:
        """Record a verdict of :meth:`ask_verdict` (``early``: an early one, counted in
        ``early_verdicts``): its failure (if any), time, trace event, counts."""
        verdict, by, failure, seconds = asked
        if failure is not None:
            self._failed(*failure)
        self.stats.time_s["block"] += seconds
        self.trace.add("block", model="drafter", unit=ctx.unit, frames=list(ctx.frames),
                       verdict=verdict.verdict.value, score=verdict.score, by=by,
                       reason=verdict.reason, frame_scores=_frame_scores(verdict))
        blocks = self.stats.blocks
        blocks["early_verdicts"] += int(early)
        if self.tally is not None:
            kind = "accepted" if verdict.verdict is Verdict.ACCEPT else "regenerated"
            self.tally_of(ctx.generation)["blocks"][kind] += 1
        if verdict.verdict is Verdict.ACCEPT:
            blocks["accepted"] += 1
        else:
            blocks["regenerated"] += 1
            blocks["drafter_calls_wasted"] += drafter_calls
            blocks["decodes_wasted"] += int(decoded)
        return verdict

    def _verdict(self, ctx: BlockContext, failures: list[tuple], *,
                 early: bool = False) -> tuple[BlockVerdict | None, str]:
        """The verdict, or the exact regenerate with the failure appended to ``failures`` (the
        arguments of :meth:`_failed`, recorded by the caller's thread). ``early``: the answer of
        ``accelframe_block_early_verdict``, None when no policy gives one."""
        hook = "accelframe_block_early_verdict" if early else "accelframe_block_verdict"
        try:
            verdict, by = (self.hooks.block_early_verdict if early else self.hooks.block_verdict)(ctx)
        except HookRaised as err:
            failures.append((hook, err.plugin, repr(err.error), err.error))
            return fallback.REGENERATE, EXACT
        if early and verdict is None:
            return None, by
        if not isinstance(verdict, BlockVerdict):
            failures.append((hook, by, f"returned {verdict!r}, not a BlockVerdict"))
            return fallback.REGENERATE, EXACT
        if verdict.score is not None and not finite_number(verdict.score):
            failures.append((hook, by, f"returned a non-finite score {verdict.score!r}"))
            return fallback.REGENERATE, EXACT
        return verdict, by

    def block_observe(self, ctx: BlockContext, verdict: BlockVerdict) -> None:
        """Every block policy observes the verdict carried out."""
        for err in self.hooks.block_observe(ctx, verdict):
            self._failed(err.hook, err.plugin, repr(err.error), err.error, fallback_used=False)

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


__all__ = ["Executor", "ModelSlot", "Row"]
