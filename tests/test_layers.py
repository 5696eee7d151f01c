"""No import circles anywhere in the package, deferred imports included (import-linter's layer
contract in ``make lint`` checks the direction between layers; this checks every module pair)."""

from __future__ import annotations

import grimp
import networkx as nx


def test_no_module_imports_itself_through_others() -> None:
    graph = grimp.build_graph("compaudit")
    edges = nx.DiGraph()
    for module in graph.modules:
        for imported in graph.find_modules_directly_imported_by(module):
            edges.add_edge(module, imported)
    cycles = list(nx.simple_cycles(edges))
    assert cycles == [], "import circles: " + "; ".join(" -> ".join([*c, c[0]]) for c in cycles[:5])
