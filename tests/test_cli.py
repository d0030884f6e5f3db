"""The command line: plugins, generate, bench overhead, errors, and commands added by plugins."""

from __future__ import annotations

import json

import pytest
import torch

from accelframe import cli, hookimpl
from accelframe.plugins import create_hooks
from accelframe.testing import plugin as analytic_plugin


def run(capsys, *argv):
    code = cli.main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_help_lists_commands(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for word in ("plugins", "generate", "bench", "ACCELFRAME_DISABLE_PLUGIN_AUTOLOAD"):
        assert word in text


def test_plugins_json_lists_entry_points(capsys, monkeypatch):
    monkeypatch.delenv("ACCELFRAME_DISABLE_PLUGIN_AUTOLOAD")
    code, out, _ = run(capsys, "plugins", "--json")
    assert code == 0
    doc = json.loads(out)
    by_name = {p["name"]: p for p in doc["plugins"]}
    assert by_name["example"]["hooks"] == ["accelframe_register_policies"]
    assert by_name["example"]["version"] == "0.1.0"
    assert by_name["example"]["kind"] == "entry-point"
    assert by_name["accelframe.exact"]["kind"] == "core"
    assert {"every-n", "fixed-batch"} <= {e["name"] for e in doc["registered"]["policy"]}
    assert "analytic" in {e["name"] for e in doc["registered"]["adapter"]}
    assert doc["failed"] == []


def test_generate_json_counts_policy_calls(capsys, monkeypatch, tmp_path):
    monkeypatch.delenv("ACCELFRAME_DISABLE_PLUGIN_AUTOLOAD")
    out_file, trace_file = tmp_path / "clip.pt", tmp_path / "trace.json"
    code, out, _ = run(capsys, "generate", "--adapter", "analytic", "--frames", "6", "--set", "steps=4",
                       "--policy", "every-n:n=2", "--json", "--out", str(out_file), "--trace", str(trace_file))
    assert code == 0
    doc = json.loads(out)
    assert doc["policies"] == ["every-n"]
    assert doc["model_calls"]["target"]["computed"] == 4  # 2 units x 4 steps, every 2nd reused
    assert doc["model_calls"]["target"]["cached"] == 4
    saved = torch.load(out_file, weights_only=False)
    assert saved["latents"].shape == (1, 6, 4, 8, 8)
    trace = json.loads(trace_file.read_text())
    assert [e["mode"] for e in trace["trace"] if e["event"] == "step"][:2] == ["recompute", "cache"]


def test_generate_refuses_to_overwrite(capsys, tmp_path, monkeypatch):
    monkeypatch.delenv("ACCELFRAME_DISABLE_PLUGIN_AUTOLOAD")
    target = tmp_path / "clip.pt"
    target.write_text("precious")
    code, _, err = run(capsys, "generate", "--adapter", "analytic", "--frames", "3", "--out", str(target))
    assert code == 2 and "--out" in err and "--force" in err
    assert target.read_text() == "precious"


@pytest.mark.parametrize("argv, words", [
    (["generate", "--adapter", "analytic", "--policy", "nope"], ["unknown policy 'nope'", "every-n"]),
    (["generate", "--adapter", "analytic", "--policy", "every-n:n=0"], ["n = 0", "[1, 1000]"]),
    (["generate", "--adapter", "analytic", "--policy", "every-n:m=2"], ["m", "keyword"]),
    (["generate", "--adapter", "nope"], ["unknown adapter 'nope'", "analytic"]),
    (["generate", "--adapter", "analytic", "--set", "plan=zigzag"], ["plan", "'zigzag'", "'staircase'"]),
    (["generate", "--adapter", "analytic", "--frames", "4"], ["num_frames", "multiple of unit_frames = 3"]),
    (["generate", "--adapter", "analytic", "--set", "steps"], ["--set", "KEY=VALUE"]),
])
def test_bad_input_is_a_clear_error(capsys, monkeypatch, argv, words):
    monkeypatch.delenv("ACCELFRAME_DISABLE_PLUGIN_AUTOLOAD")
    code, out, err = run(capsys, *argv)
    assert code == 2 and out == ""
    for word in words:
        assert word in err


class BenchHello:
    """A plugin that adds ``accelframe bench hello``."""

    @hookimpl
    def accelframe_register_commands(self, register):
        register("hello", lambda p: p.add_argument("--name", default="world"),
                 lambda args: print(f"hello {args.name}") or 0, help="say hello", group="bench")


def test_plugins_add_commands(capsys, monkeypatch):
    hooks = create_hooks(autoload=False, plugins=(analytic_plugin, BenchHello()))
    monkeypatch.setattr("accelframe.plugins.create_hooks", lambda: hooks)
    code, out, _ = run(capsys, "bench", "hello", "--name", "accelframe")
    assert code == 0 and out.strip() == "hello accelframe"


def test_every_command_shape_gets_the_clis_manager_where_it_asks_for_it(capsys, monkeypatch):
    """``run(args, hooks)`` and ``run(args, *, hooks=None)`` get the CLI's plugin manager; the older
    ``run(args)`` gets ``args`` only."""
    got = {}

    def positional(args, hooks):
        got["positional"] = hooks

    def keyword(args, *, hooks=None):
        got["keyword"] = hooks

    def old(args):
        got["old"] = args.command

    class Shapes:
        @hookimpl
        def accelframe_register_commands(self, register):
            for name, fn in (("positional", positional), ("keyword", keyword), ("old", old)):
                register(name, lambda p: None, fn)

    hooks = create_hooks(autoload=False, plugins=(Shapes(),))
    monkeypatch.setattr("accelframe.plugins.create_hooks", lambda: hooks)
    for name in ("positional", "keyword", "old"):
        assert run(capsys, name)[0] == 0
    assert got == {"positional": hooks, "keyword": hooks, "old": "old"}


def test_command_name_clash_is_an_error(capsys, monkeypatch):
    class Clash:
        @hookimpl
        def accelframe_register_commands(self, register):
            register("stream", lambda p: None, lambda a: 0)  # a core command's name

    hooks = create_hooks(autoload=False, plugins=(Clash(),))
    monkeypatch.setattr("accelframe.plugins.create_hooks", lambda: hooks)
    code, _, err = run(capsys, "plugins")
    assert code == 2 and "stream" in err


# ---- a step policy that saved nothing says so (issue 20, item 12) ---------------------------


@pytest.mark.parametrize("policies, words", [
    (["every-n:n=1"], ["note: step policy 'every-n' recomputed every call", "(4 steps per unit)",
                       "saved nothing"]),
    (["every-n:n=2", "every-n:n=3"], ["note: step policy 'every-n#2' decided no model call", "saved nothing"]),
])
def test_a_step_policy_that_never_reuses_prints_a_note(capsys, monkeypatch, policies, words):
    monkeypatch.delenv("ACCELFRAME_DISABLE_PLUGIN_AUTOLOAD")
    argv = ["generate", "--adapter", "analytic", "--frames", "6", "--set", "steps=4"]
    for spec in policies:
        argv += ["--policy", spec]
    code, out, err = run(capsys, *argv)
    assert code == 0 and "note" not in out
    notes = [line for line in err.splitlines() if line.startswith("accelframe: note:")]
    assert len(notes) == 1, err
    for word in words:
        assert word in notes[0]
    code, out, _ = run(capsys, *argv, "--json")
    assert json.loads(out)["notes"] == [notes[0].removeprefix("accelframe: note: ")]


def test_a_step_policy_that_reuses_prints_no_note(capsys, monkeypatch):
    monkeypatch.delenv("ACCELFRAME_DISABLE_PLUGIN_AUTOLOAD")
    code, _, err = run(capsys, "generate", "--adapter", "analytic", "--frames", "6", "--set", "steps=4",
                       "--policy", "every-n:n=2")
    assert code == 0 and "note" not in err


def test_scope_on_four_step_self_forcing_says_it_cannot_act(capsys, monkeypatch):
    monkeypatch.delenv("ACCELFRAME_DISABLE_PLUGIN_AUTOLOAD")
    code, _, err = run(capsys, "generate", "--adapter", "self-forcing", "--set", "size=tiny", "--set", "height=32",
                       "--set", "width=32", "--frames", "9", "--policy", "scope")
    assert code == 0
    assert "accelframe: note: step policy 'scope' recomputed every call on this adapter (4 steps per unit)" in err
    assert "skyreels-v2-df" in err


# ---- frame counts: --frames is pixel frames everywhere (issue 20, item 16) -------------------


SMALL_WAN = ["--adapter", "self-forcing", "--set", "size=tiny", "--set", "height=32", "--set", "width=32"]


@pytest.mark.parametrize("argv, latent, pixel", [
    (["--frames", "9"], 3, 9),
    (["--latent-frames", "3"], 3, 9),
    (["--pixel-frames", "21"], 6, 21),  # the old name of --frames
])
def test_generate_counts_pixel_and_latent_frames(capsys, monkeypatch, argv, latent, pixel):
    monkeypatch.delenv("ACCELFRAME_DISABLE_PLUGIN_AUTOLOAD")
    code, out, err = run(capsys, "generate", *SMALL_WAN, *argv, "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert (doc["latent_frames"], doc["pixel_frames"], doc["frames"]) == (latent, pixel, pixel)
    assert doc["latents_shape"][1] == latent and doc["frames_shape"][1] == pixel
    code, out, _ = run(capsys, "generate", *SMALL_WAN, *argv)
    assert code == 0 and out.startswith(f"self-forcing: {pixel} frames ({latent} latent) in ")


def test_generate_frames_without_a_vae_are_latent_frames(capsys, monkeypatch):
    monkeypatch.delenv("ACCELFRAME_DISABLE_PLUGIN_AUTOLOAD")
    for flag in ("--frames", "--latent-frames", "--pixel-frames"):
        code, out, err = run(capsys, "generate", "--adapter", "analytic", flag, "6", "--json")
        assert code == 0, err
        doc = json.loads(out)
        assert (doc["latent_frames"], doc["pixel_frames"]) == (6, 6) and doc["latents_shape"][1] == 6


def test_generate_refuses_a_pixel_count_the_vae_cannot_make_and_two_counts(capsys, monkeypatch):
    monkeypatch.delenv("ACCELFRAME_DISABLE_PLUGIN_AUTOLOAD")
    code, _, err = run(capsys, "generate", *SMALL_WAN, "--frames", "10")
    assert code == 2 and "--frames = 10" in err and "9, 21, 33" in err
    with pytest.raises(SystemExit):
        cli.main(["generate", "--adapter", "analytic", "--frames", "9", "--latent-frames", "3"])
    assert "not allowed with" in capsys.readouterr().err


def test_stream_frames_are_pixel_frames_and_latent_frames_convert(monkeypatch):
    from accelframe_adapters import plugin as adapters
    from accelframe_policies import plugin as policies

    parser = cli.build_parser(create_hooks(autoload=False, plugins=(adapters, policies)))
    assert parser.parse_args(["stream"]).frames == 105
    assert parser.parse_args(["stream", "--frames", "17"]).frames == 17
    args = parser.parse_args(["stream", "--latent-frames", "27"])
    assert (args.frames, args.latent_frames) == (105, 27)


# ---- new-user audit: refused nonsense, one-line usage errors, messages ----------------------------


@pytest.mark.parametrize("argv, words", [
    (["--drafter-set", "size=world"], ["--drafter-set", "needs --drafter"]),
    (["--drafter-context", "own"], ["--drafter-context", "needs --drafter"]),
    (["--drafter-context", "emitted"], ["--drafter-context", "needs --drafter"]),
])
def test_drafter_options_without_a_drafter_are_refused(capsys, monkeypatch, argv, words):
    monkeypatch.delenv("ACCELFRAME_DISABLE_PLUGIN_AUTOLOAD")
    code, out, err = run(capsys, "generate", "--adapter", "analytic", "--frames", "3", *argv)
    assert code == 2 and out == ""
    for w in words:
        assert w in err


def test_drafter_context_default_still_works_with_a_drafter(capsys, monkeypatch):
    monkeypatch.delenv("ACCELFRAME_DISABLE_PLUGIN_AUTOLOAD")
    code, out, err = run(capsys, "generate", "--adapter", "analytic", "--drafter", "analytic",
                         "--drafter-set", "steps=2", "--frames", "3", "--json")
    assert code == 0, err
    assert json.loads(out)["drafter"] == "analytic"


@pytest.mark.parametrize("argv, close", [
    (["--adapter", "selfforcing"], "self-forcing"),
    (["--adapter", "analytc"], "analytic"),
    (["--adapter", "analytic", "--policy", "every-m"], "every-n"),
])
def test_unknown_names_list_the_closest_first(capsys, monkeypatch, argv, close):
    monkeypatch.delenv("ACCELFRAME_DISABLE_PLUGIN_AUTOLOAD")
    code, _, err = run(capsys, "generate", "--frames", "3", *argv)
    assert code == 2 and f"did you mean {close!r}?" in err
    listing = err.split(": ", 2)[-1]
    assert listing.index(close) < min(listing.index(n) for n in ("magi-1", "analytic", "fixed-batch")
                                      if n != close and n in listing)


def test_unknown_name_error_orders_by_the_shared_rule():
    from accelframe.errors import UnknownNameError
    from accelframe.validators import close_matches

    known = ["zeta", "every-n", "alpha", "every-m"]
    err = UnknownNameError("policy", "evry-n", known)
    assert err.known == sorted(known)  # the registered names, as before
    assert "did you mean 'every-n'?" in str(err)
    first = close_matches("evry-n", known, n=len(known))
    listed = str(err).rsplit(": ", 1)[1].split(", ")
    assert listed[:len(first)] == first and set(listed) == set(known)
    assert "did you mean" not in str(UnknownNameError("policy", "qqq", known))


@pytest.mark.parametrize("spec, kwargs", [
    ("scope:preset=[1,2]", {"preset": [1, 2]}),
    ("scope:a=[1, 2],b=3", {"a": [1, 2], "b": 3}),
    ('scope:a={"x": 1, "y": [2, 3]},b="p,q"', {"a": {"x": 1, "y": [2, 3]}, "b": "p,q"}),
    ("scope:a=1,b=2", {"a": 1, "b": 2}),
])
def test_parse_policy_splits_only_on_top_level_commas(spec, kwargs):
    assert cli.parse_policy(spec) == ("scope", kwargs)


def test_policy_list_value_reaches_the_policy(capsys, monkeypatch):
    monkeypatch.delenv("ACCELFRAME_DISABLE_PLUGIN_AUTOLOAD")
    code, _, err = run(capsys, "generate", "--adapter", "analytic", "--frames", "3",
                       "--policy", "scope:preset=[1,2]")
    assert code == 2 and "preset" in err and "[1, 2]" in err and "KEY=VALUE" not in err


@pytest.mark.parametrize("argv, line", [
    (["generate", "--frames", "abc"],
     "accelframe generate: error: argument --frames: invalid int value: 'abc' (see accelframe generate --help)"),
    (["generate", "--frames", "9", "--latent-frames", "3"],
     "accelframe generate: error: argument --latent-frames: not allowed with argument --frames "
     "(see accelframe generate --help)"),
    (["bench", "nope"], "accelframe bench: error: argument BENCH: invalid choice: 'nope'"),
    (["nope"], "accelframe: error: argument COMMAND: invalid choice: 'nope'"),
])
def test_usage_errors_are_one_line(capsys, monkeypatch, argv, line):
    monkeypatch.delenv("ACCELFRAME_DISABLE_PLUGIN_AUTOLOAD")
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    err = capsys.readouterr().err
    assert exc.value.code == 2
    assert err.count("\n") == 1 and err.startswith(line) and "usage:" not in err


def test_plugin_command_usage_errors_are_one_line(capsys, monkeypatch):
    monkeypatch.delenv("ACCELFRAME_DISABLE_PLUGIN_AUTOLOAD")
    with pytest.raises(SystemExit) as exc:
        cli.main(["stream", "--streams", "two"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.count("\n") == 1
    assert err.startswith("accelframe stream: error: argument --streams") and "accelframe stream --help" in err


def test_messages_name_the_command_and_the_flag(capsys, monkeypatch, tmp_path):
    monkeypatch.delenv("ACCELFRAME_DISABLE_PLUGIN_AUTOLOAD")
    (tmp_path / "clip.pt").write_text("")
    code, _, err = run(capsys, "generate", "--adapter", "analytic", "--frames", "3", "--out",
                       str(tmp_path / "clip.pt"))
    assert code == 2 and "accelframe generate" in err and "accelframe.--out" not in err
    code, _, err = run(capsys, "generate", *SMALL_WAN, "--frames", "10")
    assert code == 2 and "--frames = 10" in err and "9, 21, 33" in err
    assert "Adapter.pixel_frames" not in err


def test_generate_help_states_the_defaults(capsys):
    with pytest.raises(SystemExit):
        cli.main(["generate", "--help"])
    text = " ".join(capsys.readouterr().out.split()).split("options:", 1)[1]
    max_reuse = text.split("--max-reuse", 1)[1].split(" --", 1)[0]
    assert "default" in max_reuse and "no limit" in max_reuse
    prompt = text.split("--prompt PROMPT", 1)[1].split(" --", 1)[0]
    assert "default" in prompt and "a red circle moves left on a blue background" in prompt
