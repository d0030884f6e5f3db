"""The benches' projection at real scale (issue 23 item 6): a run's counted work, as the runs really do it
(SDVG neither decodes nor scores block 0's draft; random routing scores nothing; draft-only's model
is the drafter), priced with a hand-built cost table; the stack bench's ``projected_speedup`` equal to
the ratio computed by hand; ``--project none`` leaves the projection null; an unknown name refused
before any model loads."""

from __future__ import annotations

import argparse

import attrs
import pytest

from accelframe.errors import ConfigError
from accelframe.pipeline import Pipeline
from accelframe_bench import costs, stack
from accelframe_bench.block import Models
from accelframe_bench.costs import CostTable, Counts, price
from accelframe_bench.hooks import default_hooks

TINY = {"size": "tiny"}  # the self-forcing loop with a tiny DiT: the world's shapes, milliseconds a call
# round numbers, so that a price can be computed by hand
TABLE = CostTable(config="hand@test", target_call_s=1.0, drafter_call_s=0.125, target_commit_s=0.5,
                  drafter_commit_s=0.0625, decode_per_latent_frame_s=0.25, score_per_pixel_frame_s=0.015625,
                  source="built by hand in the test")


@pytest.fixture(scope="module")
def models():
    hooks = default_hooks()
    tiny = Pipeline("self-forcing", hooks=hooks, adapter_kwargs=TINY).adapter
    return Models(hooks=hooks, target=tiny, drafter=tiny,
                  scorer=hooks.registry().get("scorer", "world-reward").factory())


def _cfg(name: str, tau: float = -1e9) -> stack.Config:
    return next(c for c in stack.configs(tau, ranks=0) if c.name == name)


def _work(models, name: str, frames: int = 9, tau: float = -1e9, **kw) -> tuple[Counts, dict]:
    c = _cfg(name, tau)
    pipe = stack.build(models, c)
    _, _, res = stack._run(pipe, c, "a red circle", 1, frames)
    pipe.close()
    st = res.stats.to_dict()
    return costs.work(st, pipe.adapter, **kw), st


def test_the_work_of_sdvg_counts_no_decode_and_no_score_for_block_0s_draft(models):
    """3 blocks of 3 latent frames, SDVG accepting every draft it may: the drafter drafts all 3 blocks
    (4 calls each) and commits them, the target regenerates block 0 (4 calls); the engine decodes
    the 3 emitted blocks only (block 0's draft is rejected before its decode); the scorer judges
    blocks 1 and 2 only (12 pixel frames each: 33 pixel frames are 9 + 12 + 12). Neither
    ``generate`` nor the stream batch runs any of the target's commits (no target call comes after
    block 0): both hold them and skip them at the end."""
    want = Counts(target_calls=4, drafter_calls=12, target_commits=0, drafter_commits=3,
                  decoded_latent_frames=9, scored_pixel_frames=24)
    for name in ("block", "block + stream"):  # the stream loop's stats alike
        got, st = _work(models, name)
        assert got == want, name
        assert st["frames"] == 9 and st["blocks"]["decodes_wasted"] == 0, name
        assert st["blocks"]["early_verdicts"] == 1, name
    # rejecting every draft: 2 wasted decodes, blocks 1 and 2 scored and regenerated, the last
    # block's commit skipped
    got, _ = _work(models, "block", tau=1e9)
    assert got == Counts(target_calls=12, drafter_calls=12, target_commits=2, drafter_commits=3,
                         decoded_latent_frames=15, scored_pixel_frames=24)
    base, _ = _work(models, "baseline")
    assert base == Counts(target_calls=12, target_commits=2, decoded_latent_frames=9)
    # the drafter alone, and a run timed without decoding
    assert _work(models, "baseline", as_drafter=True)[0] == Counts(drafter_calls=12, drafter_commits=2,
                                                                   decoded_latent_frames=9)
    assert _work(models, "block", decoded=False)[0] == Counts(target_calls=4, drafter_calls=12, target_commits=0,
                                                              drafter_commits=3)


