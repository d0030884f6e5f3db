"""``bench block``'s seams: the pixel change across each block boundary by where its two blocks came
from, hand-computed on a made clip and counted on a tiny run of the bench; and each routed row's
distance from the straight line between target-only and draft-only, with its chart."""

from __future__ import annotations

import pytest
import torch

from accelframe.pipeline import Pipeline
from accelframe_bench import block
from accelframe_bench.block import Models
from accelframe_bench.hooks import default_hooks


def test_seam_changes_of_a_made_clip():
    """33 pixel frames are blocks of 9, 12 and 12: the boundaries are the steps 8 -> 9 and 20 -> 21.
    The clip jumps by 0.5 at the first and by 0.25 at the second and is still elsewhere."""
    frames = torch.zeros(33, 3, 2, 2)
    frames[9:] += 0.5
    frames[21:] += 0.25
    got = block.seam_changes(frames, ["target", "draft", "draft"])
    assert got == {"target → draft": [0.5], "draft → draft": [0.25], "within": [0.0] * 30}
    assert set(got) <= set(block.SEAMS)


def test_the_straight_line_by_hand():
    assert block.straight_line(0.7, 0.6, 0.0) == 0.7 and block.straight_line(0.7, 0.6, 1.0) == 0.6
    assert block.straight_line(0.730, 0.639, 0.25) == pytest.approx(0.730 - 0.091 * 0.25)


def test_a_tiny_bench_counts_each_boundary_by_its_blocks(monkeypatch, tmp_path):
    """9 blocks a video and SDVG accepting every draft after block 0: target-only has 8 target →
    target boundaries, draft-only 8 draft → draft, SDVG one target → draft then 7 draft → draft;
    the markdown has the seams table. Accepting every draft puts SDVG at draft-only's end of the
    straight line, so its distance from it is its quality less draft-only's."""
    hooks = default_hooks()
    tiny = Pipeline("self-forcing", hooks=hooks, adapter_kwargs={"size": "tiny"}).adapter
    models = Models(hooks=hooks, target=tiny, drafter=tiny, scorer=hooks.registry().get("scorer", "world-reward")
                    .factory())
    monkeypatch.setattr(Models, "load", classmethod(lambda cls, hooks=None, **kw: models))
    doc = block.run_bench(n=1, quick=True, taus=[-1e9], quiet=True)
    counts = {name: {k: v["count"] for k, v in row["seams"].items() if k != "within"}
              for name, row in (("target", doc["target_only"]), ("draft", doc["draft_only"]),
                                ("sdvg", doc["points"][0]))}
    assert counts == {"target": {"target → target": 8}, "draft": {"draft → draft": 8},
                      "sdvg": {"target → draft": 1, "draft → draft": 7}}
    within = doc["target_only"]["seams"]["within"]
    assert within["count"] == 105 - 1 - 8 and within["mean_change"] >= 0.0
    md = block.markdown(doc)
    assert "| method | target → target | target → draft | draft → target | draft → draft | within |" in md
    assert f"| target-only | {doc['target_only']['seams']['target → target']['mean_change']:.4f} (8) | - |" in md
    sdvg = doc["points"][0]
    assert sdvg["accept_rate"] == 1.0 and doc["target_only"]["vs_line"] is None
    assert sdvg["vs_line"] == pytest.approx(sdvg["quality"] - doc["draft_only"]["quality"])
    assert f"| {sdvg['vs_line']:+.3f} |" in md
    written = block.write_outputs(doc, tmp_path)
    assert {p.name for p in written} == set(block.OUTPUTS) and (tmp_path / "accept.png").stat().st_size > 0
