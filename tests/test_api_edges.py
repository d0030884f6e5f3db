"""API and CLI edges (issue 20, items 10, 11, 12 and 19): every bad value is a typed error from
``accelframe.errors`` that names the field, the value and what is allowed, before any model runs;
unknown keywords list the valid ones, closest match first; ``accelframe plugins NAME`` prints a
name's knobs; a blocked plugin is listed as blocked."""

from __future__ import annotations

import json
import math
import wave

import attrs
import pytest
import torch

from accelframe import cli
from accelframe.errors import ConfigError, IncompatibleError
from accelframe.pipeline import Pipeline
from accelframe.plugins import create_hooks
from accelframe.testing import plugin as analytic_plugin
from accelframe.testing.fixtures import make_hooks
from accelframe.types import Request
from accelframe_policies import plugin as policies_plugin

pytestmark = pytest.mark.usefixtures("one_thread")


def pipe(drafter: bool = False, **adapter_kwargs) -> Pipeline:
    return Pipeline("analytic", adapter_kwargs=adapter_kwargs, hooks=make_hooks(policies_plugin),
                    drafter="analytic" if drafter else None)


def run_cli(capsys, *argv):
    code = cli.main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


# ---- item 10: raw errors become typed ones ------------------------------------------------------


def test_scope_preset_given_a_list_is_a_config_error():
    with pytest.raises(ConfigError) as exc:
        pipe().use("scope", preset=["skyreels-v2"])
    assert exc.value.field == "preset" and "skyreels-v2" in exc.value.allowed


def test_sdvg_scorer_kwargs_tensor_is_a_config_error():
    with pytest.raises(ConfigError) as exc:
        pipe(drafter=True).use("sdvg", scorer=lambda frames, prompts: frames.mean(),
                               scorer_kwargs=torch.zeros(3))
    assert exc.value.field == "scorer_kwargs"


@pytest.mark.parametrize("field, value", [("num_frames", 10**20), ("num_frames", 3 * 10**20),
                                          ("first_frame", 2**64), ("rope_offset", 10**19)])
def test_request_ints_beyond_int64_are_refused(field, value):
    kw = {"num_frames": 3, field: value}
    with pytest.raises(ConfigError) as exc:
        Request(prompts="a", **kw)
    assert exc.value.field == field and str(2**63 - 1) in exc.value.allowed


def test_request_frame_end_beyond_int64_is_refused():
    with pytest.raises(ConfigError) as exc:
        Request(prompts="a", num_frames=2**62, first_frame=2**62)
    assert exc.value.field == "num_frames"


def test_generate_missing_keyword_is_a_config_error():
    with pytest.raises(ConfigError) as exc:
        pipe().generate("a red circle")
    assert exc.value.field == "num_frames" and "required" in exc.value.allowed


def test_generate_without_prompts_is_a_config_error():
    with pytest.raises(ConfigError) as exc:
        pipe().generate(num_frames=3)
    assert exc.value.field == "prompts"


def test_generate_unknown_keyword_lists_the_request_fields():
    with pytest.raises(ConfigError) as exc:
        pipe().generate("a red circle", num_frames=3, framez=3)
    assert exc.value.field == "framez"
    assert "did you mean 'num_frames'" in exc.value.allowed
    for f in attrs.fields(Request):
        assert f.name in exc.value.allowed


@pytest.mark.parametrize("prompts", [5, None, [1, 2]])
def test_generate_prompts_that_are_not_strings(prompts):
    with pytest.raises(ConfigError) as exc:
        pipe().request(prompts, num_frames=3)
    assert exc.value.field == "prompts"


@pytest.mark.parametrize("value", ["no", 0, None])
def test_request_decode_must_be_a_bool(value):
    with pytest.raises(ConfigError) as exc:
        pipe().request("a", num_frames=3, decode=value)
    assert exc.value.field == "decode"


def test_request_init_latents_must_be_a_tensor():
    with pytest.raises(ConfigError) as exc:
        pipe().request("a", num_frames=3, start_sigma=0.5, init_latents="latents.pt")
    assert exc.value.field == "init_latents"