def test_the_projected_speedup_is_the_ratio_of_the_hand_priced_work(models):
    base = Counts(target_calls=12, target_commits=3, decoded_latent_frames=9)
    row = Counts(target_calls=4, drafter_calls=12, target_commits=3, drafter_commits=3, decoded_latent_frames=12,
                 scored_pixel_frames=24)
    # 12 + 1.5 + 2.25 = 15.75 s against 4 + 1.5 + 1.5 + 0.1875 + 3 + 0.375 = 10.5625 s
    assert price(base, TABLE) == 15.75 and price(row, TABLE) == 10.5625
    assert costs.projected_speedup(base, row, TABLE) == pytest.approx(15.75 / 10.5625)
    assert costs.projected_speedup(base, row, None) is None and costs.projected_speedup(base, None, TABLE) is None


def test_a_tiny_stack_run_reports_the_projection_at_the_tables_configuration(models, monkeypatch):
    """Two blocks a video (6 latent frames), SDVG accepting block 1's draft: each row's projected
    speedup is the baseline's hand-priced work over the row's; the document carries the table."""
    monkeypatch.setattr(Models, "load", classmethod(lambda cls, hooks=None, **kw: models))
    doc = stack.run_bench(n=1, tau=-1e9, frames=6, quiet=True, ranks=0, table=TABLE)
    rows = {r["name"]: r for r in doc["rows"]}
    assert doc["projection"] == TABLE.to_dict() and doc["projection"]["source"] == "built by hand in the test"
    # 2 blocks of 4 target calls, 1 commit (the last block's is skipped), 6 latent frames decoded
    base_s = 8 * 1.0 + 1 * 0.5 + 6 * 0.25
    # block 0 by the target after its draft, block 1's draft taken (12 pixel frames scored); none of
    # the target's commits runs, in one process or in the stream batch (no target call after block 0)
    for name in ("block", "block + stream"):
        block_s = 4 * 1.0 + 8 * 0.125 + 2 * 0.0625 + 6 * 0.25 + 12 * 0.015625
        assert rows[name]["projected_speedup"] == pytest.approx(base_s / block_s), name
        assert rows[name]["projected_at"] == "hand@test"
    assert doc["baseline"]["projected_speedup"] == 1.0
    # the same calls and commits: the stream batch holds the last chunk's commit and skips it at
    # the stream's end, as generate does
    assert rows["stream"]["projected_speedup"] == pytest.approx(1.0)
    for name, r in rows.items():  # every row: its own summed work over the baseline's, priced
        assert r["projected_speedup"] == pytest.approx(
            price(Counts(**doc["baseline"]["work"]), TABLE) / price(Counts(**r["work"]), TABLE)), name
    singles = {lv: rows[lv]["projected_speedup"] for lv in stack.LEVELS}
    r = rows["step + block"]
    assert r["composition_efficiency_projected"] == pytest.approx(
        r["projected_speedup"] / (singles["step"] * singles["block"]))
    assert rows["step"]["composition_efficiency_projected"] is None
    md = stack.markdown(doc)
    assert "| projected at hand@test |" in md and "built by hand in the test" in md
    # refused and 2-rank rows carry no projection
    doc2 = stack.document(stack.configs(0.0), {"baseline": stack._Tally(wall=[1.0], clips=[0.5], work=Counts(
        target_calls=8)), "stream (2 ranks)": stack._Tally(wall=[0.5], clips=[0.5])},
        {"step": "refused here"}, _Q, TABLE)
    by = {r["name"]: r for r in doc2["rows"]}
    for name in ("step", "stream (2 ranks)"):
        assert by[name]["projected_speedup"] is None and by[name]["projected_at"] is None, name


class _Q:
    @staticmethod
    def summarise(clips):
        return {"quality": sum(clips) / len(clips)}


