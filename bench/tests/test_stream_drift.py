"""``accelframe bench stream --drift-seconds``: a short text-to-video stream scored window by window
(each window measured as it completes, then dropped), its report and chart, and bad input refused
before any model loads."""

from __future__ import annotations

import argparse
import math

import pytest

from accelframe.cli import main
from accelframe_bench import stream as bench_stream


@pytest.fixture(autouse=True)
def _plugins(monkeypatch):
    monkeypatch.delenv("ACCELFRAME_DISABLE_PLUGIN_AUTOLOAD", raising=False)


def test_a_short_drift_run_scores_every_whole_window_as_it_completes():
    bench = bench_stream.Bench(deadline=1.5, seed=0)
    adapter = bench.adapter_for(3)
    seen: list[tuple[int, ...]] = []
    measure = adapter.measure_quality

    def spy(frames, prompts):
        seen.append(tuple(frames.shape))
        return measure(frames, prompts)

    adapter.measure_quality = spy
    try:
        # 40 pixel frames at 64 fps, windows of 16: two whole windows, the last 8 frames not scored
        d = bench.drift(seconds=40 / 64, fps=64.0, quiet=True, window_s=0.25)
    finally:
        del adapter.measure_quality
    assert d["frames"] == 40 and len(d["quality"]) == len(d["windows"]) == 2
    assert all(math.isfinite(q) and 0.0 <= q <= 1.0 for q in d["quality"])
    assert d["first"] == d["quality"][0] and d["last"] == d["quality"][-1]
    assert d["last_over_first"] == pytest.approx(d["last"] / d["first"])
    assert d["within_10pct"] == (abs(d["last_over_first"] - 1.0) <= bench_stream.DRIFT_GOAL)
    # the second window (frames 16..31) is scored from the unit boundary at frame 24 on
    assert [w["scored_frames"] for w in d["windows"]] == [16, 8]
    assert [w["t_s"] for w in d["windows"]] == [0.0, 0.25]
    # one clip per window, never more frames than a window holds
    assert [s[:2] for s in seen][::2] == [(1, 16), (1, 8)]
    assert isinstance(d["prompt"], str) and d["prompt"]
    assert d["rolling_kv_tau"] == 0.6  # the stream command's default: no --sink-tau
    # the world's rendering of the prompt, scored on the same windows: near 1 while the shape is in view
    assert len(d["reference"]) == 2 and all(r > 0.9 for r in d["reference"])
    assert d["last_over_reference"] == pytest.approx(d["last"] / d["reference"][-1])
    near = [abs(q / r - 1) <= bench_stream.DRIFT_GOAL for q, r in zip(d["quality"], d["reference"])]
    assert d["windows_within_10pct_of_reference"] == pytest.approx(sum(near) / 2)
    assert len(seen) == 4 and seen[1][:2] == (1, 16) and seen[3][:2] == (1, 8)
    # the position-free parts of every window, and their goal
    assert d["picture"] == [w["picture"] for w in d["windows"]] and all(0 < x <= 1 for x in d["picture"])
    assert d["picture_last_over_first"] == pytest.approx(d["picture"][-1] / d["picture"][0])
    assert d["picture_within_10pct"] == (abs(d["picture_last_over_first"] - 1) <= bench_stream.DRIFT_GOAL)
    assert all(w["reference_picture"] == pytest.approx(1.0, abs=0.01) for w in d["windows"])


def _doc(quality: list[float]) -> dict:
    windows = [{"t_s": 10.0 * i, "quality": q, "reference": 0.98, "scored_frames": 160, "picture": 0.9 - 0.1 * i}
               for i, q in enumerate(quality)]
    ratio = quality[-1] / quality[0]
    pic = [w["picture"] for w in windows]
    return {"ttff_s": 0.3, "fps": 16.0, "jitter_ms": 5.0, "deadline_miss_rate": 0.0,
            "setup": {"deadline_s": 1.5, "frames_per_stream": 105, "threads": 1},
            "runs": [], "drift": {"window_s": 10.0, "quality": quality, "first": quality[0], "last": quality[-1],
                                  "last_over_first": ratio, "within_10pct": abs(ratio - 1) <= 0.1,
                                  "last_over_reference": quality[-1] / 0.98,
                                  "windows_within_10pct_of_reference": sum(abs(q / 0.98 - 1) <= 0.1
                                                                           for q in quality) / len(quality),
                                  "prompt": "a small red square moves quickly left on a blue background",
                                  "seconds": 10.0 * len(quality), "fps": 16.0, "frames": 160 * len(quality),
                                  "windows": windows, "deadline_miss_rate": 0.0,
                                  "picture": pic, "picture_last_over_first": pic[-1] / pic[0],
                                  "picture_within_10pct": abs(pic[-1] / pic[0] - 1) <= 0.1}}


def test_drift_report_table_target_and_chart(tmp_path):
    doc = _doc([0.70, 0.66, 0.50])
    doc["targets"] = bench_stream.targets(doc)
    t = doc["targets"]["drift_within_10_percent"]
    assert t["met"] is False and t["measured_last_over_first"] == pytest.approx(0.5 / 0.7)
    md = bench_stream.markdown(doc)
    assert "last / first 0.714 (not within 10 %)" in md and "| 20 | 0.500 | 0.980 | 0.510 | 0.700 |" in md
    assert "last / rendered 0.510, windows within 10 % of it 0%" in md
    assert "picture (blur, smudges, seams) last / first 0.778" in md and "| 20 | 0.500 | 0.980 | 0.510 | 0.700 |" in md
    p = doc["targets"]["drift_picture_within_10_percent"]
    assert p["met"] is False and p["measured_last_over_first"] == pytest.approx(0.7 / 0.9)
    bench_stream.write_outputs(doc, tmp_path)
    png = tmp_path / "drift.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # within 10 % but shorter than 5 minutes: the target is not met
    short = _doc([0.70, 0.68])
    assert bench_stream.targets(short)["drift_within_10_percent"]["met"] is False
    assert short["drift"]["within_10pct"] is True