@pytest.mark.parametrize("field, value", [("adapter_kwargs", ["steps", 4]), ("drafter_kwargs", "steps=4"),
                                          ("strict", "yes"), ("trace", None), ("hooks", "default"),
                                          ("drafter_context", ["own"])])
def test_pipeline_arguments_are_checked(field, value):
    with pytest.raises(ConfigError) as exc:
        Pipeline("analytic", **{"hooks": make_hooks(), field: value})
    assert exc.value.field == field


@pytest.mark.parametrize("device", ["banana", "cuda:7", "", 3])
def test_wan_and_magi_device_is_checked_before_loading(device):
    if isinstance(device, str) and device.startswith("cuda") and torch.cuda.device_count() > 7:
        pytest.skip("this machine has a cuda:7")
    from accelframe_adapters.magi.adapter import MagiAdapter
    from accelframe_adapters.wan.self_forcing import SelfForcingAdapter

    for adapter in (SelfForcingAdapter, MagiAdapter):
        with pytest.raises(ConfigError) as exc:
            adapter(size="tiny", device=device)
        assert exc.value.field == "device" and "'cpu'" in exc.value.allowed


def test_cuda_index_past_the_devices_present(monkeypatch):
    from accelframe import validators as v

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert v.check_device("X", "device", "cuda:1") == torch.device("cuda:1")
    with pytest.raises(ConfigError) as exc:
        v.check_device("X", "device", "cuda:7")
    assert "'cuda:0', 'cuda:1'" in exc.value.allowed


@pytest.mark.parametrize("fps", [math.inf, -math.inf, math.nan, 0, "30"])
def test_mp4_sink_fps_must_be_finite_and_positive(tmp_path, fps):
    from accelframe.streaming.sinks import Mp4Sink

    with pytest.raises(ConfigError) as exc:
        Mp4Sink(tmp_path / "out.mp4", fps=fps)
    assert exc.value.field == "fps"


def test_video_source_without_a_video_stream(tmp_path):
    pytest.importorskip("av")
    from accelframe.streaming.source import VideoFrames

    path = tmp_path / "sound.wav"  # a file PyAV opens that holds audio only
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(b"\x00\x00" * 800)
    with pytest.raises(ConfigError) as exc:
        VideoFrames(str(path), (8, 8))
    assert exc.value.field == "path" and "video stream" in exc.value.allowed


@pytest.mark.parametrize("text, field", [
    ("{not json", "DESCRIPTION"),
    ("[24, 1]", "DESCRIPTION"),
    ('{"framez": 24}', "framez"),
    ('{"streams": [{"frame": 45}]}', "streams[].frame"),
])
def test_a_bad_ring_description_is_a_config_error_naming_it(text, field):
    from accelframe_adapters.parallel import trial

    with pytest.raises(ConfigError) as exc:
        trial.parse(text)
    assert exc.value.field == field


@pytest.mark.parametrize("name, drafter", [("slo-batch", False), ("rolling-kv", False), ("motion-noise", False),
                                           ("random-routing", True), ("sdvg", True)])
def test_name_is_not_a_policy_keyword(name, drafter):
    with pytest.raises(ConfigError) as exc:
        pipe(drafter=drafter).use(name, name="mine")
    assert exc.value.field == "name"


@pytest.mark.parametrize("value", ["no", 0, None])
def test_teacache_last_step_must_be_a_bool(value):
    with pytest.raises(ConfigError) as exc:
        pipe().use("teacache", last_step=value)
    assert exc.value.field == "last_step"


# ---- item 11: unknown keys list the valid ones, closest first -----------------------------------


