"""Nothing in the core is written twice: a sync form only hands its coroutine to the sync driver.

For every method ``x`` with an ``x_async`` sibling in the same class (and every module function
``x`` with a module function ``x_async``), the body of ``x`` must be exactly
``return run_sync(<...>x_async(...))``, a docstring allowed. The logic then exists once, in the
coroutine, and the two forms cannot drift. Converted modules are listed in ``ONE_SOURCE``:
converting another is one line there.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

CORE = Path(__file__).resolve().parents[2] / "orchestrix" / "core"

ONE_SOURCE = [
    "eventsourcing/aggregate.py",
    "execution/_paging.py",
    "execution/runner.py",
    "execution/_saga_steps.py",
    "execution/_saga_monitor.py",
    "execution/projection/runner.py",
]

_Function = ast.FunctionDef | ast.AsyncFunctionDef


def pairs(tree: ast.Module) -> list[tuple[str, _Function, _Function]]:
    """(where, sync, async) for each name ``x`` defined beside ``x_async`` in one scope."""
    scopes: list[tuple[str, list[ast.stmt]]] = [("module", tree.body)]
    scopes += [(f"class {node.name}", node.body) for node in ast.walk(tree) if isinstance(node, ast.ClassDef)]
    found = []
    for where, body in scopes:
        functions = {node.name: node for node in body if isinstance(node, _Function)}
        for name, sync in functions.items():
            twin = functions.get(f"{name}_async")
            if twin is not None:
                found.append((where, sync, twin))
    return found


def problem(where: str, sync: _Function, twin: _Function) -> str | None:
    """What is wrong with ``sync`` as the sync form of ``twin``, or None."""
    name = f"{where}: {sync.name}"
    if not isinstance(twin, ast.AsyncFunctionDef):
        return f"{name}_async is not a coroutine function"
    if isinstance(sync, ast.AsyncFunctionDef):
        return f"{name} is a coroutine function too"
    body = list(sync.body)
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        body = body[1:]  # the docstring
    if not body and _abstract(sync) and _abstract(twin):
        return None  # a pair declared for subclasses, which the list checks where they are written
    if len(body) != 1 or not isinstance(body[0], ast.Return) or not isinstance(body[0].value, ast.Call):
        return f"{name} does more than return run_sync(...)"
    driver = body[0].value
    if not (isinstance(driver.func, ast.Name) and driver.func.id == "run_sync" and len(driver.args) == 1):
        return f"{name} does not hand its work to run_sync"
    inner = driver.args[0]
    called = inner.func if isinstance(inner, ast.Call) else None
    if isinstance(called, ast.Attribute):
        target = called.attr if isinstance(called.value, ast.Name) and called.value.id == "self" else None
    elif isinstance(called, ast.Name):
        target = called.id
    else:
        target = None
    if target != twin.name:
        return f"{name} runs something else than {twin.name}: {ast.unparse(inner)}"
    return None


def _abstract(function: _Function) -> bool:
    return any(ast.unparse(decorator).endswith("abstractmethod") for decorator in function.decorator_list)


def problems(source: str) -> list[str]:
    found = [problem(where, sync, twin) for where, sync, twin in pairs(ast.parse(source))]
    return [p for p in found if p is not None]


@pytest.mark.parametrize("module", ONE_SOURCE)
def test_every_sync_form_only_runs_its_coroutine(module: str) -> None:
    assert problems((CORE / module).read_text()) == []


@pytest.mark.parametrize("module", ONE_SOURCE)
def test_the_module_has_what_it_is_listed_for(module: str) -> None:
    # A module listed here holds logic over the I/O operations of orchestrix.core._io; one that
    # no longer does (renamed, emptied) must leave the list, not pass it silently.
    tree = ast.parse((CORE / module).read_text())
    assert any(isinstance(node, ast.AsyncFunctionDef) for node in ast.walk(tree)), module


@pytest.mark.parametrize("module", ONE_SOURCE)
def test_the_module_reaches_asyncio_only_through_the_io_operations(module: str) -> None:
    # asyncio.to_thread, asyncio.gather, asyncio.Lock ... in a converted module would be a
    # second, asyncio-only way of doing what an operation of orchestrix.core._io does for both.
    tree = ast.parse((CORE / module).read_text())
    typing_only = {
        id(node)
        for block in ast.walk(tree)
        if isinstance(block, ast.If) and ast.unparse(block.test) == "TYPE_CHECKING"
        for node in ast.walk(block)
    }
    imported = [
        alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom) and id(node) not in typing_only
        for alias in node.names
        if (node.module if isinstance(node, ast.ImportFrom) else alias.name) == "asyncio"
    ]
    assert imported == [], module


def test_a_sync_form_written_out_is_found() -> None:
    twice = '''
class Runner:
    def run_once(self) -> int:
        """Docstrings are fine."""
        return run_sync(self.run_once_async())

    async def run_once_async(self) -> int:
        return await _io.read_all(self.store, 0, 1)

    def handle(self, recorded):
        self._start()
        return run_sync(self.handle_async(recorded))

    async def handle_async(self, recorded):
        ...

    def stuck(self):
        return run_sync(self.retry_async())

    async def stuck_async(self):
        ...

    @abc.abstractmethod
    def run_page(self) -> int:
        """Declared for subclasses: nothing written."""

    @abc.abstractmethod
    async def run_page_async(self) -> int:
        """Declared for subclasses: nothing written."""

def read(store):
    return list(store.read_all())

async def read_async(store):
    return [r async for r in store.read_all_async()]
'''
    assert sorted(problems(twice)) == [
        "class Runner: handle does more than return run_sync(...)",
        "class Runner: stuck runs something else than stuck_async: self.retry_async()",
        "module: read does not hand its work to run_sync",
    ]
