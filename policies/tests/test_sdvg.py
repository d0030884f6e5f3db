"""SDVG as a BlockPolicy: Eq. 1 and the routing rule by hand, the block-level invariants as properties
(tau = +inf is target-only, tau = -inf is draft-only after block 0, block 0 always regenerated,
emitted frames are decoded drafts or decoded target outputs, the target's KV holds exactly the
emitted latents), scorer failures, bad input, stacking with SCOPE, and the bench's pieces."""

from __future__ import annotations

import math
import warnings
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from accelframe.errors import ConfigError, IncompatibleError, PolicyError, UnknownNameError
from accelframe.errors import PolicyFallbackWarning
from accelframe.pipeline import Pipeline
from accelframe.plugins import create_hooks
from accelframe.testing.fixtures import make_hooks
from accelframe.testing.policies import mean_brightness
from accelframe_policies import plugin as policies_plugin
from accelframe_policies.random_routing import RandomRouting
from accelframe_policies.sdvg import SDVG, ScorerError, accept_rate, aggregate

INF = math.inf
PROMPT = "a red circle moves left on a blue background"
SETTINGS = settings(max_examples=25, deadline=None)


def hooks() -> Any:
    return make_hooks(policies_plugin)


def pipe(kw: dict[str, Any], dkw: dict[str, Any] | None = None, **extra: Any) -> Pipeline:
    return Pipeline("analytic", adapter_kwargs=kw, hooks=hooks(),
                    drafter="analytic" if dkw is not None else None, drafter_kwargs=dkw, **extra)


def run(p: Pipeline, n: int, seed: int, **kw: Any) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PolicyFallbackWarning)
        return p.generate([PROMPT], num_frames=n, seed=seed, **kw)


def kwargs(draw: Any) -> tuple[dict[str, Any], dict[str, Any], int]:
    b = draw(st.integers(1, 3))
    kw = {"plan": "block", "unit_frames": b, "steps": draw(st.integers(1, 4)), "channels": 2,
          "height": 4, "width": 4}
    dkw = {**kw, "steps": draw(st.integers(1, 3)), "coupling": draw(st.sampled_from([0.1, 0.5]))}
    return kw, dkw, b * draw(st.integers(1, 5))


# ------------------------------------------------------------------------------------------------
# Eq. 1 and the rule, by hand
# ------------------------------------------------------------------------------------------------


def test_aggregations_by_hand():
    s = torch.tensor([[0.5, -1.0, 2.0, 0.0], [1.0, 1.0, 1.0, 1.0]])  # [B=2, F=4]
    assert aggregate(s, "min").tolist() == [-1.0, 1.0]
    assert aggregate(s, "mean").tolist() == [0.375, 1.0]
    # quantile 0.25 of (-1, 0, 0.5, 2): position 0.75 between -1 and 0 -> -0.25
    assert torch.allclose(aggregate(s, "quantile", 0.25), torch.tensor([-0.25, 1.0]))
    assert aggregate(s, "quantile", 0.0).tolist() == aggregate(s, "min").tolist()


class Fixed:
    """A scorer that returns given per-frame scores and counts its calls."""

    def __init__(self, rows: list[list[float]]) -> None:
        self.rows, self.calls = rows, 0

    def __call__(self, frames: torch.Tensor, prompts: Any) -> torch.Tensor:
        self.calls += 1
        return torch.tensor(self.rows, dtype=torch.float32)[:, : frames.shape[1]]


def ctx(unit: int, b: int = 1, f: int = 3) -> Any:
    from accelframe.types import BlockContext

    return BlockContext(generation=1, unit=unit, frames=(unit * 3, unit * 3 + 3), prompts=(PROMPT,) * b,
                        drafter="d", target="t", draft_latents=torch.zeros(b, 3, 2, 4, 4),
                        draft_frames=torch.zeros(b, f, 3, 4, 4))


@pytest.mark.parametrize("how,tau,want", [("min", -0.5, "regenerate"), ("min", -1.0, "accept"),
                                          ("mean", 0.3, "accept"), ("mean", 0.34, "regenerate")])
def test_verdict_compares_the_aggregated_score_with_tau(how, tau, want):
    s = Fixed([[0.5, -1.0, 1.5]])  # min -1, mean 1/3
    v = SDVG(tau=tau, aggregation=how, scorer=s).accelframe_block_verdict(ctx(1))
    assert v.verdict.value == want
    assert v.score == pytest.approx(-1.0 if how == "min" else 1 / 3)
    assert v.frame_scores == (0.5, -1.0, 1.5)


