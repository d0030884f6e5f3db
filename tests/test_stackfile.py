"""Stack files (accelframe.stackfile): round trips, errors naming the file and the key, the commands."""

from __future__ import annotations

import json
import math
import tomllib

import pytest
from hypothesis import example, given, settings, strategies as st

from accelframe import stackfile
from accelframe.cli import main
from accelframe.errors import ConfigError
from accelframe.pipeline import Pipeline
from accelframe.stackfile import PolicyEntry, StackConfig, StackFileError, StreamOptions

ANALYTIC = """\
# a comment
[adapter]
name = "analytic"
settings = { steps = 8 }

[pipeline]
max_reuse = 3

[[policies]]
name = "every-n"
settings = { n = 2 }

[[policies]]
name = "teacache"

[stream]
stream_batch = true
fps = 12
"""


@pytest.fixture(autouse=True)
def _registered_plugins(monkeypatch):
    """These tests build pipelines by registered name: the installed plugins load."""
    monkeypatch.delenv("ACCELFRAME_DISABLE_PLUGIN_AUTOLOAD")


def write(tmp_path, text, name="stack.toml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_file_to_pipeline_and_back_is_exact(tmp_path):
    path = write(tmp_path, ANALYTIC)
    cfg = stackfile.load(path)
    assert cfg == StackConfig(adapter="analytic", adapter_settings={"steps": 8}, max_reuse=3,
                              policies=[PolicyEntry(name="every-n", settings={"n": 2}), PolicyEntry(name="teacache")],
                              stream=StreamOptions(stream_batch=True, fps=12.0))
    pipe = Pipeline.from_config(path)
    assert pipe.policies == ["every-n", "teacache"] and pipe.max_reuse == 3
    assert pipe.to_config() == cfg
    again = stackfile.loads(pipe.to_config().to_toml())
    assert again == cfg
    # the written file builds a pipeline that generates the same video as the original file's
    other = Pipeline.from_config(stackfile.write(tmp_path / "again.toml", pipe.to_config()))
    a = pipe.generate(["a"], num_frames=6, seed=1)
    b = other.generate(["a"], num_frames=6, seed=1)
    assert a.latents.equal(b.latents) and a.stats.calls == b.stats.calls


def test_pipeline_built_in_python_round_trips():
    pipe = Pipeline("analytic", adapter_kwargs={"steps": 6, "plan": "staircase"}, decode_worker=False, max_reuse=2)
    pipe.use("every-n", n=3).use("every-n", n=2)
    cfg = pipe.to_config()
    assert [p.name for p in cfg.policies] == ["every-n", "every-n"]  # registered names, not stack names
    assert stackfile.loads(cfg.to_toml()) == cfg
    rebuilt = Pipeline.from_config(cfg)
    assert rebuilt.policies == pipe.policies and rebuilt.to_config() == cfg


def test_a_drafter_and_its_context_round_trip():
    cfg = stackfile.loads('[adapter]\nname = "analytic"\n[drafter]\nname = "analytic"\ncontext = "emitted"\n'
                          'settings = { steps = 2 }\n')
    assert cfg.drafter == "analytic" and cfg.drafter_context == "emitted" and cfg.drafter_settings == {"steps": 2}
    pipe = Pipeline.from_config(cfg)
    assert pipe.drafter is not None and pipe.drafter_context == "emitted"
    assert pipe.to_config() == cfg


def test_an_object_cannot_be_written():
    class Mine:
        name = "mine"

    pipe = Pipeline("analytic")
    from accelframe import hookimpl

    class Step:
        name = "mine"

        @hookimpl
        def accelframe_step_decide(self, ctx):
            return None

    pipe.use(Step())
    with pytest.raises(ConfigError, match="policy.*'mine'.*registered name"):
        pipe.to_config()


settings_values = st.recursive(
    st.none().map(lambda _: 0) | st.booleans() | st.integers(-10**12, 10**12)
    | st.floats(allow_nan=False) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(min_size=1, max_size=6), inner, max_size=3),
    max_leaves=8)


@settings(max_examples=150, deadline=None)
@example({"0\n": 0}, [])  # a key that ends in a newline is quoted, not written bare
@given(st.dictionaries(st.text(min_size=1, max_size=8), settings_values, max_size=5),
       st.lists(st.tuples(st.text(min_size=1, max_size=10),
                          st.dictionaries(st.text(min_size=1, max_size=8), settings_values, max_size=3)), max_size=3))
