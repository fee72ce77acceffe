"""The import graph of the four libraries, every import counted wherever it is written.

Each ``.py`` under ``app/``, ``data/``, ``models/`` and ``graph/`` is parsed with :mod:`ast`; every
``import``/``from ... import`` is collected, at module level, inside functions, under
``if TYPE_CHECKING:`` and in ``try``/``except`` alike, so that an import moved into a function or
behind a type-checking guard cannot hide a cycle. The checks:

(a) no cycle between the project's modules (the failure names the path);
(b) no arrow up between the libraries: ``graph`` imports none of the others, ``data`` and
    ``models`` import ``graph`` only, ``app`` may import all three;
(c) no import written as a bare ``app``/``data``/``models``/``graph``: always ``trafficcast.X``;
(d) no import of the project's own modules inside a function, and any other import inside a
    function (an optional heavy dependency) carries a comment saying why, on its line or the line
    before;
(e) the serving core and everything else of ``app`` outside the REST layer (``app.service``, its
    schemas, the CLI) imports neither the REST layer nor the web stack.

The checker is tested on small synthetic sources first, so a pass on the tree means something.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "trafficcast"
LIBRARIES = ("app", "data", "models", "graph")
# The REST layer and the CLI (with its entry point) in front of the rest of app, and the web
# stack only they may import.
REST_LAYER = (
    f"{PACKAGE}.app.service",
    f"{PACKAGE}.app.schemas",
    f"{PACKAGE}.app.commands",
    f"{PACKAGE}.app.cli",
    f"{PACKAGE}.app.entry",
)
WEB_STACK = ("fastapi", "starlette", "uvicorn")
# Which library may import which (besides itself).
ALLOWED = {
    "graph": set(),
    "data": {"graph"},
    "models": {"graph"},
    "app": {"data", "models", "graph"},
}


@dataclass(frozen=True)
class Import:
    """One import statement's target as written and resolved."""

    module: str  # the importing module, e.g. trafficcast.app.serving.core
    target: str  # the absolute name imported, e.g. trafficcast.app.serving.errors
    names: tuple[str, ...]  # for ``from X import a, b``: a, b; empty for ``import X``
    line: int
    in_function: bool
    written: str  # the module as written (for relative imports: with the dots)


def module_name(library: str, relative: Path) -> str:
    """``app/serving/core.py`` (relative to the library ``app``) -> ``trafficcast.app.serving.core``."""
    parts = [PACKAGE, library, *relative.with_suffix("").parts]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _resolve(module: str, is_package: bool, level: int, name: str | None) -> str:
    """The absolute module of ``from {'.' * level}{name} import ...`` written in ``module``."""
    if level == 0:
        return name or ""
    base = module.split(".")
    # A package's own __init__ counts as level 1 from itself; a module's from its package.
    drop = level - 1 if is_package else level
    if drop:
        base = base[:-drop]
    return ".".join([*base, name] if name else base)


class _Collector(ast.NodeVisitor):
    def __init__(self, module: str, is_package: bool) -> None:
        self.module = module
        self.is_package = is_package
        self.depth = 0  # function nesting
        self.found: list[Import] = []

    def _function(self, node: ast.AST) -> None:
        self.depth += 1
        self.generic_visit(node)
        self.depth -= 1

    visit_FunctionDef = _function
    visit_AsyncFunctionDef = _function
    visit_Lambda = _function

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self.found.append(
                Import(self.module, alias.name, (), node.lineno, self.depth > 0, alias.name)
            )

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        target = _resolve(self.module, self.is_package, node.level, node.module)
        written = "." * node.level + (node.module or "")
        names = tuple(alias.name for alias in node.names)
        self.found.append(Import(self.module, target, names, node.lineno, self.depth > 0, written))


def collect(source: str, module: str, is_package: bool = False) -> list[Import]:
    """Every import statement of ``source`` (the text of ``module``), wherever it is written."""
    collector = _Collector(module, is_package)
    collector.visit(ast.parse(source))
    return collector.found


