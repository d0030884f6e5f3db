"""accelframe tune: budgets, the space, successive halving, the log, and one small search on the world."""

from __future__ import annotations

import argparse
import json
import math

import pytest

from accelframe import stackfile
from accelframe.errors import ConfigError
from accelframe_bench import tune


def args(tmp_path, *extra):
    p = argparse.ArgumentParser()
    tune.configure(p)
    return p.parse_args(["--out", str(tmp_path / "t.toml"), *extra])


@pytest.mark.parametrize("text, bounds", [
    ("retention>=0.97", ["retention>=0.97"]),
    ("psnr>=30, ssim >= 0.95", ["psnr>=30", "ssim>=0.95"]),
    ("quality>0.7", ["quality>0.7"]),
    ("PSNR>=3e1", ["psnr>=30"]),
])
def test_budgets_parse(text, bounds):
    assert [str(b) for b in tune.parse_budget([text])] == bounds


@pytest.mark.parametrize("text, allowed", [
    ("psnr>>30", "METRIC>=NUMBER"), ("psnr=30", "METRIC>=NUMBER"), ("psnr>=", "METRIC>=NUMBER"),
    ("pnsr>=30", "did you mean 'psnr'"), ("fps>=10", "metrics"), ("", "at least one bound"),
])
def test_bad_budgets_are_typed_errors(text, allowed):
    with pytest.raises(ConfigError, match="--budget") as err:
        tune.parse_budget([text])
    assert allowed in err.value.allowed


def test_bounds_hold_with_slack_and_report_margins():
    b = tune.parse_budget(["psnr>=30"])[0]
    assert b.holds(30.0) and not b.holds(29.0) and b.holds(29.0, slack=2.0) and b.holds(math.inf)
    assert b.margin(28.5) == -1.5 and not b.holds(None)
    le = tune.Bound(metric="ttff", op="<=", value=0.5)
    assert le.holds(0.4) and not le.holds(0.6) and le.margin(0.6) == pytest.approx(-0.1)


def test_the_space_is_every_combination_with_the_baseline_first():
    taus = {("min", 0.5): -1.0, ("mean", 0.5): -0.5}
    cands = tune.space("self-forcing", levels=tune.LEVELS, drafter=True, taus=taus, quick=False)
    steps, blocks, streams = len(tune.STEP_CHOICES) + 1, len(taus) + 1, len(tune.STREAM_CHOICES) + 1
    assert len(cands) == steps * blocks * streams and cands[0] == tune.BASELINE
    assert len({c.key for c in cands}) == len(cands)  # every key names one stack
    scope = [c for c in cands if c.step and c.step[0] == "scope"]
    assert all(c.step[1]["preset"] == "magi-1" for c in scope)  # the preset the self-forcing benches run
    assert len(tune.space("self-forcing", levels=("step",), drafter=True, taus=taus, quick=True)) == 4
    no_drafter = tune.space("self-forcing", levels=tune.LEVELS, drafter=False, taus=taus, quick=True)
    assert all(c.block is None for c in no_drafter)
    excluded = tune.space("self-forcing", levels=tune.LEVELS, drafter=True, taus=taus, quick=False,
                          exclude=["taylorseer", "stream-batch", "sdvg"])
    assert all(c.stream is None and c.block is None and (c.step is None or c.step[0] != "taylorseer")
               for c in excluded)


def test_a_candidate_chunked_by_two_adds_fixed_batch():
    c = tune.Candidate(step=("taylorseer", {"interval": 2}), stream={"chunk_units": 2})
    assert c.policies() == [("taylorseer", {"interval": 2}), ("fixed-batch", {"chunk_units": 2})]
    assert c.levels == ["step", "stream"] and "stream batch (chunk 2)" in c.name


