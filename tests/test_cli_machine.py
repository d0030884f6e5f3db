"""The command line on the machine: torch threads (``--threads``), start-up without torch, and
warnings printed as one ``accelframe: warning:`` line that never lands inside a status line."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings

import pytest
import torch

from accelframe import cli, hookimpl, progress
from accelframe.plugins import create_hooks
from accelframe.testing import plugin as analytic_plugin

HEAVY = ("torch", "numpy", "av")


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ACCELFRAME_DISABLE")}
    env.update(OMP_NUM_THREADS="1", **extra)
    return env


class Probe:
    """A plugin command ``accelframe probe`` that records the torch threads it ran with, and can
    warn, optionally while a status line is open."""

    def __init__(self) -> None:
        self.threads: list[int] = []

    @hookimpl
    def accelframe_register_commands(self, register):
        def configure(p):
            p.add_argument("--warn", default=None)
            p.add_argument("--status", action="store_true")

        def run(args):
            self.threads.append(torch.get_num_threads())
            if args.status:
                progress.status("  12 frames out | 3.0 fps")
            if args.warn:
                warnings.warn(args.warn + "\nsecond line", UserWarning, stacklevel=1)
            if args.status:
                progress.status("  24 frames out | 3.0 fps")
                progress.end_status()
            return 0

        register("probe", configure, run, help="test probe")


@pytest.fixture
def probe(monkeypatch):
    plugin = Probe()
    hooks = create_hooks(autoload=False, plugins=(analytic_plugin, plugin))
    monkeypatch.setattr("accelframe.plugins.create_hooks", lambda: hooks)
    return plugin


# ---- threads (item 13) ----------------------------------------------------------------------


def test_every_test_module_runs_on_one_thread():
    """conftest pins one torch thread (and OMP_NUM_THREADS=1 for subprocesses) without opting in."""
    assert torch.get_num_threads() == 1
    assert os.environ["OMP_NUM_THREADS"] == "1"


def test_threads_flag_applies_to_plugin_commands_and_is_restored(probe, capsys):
    before = torch.get_num_threads()
    assert cli.main(["--threads", "2", "probe"]) == 0
    assert cli.main(["probe", "--threads", "3"]) == 0  # after the command too
    assert probe.threads == [2, 3]
    assert torch.get_num_threads() == before


def test_default_threads_are_the_usable_cores_capped_by_omp(probe, monkeypatch, capsys):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2}, raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert cli.default_threads() == 3
    assert cli.main(["probe"]) == 0
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert cli.default_threads() == 2
    assert cli.main(["probe"]) == 0
    monkeypatch.setenv("OMP_NUM_THREADS", "8")
    assert cli.default_threads() == 3
    assert probe.threads == [3, 2]


@pytest.mark.parametrize("value", ["0", "-1"])
def test_bad_threads_is_a_typed_error(probe, capsys, value):
    assert cli.main(["--threads", value, "probe"]) == 2
    err = capsys.readouterr().err
    assert "--threads" in err and "an int >= 1" in err
    assert probe.threads == []


def test_help_documents_threads(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    out = capsys.readouterr().out
    assert "--threads" in out and "OMP_NUM_THREADS" in out


# ---- start-up without torch (item 14) -------------------------------------------------------


def test_building_the_parser_imports_no_heavy_module():
    """With every installed plugin autoloaded, listing commands imports neither torch nor numpy."""
    code = ("import sys\n"
            "from accelframe import cli\n"
            "from accelframe.plugins import create_hooks\n"
            "hooks = create_hooks()\n"
            "cli.build_parser(hooks)\n"
            "hooks.registry()\n"
            f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))\n")
    done = subprocess.run([sys.executable, "-c", code], env=_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "[]"


@pytest.mark.parametrize("argv", [["--help"], ["plugins"], ["plugins", "--json"]])
def test_help_and_plugins_do_not_import_torch(argv):
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "accelframe", *argv], env=_env(),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    imported = {line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines() if line.startswith("import time")}
    assert "accelframe.cli" in imported  # the import log is there
    assert not imported & set(HEAVY), sorted(imported & set(HEAVY))
    if argv[0] == "plugins":
        assert "every-n" in done.stdout and "self-forcing" in done.stdout


def test_lazy_public_names_and_submodules_still_resolve():
    """``import accelframe`` loads no torch, yet its names, its submodules as attributes (as when the
    package imported them eagerly) and ``from accelframe import *`` all still work."""
    code = ("import sys, accelframe\n"
            "assert 'torch' not in sys.modules\n"
            "assert accelframe.errors.ConfigError and accelframe.types.Request and accelframe.adapter.Limits\n"
            "assert 'errors' in dir(accelframe) and 'Pipeline' in dir(accelframe)\n"
            "ns = {}\n"
            "exec('from accelframe import *', ns)\n"
            "assert ns['Pipeline'] is accelframe.pipeline.Pipeline\n"
            "try:\n"
            "    accelframe.no_such_name\n"
            "except AttributeError:\n"
            "    print('ok')\n")
    done = subprocess.run([sys.executable, "-c", code], env=_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "ok"


def test_a_lazy_factory_keeps_its_signature_for_keyword_checks():
    import inspect

    from accelframe.errors import ConfigError
    from accelframe.pipeline import call_factory
    from accelframe.registry import lazy
    from accelframe.testing.analytic import AnalyticConfig

    factory = lazy("accelframe.testing.analytic:AnalyticConfig")
    assert "steps" in inspect.signature(factory).parameters
    assert factory.resolve() is AnalyticConfig
    with pytest.raises(ConfigError, match="steps"):
        call_factory(factory, "config", {"stpes": 2})
    assert call_factory(factory, "config", {"steps": 2}).steps == 2


# ---- warnings (item 15) ---------------------------------------------------------------------


def screen(text: str) -> list[str]:
    """The lines a terminal shows for ``text`` (carriage returns and erase-line applied)."""
    lines, cur, col = [], [], 0
    i = 0
    while i < len(text):
        ch = text[i]
        if text.startswith("\x1b[K", i):
            del cur[col:]
            i += 3
            continue
        if ch == "\r":
            col = 0
        elif ch == "\n":
            lines.append("".join(cur).rstrip())
            cur, col = [], 0
        else:
            if col < len(cur):
                cur[col] = ch
            else:
                cur.append(ch)
            col += 1
        i += 1
    if cur:
        lines.append("".join(cur).rstrip())
    return lines


def test_a_warning_is_one_accelframe_line(probe, capsys):
    assert cli.main(["probe", "--warn", "the drafter lags"]) == 0
    err = capsys.readouterr().err
    assert err == "accelframe: warning: the drafter lags second line\n"


def test_a_warning_never_lands_inside_the_status_line(probe, capsys):
    assert cli.main(["probe", "--status", "--warn", "slow source"]) == 0
    lines = screen(capsys.readouterr().err)
    assert lines == ["accelframe: warning: slow source second line", "  24 frames out | 3.0 fps"]


def test_status_line_helpers_are_safe_off_a_status_line(capsys):
    progress.end_status()
    progress.write_above("plain message")
    assert capsys.readouterr().err == "plain message\n"


class Repeater:
    """A plugin command ``accelframe repeat`` that warns the same text from three places, and
    another text once (as a stream warns per chunk)."""

    @hookimpl
    def accelframe_register_commands(self, register):
        def run(args):
            warnings.warn("the word encoder does not know 'banana'", UserWarning, stacklevel=1)
            warnings.warn("the word encoder does not know 'banana'", UserWarning, stacklevel=1)
            for _ in range(2):
                warnings.warn("the word encoder does not know 'banana'", UserWarning, stacklevel=1)
            warnings.warn("another warning", UserWarning, stacklevel=1)
            return 0

        register("repeat", lambda p: None, run, help="test repeater")


def test_each_distinct_warning_is_printed_once_per_command_run(monkeypatch, capsys):
    hooks = create_hooks(autoload=False, plugins=(analytic_plugin, Repeater()))
    monkeypatch.setattr("accelframe.plugins.create_hooks", lambda: hooks)
    with warnings.catch_warnings():
        warnings.simplefilter("always")  # what the stream's threads and per-chunk calls amount to
        for _ in range(2):  # and a second run prints them again
            assert cli.main(["repeat"]) == 0
            err = capsys.readouterr().err
            assert err.splitlines() == ["accelframe: warning: the word encoder does not know 'banana'",
                                        "accelframe: warning: another warning"]


def test_a_progress_bar_off_a_terminal_writes_plain_lines(capsys, monkeypatch):
    monkeypatch.setattr(progress, "LOG_INTERVAL_S", 0.0)  # a line at every update
    with progress.progress_bar(total=3, desc="train", unit="step") as bar:
        for _ in range(3):
            bar.update(1)
    err = capsys.readouterr().err
    assert "\r" not in err
    lines = err.splitlines()
    assert lines[0].startswith("train:   0%") and lines[-1].startswith("train: 100%")
    assert {line.split("|")[2].split("/")[0].strip() for line in lines} == {"0", "1", "2", "3"}


def test_a_quiet_progress_bar_writes_nothing(capsys):
    with progress.progress_bar(total=3, desc="train", unit="step", quiet=True) as bar:
        bar.update(3)
    assert capsys.readouterr().err == ""
