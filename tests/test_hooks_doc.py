"""docs/hooks.md documents every hook of accelframe/hookspecs.py with its exact signature.

The expected heading of a hook is its signature as written in ``hookspecs.py``: ``inspect``
gives the annotations as strings (the module uses ``from __future__ import annotations``), and
they are rendered without quotes, e.g. ``accelframe_step_decide(ctx: StepContext) -> StepDecision | None``.
"""

from __future__ import annotations

import ast
import inspect
import re
from pathlib import Path

import pytest

from accelframe import hookspecs

DOC = Path(__file__).resolve().parents[1] / "docs" / "hooks.md"
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*$")
HOOK_HEADING = re.compile(r"^`(accelframe_\w+)\((.*)`$")


def _annotation(value: object) -> str:
    if isinstance(value, str):
        return value
    return inspect.formatannotation(value)


def expected_signature(fn: object) -> str:
    """``name(param: Annotation, ...) -> Return``, annotations as written in the source."""
    sig = inspect.signature(fn)
    params = []
    for p in sig.parameters.values():
        text = p.name
        if p.kind is p.VAR_POSITIONAL:
            text = "*" + text
        elif p.kind is p.VAR_KEYWORD:
            text = "**" + text
        if p.annotation is not p.empty:
            text += f": {_annotation(p.annotation)}"
        if p.default is not p.empty:
            text += f" = {p.default!r}" if p.annotation is not p.empty else f"={p.default!r}"
        params.append(text)
    out = f"{fn.__name__}({', '.join(params)})"
    if sig.return_annotation is not sig.empty:
        out += f" -> {_annotation(sig.return_annotation)}"
    return out


def hookspec_functions() -> dict[str, object]:
    return {name: fn for name, fn in vars(hookspecs).items()
            if name.startswith("accelframe_") and callable(fn)}


def source_banners() -> dict[str, str]:
    """hook name -> the banner comment of its phase in hookspecs.py (text before any colon)."""
    lines = inspect.getsource(hookspecs).splitlines()
    banner, out = "", {}
    for k, line in enumerate(lines):
        stripped = line.strip()
        if (stripped.startswith("# ") and not set(stripped[2:]) <= {"-"} and k > 0
                and set(lines[k - 1].strip()) == {"#", "-"}):
            banner = stripped[2:].split(":")[0].strip().lower()
        m = re.match(r"def (accelframe_\w+)\(", stripped)
        if m:
            out[m.group(1)] = banner
    return out


class Section:
    def __init__(self, heading: str, level: int, group: str) -> None:
        self.heading, self.level, self.group = heading, level, group
        self.lines: list[str] = []

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


def parse_doc(text: str) -> list[Section]:
    """Headings outside fenced code blocks, each with the text up to the next heading."""
    sections: list[Section] = []
    group, fenced = "", False
    current: Section | None = None
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
        m = None if fenced else HEADING.match(line)
        if m:
            level, title = len(m.group(1)), m.group(2)
            if level <= 2:
                group = title
            current = Section(title, level, group)
            sections.append(current)
        elif current is not None:
            current.lines.append(line)
    return sections


def documented_hooks(text: str) -> dict[str, Section]:
    """The level-3 headings that hold a hook signature in a code span, by hook name."""
    out: dict[str, Section] = {}
    for s in parse_doc(text):
        m = HOOK_HEADING.match(s.heading)
        if not m:
            continue
        assert s.level == 3, f"hook heading {s.heading!r} must be level 3 (###)"
        name = m.group(1)
        assert name not in out, f"{name} is documented twice in {DOC.name}"
        out[name] = s
    return out


@pytest.fixture(scope="module")
def doc_text() -> str:
    return DOC.read_text(encoding="utf-8")


def test_signature_rendering():
    assert expected_signature(hookspecs.accelframe_step_decide) == (
        "accelframe_step_decide(ctx: StepContext) -> StepDecision | None")


def test_every_hook_is_documented_with_its_exact_signature(doc_text):
    documented = documented_hooks(doc_text)
    problems = []
    for name, fn in hookspec_functions().items():
        want = f"`{expected_signature(fn)}`"
        if name not in documented:
            problems.append(f"{name} is missing; add a heading: ### {want}")
        elif documented[name].heading != want:
            problems.append(f"{name} is documented as {documented[name].heading}, "
                            f"hookspecs.py says {want}")
    assert not problems, "\n".join(problems)


def test_no_documented_hook_is_unknown(doc_text):
    unknown = sorted(set(documented_hooks(doc_text)) - set(hookspec_functions()))
    assert not unknown, f"{DOC.name} documents hooks that hookspecs.py does not define: {unknown}"


def test_hooks_are_grouped_by_phase_in_module_order(doc_text):
    documented = documented_hooks(doc_text)
    banners = source_banners()
    assert set(banners) == set(hookspec_functions())
    order = sorted(hookspec_functions(), key=lambda n: inspect.getsourcelines(
        hookspec_functions()[n])[1])
    assert [n for n in documented if n in banners] == order, "hooks are out of module order"
    for name in order:
        group = documented[name].group.lower()
        assert group.startswith(banners[name]), (
            f"{name} is under '## {documented[name].group}', but hookspecs.py puts it under the "
            f"banner '{banners[name]}'")


def test_every_documented_hook_has_a_valid_example(doc_text):
    for name, section in documented_hooks(doc_text).items():
        blocks = re.findall(r"```python\n(.*?)```", section.text, flags=re.S)
        assert blocks, f"{name} has no example implementation"
        for block in blocks:
            ast.parse(block)  # raises SyntaxError naming the line


@pytest.mark.parametrize("name", sorted(hookspec_functions()))
def test_hookspec_docstring_says_whether_it_is_firstresult(name):
    fn = hookspec_functions()[name]
    first = fn.accelframe_spec["firstresult"]
    doc = inspect.getdoc(fn) or ""
    if first:
        assert "firstresult" in doc, f"{name} is firstresult but its docstring does not say so"
    else:
        assert "firstresult" not in doc, f"{name} is not firstresult but its docstring says so"


def test_docs_mention_firstresult_under_exactly_the_firstresult_hooks(doc_text):
    documented = documented_hooks(doc_text)
    problems = []
    for name, fn in hookspec_functions().items():
        if name not in documented:
            continue  # reported by the signature test
        says = "firstresult" in documented[name].text
        first = fn.accelframe_spec["firstresult"]
        if first and not says:
            problems.append(f"{name} is firstresult; its section does not say so")
        if says and not first:
            problems.append(f"{name} is not firstresult; its section says 'firstresult'")
    assert not problems, "\n".join(problems)
