"""Presets: the world hands its trained models to the registration; no adapter imports the world."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from accelframe.errors import ConfigError, DuplicateNameError
from accelframe_adapters import presets

PACKAGE = Path(__file__).resolve().parents[1] / "accelframe_adapters"


def _imports(path: Path) -> set[str]:
    """Every module a file imports, anywhere in it (function-level imports too)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            out |= {node.module, *(f"{node.module}.{a.name}" for a in node.names)}
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "import_module" \
                and node.args and isinstance(node.args[0], ast.Constant):
            out.add(node.args[0].value)
    return out


def test_only_the_registration_imports_the_world():
    world = PACKAGE / "world"
    importers = sorted(str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py")
                       if world not in p.parents
                       and any(m.startswith("accelframe_adapters.world") for m in _imports(p)))
    assert importers == ["plugin.py"]


def test_what_adapters_load_at_run_time_never_imports_training():
    runtime = list((PACKAGE / "world").glob("*.py"))
    assert {p.name for p in runtime} >= {"models.py", "magi_model.py", "quality.py", "clips.py", "reward.py"}
    for p in runtime:
        assert not any(m.startswith("accelframe_adapters.world.training") for m in _imports(p)), p.name


def test_the_world_presets_are_registered_without_torch():
    code = ("import sys; from accelframe_adapters import presets; "
            "print(presets.names('wan'), presets.names('magi'), 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split("\n")[0] == "('world', 'world-drafter') ('world',) False"


@pytest.fixture
def registry(monkeypatch):
    monkeypatch.setattr(presets, "_factories", dict(presets._factories))
    monkeypatch.setattr(presets, "_built", dict(presets._built))


def _mine(name="mine", family="wan"):
    return presets.Preset(name=name, family=family, latent_frames=9, frame_size=(32, 32),
                          dit_config=lambda: None, load=lambda **kw: None)


def test_a_preset_is_built_once_on_first_use(registry):
    built = []

    def factory():
        built.append(1)
        return _mine()

    presets.register_preset("wan", "mine", factory)
    presets.register_preset("wan", "mine", factory)  # the same factory again: nothing happens
    assert presets.is_preset("wan", "mine") and not presets.is_preset("magi", "mine") and not built
    assert presets.preset("wan", "mine") is presets.preset("wan", "mine") and built == [1]
    assert presets.preset("wan", "nobody") is None
    assert presets.names("wan")[-1] == "mine"


def test_bad_registrations_raise_naming_what(registry):
    presets.register_preset("wan", "mine", _mine)
    with pytest.raises(DuplicateNameError, match="wan preset 'mine' is registered twice"):
        presets.register_preset("wan", "mine", lambda: _mine())
    with pytest.raises(ConfigError, match="register_preset.family = 'sdxl'"):
        presets.register_preset("sdxl", "mine", _mine)
    presets.register_preset("magi", "other", _mine)  # builds a wan preset named "mine"
    with pytest.raises(ConfigError, match="the Preset 'other' of family 'magi'"):
        presets.preset("magi", "other")
    with pytest.raises(ConfigError, match="Preset.family = 'sdxl'"):
        _mine(family="sdxl")