def test_block_zero_is_regenerated_without_scoring():
    s = Fixed([[9.0, 9.0, 9.0]])
    v = SDVG(tau=-INF, scorer=s).accelframe_block_verdict(ctx(0))
    assert v.verdict.value == "regenerate" and s.calls == 0


def test_a_batch_is_judged_by_its_worst_row():
    s = Fixed([[1.0, 1.0, 1.0], [1.0, -2.0, 1.0]])
    v = SDVG(tau=0.0, scorer=s).accelframe_block_verdict(ctx(2, b=2))
    assert v.verdict.value == "regenerate" and v.score == -2.0


@pytest.mark.parametrize("bad,match", [
    (lambda f, p: torch.full(f.shape[:2], math.nan), "non-finite"),
    (lambda f, p: torch.zeros(f.shape[0], f.shape[1] + 1), "shape"),
    (lambda f, p: [0.0] * f.shape[1], "not a tensor"),
    (lambda f, p: 1 / 0, "raised"),
])
def test_a_bad_scorer_raises_scorer_error(bad, match):
    with pytest.raises(ScorerError, match=match):
        SDVG(tau=0.0, scorer=bad).accelframe_block_verdict(ctx(1))


# ------------------------------------------------------------------------------------------------
# invariants on the analytic adapter
# ------------------------------------------------------------------------------------------------


@SETTINGS
@given(data=st.data(), seed=st.integers(0, 2**31))
def test_tau_plus_inf_equals_target_only(data, seed):
    kw, dkw, n = kwargs(data.draw)
    base = run(pipe(kw), n, seed)
    res = run(pipe(kw, dkw).use("sdvg", tau=INF, scorer=mean_brightness), n, seed)
    assert torch.equal(res.latents, base.latents) and torch.equal(res.frames, base.frames)
    assert set(res.sources) == {"target"}
    assert res.stats.blocks["accepted"] == 0