def project_edges(imports: list[Import], modules: set[str]) -> dict[str, set[str]]:
    """Module -> the project's modules it imports.

    ``from P import x`` is an arrow to ``P.x`` where that is a module, else to ``P``. Importing
    ``P.x`` runs the ``__init__`` of every package above it first, so it is an arrow to those
    packages too, except the ones the importer lies in (they are already being imported).
    """
    edges: dict[str, set[str]] = {}
    for imp in imports:
        edges.setdefault(imp.module, set())
        targets = []
        if imp.names:
            for name in imp.names:
                sub = f"{imp.target}.{name}"
                targets.append(sub if sub in modules else imp.target)
        else:
            targets.append(imp.target)
        for target in targets:
            # `import trafficcast.a.b` names the module; a name below a module is that module.
            while target and target not in modules and "." in target:
                target = target.rsplit(".", 1)[0]
            if target in modules and target != imp.module:
                edges[imp.module].add(target)
            for parent in _packages_above(target):
                inside = imp.module == parent or imp.module.startswith(parent + ".")
                if parent in modules and not inside:
                    edges[imp.module].add(parent)
    return edges


def _packages_above(module: str) -> list[str]:
    """``trafficcast.app.pipeline.fitting`` -> ``trafficcast.app.pipeline``, ``trafficcast.app``."""
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(len(parts) - 1, 1, -1)]


def find_cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """One cycle path (first node repeated at the end) per strongly connected component."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    counter = 0

    def strongconnect(root: str) -> None:
        # Tarjan's algorithm, iterative (the graph can be deeper than the recursion limit).
        nonlocal counter
        work = [(root, iter(sorted(edges.get(root, ()))))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            advanced = False
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges.get(child, ())))))
                    advanced = True
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            if advanced:
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    components.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            strongconnect(node)
    return [_cycle_in(component, edges) for component in components]


def _cycle_in(component: list[str], edges: dict[str, set[str]]) -> list[str]:
    """A shortest path from the component's first member back to itself, inside the component."""
    members = set(component)
    start = component[0]
    previous: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for child in sorted(edges.get(node, ())):
                if child not in members:
                    continue
                if child == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(previous[path[-1]])
                    return [start, *reversed(path[:-1]), start]
                if child not in previous:
                    previous[child] = node
                    following.append(child)
        frontier = following
    raise AssertionError(f"no cycle through {start}")  # a component of 2+ always has one


def library_of(module: str) -> str | None:
    """``trafficcast.data.io`` -> ``data``; None outside the four libraries."""
    parts = module.split(".")
    if len(parts) >= 2 and parts[0] == PACKAGE and parts[1] in LIBRARIES:
        return parts[1]
    return None


def upward_arrows(edges: dict[str, set[str]]) -> list[str]:
    """Each arrow from one library to another that :data:`ALLOWED` does not permit."""
    found = []
    for module, targets in sorted(edges.items()):
        source = library_of(module)
        for target in sorted(targets):
            dest = library_of(target)
            if source and dest and dest != source and dest not in ALLOWED[source]:
                found.append(f"{module} -> {target}")
    return found


def bare_imports(imports: list[Import]) -> list[str]:
    """Imports written as a bare ``app``/``data``/``models``/``graph`` (not ``trafficcast.X``)."""
    return [
        f"{imp.module}:{imp.line} imports {imp.written}"
        for imp in imports
        if not imp.written.startswith(".") and imp.written.split(".")[0] in LIBRARIES
    ]


def inner_imports(
    imports: list[Import], lines: dict[str, list[str]]
) -> tuple[list[str], list[str]]:
    """Imports inside functions: (of the project's own modules, of others without a comment)."""
    own, uncommented = [], []
    for imp in imports:
        if not imp.in_function:
            continue
        where = f"{imp.module}:{imp.line} imports {imp.written}"
        if imp.target.split(".")[0] == PACKAGE or imp.written.startswith("."):
            own.append(where)
            continue
        text = lines[imp.module]
        here = text[imp.line - 1]
        before = text[imp.line - 2] if imp.line >= 2 else ""
        if "#" not in here and not before.strip().startswith("#"):
            uncommented.append(where)
    return own, uncommented


