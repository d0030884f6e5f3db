"""Bad input to the ``accelframe world ...`` commands and ``accelframe bench world`` is a typed error
naming the option, raised before any work (no model built, no clip encoded, nothing written)."""

from __future__ import annotations

import json

import pytest
import torch

from accelframe.cli import main
from accelframe.errors import CheckpointError, ConfigError
from accelframe_adapters import checkpoints as ck
from accelframe_adapters.world import models

PROMPT = "a red circle moves left on a blue background"


@pytest.fixture
def plugins(monkeypatch):
    monkeypatch.delenv("ACCELFRAME_DISABLE_PLUGIN_AUTOLOAD", raising=False)


@pytest.fixture
def no_work(monkeypatch):
    """Any model build, clip encoding or generation fails the test: the error must come first."""
    from accelframe_bench import world as bench
    from accelframe_adapters.world.training import train_dit
    from accelframe_adapters.world.training import train_magi

    def never(*a, **kw):
        raise AssertionError("work started before the bad input was refused")

    for mod, name in ((bench, "_pipe"), (train_dit, "build_dataset"), (train_magi, "build_dataset"),
                      (train_dit, "load_vae"), (train_magi, "load_vae")):
        monkeypatch.setattr(mod, name, never)


# ---- 1: bench world --------------------------------------------------------------------------


@pytest.mark.parametrize("argv, field", [
    (["--batch", "-1"], "batch"), (["--batch", "0"], "batch"), (["--clips", "0"], "clips"),
    (["--seed", "-1"], "seed")])
def test_bench_world_refuses_bad_numbers_before_any_work(plugins, no_work, capsys, argv, field):
    assert main(["bench", "world", "--clips", "1", *argv]) == 2
    err = capsys.readouterr().err
    assert f"{field} = " in err and ">= " in err and "Traceback" not in err


def test_run_bench_refuses_a_batch_below_one(no_work):
    from accelframe_bench.world import run_bench

    for batch in (0, -1):
        with pytest.raises(ConfigError) as err:
            run_bench(n=1, batch=batch, quiet=True)
        assert err.value.field == "batch" and err.value.allowed == "an int >= 1"


# ---- 2: --init is checked with the other inputs ----------------------------------------------


@pytest.mark.parametrize("which", ["target", "magi"])
def test_world_train_checks_init_before_encoding_clips(tmp_path, monkeypatch, which):
    from accelframe_adapters.world.training import train_dit
    from accelframe_adapters.world.training import train_magi

    def never(*a, **kw):
        raise AssertionError("clips encoded before --init was checked")

    monkeypatch.setattr(train_dit, "build_dataset", never)
    monkeypatch.setattr(train_magi, "build_dataset", never)
    kw = dict(vae=models.weights_path("vae"), text=models.weights_path("text"), clips_n=1, quiet=True)

    def run(init):
        out = tmp_path / "out.safetensors"
        if which == "magi":
            return train_magi.train(out, init=init, **kw)
        return train_dit.train("target", out, init=init, **kw)

    with pytest.raises(CheckpointError, match="nosuch.safetensors.*no such file"):
        run(tmp_path / "nosuch.safetensors")
    (tmp_path / "junk.safetensors").write_text("not weights")
    with pytest.raises(CheckpointError, match="junk.safetensors"):
        run(tmp_path / "junk.safetensors")
    with pytest.raises(ConfigError, match="init"):  # weights of another model
        run(models.weights_path("drafter"))
    assert not (tmp_path / "out.safetensors").exists()


def test_world_train_cli_checks_init_before_any_work(tmp_path, plugins, no_work, capsys):
    assert main(["world", "train", "target", "--out", str(tmp_path / "t.safetensors"),
                 "--init", str(tmp_path / "nosuch.safetensors"), "--steps", "1"]) == 2
    assert "nosuch.safetensors" in capsys.readouterr().err
    assert main(["world", "train", "reward", "--out", str(tmp_path / "r.safetensors"),
                 "--init", str(models.weights_path("target"))]) == 2
    assert "magi" in capsys.readouterr().err  # the models that take --init, all of them


