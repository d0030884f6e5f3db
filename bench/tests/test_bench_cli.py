"""Bad input and frame options of ``accelframe bench wan``, ``accelframe calibrate`` and
``accelframe bench stream``: refused with a typed error naming the option before any work, and
``--latent-frames`` the documented frame count (``--frames`` still latent here, with a FutureWarning)."""

from __future__ import annotations

import argparse
import json
import warnings

import pytest

from accelframe import cli
from accelframe.errors import ConfigError
from accelframe.plugins import create_hooks
from accelframe_bench import plugin as bench_plugin
from accelframe_bench import wan as bench_wan
from accelframe_bench import stream as bench_stream
from accelframe_bench import calibrate


def _parse(module, argv):
    p = argparse.ArgumentParser(prog="accelframe test")
    module.configure(p)
    return p.parse_args(argv)


def _no_work(monkeypatch):
    def boom(*a, **k):
        raise AssertionError("work started before the input was checked")

    monkeypatch.setattr(bench_wan, "_family_cost", boom)
    monkeypatch.setattr(bench_wan, "kv_memory", boom)
    monkeypatch.setattr("accelframe.pipeline.Pipeline", boom)


# ---- bench overhead ----------------------------------------------------------------------------


def test_bench_overhead_json(capsys, monkeypatch):
    hooks = create_hooks(autoload=False, plugins=(bench_plugin,))  # the CLI's manager: the bench commands
    monkeypatch.setattr("accelframe.plugins.create_hooks", lambda **kw: create_hooks(**kw) if kw else hooks)
    code = cli.main(["bench", "overhead", "--units", "2", "--repeats", "2", "--json"])
    out = capsys.readouterr().out
    assert code == 0
    doc = json.loads(out)
    for key in ("overhead_us_per_call", "overhead_fraction", "direct_us_per_call",
                "overhead_us_per_call_no_policy"):
        assert isinstance(doc[key], float)
    assert doc["model_calls_per_run"] == 2 * (4 + 1)
    assert doc["overhead_fraction"] == pytest.approx(doc["overhead_us_per_call"] / 1000.0)


# ---- bench wan ---------------------------------------------------------------------------------


@pytest.mark.parametrize("device", ["banana", "cuda:99", ""])
def test_bench_wan_refuses_a_bad_device_before_any_work(monkeypatch, device):
    _no_work(monkeypatch)
    with pytest.raises(ConfigError) as info:
        bench_wan.run(_parse(bench_wan, ["--device", device]))
    assert info.value.field == "--device" and info.value.value == device and "cpu" in info.value.allowed


def test_bench_wan_counts_latent_frames_and_frames_still_does_with_a_warning(monkeypatch):
    seen = []
    monkeypatch.setattr(bench_wan, "_family_cost", lambda name, common, frames, repeats, **k: seen.append(frames) or {})
    monkeypatch.setattr(bench_wan, "kv_memory", lambda common, frames, *a, **k: seen.append(frames) or {})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        args = _parse(bench_wan, ["--latent-frames", "6", "--json"])
    assert bench_wan.run(args) == 0 and set(seen) == {6}
    with pytest.warns(FutureWarning, match="--frames counts latent frames.*--latent-frames"):
        old = _parse(bench_wan, ["--frames", "6"])
    assert old.latent_frames == args.latent_frames == 6
    assert _parse(bench_wan, []).latent_frames == 9
    with pytest.raises(SystemExit), pytest.warns(FutureWarning):
        _parse(bench_wan, ["--frames", "6", "--latent-frames", "6"])
    p = argparse.ArgumentParser()
    bench_wan.configure(p)
    assert "--latent-frames N" in p.format_help() and "latent frames per generation" in p.format_help()


def test_bench_wan_json_keeps_its_frames_key(monkeypatch, capsys):
    import json

    monkeypatch.setattr(bench_wan, "_family_cost", lambda *a, **k: {"ms_per_model_call": 1.0})
    monkeypatch.setattr(bench_wan, "kv_memory", lambda *a, **k: {})
    assert bench_wan.run(_parse(bench_wan, ["--latent-frames", "6", "--json"])) == 0
    assert json.loads(capsys.readouterr().out)["config"]["frames"] == 6


