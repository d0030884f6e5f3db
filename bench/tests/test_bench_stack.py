"""``accelframe bench stack``: its rows, the composition-efficiency arithmetic, every combination measured
(the stream batch's included, its calls counted as the sequential rows'), a combination the runtime refuses
reported as refused (never run, never faked), the stream level on 2 pipeline-parallel ranks (alone and
with the step level; with the block level refused: the ring serves no drafter), bad input refused before
any model."""

from __future__ import annotations

import argparse

import pytest
import torch

from accelframe.errors import ConfigError
from accelframe.pipeline import Pipeline
from accelframe_bench import stack
from accelframe_bench.block import Models
from accelframe_bench.hooks import default_hooks
from accelframe_adapters.parallel import trial

TINY = {"size": "tiny"}  # the self-forcing loop with a tiny DiT: the world's shapes, milliseconds a call


def _args(argv):
    p = argparse.ArgumentParser()
    stack.configure(p)
    return p.parse_args(argv)


def test_the_rows_are_the_baseline_each_level_every_pair_and_all_three():
    assert stack.level_sets() == [(), ("step",), ("block",), ("stream",), ("step", "block"), ("step", "stream"),
                                  ("block", "stream"), ("step", "block", "stream")]
    cfgs = stack.configs(-1.1)
    assert [c.name for c in cfgs][:2] == ["baseline", "step"]
    assert [c.tau for c in cfgs] == [None, None, -1.1, None, -1.1, None, -1.1, -1.1, None, None, -1.1, -1.1]
    triple = cfgs[7].describe()
    assert [p["name"] for p in triple] == ["taylorseer", "sdvg", "stream-batch"]
    scope = stack.configs(-1.1, stack.STEP_POLICIES["scope"])[1].describe()
    assert scope == [{"name": "scope", "preset": "magi-1", "applies_to": "both"}]
    # then the stream level on 2 pipeline-parallel ranks, alone and with the others
    assert [c.name for c in cfgs[8:]] == ["stream (2 ranks)", "step + stream (2 ranks)",
                                          "block + stream (2 ranks)", "step + block + stream (2 ranks)"]
    pp_row = cfgs[8].describe()
    assert [p["name"] for p in pp_row] == ["pipeline-parallel"] and pp_row[0]["ranks"] == 2
    assert "decode" in pp_row[0]["runtime"] and "ranks=2" in pp_row[0]["runtime"]
    assert [c.name for c in stack.configs(0.0, ranks=3)][8] == "stream (3 ranks)"
    assert len(stack.configs(0.0, ranks=1)) == len(stack.configs(0.0, ranks=0)) == 8


def test_composition_efficiency_is_the_speedup_over_the_product_of_its_levels():
    singles = {"step": 1.5, "block": 2.0, "stream": 1.25}
    assert stack.composition_efficiency(("step", "block"), 2.7, singles) == pytest.approx(0.9)
    assert stack.composition_efficiency(("step", "block", "stream"), 3.75, singles) == pytest.approx(1.0)
    assert stack.composition_efficiency(("step",), 1.5, singles) is None  # a single level
    assert stack.composition_efficiency(("step", "stream"), None, singles) is None  # a refused row
    assert stack.composition_efficiency(("step", "stream"), 2.0, {"step": 1.5, "stream": None}) is None


class _Q:
    """A stand-in for the world's quality module: a clip's quality is the number it was given."""

    @staticmethod
    def summarise(clips):
        return {"quality": sum(clips) / len(clips)}


