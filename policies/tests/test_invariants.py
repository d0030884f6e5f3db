"""Property-based tests of DESIGN.md section 8, invariants 1, 2, 5, 6, 7 and 8.

Everything runs on the analytic adapter (``accelframe.testing.AnalyticAdapter``, plans "block",
"staircase" and "window") with the test policies of ``accelframe.testing.policies``. Pipelines
are built inside the test bodies on ``make_hooks()`` (autoload off): hypothesis runs a test body
many times, and function-scoped fixtures would be shared between those runs.

Each test's docstring starts with the number of the invariant it checks.
"""

from __future__ import annotations

import math
import warnings
from collections import Counter, defaultdict
from typing import Any

import attrs
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from accelframe.errors import ConfigError, PolicyError, PolicyFallbackWarning
from accelframe.pipeline import Pipeline
from accelframe.plugins import EXACT, hookimpl
from accelframe.streaming import StreamLoop, StreamSource, VirtualClock
from accelframe.testing import AnalyticAdapter
from accelframe.testing.fixtures import make_hooks
from accelframe.testing.policies import (
    AlwaysRecompute,
    NoOpinion,
    FAILURES,
    FailingBlock,
    FailingStep,
    RandomBatch,
    RandomStep,
    ThresholdBlock,
)
from accelframe.types import (
    BatchContext,
    BatchEntry,
    BatchPlan,
    Request,
    Role,
    StepContext,
    StepDecision,
)
from accelframe_policies.fixed_batch import FixedBatch

SETTINGS = settings(max_examples=40, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
FAST = settings(SETTINGS, max_examples=100)
PLANS = ("block", "staircase", "window")
INF = float("inf")


# ------------------------------------------------------------------------------------------------
# helper policies (written as a third party would)
# ------------------------------------------------------------------------------------------------


class FullInterval:
    """RECOMPUTE with an explicit compute interval equal to the forwarded frames."""

    name = "full-interval"

    @hookimpl
    def accelframe_step_decide(self, ctx: StepContext) -> StepDecision:
        return StepDecision.recompute(interval=ctx.frames)


class CacheEverywhere:
    """Tries to reuse at every call, step 0 included, with a correctly shaped finite velocity."""

    name = "cache-everywhere"

    @hookimpl
    def accelframe_step_decide(self, ctx: StepContext) -> StepDecision:
        return StepDecision.cache(torch.zeros_like(ctx.x))


class Overreach:
    """Always plans one unit more than a stream has pending (which the loop must refuse)."""

    name = "overreach"

    @hookimpl
    def accelframe_batch_plan(self, ctx: BatchContext) -> BatchPlan:
        s = ctx.streams[0]
        return BatchPlan(entries=(BatchEntry(stream=s.stream,
                                             frames=s.pending + ctx.unit_frames),))


class PastRunnable(FixedBatch):
    """fixed-batch as a policy that ignores ``StreamStatus.runnable`` plans (which the loop must refuse)."""

    @hookimpl
    def accelframe_batch_plan(self, ctx: BatchContext) -> BatchPlan:
        blind = tuple(attrs.evolve(s, runnable=None) for s in ctx.streams)
        return super().accelframe_batch_plan(attrs.evolve(ctx, streams=blind))


class RaisingBatch:
    """A batch policy that raises."""

    name = "raising-batch"

    @hookimpl
    def accelframe_batch_plan(self, ctx: BatchContext) -> BatchPlan:
        raise RuntimeError("RaisingBatch raised on purpose")


EXACT_STEP_POLICIES = {
    "always-recompute": AlwaysRecompute,
    "full-interval": FullInterval,
    "no-opinion": NoOpinion,
    "random-step-degenerate": lambda: RandomStep(seed=3, p_cache=0.0, p_predict=0.0,
                                                 p_interval=0.0),
}


# ------------------------------------------------------------------------------------------------
# strategies and helpers
# ------------------------------------------------------------------------------------------------


def _need_window(unit_frames: int, steps: int, ar_step: int, units: int) -> int:
    concurrent = units if ar_step == 0 else min(units, math.ceil(steps / ar_step))
    return concurrent * unit_frames


@st.composite
def adapter_kwargs(draw: Any, plans: tuple[str, ...] = PLANS, max_units: int = 4,
                   solvers: tuple[str, ...] = ("euler", "renoise")) -> dict[str, Any]:
    """Tiny analytic adapter knobs; ``_units`` (popped by ``split``) is the request's units."""
    plan = draw(st.sampled_from(plans))
    kw: dict[str, Any] = {
        "plan": plan,
        "unit_frames": draw(st.integers(1, 3)),
        "channels": draw(st.integers(2, 4)),
        "height": draw(st.sampled_from([4, 6, 8])),
        "width": draw(st.sampled_from([4, 6, 8])),
        "solver": draw(st.sampled_from(solvers)),
        "coupling": draw(st.sampled_from([0.0, 0.3, 0.6])),
        "smoothing": draw(st.sampled_from([0.0, 0.25])),
    }
    units = draw(st.integers(1, max_units))
    if plan == "window":
        kw["window_units"] = draw(st.integers(1, 3))
        kw["steps"] = kw["window_units"] * draw(st.integers(1, 2))
    else:
        kw["steps"] = draw(st.integers(1, 4))
    if plan == "staircase":
        kw["ar_step"] = draw(st.integers(0, 3))
        need = _need_window(kw["unit_frames"], kw["steps"], kw["ar_step"], units)
        kw["window_frames"] = draw(st.one_of(st.none(), st.integers(need, need + 4)))
    if plan == "block" and draw(st.booleans()):
        kw["kv_window"] = draw(st.integers(2, 6))
        kw["sink_frames"] = draw(st.integers(0, kw["kv_window"] - 1))
    kw["_units"] = units
    return kw


def split(kw: dict[str, Any]) -> tuple[dict[str, Any], int]:
    kw = dict(kw)
    units = kw.pop("_units")
    return kw, units * kw["unit_frames"]


def make_pipe(kw: dict[str, Any], *, drafter: dict[str, Any] | None = None,
              strict: bool = False, max_reuse: int | None = None) -> Pipeline:
    return Pipeline("analytic", adapter_kwargs=kw, hooks=make_hooks(),
                    drafter="analytic" if drafter is not None else None,
                    drafter_kwargs=drafter, strict=strict, max_reuse=max_reuse)


def generate(pipe: Pipeline, num_frames: int, seed: int, **kw: Any) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PolicyFallbackWarning)
        return pipe.generate(["a red circle moves left"], num_frames=num_frames, seed=seed, **kw)