@pytest.mark.parametrize("flag, value, allowed", [(f, v, a) for f, vs, a in (
    ("--drift-seconds", ("-1", "5", "nan", "inf"), "seconds"),
    ("--sink-tau", ("-1.5", "2", "nan"), "[-1, 1]")) for v in vs])
def test_bad_drift_input_is_refused_before_any_model_loads(capsys, tmp_path, monkeypatch, flag, value, allowed):
    def boom(*a, **k):
        raise AssertionError("work started before the input was checked")

    monkeypatch.setattr("accelframe.pipeline.Pipeline", boom)
    monkeypatch.setattr(bench_stream, "run_bench", boom)
    out = tmp_path / "out"
    assert main(["bench", "stream", flag, value, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert flag in err and value in err and allowed in err
    assert not out.exists()


def test_quick_leaves_drift_off_and_the_default_is_off(tmp_path, monkeypatch):
    got: list[float] = []

    class Stop(Exception):
        pass

    def fake(**kw):
        got.append(kw["drift_seconds"])
        raise Stop

    monkeypatch.setattr(bench_stream, "run_bench", fake)
    p = argparse.ArgumentParser()
    bench_stream.configure(p)
    for argv in (["--quick", "--drift-seconds", "30"], [], ["--drift-seconds", "30"]):
        with pytest.raises(Stop):
            bench_stream.run(p.parse_args([*argv, "--out", str(tmp_path / str(len(got)))]))
    assert got == [0.0, 0.0, 30.0]


def test_a_bench_run_streams_a_world_clip_with_the_sink_tau_it_was_given(monkeypatch):
    bench = bench_stream.Bench(deadline=1.5, seed=0, sink_tau=0.3)
    built = []
    build = bench.cli.build_pipeline

    def spy(**kw):
        pipe = build(**kw)
        built.append(next(p.policy for p in pipe.stack if p.name == "rolling-kv").tau)
        return pipe

    monkeypatch.setattr(bench.cli, "build_pipeline", spy)
    r = bench.run(streams=1, fps=64.0, frames=9)  # one unit of the world's VAE, measured (one clip)
    assert r["streams"] == 1 and 0.0 <= r["world_quality"] <= 1.0
    assert built == [0.3]
    assert bench.sink_tau == 0.3 and bench_stream.Bench(deadline=1.5, seed=0).sink_tau == 0.6


def test_drift_on_more_prompts_streams_the_next_seeds_on_a_virtual_clock(tmp_path):
    bench = bench_stream.Bench(deadline=1.5, seed=3)
    first = bench.drift(seconds=40 / 64, fps=64.0, quiet=True, window_s=0.25)
    assert first["seed"] == 3 and first["clock"] == "real"
    many = bench.drift_prompts(first, 3, seconds=40 / 64, fps=64.0, quiet=True, window_s=0.25)
    assert many["count"] == 3 and [r["seed"] for r in many["prompts"]] == [3, 4, 5]
    assert [r["clock"] for r in many["prompts"]] == ["real", "virtual", "virtual"]
    assert many["prompts"][0]["quality"] == first["quality"]
    # each prompt is its seed's first world prompt, scored against its own rendering
    world = bench.cli.stream_source(bench_stream.WORLD_SOURCE, bench.hooks.registry())
    assert [r["prompt"] for r in many["prompts"]] == [list(world.prompts(1, s))[0] for s in (3, 4, 5)]
    near = [r["windows_within_10pct_of_reference"] for r in many["prompts"]]
    assert many["mean_windows_within_10pct_of_reference"] == pytest.approx(sum(near) / 3)
    assert many["picture_within_10pct"] == sum(r["picture_within_10pct"] for r in many["prompts"])
    assert many["last_within_10pct_of_reference"] == sum(
        abs(r["last_over_reference"] - 1) <= bench_stream.DRIFT_GOAL for r in many["prompts"])
    # the virtual clock makes a prompt's stream a function of its seed alone
    again = bench.drift(seconds=40 / 64, fps=64.0, quiet=True, window_s=0.25, seed=4,
                        clock=__import__("accelframe.streaming.source", fromlist=["VirtualClock"]).VirtualClock())
    assert again["quality"] == many["prompts"][1]["quality"]
    doc = _doc([0.70, 0.66, 0.50])
    doc["drift"]["across_prompts"] = many
    doc["targets"] = bench_stream.targets(doc)
    md = bench_stream.markdown(doc)
    assert "drift on 3 prompts (seeds 3 to 5" in md and f"| 4 | {many['prompts'][1]['prompt']} | virtual |" in md
    bench_stream.write_outputs(doc, tmp_path)
    for name in ("drift-prompts.png", "drift-picture.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("argv, value", [(["--drift-prompts", "0", "--drift-seconds", "30"], "0"),
                                         (["--drift-prompts", "3"], "3")])
def test_bad_drift_prompts_are_refused_before_any_model_loads(capsys, tmp_path, monkeypatch, argv, value):
    def boom(*a, **k):
        raise AssertionError("work started before the input was checked")

    monkeypatch.setattr(bench_stream, "run_bench", boom)
    out = tmp_path / "out"
    assert main(["bench", "stream", *argv, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "--drift-prompts" in err and value in err
    assert not out.exists()