def test_any_settings_survive_writing_and_reading(adapter_settings, policies):
    cfg = StackConfig(adapter="analytic", adapter_settings=adapter_settings,
                      policies=[PolicyEntry(name=n, settings=s) for n, s in policies])
    text = cfg.to_toml()
    assert stackfile.loads(text) == cfg
    assert tomllib.loads(text) == cfg.to_dict()


def test_none_cannot_be_written_and_says_why():
    cfg = StackConfig(adapter="analytic", policies=[PolicyEntry(name="sdvg", settings={"tau": None})])
    with pytest.raises(ConfigError, match="policies\\[0\\].settings.tau.*no null"):
        cfg.to_toml()


def test_floats_keep_their_bits():
    values = [0.1, 1e-05, 1e300, -0.0, math.inf, -math.inf, 2.0, 1 / 3]
    cfg = StackConfig(adapter="analytic", adapter_settings={"xs": values})
    back = stackfile.loads(cfg.to_toml()).adapter_settings["xs"]
    assert [math.copysign(1, v) for v in back] == [math.copysign(1, v) for v in values] and back == values


@pytest.mark.parametrize("text, key, line, allowed", [
    ('[adaptr]\nname = "analytic"\n', "adaptr", 1, "did you mean 'adapter'"),
    ('[adapter]\nname = "analytic"\nsetings = {}\n', "adapter.setings", 3, "did you mean 'settings'"),
    ('[adapter]\nname = "analytic"\nsettings = { stepz = 8 }\n', "adapter.settings.stepz", 3, "did you mean 'steps'"),
    ('[adapter]\nname = "analytik"\n', "adapter.name", 2, "did you mean 'analytic'"),
    ('[adapter]\nname = "analytic"\n\n[[policies]]\nname = "every-n"\n\n[[policies]]\nname = "every-n"\n'
     'settings = { n = 0 }\n', "policies[1].settings.n", 9, "an integer in"),
    ('[adapter]\nname = "analytic"\n[[policies]]\nname = "evry-n"\n', "policies[0].name", 4, "did you mean 'every-n'"),
    ('[adapter]\nname = "analytic"\n[[policies]]\nname = "every-n"\nsettings = { m = 1 }\n',
     "policies[0].settings.m", 5, "valid keywords"),
    ('[adapter]\nname = "analytic"\n[[policies]]\nname = "sdvg"\n', "policies[0]", 3, "give the pipeline a drafter"),
    ('[adapter]\nname = "analytic"\n[pipeline]\nmax_reuse = 0\n', "pipeline.max_reuse", 4, "an int >= 1"),
    ('[adapter]\nname = "analytic"\n[pipeline]\ndecode_worker = "yes"\n', "pipeline.decode_worker", 4, "true or false"),
    ('[adapter]\nname = "analytic"\n[stream]\nfps = -1\n', "stream.fps", 4, "a positive number"),
    ('[adapter]\nname = "analytic"\n[drafter]\nname = "analytic"\ncontext = "mine"\n', "drafter.context", 5, "'own'"),
    ('format = 2\n[adapter]\nname = "analytic"\n', "format", 1, "the stack-file format"),
    ('[adapter]\nname = "analytic"\n[drafter]\nname = "analytic"\nsettings = { stepz = 2 }\n',
     "drafter.settings.stepz", 5, "did you mean 'steps'"),
    ('[pipeline]\nstrict = true\n', "adapter", None, "a [adapter] table"),
])
def test_bad_files_name_the_file_the_key_and_the_line(tmp_path, text, key, line, allowed):
    path = write(tmp_path, text)
    with pytest.raises(StackFileError) as err:
        Pipeline.from_config(path)
    e = err.value
    assert (e.path, e.key, e.line) == (str(path), key, line)
    assert allowed in e.allowed and str(path) in str(e)
    assert isinstance(e, ConfigError)  # what users catch for every bad config


def test_a_syntax_error_gives_its_line(tmp_path):
    path = write(tmp_path, '[adapter]\nname = "analytic"\nsettings = { steps = }\n')
    with pytest.raises(StackFileError, match=r"line 3: not TOML") as err:
        stackfile.load(path)
    assert err.value.line == 3


def test_a_missing_file_is_named(tmp_path):
    with pytest.raises(StackFileError, match="an existing stack file"):
        stackfile.load(tmp_path / "nope.toml")


def test_writing_refuses_to_overwrite_without_force(tmp_path):
    cfg = stackfile.loads(ANALYTIC)
    path = stackfile.write(tmp_path / "s.toml", cfg, comment="made by a test")
    assert path.read_text().startswith("# made by a test\n")
    with pytest.raises(ConfigError, match="does not exist yet"):
        stackfile.write(path, cfg)
    stackfile.write(path, cfg, force=True)
    assert stackfile.load(path) == cfg