def assert_same(a: Any, b: Any) -> None:
    """Bit for bit: latents and decoded frames."""
    assert a.latents.shape == b.latents.shape
    assert torch.equal(a.latents, b.latents)
    assert (a.frames is None) == (b.frames is None)
    if a.frames is not None:
        assert torch.equal(a.frames, b.frames)


def drafter_kwargs(draw: Any, kw: dict[str, Any]) -> dict[str, Any]:
    """A drafter compatible with the target (same unit and latent shape), cheaper and different."""
    d = dict(kw)
    d["steps"] = draw(st.integers(1, 3))
    d["coupling"] = draw(st.sampled_from([0.1, 0.5]))
    d["curvature"] = draw(st.sampled_from([0.0, 0.4]))
    return d


def pipe_plan(kw: dict[str, Any], n: int, **req: Any) -> list[Any]:
    return list(AnalyticAdapter(**kw).plan(Request(prompts=("p",), num_frames=n, **req)))


def step_events(result: Any, model: str | None = None) -> list[dict[str, Any]]:
    return [e for e in result.trace.of("step") if model is None or e["model"] == model]


def fallbacks(trace: Any, hook: str | None = None) -> list[dict[str, Any]]:
    return [e for e in trace.of("fallback") if hook is None or e["hook"] == hook]


# ------------------------------------------------------------------------------------------------
# invariant 1: degenerate settings equal the baseline bit for bit
# ------------------------------------------------------------------------------------------------


@SETTINGS
@given(kw=adapter_kwargs(), seed=st.integers(0, 2**31),
       names=st.lists(st.sampled_from(sorted(EXACT_STEP_POLICIES)), min_size=1, max_size=3),
       decode=st.booleans())
def test_inv1_exact_step_policies_equal_no_policy(kw, seed, names, decode):
    """Inv 1: a step stack that only ever answers RECOMPUTE on the full frames (or None) gives
    the no-policy run bit for bit, with the same model calls and no fallback."""
    kw, n = split(kw)
    base = generate(make_pipe(kw), n, seed, decode=decode)
    pipe = make_pipe(kw)
    for name in names:
        pipe.use(EXACT_STEP_POLICIES[name]())
    res = generate(pipe, n, seed, decode=decode)
    assert_same(res, base)
    assert res.stats.calls == base.stats.calls
    assert not fallbacks(res.trace)
    assert all(e["mode"] == "recompute" for e in step_events(res))
    assert res.sources == base.sources == ("target",) * len(base.sources)