# ---- 3: the global --threads applies to world train ------------------------------------------


def test_world_train_takes_the_global_threads(tmp_path, plugins, monkeypatch, capsys):
    from accelframe_adapters.world.training import train_dit

    seen = []

    def fake(which, out, **kw):
        seen.append(torch.get_num_threads())
        return {"wall_s": 0}

    monkeypatch.setattr(train_dit, "train", fake)
    out = str(tmp_path / "t.safetensors")
    assert main(["world", "train", "target", "--out", out, "--threads", "2"]) == 0
    assert main(["--threads", "2", "world", "train", "target", "--out", out]) == 0
    assert seen == [2, 2]
    for bad in ("0", "-1"):
        assert main(["world", "train", "target", "--out", out, "--threads", bad]) == 2
        assert "--threads" in capsys.readouterr().err
    assert seen == [2, 2]


def test_every_world_command_accepts_threads_after_it(tmp_path, plugins, capsys):
    assert main(["world", "sample", "--prompt", PROMPT, "--out", str(tmp_path / "a.png"), "--threads", "1"]) == 0
    assert main(["world", "train", "text", "--out", str(tmp_path / "world-text.safetensors"),
                 "--threads", "1"]) == 0
    assert main(["world", "cards", "--dir", str(tmp_path), "--threads", "1"]) == 0


# ---- 4: every numeric option ---------------------------------------------------------------


@pytest.mark.parametrize("argv, option", [
    (["train", "target", "--clips", "0"], "--clips"),
    (["train", "magi", "--clips", "-2"], "--clips"),
    (["train", "target", "--steps", "0"], "--steps"),
    (["train", "drafter", "--steps", "-1"], "--steps"),
    (["train", "vae", "--local-steps", "0"], "--local-steps"),
    (["train", "target", "--short-steps", "-1"], "--short-steps"),
    (["train", "target", "--batch", "0"], "--batch"),
    (["train", "target", "--seed", "-1"], "--seed"),
    (["train", "text", "--seed", "-1"], "--seed"),
    (["train", "target", "--lr", "0"], "--lr"),
    (["train", "target", "--lr", "nan"], "--lr"),
    (["train", "target", "--device", "banana"], "--device"),
    (["train", "drafter", "--device", "cuda:99"], "--device"),  # no such device on any machine here
    (["train", "reward", "--device", "cpu"], "--device"),  # only the target and the drafter take it
    (["sample", "--prompt", PROMPT, "--seed", "-1"], "--seed"),
    (["probe", "--prompts", "0"], "--prompts"),
    (["probe", "--seed", "-1"], "--seed"),
])
def test_world_numbers_out_of_range_are_config_errors_before_work(tmp_path, plugins, no_work, capsys, argv,
                                                                   option):
    argv = list(argv)
    if argv[0] == "train":
        argv += ["--out", str(tmp_path / "w.safetensors"), "--data", str(tmp_path / "clips.pt")]
    if argv[0] == "sample":
        argv += ["--out", str(tmp_path / "s.png")]
    assert main(["world", *argv]) == 2
    err = capsys.readouterr().err
    assert option in err and "is not allowed" in err and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing written


def test_train_settings_refuse_zero_steps_and_a_negative_seed():
    from accelframe_adapters.world.training.common import TrainSettings

    with pytest.raises(ConfigError, match="steps = 0"):
        TrainSettings(steps=0, batch=1, lr=1e-3)
    with pytest.raises(ConfigError, match="seed = -1"):
        TrainSettings(steps=1, batch=1, lr=1e-3, seed=-1)
    with pytest.raises(ConfigError, match="warmup = -1"):
        TrainSettings(steps=1, batch=1, lr=1e-3, warmup=-1)


def test_world_trainers_refuse_zero_clips(tmp_path, no_work):
    from accelframe_adapters.world.training import train_dit
    from accelframe_adapters.world.training import train_magi

    kw = dict(vae=models.weights_path("vae"), text=models.weights_path("text"), clips_n=0, quiet=True)
    with pytest.raises(ConfigError, match="clips"):
        train_dit.train("drafter", tmp_path / "d.safetensors", **kw)
    with pytest.raises(ConfigError, match="clips"):
        train_magi.train(tmp_path / "m.safetensors", **kw)
    assert list(tmp_path.iterdir()) == []