def test_project_none_leaves_the_projection_null(models, monkeypatch, tmp_path):
    monkeypatch.setattr(Models, "load", classmethod(lambda cls, hooks=None, **kw: models))
    assert costs.cost_table("none", "bench stack") is None and costs.cost_table(None, "bench stack") is None
    seen = {}
    monkeypatch.setattr(stack, "run_bench", lambda **kw: seen.update(kw) or {"rows": []})
    monkeypatch.setattr("accelframe_bench.reports.report", lambda *a, **k: 0)
    assert stack.run(_args(["--project", "none", "--out", str(tmp_path / "o")])) == 0
    assert seen["table"] is None
    monkeypatch.undo()
    monkeypatch.setattr(Models, "load", classmethod(lambda cls, hooks=None, **kw: models))
    doc = stack.run_bench(n=1, tau=-1e9, frames=3, quiet=True, ranks=0)
    assert doc["projection"] is None
    for r in [doc["baseline"], *doc["rows"]]:
        assert r["projected_speedup"] is None and r["projected_at"] is None
        assert r["composition_efficiency_projected"] is None
    assert "projected" not in stack.markdown(doc)


def _args(argv):
    p = argparse.ArgumentParser()
    stack.configure(p)
    return p.parse_args(argv)


@pytest.mark.skipif(not hasattr(costs, "table"), reason="costs.table() (the papers' cost tables) has not landed")
def test_an_unknown_configuration_is_refused_before_any_model_loads(monkeypatch, tmp_path):
    monkeypatch.setattr(Models, "load", classmethod(lambda *a, **k: pytest.fail("the models were loaded")))
    with pytest.raises(ConfigError) as err:
        stack.run(_args(["--project", "gpt-5@8K", "--out", str(tmp_path / "out")]))
    assert err.value.field == "--project" and err.value.owner == "bench stack"
    assert "krea-14B@832x480" in str(err.value.allowed)
    assert not (tmp_path / "out").exists()
    assert costs.cost_table("krea-14B@832x480", "bench stack").config == "krea-14B@832x480"


def test_a_tiny_block_bench_prices_draft_only_as_the_drafter_and_random_routing_unscored(models, monkeypatch):
    """9 blocks a video, SDVG accepting every draft after block 0: the projected speedups are the
    hand-priced ratios; draft-only's calls are the drafter's, random routing scores nothing."""
    from accelframe_bench import block

    monkeypatch.setattr(Models, "load", classmethod(lambda cls, hooks=None, **kw: models))
    doc = block.run_bench(n=1, quick=True, taus=[-1e9], quiet=True, table=TABLE)
    assert doc["projection"] == TABLE.to_dict()
    # 9 blocks of 4 target calls, 8 commits (the last block's is skipped), 27 latent frames
    base_s = 36 * 1.0 + 8 * 0.5 + 27 * 0.25
    draft_s = 36 * 0.125 + 8 * 0.0625 + 27 * 0.25
    # block 0: the target after its draft (neither decoded nor scored), its commit skipped (no
    # later target call); blocks 1-8: drafts, committed by the drafter, scored
    sdvg_s = 4 * 1.0 + 36 * 0.125 + 9 * 0.0625 + 27 * 0.25 + 8 * 12 * 0.015625
    assert doc["target_only"]["projected_speedup"] == 1.0
    assert doc["draft_only"]["projected_speedup"] == pytest.approx(base_s / draft_s)
    [sdvg] = doc["points"]
    assert sdvg["projected_speedup"] == pytest.approx(base_s / sdvg_s) and sdvg["projected_at"] == "hand@test"
    rr = doc["random_routing"]
    assert rr["work"]["scored_pixel_frames"] == 0 and rr["work"]["drafter_calls"] == 36
    assert rr["projected_speedup"] == pytest.approx(base_s / price(Counts(**rr["work"]), TABLE))
    md = block.markdown(doc)
    assert "| projected at hand@test |" in md and "built by hand in the test" in md
    none = block.run_bench(n=1, quick=True, taus=[-1e9], quiet=True)
    assert none["projection"] is None and none["points"][0]["projected_speedup"] is None
    assert "projected" not in block.markdown(none)


