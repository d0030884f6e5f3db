"""`accelframe stream` and `accelframe bench stream`: bad input, a short world stream end to end, the
bench's report built from a document."""

from __future__ import annotations

import json

import pytest

from accelframe.cli import main


@pytest.fixture(autouse=True)
def _plugins(monkeypatch):
    monkeypatch.delenv("ACCELFRAME_DISABLE_PLUGIN_AUTOLOAD", raising=False)


@pytest.mark.parametrize("argv, words", [
    (["--fps", "0"], ["--fps", "0", "positive"]),
    (["--streams", "0"], ["--streams", "0", ">= 1"]),
    (["--sigma", "1.5"], ["--sigma", "1.5", "(0, 1]"]),
    (["--block-frames", "0"], ["--block-frames", "0", ">= 1"]),
    (["--deadline", "-1"], ["--deadline", "-1", "positive"]),
    (["--sink-tau", "1.5"], ["--sink-tau", "1.5", "[-1, 1]"]),
    (["--sink-tau", "0.6", "--no-rolling"], ["--sink-tau", "0.6", "--no-rolling"]),
])
def test_stream_bad_input_is_a_typed_error_naming_the_field(capsys, tmp_path, argv, words):
    code = main(["stream", "--out", str(tmp_path / "s.mp4"), *argv])
    err = capsys.readouterr().err
    assert code == 2
    for w in words:
        assert w in err
    assert not list(tmp_path.iterdir())


def test_stream_of_a_world_clip_writes_the_mp4_and_prints_the_metrics(capsys, tmp_path):
    pytest.importorskip("av")
    out = tmp_path / "s.mp4"
    code = main(["stream", "--frames", "17", "--fps", "200", "--out", str(out), "--json"])
    doc = json.loads(capsys.readouterr().out)
    assert code == 0 and out.stat().st_size > 0
    m = doc["streams"]["s0"]
    assert m["frames"] == 17 and m["ended"] == "complete" and m["corrupt_frames"] == 0
    for key in ("ttff_s", "fps", "jitter_ms", "deadline_miss_rate"):
        assert m[key] is not None
    # the file is the user's now: a second run refuses to replace it
    size = out.stat().st_size
    assert main(["stream", "--frames", "9", "--fps", "200", "--out", str(out)]) == 2
    assert "--force" in capsys.readouterr().err and out.stat().st_size == size


def test_bench_stream_refuses_bad_input_and_existing_results(capsys, tmp_path):
    (tmp_path / "results.json").write_text("{}")
    assert main(["bench", "stream", "--quick", "--out", str(tmp_path)]) == 2
    assert (tmp_path / "results.json").read_text() == "{}"
    assert main(["bench", "stream", "--loads", "8,x", "--out", str(tmp_path / "a")]) == 2
    assert "--loads" in capsys.readouterr().err
    assert main(["bench", "stream", "--frames", "4", "--out", str(tmp_path / "b")]) == 2
    assert "--frames" in capsys.readouterr().err


def test_bench_stream_report_from_a_document(tmp_path):
    from accelframe_bench.stream import markdown, targets, write_outputs

    def row(sweep: str, fps: float, miss: float, ttff: float, block: int = 3) -> dict:
        return {"sweep": sweep, "streams": 1, "offered_fps": fps, "block_frames": block, "stream_batch": False,
                "ttff_s": ttff, "fps": fps * (1 - miss), "jitter_ms": 12.0, "deadline_miss_rate": miss,
                "chunk_frames": [3], "unsustainable": miss > 0.5}

    doc = {"ttff_s": 0.7, "fps": 16.0, "jitter_ms": 12.0, "deadline_miss_rate": 0.0,
           "setup": {"deadline_s": 1.5, "frames_per_stream": 105, "threads": 2},
           "runs": [row("load", 8, 0.0, 0.6), row("load", 64, 0.9, 2.0), row("low latency", 16, 0.0, 0.2, 1)],
           "ranks": {"throughput_1": 10.0, "throughput_2": 19.0, "ratio": 1.9},
           "soak": {"seconds": 300, "offered_fps": 16, "deadline_miss_rate": 0.004, "rss_mb_early": 500,
                    "rss_mb_late": 501, "rss_growth_mb": 1.0}}
    doc["targets"] = t = targets(doc)
    assert t["ttff_under_0_5_s"] == {"measured": 0.7, "measured_low_latency": 0.2, "met": False,
                                     "met_low_latency": True}
    assert t["soak_99_percent_deadlines"]["met"] and t["two_ranks_1_8x_with_decode"]["met"]
    text = markdown(doc)
    assert "| low latency | 1 | 16 | 1 |" in text and "(unsustainable)" in text
    assert "ttff_under_0_5_s not met (met with 1-frame units)" in text
    write_outputs(doc, tmp_path)
    assert {p.name for p in tmp_path.iterdir()} >= {"results.json", "results.md", "load.png"}


