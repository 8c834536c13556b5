"""The package's shape, checked from the source: who may import whom.

Every ``import`` and ``from ... import`` in ``asyncsync/`` is read with :mod:`ast` (function-
level imports included, relative ones resolved), giving one graph of module -> module. The
rules from issue 12:

* no import circle anywhere (no strongly connected component of more than one module, and no
  module importing itself); imports under ``if TYPE_CHECKING:`` never run and do not count;
* nothing outside ``asyncsync/cli`` imports ``asyncsync.cli`` (the CLI is the outermost layer);
* ``asyncsync/sink`` imports nothing from the rest of ``asyncsync`` (the reference server shares
  no code with the client it tests);
* only ``asyncsync/_http.py`` (and the sink, which is a server) imports aiohttp: every HTTP
  exchange goes through the one transport seam; and it does so only when an aiohttp transport
  is made, so the CLI on the reqwest transport never loads aiohttp (checked in a subprocess).

Run alone: ``python -m pytest -q tests/test_architecture.py``.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from functools import cache
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "asyncsync"
ROOT = "asyncsync"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


@cache
def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _is_package(name: str) -> bool:
    return _modules()[name].name == "__init__.py"


def _owner(target: str) -> str | None:
    """The module of ours that ``target`` (a module or a name in one) resolves to."""
    modules = _modules()
    while target:
        if target in modules:
            return target
        target = target.rpartition(".")[0]
    return None


def _type_checking_only(tree: ast.Module) -> set[ast.AST]:
    """The nodes under ``if TYPE_CHECKING:``: never executed, so never part of a circle."""
    skipped: set[ast.AST] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                skipped.update(ast.walk(child))
    return skipped


def _imports(name: str, *, typing: bool = True) -> Iterator[tuple[str, int]]:
    """(imported module, line) for every import in module ``name``, relative ones resolved;
    ``typing=False`` leaves out those under ``if TYPE_CHECKING:``."""
    path = _modules()[name]
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = name if _is_package(name) else name.rpartition(".")[0]
    skipped = set() if typing else _type_checking_only(tree)
    for node in ast.walk(tree):
        if node in skipped:
            continue
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                stem = ".".join(base + ([node.module] if node.module else []))
            else:
                stem = node.module or ""
            # `from pkg import sub` imports the submodule when there is one, else a name of pkg
            for alias in node.names:
                sub = f"{stem}.{alias.name}"
                yield (sub if sub in _modules() else stem), node.lineno


def _graph() -> dict[str, set[str]]:
    """module -> the modules of ours it imports when it runs (``TYPE_CHECKING`` imports are
    for the type checker only, and are how a type-only back-reference stays out of a circle)."""
    graph: dict[str, set[str]] = {}
    for name in _modules():
        edges = graph.setdefault(name, set())
        for target, _ in _imports(name, typing=False):
            owner = _owner(target)
            if owner is not None:
                edges.add(owner)
    # `from . import x` in a package's __init__, x a name defined there, is not an import
    for name, edges in graph.items():
        if _is_package(name):
            edges.discard(name)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module, or a module importing itself
    (Tarjan's algorithm)."""
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
            if len(component) > 1 or v in graph[v]:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def _describe(component: list[str], graph: dict[str, set[str]]) -> str:
    members = set(component)
    edges = [f"{a} -> {b}" for a in component for b in sorted(graph[a] & members)]
    return "{" + ", ".join(component) + "}: " + "; ".join(edges)


def test_the_graph_is_read() -> None:
    """Sanity: the walk finds the modules and resolves relative imports (cli -> _paths)."""
    graph = _graph()
    assert {"asyncsync", "asyncsync.cli._main", "asyncsync._uploader", "asyncsync.sink"} <= set(
        graph
    )
    assert "asyncsync._paths" in graph["asyncsync.cli._plan"]
    assert "asyncsync.cli._run" in graph["asyncsync.cli._main"]


def test_the_cycle_finder_finds_cycles() -> None:
    """Sanity: a two-module circle and a self-import are reported, a chain is not."""
    assert _cycles({"a": {"b"}, "b": {"a"}, "c": {"a"}}) == [["a", "b"]]
    assert _cycles({"a": {"a"}}) == [["a"]]
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []


def test_no_import_cycle() -> None:
    """No import circle anywhere in the package (function-level imports included)."""
    graph = _graph()
    cycles = _cycles(graph)
    assert not cycles, "import cycles:\n" + "\n".join(_describe(c, graph) for c in cycles)


def test_nothing_outside_cli_imports_cli() -> None:
    """The CLI is the outermost layer: the library never imports it."""
    offenders = [
        f"{name}:{line} imports {target}"
        for name in _modules()
        if not (name == f"{ROOT}.cli" or name.startswith(f"{ROOT}.cli."))
        for target, line in _imports(name)
        if (owner := _owner(target)) is not None
        and (owner == f"{ROOT}.cli" or owner.startswith(f"{ROOT}.cli."))
    ]
    assert not offenders, "\n".join(offenders)


def test_sink_imports_nothing_from_the_client() -> None:
    """The reference server shares no code with the client it is there to test."""
    offenders = [
        f"{name}:{line} imports {target}"
        for name in _modules()
        if name == f"{ROOT}.sink" or name.startswith(f"{ROOT}.sink.")
        for target, line in _imports(name)
        if (target == ROOT or target.startswith(f"{ROOT}."))
        and (owner := _owner(target)) is not None
        and not (owner == f"{ROOT}.sink" or owner.startswith(f"{ROOT}.sink."))
    ]
    assert not offenders, "\n".join(offenders)


def test_only_the_transport_imports_aiohttp() -> None:
    """Every HTTP exchange goes through asyncsync/_http.py: no other client module imports
    aiohttp (the sink is a server, and may)."""
    allowed = {f"{ROOT}._http"}
    offenders = [
        f"{name}:{line} imports {target}"
        for name in _modules()
        if name not in allowed and not (name == f"{ROOT}.sink" or name.startswith(f"{ROOT}.sink."))
        for target, line in _imports(name)
        if target == "aiohttp" or target.startswith("aiohttp.")
    ]
    assert not offenders, "\n".join(offenders)


_WITHOUT_AIOHTTP = """
import ssl, sys
import asyncsync, asyncsync.cli._main, asyncsync._transports
from asyncsync._http import ConnectionReset, RequestTimeout, TLSError, map_aiohttp_exception
assert "aiohttp" not in sys.modules, "aiohttp imported at start-up"
url = "https://user:secret@example.test/ingest?token=x"
tls = map_aiohttp_exception(ssl.SSLError(1, "certificate verify failed"), url=url)
assert isinstance(tls, TLSError) and "--ca-bundle" in str(tls) and "secret" not in str(tls)
assert isinstance(map_aiohttp_exception(TimeoutError(), url=url, timeout=3.0), RequestTimeout)
assert isinstance(map_aiohttp_exception(ConnectionRefusedError(111, "refused")), ConnectionReset)
assert map_aiohttp_exception(KeyError("not a transport error")) is None
assert "aiohttp" not in sys.modules, "aiohttp imported by the error mapping"
"""


def test_start_up_does_not_import_aiohttp() -> None:
    """The package and the CLI load without aiohttp (~0.12 s of start-up); until an aiohttp
    transport exists, the error mapping still classifies the socket- and TLS-level errors."""
    proc = subprocess.run(
        [sys.executable, "-c", _WITHOUT_AIOHTTP], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