# ---- the commands --------------------------------------------------------------------------------


def test_generate_runs_a_stack_file(tmp_path, capsys):
    path = write(tmp_path, ANALYTIC)
    assert main(["--threads", "1", "generate", "--stack", str(path), "--frames", "6", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["adapter"] == "analytic" and doc["policies"] == ["every-n", "teacache"] and doc["stack"] == str(path)
    assert doc["model_calls"]["target"]["cached"] > 0
    assert any("stream batch" in n for n in doc["notes"])  # the file's [stream] table is for stream and serve
    # --policy adds after the file's stack
    assert main(["--threads", "1", "generate", "--stack", str(path), "--frames", "6", "--policy", "every-n:n=3",
                 "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["policies"] == ["every-n", "teacache", "every-n#2"]


@pytest.mark.parametrize("extra, flag", [(["--adapter", "self-forcing"], "--adapter"), (["--set", "steps=4"], "--set"),
                                         (["--drafter", "analytic"], "--drafter"), (["--max-reuse", "2"], "--max-reuse")])
def test_generate_refuses_options_the_file_sets(tmp_path, capsys, extra, flag):
    path = write(tmp_path, ANALYTIC)
    assert main(["generate", "--stack", str(path), "--frames", "6", *extra]) == 2
    err = capsys.readouterr().err
    assert f"accelframe generate.{flag} = " in err and str(path) in err


def test_generate_names_a_bad_stack_file(tmp_path, capsys):
    path = write(tmp_path, '[adapter]\nname = "analytic"\n[[policies]]\nname = "every-n"\nsettings = { n = "x" }\n')
    assert main(["generate", "--stack", str(path), "--frames", "6"]) == 2
    assert f"stack file {path}, line 5: policies[0].settings.n = 'x'" in capsys.readouterr().err


def test_stream_takes_the_files_stream_options(tmp_path):
    import argparse

    from accelframe.streaming import cli as stream_cli

    p = argparse.ArgumentParser()
    stream_cli.configure(p)
    path = write(tmp_path, ANALYTIC)
    args = p.parse_args(["--stack", str(path), "--source", "none"])
    stream_cli.check_args(args)
    assert args.stream_batch is True and args.fps == 12.0 and args.deadline == 1.0
    args = p.parse_args(["--stack", str(path), "--source", "none", "--fps", "8"])
    stream_cli.check_args(args)
    assert args.fps == 8.0  # the command line wins
    args = p.parse_args(["--source", "none"])
    stream_cli.check_args(args)
    assert (args.size, args.block_frames, args.fps, args.stream_batch) == ("world", 3, 16.0, False)
    with pytest.raises(ConfigError, match="--size.*stack file sets it"):
        stream_cli.check_args(p.parse_args(["--stack", str(path), "--size", "world"]))


def test_stream_runs_a_stack_file(tmp_path, capsys):
    path = write(tmp_path, '[adapter]\nname = "self-forcing"\nsettings = { size = "world" }\n[[policies]]\n'
                           'name = "taylorseer"\nsettings = { interval = 2 }\n[stream]\nfps = 1000\n')
    out = tmp_path / "s.mp4"
    pytest.importorskip("av")
    assert main(["--threads", "1", "stream", "--stack", str(path), "--source", "none", "--frames", "9",
                 "--out", str(out), "--upscale", "1", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    calls = doc["calls"]["target"]
    assert calls["predicted"] + calls["cached"] > 0 and out.exists()


def test_serve_reads_a_stack_file_and_keeps_the_old_spelling(tmp_path):
    import argparse

    pytest.importorskip("starlette")
    from accelframe.serve import cli as serve_cli

    p = argparse.ArgumentParser()
    serve_cli.configure(p)
    path = write(tmp_path, ANALYTIC)
    args = p.parse_args(["--stack", str(path)])
    serve_cli.check_args(args)
    assert args.stack_config.adapter == "analytic" and args.fps == 12.0 and args.deadline == 1.5
    args = p.parse_args(["--stack", "scope"])
    with pytest.warns(FutureWarning, match="--policy"):
        serve_cli.check_args(args)
    assert args.policies == [("scope", {})] and args.stack_config is None
    with pytest.raises(ConfigError, match="--block-frames"):
        serve_cli.check_args(p.parse_args(["--stack", str(path), "--block-frames", "1"]))