def test_a_stack_file_becomes_one_candidate():
    from accelframe.stackfile import loads

    cfg = loads('[adapter]\nname = "self-forcing"\n[[policies]]\nname = "taylorseer"\nsettings = { interval = 2 }\n'
                '[[policies]]\nname = "sdvg"\nsettings = { tau = -0.5 }\n[[policies]]\nname = "fixed-batch"\n'
                'settings = { chunk_units = 2 }\n[stream]\nstream_batch = true\n')
    c = tune._from_config(cfg)
    assert c.policies() == [("taylorseer", {"interval": 2}), ("sdvg", {"tau": -0.5}), ("fixed-batch", {"chunk_units": 2})]
    assert c.name == "taylorseer(interval=2) + sdvg(min, tau -0.5) + stream batch (chunk 2)"


def test_rungs_start_short_and_end_on_every_prompt():
    assert tune.rungs(8, 27, quick=False) == [(2, 9), (4, 27), (8, 27)]
    assert tune.rungs(2, 27, quick=True) == [(1, 9), (2, 27)]
    assert tune.rungs(1, 6, quick=True) == [(1, 6)] and tune.rungs(1, 27, quick=True) == [(1, 9), (1, 27)]


def row(name, speedup, psnr):
    return {"name": name, "metrics": {"speedup": speedup, "fps": 1.0, "ttff": 1.0, "psnr": psnr}}


def test_the_front_keeps_what_nothing_beats_on_every_axis():
    rows = [row("a", 1.0, math.inf), row("b", 2.0, 31.0), row("c", 1.5, 30.0), row("d", 3.0, 20.0)]
    front = tune.pareto(rows, "speed", tune.parse_budget(["psnr>=30"]))
    assert [r["name"] for r in front] == ["d", "b", "a"]  # c: b is faster and closer


def test_of_stacks_equally_fast_the_widest_margin_is_chosen():
    bounds = tune.parse_budget(["retention>=0.97"])

    def r(name, speedup, retention):
        return {"name": name, "metrics": {"speedup": speedup, "fps": 1.0, "ttff": 1.0, "retention": retention}}

    ranked = [r("flowcache", 2.17, 0.983), r("scope", 2.16, 0.985), r("taylorseer", 1.5, 0.999)]
    assert tune.choose(ranked, bounds, "speed")["name"] == "scope"  # within 3 %: the wider margin
    ranked = [r("fast", 3.0, 0.971), r("scope", 2.16, 0.985)]
    assert tune.choose(ranked, bounds, "speed")["name"] == "fast"  # clearly faster: the speed
    assert tune.relative_margin(tune.parse_budget(["psnr>=30"]), {"psnr": math.inf}) == math.inf


def test_summaries_are_ratios_against_the_baseline_on_the_same_prompts():
    base = [{"wall_s": 2.0, "pixel_frames": 10, "ttff_s": 0.5, "quality": 0.8, "mse": 0.0, "ssim": 1.0}] * 2
    cand = [{"wall_s": 1.0, "pixel_frames": 10, "ttff_s": 0.2, "quality": 0.76, "mse": 1e-3, "ssim": 0.9},
            {"wall_s": 1.0, "pixel_frames": 10, "ttff_s": 0.4, "quality": 0.76, "mse": 3e-3, "ssim": 0.95}]
    m = tune.summarise(cand, base)
    assert m["speedup"] == 2.0 and m["fps"] == 10.0 and m["ttff"] == pytest.approx(0.3)
    assert m["retention"] == pytest.approx(0.95) and m["psnr"] == pytest.approx((30.0 + 10 * math.log10(1 / 3e-3)) / 2)
    assert tune.summarise(base, base)["psnr"] == math.inf


@pytest.mark.parametrize("extra, field", [
    (["--budget", "psnr>>30"], "--budget"),
    (["--budget", "psnr>=30", "--levels", "step,warp"], "--levels"),
    (["--budget", "psnr>=30", "--prompts", "0"], "--prompts"),
    (["--budget", "psnr>=30", "--adapter", ":x=1"], "--adapter"),
    (["--budget", "psnr>=30", "--levels", "block"], "--levels"),  # no drafter
])
def test_bad_input_is_refused_before_any_model(tmp_path, extra, field):
    with pytest.raises(ConfigError) as err:
        tune.check_args(args(tmp_path, *extra))
    assert err.value.field == field


