"""The package's shape (docs/ARCHITECTURE.md), checked on the source with ``ast``:

* no import cycle, between modules or between subpackages (every ``import`` counts, also the
  lazy ones inside functions: a cycle through a lazy import is still a tangle);
* the subpackages form layers and import only downwards: ``common`` <- ``cache`` <- stage 1 <-
  stage 2 <- stage 3 <- the tools on top <- ``cli``; in particular no stage imports ``cluster``
  (only ``cli`` does), ``cache`` imports nothing of i2p but ``common`` and ``common`` nothing
  but itself;
* ``import i2p`` (and ``i2p --help``'s ``import i2p.cli``) does not import torch;
* no module over 400 lines, no function body over 60 lines.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

from conftest import REPO, subprocess_env

PKG = REPO / "i2p"
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60
# Known longer functions, each with the reason it is left as it is.
LONG_FUNCTIONS = {
}

# Subpackage (or top-level module) -> layer: an import must go to a strictly lower layer, or stay
# inside its own subpackage. A subpackage missing here is held only to the no-cycle rule.
LAYERS = {
    "common": 0,
    "cache": 1,
    "stage1_project": 2,
    "stage2_pretrain": 3,
    "api": 3.5,  # the Encoder every stage-3 protocol uses (and users import)
    "official": 3.7,  # official checkpoints -> api exports
    "stage3_eval": 4,
    "viz": 5,
    "report": 6, "study": 6,
    "demo": 7, "cluster": 7,  # cluster/ runs stages as processes: nothing but the command line imports it
    "cli": 8, "__main__": 9,
}
# Not subpackages: the root package (``from i2p import __version__``) and the command line,
# which mounts every command.
IGNORED_AT_PACKAGE_LEVEL = {"i2p", "cli", "__main__"}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PKG.rglob("*.py"))}


def _imports(name: str, path: Path, modules: dict[str, Path]) -> list[tuple[str, int]]:
    """(imported i2p module, line) for every import statement of the module, lazy ones included."""
    is_pkg = path.name == "__init__.py"
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names if a.name.split(".")[0] == "i2p"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_pkg else name.split(".")[:-1]
                base = base[:len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "i2p":
                continue
            for alias in node.names:  # `from i2p.x import y` imports module i2p.x.y when there is one
                sub = f"{target}.{alias.name}"
                out.append((sub if sub in modules else target, node.lineno))
    # an import of a name the index does not hold (e.g. a typo) still names its nearest module
    resolved = []
    for target, line in out:
        while target not in modules and "." in target:
            target = target.rsplit(".", 1)[0]
        resolved.append((target, line))
    return resolved


@pytest.fixture(scope="module")
def graph() -> dict[str, dict[str, int]]:
    """module -> {imported module: first line}."""
    modules = _modules()
    edges: dict[str, dict[str, int]] = defaultdict(dict)
    for name, path in modules.items():
        for target, line in _imports(name, path, modules):
            if target != name:
                edges[name].setdefault(target, line)
    return {m: dict(edges.get(m, {})) for m in modules}


def _subpackage(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def _cycles(nodes: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (as a closed path) per strongly connected component with more than one node:
    the shortest one through the component's first node (in sorted order)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    comps: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan; the graphs are a few hundred nodes
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(nodes.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                comps.append(sorted(comp))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for v in sorted(nodes):
        if v not in index:
            visit(v)
    paths = []
    for comp in comps:  # shortest way from the first node back to itself, inside the component
        inside, start = set(comp), comp[0]
        prev: dict[str, str] = {}
        frontier = [start]
        while frontier and start not in prev:
            nxt = []
            for v in frontier:
                for w in sorted(nodes.get(v, ())):
                    if w in inside and w not in prev:
                        prev[w] = v
                        nxt.append(w)
            frontier = nxt
        path, v = [start], prev[start]
        while v != start:
            path.append(v)
            v = prev[v]
        paths.append([start] + path[1:][::-1] + [start])
    return paths


def _describe(path: list[str], where, nodes: dict[str, set[str]]) -> str:
    """The cycle, the imports that make it, and the rest of its tangle (strongly connected set)."""
    tangle = sorted(v for v in _reachable(nodes, path[0]) if path[0] in _reachable(nodes, v))
    return (" -> ".join(path) + "\n    " + "\n    ".join(where(a, b) for a, b in zip(path, path[1:]))
            + (f"\n    (tangle: {', '.join(tangle)})" if len(tangle) > len(path) - 1 else ""))


def _reachable(nodes: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for w in nodes.get(todo.pop(), ()):
            if w not in seen:
                seen.add(w)
                todo.append(w)
    return seen


def test_no_import_cycle_between_modules(graph):
    nodes = {m: set(t) for m, t in graph.items()}
    cycles = _cycles(nodes)
    assert not cycles, "import cycles between modules:\n" + "\n".join(
        _describe(c, lambda a, b: f"{a} imports {b} (line {graph[a][b]})", nodes) for c in cycles)


def _package_edges(graph) -> dict[tuple[str, str], list[str]]:
    """(subpackage, imported subpackage) -> the module imports that make the edge."""
    out: dict[tuple[str, str], list[str]] = defaultdict(list)
    for m, targets in graph.items():
        for t, line in targets.items():
            a, b = _subpackage(m), _subpackage(t)
            if a != b and not {a, b} & IGNORED_AT_PACKAGE_LEVEL:
                out[(a, b)].append(f"{m}:{line} imports {t}")
    return out


def test_no_import_cycle_between_subpackages(graph):
    edges = _package_edges(graph)
    nodes: dict[str, set[str]] = defaultdict(set)
    for a, b in edges:
        nodes[a].add(b)
    cycles = _cycles(nodes)
    assert not cycles, "import cycles between subpackages:\n" + "\n".join(
        _describe(c, lambda a, b: "; ".join(edges[(a, b)][:3]), nodes) for c in cycles)


def test_subpackages_import_only_lower_layers(graph):
    bad = [f"{a} (layer {LAYERS[a]}) -> {b} (layer {LAYERS[b]}): " + "; ".join(why[:3])
           for (a, b), why in sorted(_package_edges(graph).items())
           if a in LAYERS and b in LAYERS and LAYERS[b] >= LAYERS[a]]
    assert not bad, "imports against the layering of docs/ARCHITECTURE.md:\n" + "\n".join(bad)


def test_no_stage_imports_cluster_and_cache_imports_only_common(graph):
    bad = []
    for m, targets in graph.items():
        for t, line in targets.items():
            if m.startswith("i2p.stage") and _subpackage(t) == "cluster":
                bad.append(f"{m}:{line} imports {t}: stages must not import the scheduler adapters")
            if _subpackage(m) == "cache" and _subpackage(t) not in ("cache", "common"):
                bad.append(f"{m}:{line} imports {t}: the cache format imports only i2p.common")
            if _subpackage(m) == "common" and _subpackage(t) != "common":
                bad.append(f"{m}:{line} imports {t}: i2p.common imports nothing else of i2p")
    assert not bad, "\n".join(bad)


def test_the_cycle_finder_finds_cycles():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


@pytest.mark.parametrize("module", ["i2p", "i2p.cli"])
def test_import_is_light(module):
    code = (f"import sys, {module}; heavy = sorted(m for m in ('torch', 'numpy', 'zarr', 'timm') "
            "if m in sys.modules); print(','.join(heavy))")
    out = subprocess.run([sys.executable, "-c", code], env=subprocess_env(), capture_output=True, text=True,
                         timeout=120, cwd=REPO)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "torch" not in out.stdout.strip().split(","), f"import {module} imports {out.stdout.strip()}"


def test_no_module_over_400_lines():
    long = {_module_name(p): n for p in PKG.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES}
    assert not long, f"modules over {MAX_MODULE_LINES} lines: {long}"


def test_no_function_over_60_lines():
    """Counted from the first statement of the body (a typer command's option declarations
    are its signature, not its logic)."""
    long = {}
    for path in PKG.rglob("*.py"):
        mod = _module_name(path)
        tree = ast.parse(path.read_text())
        parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.body[0].lineno + 1
                owner = parents.get(node)
                name = f"{mod}.{owner.name}.{node.name}" if isinstance(owner, ast.ClassDef) else f"{mod}.{node.name}"
                if n > MAX_FUNCTION_LINES and name not in LONG_FUNCTIONS:
                    long[name] = n
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines (split them, or list them with a reason): {long}"
