"""Every hook accelframe calls, grouped by phase. Each docstring is the reference.

Implement a hook with ``@accelframe.hookimpl`` (the marker defined here, beside ``hookspec``)
on a function of a plugin module or a method of a policy object. Hooks are called with keyword
arguments; an implementation may take fewer arguments than its specification, so specifications
can grow without breaking plugins.

Decision hooks are ``firstresult``: the first implementation that returns something other than
None decides, and an exact fallback plugin answers last. Policies added to a pipeline with
``pipe.use`` are asked in the order they were added, before plugins that implement decision hooks
at module level. ``docs/hooks.md`` documents every hook below with the same signature; a test
keeps the two in step.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

import pluggy

if TYPE_CHECKING:
    import torch

    from accelframe.types import (
        BatchContext,
        BatchPlan,
        BlockContext,
        BlockVerdict,
        GenerationInfo,
        KVAction,
        KVContext,
        ModelCall,
        NoiseContext,
        StepContext,
        StepDecision,
    )

PROJECT = "accelframe"
hookspec = pluggy.HookspecMarker(PROJECT)
# the marker plugins use; re-exported as ``accelframe.hookimpl`` and ``accelframe.plugins.hookimpl``.
# It lives here, not in plugins.py, so that the core's own plugins (fallback.py) need not import
# the plugin manager that registers them
hookimpl = pluggy.HookimplMarker(PROJECT)

# ------------------------------------------------------------------------------------------------
# registration: called once per plugin manager, right after plugins are loaded
# ------------------------------------------------------------------------------------------------


@hookspec
def accelframe_register_adapters(register: Callable[..., None]) -> None:
    """Register model-family adapters.

    Call ``register(name, factory, description="")`` once per adapter. ``factory(**kwargs)``
    returns an object implementing :class:`accelframe.adapter.Adapter`. A name registered by two
    plugins raises :class:`~accelframe.errors.DuplicateNameError` naming both.
    Fires when the registry is built (once per plugin manager, and again after its plugins
    change). Returns nothing.
    """


@hookspec
def accelframe_register_policies(register: Callable[..., None]) -> None:
    """Register policies (step, block or batch level).

    Call ``register(name, factory, kind, description="")`` with ``kind`` one of ``"step"``,
    ``"block"``, ``"batch"``. ``factory(**kwargs)`` validates its keyword arguments (raising
    :class:`~accelframe.errors.ConfigError`) and returns an object with hook implementations.
    Duplicate names raise :class:`~accelframe.errors.DuplicateNameError`. Fires when the registry
    is built (once per plugin manager, and again after its plugins change). Returns nothing.
    """


@hookspec
def accelframe_register_scorers(register: Callable[..., None]) -> None:
    """Register frame scorers that block policies use to judge drafts.

    Call ``register(name, factory, description="")``; ``factory(**kwargs)`` returns a callable
    ``scorer(frames, prompts) -> Tensor [B, F_pix]`` of per-frame scores (higher is better).
    Duplicate names raise :class:`~accelframe.errors.DuplicateNameError`. Fires when the registry
    is built. Returns nothing.
    """


@hookspec
def accelframe_register_commands(register: Callable[..., None]) -> None:
    """Register CLI subcommands.

    Call ``register(name, configure, run, help="", group=None)``: ``configure(parser)`` adds
    arguments to an ``argparse`` parser, ``run(args, hooks) -> int`` executes and returns the exit
    code; ``hooks`` is the CLI's plugin manager (:class:`~accelframe.plugins.Hooks`), so a command
    sees every plugin the CLI loaded (a ``run(args)`` of one parameter gets ``args`` only).
    ``group="bench"`` adds ``accelframe bench NAME``; no group adds ``accelframe NAME``.
    Duplicate names within a group raise :class:`~accelframe.errors.DuplicateNameError`.
    Fires when the registry is built; the CLI adds the commands when it builds its parser.
    Returns nothing.
    """


@hookspec
def accelframe_register_sources(register: Callable[..., None]) -> None:
    """Register stream sources: input video that ``accelframe stream --source NAME`` renders.

    Call ``register(name, factory, description="")``; ``factory()`` (called with no arguments)
    returns an object with ``clip(prompt, seed, frames)`` (the stream's input: ``frames`` pixel
    frames ``[F, 3, H, W]`` in [0, 1], a tensor or a
    :class:`~accelframe.streaming.source.LoopedFrames`; a prompt it cannot render raises
    :class:`~accelframe.errors.ConfigError` on field ``"prompt"``) and, optionally,
    ``prompts(n, seed)`` (``n`` prompts for streams started without one; without it they take the
    ``world`` source's). Duplicate names raise
    :class:`~accelframe.errors.DuplicateNameError`. Fires when the registry is built. Returns
    nothing.
    """


# ------------------------------------------------------------------------------------------------
# lifecycle
# ------------------------------------------------------------------------------------------------


@hookspec
def accelframe_generation_start(info: GenerationInfo) -> None:
    """A generation is about to run: observe it (timing, logging, set-up keyed by
    ``info.generation``). A policy resets its per-generation state in its ``reset()`` method
    (:class:`accelframe.policy.Policy`), which the pipeline calls before every run; not here.

    ``info`` names the request, the adapter and drafter, and gives the registry (to look up
    scorers). Fires after validation and before the first model call. Returns nothing.
    """


@hookspec
def accelframe_generation_end(info: GenerationInfo, stats: dict[str, Any]) -> None:
    """A generation finished; ``stats`` is the JSON-serialisable statistics of its result. For
    observers (reports, logs); per-generation policy state is dropped by ``reset()``.

    Fires after the last unit is emitted, also when the generation failed part-way (then
    ``stats`` is what was counted so far). Returns nothing.
    """


# ------------------------------------------------------------------------------------------------
# step level: one decision per model call
# ------------------------------------------------------------------------------------------------


@hookspec(firstresult=True)
def accelframe_step_decide(ctx: StepContext) -> StepDecision | None:
    """Decide one model call: CACHE (reuse a velocity), PREDICT (an extrapolated velocity) or
    RECOMPUTE (run the model, optionally on a compute interval inside ``ctx.frames``).

    ``firstresult``: return None to let the next policy decide; the exact fallback recomputes the
    full interval. A velocity must be finite and shaped like ``ctx.x``; a compute interval must
    contain every advancing frame. Anything else is answered by the exact path and named in a
    warning. Fires before every denoising model call of every model the policy applies to
    (``applies_to``); never for commit passes.
    """


@hookspec
def accelframe_step_observe(
    ctx: StepContext, decision: StepDecision, velocity: torch.Tensor
) -> None:
    """See the velocity that was used for the call ``ctx`` (computed, cached or predicted).

    ``decision`` is the decision that was carried out (the exact fallback's when a policy failed).
    ``velocity`` has the shape of ``ctx.x``; frames outside a compute interval hold zeros. Fires
    after every denoising model call, for every policy that applies to the model. Returns nothing.
    """


# ------------------------------------------------------------------------------------------------
# block level: one verdict per drafted unit
# ------------------------------------------------------------------------------------------------


@hookspec(firstresult=True)
def accelframe_block_early_verdict(ctx: BlockContext) -> BlockVerdict | None:
    """A verdict that needs no pixels, asked before the drafted unit is decoded.

    ``firstresult``: return None to pass, and the draft is decoded and
    ``accelframe_block_verdict`` asked as usual. A verdict returned here is final: the draft is not
    decoded for judging and no score is taken (an accepted draft is still decoded once, to be
    emitted). ``ctx.draft_frames`` is None. Fires after the drafter finished a unit, only in
    pipelines with a drafter. A failure here (raising, or not a ``BlockVerdict``) is recorded and
    the exact fallback regenerates the unit.
    """


@hookspec(firstresult=True)
def accelframe_block_verdict(ctx: BlockContext) -> BlockVerdict | None:
    """Accept the drafted unit into the target's KV cache, or have the target regenerate it.

    ``firstresult``: return None to pass; the exact fallback regenerates. Fires after the drafter
    finished a unit (and, when the request decodes, after the draft was decoded into
    ``ctx.draft_frames``), only in pipelines with a drafter.
    """


@hookspec
def accelframe_block_observe(ctx: BlockContext, verdict: BlockVerdict) -> None:
    """See the verdict that was carried out for a drafted unit. Fires after the unit was emitted.
    Returns nothing."""


# ------------------------------------------------------------------------------------------------
# batch / stream level
# ------------------------------------------------------------------------------------------------


@hookspec(firstresult=True)
def accelframe_batch_plan(ctx: BatchContext) -> BatchPlan | None:
    """Plan the next batch of a streaming run: which streams, how many input frames each.

    ``firstresult``; an empty plan means wait for more input. Entries may not exceed a stream's
    pending frames and must be multiples of ``ctx.unit_frames``; the exact fallback runs one unit
    of the stream with the oldest pending frame (a batch of one). Fires whenever the runtime is
    ready for work.
    """


@hookspec(firstresult=True)
def accelframe_kv_manage(ctx: KVContext) -> KVAction | None:
    """Evict KV frames, refresh sink frames or reset RoPE before a stream's next chunk.

    ``firstresult``; the exact fallback does nothing beyond the adapter's own window. Evicted
    frames must be in ``ctx.cached_frames``. Fires before every chunk of a streaming run except
    a stream's first (its cache is still empty).
    """


@hookspec(firstresult=True)
def accelframe_noise_level(ctx: NoiseContext) -> float | None:
    """The noise level σ in (0, 1] a video-to-video chunk is noised to before denoising.

    ``firstresult``; the exact fallback returns ``ctx.default_sigma``. Fires before every
    video-to-video chunk of a streaming run (not for text-to-video streams).
    """


@hookspec
def accelframe_batch_admit(ctx: BatchContext, fps: float, deadline_s: float | None) -> str | None:
    """May a live loop admit one more stream of ``fps`` latent frames per second, with a per-frame
    latency budget of ``deadline_s`` seconds (None: none), beside the streams of ``ctx``? Return None
    to admit, or the reason to refuse (a person reads it: a server sends it to the client it turns
    away).

    Every implementation is asked; the first refusal refuses. The exact fallback (no plugin, or one
    that raises) admits. Fires when a stream asks to join a running live loop, before it runs.
    """


@hookspec
def accelframe_batch_observe(ctx: BatchContext, plan: BatchPlan, latency_s: float) -> None:
    """See the batch that ran and its measured wall time in seconds. Fires after every batch that
    ran (not when the plan was to wait). Returns nothing."""


# ------------------------------------------------------------------------------------------------
# around every model call
# ------------------------------------------------------------------------------------------------


@hookspec(firstresult=True)
def accelframe_model_call(call: ModelCall) -> torch.Tensor | None:
    """Run one model call. Implement it as ``@hookimpl(wrapper=True)`` to time or trace calls::

        @hookimpl(wrapper=True)
        def accelframe_model_call(call):
            t0 = time.perf_counter()
            out = yield
            record(call.kind, call.unit, time.perf_counter() - t0)
            return out

    ``firstresult``: the core's implementation (the innermost, ``trylast``) runs ``call.run()``
    and its output is the hook's result; wrappers see it and pass it on. Fires around every model call:
    denoising passes and commit passes, of target and drafter, in every runtime (a stream batch's
    batched forward over several rows is one call with ``call.rows`` rows). A wrapper must return
    the output it received.
    """
