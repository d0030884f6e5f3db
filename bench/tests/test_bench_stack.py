"""``accelframe bench stack``: its rows, the composition-efficiency arithmetic, the combinations the
runtime refuses today reported as refused (never run, never faked), bad input refused before any model."""

from __future__ import annotations

import argparse

import pytest

from accelframe.errors import ConfigError
from accelframe.pipeline import Pipeline
from accelframe_bench import stack
from accelframe_bench.block import Models
from accelframe_bench.hooks import default_hooks

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
    assert [c.tau for c in cfgs] == [None, None, -1.1, None, -1.1, None, -1.1, -1.1]
    triple = cfgs[-1].describe()
    assert [p["name"] for p in triple] == ["taylorseer", "sdvg", "stream-batch"]
    scope = stack.configs(-1.1, stack.STEP_POLICIES["scope"])[1].describe()
    assert scope == [{"name": "scope", "preset": "magi-1", "applies_to": "both"}]


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
    doc = stack.document(cfgs, t, refused, _Q)
    rows = {r["name"]: r for r in doc["rows"]}
    assert doc["baseline"]["speedup"] == 1.0 and doc["baseline"]["composition_efficiency"] is None
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
    assert "no drafter" in stack.markdown({**doc, "config": {"prompts": 1, "latent_frames": 27, "threads": 1,
                                                              "tau": 0.5}})


def test_a_stream_batch_with_a_step_or_block_policy_is_refused_with_the_loops_message():
    hooks = default_hooks()
    target = Pipeline("self-forcing", hooks=hooks, adapter_kwargs=TINY).adapter
    src = stack.source(target, "a red circle", 0, 3)
    alone = Pipeline(target, hooks=hooks)
    assert stack.refusal(alone, src) is None
    scope = Pipeline(target, hooks=hooks).use(*stack.STEP_POLICY[:1], **stack.STEP_POLICY[1])
    why = stack.refusal(scope, src)
    assert why and "step and block policies" in why and stack.STEP_POLICY[0] in why
    drafted = Pipeline(target, drafter=target, hooks=hooks)
    assert "drafter" in stack.refusal(drafted, src)
    for p in (alone, scope, drafted):
        p.close()


def test_a_tiny_run_end_to_end_reports_the_refused_rows(monkeypatch):
    """The tiny loop for target and drafter (the world's models are for the real run): every row
    there, the refused ones with the loop's message and no numbers, the others measured."""
    hooks = default_hooks()
    tiny = Pipeline("self-forcing", hooks=hooks, adapter_kwargs=TINY).adapter
    models = Models(hooks=hooks, target=tiny, drafter=tiny, scorer=hooks.registry().get("scorer", "world-reward")
                    .factory())
    monkeypatch.setattr(Models, "load", classmethod(lambda cls, hooks=None: models))
    doc = stack.run_bench(n=1, tau=0.0, frames=3, quiet=True)
    rows = {r["name"]: r for r in doc["rows"]}
    assert list(rows) == [c.name for c in stack.configs(0.0)][1:]
    for name in ("step + stream", "block + stream", "step + block + stream"):
        assert rows[name]["refused"] and rows[name]["speedup"] is None
    for name in ("step", "block", "stream", "step + block"):
        r = rows[name]
        assert r["refused"] is None and r["speedup"] > 0 and r["quality"] is not None and r["nfe_ratio"] > 0
    assert rows["step + block"]["composition_efficiency"] == pytest.approx(
        rows["step + block"]["speedup"] / (rows["step"]["speedup"] * rows["block"]["speedup"]))
    assert doc["config"]["tau"] == 0.0 and doc["baseline"]["speedup"] == 1.0


@pytest.mark.parametrize("argv,field", [(["--prompts", "0"], "--prompts"), (["--tau", "nan"], "--tau"),
                                        (["--tau", "inf"], "--tau")])
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
