"""The README's Python example runs as written, and CI reads its test command."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_readme_python_example_runs(monkeypatch, capsys):
    monkeypatch.delenv("ACCELFRAME_DISABLE_PLUGIN_AUTOLOAD")
    blocks = re.findall(r"```python\n(.*?)```", README, flags=re.S)
    assert blocks, "the README has a Python example"
    for block in blocks:
        exec(compile(block, "README.md", "exec"), {})
    out = capsys.readouterr().out
    assert "'by': 'every-n'" in out and "'mode': 'cache'" in out


def test_ci_runs_the_readme_test_command():
    script = ROOT / ".ci" / "run"
    text = script.read_text()
    assert "<!-- test-command -->" in text
    # the extraction CI performs finds the README's command, with the constraints file
    awk = re.search(r"cmd=\$\(awk '(.*?)' README.md\)", text).group(1)
    cmd = subprocess.run(["awk", awk, "README.md"], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout.strip()
    assert cmd.endswith("python -m pytest -q")
    assert "-c constraints.txt" in cmd
    assert cmd in README
