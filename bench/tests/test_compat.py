"""The compatibility table (accelframe bench compat): its cells, and that docs/compatibility.md is current."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from accelframe.plugins import create_hooks
from accelframe_bench import compat

DOC = Path(__file__).resolve().parents[2] / compat.DOC
CELL = re.compile(r"^(acts|exact|refused \(\d+\)|fails \(\d+\))$")


@pytest.fixture
def hooks(monkeypatch):
    """The installed plugins, as the command sees them (the example plugin's every-n included)."""
    monkeypatch.delenv("ACCELFRAME_DISABLE_PLUGIN_AUTOLOAD")
    return create_hooks()


def table(text: str) -> tuple[list[str], dict[str, list[str]]]:
    rows = [line for line in text.splitlines() if line.startswith("| ")]
    header = [c.strip().strip("`") for c in rows[0].strip("|").split("|")]
    body = {}
    for line in rows[1:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        body[cells[0].strip("`")] = cells[1:]
    return header[2:], body


def test_the_doc_has_a_cell_for_every_registered_policy_and_loop(hooks):
    loops, body = table(DOC.read_text())
    registered = hooks.registry()
    assert loops == [lp.adapter for lp in compat.LOOPS if lp.adapter in registered.names("adapter")]
    assert sorted(body) == sorted(registered.names("policy"))
    for name, cells in body.items():
        kind = registered.get("policy", name).policy_kind
        assert cells[0] == kind
        assert all(CELL.match(c) for c in cells[1:]), (name, cells)
    refs = set(re.findall(r"\((\d+)\)", " ".join(" ".join(c) for c in body.values())))
    listed = set(re.findall(r"^(\d+)\. ", DOC.read_text(), flags=re.M))
    assert refs == listed  # every reason a cell points to is written under the table


def test_a_cell_is_measured_not_assumed(hooks):
    """On the analytic loop (cheap): every-n skips calls (acts), flowcache finds nothing to skip at its
    defaults (exact), a stream of the world's pixels is refused for 8 x 8 frames, and SDVG's world
    reward fails on analytic frames (the exact path answers)."""
    loop = compat.LOOPS[0]
    assert loop.adapter == "analytic"
    cache: dict = {}
    assert compat._step_or_block(loop, "every-n", "step", hooks, cache)["cell"] == "acts"
    assert compat._step_or_block(loop, "flowcache", "step", hooks, cache)["cell"] == "exact"
    sdvg = compat._step_or_block(loop, "sdvg", "block", hooks, cache)
    assert sdvg["cell"] == "fails" and "world-reward" in sdvg["reason"]
    batch = compat._batch(loop, "fixed-batch", hooks, cache)
    assert batch["cell"] == "exact" and batch["modes"]["video"]["cell"] == "refused"


def test_check_and_out_are_not_given_together(tmp_path):
    args = argparse.Namespace(out=str(tmp_path / "c.md"), check=str(DOC), force=False, json=False)
    from accelframe.errors import ConfigError

    with pytest.raises(ConfigError, match="--check"):
        compat.run(args)


@pytest.mark.slow
def test_docs_compatibility_is_what_the_command_measures_now(hooks, capsys):
    """Runs every cell (about a minute on one thread): docs/compatibility.md must be current."""
    args = argparse.Namespace(out=None, check=str(DOC), force=False, json=False)
    assert compat.run(args, hooks) == 0, capsys.readouterr().err
