"""The import graph of jaxdistill and benchmarks: every module imports, and no cycle.

Edges are every import statement of a first-party module, those inside functions included
(a lazy import that closes a cycle is still a cycle in the design). A package's own
``__init__`` importing its submodules is the one direction allowed: submodules must not
import their package back (they import the sibling module they need).
"""

import ast
import importlib
import importlib.util
import pathlib

import pytest

from tests.helpers import ROOT

PACKAGES = ('jaxdistill', 'benchmarks')
OPTIONAL = {'benchmarks.torch_peer': 'torch'}  # modules of an optional peer
KNOWN: list[list[str]] = []  # cycles allowed for now (none)


def modules() -> dict[str, pathlib.Path]:
    out = {}
    for package in PACKAGES:
        for path in sorted(pathlib.Path(ROOT, package).rglob('*.py')):
            parts = path.relative_to(ROOT).with_suffix('').parts
            name = '.'.join(parts[:-1] if parts[-1] == '__init__' else parts)
            out[name] = path
    return out


def imports(name: str, path: pathlib.Path, known: set[str]) -> set[str]:
    """The first-party modules ``name``'s import statements name."""
    package = name if path.name == '__init__.py' else name.rpartition('.')[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ''
            if node.level:
                base = '.'.join(package.split('.')[:len(package.split('.')) - node.level + 1]
                                + ([base] if base else []))
            targets = [f'{base}.{a.name}' if f'{base}.{a.name}' in known else base
                       for a in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:  # `import a.b.c` names a.b.c's module
                target = target.rpartition('.')[0]
            if target and target != name:
                out.add(target)
    return out


def graph() -> dict[str, set[str]]:
    found = modules()
    known = set(found)
    return {name: imports(name, path, known) for name, path in found.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected component with more than one module (Tarjan)."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycle():
    """A package's __init__ may import its submodules; the reverse edge makes a cycle."""
    found = cycles(graph())
    assert [c for c in found if c not in KNOWN] == [], 'modules that import each other'
    assert [c for c in KNOWN if c not in found] == [], 'fixed: remove it from KNOWN'


def test_the_check_finds_a_cycle():
    assert cycles({'a': {'b'}, 'b': {'c'}, 'c': {'a'}, 'd': {'a'}}) == [['a', 'b', 'c']]
    assert cycles({'a': {'b'}, 'b': set()}) == []


@pytest.mark.parametrize('name', sorted(modules()))
def test_every_module_imports(name):
    needs = OPTIONAL.get(name)
    if needs and importlib.util.find_spec(needs) is None:
        pytest.skip(f'{name} needs {needs}')
    importlib.import_module(name)