@SETTINGS
@given(data=st.data(), seed=st.integers(0, 2**31))
def test_tau_minus_inf_equals_draft_only_after_block_zero(data, seed):
    kw, dkw, n = kwargs(data.draw)
    b = kw["unit_frames"]
    target_only, draft_only = run(pipe(kw), n, seed), run(pipe(dkw), n, seed)
    res = run(pipe(kw, dkw).use("sdvg", tau=-INF, scorer=mean_brightness), n, seed)
    assert res.sources == ("target",) + ("draft",) * (n // b - 1)
    assert torch.equal(res.latents[:, :b], target_only.latents[:, :b])
    assert torch.equal(res.latents[:, b:], draft_only.latents[:, b:])
    assert accept_rate(res.trace.events) in (None, 1.0)


@SETTINGS
@given(data=st.data(), seed=st.integers(0, 2**31), tau=st.floats(-0.5, 0.5),
       how=st.sampled_from(["min", "mean", "quantile"]))
def test_block_invariants_at_any_tau(data, seed, tau, how):
    """Block 0 is regenerated; every emitted unit is the drafter's own draft (accepted) or the
    target's output; the frames are the target VAE's causal decode of exactly the emitted latents;
    the target's KV holds exactly the emitted latents, in order; the drafter's KV its own drafts;
    block 0's draft is neither decoded nor scored."""
    kw, dkw, n = kwargs(data.draw)
    b = kw["unit_frames"]
    draft_only = run(pipe(dkw), n, seed)
    p = pipe(kw, dkw).use("sdvg", tau=tau, aggregation=how, scorer=mean_brightness)
    req = p.request([PROMPT], num_frames=n, seed=seed)
    engine = p.engine(generation=1)
    res = engine.run(req)
    verdicts = [e for e in res.trace.events if e["event"] == "block"]
    assert verdicts[0]["unit"] == 0 and verdicts[0]["verdict"] == "regenerate"
    assert res.sources[0] == "target"
    for u, source in enumerate(res.sources):
        assert source == ("draft" if verdicts[u]["verdict"] == "accept" else "target")
        if source == "draft":
            assert torch.equal(res.latents[:, u * b:(u + 1) * b], draft_only.latents[:, u * b:(u + 1) * b])
    ad = p.adapter
    state = ad.init_state(req, ad.encode_prompt(req.prompts))
    want = torch.cat([ad.decode(res.latents[:, u * b:(u + 1) * b], state) for u in range(n // b)], dim=1)
    assert torch.equal(res.frames, want)
    kv = engine.target_state.kv
    assert sorted(kv) == list(range(n))
    for j in range(n):
        assert torch.equal(kv[j], res.latents[:, j])
    dkv = engine.drafter_state.kv
    for j in range(n):
        assert torch.equal(dkv[j], draft_only.latents[:, j])
    st_ = res.stats.blocks
    assert st_["accepted"] + st_["regenerated"] == n // b
    # block 0's draft is regenerated without a decode (the early verdict); every other rejected
    # draft was decoded to be scored
    assert st_["decodes_wasted"] == st_["regenerated"] - 1
    assert verdicts[0]["score"] is None and all(v["score"] is not None for v in verdicts[1:])


@SETTINGS
@given(data=st.data(), seed=st.integers(0, 2**31), tau=st.floats(-0.5, 0.5))
def test_emitted_drafter_context_keeps_the_drafter_on_the_emitted_video(data, seed, tau):
    """``drafter_context="emitted"`` (not the paper's): after a rejection the drafter's KV takes the
    target's unit, so both KV caches hold exactly the emitted latents; tau = +inf is still the
    target alone."""
    kw, dkw, n = kwargs(data.draw)
    p = pipe(kw, dkw, drafter_context="emitted").use("sdvg", tau=tau, scorer=mean_brightness)
    engine = p.engine(generation=1)
    res = engine.run(p.request([PROMPT], num_frames=n, seed=seed))
    for state in (engine.target_state, engine.drafter_state):
        assert sorted(state.kv) == list(range(n))
        for j in range(n):
            assert torch.equal(state.kv[j], res.latents[:, j])
    assert res.stats.blocks["drafter_recommits"] == res.stats.blocks["regenerated"]
    base = run(pipe(kw), n, seed)
    inf = run(pipe(kw, dkw, drafter_context="emitted").use("sdvg", tau=INF, scorer=mean_brightness), n, seed)
    assert torch.equal(inf.latents, base.latents) and torch.equal(inf.frames, base.frames)


def test_bad_drafter_context_is_refused():
    with pytest.raises(ConfigError, match="drafter_context"):
        pipe(KW, DKW, drafter_context="theirs")


def test_random_routing_is_seeded_and_matches_its_rate():
    r = RandomRouting(accept_rate=0.3, seed=4)
    coins = [r.coin((f"p{i}",), u) for i in range(400) for u in range(1, 4)]
    assert coins == [RandomRouting(accept_rate=0.3, seed=4).coin((f"p{i}",), u) for i in range(400)
                     for u in range(1, 4)]
    assert abs(sum(c < 0.3 for c in coins) / len(coins) - 0.3) < 0.05
    assert r.accelframe_block_early_verdict(ctx(0)).verdict.value == "regenerate"


# ------------------------------------------------------------------------------------------------
# failures and bad input
# ------------------------------------------------------------------------------------------------

KW = {"plan": "block", "unit_frames": 2, "steps": 3, "channels": 2, "height": 4, "width": 4}
DKW = {**KW, "steps": 2}


@pytest.mark.parametrize("bad", [lambda f, p: 1 / 0, lambda f, p: torch.full(f.shape[:2], math.inf),
                                 lambda f, p: torch.zeros(3)])
def test_a_failing_scorer_regenerates_records_and_warns(bad):
    base = run(pipe(KW), 6, 1)
    p = pipe(KW, DKW).use("sdvg", tau=-INF, scorer=bad)
    with pytest.warns(PolicyFallbackWarning, match="sdvg"):
        res = p.generate([PROMPT], num_frames=6, seed=1)
    assert torch.equal(res.latents, base.latents)  # every block regenerated: the target's video
    fb = [e for e in res.trace.events if e["event"] == "fallback"]
    assert len(fb) == 2 and all(e["plugin"] == "sdvg" for e in fb)  # blocks 1 and 2, not block 0
    with pytest.raises(PolicyError, match="ScorerError"):
        pipe(KW, DKW, strict=True).use("sdvg", tau=0.0, scorer=bad).generate([PROMPT], num_frames=6, seed=1)


@pytest.mark.parametrize("field,value", [("tau", math.nan), ("tau", "high"), ("tau", True),
                                         ("aggregation", "max"), ("quantile", 1.5), ("scorer", 3),
                                         ("scorer", "")])
def test_bad_settings_name_the_field(field, value):
    with pytest.raises(ConfigError, match=field):
        pipe(KW, DKW).use("sdvg", **{field: value})


def test_unknown_scorer_fails_when_added_before_any_model_call():
    with pytest.raises(UnknownNameError, match="no-such-scorer"):
        pipe(KW, DKW).use("sdvg", scorer="no-such-scorer")


def test_undecoded_request_is_refused_before_any_model_call():
    p = pipe(KW, DKW).use("sdvg", scorer=mean_brightness)
    with pytest.raises(ConfigError, match="decode"):
        p.generate([PROMPT], num_frames=6, seed=0, decode=False)


def test_sdvg_needs_a_drafter():
    with pytest.raises(IncompatibleError, match="drafter"):
        pipe(KW).use("sdvg", scorer=mean_brightness)


@pytest.mark.parametrize("change,says", [({"channels": 3}, "latent shapes differ"),
                                         ({"unit_frames": 3}, "unit sizes differ"),
                                         ({"smoothing": 0.5}, "VAEs differ")])
def test_incompatible_drafter_says_what_differs(change, says):
    with pytest.raises(IncompatibleError, match=says):
        pipe(KW, {**DKW, **change})


def test_world_drafter_and_target_share_the_vae_key():
    from accelframe_adapters.wan.self_forcing import SelfForcingAdapter

    t, d, tiny = SelfForcingAdapter(size="world"), SelfForcingAdapter(size="world-drafter"), \
        SelfForcingAdapter(size="tiny")
    assert t.vae_key == d.vae_key != tiny.vae_key


# ------------------------------------------------------------------------------------------------
# stacking with SCOPE, and the world's default scorer
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("applies_to", ["target", "drafter", "both"])
def test_stacks_with_scope(applies_to):
    """SCOPE decides the model calls of the models it applies to, SDVG routes the blocks; the block
    invariants hold and SCOPE's decisions appear only on its models."""
    kw = {**KW, "steps": 8}
    dkw = {**kw, "steps": 6}
    draft_only = run(pipe(dkw).use("scope", tau_c=0.5, tau_p=2.0, max_skip=2), 8, 3) \
        if applies_to != "target" else run(pipe(dkw), 8, 3)
    p = pipe(kw, dkw).use("scope", tau_c=0.5, tau_p=2.0, max_skip=2, applies_to=applies_to) \
        .use("sdvg", tau=0.0, scorer=mean_brightness)
    res = run(p, 8, 3)
    steps = [e for e in res.trace.events if e["event"] == "step"]
    skipped = {e["model"] for e in steps if e["mode"] != "recompute"}
    allowed = {"target": {"target"}, "drafter": {"drafter"}, "both": {"target", "drafter"}}[applies_to]
    assert skipped and skipped <= allowed
    assert res.sources[0] == "target"
    for u, source in enumerate(res.sources):
        if source == "draft":
            assert torch.equal(res.latents[:, 2 * u:2 * u + 2], draft_only.latents[:, 2 * u:2 * u + 2])


def test_world_reward_is_the_default_scorer():
    p = Pipeline("self-forcing", drafter="self-forcing", adapter_kwargs={"size": "world"},
                 drafter_kwargs={"size": "world-drafter"},
                 hooks=create_hooks(autoload=False, disabled=(), plugins=(policies_plugin, _adapters())))
    p.use("sdvg", tau=-INF)
    res = p.generate([PROMPT], num_frames=6, seed=0)
    blocks = [e for e in res.trace.events if e["event"] == "block"]
    assert [e["verdict"] for e in blocks] == ["regenerate", "accept"]
    assert len(blocks[1]["frame_scores"]) == 12 and all(math.isfinite(x) for x in blocks[1]["frame_scores"])


def _adapters() -> Any:
    from accelframe_adapters import plugin

    return plugin


# ------------------------------------------------------------------------------------------------
# the bench's pieces (the full bench: accelframe bench block --quick)
# ------------------------------------------------------------------------------------------------


def test_calibrated_taus_are_score_quantiles():
    from accelframe_bench.block import calibrate_taus

    scores = torch.tensor([[0.0, 1.0], [2.0, 3.0], [4.0, 5.0], [6.0, 7.0], [8.0, 9.0]], dtype=torch.float64)
    # block (min) scores 0, 2, 4, 6, 8: accepting 75 % needs tau at the 25 % quantile = 2
    assert calibrate_taus(scores, (0.75, 1.0)) == {0.75: 2.0, 1.0: 0.0}
    assert calibrate_taus(scores, (0.5,), aggregation="mean") == {0.5: 4.5}


def test_bench_block_refuses_to_overwrite_and_bad_taus(tmp_path, monkeypatch):
    from accelframe.cli import main

    monkeypatch.delenv("ACCELFRAME_DISABLE_PLUGIN_AUTOLOAD", raising=False)
    (tmp_path / "results.json").write_text("{}")
    assert main(["bench", "block", "--quick", "--out", str(tmp_path)]) == 2
    assert (tmp_path / "results.json").read_text() == "{}"
    assert main(["bench", "block", "--quick", "--out", str(tmp_path / "new"), "--taus", "a,b"]) == 2


def test_bench_block_report_from_a_document(tmp_path):
    from accelframe_bench.block import markdown, write_outputs

    def row(name: str, kind: str, speedup: float, q: float, tau: float | None = None,
            rate: float | None = None) -> dict[str, Any]:
        return {"name": name, "kind": kind, "tau": tau, "time_s": 2.0 / speedup, "speedup": speedup,
                "model_speedup": speedup, "accept_rate": rate, "quality": q, "quality_retention": q / 0.7,
                "adherence": 0.5, "wasted_drafter_calls": 1.0, "wasted_decodes": 1.0}

    doc = {"config": {"prompts": 2, "latent_frames": 27, "batch": 1, "threads": 2},
           "target_only": row("target-only", "target_only", 1.0, 0.7),
           "draft_only": row("draft-only", "draft_only", 1.7, 0.4),
           "points": [row("SDVG tau=0.5", "sdvg", 1.2, 0.69, 0.5, 0.3)],
           "random_routing": row("random routing 0.30", "random_routing", 1.2, 0.6, None, 0.3),
           "mean_aggregation": [row("SDVG mean tau=0.4", "mean_aggregation", 1.3, 0.6, 0.4, 0.5)],
           "targets": {"best_speedup_at_98pct_quality": 1.2, "speedup_1_6x_at_98pct_quality": False,
                       "above_draft_only_at_every_tau": True, "reward_beats_random_at_matched_rate": True}}
    md = markdown(doc)
    assert "| SDVG tau=0.5 | 0.500 | 1.67 | 1.20x |" in md and "not met" in md
    paths = write_outputs(doc, tmp_path)
    assert {p.name for p in paths} == {"results.json", "results.md", "pareto.png", "accept.png"}


@pytest.mark.slow
def test_bench_block_quick_end_to_end(tmp_path):
    from accelframe_bench.block import run_bench

    doc = run_bench(n=1, quick=True, quiet=True)
    assert doc["target_only"]["speedup"] == 1.0
    assert {"tau", "speedup", "accept_rate", "quality", "quality_retention"} <= set(doc["points"][0])
    assert doc["random_routing"]["accept_rate"] is not None


def test_generate_cli_routes_blocks_with_a_drafter_context(capsys, monkeypatch):
    import json

    from accelframe import cli

    monkeypatch.delenv("ACCELFRAME_DISABLE_PLUGIN_AUTOLOAD", raising=False)
    code = cli.main(["generate", "--adapter", "analytic", "--drafter", "analytic", "--drafter-set", "steps=2",
                     "--frames", "9", "--policy", "random-routing:accept_rate=1", "--drafter-context", "emitted",
                     "--json"])
    assert code == 0
    blocks = json.loads(capsys.readouterr().out)["blocks"]
    assert blocks["accepted"] == 2 and blocks["regenerated"] == 1 and blocks["drafter_recommits"] == 1


def test_interpolating_the_sweep_at_a_rate():
    from accelframe_bench.block import interpolate

    pts = [(0.8, 0.5), (None, 0.9), (0.2, 0.7), (0.5, 0.6)]
    assert interpolate(pts, 0.65) == pytest.approx(0.55)
    assert interpolate(pts, 0.2) == 0.7 and interpolate(pts, 0.9) is None and interpolate(pts, None) is None