@pytest.mark.parametrize("adapter,argv,want", [
    ("skyreels-v2-df", [], "skyreels-v2-14B@540P"), ("magi-1", [], "magi-1-4.5B"),
    ("self-forcing", [], "self-forcing-1.3B@832x480"),
    ("magi-1", ["--project", "krea-14B@832x480"], "krea-14B@832x480"),
    ("self-forcing", ["--project", "none"], None)])
def test_the_step_bench_projects_each_family_at_its_own_configuration(adapter, argv, want, tmp_path, monkeypatch):
    """The adapter picks the configuration (``--project`` overrides it, ``none`` turns it off)."""
    from accelframe_bench import step

    if want is not None and not hasattr(costs, "table"):
        pytest.skip("costs.table() (the papers' cost tables) has not landed")
    seen = {}
    monkeypatch.setattr(step, "run_bench", lambda **kw: seen.update(kw) or {"methods": []})
    monkeypatch.setattr("accelframe_bench.reports.report", lambda *a, **k: 0)
    p = argparse.ArgumentParser()
    step.configure(p)
    assert step.run(p.parse_args(["--adapter", adapter, *argv, "--out", str(tmp_path / "o")])) == 0
    assert (seen["table"].config if seen["table"] else None) == want
    assert set(step.PROJECTS) == set(step.ADAPTERS)


@pytest.mark.parametrize("bench", ["block", "step"])
def test_block_and_step_refuse_an_unknown_configuration_before_any_run(bench, monkeypatch, tmp_path):
    """``--project`` names a table or ``none``: anything else is the bench's ConfigError before a model
    loads or ``--out`` is made."""
    import importlib

    mod = importlib.import_module(f"accelframe_bench.{bench}")
    monkeypatch.setattr(mod, "run_bench", lambda **kw: pytest.fail("the bench ran"))
    monkeypatch.setattr(Models, "load", classmethod(lambda *a, **k: pytest.fail("the models were loaded")))
    p = argparse.ArgumentParser()
    mod.configure(p)
    with pytest.raises(ConfigError) as err:
        mod.run(p.parse_args(["--project", "gpt-5@8K", "--out", str(tmp_path / "out")]))
    assert err.value.field == "--project" and err.value.owner == f"bench {bench}"
    assert "none" in str(err.value.allowed) and "krea-14B@832x480" in str(err.value.allowed)
    assert not (tmp_path / "out").exists()


def test_block_refuses_an_unknown_scorer_before_any_model_loads(monkeypatch, tmp_path):
    """``--scorer`` names a registered scorer: anything else is a ConfigError listing them, before a model
    loads or ``--out`` is made; a registered one reaches the run."""
    from accelframe_bench import block

    seen = {}
    monkeypatch.setattr(block, "run_bench", lambda **kw: seen.update(kw) or {})
    monkeypatch.setattr("accelframe_bench.reports.report", lambda *a, **k: 0)
    monkeypatch.setattr(Models, "load", classmethod(lambda *a, **k: pytest.fail("the models were loaded")))
    p = argparse.ArgumentParser()
    block.configure(p)
    with pytest.raises(ConfigError) as err:
        block.run(p.parse_args(["--scorer", "clip-score", "--out", str(tmp_path / "out")]))
    assert err.value.field == "--scorer" and err.value.owner == "bench block"
    assert "world-reward" in str(err.value.allowed) and "world-quality" in str(err.value.allowed)
    assert not (tmp_path / "out").exists()
    assert block.run(p.parse_args(["--scorer", "world-quality", "--out", str(tmp_path / "o")])) == 0
    assert seen["scorer"] == "world-quality"
