"""The package's layers: imports point one way, no cycles, no TensorFlow below the servables.

Every `import` in `serving/` is read with `ast` (module level, inside
functions, under TYPE_CHECKING alike: a lazy import is still a dependency).
README.md's Architecture section explains the order.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from tests.harness import REPO

PACKAGE = REPO / "serving"

# Lowest first. A module belongs to the layer of its longest listed prefix; a
# module may import its own layer and any layer below it, never one above.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    (
        "foundation",
        (
            "serving",
            "serving.errors",
            "serving.protos",
            "serving.protogen",
            "serving.config",
            "serving.flags",
        ),
    ),
    ("storage", ("serving.storage",)),
    ("sources", ("serving.sources",)),
    ("manager", ("serving.manager",)),
    ("core", ("serving.core", "serving.repository")),
    ("servables", ("serving.servables", "serving.devices")),
    ("runners", ("serving.inference.runner", "serving.batching")),
    ("inference", ("serving.inference",)),
    ("observability", ("serving.observability",)),
    ("api", ("serving.api",)),
    (
        "server",
        (
            "serving.server",
            "serving.cli",
            "serving.__main__",
            "serving.examples",
            "serving.inspect",
        ),
    ),
]

# Imports that still point upward, each with the reason it has not moved yet.
KNOWN_UPWARD: set[tuple[str, str]] = set()

NO_TENSORFLOW = ("serving.sources", "serving.manager")


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(REPO).with_suffix("")
        if "_generated" in rel.parts:
            continue
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _imports(name: str, path: Path, modules: dict[str, Path]) -> dict[str, int]:
    """Modules of `serving` (and others, by top-level name) imported by `name` → first line."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: dict[str, int] = {}

    def add(target: str, line: int) -> None:
        out.setdefault(target, line)

    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name, node.lineno)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            for alias in node.names:
                # `from pkg import sub` depends on pkg.sub when that is a module.
                sub = f"{source}.{alias.name}"
                add(sub if sub in modules else source, node.lineno)
    return out


def _graph() -> dict[str, dict[str, int]]:
    modules = _modules()
    graph = {}
    for name, path in modules.items():
        edges = {}
        for target, line in _imports(name, path, modules).items():
            # Resolve `serving.x.y.attr` to the module that defines it.
            while target.startswith("serving") and target not in modules:
                target = target.rpartition(".")[0]
            if target != name:
                edges[target] = line
        graph[name] = edges
    return graph


def _layer(module: str) -> int | None:
    best: tuple[int, int] | None = None  # (prefix length, layer)
    for rank, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            matches = module == prefix or (prefix != "serving" and module.startswith(prefix + "."))
            if matches and (best is None or len(prefix) > best[0]):
                best = (len(prefix), rank)
    return None if best is None else best[1]


def test_every_module_has_a_layer() -> None:
    missing = sorted(m for m in _modules() if _layer(m) is None)
    assert not missing, f"add these modules to LAYERS in {__file__}: {missing}"


def test_imports_point_down() -> None:
    graph = _graph()
    wrong = []
    for module, edges in sorted(graph.items()):
        mine = _layer(module)
        for target, line in sorted(edges.items()):
            theirs = _layer(target) if target.startswith("serving") else None
            if mine is None or theirs is None or theirs <= mine:
                continue
            if (module, target) in KNOWN_UPWARD:
                continue
            wrong.append(
                f"{module}:{line} ({LAYERS[mine][0]}) imports {target} ({LAYERS[theirs][0]})"
            )
    assert not wrong, "imports against the layer order:\n" + "\n".join(wrong)


def test_no_import_cycles() -> None:
    full = _graph()
    graph = {m: sorted(t for t in edges if t in full) for m, edges in full.items()}
    cycles = _cycles(graph)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def _cycles(graph: dict[str, list[str]]) -> list[list[str]]:
    """One cycle per strongly connected component with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return [_path_through(graph, set(c)) for c in components]


def _path_through(graph: dict[str, list[str]], component: set[str]) -> list[str]:
    """A concrete cycle inside `component`, for a readable failure."""
    start = min(component)
    path, seen = [start], {start}
    while True:
        nxt = next(t for t in graph[path[-1]] if t in component)
        if nxt in seen:
            return [*path[path.index(nxt) :], nxt]
        path.append(nxt)
        seen.add(nxt)


def test_manager_and_sources_import_no_tensorflow() -> None:
    graph = _graph()
    # Statically: nothing under them names TensorFlow, directly or through serving.
    for root in NO_TENSORFLOW:
        todo = [m for m in graph if m == root or m.startswith(root + ".")]
        seen = set(todo)
        while todo:
            module = todo.pop()
            for target in graph[module]:
                top = target.split(".")[0]
                assert top != "tensorflow", f"{module} reaches TensorFlow through {target}"
                if target in graph and target not in seen:
                    seen.add(target)
                    todo.append(target)
    # And at run time, in a fresh interpreter.
    modules = sorted(m for m in graph if m.startswith(NO_TENSORFLOW))
    code = (
        "import importlib, sys\n"
        f"for m in {modules!r}: importlib.import_module(m)\n"
        "print(sorted(m for m in sys.modules if m == 'tensorflow' or m.startswith('tensorflow.')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", f"TensorFlow imported: {out.stdout[:300]}"
