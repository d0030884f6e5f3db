"""SCOPE: the predictors against hand-computed cases, the scheduler's equations step by step, the
selective interval, the invariants of DESIGN.md section 8 (1, 2 and 6) and bad input."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from accelframe.errors import ConfigError, IncompatibleError
from accelframe.pipeline import Pipeline
from accelframe.testing.fixtures import make_hooks
from accelframe.types import CallSite, Iteration, Mode, ModelRole, StepContext, StepDecision
from accelframe_policies import plugin as policies_plugin
from accelframe_policies.history import entry, l1
from accelframe_policies.scope import PRESETS, SENSITIVITY, Scope
from accelframe_policies.selective import ActiveInterval, compute_interval, interval_end
from accelframe_policies.taylor import clip_correction, extrapolate, predict

SETTINGS = settings(max_examples=25, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow])


def _v(*values: float) -> torch.Tensor:
    """Per-frame scalar velocities as ``[1, F, 1, 1, 1]``."""
    return torch.tensor(values, dtype=torch.float64).view(1, -1, 1, 1, 1)


def _hist(points: list[tuple[tuple[float, ...], tuple[float, ...]]], computed=None):
    """Entries (newest first) from (sigmas, velocities) pairs."""
    out = []
    for k, (sig, vel) in enumerate(points):
        e = entry(_v(*vel), sig, (0, len(sig)), None, step=10 - k)
        if computed is not None:
            e.computed[:] = torch.tensor(computed[k])
        out.append(e)
    return out


# ---- predictors (Eq. 6 and 7) --------------------------------------------------------------------


def test_first_order_matches_eq6_by_hand():
    # v_k = 2 at σ 0.6, v_{k-1} = 1 at σ 0.8: dv/dσ = (2 - 1) / (0.6 - 0.8) = -5; at σ* = 0.5, Δ = -0.1
    hist = _hist([((0.6,), (2.0,)), ((0.8,), (1.0,))])
    v, used = extrapolate(hist, torch.tensor([0.5]), order=1)
    assert v.item() == pytest.approx(2.0 + (-5.0) * (-0.1))
    assert used.tolist() == [1]


def test_second_order_matches_eq7_by_hand():
    # σ: 0.9, 0.7, 0.6 (oldest to newest); v = 1, 2, 4; σ* = 0.5
    hist = _hist([((0.6,), (4.0,)), ((0.7,), (2.0,)), ((0.9,), (1.0,))])
    d1, d2, delta = 0.6 - 0.7, 0.7 - 0.9, 0.5 - 0.6
    g1, g2 = (4 - 2) / d1, (2 - 1) / d2
    v1 = 4 + g1 * delta
    v2 = v1 + 0.5 * (g1 - g2) / ((d1 + d2) / 2) * delta ** 2
    v, used = extrapolate(hist, torch.tensor([0.5]), order=2, clip=100.0)
    assert v.item() == pytest.approx(v2)
    assert used.tolist() == [2]


def test_orders_on_smooth_fields():
    """Both orders are exact on a linear field; on a quadratic Eq. 7 (whose slope is the backward
    difference, as the paper writes it) is closer than Eq. 6 and than reuse."""
    lin = lambda s: 1.0 - 4.0 * s  # noqa: E731
    hist = _hist([((s,), (lin(s),)) for s in (0.4, 0.5, 0.6)])
    for p in ("taylor1", "taylor2"):
        assert predict(hist, torch.tensor([0.3]), p, clip=100.0)[0].item() == pytest.approx(lin(0.3))
    f = lambda s: 3.0 - 2.0 * s + 5.0 * s * s  # noqa: E731
    hist = _hist([((s,), (f(s),)) for s in (0.4, 0.5, 0.6)])
    err = {p: abs(predict(hist, torch.tensor([0.3]), p, clip=100.0)[0].item() - f(0.3))
           for p in ("taylor1", "taylor2")}
    assert err["taylor2"] < err["taylor1"] < abs(f(0.4) - f(0.3))


def test_per_frame_levels_and_degradation():
    # frame 0 moves (first order works); frame 1 did not move between the entries (no derivative:
    # reuse); frame 2 was not computed by the older entry (reuse)
    hist = _hist([((0.6, 0.5, 0.6), (2.0, 7.0, 3.0)), ((0.8, 0.5, 0.8), (1.0, 9.0, 0.0))],
                 computed=[[True, True, True], [True, True, False]])
    v, used = extrapolate(hist, torch.tensor([0.5, 0.4, 0.5]), order=1)
    assert v.flatten().tolist() == pytest.approx([2.5, 7.0, 3.0])
    assert used.tolist() == [1, 0, 0]


def test_far_extrapolation_falls_back_to_reuse():
    hist = _hist([((0.6,), (2.0,)), ((0.61,), (1.0,))])  # history spans 0.01
    v, used = extrapolate(hist, torch.tensor([0.3]), order=1, max_ratio=8.0)  # 30x the span
    assert v.item() == 2.0 and used.tolist() == [0]


def test_clipping_caps_the_correction_per_frame():
    corr = _v(10.0, 0.1)
    base = _v(1.0, 1.0)
    out = clip_correction(corr, base, clip=0.5)
    assert out.flatten().tolist() == pytest.approx([0.5, 0.1])
    assert clip_correction(_v(math.nan), _v(1.0), 1.0).item() == 0.0


def test_clipping_gives_the_same_bits_whatever_the_velocities_memory_layout():
    """A model output is a permuted view in one process and a packed buffer on a pipeline rank: the
    per-frame L1 sums behind the clipping run in one order for both, so the prediction is the same
    bit for bit (a plain ``abs().sum()`` over the view rounds differently for most draws)."""
    g = torch.Generator().manual_seed(0)
    raw = torch.randn(2, 8, 3, 16, 16, generator=g)  # [R, C, F, H, W]: rows of one forward
    view = raw.permute(0, 2, 1, 3, 4)[:1]  # [1, F, C, H, W], a row of it
    packed = view.contiguous()
    base = torch.rand(1, 3, 8, 16, 16, generator=g) * 0.01  # small: every frame is clipped
    assert torch.equal(clip_correction(view, base, 1.0), clip_correction(packed, base, 1.0))
    assert torch.equal(l1(view, (0, 2, 3, 4)), l1(packed, (0, 2, 3, 4)))


def test_momentum_and_auto():
    hist = _hist([((0.6,), (4.0,)), ((0.7,), (2.0,)), ((0.9,), (1.0,))])
    g1, g2 = (4 - 2) / -0.1, (2 - 1) / -0.2
    v, _ = predict(hist, torch.tensor([0.5]), "momentum", momentum=0.25, clip=100.0)
    assert v.item() == pytest.approx(4 + (0.75 * g1 + 0.25 * g2) * -0.1)
    lin = lambda s: 1.0 + 3.0 * s  # noqa: E731 - a linear field: auto must pick an order >= 1
    hist = _hist([((s,), (lin(s),)) for s in (0.5, 0.6, 0.7, 0.8)])
    v, used = predict(hist, torch.tensor([0.4]), "auto")
    assert v.item() == pytest.approx(lin(0.4)) and used.item() >= 1


# ---- selective computation (Eq. 8 and 9) ---------------------------------------------------------


def _it(update, index=0, frames=None, valid=None, step=1):
    f = len(update)
    frames = frames or (0, f)
    sig = tuple(0.5 for _ in update)
    nxt = tuple(0.4 if u else 0.5 for u in update)
    return Iteration(index=index, unit=0, step=step, frames=frames, sigma=sig, sigma_next=nxt,
                     update=tuple(update), valid=valid)


def test_interval_end_by_hand():
    assert interval_end((False, True, True, False, False), None, 5) == 3
    assert interval_end((True, False, False, False, False), 3, 5) == 3  # never moves back
    assert interval_end((False,) * 5, None, 4) == 4  # no frame advances: min(B, F)
    it = _it((False, True, True, False, False), frames=(10, 15), valid=(10, 15))
    assert compute_interval(it, 3) == (10, 13)
    it = _it((False, False, True, True, False, False), frames=(10, 16), valid=(8, 20))  # B = 12 > F
    assert compute_interval(it, 4) == (10, 14)


@SETTINGS
@given(st.lists(st.lists(st.booleans(), min_size=6, max_size=6), min_size=1, max_size=12))
def test_selective_interval_holds_advancing_frames_and_never_moves_back(masks):
    """6. The compute interval contains every advancing frame and its end never moves back."""
    tracker, last = ActiveInterval(), 0
    for t, mask in enumerate(masks):
        it = _it(tuple(mask), index=t)
        end = tracker.peek("k", it)
        tracker.record("k", end)
        a, b = compute_interval(it, end)
        assert b >= last
        last = b
        for j, m in enumerate(mask):
            if m:
                assert a <= j < b


# ---- the scheduler, call by call (Eq. 3 to 5) ------------------------------------------------------


def _ctx(probe_value: float, step: int, index: int, x: torch.Tensor, sigma: float = 0.5) -> StepContext:
    site = CallSite(generation=1, model=ModelRole.TARGET, adapter="fake",
                    probe=lambda xs, it: torch.full((1, 1, 4), probe_value))
    it = Iteration(index=index, unit=0, step=step, frames=(0, 1), sigma=(sigma,), sigma_next=(sigma - 0.05,),
                   update=(True,))
    return StepContext(site=site, iteration=it, x=x)


def test_scheduler_follows_equations_3_to_5():
    """Probe values chosen so that d_k is known: r^- accumulates, PREDICT decays it by λ, RECOMPUTE
    resets it, and H bounds the non-recompute run."""
    pol = Scope(tau_c=0.1, tau_p=0.3, decay=0.5, max_skip=3, predictor="taylor1")
    x = torch.zeros(1, 1, 1, 1, 1)
    # probe values with known d_k: -, .5, .05, .1, .1, .01, .4
    values = [1.0, 1.5]
    for d in (0.05, 0.1, 0.1, 0.01, 0.4):
        values.append(values[-1] * (1 + d))
    modes, rs = [], []
    for k, val in enumerate(values):
        ctx = _ctx(val, k, k, x, sigma=0.9 - 0.1 * k)
        dec = pol.accelframe_step_decide(ctx=ctx)
        v = torch.full_like(x, float(k)) if dec.mode is Mode.RECOMPUTE else dec.velocity
        pol.accelframe_step_observe(ctx=ctx, decision=dec, velocity=v)
        modes.append(dec.mode)
        rs.append(pol._units[(1, "target", 0)].r)
    R, C, P = Mode.RECOMPUTE, Mode.CACHE, Mode.PREDICT
    # k0 first step; k1 r- = .5 >= tau_p; k2 r- = .05 < tau_c: cache; k3 r- = .15: predict (two
    # computed velocities), r = .075; k4 r- = .175: predict, r = .0875, three in a row = H;
    # k5 H reached: recompute, r = 0; k6 r- = .4 >= tau_p
    assert modes == [R, R, C, P, P, R, R]
    assert rs[2] == pytest.approx(0.05)
    assert rs[3] == pytest.approx(0.5 * 0.15)
    assert rs[4] == pytest.approx(0.5 * (0.075 + 0.1))
    assert rs[5] == 0.0 and rs[6] == 0.0


def test_thresholds_zero_always_recompute():
    pol = Scope(tau_c=0.0, tau_p=0.0)
    x = torch.zeros(1, 1, 1, 1, 1)
    for k in range(6):
        ctx = _ctx(1.0, k, k, x)
        dec = pol.accelframe_step_decide(ctx=ctx)
        assert dec.mode is Mode.RECOMPUTE and dec.interval is None
        pol.accelframe_step_observe(ctx=ctx, decision=dec, velocity=x)


# ---- invariants on real plans --------------------------------------------------------------------


def _hooks():
    return make_hooks(policies_plugin)


def _runs(events):
    run, worst = 0, 0
    for e in events:
        if e["event"] != "step":
            continue
        run = 0 if e["mode"] == "recompute" else run + 1
        worst = max(worst, run)
    return worst


@SETTINGS
@given(plan=st.sampled_from(["block", "staircase", "window"]), steps=st.integers(2, 8),
       ar=st.integers(0, 3), seed=st.integers(0, 5))
def test_zero_thresholds_equal_the_original_bit_for_bit(plan, steps, ar, seed):
    """1. SCOPE with tau_c = tau_p = 0 equals the original bit for bit (and with selective
    computation on the staircase, whose frames attend causally)."""
    hooks = _hooks()
    kw = {"plan": plan, "steps": steps if plan != "window" else 2 * (steps // 2 or 1), "ar_step": ar}
    base = Pipeline("analytic", adapter_kwargs=kw, hooks=hooks).generate(["a"], num_frames=9, seed=seed)
    pipe = Pipeline("analytic", adapter_kwargs=kw, hooks=hooks)
    pipe.use("scope", tau_c=0.0, tau_p=0.0, selective=(plan == "staircase"))
    out = pipe.generate(["a"], num_frames=9, seed=seed)
    assert torch.equal(out.latents, base.latents)
    assert torch.equal(out.frames, base.frames)


@SETTINGS
@given(plan=st.sampled_from(["block", "staircase", "window"]), tau_c=st.floats(0.0, 0.5),
       extra=st.floats(0.0, 1.0), h=st.integers(1, 4), predictor=st.sampled_from(["taylor1", "taylor2",
                                                                                  "momentum", "auto"]))
def test_horizon_first_steps_and_history(plan, tau_c, extra, h, predictor):
    """2. Never more than H non-recompute calls in a row; a unit's first call and every call without
    the history its mode needs is recomputed."""
    hooks = _hooks()
    kw = {"plan": plan, "steps": 8, "ar_step": 2, "curvature": 0.05}
    pipe = Pipeline("analytic", adapter_kwargs=kw, hooks=hooks)
    pipe.use("scope", tau_c=tau_c, tau_p=tau_c + extra, max_skip=h, predictor=predictor,
             selective=(plan == "staircase"))
    res = pipe.generate(["a"], num_frames=9, seed=1)
    steps = [e for e in res.trace.events if e["event"] == "step"]
    assert _runs(res.trace.events) <= h
    computed: dict[int, int] = {}
    for e in steps:
        if e["step"] == 0:
            assert e["mode"] == "recompute"
        if e["mode"] == "predict":
            from accelframe_policies.scope import MIN_HISTORY
            assert computed.get(e["unit"], 0) >= MIN_HISTORY[predictor]
        if e["mode"] == "cache":
            assert computed.get(e["unit"], 0) >= 1
        if e["mode"] == "recompute":
            computed[e["unit"]] = computed.get(e["unit"], 0) + 1
    assert res.stats.fallbacks == {}


def test_selective_interval_on_the_skyreels_staircase_is_a_trimmed_window():
    """6. On the SkyReels-V2 step matrix every computed interval starts at the window's first frame,
    holds every advancing frame, and its end never moves back within a segment."""
    hooks = _hooks_world()
    pipe = Pipeline("skyreels-v2-df", hooks=hooks,
                    adapter_kwargs={"size": "tiny", "num_inference_steps": 6, "ar_step": 2,
                                    "causal_block_size": 1, "base_num_frames": 17, "guidance_scale": 1.0,
                                    "height": 32, "width": 32})
    pipe.use("scope", tau_c=0.0, tau_p=0.0, selective=True)
    res = pipe.generate(["a red circle"], num_frames=5, seed=0, decode=False)
    its = list(pipe.adapter.plan(pipe.request(["a red circle"], num_frames=5)))
    last = 0
    steps = [e for e in res.trace.events if e["event"] == "step"]
    assert len(steps) == len(its)
    for e, it in zip(steps, its):
        a, b = e["interval"]
        assert a == it.frames[0] and b >= last
        last = b
        if it.active is not None:
            assert a <= it.active[0] and it.active[1] <= b
    assert res.stats.calls["target"]["frames_computed"] < len(its) * 5


def _hooks_world():
    from accelframe_adapters import plugin as adapters_plugin

    return make_hooks(adapters_plugin, policies_plugin)


def test_zero_thresholds_equal_skyreels_original_and_selective_stays_close():
    """1. On the tiny SkyReels-V2 DiT: thresholds 0 without selective computation are the original
    bit for bit; with it, the block-causal mask makes dropping unstarted frames exact up to rounding."""
    hooks = _hooks_world()
    kw = {"size": "tiny", "num_inference_steps": 5, "ar_step": 2, "causal_block_size": 2,
          "base_num_frames": 13, "guidance_scale": 1.0, "height": 32, "width": 32}
    base = Pipeline("skyreels-v2-df", hooks=hooks, adapter_kwargs=kw).generate(["a"], num_frames=4, seed=3,
                                                                               decode=False)
    for selective in (False, True):
        pipe = Pipeline("skyreels-v2-df", hooks=hooks, adapter_kwargs=kw)
        pipe.use("scope", tau_c=0.0, tau_p=0.0, selective=selective)
        out = pipe.generate(["a"], num_frames=4, seed=3, decode=False)
        if selective:
            assert torch.allclose(out.latents, base.latents, atol=1e-4)
        else:
            assert torch.equal(out.latents, base.latents)


# ---- presets and bad input -----------------------------------------------------------------------


def test_presets_are_the_papers_settings():
    sky, magi = Scope.preset("skyreels-v2"), Scope.preset("magi-1")
    assert (sky.tau_c, sky.tau_p, sky.predictor, sky.decay, sky.max_skip, sky.selective) == (
        0.18, 0.42, "taylor2", 0.75, 5, True)
    assert (magi.tau_c, magi.tau_p, magi.predictor, magi.decay, magi.max_skip, magi.selective) == (
        0.03, 0.08, "taylor2", 0.75, 5, False)
    assert (0.18, 0.42) in SENSITIVITY["skyreels-v2"] and (0.03, 0.08) in SENSITIVITY["magi-1"]
    assert Scope.preset("skyreels-v2", tau_c=0.12, tau_p=0.3).tau_p == 0.3
    assert set(PRESETS) == {"skyreels-v2", "magi-1"}


@pytest.mark.parametrize("kwargs, field, words", [
    ({"tau_c": 0.5, "tau_p": 0.4}, "tau_c", "tau_p = 0.4"),
    ({"decay": 0.0}, "decay", "(0.0, 1.0]"),
    ({"decay": 1.5}, "decay", "(0.0, 1.0]"),
    ({"max_skip": 0}, "max_skip", "[1,"),
    ({"predictor": "taylor2", "history": 2}, "history", "an int >= 3"),
    ({"predictor": "taylor1", "history": 1}, "history", "an int >= 2"),
    ({"predictor": "cubic"}, "predictor", "'taylor1'"),
    ({"preset": "wan"}, "preset", "'skyreels-v2'"),
])
def test_bad_configs_are_typed_errors(kwargs, field, words):
    hooks = _hooks()
    pipe = Pipeline("analytic", hooks=hooks)
    with pytest.raises(ConfigError) as err:
        pipe.use("scope", **kwargs)
    assert err.value.field == field and words in str(err.value)


def test_selective_needs_an_update_mask():
    hooks = _hooks()
    pipe = Pipeline("analytic", adapter_kwargs={"plan": "block"}, hooks=hooks)
    with pytest.raises(IncompatibleError, match="update_mask"):
        pipe.use("scope", preset="skyreels-v2")
    pipe.use("scope", preset="skyreels-v2", selective=False)  # the same settings without it are fine


def test_decisions_are_keyed_on_unit_and_step():
    """A unit never reuses another unit's velocity: every block of a block loop starts with a
    recompute, and caches only after it."""
    hooks = _hooks()
    pipe = Pipeline("analytic", adapter_kwargs={"plan": "block", "steps": 6}, hooks=hooks)
    pipe.use("scope", tau_c=10.0, tau_p=10.0)
    res = pipe.generate(["a"], num_frames=9, seed=0)
    by_unit: dict[int, list[str]] = {}
    for e in res.trace.events:
        if e["event"] == "step":
            by_unit.setdefault(e["unit"], []).append(e["mode"])
    assert all(m[0] == "recompute" and "cache" in m for m in by_unit.values())
    calls = res.stats.calls["target"]
    assert (calls["commit"], calls["commit_skipped"]) == (2, 1)  # the last unit's is not needed


def test_scope_decision_records_reason():
    pol = Scope()
    x = torch.zeros(1, 1, 1, 1, 1)
    dec = pol.accelframe_step_decide(ctx=_ctx(1.0, 0, 0, x))
    assert isinstance(dec, StepDecision) and "first step" in dec.reason


# ---- stacking (DESIGN.md section 6) --------------------------------------------------------------


@pytest.mark.parametrize("applies_to", ["target", "drafter", "both"])
def test_scope_stacks_with_a_block_policy_and_a_batch_policy(applies_to):
    """SCOPE on the drafter, the target or both, under a block policy and a batch policy: the
    block invariants hold, SCOPE's decisions land only on the model it applies to."""
    from accelframe.streaming import StreamSource, VirtualClock
    from accelframe.testing.policies import ThresholdBlock

    hooks = _hooks()
    kw = {"plan": "block", "steps": 8}
    pipe = Pipeline("analytic", adapter_kwargs=kw, drafter="analytic", drafter_kwargs=kw, hooks=hooks)
    pipe.use("scope", tau_c=0.05, tau_p=0.5, predictor="taylor1", applies_to=applies_to)
    pipe.use(ThresholdBlock(tau=0.4))
    pipe.use("fixed-batch", max_streams=2)
    res = pipe.generate(["a"], num_frames=12, seed=2)
    assert res.sources[0] == "target"  # block 0 is always regenerated
    by_model: dict[str, set[str]] = {"target": set(), "drafter": set()}
    for e in res.trace.of("step"):
        by_model[e["model"]].add(e["by"])
    for model, names in by_model.items():
        if names:
            assert ("scope" in names) == (applies_to in (model, "both"))
    assert any(e["mode"] != "recompute" for e in res.trace.of("step"))
    emitted = [e["source"] for e in res.trace.of("emit")]
    assert emitted == list(res.sources) and len(emitted) == 4
    # the core stream loop runs target-only pipelines (drafted streams come with StreamDiffusionV2)
    stream_pipe = Pipeline("analytic", adapter_kwargs=kw, hooks=hooks)
    stream_pipe.use("scope", tau_c=0.05, tau_p=0.5, predictor="taylor1").use("fixed-batch", max_streams=2)
    streams = [StreamSource(id="s0", prompt="a", num_frames=6, fps=8),
               StreamSource(id="s1", prompt="b", num_frames=6, fps=8)]
    run = stream_pipe.stream(streams, clock=VirtualClock()).to_json()
    assert run["streams"]["s0"]["frames"] == 6 and run["streams"]["s1"]["frames"] == 6
    assert any(e.get("mode") == "cache" for e in run["trace"] if e["event"] == "step")