def _within(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def core_imports_of_rest(imports: list[Import]) -> list[str]:
    """Imports of the REST layer or the web stack by a module of ``app`` outside that layer."""
    return [
        f"{imp.module}:{imp.line} imports {imp.target}"
        for imp in imports
        if library_of(imp.module) == "app"
        and not _within(imp.module, REST_LAYER)
        and (_within(imp.target, REST_LAYER) or imp.target.split(".")[0] in WEB_STACK)
    ]


@dataclass
class Tree:
    """The parsed tree: its modules, every import, and each module's lines."""

    modules: set[str]
    imports: list[Import]
    lines: dict[str, list[str]]

    @property
    def edges(self) -> dict[str, set[str]]:
        return project_edges(self.imports, self.modules)


def parse_tree(sources: dict[str, str]) -> Tree:
    """Parse ``{"app/serving/core.py": text, ...}`` (paths relative to the checkout's root)."""
    modules: dict[str, tuple[str, bool]] = {}
    for path in sources:
        relative = Path(path)
        library = relative.parts[0]
        name = module_name(library, Path(*relative.parts[1:]))
        modules[name] = (path, relative.name == "__init__.py")
    # Packages exist even where a folder lacks an __init__ (namespace packages).
    names = set(modules) | {f"{PACKAGE}.{library}" for library in LIBRARIES}
    imports: list[Import] = []
    lines: dict[str, list[str]] = {}
    for name, (path, is_package) in modules.items():
        imports.extend(collect(sources[path], name, is_package))
        lines[name] = sources[path].splitlines()
    return Tree(names, imports, lines)


def read_checkout() -> Tree:
    """The tree of this checkout's four libraries."""
    sources = {}
    for library in LIBRARIES:
        for path in sorted((ROOT / library).rglob("*.py")):
            if ".venv" in path.parts or "__pycache__" in path.parts:
                continue
            sources[path.relative_to(ROOT).as_posix()] = path.read_text(encoding="utf-8")
    assert len(sources) > 50, sorted(sources)  # the walk found the libraries
    return parse_tree(sources)


# --- the checker on small synthetic trees ---------------------------------------------------------


def test_a_cycle_through_a_function_and_type_checking_is_found():
    tree = parse_tree(
        {
            "app/a.py": "from trafficcast.app import b\n",
            "app/b.py": "def f():\n    from trafficcast.app.c import thing\n",
            "app/c.py": (
                "from typing import TYPE_CHECKING\n"
                "if TYPE_CHECKING:\n"
                "    from trafficcast.app.a import Other\n"
            ),
            "app/d.py": "from trafficcast.app import a\n",
        }
    )
    assert find_cycles(tree.edges) == [
        ["trafficcast.app.a", "trafficcast.app.b", "trafficcast.app.c", "trafficcast.app.a"]
    ]


def test_a_cycle_through_a_package_init_is_found():
    # c imports a submodule of p; p's __init__ (run first) imports q, which imports c.
    tree = parse_tree(
        {
            "app/c.py": "from trafficcast.app.p.leaf import x\n",
            "app/p/__init__.py": "from trafficcast.app.p.q import y\n",
            "app/p/leaf.py": "x = 1\n",
            "app/p/q.py": "from trafficcast.app.c import z\n",
        }
    )
    assert find_cycles(tree.edges) == [
        ["trafficcast.app.c", "trafficcast.app.p", "trafficcast.app.p.q", "trafficcast.app.c"]
    ]
    # Inside the package, a sibling's import does not count its own package's __init__.
    assert "trafficcast.app.p" not in tree.edges["trafficcast.app.p.q"]


def test_relative_imports_resolve_and_a_tree_without_cycles_passes():
    tree = parse_tree(
        {
            "app/serving/__init__.py": "from .core import Service\n",
            "app/serving/core.py": "from . import errors\nfrom ..fsutil import write\n",
            "app/serving/errors.py": "",
            "app/fsutil.py": "import os\n",
        }
    )
    assert tree.edges == {
        "trafficcast.app.serving": {"trafficcast.app.serving.core"},
        "trafficcast.app.serving.core": {
            "trafficcast.app.serving.errors",
            "trafficcast.app.fsutil",
        },
        "trafficcast.app.fsutil": set(),
    }
    assert find_cycles(tree.edges) == []
    # A relative import back into the package's __init__ closes a loop.
    tree = parse_tree(
        {
            "app/serving/__init__.py": "from .core import Service\n",
            "app/serving/core.py": "try:\n    from . import Service as S\nexcept ImportError:\n    pass\n",
        }
    )
    assert find_cycles(tree.edges) == [
        ["trafficcast.app.serving", "trafficcast.app.serving.core", "trafficcast.app.serving"]
    ]


def test_an_upward_arrow_and_a_bare_import_are_found():
    tree = parse_tree(
        {
            "graph/g.py": "import numpy\n",
            "data/io.py": "from trafficcast.graph import g\n",
            "models/m.py": "def f():\n    from trafficcast.data.io import read  # why\n",
            "app/x.py": "from trafficcast.models import m\nimport data.io\n",
        }
    )
    # data.io, and the package data whose __init__ runs first.
    assert upward_arrows(tree.edges) == [
        "trafficcast.models.m -> trafficcast.data",
        "trafficcast.models.m -> trafficcast.data.io",
    ]
    assert bare_imports(tree.imports) == ["trafficcast.app.x:2 imports data.io"]


def test_imports_inside_functions_are_counted():
    tree = parse_tree(
        {
            "app/plot.py": (
                "import os\n"
                "def draw():\n"
                "    # matplotlib only when a figure is drawn\n"
                "    import matplotlib\n"
                "    import scipy  # why: heavy\n"
                "    import yaml\n"
                "    from . import helpers\n"
                "class K:\n"
                "    async def m(self):\n"
                "        from trafficcast.app.helpers import h  # a comment does not excuse it\n"
            ),
            "app/helpers.py": "",
        }
    )
    own, uncommented = inner_imports(tree.imports, tree.lines)
    assert own == [
        "trafficcast.app.plot:7 imports .",
        "trafficcast.app.plot:10 imports trafficcast.app.helpers",
    ]
    assert uncommented == ["trafficcast.app.plot:6 imports yaml"]


def test_the_core_importing_the_rest_layer_is_found():
    tree = parse_tree(
        {
            "app/serving/swap.py": "from trafficcast.app.schemas import SwapError\n",
            "app/batching.py": "def f():\n    from starlette.responses import Response  # why\n",
            "app/schemas.py": "from pydantic import BaseModel\n",
            "app/service/routes.py": "from fastapi import APIRouter\nfrom ..schemas import X\n",
        }
    )
    assert core_imports_of_rest(tree.imports) == [
        "trafficcast.app.serving.swap:1 imports trafficcast.app.schemas",
        "trafficcast.app.batching:2 imports starlette.responses",
    ]


# --- the checkout ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def checkout() -> Tree:
    return read_checkout()


def test_no_cycle_between_modules(checkout: Tree):
    cycles = [" -> ".join(cycle) for cycle in find_cycles(checkout.edges)]
    assert cycles == [], "import cycles:\n" + "\n".join(cycles)


def test_no_upward_arrow_between_libraries(checkout: Tree):
    assert upward_arrows(checkout.edges) == []


def test_every_import_names_the_package(checkout: Tree):
    assert bare_imports(checkout.imports) == []


def test_no_project_import_inside_a_function_and_others_say_why(checkout: Tree):
    own, uncommented = inner_imports(checkout.imports, checkout.lines)
    assert own == [], f"{len(own)} imports of the project inside functions:\n" + "\n".join(own)
    assert uncommented == [], "imports inside functions without a why:\n" + "\n".join(uncommented)


def test_the_core_imports_no_rest_layer(checkout: Tree):
    assert core_imports_of_rest(checkout.imports) == []