def test_the_document_on_hand_made_tallies():
    cfgs = stack.configs(0.5)
    walls, calls, qs = (2.0, 1.0, 0.5, 1.6, 0.4), (36, 18, 4, 36, 2), (0.8, 0.8, 0.6, 0.76, 0.4)
    t = {c.name: stack._Tally(wall=[w], computed=n, frames=105, clips=[q])
         for c, w, n, q in zip(cfgs, walls, calls, qs)}
    t["block"].routed, t["block"].accepted = 8, 6
    refused = {"step + stream": "no step policies", "block + stream": "no drafter",
               "step + block + stream": "no drafter", "stream": None}
    # the stream level on 2 ranks, slower than in one process: not the single level's speedup
    t["stream (2 ranks)"] = stack._Tally(wall=[1.0], computed=36, frames=105, clips=[0.7], launch=[6.0])
    refused["block + stream (2 ranks)"] = "serves no drafter"
    t["block + stream"] = stack._Tally(wall=[0.5], computed=4, frames=105, clips=[0.5])
    refused["block + stream"] = None
    doc = stack.document(cfgs, t, refused, _Q)
    rows = {r["name"]: r for r in doc["rows"]}
    assert doc["baseline"]["speedup"] == 1.0 and doc["baseline"]["composition_efficiency"] is None
    pp_row = rows["stream (2 ranks)"]
    assert pp_row["speedup"] == 2.0 and pp_row["launch_s"] == 6.0 and pp_row["ranks"] == 2
    assert pp_row["composition_efficiency"] is None and rows["stream"]["launch_s"] is None
    # a pair with the stream level composes against the stream level in one process (1.25x), not on 2 ranks
    assert rows["stream"]["speedup"] == 1.25
    assert rows["block + stream"]["composition_efficiency"] == pytest.approx(4.0 / (4.0 * 1.25))
    assert rows["step"]["speedup"] == 2.0 and rows["step"]["nfe_ratio"] == 2.0 and rows["step"]["fps"] == 105.0
    assert rows["block"]["quality_retention"] == pytest.approx(0.75)
    assert rows["block"]["accept_rate"] == 0.75 and rows["step"]["accept_rate"] is None
    # step + block: 5x against 2x * 4x
    assert rows["step + block"]["speedup"] == 5.0
    assert rows["step + block"]["composition_efficiency"] == pytest.approx(5.0 / 8.0)
    for name, why in refused.items():
        if why:
            r = rows[name]
            assert r["refused"] == why
            assert all(r[k] is None for k in ("speedup", "fps", "nfe_ratio", "accept_rate", "quality",
                                               "quality_retention", "psnr", "composition_efficiency"))
    md = stack.markdown({**doc, "config": {"prompts": 1, "latent_frames": 27, "threads": 1, "tau": 0.5}})
    assert "no drafter" in md and "serves no drafter" in md and "6.00 s a video" in md


def test_the_stream_loop_serves_every_stack_and_refuses_what_it_still_cannot_with_its_message():
    hooks = default_hooks()
    target = Pipeline("self-forcing", hooks=hooks, adapter_kwargs=TINY).adapter
    src = stack.source(target, "a red circle", 0, 3)
    scorer = hooks.registry().get("scorer", "world-reward").factory()
    models = Models(hooks=hooks, target=target, drafter=target, scorer=scorer)
    pipes = [stack.build(models, c) for c in stack.configs(0.0, ranks=0) if c.stream]
    assert [stack.refusal(p, src) for p in pipes] == [None] * 4
    # a drafter that waits for each verdict cannot be pipelined: the loop's own message, no model run
    emitted = Pipeline(target, drafter=target, hooks=hooks, drafter_context="emitted")
    why = stack.refusal(emitted, src)
    assert why and "drafter_context='emitted'" in why and "stream_batch=False" in why
    for p in (*pipes, emitted):
        p.close()


def test_the_calls_and_drafts_are_counted_alike_for_generate_and_the_stream_batch():
    """SDVG accepting every draft it may: the same target calls, blocks routed and drafts accepted
    from ``generate`` and from the stream batch, the drafter's calls not among the target's."""
    hooks = default_hooks()
    tiny = Pipeline("self-forcing", hooks=hooks, adapter_kwargs=TINY).adapter
    models = Models(hooks=hooks, target=tiny, drafter=tiny, scorer=hooks.registry().get("scorer", "world-reward")
                    .factory())
    block, stream = (c for c in stack.configs(-1e9) if c.name in ("block", "block + stream"))
    out = []
    for c in (block, stream):
        pipe = stack.build(models, c)
        _, _, res = stack._run(pipe, c, "a red circle", 1, 9)
        pipe.close()
        out.append(stack.counts(res.stats.to_dict(), c))
    # 3 blocks: block 0 regenerated (4 target calls), blocks 1 and 2 drafted and accepted
    assert out == [(4, 2, 2), (4, 2, 2)]
    assert stack.counts(res.stats.to_dict(), stack.configs(0.0)[3]) == (4, 0, 0)  # the stream level alone


def _tiny_models(monkeypatch):
    hooks = default_hooks()
    tiny = Pipeline("self-forcing", hooks=hooks, adapter_kwargs=TINY).adapter
    models = Models(hooks=hooks, target=tiny, drafter=tiny, scorer=hooks.registry().get("scorer", "world-reward")
                    .factory())
    monkeypatch.setattr(Models, "load", classmethod(lambda cls, hooks=None, **kw: models))
    return models


