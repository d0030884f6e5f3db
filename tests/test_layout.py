"""The floor plan holds: each distribution imports only the siblings its ``pyproject.toml`` declares
(its tests: those plus its ``test`` dependency group; the siblings are on no package index, so they
are declared there rather than in the ``test`` extra that pip would try to resolve), and no module of the tree imports itself back through
others (no import circles). Imports are read from the source (anywhere in a file, function-level
ones included), not executed."""

from __future__ import annotations

import ast
import re
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# distribution folder -> (its import package, the folder that holds its tests or None)
DISTRIBUTIONS = {
    ".": ("accelframe", "tests"),
    "adapters": ("accelframe_adapters", "adapters/tests"),
    "policies": ("accelframe_policies", "policies/tests"),
    "bench": ("accelframe_bench", "bench/tests"),
    "plugins/example": ("accelframe_example", None),
    "plugins/imagereward": ("accelframe_imagereward", "plugins/imagereward/tests"),
}
PACKAGES = {pkg for pkg, _ in DISTRIBUTIONS.values()}


def _requirement_name(req: str) -> str:
    return re.split(r"[\s<>=!~\[;]", req.strip(), maxsplit=1)[0].lower().replace("-", "_")


def _declared(folder: str, group: str | None = None) -> set[str]:
    """The sibling import packages a distribution declares (dependencies, plus a dependency group)."""
    doc = tomllib.loads((ROOT / folder / "pyproject.toml").read_text())
    reqs = list(doc["project"].get("dependencies", []))
    if group is not None:
        reqs += doc.get("dependency-groups", {}).get(group, [])
    return {_requirement_name(r) for r in reqs} & PACKAGES


def _imports(path: Path) -> set[str]:
    """Top-level names of every absolute import in a file."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found


def _package_files(folder: str, pkg: str) -> list[Path]:
    return sorted((ROOT / folder / pkg).rglob("*.py"))


@pytest.mark.parametrize("folder", sorted(DISTRIBUTIONS))
def test_a_distribution_imports_only_the_siblings_it_declares(folder):
    pkg, tests = DISTRIBUTIONS[folder]
    allowed = _declared(folder) | {pkg}
    bad = {f"{p.relative_to(ROOT)}: {name}" for p in _package_files(folder, pkg)
           for name in _imports(p) & PACKAGES - allowed}
    assert not bad, f"imports of siblings {folder}/pyproject.toml does not declare: {sorted(bad)}"
    if tests is not None:
        allowed |= _declared(folder, "test")
        bad = {f"{p.relative_to(ROOT)}: {name}" for p in sorted((ROOT / tests).rglob("*.py"))
               for name in _imports(p) & PACKAGES - allowed}
        assert not bad, f"test imports of siblings not in the test group of {folder}: {sorted(bad)}"


def _modules() -> dict[str, Path]:
    mods = {}
    for folder, (pkg, _) in DISTRIBUTIONS.items():
        for path in _package_files(folder, pkg):
            rel = path.relative_to(ROOT / folder).with_suffix("").parts
            name = ".".join(rel[:-1] if rel[-1] == "__init__" else rel)
            mods[name] = path
    return mods


def _graph(mods: dict[str, Path]) -> dict[str, set[str]]:
    def owner(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {m: set() for m in mods}
    for mod, path in mods.items():
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(parts + ([base] if base else []))
                names = [base] + [f"{base}.{a.name}" for a in node.names]
            else:
                continue
            for name in names:
                target = owner(name)
                # importing one's own package (its __init__ re-exports) is how a sub-module is reached
                if target and target != mod and not mod.startswith(target + "."):
                    graph[mod].add(target)
    return graph


def _circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    out.append(sorted(component))
    return out


def test_the_circle_finder_finds_a_circle():
    assert _circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _circles({"a": {"b"}, "b": set()}) == []


def test_no_module_imports_itself_back_through_others():
    mods = _modules()
    assert "accelframe.plugins" in mods and "accelframe_adapters.wan.dit" in mods  # the walk found the tree
    assert _circles(_graph(mods)) == []