def test_a_stack_file_for_another_adapter_is_refused(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text('[adapter]\nname = "magi-1"\n')
    with pytest.raises(ConfigError, match="a stack file for adapter 'self-forcing'.*'magi-1'"):
        tune.check_args(args(tmp_path, "--budget", "psnr>=30", "--stack", str(path)))


def test_a_metric_the_adapter_cannot_measure_is_refused(tmp_path):
    from accelframe.testing.fixtures import make_hooks

    # the analytic adapter has no world quality measure
    with pytest.raises(ConfigError, match="no world quality measure"):
        tune.search(args(tmp_path, "--adapter", "analytic", "--budget", "retention>=0.97"), make_hooks())
    assert not (tmp_path / "t.toml").exists()


def test_an_empty_search_space_is_refused_before_any_model_call(tmp_path):
    from accelframe.testing.fixtures import make_hooks

    # no step policy is registered on this manager and the analytic adapter cannot stream: only the
    # baseline is left
    with pytest.raises(ConfigError, match="a search space with a candidate besides the baseline"):
        tune.search(args(tmp_path, "--adapter", "analytic", "--budget", "psnr>=30"), make_hooks())
    assert not (tmp_path / "t.toml").exists() and not (tmp_path / "t.toml.log.jsonl").exists()


def test_the_log_refuses_another_setup_and_an_accidental_restart(tmp_path):
    path = tmp_path / "l.jsonl"
    log = tune.Log.open(path, {"a": 1}, resume=False, force=False)
    rec = {"candidate": "k", "prompt": 0, "frames": 9, "wall_s": 1.0}
    log.add(rec)
    assert tune.Log.open(path, {"a": 1}, resume=True, force=False).records == {("k", 0, 9): rec}
    with pytest.raises(ConfigError, match="differs in a"):
        tune.Log.open(path, {"a": 2}, resume=True, force=False)
    with pytest.raises(ConfigError, match="--resume to continue"):
        tune.Log.open(path, {"a": 1}, resume=False, force=False)


@pytest.mark.slow
def test_a_small_search_on_the_world_writes_a_stack_that_runs(tmp_path, capsys):
    """Step level only, 6 latent frames, 2 calibration and 1 held-out prompt: the search runs its
    rungs, writes a stack file that loads, and resumes from its log without measuring again."""
    a = args(tmp_path, "--adapter", "self-forcing:decoder=tiny", "--budget", "retention>=0.5", "--levels", "step",
             "--quick", "--latent-frames", "6", "--heldout", "1", "--json", "--plot", str(tmp_path / "t.png"))
    assert tune.run(a) == 0
    doc = json.loads(capsys.readouterr().out)
    assert (tmp_path / "t.png").read_bytes()[:4] == b"\x89PNG" and len(doc["last_rung"]) >= 2
    assert doc["candidates"] == 4 and len(doc["rungs"]) == 2
    assert doc["heldout"]["prompts"] == 1 and isinstance(doc["heldout"]["held"], bool)
    cfg = stackfile.load(tmp_path / "t.toml")
    assert cfg.adapter == "self-forcing" and cfg.adapter_settings == {"decoder": "tiny"}
    assert cfg.to_dict() == doc["chosen"]["config"]
    lines = (tmp_path / "t.toml.log.jsonl").read_text().splitlines()
    a2 = args(tmp_path, "--adapter", "self-forcing:decoder=tiny", "--budget", "retention>=0.5", "--levels", "step",
              "--quick", "--latent-frames", "6", "--heldout", "0", "--json", "--resume", "--force")
    assert tune.run(a2) == 0
    capsys.readouterr()
    assert (tmp_path / "t.toml.log.jsonl").read_text().splitlines() == lines  # nothing measured again
