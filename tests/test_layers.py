"""The map of the house stays true: no module imports one from a layer above it.

docs/architecture.md draws these layers; this test walks every import in followupd/ (lazy
imports inside functions included) and fails on an upward one, or on a module the map does
not place.
"""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import REPO

PACKAGE = REPO / "followupd"

# Top to bottom. A module may import from its own layer or any layer below it.
LAYERS: list[tuple[str, ...]] = [
    ("cli", "commands", "demo", "__main__"),
    ("daemon",),
    ("engine",),
    ("health", "intake", "sources", "folder_watch", "sheet_status", "report"),
    ("planning", "subjects", "render", "delivery"),
    ("store",),
    ("records", "config", "pacing", "timing", "sheet_dates"),
    ("models", "migrations", "permissions", "logs", "resources", "wakeup", "__init__"),
]
LAYER_OF = {name: depth for depth, names in enumerate(LAYERS) for name in names}


def component(module: str) -> str | None:
    """`followupd.store.ledger` -> `store`; None for anything outside followupd."""
    parts = module.split(".")
    if parts[0] != "followupd":
        return None
    return parts[1] if len(parts) > 1 else "__init__"


def module_name(path: Path) -> str:
    relative = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(relative.parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts = parts[:-1] if len(parts) > 2 else [*parts[:-1], "__init__"]
    return ".".join(parts)


def imported_modules(source: str, importer: str, is_package: bool) -> list[tuple[int, str]]:
    """(line, absolute module) of every import in `source`, relative ones resolved."""
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = importer.split(".")
                anchor = anchor if is_package else anchor[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            out.append((node.lineno, base))
            out += [
                (node.lineno, f"{base}.{alias.name}")
                for alias in node.names
                if component(f"{base}.{alias.name}") and base == "followupd"
            ]
    return out


def violations(importer: str, source: str, is_package: bool = False) -> list[str]:
    """The upward (or unmapped) imports of one module."""
    own = component(importer)
    if own not in LAYER_OF:
        return [f"{importer}: not on the map (add it to LAYERS and to docs/architecture.md)"]
    found = []
    for line, target in imported_modules(source, importer, is_package):
        other = component(target)
        if other is None or other == own:
            continue
        if other not in LAYER_OF:
            found.append(f"{importer}:{line}: imports {target}, which is not on the map")
        elif LAYER_OF[other] < LAYER_OF[own]:
            found.append(
                f"{importer}:{line}: imports {target}, a layer above it ({other} is above {own})"
            )
    return found


def test_no_module_imports_from_a_layer_above_it():
    problems = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if "migrations" in path.parts and path.name != "__init__.py" and "versions" in path.parts:
            continue  # migrations import alembic and sqlalchemy only
        name = module_name(path)
        problems += violations(name, path.read_text(), path.name == "__init__.py")
    assert problems == []


def test_the_check_catches_an_upward_import():
    """The walk finds an upward import, a lazy one inside a function, and a relative one."""
    assert violations("followupd.store", "from followupd.engine import Engine\n")
    assert violations("followupd.planning", "def f():\n    from followupd import daemon\n")
    assert violations("followupd.delivery.outbox", "from ..engine import Engine\n")
    assert not violations("followupd.engine", "from followupd.store import Store\n")
    assert violations("followupd.nowhere", "")