def test_a_tiny_run_end_to_end_measures_every_row_the_stream_combinations_included(monkeypatch):
    """The tiny loop for target and drafter (the world's models are for the real run), SDVG
    accepting every draft after block 0: every row of one process measured, none refused, the
    stream batch's rows counting calls and drafts as the sequential rows do; the stream level on 2
    real ranks (child processes, the stream loop's ring) measured on the same prompt, seed and
    frames, alone and with the step policy; with the block level refused with the loop's reason."""
    _tiny_models(monkeypatch)
    launched = []

    def launch(desc, ranks, out, **kw):
        res = real_launch(desc, ranks, out, **kw)
        launched.append((desc, ranks, res[0]))
        return res

    real_launch = trial.launch
    monkeypatch.setattr(trial, "launch", launch)
    doc = stack.run_bench(n=1, tau=-1e9, frames=6, quiet=True)
    rows = {r["name"]: r for r in doc["rows"]}
    assert list(rows) == [c.name for c in stack.configs(0.0)][1:]
    # the 2 ranks: one launch per row run (no warm-up), of the bench's prompt, seed and frames
    [(desc, ranks, got), (desc_step, _, got_step)] = launched
    [src] = desc["streams"]
    assert ranks == 2 and desc["size"] == "tiny" and src["frames"] == 21  # 6 latent frames: 21 pixel frames
    assert (src["prompt"], src["seed"]) == (doc["config"]["prompts_used"][0], doc["config"]["seeds"][0])
    assert desc["policies"] == [] and [p[0] for p in desc_step["policies"]] == ["taylorseer"]
    # what 2 ranks compute: one process running the same 2-lane schedule
    ref = trial.run({**desc, "ranks": 1, "lanes": 2}, pipe=trial.pipeline(desc, hooks=default_hooks()))
    assert (got["frames"]["s"] - ref["frames"]["s"]).abs().max() <= 1e-5
    r = rows.pop("stream (2 ranks)")
    assert r["refused"] is None and r["levels"] == ["stream"] and r["ranks"] == 2
    assert r["nfe_ratio"] == 1.0  # 2 chunks of 4 steps: the baseline's 8 calls
    assert r["time_s"] == pytest.approx(got["wall_s"]) and r["launch_s"] > r["time_s"] > 0
    assert r["speedup"] == pytest.approx(doc["baseline"]["time_s"] / r["time_s"])
    assert r["fps"] == pytest.approx(21 / r["time_s"])
    assert r["quality"] > 0 and r["quality_retention"] > 0 and r["composition_efficiency"] is None
    assert r["psnr"] is not None and r["psnr"] > 0 and 0 < r["ssim"] <= 1  # a lag-2 context: not the baseline's
    r = rows.pop("step + stream (2 ranks)")
    assert r["refused"] is None and r["nfe_ratio"] == 2.0  # TaylorSeer halves the calls on the ring too
    for name in ("block + stream (2 ranks)", "step + block + stream (2 ranks)"):
        r = rows.pop(name)
        assert "drafter" in r["refused"] and "ranks=2" in r["refused"], name
        assert all(r[k] is None for k in ("time_s", "launch_s", "speedup", "fps", "nfe_ratio", "accept_rate",
                                           "quality", "quality_retention", "psnr", "ssim",
                                           "composition_efficiency")), name
    assert doc["config"]["ranks"] == 2
    for name, r in rows.items():
        assert r["refused"] is None, name
        for k in ("speedup", "fps", "nfe_ratio", "quality", "quality_retention", "time_s"):
            assert r[k] is not None and r[k] > 0, (name, k)
        assert (r["composition_efficiency"] is None) == (len(r["levels"]) == 1), name
    singles = {lv: rows[lv]["speedup"] for lv in stack.LEVELS}
    for name in ("step + stream", "block + stream", "step + block + stream"):
        r = rows[name]
        product = 1.0
        for lv in r["levels"]:
            product *= singles[lv]
        assert r["composition_efficiency"] == pytest.approx(r["speedup"] / product)
    # 8 target calls for the baseline's 2 blocks; SDVG leaves block 0 (4 calls) to the target and
    # takes block 1's draft; TaylorSeer halves the calls in both runtimes
    assert rows["stream"]["nfe_ratio"] == 1.0
    assert rows["block"]["nfe_ratio"] == rows["block + stream"]["nfe_ratio"] == 2.0
    assert rows["step"]["nfe_ratio"] == rows["step + stream"]["nfe_ratio"] == 2.0
    assert rows["step + block"]["nfe_ratio"] == rows["step + block + stream"]["nfe_ratio"] == 4.0
    assert rows["block"]["accept_rate"] == rows["block + stream"]["accept_rate"] == 1.0
    assert rows["step + stream"]["accept_rate"] is None
    assert doc["config"]["tau"] == -1e9 and doc["baseline"]["speedup"] == 1.0
    lines = stack.markdown(doc).splitlines()
    assert "refused" in lines[2]
    table = [line for line in lines[4:] if line.startswith("|")]
    assert ["serves the drafter" in line or "cannot serve the drafter" in line for line in table] == \
        [False] * 10 + [True] * 2
    assert "stream (2 ranks): timed by rank 0's pipe.stream clock" in "\n".join(lines[-3:])