@pytest.mark.parametrize("argv,field", [(["--latent-frames", "0"], "--latent-frames"),
                                        (["--latent-frames", "4"], "--latent-frames")])
def test_bench_wan_refuses_bad_latent_frames(monkeypatch, argv, field):
    _no_work(monkeypatch)
    with pytest.raises(ConfigError) as info:
        bench_wan.run(_parse(bench_wan, argv))
    assert info.value.field == field


# ---- calibrate ---------------------------------------------------------------------------------


@pytest.mark.parametrize("flag", ["--latent-frames", "--frames"])
@pytest.mark.parametrize("n", ["0", "-3"])
def test_calibrate_refuses_zero_and_negative_frames_naming_the_option(monkeypatch, recwarn, flag, n):
    _no_work(monkeypatch)
    with pytest.raises(ConfigError) as info:
        calibrate.run(_parse(calibrate, ["--adapter", "analytic", flag, n]))
    assert info.value.field == flag and info.value.value == int(n)


def test_calibrate_counts_latent_frames_and_frames_still_does_with_a_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        new = _parse(calibrate, ["--adapter", "analytic", "--latent-frames", "6"])
    with pytest.warns(FutureWarning, match="--frames counts latent frames.*--latent-frames"):
        old = _parse(calibrate, ["--adapter", "analytic", "--frames", "6"])
    assert new.latent_frames == old.latent_frames == 6
    assert _parse(calibrate, ["--adapter", "analytic"]).latent_frames is None


def test_calibrate_degree_too_high_names_degree():
    with pytest.raises(ConfigError) as info:
        calibrate.fit([(0.1 * i, 0.2 * i) for i in range(36)], 100)
    assert info.value.field == "--degree" and info.value.value == 100 and "35" in info.value.allowed


def test_calibrate_runs_with_latent_frames_and_a_too_high_degree_names_degree(monkeypatch, capsys):
    import json

    from accelframe.cli import main

    monkeypatch.delenv("ACCELFRAME_DISABLE_PLUGIN_AUTOLOAD")
    argv = ["calibrate", "--adapter", "analytic", "--latent-frames", "6", "--prompt", "a", "--prompt", "b"]
    assert main([*argv, "--degree", "1"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["degree"] == 1 and len(doc["coefficients"]) == 2 and doc["pairs"] >= 2
    assert main([*argv, "--degree", "100"]) == 2
    err = capsys.readouterr().err
    assert "calibrate.--degree = 100 is not allowed" in err and f"at most {doc['pairs'] - 1}" in err


# ---- bench stream ------------------------------------------------------------------------------


def test_bench_stream_help_states_the_ranks_default():
    p = argparse.ArgumentParser()
    bench_stream.configure(p)
    text = " ".join(p.format_help().split())
    assert "--ranks {1,2}" in text and "(default: 2)" in text.split("--ranks {1,2}")[-1].split("--soak")[0]


def test_bench_wan_compile_runs_both_interleaved_and_reports_the_difference(monkeypatch, capsys):
    """``--compile``: one family's eager and compiled runs (traced with the eager backend here, so
    the frames must agree bit for bit), the compile time, its graphs and the speedups."""
    import json

    from accelframe_adapters import compiling

    monkeypatch.setattr(compiling, "BACKEND", "eager")
    monkeypatch.setattr(bench_wan, "FAMILIES", ("self-forcing",))
    monkeypatch.setattr(bench_wan, "_family_cost", lambda *a, **k: {"ms_per_model_call": 1.0})
    monkeypatch.setattr(bench_wan, "kv_memory", lambda *a, **k: {})
    assert bench_wan.run(_parse(bench_wan, ["--latent-frames", "3", "--repeats", "1", "--compile", "--json"])) == 0
    r = json.loads(capsys.readouterr().out)["compile"]["self-forcing"]
    assert r["max_abs_diff"] == 0.0 and r["max_abs_diff_latents"] == 0.0
    assert r["graphs"] > 0 and r["compile_s"] > 0 and r["first_run_s"]["compiled"] > 0
    assert r["eager"]["model_calls"] == r["compiled"]["model_calls"] > 0
    assert r["speedup"] == pytest.approx(r["eager"]["wall_s"] / r["compiled"]["wall_s"])
