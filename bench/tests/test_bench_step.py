"""``accelframe bench step``: a tiny run on the world's SkyReels-V2 loop, the report it writes, and
the guard that keeps earlier results."""

from __future__ import annotations

import json

import pytest

from accelframe.errors import ConfigError
from accelframe_bench.costs import CostTable
from accelframe_bench.step import markdown, methods, run_bench, write_outputs


def test_methods_cover_the_papers_table():
    names = [m.name for m in methods("skyreels-v2-df")]
    for want in ("SCOPE skyreels-v2", "SCOPE (0.12, 0.3)", "SCOPE (0.25, 0.55)", "SCOPE no selective",
                 "SCOPE taylor1", "SCOPE momentum", "SCOPE auto", "TeaCache slow", "TeaCache fast",
                 "TeaCache calibrated slow",
                 "TaylorSeer slow", "reuse-only fast", "FlowCache slow", "original 10 steps"):
        assert want in names
    sf = [m.name for m in methods("self-forcing")]
    assert "SCOPE magi-1" in sf and "SCOPE no selective" not in sf and "original 2 steps" in sf
    with pytest.raises(ConfigError, match="adapter"):
        methods("magi-9")


# round numbers; the decode and score costs must not be priced (the step bench times no decode)
TABLE = CostTable(config="hand@test", target_call_s=1.0, drafter_call_s=0.5, target_commit_s=0.25,
                  drafter_commit_s=0.125, decode_per_latent_frame_s=100.0, score_per_pixel_frame_s=100.0,
                  source="built by hand in the test")


def test_a_tiny_run_and_its_report(tmp_path):
    doc = run_bench(adapter="skyreels-v2-df", n=1, quick=True, only=["TeaCache"], lengths=(3,), quiet=True,
                    table=TABLE)
    by = {m["name"]: m for m in doc["methods"]}
    assert set(by) == {"original", "SCOPE skyreels-v2", "TeaCache"}
    orig, scope = by["original"], by["SCOPE skyreels-v2"]
    assert orig["speedup"] == 1.0 and orig["nfe_ratio"] == 1.0 and orig["psnr"] is None
    assert scope["nfe_ratio"] > 1.0 and scope["frames_ratio"] >= scope["nfe_ratio"]
    assert scope["calls"]["computed"] + scope["calls"]["cached"] + scope["calls"]["predicted"] == \
        orig["calls"]["computed"]
    assert scope["flops"] < orig["flops"] and scope["psnr"] > 10 and 0 < scope["ssim"] <= 1
    assert set(scope["timeline"]) <= {"cache", "predict", "recompute"}
    assert scope["memory_mb"] > 0 and 0 <= scope["quality"] <= 1
    json.dumps(doc, allow_nan=False)
    written = write_outputs(doc, tmp_path)
    assert {p.name for p in written} == {"results.json", "results.md", "pareto.png", "timeline.png",
                                         "length.png", "memory.png"}
    from matplotlib.image import imread

    assert imread(tmp_path / "pareto.png").shape[:2] == (440, 720)  # the charts are PNGs that read back
    assert imread(tmp_path / "timeline.png").shape[1] == 900
    assert "| SCOPE skyreels-v2 |" in markdown(doc)
    # projected: the computed calls and commits priced by hand, nothing decoded or scored
    assert doc["projection"] == TABLE.to_dict() and orig["projected_speedup"] == 1.0
    for m in (orig, scope, by["TeaCache"]):
        w = m["work"]
        assert w["decoded_latent_frames"] == w["scored_pixel_frames"] == w["drafter_calls"] == 0
        assert w["target_calls"] == m["calls"]["computed"]
        assert m["projected_speedup"] == pytest.approx(
            (orig["work"]["target_calls"] + 0.25 * orig["work"]["target_commits"])
            / (w["target_calls"] + 0.25 * w["target_commits"]))
        assert m["projected_at"] == "hand@test"
    assert scope["projected_speedup"] > 1.0
    assert "| projected at hand@test |" in markdown(doc) and "built by hand in the test" in markdown(doc)


def test_the_command_keeps_earlier_results(tmp_path, monkeypatch, capsys):
    from accelframe.cli import main

    monkeypatch.delenv("ACCELFRAME_DISABLE_PLUGIN_AUTOLOAD")
    (tmp_path / "results.json").write_text("{}")
    assert main(["bench", "step", "--quick", "--out", str(tmp_path)]) == 2
    assert "--force" in capsys.readouterr().err
    assert (tmp_path / "results.json").read_text() == "{}"
    assert main(["bench", "step", "--quick", "--only", "nope", "--out", str(tmp_path / "new")]) == 2
    assert "method names" in capsys.readouterr().err
