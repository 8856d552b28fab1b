"""The package's layers: imports point down only, and no module imports itself back.

Lowest first: the core (the modules at the top of the package: config, errors, records,
...; and `state`, the store and its migrations), then model, index, grouping, published, gallery,
service, cli. A module may import its own layer and the layers below it; the core
imports only the core. Imports inside functions count too (they are how cycles hid).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "imageclust_daemon"
LAYERS = ["model", "index", "grouping", "published", "gallery", "usecases", "service", "cli"]
CORE = {"state"}  # subpackages of the core
ENTRY = {"imageclust_daemon.__main__"}  # `python -m imageclust_daemon`: the CLI's door


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _layer(module: str) -> int:
    """0 for the core, then 1 + the index of its subpackage in LAYERS."""
    parts = module.split(".")
    if len(parts) > 1 and parts[1] in CORE:
        return 0
    if len(parts) > 2 or (len(parts) == 2 and parts[1] in LAYERS):
        return 1 + LAYERS.index(parts[1])
    return 0


def imports(path: Path) -> set[str]:
    """The package's modules that `path` imports, anywhere in it."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "imageclust_daemon" or node.module.startswith("imageclust_daemon."):
                for alias in node.names:  # `from pkg import module` names a module
                    candidate = f"{node.module}.{alias.name}"
                    found.add(candidate if _exists(candidate) else node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("imageclust_daemon")}
    return found


def _exists(module: str) -> bool:
    relative = Path(*module.split(".")[1:])
    return (PACKAGE / relative).with_suffix(".py").is_file() or (PACKAGE / relative).is_dir()


def graph() -> dict[str, set[str]]:
    return {_module_name(p): imports(p) for p in sorted(PACKAGE.rglob("*.py"))}


def wrong_way(edges: dict[str, set[str]]) -> list[str]:
    """Each import that points up a layer."""
    return [
        f"{module} ({LAYERS[_layer(module) - 1] if _layer(module) else 'core'}) imports "
        f"{target} ({LAYERS[_layer(target) - 1] if _layer(target) else 'core'})"
        for module, targets in sorted(edges.items())
        if module not in ENTRY
        for target in sorted(targets)
        if _layer(target) > _layer(module)
    ]


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Import cycles between modules (a package's __init__ importing its modules aside)."""
    found, state, stack = [], {}, []

    def visit(node: str) -> None:
        state[node] = "open"
        stack.append(node)
        for target in sorted(edges.get(node, ())):
            if target == node or node.startswith(target + "."):
                continue
            if state.get(target) == "open":
                found.append([*stack[stack.index(target) :], target])
            elif target not in state:
                visit(target)
        stack.pop()
        state[node] = "done"

    for node in sorted(edges):
        if node not in state:
            visit(node)
    return found


def test_imports_point_down_the_layers() -> None:
    edges = graph()
    assert len(edges) > 40, "the package's modules were found"
    assert wrong_way(edges) == []


def test_no_module_imports_itself_back() -> None:
    assert cycles(graph()) == []


@pytest.mark.parametrize(
    ("module", "target", "wrong"),
    [
        ("imageclust_daemon.state.store", "imageclust_daemon.grouping.cluster", True),
        ("imageclust_daemon.index.decode", "imageclust_daemon.published.catalog", True),
        ("imageclust_daemon.cli.commands", "imageclust_daemon.index.pipeline", False),
        ("imageclust_daemon.grouping.regroup", "imageclust_daemon.model.models", False),
    ],
)
def test_the_check_catches_a_wrong_import(module: str, target: str, wrong: bool) -> None:
    assert bool(wrong_way({module: {target}})) is wrong
    assert cycles({module: {target}, target: {module}}) != []


# The state database's tables, which only the store (state/) and its migrations know; the
# rest reads the `published_*` views (migration 9). The catalog has tables of its own
# named like some of these (clusters, events): those are read unprefixed on its own
# connection, while the state is attached as `state` (or named by a `{schema}` part).
STATE_ONLY_TABLES = {
    "files",
    "contents",
    "embeddings",
    "cluster_runs",
    "cluster_waiting",
    "event_members",
    "labels",
    "model_files",
    "skipped_files",
    "subject_vectors",
}
_READ = re.compile(r"\b(?:FROM|JOIN)\s+(state\.|\{\w+\}\.)?(\w+)", re.IGNORECASE)


def state_reads(source: str) -> list[str]:
    """The state tables that SQL in `source` reads other than through a published view."""
    found = []
    for prefix, table in _READ.findall(source):
        if prefix and not table.startswith("published_"):
            found.append(prefix + table)
        elif not prefix and table in STATE_ONLY_TABLES:
            found.append(table)
    return found


def test_only_the_store_reads_the_state_tables() -> None:
    wrong = {
        _module_name(path): state_reads(path.read_text(encoding="utf-8"))
        for path in sorted(PACKAGE.rglob("*.py"))
        if "state" not in path.relative_to(PACKAGE).parts[:1]
    }
    assert {module: reads for module, reads in wrong.items() if reads} == {}
    # the check sees a read of a state table, and lets a view through
    assert state_reads('"SELECT f.path FROM {s}.files f JOIN state.contents c"') == [
        "{s}.files",
        "state.contents",
    ]
    assert state_reads('"SELECT hash FROM contents"') == ["contents"]
    assert state_reads('"SELECT path FROM state.published_files p"') == []


def test_the_published_catalog_is_read_through_its_reader() -> None:
    """Connections are opened by the store (the state), the catalog's reader (every read
    of a published catalog), the catalog's build (the file it writes, and the state's
    views it reads) and `doctor` (an integrity check of either file); nowhere else."""
    opening = {
        _module_name(path)
        for path in sorted(PACKAGE.rglob("*.py"))
        if "sqlite3.connect(" in path.read_text(encoding="utf-8")
    }
    assert opening == {
        "imageclust_daemon.state.store",
        "imageclust_daemon.published.reader",
        "imageclust_daemon.published.catalog",
        "imageclust_daemon.service.doctor",
    }
