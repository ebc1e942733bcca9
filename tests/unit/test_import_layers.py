"""Arrows point one way (STYLE.md §2): a forbidden import edge, or any import cycle, fails here.

Every import in gateway/ counts, module-level or inside a function (a late import is still an
edge); only ``if TYPE_CHECKING:`` blocks are left out, as they never run.
"""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "gateway"


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@cache
def imports() -> dict[str, frozenset[str]]:
    """Every gateway module → the modules it imports (absolute names, submodules of ``from`` included)."""
    out: dict[str, frozenset[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                node.body = []
        names: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module)
                names.update(f"{node.module}.{alias.name}" for alias in node.names)
        out[_module_name(path)] = frozenset(names)
    return out


def _importers_of(target: str, within: str = "gateway") -> set[str]:
    return {m for m, names in imports().items() if m.startswith(within)
            and any(n == target or n.startswith(target + ".") for n in names)}  # fmt: skip


# (modules under this prefix, must not import this, why)
FORBIDDEN: list[tuple[str, str, str]] = [
    *[("gateway.protocols", lib, "protocol cores are sans-I/O") for lib in
      ("asyncio", "starlette", "redis", "uvicorn", "httpx", "gateway.transports", "gateway.hub")],
    *[("gateway.journal", mod, "the journal is below the hub and the upstreams") for mod in
      ("gateway.hub", "gateway.transports", "gateway.upstream", "gateway.cluster", "gateway.runtime", "gateway.api")],
    ("gateway.hub", "gateway.transports", "transports depend on the hub, not the reverse"),
    ("gateway.hub", "gateway.runtime", "the runtime assembles the hub"),
    ("gateway.transports", "gateway.runtime", "transports receive the hub, interest and metrics (services.py)"),
    ("gateway.transports", "gateway.app", "the app assembles the transports"),
    ("gateway.auth", "gateway.upstream", "auth asks HQ through a protocol, not the upstream client"),
    ("gateway.cluster", "gateway.upstream", "the cluster lease and tailer depend on the journal only"),
    ("gateway.bridge", "gateway.journal.redis", "the Redis key layout is gateway.journal.keys"),
    ("gateway.cluster", "gateway.upstream.client", "Backoff is gateway.backoff"),
    ("gateway.bridge", "gateway.upstream.client", "Backoff is gateway.backoff"),
    ("gateway.config", "gateway.bridge.relay", "settings are below everything that reads them"),
]  # fmt: skip


@pytest.mark.parametrize(("where", "target", "why"), FORBIDDEN, ids=[f"{w}->{t}" for w, t, _ in FORBIDDEN])
def test_no_forbidden_edge(where: str, target: str, why: str) -> None:
    assert not _importers_of(target, where), f"{sorted(_importers_of(target, where))} import {target}: {why}"


def test_only_the_connection_layer_imports_uvicorn_internals() -> None:
    allowed = {"gateway.transports.uvicorn_hooks"}
    assert _importers_of("uvicorn.protocols") <= allowed
    # uvicorn itself: the hooks, and the commands that run servers.
    assert _importers_of("uvicorn") <= allowed | {"gateway.cli", "gateway.simulator.cli"}
    # The hooks are reached only through the one guard.
    assert _importers_of("gateway.transports.uvicorn_hooks") == {"gateway.transports.server_hooks"}


def test_config_imports_only_errors_and_pure_value_parsers() -> None:
    ours = {n for n in imports()["gateway.config"] if n.startswith("gateway")}
    assert ours <= {"gateway.errors", "gateway.errors.ConfigError", "gateway.bridge.target",
                    "gateway.bridge.target.parse_broker_url", "gateway.bridge.target.parse_pin_policy",
                    "gateway.clientaddr", "gateway.clientaddr.parse_trusted"}  # fmt: skip
    # bridge.target and clientaddr stay leaves (pure parsing), so config → them closes no cycle.
    assert not {n for n in imports()["gateway.bridge.target"] if n.startswith("gateway")}
    assert not {n for n in imports()["gateway.clientaddr"] if n.startswith("gateway")}


def test_no_import_cycle() -> None:
    modules = imports()
    graph = {m: {n for n in names if n in modules and n != m} for m, names in modules.items()}
    cycles = [c for c in _strongly_connected(graph) if len(c) > 1]
    assert not cycles, f"import cycles: {cycles}"


def _strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

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
            out.append(component)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out
