"""The layers point down, and the public names exist."""

import ast
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def imported_modules(package: Path) -> list[tuple[Path, str]]:
    found = []
    for path in package.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                found += [(path, alias.name) for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.append((path, node.module))
    return found


@pytest.mark.parametrize(
    ("package", "forbidden"),
    [
        ("orchestrix/core", ("orchestrix.infrastructure", "orchestrix.testing", "bases", "psycopg")),
        ("orchestrix/infrastructure", ("bases",)),
        ("orchestrix/testing", ("bases",)),
    ],
)
def test_layers_point_down_only(package: str, forbidden: tuple[str, ...]) -> None:
    bad = [
        f"{path.relative_to(ROOT)} imports {name}"
        for path, name in imported_modules(ROOT / package)
        if name.split(".")[0] in forbidden or name.startswith(forbidden)
    ]
    assert bad == []


def test_only_the_postgres_backend_imports_psycopg() -> None:
    bad = [
        str(path.relative_to(ROOT))
        for path, name in imported_modules(ROOT / "orchestrix")
        if name.startswith("psycopg") and "postgres" not in path.parts
    ]
    assert bad == []


def test_nothing_uses_pickle() -> None:
    users = [
        str(p)
        for p, name in imported_modules(ROOT / "orchestrix")
        if name.split(".")[0] in {"pickle", "marshal", "shelve"}
    ]
    assert users == []


@pytest.mark.parametrize(
    "module",
    [
        "orchestrix",
        "orchestrix.core.errors",
        "orchestrix.core.messaging",
        "orchestrix.core.eventsourcing",
        "orchestrix.core.eventsourcing.aggregate",
        "orchestrix.core.eventsourcing.store",
        "orchestrix.infrastructure.memory",
        "orchestrix.testing",
    ],
)
def test_every_name_in_all_exists(module: str) -> None:
    mod = importlib.import_module(module)
    missing = [name for name in mod.__all__ if not hasattr(mod, name)]
    assert missing == []


def test_the_announced_import_paths_work() -> None:
    from orchestrix.core.eventsourcing.aggregate import AggregateRepository, AggregateRoot
    from orchestrix.infrastructure.memory.store import InMemoryEventStore

    assert AggregateRepository and AggregateRoot and InMemoryEventStore
