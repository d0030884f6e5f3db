"""Nothing lost, nothing half-written (issue 20, items 5-8): every output path is checked before
work, written under a temporary name and renamed into place when complete, never replaced without
``--force``; SIGTERM during ``accelframe stream`` keeps the emitted frames in a playable mp4."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from accelframe.cli import main
from accelframe.errors import ConfigError


@pytest.fixture
def plugins(monkeypatch):
    monkeypatch.delenv("ACCELFRAME_DISABLE_PLUGIN_AUTOLOAD", raising=False)


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def _count_frames(path: Path) -> int:
    import av

    with av.open(str(path)) as container:
        return sum(1 for _ in container.decode(video=0))


# ---- the shared mechanism --------------------------------------------------------------------


def test_atomic_path_renames_on_success_and_leaves_nothing_on_failure(tmp_path):
    from accelframe.outputs import atomic_path

    target = tmp_path / "a.json"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            assert tmp.parent == tmp_path and tmp.suffix == ".json" and tmp != target
            tmp.write_text("half")
            raise RuntimeError("boom")
    assert _names(tmp_path) == ["a.json"] and target.read_text() == "old"
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise KeyboardInterrupt
    assert _names(tmp_path) == ["a.json"] and target.read_text() == "old"
    with atomic_path(target) as tmp:
        tmp.write_text("new")
    assert _names(tmp_path) == ["a.json"] and target.read_text() == "new"


def test_a_folder_replaced_whole_is_put_back_when_the_new_one_cannot_be_moved_in(tmp_path, monkeypatch):
    from accelframe import outputs

    out = tmp_path / "weights"
    out.mkdir()
    (out / "w.safetensors").write_text("old")
    real, calls = os.replace, []

    def second_fails(src, dst):
        calls.append(dst)
        if len(calls) == 2:  # the new folder onto the target, after the old one was moved aside
            raise OSError(28, "No space left on device")
        return real(src, dst)

    monkeypatch.setattr(outputs.os, "replace", second_fails)
    with pytest.raises(OSError):
        with outputs.atomic_path(out, folder=True, merge=False) as tmp:
            (tmp / "w.safetensors").write_text("new")
    assert _names(tmp_path) == ["weights"] and (out / "w.safetensors").read_text() == "old"


def test_atomic_folder_new_and_merged(tmp_path):
    from accelframe.outputs import atomic_path

    out = tmp_path / "bench"
    with pytest.raises(RuntimeError):
        with atomic_path(out, folder=True) as tmp:
            (tmp / "results.json").write_text("{}")
            raise RuntimeError
    assert _names(tmp_path) == []
    with atomic_path(out, folder=True) as tmp:
        (tmp / "results.json").write_text("1")
    assert _names(out) == ["results.json"] and _names(tmp_path) == ["bench"]
    (out / "notes.txt").write_text("mine")
    with atomic_path(out, folder=True) as tmp:
        (tmp / "results.json").write_text("2")
        (tmp / "results.md").write_text("t")
    assert _names(out) == ["notes.txt", "results.json", "results.md"] and _names(tmp_path) == ["bench"]
    assert (out / "results.json").read_text() == "2" and (out / "notes.txt").read_text() == "mine"


def test_check_output_creates_the_folder_or_refuses(tmp_path):
    from accelframe.outputs import check_output

    got = check_output(tmp_path / "new" / "deep" / "x.mp4", owner="t", field="--out")
    assert got == tmp_path / "new" / "deep" / "x.mp4" and (tmp_path / "new" / "deep").is_dir()
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError) as err:
        check_output(tmp_path / "file" / "x.mp4", owner="t", field="--out")
    assert err.value.field == "--out" and "file" in err.value.value
    (tmp_path / "old.mp4").write_text("")
    with pytest.raises(ConfigError, match="--force"):
        check_output(tmp_path / "old.mp4", owner="t", field="--out")
    assert check_output(tmp_path / "old.mp4", owner="t", field="--out", force=True) == tmp_path / "old.mp4"
    with pytest.raises(ConfigError, match="folder"):
        check_output(tmp_path / "new", owner="t", field="--out", force=True)


def test_sigterm_as_interrupt_restores_the_handler():
    from accelframe.outputs import sigterm_as_interrupt

    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt):
        with sigterm_as_interrupt():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the handler raises before this ends
    assert signal.getsignal(signal.SIGTERM) == before


# ---- 5: SIGTERM during `accelframe stream` ----------------------------------------------------


def test_sigterm_during_stream_keeps_the_emitted_frames_in_a_playable_mp4(tmp_path):
    pytest.importorskip("av")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("ACCELFRAME_DISABLE_PLUGIN_AUTOLOAD", None)
    out = tmp_path / "s.mp4"
    proc = subprocess.Popen([sys.executable, "-m", "accelframe", "stream", "--frames", "105", "--fps", "12",
                             "--out", str(out)], env=env, cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not list(tmp_path.iterdir()):  # the mp4 is opened when the first frames are emitted
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.05)
        time.sleep(0.6)  # a few more chunks
        assert proc.poll() is None, "the stream ended before it could be interrupted"
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err
    assert _names(tmp_path) == ["s.mp4"], err  # no temporary left beside it
    kept = _count_frames(out)
    said = re.search(r"kept (\d+) frames of s0", err)
    assert said is not None, err
    assert 9 <= kept < 105 and kept == int(said.group(1))


# ---- 6: an interrupted write leaves nothing --------------------------------------------------


def test_interrupted_generate_leaves_no_partial_video_and_the_rerun_works(tmp_path, plugins, monkeypatch, capsys):
    pytest.importorskip("av")
    import av

    real = av.VideoFrame.from_ndarray
    calls = {"n": 0}

    def interrupted(*a, **kw):
        calls["n"] += 1
        if calls["n"] == 60:  # part-way through the mp4, after the encoder has written some
            raise KeyboardInterrupt
        return real(*a, **kw)

    monkeypatch.setattr(av.VideoFrame, "from_ndarray", interrupted)
    out = tmp_path / "clip.mp4"
    argv = ["generate", "--adapter", "analytic", "--frames", "90", "--out", str(out),
            "--trace", str(tmp_path / "t.json"), "--json"]
    assert main(argv) == 130
    assert _names(tmp_path) == []
    monkeypatch.setattr(av.VideoFrame, "from_ndarray", real)
    assert main(argv) == 0  # nothing blocks the rerun
    assert _names(tmp_path) == ["clip.mp4", "clip.png", "t.json"]
    assert _count_frames(out) == json.loads(capsys.readouterr().out)["frames_shape"][1]


def test_interrupted_generate_of_a_pt_leaves_nothing(tmp_path, plugins, monkeypatch):
    def interrupted(obj, f, *a, **kw):
        Path(f).write_bytes(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", interrupted)
    assert main(["generate", "--adapter", "analytic", "--frames", "3", "--out", str(tmp_path / "c.pt")]) == 130
    assert _names(tmp_path) == []


def test_interrupted_bench_write_leaves_no_results(tmp_path, monkeypatch):
    from accelframe_bench import reports as bench_io

    def markdown(doc):
        raise KeyboardInterrupt

    out = tmp_path / "bench"
    with pytest.raises(KeyboardInterrupt):
        bench_io.report({"a": 1}, out, lambda d, o: bench_io.write_tables(d, o, markdown), markdown, True)
    assert _names(tmp_path) == []


def test_interrupted_weights_save_leaves_neither_file(tmp_path, monkeypatch):
    from accelframe_adapters.world.training import common as training

    real = Path.write_text

    def interrupted(self, *a, **kw):
        if self.name.endswith(".json"):
            raise KeyboardInterrupt
        return real(self, *a, **kw)

    monkeypatch.setattr(Path, "write_text", interrupted)
    with pytest.raises(KeyboardInterrupt):
        training.save(tmp_path / "w.safetensors", {"x": torch.ones(2)}, config={}, training={}, log={"loss": [1]})
    assert _names(tmp_path) == []


# ---- 7: output paths checked before any model runs --------------------------------------------


def test_generate_creates_missing_output_folders(tmp_path, plugins, monkeypatch):
    pytest.importorskip("av")
    monkeypatch.chdir(tmp_path)
    assert main(["generate", "--adapter", "analytic", "--frames", "3", "--out", "nodir/clip.mp4",
                 "--trace", "other/t.json", "--json"]) == 0
    assert _names(tmp_path / "nodir") == ["clip.mp4", "clip.png"] and _names(tmp_path / "other") == ["t.json"]


@pytest.mark.parametrize("flag, name", [("--out", "clip.mp4"), ("--out", "clip.pt"), ("--trace", "t.json")])
def test_generate_refuses_an_unwritable_path_before_the_model_runs(tmp_path, plugins, monkeypatch, capsys,
                                                                   flag, name):
    from accelframe.pipeline import Pipeline

    def never(*a, **kw):
        raise AssertionError("the model ran")

    monkeypatch.setattr(Pipeline, "generate", never)
    (tmp_path / "file").write_text("")
    code = main(["generate", "--adapter", "analytic", "--frames", "3", flag, str(tmp_path / "file" / name)])
    err = capsys.readouterr().err
    assert code == 2 and flag in err and "file" in err


@pytest.mark.parametrize("out, trace", [("c.pt", "c.pt"), ("c.mp4", "c.png"), ("c.mp4", "./c.mp4")])
def test_generate_refuses_a_trace_onto_one_of_its_outputs(tmp_path, plugins, monkeypatch, capsys, out, trace):
    """Two outputs under one name would leave one of them silently replaced by the other."""
    from accelframe.pipeline import Pipeline

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(Pipeline, "generate", lambda *a, **kw: (_ for _ in ()).throw(AssertionError("ran")))
    assert main(["generate", "--adapter", "analytic", "--frames", "3", "--out", out, "--trace", trace]) == 2
    assert "--trace" in capsys.readouterr().err
    assert _names(tmp_path) == []


@pytest.mark.parametrize("out", ["nodir/c.pt", "nodir/c.mp4"])
def test_generate_checks_upscale_before_creating_output_folders(tmp_path, plugins, monkeypatch, capsys, out):
    monkeypatch.chdir(tmp_path)
    assert main(["generate", "--adapter", "analytic", "--frames", "3", "--out", out, "--upscale", "0"]) == 2
    assert "--upscale" in capsys.readouterr().err
    assert _names(tmp_path) == []


def test_generate_refuses_pixels_from_a_latent_only_adapter_before_the_model_runs(tmp_path, plugins,
                                                                                   monkeypatch, capsys):
    from accelframe import adapter as caps
    from accelframe.pipeline import Pipeline
    from accelframe.testing.analytic import AnalyticAdapter

    init = AnalyticAdapter.__init__

    def latent_only(self, **kw):
        init(self, **kw)
        self.capabilities = self.capabilities - {caps.DECODE}

    monkeypatch.setattr(AnalyticAdapter, "__init__", latent_only)
    monkeypatch.setattr(Pipeline, "generate", lambda *a, **kw: (_ for _ in ()).throw(AssertionError("ran")))
    code = main(["generate", "--adapter", "analytic", "--frames", "3", "--out", str(tmp_path / "c.png")])
    assert code == 2 and ".pt" in capsys.readouterr().err


def test_stream_refuses_an_unwritable_out_before_loading_the_model(tmp_path, plugins, monkeypatch, capsys):
    from accelframe.streaming import cli as stream_cli

    monkeypatch.setattr(stream_cli, "build_pipeline", lambda **kw: (_ for _ in ()).throw(AssertionError("ran")))
    (tmp_path / "file").write_text("")
    assert main(["stream", "--frames", "9", "--out", str(tmp_path / "file" / "s.mp4")]) == 2
    assert "--out" in capsys.readouterr().err
    (tmp_path / "s.mp4").write_text("mine")
    assert main(["stream", "--frames", "9", "--out", str(tmp_path / "s.mp4")]) == 2
    assert "--force" in capsys.readouterr().err and (tmp_path / "s.mp4").read_text() == "mine"


def test_world_sample_creates_its_folder(tmp_path, plugins):
    assert main(["world", "sample", "--prompt", "a red circle moves left on a blue background",
                 "--out", str(tmp_path / "nodir" / "truth.png")]) == 0
    assert _names(tmp_path / "nodir") == ["truth.png"]


# ---- 8: no silent overwrites; --force is the one flag --------------------------------------


def test_world_train_refuses_to_replace_the_loss_log_beside_out(tmp_path, plugins, capsys):
    out = tmp_path / "t.safetensors"
    (tmp_path / "t.log.json").write_text("precious")
    assert main(["world", "train", "text", "--out", str(out)]) == 2
    assert "--force" in capsys.readouterr().err
    assert _names(tmp_path) == ["t.log.json"] and (tmp_path / "t.log.json").read_text() == "precious"
    assert main(["world", "train", "text", "--out", str(out), "--force"]) == 0
    assert _names(tmp_path) == ["t.log.json", "t.safetensors"]


def test_world_train_refuses_to_replace_an_unrelated_data_file(tmp_path, monkeypatch):
    from accelframe_adapters.world import models
    from accelframe_adapters.world.training import train_dit

    def never(*a, **kw):
        raise AssertionError("the unrelated file would be replaced by a new cache")

    monkeypatch.setattr(train_dit, "build_dataset", never)
    data = tmp_path / "mine.pt"  # encoded clips, but of another VAE: not this run's cache
    torch.save({"latents": torch.zeros(1, 3, 8, 16, 16), "prompts": ["a red circle moves left on a blue background"],
                "seeds": [1], "vae_id": 0.0}, str(data))
    before = data.read_bytes()
    with pytest.raises(ConfigError) as err:
        train_dit.train("drafter", tmp_path / "d.safetensors", vae=models.weights_path("vae"),
                        text=models.weights_path("text"), clips_n=4, data=data)
    assert err.value.field == "data" and "force" in str(err.value)
    assert data.read_bytes() == before


def test_world_sample_refuses_to_replace_the_strip(tmp_path, plugins, capsys):
    strip = tmp_path / "clip.png"
    strip.write_text("precious")
    assert main(["world", "sample", "--prompt", "a red circle moves left on a blue background",
                 "--out", str(tmp_path / "clip.mp4")]) == 2
    assert "--force" in capsys.readouterr().err
    assert _names(tmp_path) == ["clip.png"] and strip.read_text() == "precious"


def test_world_cards_keep_an_edited_card_unless_force(tmp_path, plugins, capsys):
    assert main(["world", "train", "text", "--out", str(tmp_path / "world-text.safetensors")]) == 0
    assert main(["world", "cards", "--dir", str(tmp_path)]) == 0
    card = tmp_path / "world-text.md"
    card.write_text("edited by hand")
    capsys.readouterr()
    assert main(["world", "cards", "--dir", str(tmp_path)]) == 2
    assert "--force" in capsys.readouterr().err and card.read_text() == "edited by hand"
    assert main(["world", "cards", "--dir", str(tmp_path), "--force"]) == 0
    assert card.read_text().startswith("# world-text")


def test_the_ring_trial_does_not_overwrite_its_out(tmp_path, monkeypatch, capsys):
    from accelframe_adapters.parallel import trial

    monkeypatch.setattr(trial, "run", lambda cfg: pytest.fail("ran before checking OUT"))
    target = tmp_path / "out.pt"
    target.write_text("precious")
    assert trial.main(["{}", str(target)]) == 2
    assert "--force" in capsys.readouterr().err and target.read_text() == "precious"


@pytest.mark.parametrize("argv", [
    ["generate"], ["stream"], ["bench", "step"], ["bench", "block"], ["bench", "stream"],
    ["world", "train", "text"], ["world", "sample", "--prompt", "p", "--out", "x.png"], ["world", "cards"],
    ["calibrate", "--adapter", "analytic"],
])
def test_force_is_the_flag_of_every_command_that_writes(plugins, argv):
    from accelframe.cli import build_parser
    from accelframe.plugins import create_hooks

    args = build_parser(create_hooks()).parse_args([*argv, "--force"])
    assert args.force is True


def test_stream_keeps_overwrite_as_an_alias(plugins):
    from accelframe.cli import build_parser
    from accelframe.plugins import create_hooks

    assert build_parser(create_hooks()).parse_args(["stream", "--overwrite"]).force is True


def test_magi_checkpoint_folder_is_not_replaced_without_force_and_never_half_written(tmp_path, monkeypatch):
    from accelframe_adapters.magi import checkpoints as mc
    from accelframe_adapters.magi.dit import MagiDiT, MagiDiTConfig

    net = MagiDiT(MagiDiTConfig.tiny()).eval()
    folder = mc.save_magi_checkpoint(net, tmp_path, shards=2)
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    with pytest.raises(ConfigError, match="force"):
        mc.save_magi_checkpoint(net, tmp_path)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    mc.save_magi_checkpoint(net, tmp_path, force=True)  # one file now: the shards and index are gone
    assert _names(folder) == ["model.safetensors"] and _names(tmp_path) == [folder.name]
    assert isinstance(mc.load_magi_checkpoint(tmp_path)[0], MagiDiT)

    def interrupted(*a, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(mc, "_write_magi_checkpoint", interrupted)
    with pytest.raises(KeyboardInterrupt):
        mc.save_magi_checkpoint(net, tmp_path, distill=True)
    assert _names(tmp_path) == [folder.name]


def test_magi_checkpoint_weight_folder_that_is_a_file_is_refused_before_writing(tmp_path):
    from accelframe_adapters.magi import checkpoints as mc
    from accelframe_adapters.magi.dit import MagiDiT, MagiDiTConfig

    (tmp_path / "inference_weight").write_text("not a folder")
    with pytest.raises(ConfigError, match="folder"):
        mc.save_magi_checkpoint(MagiDiT(MagiDiTConfig.tiny()), tmp_path, force=True)
    assert _names(tmp_path) == ["inference_weight"]


# ---- stream patterns and upscaling are bounded before anything is written ----------------------


@pytest.mark.parametrize("pattern", ["o-{strem}.mp4", "o-{0}.mp4", "o-{stream.x}.mp4", "o-{{stream}}.mp4"])
def test_mp4_sink_refuses_braces_other_than_a_literal_stream(tmp_path, pattern):
    pytest.importorskip("av")
    from accelframe.streaming.sinks import Mp4Sink

    with pytest.raises(ConfigError) as exc:
        Mp4Sink(tmp_path / pattern, 16)
    assert exc.value.field == "path" and "{stream}" in exc.value.allowed


def test_mp4_sink_pattern_fills_in_the_stream_id(tmp_path):
    pytest.importorskip("av")
    from accelframe.streaming.sinks import Mp4Sink

    sink = Mp4Sink(tmp_path / "o-{stream}-{stream}.mp4", 16)
    assert sink.path_for("s1").name == "o-s1-s1.mp4"


def test_upscale_beyond_the_frame_limit_is_refused_before_allocating(tmp_path):
    pytest.importorskip("av")
    from accelframe.errors import LimitError
    from accelframe.media import write_video
    from accelframe.streaming.sinks import Mp4Sink

    frames = torch.rand(2, 3, 8, 8)
    with pytest.raises(LimitError) as exc:
        write_video(tmp_path / "c.mp4", frames, 16, upscale_factor=100000)
    assert exc.value.field == "upscale_factor" and exc.value.maximum >= 1
    sink = Mp4Sink(tmp_path / "s.mp4", 16, upscale_factor=100000)
    with pytest.raises(LimitError):
        sink.write("s0", frames)
    sink.close()
    assert _names(tmp_path) == []


def test_upscale_beyond_the_memory_budget_is_refused(tmp_path, monkeypatch):
    from accelframe.errors import LimitError
    from accelframe.limits import check_upscale

    monkeypatch.setenv("ACCELFRAME_MAX_MEMORY_GB", "0.001")  # about 1 MiB
    check_upscale("write_video", "upscale_factor", 2, (8, 8), frames=2)  # small: fine
    with pytest.raises(LimitError) as exc:
        check_upscale("write_video", "upscale_factor", 64, (8, 8), frames=9)  # 9 x 512 x 512 frames
    assert exc.value.limit == "memory" and 1 <= exc.value.maximum < 64


def test_generate_huge_upscale_is_refused_before_the_model_runs(tmp_path, plugins, monkeypatch, capsys):
    from accelframe.pipeline import Pipeline

    monkeypatch.setattr(Pipeline, "generate", lambda *a, **kw: (_ for _ in ()).throw(AssertionError("ran")))
    code = main(["generate", "--adapter", "analytic", "--frames", "3", "--out", str(tmp_path / "c.png"),
                 "--upscale", "100000"])
    err = capsys.readouterr().err
    assert code == 2 and "--upscale" in err and "100000" in err
    assert _names(tmp_path) == []
