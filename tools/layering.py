"""Check the package's layering: no import cycles, and each library only where it belongs.

usage: python tools/layering.py retrieval   (from the repository root; exit 1 on any finding)

Two checks, one line per finding, then a summary line:

* Import cycles between the package's modules (strongly connected components of the
  module graph, found with Tarjan's algorithm). Imports inside an ``if TYPE_CHECKING:``
  block are left out of this check: they never run, so they cannot make a cycle at run
  time (that is what the block is for). Imports inside functions do count, since they run.
  As in ``../shared/tools/layering.py``, a module importing one of its own parent packages
  is not an edge: the parent is always imported first anyway.
* Which modules may import which third-party library (``LIBRARY_HOMES`` below). Here
  ``TYPE_CHECKING`` imports count too: a type import still ties a module to a library.

Standard library only (``ast``); nothing is imported from the package being checked.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

# Library (its top-level import name) -> the subpackages of the checked package that may
# import it. A library not named here may be imported anywhere.
LIBRARY_HOMES: dict[str, tuple[str, ...]] = {
    "click": ("cli",),
    "faiss": ("index",),
    "sqlalchemy": ("store", "migrations"),
    "alembic": ("store", "migrations"),
    "fastapi": ("http",),
    "starlette": ("http",),
    "uvicorn": ("http",),
    # The adapters' frameworks declare their schemas in pydantic too (MCP tools, LlamaIndex stores).
    "pydantic": ("http", "integrations"),
    "ray": ("executors",),
    # Optional extras: each framework only in its adapter (retrieval/integrations/).
    "mcp": ("integrations",),
    "langchain_core": ("integrations",),
    "llama_index": ("integrations",),
}


@dataclass(frozen=True)
class Import:
    target: str  # an absolute dotted name: a module, or a name inside one
    typing_only: bool  # inside `if TYPE_CHECKING:`


def find_modules(root: Path) -> dict[str, Path]:
    """Every module under the package folder ``root``, by dotted name."""
    modules = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports(module: str, path: Path) -> Iterator[Import]:
    """The names ``module`` imports, relative imports made absolute."""
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]

    def walk(node: ast.AST, typing_only: bool) -> Iterator[Import]:
        if isinstance(node, ast.If) and is_type_checking(node.test):
            for statement in node.body:
                yield from walk(statement, True)
            for statement in node.orelse:  # the else branch is what runs
                yield from walk(statement, typing_only)
            return
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(alias.name, typing_only)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                here = package[: len(package) - (node.level - 1)]
                base = ".".join(here + ([base] if base else []))
            # `from a import b` may import the module a.b, or only the name b from a
            yield Import(base, typing_only)
            for alias in node.names:
                yield Import(f"{base}.{alias.name}", typing_only)
        for child in ast.iter_child_nodes(node):
            yield from walk(child, typing_only)

    yield from walk(ast.parse(path.read_text(encoding="utf-8"), str(path)), False)


def owning_module(name: str, modules: dict[str, Path]) -> str | None:
    """The longest prefix of ``name`` that is one of ``modules``."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
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
                found.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10 * len(graph) + 1000))
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(found)


def plural(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def main(argv: list[str]) -> int:
    if len(argv) != 1 or not Path(argv[0]).is_dir():
        print("usage: python tools/layering.py PACKAGE_DIR", file=sys.stderr)
        return 2
    root = Path(argv[0]).resolve()
    package = root.name
    modules = find_modules(root)
    graph: dict[str, set[str]] = {m: set() for m in modules}
    misplaced: set[tuple[str, str]] = set()
    for module, path in modules.items():
        for imp in imports(module, path):
            top = imp.target.split(".")[0]
            homes = LIBRARY_HOMES.get(top)
            if homes and not any(module == f"{package}.{h}" or module.startswith(f"{package}.{h}.") for h in homes):
                misplaced.add((module, top))
            if top == package and not imp.typing_only:
                target = owning_module(imp.target, modules)
                if target and target != module and not module.startswith(target + "."):
                    graph[module].add(target)

    found_cycles = cycles(graph)
    for component in found_cycles:
        print("cycle:", " <-> ".join(component))
    for module, library in sorted(misplaced):
        where = ", ".join(f"{package}/{home}/" for home in LIBRARY_HOMES[library])
        print(f"{module} imports {library} (allowed only in {where})")
    print(f"{plural(len(modules), 'module')}, {plural(len(found_cycles), 'import cycle')}, "
          f"{plural(len(misplaced), 'forbidden library import')}")
    return 1 if found_cycles or misplaced else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