def test_the_streaming_doc_example_runs(tmp_path, monkeypatch):
    """The first Python block of docs/streaming.md, as written (it streams 2 s of a world clip)."""
    pytest.importorskip("av")
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[1] / "docs" / "streaming.md").read_text()
    block = doc.split("<!-- tested: tests/test_stream_cli.py runs this block -->\n```python\n", 1)[1]
    block = block.split("```", 1)[0]
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(block, "docs/streaming.md", "exec"), scope)
    m = scope["run"].to_json()["streams"]["cam"]
    assert m["frames"] == 33 and m["ended"] == "complete"
    assert (tmp_path / "out.mp4").stat().st_size > 0


# ---- --out patterns, --upscale and --prompt are checked before the model runs -------------------


def _never(*a, **kw):
    raise AssertionError("the model was built")


@pytest.mark.parametrize("pattern", ["o-{strem}.mp4", "o-{0}.mp4", "o-{stream.x}.mp4", "o-{}.mp4",
                                     "o-{stream}-}.mp4"])
def test_stream_out_with_a_brace_other_than_stream_is_refused_up_front(capsys, tmp_path, monkeypatch, pattern):
    from accelframe.streaming import cli as stream_cli

    monkeypatch.setattr(stream_cli, "build_pipeline", _never)
    code = main(["stream", "--source", "none", "--streams", "2", "--frames", "9",
                 "--out", str(tmp_path / pattern)])
    err = capsys.readouterr().err
    assert code == 2 and "--out" in err and "{stream}" in err
    assert not list(tmp_path.iterdir())


def test_stream_out_help_says_what_several_streams_write(capsys):
    from accelframe.streaming.sinks import stream_pattern

    with pytest.raises(SystemExit):
        main(["stream", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    # a plain name gets -ID before its suffix: the help names the files the code writes
    assert stream_pattern("stream.mp4", 2).replace("{stream}", "s0") == "stream-s0.mp4"
    assert stream_pattern("stream.mp4", 1) == "stream.mp4"
    assert "stream-s0.mp4" in text and "{stream}" in text


def test_stream_empty_prompt_is_refused(capsys, tmp_path, monkeypatch):
    from accelframe.streaming import cli as stream_cli

    monkeypatch.setattr(stream_cli, "build_pipeline", _never)
    for prompt in ("", "   "):
        code = main(["stream", "--source", "none", "--prompt", prompt, "--frames", "9",
                     "--out", str(tmp_path / "s.mp4")])
        err = capsys.readouterr().err
        assert code == 2 and "--prompt" in err
    assert not list(tmp_path.iterdir())


def test_stream_huge_upscale_is_a_limit_error_before_the_stream_runs(capsys, tmp_path, monkeypatch):
    from accelframe.pipeline import Pipeline

    monkeypatch.setattr(Pipeline, "stream", _never)
    code = main(["stream", "--source", "none", "--frames", "9", "--upscale", "100000",
                 "--out", str(tmp_path / "s.mp4")])
    err = capsys.readouterr().err
    assert code == 2 and "--upscale" in err and "100000" in err
    assert not list(tmp_path.iterdir())


def test_stream_unknown_policy_is_refused_before_any_model_loads(capsys, tmp_path):
    code = main(["stream", "--out", str(tmp_path / "s.mp4"), "--policy", "scoop"])
    err = capsys.readouterr().err
    assert code == 2 and "scoop" in err and "scope" in err  # the error names the closest policy
    assert not list(tmp_path.iterdir())


def test_stream_batch_stacks_step_and_block_policies_from_the_command_line(capsys, tmp_path):
    """SCOPE, SDVG (the world drafter) and the stream batch in one `accelframe stream`: every frame
    out, the drafter's chunks judged (tau = -inf accepts every one after the first) and counted."""
    pytest.importorskip("av")
    out = tmp_path / "s.mp4"
    code = main(["stream", "--frames", "33", "--fps", "200", "--out", str(out), "--stream-batch",
                 "--policy", "scope", "--drafter-size", "world-drafter", "--policy", "sdvg:tau=-inf",
                 "--json"])
    doc = json.loads(capsys.readouterr().out)
    assert code == 0 and doc["streams"]["s0"]["frames"] == 33 and doc["stream_batch"]
    blocks = doc["blocks"]
    assert blocks["regenerated"] == 1 and blocks["accepted"] >= 1
    target = doc["calls"]["target"]  # chunk 0 committed; the accepted drafts' commits held, skipped
    assert doc["calls"]["drafter"]["computed"] > 0 and target["commit"] >= 1
    assert target["commit"] + target["commit_skipped"] >= 2 and target["commit_skipped"] >= 1


def test_sink_tau_reaches_the_rolling_kv_of_the_stream_pipeline():
    from accelframe.streaming.cli import build_pipeline
    from accelframe.testing.fixtures import make_hooks
    from accelframe_adapters import plugin as adapters_plugin
    from accelframe_policies import plugin as policies_plugin

    hooks = make_hooks(adapters_plugin, policies_plugin)
    for kw, want in (({}, 0.6), ({"tau": 0.2}, 0.2)):
        pipe = build_pipeline(size="tiny", hooks_=hooks, motion=False, **kw)
        assert next(p.policy for p in pipe.stack if p.name == "rolling-kv").tau == want
