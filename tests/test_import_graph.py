"""The package's import graph has no circle.

import-linter's ``acyclic_siblings`` contract (``lint-imports``) checks siblings only, so it misses a circle
through a package's ``__init__`` (``frugalvision`` -> ``frugalvision.bundle`` -> ``frugalvision``). This test
finds every strongly connected component of the module graph that grimp builds from all import statements,
function-level (lazy) ones included.
"""

from __future__ import annotations

import pytest

grimp = pytest.importorskip("grimp")

# The circle the config rewrite (h-config) removes; delete this entry when it lands.
_KNOWN_CIRCLES: set[frozenset[str]] = set()


def import_circles(graph) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    circles: list[list[str]] = []
    for root in sorted(graph.modules):
        if root in index:
            continue
        work = [(root, iter(sorted(graph.find_modules_directly_imported_by(root))))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.find_modules_directly_imported_by(child)))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
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
                    circles.append(sorted(component))
    return circles


def test_import_circles_are_found() -> None:
    graph = grimp.ImportGraph()
    for name in "abcd":
        graph.add_module(name)
    graph.add_import(importer="a", imported="b")
    graph.add_import(importer="b", imported="c")
    graph.add_import(importer="c", imported="a")
    graph.add_import(importer="c", imported="d")
    assert import_circles(graph) == [["a", "b", "c"]]


def test_the_package_has_no_import_circle() -> None:
    graph = grimp.build_graph("frugalvision", cache_dir=None)
    circles = [c for c in import_circles(graph) if frozenset(c) not in _KNOWN_CIRCLES]
    assert not circles, "import circles (each a set of modules importing each other):\n" + "\n".join(
        " <-> ".join(c) for c in circles
    )