@SETTINGS
@given(kw=adapter_kwargs(plans=("block",)), seed=st.integers(0, 2**31), data=st.data())
def test_inv1_threshold_block_tau_plus_inf_equals_target_only(kw, seed, data):
    """Inv 1: SDVG-like routing with tau = +inf regenerates every unit: the result equals the
    target-only run bit for bit (latents, frames), every source is "target"."""
    kw, n = split(kw)
    dkw = drafter_kwargs(data.draw, kw)
    base = generate(make_pipe(kw), n, seed)
    pipe = make_pipe(kw, drafter=dkw).use(ThresholdBlock(tau=INF))
    res = generate(pipe, n, seed)
    assert_same(res, base)
    assert res.sources == ("target",) * (n // kw["unit_frames"])
    verdicts = [e["verdict"] for e in res.trace.of("block")]
    assert verdicts == ["regenerate"] * len(res.sources)
    assert res.stats.blocks["accepted"] == 0


@SETTINGS
@given(kw=adapter_kwargs(plans=("block",)), seed=st.integers(0, 2**31), data=st.data(),
       tau=st.one_of(st.just(-INF), st.floats(-1.0, 1.0)))
def test_inv1_threshold_block_tau_minus_inf_emits_drafts(kw, seed, data, tau):
    """Inv 1 (and 3): with tau = -inf every unit after block 0 is the draft: its latents are the
    drafter-only run's latents bit for bit (the drafter's KV holds its own drafts), block 0 is
    the target-only run's block 0, and the emitted frames are the causal decode of exactly those
    latents. With a finite tau, every accepted unit is still exactly the drafter's."""
    kw, n = split(kw)
    b = kw["unit_frames"]
    dkw = drafter_kwargs(data.draw, kw)
    target_only = generate(make_pipe(kw), n, seed)
    draft_only = generate(make_pipe(dkw), n, seed)
    pipe = make_pipe(kw, drafter=dkw).use(ThresholdBlock(tau=tau))
    res = generate(pipe, n, seed)
    units = n // b
    assert res.sources[0] == "target"
    if tau == -INF:
        assert res.sources == ("target",) + ("draft",) * (units - 1)
    assert torch.equal(res.latents[:, :b], target_only.latents[:, :b])
    for u, source in enumerate(res.sources):
        if source == "draft":
            assert torch.equal(res.latents[:, u * b:(u + 1) * b],
                               draft_only.latents[:, u * b:(u + 1) * b])
    # emitted frames: the target's streaming decode of the emitted latents, unit by unit
    if all(s == "draft" for s in res.sources[1:]):
        ad = pipe.adapter
        req = Request(prompts=("a red circle moves left",), num_frames=n, seed=seed)
        state = ad.init_state(req, ad.encode_prompt(req.prompts))
        want = torch.cat([ad.decode(res.latents[:, u * b:(u + 1) * b], state)
                          for u in range(units)], dim=1)
        assert torch.equal(res.frames, want)
        assert torch.equal(res.frames[:, :b], target_only.frames[:, :b])


def _by_hand(pipe: Pipeline, src: StreamSource, default_sigma: float) -> torch.Tensor:
    """Run a stream's chunks one unit at a time through the engine, carrying the state."""
    ad, b = pipe.adapter, pipe.adapter.unit_frames
    state, out = None, []
    for k0 in range(0, src.total, b):
        extra: dict[str, Any] = {}
        if src.frames is not None:
            extra = {"start_sigma": default_sigma,
                     "init_latents": ad.encode(src.frames[k0:k0 + b][None])}
        req = Request(prompts=(src.prompt,), num_frames=b, seed=src.seed, first_frame=k0, **extra)
        engine = pipe.engine(generation=1, stream=0)
        res = engine.run(req, target_state=state, lifecycle=False)
        state = engine.target_state
        out.append(res.frames[0])
    return torch.cat(out, dim=0)


@SETTINGS
@given(kw=adapter_kwargs(max_units=3), seed=st.integers(0, 2**31), video=st.booleans(),
       fps=st.sampled_from([4.0, 10.0, 25.0]), start=st.sampled_from([0.0, 0.3]),
       sigma=st.sampled_from([0.3, 0.7, 1.0]))
def test_inv1_single_stream_batch_of_one_equals_sequential(kw, seed, video, fps, start, sigma):
    """Inv 1: the stream loop with one stream and the exact fallback (a batch of one unit) equals
    running the chunks one after the other by hand with a carried state, bit for bit; fixed-batch
    with chunk_units=1, max_streams=1 equals the fallback run bit for bit; a text-only block
    plan stream equals one whole generation."""
    kw, n = split(kw)
    frames = torch.rand(n, 3, kw["height"], kw["width"],
                         generator=torch.Generator().manual_seed(seed)) if video else None
    src = StreamSource(id="s", prompt="a blue square", frames=frames,
                       num_frames=None if video else n, fps=fps, start_s=start, seed=seed)
    pipe = make_pipe(kw)
    run = StreamLoop(pipe, [src], clock=VirtualClock(), default_sigma=sigma).run()
    got = run.outputs["s"].frames
    assert got.shape[0] == n
    assert all(entries == [["s", kw["unit_frames"]]] for entries in
               (b["entries"] for b in run.batches))
    assert torch.equal(got, _by_hand(make_pipe(kw), src, sigma))

    fixed = make_pipe(kw).use(FixedBatch(chunk_units=1, max_streams=1))
    run2 = StreamLoop(fixed, [src], clock=VirtualClock(), default_sigma=sigma).run()
    assert torch.equal(run2.outputs["s"].frames, got)
    assert [b["entries"] for b in run2.batches] == [b["entries"] for b in run.batches]
    assert run2.outputs["s"].emit_s == run.outputs["s"].emit_s

    if not video and kw["plan"] == "block":
        whole = make_pipe(kw).generate(["a blue square"], num_frames=n, seed=seed)
        assert torch.equal(got, whole.frames[0])


# ------------------------------------------------------------------------------------------------
# invariant 2: bounded reuse; the first step of a unit is recomputed
# ------------------------------------------------------------------------------------------------


def _runs(events: list[dict[str, Any]]) -> dict[tuple[str, int], int]:
    """Longest run of consecutive non-recompute calls per (model, unit)."""
    longest: dict[tuple[str, int], int] = defaultdict(int)
    cur: dict[tuple[str, int], int] = defaultdict(int)
    for e in events:
        key = (e["model"], e["unit"])
        cur[key] = 0 if e["mode"] == "recompute" else cur[key] + 1
        longest[key] = max(longest[key], cur[key])
    return longest


@SETTINGS
@given(kw=adapter_kwargs(), seed=st.integers(0, 2**31), h=st.integers(1, 3),
       p_cache=st.floats(0.3, 0.6), p_predict=st.floats(0.0, 0.4), data=st.data())
def test_inv2_max_reuse_bounds_consecutive_reuse(kw, seed, h, p_cache, p_predict, data):
    """Inv 2: with max_reuse = H and a policy that reuses often, no (model, unit) ever sees more
    than H non-recompute calls in a row; step 0 is always recomputed, and so is the first call
    of every (model, unit) (RandomStep has no history there)."""
    kw, n = split(kw)
    kw["steps"] = max(kw["steps"], 2 * (kw.get("window_units", 1)))
    if kw.get("window_frames") is not None:  # more steps: more staircase units at once
        need = _need_window(kw["unit_frames"], kw["steps"], kw["ar_step"], n // kw["unit_frames"])
        kw["window_frames"] = max(kw["window_frames"], need)
    dkw = drafter_kwargs(data.draw, kw) if kw["plan"] == "block" and data.draw(st.booleans()) \
        else None
    if dkw is not None:
        dkw["steps"] = kw["steps"]
    pipe = make_pipe(kw, drafter=dkw, max_reuse=h)
    pipe.use(RandomStep(seed=seed, p_cache=p_cache, p_predict=p_predict, p_interval=0.2))
    if dkw is not None:
        pipe.use(ThresholdBlock(tau=0.0))
    res = generate(pipe, n, seed)
    events = step_events(res)
    assert events
    assert max(_runs(events).values()) <= h
    assert all(e["mode"] == "recompute" for e in events if e["step"] == 0)
    first: dict[tuple[str, int], str] = {}
    for e in events:
        first.setdefault((e["model"], e["unit"]), e["mode"])
    assert set(first.values()) == {"recompute"}
    plan = {it.index: it for it in pipe_plan(kw, n)}
    for e in step_events(res, "target"):  # where a unit starts, nothing can be reused
        if plan[e["iter"]].starts:
            assert e["mode"] == "recompute"
    for e in res.trace.of("guard"):
        assert "max_reuse" in e["problem"]
    assert torch.isfinite(res.latents).all()


@SETTINGS
@given(kw=adapter_kwargs(plans=("block",)), seed=st.integers(0, 2**31), h=st.integers(1, 3))
def test_inv2_step_zero_is_recomputed_even_when_a_policy_caches(kw, seed, h):
    """Inv 2: a policy that answers CACHE at every call, step 0 included, is overruled at step 0
    (a "fallback" naming it) and after H reuses in a row (a "guard" event); without max_reuse its
    runs are longer than H whenever a unit has more than H + 1 steps, so the bound is real."""
    kw, n = split(kw)
    steps = kw["steps"]
    pipe = make_pipe(kw, max_reuse=h).use(CacheEverywhere())
    res = generate(pipe, n, seed)
    events = step_events(res)
    units = n // kw["unit_frames"]
    step0 = [e for e in events if e["step"] == 0]
    assert len(step0) == units
    assert all(e["mode"] == "recompute" and e["by"] == EXACT for e in step0)
    fb = fallbacks(res.trace, "accelframe_step_decide")
    assert fb and {e["plugin"] for e in fb} == {"cache-everywhere"}
    assert max(_runs(events).values()) == min(h, steps - 1)
    # the same policy without a bound: every step after the first reuses
    free = generate(make_pipe(kw).use(CacheEverywhere()), n, seed)
    assert max(_runs(step_events(free)).values()) == steps - 1
    if steps - 1 > h:
        assert max(_runs(step_events(free)).values()) > h
    # and with strict=True the step-0 cache is an error, not a fallback
    with pytest.raises(PolicyError, match="cache-everywhere"):
        make_pipe(kw, strict=True).use(CacheEverywhere()).generate(["x"], num_frames=n)


# ------------------------------------------------------------------------------------------------
# invariant 5: noise never increases; every frame reaches σ = 0 exactly once
# ------------------------------------------------------------------------------------------------


@FAST
@given(kw=adapter_kwargs(max_units=5), first_units=st.integers(0, 3),
       start_sigma=st.one_of(st.just(1.0), st.floats(0.05, 0.99)))
def test_inv5_plan_noise_never_increases_and_reaches_zero_once(kw, first_units, start_sigma):
    """Inv 5: walking adapter.plan(request) for random block / staircase / window plans: a frame
    is forwarded only after its unit started, its level at each call is the level the previous
    call left it at (no jump up), it never increases, "update" is exactly "σ_next < σ", it
    reaches σ = 0 in exactly one call, which is the call whose "finishes" names its unit; every
    unit starts once and finishes once; iteration indices are 0, 1, 2, ..."""
    kw, n = split(kw)
    ad = AnalyticAdapter(**kw)
    b = kw["unit_frames"]
    req = Request(prompts=("p",), num_frames=n, first_frame=first_units * b,
                  start_sigma=start_sigma)
    ad.validate(req)
    spans = {u.unit: u for u in ad.units(req)}
    level: dict[int, float] = {}
    reached: dict[int, list[int]] = defaultdict(list)
    started, finished = Counter(), Counter()
    its = list(ad.plan(req))
    assert [it.index for it in its] == list(range(len(its)))
    for it in its:
        for sp in it.starts:
            assert sp == spans[sp.unit]
            started[sp.unit] += 1
            for j in range(sp.start, sp.end):
                assert j not in level
                level[j] = start_sigma
        for i, j in enumerate(range(*it.frames)):
            assert j in level, f"frame {j} forwarded before its unit started ({it.index})"
            s, sn = it.sigma[i], it.sigma_next[i]
            assert s == level[j]
            assert sn <= s
            assert it.update[i] == (sn < s)
            if s > 0 and sn == 0:
                reached[j].append(it.index)
            level[j] = sn
            if it.role is Role.COMMIT:
                assert s == sn == 0.0
        for sp in it.finishes:
            finished[sp.unit] += 1
            for j in range(sp.start, sp.end):
                assert reached[j] == [it.index]
    frames = range(req.first_frame, req.first_frame + n)
    assert sorted(level) == list(frames)
    assert all(level[j] == 0.0 for j in frames)
    assert all(len(reached[j]) == 1 for j in frames)
    assert started == finished == Counter({u: 1 for u in spans})


# ------------------------------------------------------------------------------------------------
# invariant 6: compute intervals hold every advancing frame
# ------------------------------------------------------------------------------------------------


@SETTINGS
@given(kw=adapter_kwargs(), seed=st.integers(0, 2**31), p_interval=st.floats(0.6, 1.0),
       p_cache=st.sampled_from([0.0, 0.2]))
def test_inv6_compute_interval_contains_active_frames(kw, seed, p_interval, p_cache):
    """Inv 6: with a policy that often answers a compute interval, every step event's interval
    holds the iteration's advancing frames (recomputed from the plan by iteration index) and lies
    inside its forwarded frames; the frames counted as computed are the intervals' lengths."""
    kw, n = split(kw)
    pipe = make_pipe(kw).use(RandomStep(seed=seed, p_cache=p_cache, p_predict=0.0,
                                        p_interval=p_interval))
    res = generate(pipe, n, seed)
    req = Request(prompts=("p",), num_frames=n, seed=seed)
    plan = {it.index: it for it in pipe.adapter.plan(req)}
    computed = 0
    for e in step_events(res):
        it = plan[e["iter"]]
        assert tuple(e["frames"]) == it.frames
        if e["mode"] != "recompute":  # nothing computed: no interval
            assert e["interval"] is None
            continue
        s, t = e["interval"]
        assert it.frames[0] <= s < t <= it.frames[1]
        if it.active is not None:
            assert s <= it.active[0] and it.active[1] <= t
        computed += t - s
    assert computed == res.stats.calls["target"]["frames_computed"]
    # RandomStep may try to reuse where a staircase unit starts: the engine refuses that
    assert all("first step" in e["problem"] for e in fallbacks(res.trace))
    assert torch.isfinite(res.latents).all()


@SETTINGS
@given(kw=adapter_kwargs(), seed=st.integers(0, 2**31))
def test_inv6_bad_interval_falls_back_to_full_frames(kw, seed):
    """Inv 6: a policy answering a compute interval outside the forwarded frames or missing
    advancing frames is refused: every call computes its full frames, and the result equals the
    no-policy run bit for bit."""
    kw, n = split(kw)
    res = generate(make_pipe(kw).use(FailingStep(how="bad-interval")), n, seed)
    base = generate(make_pipe(kw), n, seed)
    assert_same(res, base)
    plan = {it.index: it for it in pipe_plan(kw, n)}
    # a call where no frame advances (staircase with ar_step > steps) may compute any interval
    ev = [e for e in step_events(res) if plan[e["iter"]].active is not None]
    assert ev and all(e["interval"] == e["frames"] and e["by"] == EXACT for e in ev)
    fb = fallbacks(res.trace, "accelframe_step_decide")
    assert len(fb) == sum(e["by"] == EXACT for e in step_events(res))
    assert {e["plugin"] for e in fb} == {"FailingStep"}
    assert all("interval" in e["problem"] for e in fb)


@FAST
@given(kw=adapter_kwargs(plans=("staircase", "window"), max_units=6),
       first_units=st.integers(0, 2))
def test_inv6_valid_interval_end_never_moves_back(kw, first_units):
    """Inv 6: on staircase and window plans the valid interval of the denoising calls holds the
    forwarded frames and the advancing ones, and neither of its ends ever moves back."""
    kw, n = split(kw)
    ad = AnalyticAdapter(**kw)
    req = Request(prompts=("p",), num_frames=n, first_frame=first_units * kw["unit_frames"])
    ad.validate(req)
    prev = (-1, -1)
    for it in ad.plan(req):
        if it.role is Role.COMMIT:
            continue
        assert it.valid is not None
        assert it.valid[0] <= it.frames[0] and it.frames[1] <= it.valid[1]
        if it.active is not None:
            assert it.valid[0] <= it.active[0] and it.active[1] <= it.valid[1]
        assert it.valid[0] >= prev[0] and it.valid[1] >= prev[1]
        prev = it.valid


@settings(SETTINGS, max_examples=15)
@given(kw=adapter_kwargs(plans=("staircase",)), data=st.data())
def test_inv6_staircase_window_too_small_is_refused(kw, data):
    """Inv 6 (guard): a staircase window too small to hold every unit still denoising is refused
    before any model call, with a ConfigError naming window_frames."""
    kw, n = split(kw)
    need = _need_window(kw["unit_frames"], kw["steps"], kw["ar_step"], n // kw["unit_frames"])
    assume(need > 1)
    kw["window_frames"] = data.draw(st.integers(1, need - 1))
    with pytest.raises(ConfigError, match="window_frames"):
        make_pipe(kw).generate(["p"], num_frames=n)


# ------------------------------------------------------------------------------------------------
# invariant 7: streams: every input frame processed once, emitted once, in order
# ------------------------------------------------------------------------------------------------


@st.composite
def stream_sources(draw: Any, unit: int, h: int, w: int) -> list[StreamSource]:
    out = []
    for k in range(draw(st.integers(1, 3))):
        total = draw(st.integers(1, 3)) * unit
        video = draw(st.booleans())
        seed = draw(st.integers(0, 1000))
        frames = torch.rand(total, 3, h, w, generator=torch.Generator().manual_seed(seed)) \
            if video else None
        out.append(StreamSource(
            id=f"s{k}", prompt=draw(st.sampled_from(["a red circle", "a blue square"])),
            frames=frames, num_frames=None if video else total,
            fps=draw(st.sampled_from([3.0, 7.5, 12.0, 16.0, 30.0])),
            start_s=draw(st.sampled_from([0.0, 0.05, 0.2, 0.5, 1.0])), seed=seed))
    return out


def _check_stream_run(run: Any, sources: list[StreamSource], unit: int) -> None:
    """The accounting part of invariant 7, replayed from the run's batch records."""
    consumed = Counter()
    for batch in run.batches:
        assert batch["entries"], "an empty batch was recorded"
        names = [s for s, _ in batch["entries"]]
        assert len(names) == len(set(names))
        for sid, frames in batch["entries"]:
            src = next(s for s in sources if s.id == sid)
            assert frames > 0 and frames % unit == 0
            assert frames <= src.received(batch["t_s"]) - consumed[sid], \
                f"batch at {batch['t_s']} takes {frames} frames of {sid} not yet received"
            consumed[sid] += frames
    for src in sources:
        out = run.outputs[src.id]
        assert consumed[src.id] == src.total
        assert out.frames is not None and out.frames.shape == (src.total, 3, *out.frames.shape[2:])
        assert len(out.emit_s) == len(out.arrival_s) == src.total
        assert out.arrival_s == [src.arrival_s(k) for k in range(src.total)]
        assert all(a <= b for a, b in zip(out.emit_s, out.emit_s[1:]))
        # (received() counts a frame as arrived 1e-9 s early, against float rounding)
        assert all(e >= a - 1e-9 for e, a in zip(out.emit_s, out.arrival_s)), \
            "emitted before arrival"


def _replay(pipe: Pipeline, run: Any, src: StreamSource) -> torch.Tensor:
    """Replay one stream's chunks, with the run's chunk sizes and noise levels, in order."""
    ad = pipe.adapter
    sizes = [f for b in run.batches for sid, f in b["entries"] if sid == src.id]
    sigmas = [e["sigma"] for e in run.trace.of("noise") if e["stream"] == src.id]
    assert len(sigmas) == (len(sizes) if src.frames is not None else 0)
    state, k0, out = None, 0, []
    for c, size in enumerate(sizes):
        extra: dict[str, Any] = {}
        if src.frames is not None:
            extra = {"start_sigma": sigmas[c],
                     "init_latents": ad.encode(src.frames[k0:k0 + size][None])}
        req = Request(prompts=(src.prompt,), num_frames=size, seed=src.seed, first_frame=k0,
                      **extra)
        engine = pipe.engine(generation=1, stream=0)  # a stream's noise is its source's alone
        res = engine.run(req, target_state=state, lifecycle=False)
        state = engine.target_state
        out.append(res.frames[0])
        k0 += size
    return torch.cat(out, dim=0)


@SETTINGS
@given(kw=adapter_kwargs(max_units=1), data=st.data(), seed=st.integers(0, 2**20),
       policy=st.sampled_from(["random", "random-overreach", "fallback", "fixed"]))
def test_inv7_streams_emit_every_frame_once_in_order(kw, data, seed, policy):
    """Inv 7: random streams (fps, start times, lengths, some video-to-video, some text-only)
    under random batch plans (overreaching ones included), the exact fallback and fixed-batch:
    every input frame is consumed and emitted exactly once; no batch entry takes a frame that has
    not arrived at the batch's time; chunk by chunk, each stream's output is exactly its own
    frames processed in order (replayed by hand); text-only block-plan streams equal one whole
    generation, however they were batched; refused plans leave a "fallback" naming the policy."""
    kw, _ = split(kw)
    unit = kw["unit_frames"]
    sources = data.draw(stream_sources(unit, kw["height"], kw["width"]))
    pipe = make_pipe(kw)
    if policy.startswith("random"):
        pipe.use(RandomBatch(seed=seed, overreach=policy.endswith("overreach")))
    elif policy == "fixed":
        pipe.use(FixedBatch(chunk_units=2, max_streams=2))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PolicyFallbackWarning)
        run = StreamLoop(pipe, sources, clock=VirtualClock()).run()
    _check_stream_run(run, sources, unit)
    fb = fallbacks(run.trace)
    # a staircase window sized for one unit cannot run a chunk of several: refused too
    if policy == "random":  # it never overreaches, but may wait when it should not
        assert all("waits" in e["problem"] or "cannot run" in e["problem"] for e in fb)
    elif policy == "fixed":
        assert all("cannot run" in e["problem"] for e in fb)
    elif policy == "fallback":
        assert not fb
    for e in fb:
        assert e["hook"] == "accelframe_batch_plan"
        assert e["plugin"] == ("FixedBatch" if policy == "fixed" else "RandomBatch")
        assert any(w in e["problem"] for w in ("pending", "waits", "cannot run"))
    assert len(fb) == run.stats.fallbacks.get("accelframe_batch_plan", 0)
    for src in sources:
        got = run.outputs[src.id].frames
        assert torch.equal(got, _replay(make_pipe(kw), run, src))
        if src.frames is None and kw["plan"] == "block":
            whole = make_pipe(kw).engine(generation=1, stream=0).run(
                Request(prompts=(src.prompt,), num_frames=src.total, seed=src.seed))
            assert torch.equal(got, whole.frames[0])


@settings(SETTINGS, max_examples=10)
@given(kw=adapter_kwargs(plans=("block", "window"), max_units=1), data=st.data())
def test_inv7_overreaching_plans_are_refused_and_the_run_completes(kw, data):
    """Inv 7: a batch policy that always asks for frames not yet received is refused at every
    batch ("fallback" naming it, a warning), the exact batch of one runs instead, and the run
    equals the fallback-only run bit for bit."""
    kw, _ = split(kw)
    sources = data.draw(stream_sources(kw["unit_frames"], kw["height"], kw["width"]))
    ref = StreamLoop(make_pipe(kw), sources, clock=VirtualClock()).run()
    pipe = make_pipe(kw).use(Overreach())
    with pytest.warns(PolicyFallbackWarning, match="overreach"):
        run = StreamLoop(pipe, sources, clock=VirtualClock()).run()
    _check_stream_run(run, sources, kw["unit_frames"])
    assert all(b["by"] == EXACT for b in run.batches)
    fb = fallbacks(run.trace, "accelframe_batch_plan")
    assert len(fb) >= len(run.batches) and {e["plugin"] for e in fb} == {"overreach"}
    assert [b["entries"] for b in run.batches] == [b["entries"] for b in ref.batches]
    for src in sources:
        assert torch.equal(run.outputs[src.id].frames, ref.outputs[src.id].frames)


@settings(SETTINGS, max_examples=15)
@given(kw=adapter_kwargs(plans=("staircase",), max_units=1), data=st.data())
def test_inv7_chunks_the_adapter_cannot_run_are_refused(kw, data):
    """Inv 7: a plan whose chunk the adapter cannot run (a staircase window sized for one unit,
    asked for several at once) is refused like an overreaching one ("fallback" naming the policy,
    "cannot run"), the batch of one answers, and every frame is still emitted once, in order; the
    loop tells the policy so (``StreamStatus.runnable`` is one unit where more are pending), and
    fixed-batch, which reads it, plans one unit and is never refused; a window too small even for
    one unit fails when the loop is built, before any model call."""
    kw, _ = split(kw)
    b = kw["unit_frames"]
    kw["ar_step"] = 0
    kw["window_frames"] = b  # one unit at a time
    sources = data.draw(stream_sources(b, kw["height"], kw["width"]))
    runs = {}
    for policy in (PastRunnable, FixedBatch):
        pipe = make_pipe(kw).use(policy(chunk_units=3, max_streams=3))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", PolicyFallbackWarning)
            run = runs[policy] = StreamLoop(pipe, sources, clock=VirtualClock(start=10.0)).run()  # all arrived
        _check_stream_run(run, sources, b)
        assert all(f == b for batch in run.batches for _, f in batch["entries"])
        for src in sources:
            assert torch.equal(run.outputs[src.id].frames, _replay(make_pipe(kw), run, src))
    fb = fallbacks(runs[PastRunnable].trace, "accelframe_batch_plan")
    if any(src.total > b for src in sources):
        assert fb and all("cannot run" in e["problem"] and e["plugin"] == "PastRunnable"
                          for e in fb)
    assert not fallbacks(runs[FixedBatch].trace) and all(batch["by"] != EXACT for batch in runs[FixedBatch].batches)
    for src in sources:
        assert torch.equal(runs[FixedBatch].outputs[src.id].frames, runs[PastRunnable].outputs[src.id].frames)
    if b > 1:
        small = make_pipe(dict(kw, window_frames=b - 1))
        with pytest.raises(ConfigError, match="window_frames"):
            StreamLoop(small, sources, clock=VirtualClock())


# ------------------------------------------------------------------------------------------------
# invariant 8: a failing plugin changes speed, never correctness
# ------------------------------------------------------------------------------------------------


@SETTINGS
@given(kw=adapter_kwargs(), seed=st.integers(0, 2**31), how=st.sampled_from(FAILURES),
       every=st.integers(1, 3),
       names=st.lists(st.sampled_from(sorted(EXACT_STEP_POLICIES)), max_size=2),
       data=st.data())
def test_inv8_failing_step_plugin_keeps_the_baseline(kw, seed, how, every, names, data):
    """Inv 8: a failing step plugin stacked first (each way of FAILURES, every k-th call), with
    exact-equivalent policies after it, and optionally a drafter routed by tau = +inf: the
    result equals the exact baseline bit for bit, the trace has "fallback" events naming the
    plugin, a PolicyFallbackWarning names it, and strict=True raises a PolicyError naming it."""
    kw, n = split(kw)
    dkw = drafter_kwargs(data.draw, kw) if kw["plan"] == "block" and data.draw(st.booleans()) \
        else None

    def build(strict: bool = False) -> Pipeline:
        pipe = make_pipe(kw, drafter=dkw, strict=strict).use(FailingStep(how=how, every=every))
        for name in names:
            pipe.use(EXACT_STEP_POLICIES[name]())
        if dkw is not None:
            pipe.use(ThresholdBlock(tau=INF))
        return pipe

    calls = sum(1 for it in AnalyticAdapter(**kw).plan(Request(prompts=("p",), num_frames=n))
                if it.role is Role.DENOISE)
    assume(calls >= every)
    base = generate(make_pipe(kw), n, seed)
    with pytest.warns(PolicyFallbackWarning, match="FailingStep"):
        res = build().generate(["a red circle moves left"], num_frames=n, seed=seed)
    assert_same(res, base)
    fb = fallbacks(res.trace)
    assert fb and {e["plugin"] for e in fb} == {"FailingStep"}
    decide = [e for e in fb if e["hook"] == "accelframe_step_decide"]
    assert decide and all(e["exact"] for e in decide)
    assert all(e["mode"] == "recompute" for e in step_events(res))
    with pytest.raises(PolicyError, match="FailingStep"):
        build(strict=True).generate(["a red circle moves left"], num_frames=n, seed=seed)


@SETTINGS
@given(kw=adapter_kwargs(plans=("block",)), seed=st.integers(0, 2**31),
       how=st.sampled_from(["raise", "nan-score", "nonsense"]),
       tau=st.sampled_from([-INF, 0.0, INF]), data=st.data())
def test_inv8_failing_block_plugin_keeps_the_baseline(kw, seed, how, tau, data):
    """Inv 8: a failing block plugin stacked first (raising, NaN score, nonsense) is answered by
    the exact path (regenerate with the target), whatever the router after it would say: the
    result equals the target-only run bit for bit; fallback events and a warning name it; strict
    raises a PolicyError."""
    kw, n = split(kw)
    dkw = drafter_kwargs(data.draw, kw)

    def build(strict: bool = False) -> Pipeline:
        return make_pipe(kw, drafter=dkw, strict=strict).use(FailingBlock(how=how)) \
            .use(ThresholdBlock(tau=tau))

    base = generate(make_pipe(kw), n, seed)
    with pytest.warns(PolicyFallbackWarning, match="FailingBlock"):
        res = build().generate(["a red circle moves left"], num_frames=n, seed=seed)
    assert_same(res, base)
    assert res.sources == ("target",) * (n // kw["unit_frames"])
    fb = fallbacks(res.trace, "accelframe_block_verdict")
    assert len(fb) == len(res.sources) and {e["plugin"] for e in fb} == {"FailingBlock"}
    assert all(e["by"] == EXACT for e in res.trace.of("block"))
    with pytest.raises(PolicyError, match="FailingBlock"):
        build(strict=True).generate(["a red circle moves left"], num_frames=n, seed=seed)


@settings(SETTINGS, max_examples=10)
@given(kw=adapter_kwargs(plans=("block", "staircase"), max_units=1), data=st.data())
def test_inv8_failing_batch_plugin_keeps_the_fallback_run(kw, data):
    """Inv 8: a raising batch policy is answered by the batch of one: the streaming run equals
    the fallback-only run bit for bit, the trace and a warning name the policy, strict raises."""
    kw, _ = split(kw)
    sources = data.draw(stream_sources(kw["unit_frames"], kw["height"], kw["width"]))
    ref = StreamLoop(make_pipe(kw), sources, clock=VirtualClock()).run()
    with pytest.warns(PolicyFallbackWarning, match="raising-batch"):
        run = StreamLoop(make_pipe(kw).use(RaisingBatch()), sources, clock=VirtualClock()).run()
    _check_stream_run(run, sources, kw["unit_frames"])
    assert [b["entries"] for b in run.batches] == [b["entries"] for b in ref.batches]
    for src in sources:
        assert torch.equal(run.outputs[src.id].frames, ref.outputs[src.id].frames)
    assert {e["plugin"] for e in fallbacks(run.trace)} == {"raising-batch"}
    with pytest.raises(PolicyError, match="raising-batch"):
        StreamLoop(make_pipe(kw, strict=True).use(RaisingBatch()), sources,
                   clock=VirtualClock()).run()