def test_unknown_policy_keyword_lists_valid_ones_closest_first():
    from accelframe_policies.scope import Scope

    with pytest.raises(ConfigError) as exc:
        pipe().use("scope", tauc=0.1)
    allowed = exc.value.allowed
    assert exc.value.field == "tauc" and allowed.startswith("did you mean 'tau_c'?")
    listed = allowed.split(": ", 1)[1].split(", ")
    assert listed[0] == "tau_c"
    expected = {f.alias for f in attrs.fields(Scope) if f.init} | {"preset"}
    assert set(listed) == expected


def test_unknown_adapter_keyword_lists_valid_ones():
    from accelframe.testing.analytic import AnalyticConfig

    with pytest.raises(ConfigError) as exc:
        pipe(stepz=4)
    listed = exc.value.allowed.split(": ", 1)[1].split(", ")
    assert listed[0] == "steps" and set(listed) == {f.name for f in attrs.fields(AnalyticConfig)}


def test_wan_adapter_keywords_include_model_and_family_fields():
    from accelframe.pipeline import call_factory
    from accelframe_adapters.wan.self_forcing import SelfForcingAdapter

    with pytest.raises(ConfigError) as exc:  # refused before the adapter loads anything
        call_factory(SelfForcingAdapter, "adapter 'self-forcing'", {"devise": "cpu"})
    listed = exc.value.allowed.split(": ", 1)[1].split(", ")
    assert listed[0] == "device" and "size" in listed and "num_frame_per_block" in listed


def test_cli_set_and_policy_unknown_keys(capsys, monkeypatch):
    monkeypatch.delenv("ACCELFRAME_DISABLE_PLUGIN_AUTOLOAD")
    code, _, err = run_cli(capsys, "generate", "--adapter", "analytic", "--set", "nope=1")
    assert code == 2 and "valid keywords" in err and "steps" in err
    code, _, err = run_cli(capsys, "generate", "--adapter", "analytic", "--policy", "scope:tauc=0.1")
    assert code == 2 and "did you mean 'tau_c'?" in err


def test_cli_plugins_name_prints_knobs(capsys, monkeypatch):
    monkeypatch.delenv("ACCELFRAME_DISABLE_PLUGIN_AUTOLOAD")
    code, out, _ = run_cli(capsys, "plugins", "scope")
    assert code == 0
    line = next(ln for ln in out.splitlines() if ln.split()[:1] == ["tau_c"])
    assert "0.18" in line and "a number in [0.0" in line
    code, out, _ = run_cli(capsys, "plugins", "analytic", "--json")
    doc = json.loads(out)
    knobs = {k["name"]: k for k in doc["knobs"]}
    assert doc["kind"] == "adapter" and knobs["steps"]["default"] == 4
    assert knobs["plan"]["allowed"] == "one of 'block', 'staircase', 'window'"
    code, _, err = run_cli(capsys, "plugins", "scop")
    assert code == 2 and "did you mean 'scope'?" in err


# ---- item 12: a preset's error names the adapter it was made for --------------------------------


def test_scope_preset_on_the_wrong_adapter_suggests_its_adapter():
    with pytest.raises(IncompatibleError) as exc:
        pipe().use("scope", preset="skyreels-v2")  # selective: needs update masks the block plan lacks
    assert "--adapter skyreels-v2-df" in str(exc.value)


def test_unknown_scope_preset_names_the_adapters():
    with pytest.raises(ConfigError) as exc:
        pipe().use("scope", preset="skyreels")
    assert "did you mean 'skyreels-v2'?" in exc.value.allowed
    assert "skyreels-v2-df" in exc.value.allowed


# ---- item 19: a blocked plugin is listed as blocked ---------------------------------------------


def test_blocked_plugin_is_listed_as_blocked():
    hooks = create_hooks(autoload=False, disabled=("policies",), plugins=(analytic_plugin,))
    kinds = {i.name: i.kind for i in hooks.plugin_infos()}
    assert kinds["policies"] == "blocked"