# ---- 5: world cards ------------------------------------------------------------------------


def _text_weights(folder):
    assert main(["world", "train", "text", "--out", str(folder / "world-text.safetensors")]) == 0


def test_world_cards_refuse_a_quality_file_that_is_not_bench_json(tmp_path, plugins, capsys):
    _text_weights(tmp_path)
    capsys.readouterr()
    bad = tmp_path / "notjson.json"
    bad.write_text("this is not JSON\n")
    for content in ("this is not JSON\n", "[1, 2]", json.dumps({"hello": 1})):
        bad.write_text(content)
        assert main(["world", "cards", "--dir", str(tmp_path), "--quality", str(bad)]) == 2
        err = capsys.readouterr().err
        assert "notjson.json" in err and "--quality" in err and "Traceback" not in err
    assert main(["world", "cards", "--dir", str(tmp_path), "--quality", str(tmp_path / "nosuch.json")]) == 2
    assert "nosuch.json" in capsys.readouterr().err
    assert not (tmp_path / "world-text.md").exists()  # refused before any card is written


def test_world_cards_refuse_a_folder_without_weights(tmp_path, plugins, capsys):
    assert main(["world", "cards", "--dir", str(tmp_path / "nosuchdir")]) == 2
    err = capsys.readouterr().err
    assert "nosuchdir" in err and "--dir" in err and "world-target.safetensors" in err
    (tmp_path / "adir").mkdir()
    assert main(["world", "cards", "--dir", str(tmp_path / "adir")]) == 2
    err = capsys.readouterr().err
    assert "adir" in err and "world-vae.safetensors" in err
    assert list((tmp_path / "adir").iterdir()) == []


# ---- 6: a file that is not weights: one clear line -----------------------------------------


class _Obj:
    pass


@pytest.mark.parametrize("what", ["text", "empty", "object", "zip"])
def test_a_file_that_is_not_weights_is_one_clear_line(tmp_path, what):
    path = tmp_path / "notweights.pt"
    if what == "text":
        path.write_text("hello, these are not weights\n")
    elif what == "empty":
        path.write_bytes(b"")
    elif what == "object":
        torch.save({"x": _Obj()}, path)
    else:
        path.write_bytes(b"PK\x03\x04 a broken zip")
    with pytest.raises(CheckpointError) as err:
        ck.load_torch(path)
    text = str(err.value)
    assert "\n" not in text and "not a PyTorch weights file" in text and str(path) in text
    assert "weights_only=False" not in text and "`weights_only` set to `False`" not in text
    assert "\x1b" not in text and len(text) < 300


def test_world_train_data_that_is_not_weights_is_one_line(tmp_path, plugins, capsys):
    data = tmp_path / "notweights.pt"
    torch.save({"x": _Obj()}, data)
    assert main(["world", "train", "target", "--out", str(tmp_path / "t.safetensors"), "--data", str(data)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not a PyTorch weights file" in err[0] and "weights_only" not in err[0]


def test_world_cards_quote_a_quality_file_with_every_value_they_use(tmp_path, plugins, capsys):
    from accelframe_adapters.world.training import cards

    doc: dict = {}
    for i, key in enumerate(cards.BENCH_WORLD):  # the shape of 'accelframe bench world --json'
        *parents, last = key.split(".")
        node = doc
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = "self-forcing" if key == "config.adapter" else 0.5 + i / 1000
    (tmp_path / "bench.json").write_text(json.dumps(doc))
    assert cards.read_bench(tmp_path / "bench.json") == doc
    del doc["timing"]["drafter_clip_s"]
    (tmp_path / "bench.json").write_text(json.dumps(doc))
    with pytest.raises(ConfigError, match="lacks timing.drafter_clip_s"):
        cards.read_bench(tmp_path / "bench.json")
