"""The import graph of worker/: no cycle, imports point one way (down the layers of LAYERS),
and the pure modules import no I/O.

Every module of worker/ is parsed with ast, nothing is imported. Every import of a worker.*
module counts wherever it stands (inside a function, under TYPE_CHECKING): a cycle through a
type-only import is still two modules that need each other.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Final

import pytest

ROOT: Final = Path(__file__).resolve().parents[2] / "worker"

# The layers, top to bottom: a module imports modules of its own layer or of a layer below.
# A module belongs to the entry that names it or its package (the longest name wins).
LAYERS: Final[tuple[tuple[str, tuple[str, ...]], ...]] = (
    # what a person runs: the command line and the commands built on the app
    ("commands", ("worker.__main__", "worker.cli", "worker.ops")),
    # embedded servers, the fake Binance, worker subprocesses: tools for the commands that
    # need them (see ONLY_IMPORTED_BY) and for the tests; nothing the worker runs uses them
    ("testing", ("worker.testing",)),
    # the composition root: builds every adapter, owns the task group
    ("app", ("worker.app",)),
    # what the worker does: the event pipeline and the execution engine (whose handlers
    # plug into the pipeline's registry; the pipeline never imports the engine: no cycle)
    ("services", ("worker.pipeline", "worker.execution")),
    # the edge: PostgreSQL, the exchanges, and the one module that knows the drivers' errors
    ("adapters", ("worker.db", "worker.exchanges", "worker.driver_errors")),
    # plain values and rules, settings, logging, metrics, the project's errors
    (
        "core",
        (
            "worker",
            "worker.lifecycle",
            "worker.accounting",
            "worker.events",
            "worker.errors",
            "worker.settings",
            "worker.logs",
            "worker.metrics",
            "worker.redact",
            "worker.risk",
            "worker.sealing",
        ),
    ),
)

# Modules only the named modules (and their own package) may import. The tests may too.
ONLY_IMPORTED_BY: Final = {
    "worker.testing": (
        "worker.ops.demo",
        "worker.ops.bench",
        "worker.ops.bench_binance",
        "worker.ops.bench_fills",
    ),
}

# Pure modules: no I/O, no clock (the time is passed in), no driver. They import only other
# pure modules, the project's errors and settings (frozen values), and none of NOT_PURE.
PURE: Final = frozenset(
    {
        "worker.lifecycle",
        "worker.accounting",
        "worker.events",
        "worker.risk",
        "worker.pipeline.claim_schedule",
        "worker.pipeline.claim_floor",
        "worker.pipeline.arrival_rate",
        "worker.pipeline.polling",
        "worker.pipeline.outages",
        "worker.exchanges.base",
        "worker.exchanges.filters",
        "worker.exchanges.binance_answers",
        "worker.exchanges.paper_book",
        "worker.exchanges.paper_funds",
        "worker.exchanges.budget",
        "worker.execution.statuses",
        "worker.execution.reconcile_plan",
    }
)
PURE_MAY_IMPORT: Final = frozenset({"worker.errors", "worker.exchanges.errors", "worker.settings"})
NOT_PURE: Final = frozenset(
    {
        "anyio",
        "asyncio",
        "httpx",
        "logging",
        "os",
        "prometheus_client",
        "psycopg",
        "psycopg_pool",
        "redis",
        "socket",
        "structlog",
        "subprocess",
        "threading",
        "time",
    }
)


@cache
def modules() -> dict[str, Path]:
    found = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def _imported_names(module: str, path: Path) -> Iterator[str]:
    """Every module name an import statement of ``module`` names (relative ones resolved);
    ``from a import b`` names ``a.b`` too, in case ``b`` is a module."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            yield base
            yield from (f"{base}.{alias.name}" for alias in node.names)


def _worker_module(name: str) -> str | None:
    """The module of worker/ that ``name`` is or is inside of, if any."""
    while name:
        if name in modules():
            return name
        name = name.rpartition(".")[0]
    return None


@cache
def graph() -> dict[str, frozenset[str]]:
    edges = {}
    for module, path in modules().items():
        targets = {_worker_module(n) for n in _imported_names(module, path)}
        edges[module] = frozenset(t for t in targets if t is not None and t != module)
    return edges


def third_party(module: str) -> set[str]:
    names = _imported_names(module, modules()[module])
    return {n.partition(".")[0] for n in names if n and not n.startswith("worker")}


def layer_of(module: str) -> int:
    """The index in LAYERS of ``module``: the entry naming it or its closest package
    (``worker`` names only the package's own ``__init__``)."""
    matches = [
        (len(name), index)
        for index, (_, names) in enumerate(LAYERS)
        for name in names
        if module == name or (name != "worker" and module.startswith(f"{name}."))
    ]
    assert matches, f"{module} is in no layer: add it to LAYERS"
    return max(matches)[1]


def test_every_module_of_worker_is_found_and_placed() -> None:
    assert {"worker.app", "worker.cli", "worker.pipeline.dispatcher"} <= set(modules())
    for module in modules():
        layer_of(module)


def test_the_import_graph_has_no_cycle() -> None:
    edges = graph()
    state: dict[str, str] = {}  # "open" while on the path, "done" after

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        for target in sorted(edges[module]):
            if state.get(target) == "open":
                cycle = [*path[path.index(target) :], target]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if target not in state:
                visit(target, [*path, target])
        state[module] = "done"

    for module in sorted(edges):
        if module not in state:
            visit(module, [module])


def test_imports_point_down_the_layers() -> None:
    upward = [
        f"{module} ({LAYERS[layer_of(module)][0]}) imports {target} ({LAYERS[layer_of(target)][0]})"
        for module, targets in sorted(graph().items())
        for target in sorted(targets)
        if layer_of(target) < layer_of(module)
    ]
    assert upward == []


def test_the_testing_tools_are_imported_only_by_the_commands_that_need_them() -> None:
    wrong = [
        f"{module} imports {target}"
        for module, targets in sorted(graph().items())
        for target in sorted(targets)
        for package, importers in ONLY_IMPORTED_BY.items()
        if target == package or target.startswith(f"{package}.")
        if not (module == package or module.startswith(f"{package}.") or module in importers)
    ]
    assert wrong == []


def test_pure_modules_import_no_io() -> None:
    assert set(modules()) >= PURE
    impure = [
        f"{module} imports {name}"
        for module in sorted(PURE)
        for name in sorted(
            (third_party(module) & NOT_PURE)
            | (graph()[module] - PURE - PURE_MAY_IMPORT - {"worker"})
        )
    ]
    assert impure == []


@pytest.mark.parametrize(
    ("module", "layer"),
    [
        ("worker.cli", "commands"),
        ("worker.ops.demo", "commands"),
        ("worker.testing.fake_binance.server", "testing"),
        ("worker.app", "app"),
        ("worker.pipeline.dispatcher", "services"),
        ("worker.execution.engine", "services"),
        ("worker.db.outbox", "adapters"),
        ("worker.exchanges.binance", "adapters"),
        ("worker.errors", "core"),
        ("worker", "core"),
    ],
)
def test_the_layer_table_places_modules_by_their_longest_name(module: str, layer: str) -> None:
    assert LAYERS[layer_of(module)][0] == layer