def test_cli_plugins_json_lists_a_disabled_plugin_as_blocked(capsys, monkeypatch):
    monkeypatch.delenv("ACCELFRAME_DISABLE_PLUGIN_AUTOLOAD")
    monkeypatch.setenv("ACCELFRAME_DISABLE_PLUGINS", "example")
    code, out, _ = run_cli(capsys, "plugins", "--json")
    assert code == 0
    doc = json.loads(out)
    by_name = {p["name"]: p for p in doc["plugins"]}
    assert by_name["example"]["kind"] == "blocked" and by_name["example"]["hooks"] == []
    assert "every-n" not in {e["name"] for e in doc["registered"]["policy"]}


def test_typed_errors_survive_pickling():
    """A worker process (concurrent.futures, multiprocessing) sends its error back pickled: every
    typed error comes back as itself, with its fields and message."""
    import pickle

    from accelframe import errors as e

    for err in (e.ConfigError("Request", "num_frames", 0, "an int >= 1"),
                e.LimitError("Request", "num_frames", 9, "at most 4", limit="max_frames", maximum=4),
                e.UnknownNameError("policy", "scop", ["scope"]), e.CheckpointError("w.pt", "NaN", missing=["k"]),
                e.PolicyError("hook", "p", "boom"), e.DuplicateNameError("policy", "a", "x", "y")):
        back = pickle.loads(pickle.dumps(err))
        assert type(back) is type(err) and str(back) == str(err) and vars(back) == vars(err)


# ---- new-user audit: unknown disabled plugins, knobs that say what they allow ---------------------


def test_disabling_a_plugin_no_one_has_warns_once_naming_the_known_ones(monkeypatch):
    import warnings

    monkeypatch.delenv("ACCELFRAME_DISABLE_PLUGIN_AUTOLOAD", raising=False)
    monkeypatch.setenv("ACCELFRAME_DISABLE_PLUGINS", "nope-audit,example")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        create_hooks()
    said = [str(w.message) for w in caught if "nope-audit" in str(w.message)]
    assert len(said) == 1 and "example" in said[0] and "policies" in said[0]
    assert "'example'" not in said[0].split("known")[0]  # a real plugin's name is not reported as unknown
    monkeypatch.setenv("ACCELFRAME_DISABLE_PLUGIN_AUTOLOAD", "1")  # no entry points loaded: nothing to say
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        create_hooks()
    assert not [w for w in caught if "nope-audit" in str(w.message)]


def test_cli_plugins_scope_says_what_preset_and_history_allow(capsys, monkeypatch):
    monkeypatch.delenv("ACCELFRAME_DISABLE_PLUGIN_AUTOLOAD")
    code, out, _ = run_cli(capsys, "plugins", "scope", "--json")
    assert code == 0
    knobs = {k["name"]: k for k in json.loads(out)["knobs"]}
    assert "'skyreels-v2'" in knobs["preset"]["allowed"] and "'magi-1'" in knobs["preset"]["allowed"]
    assert "None" in knobs["history"]["allowed"] and "int" in knobs["history"]["allowed"]


def test_sdvg_knobs_say_what_they_allow():
    from accelframe import knobs as kn
    from accelframe_policies.sdvg import make_sdvg

    found = {k.name: k.allowed for k in kn.knobs(make_sdvg)}
    assert "'min'" in found["aggregation"] and "[0, 1]" in found["quantile"]
    assert found["tau"] and found["scorer"] and found["scorer_kwargs"]


def test_knobs_of_a_plain_factory_can_declare_allowed_text():
    from accelframe import knobs as kn

    def make(mode: str = "a", n: int = 1):
        return None

    make.accelframe_allowed = {"mode": "one of 'a', 'b'"}
    found = {k.name: k.allowed for k in kn.knobs(make)}
    assert found == {"mode": "one of 'a', 'b'", "n": ""}


@pytest.mark.parametrize("prompt", ["", "   ", None, 3])
def test_stream_source_prompt_is_a_non_empty_string_as_a_requests(prompt):
    from accelframe.streaming import StreamSource

    with pytest.raises(ConfigError) as exc:
        StreamSource(id="s", prompt=prompt, num_frames=3, fps=8)
    assert exc.value.field == "prompt"