def test_a_row_the_stream_loop_refuses_is_reported_refused_and_never_run(monkeypatch):
    """A pipeline the loop refuses (a drafter waiting for each verdict): the row carries the loop's
    message and no numbers, and its pipeline runs no model; the other rows are measured."""
    _tiny_models(monkeypatch)
    build, ran = stack.build, []

    def emitted_drafter(models, cfg):
        pipe = build(models, cfg)
        if cfg.name == "block + stream":
            pipe.drafter_context = "emitted"
            pipe.stream = lambda *a, **k: ran.append(cfg.name)
        return pipe

    monkeypatch.setattr(stack, "build", emitted_drafter)
    monkeypatch.setattr(trial, "launch", lambda *a, **k: pytest.fail("ranks launched"))
    doc = stack.run_bench(n=1, tau=0.0, frames=3, quiet=True, ranks=0)  # no pipeline-parallel rows
    rows = {r["name"]: r for r in doc["rows"]}
    assert list(rows) == [c.name for c in stack.configs(0.0, ranks=0)][1:] and doc["config"]["ranks"] is None
    r = rows["block + stream"]
    assert "drafter_context='emitted'" in r["refused"] and not ran
    assert all(r[k] is None for k in ("speedup", "fps", "nfe_ratio", "accept_rate", "quality", "quality_retention",
                                       "psnr", "composition_efficiency"))
    assert all(rows[n]["refused"] is None and rows[n]["speedup"] > 0 for n in rows if n != "block + stream")
    assert "drafter_context='emitted'" in stack.markdown(doc)


def test_the_ranks_rows_with_a_drafter_are_refused_with_the_loops_message_before_any_process(monkeypatch):
    """The ring serves no drafter: the stream loop's own validation refuses the rows with the block
    level (no model runs, no process starts); the others pass it."""
    models = _tiny_models(monkeypatch)
    monkeypatch.setattr(trial, "launch", lambda *a, **k: pytest.fail("ranks launched"))
    src = stack.source(models.target, "a red circle", 0, 3)
    for c in stack.configs(0.0):
        if c.parallel:
            pipe = stack.build(models, c)
            why = stack.pp_refusal(pipe, c, src)
            pipe.close()
            assert (why is not None) == ("block" in c.levels), (c.name, why)
            assert why is None or ("drafter" in why and "ranks=2" in why)


@pytest.mark.parametrize("argv,ranks", [([], 2), (["--ranks", "0"], 0), (["--ranks", "1"], 1), (["--quick"], 0),
                                        (["--quick", "--ranks", "3"], 3), (["--quick", "--ranks", "2"], 2)])
def test_the_cli_passes_ranks_on_and_0_or_1_leaves_the_rows_out(argv, ranks, tmp_path, monkeypatch):
    """``--ranks`` defaults to 2, and to 0 under ``--quick`` (its launches would take it past 90 s)."""
    seen = {}

    def run_bench(**kw):
        seen.update(kw)
        return {"rows": []}

    monkeypatch.setattr(stack, "run_bench", run_bench)
    monkeypatch.setattr("accelframe_bench.reports.report", lambda *a, **k: 0)
    # no projection: the cost tables are not this test's business
    assert stack.run(_args([*argv, "--project", "none", "--out", str(tmp_path / "out")])) == 0
    assert seen["ranks"] == ranks and seen["table"] is None
    assert len(stack.configs(0.0, ranks=ranks)) == (12 if ranks > 1 else 8)
    p = argparse.ArgumentParser()
    stack.configure(p)
    text = " ".join(p.format_help().split())
    assert "--ranks N" in text and "0 or 1: leave these rows out (default: 2; with --quick 0" in text


@pytest.mark.parametrize("argv,field", [(["--prompts", "0"], "--prompts"), (["--tau", "nan"], "--tau"),
                                        (["--tau", "inf"], "--tau"), (["--ranks", "-1"], "--ranks"),
                                        (["--ranks", "5"], "--ranks")])
def test_bad_input_is_refused_before_any_model_runs(argv, field, tmp_path, monkeypatch):
    def reached(*a, **k):
        raise AssertionError("the models were loaded")

    monkeypatch.setattr(Models, "load", classmethod(reached))
    with pytest.raises(ConfigError) as err:
        stack.run(_args([*argv, "--out", str(tmp_path / "out")]))
    assert err.value.field == field and err.value.owner == "bench stack"
    assert not (tmp_path / "out").exists()


def test_an_unknown_step_policy_is_refused_before_any_model_runs(monkeypatch):
    monkeypatch.setattr(Models, "load", classmethod(lambda *a, **k: pytest.fail("the models were loaded")))
    with pytest.raises(ConfigError, match="--step"):
        stack.run_bench(n=1, step="teacache")
