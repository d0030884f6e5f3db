"""The step-level baselines (TeaCache, TaylorSeer, reuse-only, FlowCache, reduced steps), the
engine's partial recompute that FlowCache uses, and ``accelframe calibrate``."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from accelframe.errors import ConfigError
from accelframe.pipeline import Pipeline
from accelframe.plugins import hookimpl
from accelframe.testing.fixtures import make_hooks
from accelframe.types import StepContext, StepDecision
from accelframe_policies import plugin as policies_plugin
from accelframe_bench.calibrate import calibrate, fit
from accelframe_policies.reduced_steps import reduced_step_kwargs
from accelframe_policies.teacache import COEFFICIENTS, polyval


def _pipe(**kw):
    return Pipeline("analytic", adapter_kwargs=kw, hooks=make_hooks(policies_plugin))


def _modes(res, unit=None):
    return [e["mode"] for e in res.trace.events
            if e["event"] == "step" and (unit is None or e["unit"] == unit)]


# ---- TeaCache ------------------------------------------------------------------------------------


def test_polyval_is_numpy_poly1d():
    for coeffs in COEFFICIENTS.values():
        for x in (0.0, 0.01, 0.1, 0.3):
            assert polyval(coeffs, x) == pytest.approx(float(np.poly1d(coeffs)(x)), rel=1e-12, abs=1e-9)
    assert COEFFICIENTS["wan2.1-t2v-1.3b"][0] == pytest.approx(2.39676752e03)


def test_teacache_accumulates_and_computes_first_and_last_steps():
    pipe = _pipe(plan="block", steps=8)
    pipe.use("teacache", threshold=1e6, coefficients="identity")  # would cache everything it may
    res = pipe.generate(["a"], num_frames=6, seed=0)
    for unit in (0, 1):
        m = _modes(res, unit)
        assert m[0] == "recompute" and m[-1] == "recompute" and set(m[1:-1]) == {"cache"}
    pipe = _pipe(plan="block", steps=8)
    pipe.use("teacache", threshold=0.0, coefficients="identity")  # nothing is below 0
    assert set(_modes(pipe.generate(["a"], num_frames=3, seed=0))) == {"recompute"}


def test_teacache_bad_coefficients():
    pipe = _pipe()
    with pytest.raises(ConfigError, match="wan2.1-t2v-1.3b"):
        pipe.use("teacache", coefficients="wan3")
    with pytest.raises(ConfigError, match="finite"):
        pipe.use("teacache", coefficients=[1.0, math.nan])


# ---- TaylorSeer ----------------------------------------------------------------------------------




def test_taylorseer_schedule_and_exact_forecast_on_a_linear_trajectory():
    from accelframe_policies.taylorseer import TaylorSeer
    from accelframe.types import CallSite, Iteration, Mode, ModelRole

    pol = TaylorSeer(interval=3, max_order=1, first_enhance=2)
    site = CallSite(generation=1, model=ModelRole.TARGET, adapter="x", probe=lambda x, it: x)
    modes = []
    for k in range(9):
        it = Iteration(index=k, unit=0, step=k, frames=(0, 1), sigma=(0.9,), sigma_next=(0.8,), update=(True,))
        ctx = StepContext(site=site, iteration=it, x=torch.zeros(1, 1, 1, 1, 1))
        dec = pol.accelframe_step_decide(ctx=ctx)
        truth = torch.full((1, 1, 1, 1, 1), 2.0 + 0.5 * k)
        if dec.mode is Mode.PREDICT:
            assert torch.allclose(dec.velocity, truth)
        pol.accelframe_step_observe(ctx=ctx, decision=dec, velocity=truth if dec.mode is Mode.RECOMPUTE
                                    else dec.velocity)
        modes.append(dec.mode.value[0])
    # two warm-up computes, then one compute in every 3 calls
    assert "".join(modes) == "rrpprpprp"


# ---- reuse-only ----------------------------------------------------------------------------------


def test_reuse_only_compares_with_the_last_computed_call():
    pipe = _pipe(plan="block", steps=6)
    pipe.use("first-block-cache", threshold=1e6)
    m = _modes(pipe.generate(["a"], num_frames=3, seed=0))
    assert m[0] == "recompute" and set(m[1:]) == {"cache"}
    pipe = _pipe(plan="block", steps=6)
    pipe.use("first-block-cache", threshold=0.0)
    assert set(_modes(pipe.generate(["a"], num_frames=3, seed=0))) == {"recompute"}


# ---- FlowCache and the partial recompute ---------------------------------------------------------


def test_flowcache_reuses_chunks_and_computes_warmup_first_and_last():
    pipe = _pipe(plan="staircase", steps=8, ar_step=2, unit_frames=2, curvature=0.05)
    pipe.use("flowcache", threshold=1e6, warmup=2)
    res = pipe.generate(["a"], num_frames=6, seed=0)
    assert res.stats.fallbacks == {}
    calls = res.stats.calls["target"]
    assert calls["frames_reused"] > 0 or calls["cached"] > 0
    steps = [e for e in res.trace.events if e["event"] == "step"]
    assert steps[0]["mode"] == "recompute"
    # one chunk per call: with an infinite threshold it computes its warm-up steps and its last one
    pipe = _pipe(plan="block", steps=8)
    pipe.use("flowcache", threshold=1e6, warmup=2)
    assert "".join(m[0] for m in _modes(pipe.generate(["a"], num_frames=3, seed=0))) == "rrccccc" + "r"
    base = _pipe(plan="staircase", steps=8, ar_step=2, unit_frames=2, curvature=0.05).generate(
        ["a"], num_frames=6, seed=0)
    assert torch.isfinite(res.latents).all()
    assert (res.latents - base.latents).abs().max() < 1.0
    pipe = _pipe(plan="staircase", steps=8, ar_step=2, unit_frames=2, curvature=0.05)
    pipe.use("flowcache", threshold=0.0, warmup=0)
    exact = pipe.generate(["a"], num_frames=6, seed=0)
    assert torch.equal(exact.latents, base.latents)


class Partial:
    """Computes only the first frame of a call and fills the rest with a given velocity."""

    name = "partial"

    def __init__(self, fill):
        self.fill = fill

    @hookimpl
    def accelframe_step_decide(self, ctx: StepContext) -> StepDecision:
        s, e = ctx.frames
        if e - s < 2:
            return None
        return StepDecision.recompute(interval=(s, s + 1), fill=self.fill(ctx))


def test_partial_recompute_fills_frames_outside_the_interval():
    seen = []

    class Watch:
        name = "watch"

        @hookimpl
        def accelframe_step_observe(self, ctx, decision, velocity):
            seen.append(velocity.clone())

    pipe = _pipe(plan="block", steps=2, unit_frames=3)
    pipe.use(Partial(lambda ctx: torch.full_like(ctx.x, 7.0))).use(Watch())
    res = pipe.generate(["a"], num_frames=3, seed=0)
    assert res.stats.calls["target"]["frames_reused"] == 2 * 2
    assert res.stats.calls["target"]["frames_computed"] == 2
    for v in seen:
        assert torch.all(v[:, 1:] == 7.0) and not torch.all(v[:, :1] == 7.0)


def test_a_bad_fill_is_answered_by_the_exact_path():
    pipe = _pipe(plan="block", steps=2)
    pipe.use(Partial(lambda ctx: torch.zeros(1)))
    with pytest.warns(UserWarning, match="recompute fill"):
        res = pipe.generate(["a"], num_frames=3, seed=0)
    base = _pipe(plan="block", steps=2).generate(["a"], num_frames=3, seed=0)
    assert torch.equal(res.latents, base.latents)
    with pytest.raises(ConfigError, match="compute interval"):
        StepDecision.recompute(fill=torch.zeros(1))


# ---- reduced steps, calibration ------------------------------------------------------------------


def test_reduced_step_kwargs():
    assert reduced_step_kwargs("skyreels-v2-df", 10, {"num_inference_steps": 50, "ar_step": 5}) == {
        "num_inference_steps": 10, "ar_step": 1}
    assert reduced_step_kwargs("self-forcing", 2, {})["denoising_step_list"] == (1000, 250)
    with pytest.raises(ConfigError, match="at most 4"):
        reduced_step_kwargs("self-forcing", 5, {})
    with pytest.raises(ConfigError, match="adapter"):
        reduced_step_kwargs("magi-9", 5, {})


def test_fit_recovers_a_known_polynomial():
    coeffs = [2.0, -1.0, 0.5]
    xs = np.linspace(0.0, 0.3, 20)
    pairs = [(float(x), float(np.polyval(coeffs, x))) for x in xs]
    assert fit(pairs, 2) == pytest.approx(coeffs, abs=1e-8)
    with pytest.raises(ConfigError, match=r"--degree = 4 is not allowed: at most 2"):
        fit(pairs[:3], 4)


def test_calibrate_on_the_analytic_adapter_and_use_the_result():
    pipe = _pipe(plan="block", steps=6)
    doc = calibrate(pipe, ["a", "b"], num_frames=6, degree=2)
    assert doc["pairs"] == 2 * 2 * 5 and len(doc["coefficients"]) == 3
    assert pipe.stack == []  # the recorder is gone
    json.dumps(doc)
    pipe.use("teacache", coefficients=doc["coefficients"], threshold=0.1)
    assert pipe.generate(["a"], num_frames=3, seed=0).stats.calls["target"]["computed"] >= 2


def test_calibrate_command(capsys, monkeypatch, tmp_path):
    from accelframe.cli import main

    monkeypatch.delenv("ACCELFRAME_DISABLE_PLUGIN_AUTOLOAD")
    out = tmp_path / "cal.json"
    assert main(["calibrate", "--adapter", "analytic", "--set", "steps=5", "--prompt", "a", "--prompt", "b",
                 "--degree", "2", "--out", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert doc["adapter"] == "analytic" and len(doc["coefficients"]) == 3
    assert main(["calibrate", "--adapter", "analytic", "--prompt", "a", "--out", str(out)]) == 2
    assert "does not exist yet" in capsys.readouterr().err
