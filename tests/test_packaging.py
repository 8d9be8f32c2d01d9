"""The package's metadata says what is tested, its extras are named where they are missing, and
the test command's other-interpreter run reaches every module."""

from __future__ import annotations

import ast
import importlib.util
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _other_pythons() -> ModuleType:
    spec = importlib.util.spec_from_file_location("other_pythons", ROOT / "tools" / "other_pythons.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


other_pythons = _other_pythons()


# -- metadata ------------------------------------------------------------------------------------


def test_the_license_is_an_spdx_expression_with_its_file() -> None:
    assert PROJECT["license"] == "MIT"
    assert PROJECT["license-files"] == ["LICENSE"]
    assert "MIT License" in (ROOT / "LICENSE").read_text()
    # A License classifier beside an SPDX expression is refused by the build backend.
    assert not [c for c in PROJECT["classifiers"] if c.startswith("License ::")]


def test_the_classifiers_name_the_tested_pythons_and_posix_only() -> None:
    versions = {c.rsplit(" ", 1)[1] for c in PROJECT["classifiers"] if re.fullmatch(r".*:: 3\.\d+", c)}
    assert versions == {"3.11", "3.12", "3.13"}
    assert PROJECT["requires-python"] == ">=3.11"
    assert other_pythons.claimed_minors() == {11, 12, 13}
    assert other_pythons.FIRST_MINOR == 11
    operating_systems = [c for c in PROJECT["classifiers"] if c.startswith("Operating System ::")]
    assert operating_systems == ["Operating System :: POSIX"]


def test_the_urls_are_set_and_the_docs_site_agrees() -> None:
    urls = PROJECT["urls"]
    assert {"Homepage", "Documentation", "Repository", "Issues"} <= set(urls)
    assert all(u.startswith("https://") for u in urls.values())
    mkdocs = (ROOT / "mkdocs.yml").read_text()
    assert f"repo_url: {urls['Repository']}" in mkdocs
    assert f"site_url: {urls['Documentation']}" in mkdocs


def _extra(name: str) -> list[str]:
    return [re.sub(r"\s", "", r) for r in PROJECT["optional-dependencies"][name]]


def test_the_postgres_extra_leaves_the_binary_wheel_to_the_application() -> None:
    assert _extra("postgres") == ["psycopg>=3.2", "psycopg-pool>=3.2"]
    assert _extra("postgres-binary") == ["psycopg[binary]>=3.2", "psycopg-pool>=3.2"]


def test_the_testing_extra_holds_what_orchestrix_testing_imports() -> None:
    assert _extra("testing") == ["pytest>=8", "hypothesis>=6.100"]


def test_the_test_extra_holds_everything_the_test_command_needs() -> None:
    test = set(_extra("test"))
    assert set(_extra("testing")) | set(_extra("postgres-binary")) | set(_extra("docs")) <= test


def test_the_build_backend_knows_spdx_licenses() -> None:
    build = tomllib.loads((ROOT / "pyproject.toml").read_text())["build-system"]
    assert build["requires"] == ["setuptools>=77"]


# -- missing extras are named --------------------------------------------------------------------


def _import_without(missing: str, module: str) -> subprocess.CompletedProcess[str]:
    code = f"import sys; sys.modules[{missing!r}] = None; import {module}"
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("missing", ["pytest", "hypothesis"])
def test_orchestrix_testing_without_its_extra_names_it(missing: str) -> None:
    done = _import_without(missing, "orchestrix.testing")
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("ModuleNotFoundError: orchestrix.testing needs pytest and hypothesis")
    assert "pip install 'orchestrix-es[testing]'" in last and missing in last


@pytest.mark.parametrize("missing", ["psycopg", "psycopg_pool"])
def test_the_postgres_store_without_its_extra_names_it(missing: str) -> None:
    done = _import_without(missing, "orchestrix.infrastructure.postgres")
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("ModuleNotFoundError: the PostgreSQL store needs psycopg 3 and psycopg-pool")
    assert "pip install 'orchestrix-es[postgres]'" in last and "orchestrix-es[postgres-binary]" in last
    assert missing in last


def test_the_command_names_the_postgres_extra_too() -> None:
    code = (
        "import sys; sys.modules['psycopg'] = None; from orchestrix.cli import main; "
        "sys.exit(main(['inspect', 'postgresql://nobody@127.0.0.1:1/none']))"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert done.stderr.startswith(
        "orchestrix: PostgreSQL support is not installed: the PostgreSQL store needs"
    )
    assert "orchestrix-es[postgres]" in done.stderr and done.stderr.count("\n") == 1


# -- the other interpreters' run -----------------------------------------------------------------


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, known: set[str]) -> set[str]:
    """The project modules ``path`` imports, or names as a string (``python -m NAME``).

    Importing a package's module runs the package's ``__init__`` too.
    """
    found: set[str] = set()
    name = _module_name(path)
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join([*package[: len(package) - node.level + 1], base]).strip(".")
            names = [base, *(f"{base}.{a.name}" for a in node.names)]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in known:
            names = [node.value]
        else:
            continue
        for name in names:
            parts = name.split(".")
            found |= {".".join(parts[:k]) for k in range(1, len(parts) + 1)} & known
    return found


def test_the_other_interpreters_subset_reaches_every_module() -> None:
    sources = [*(ROOT / "orchestrix").rglob("*.py"), *(ROOT / "bases").rglob("*.py")]
    modules = {_module_name(p): p for p in sources}
    assert "orchestrix.cli" in modules and "bases.orchestrix.banking_demo.main" in modules
    ignored = [a.split("=", 1)[1] for a in other_pythons.SUBSET if a.startswith("--ignore=")]
    tests = [
        p for p in (ROOT / "tests").rglob("*.py") if not any(p.is_relative_to(ROOT / i) for i in ignored)
    ]
    graph = {name: _imports(path, set(modules)) for name, path in modules.items()}
    reached: set[str] = set()
    todo = [m for t in tests for m in _imports(t, set(modules))]
    while todo:
        name = todo.pop()
        if name not in reached:
            reached.add(name)
            todo += graph[name]
    # ``python -m orchestrix`` (the tests run it) runs orchestrix.__main__ under another name.
    unreached = sorted(set(modules) - reached - {"orchestrix.__main__"})
    assert unreached == []


def test_an_absent_python_is_skipped_with_the_reason(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    running = sys.version_info[1]
    monkeypatch.setattr(other_pythons, "find_python", lambda minor: None)
    assert other_pythons.other_pythons(["tests"]) == []
    out = capsys.readouterr().out
    for minor in sorted(other_pythons.claimed_minors() - {running}):
        assert f"python3.{minor}: SKIPPED, not found (no python3.{minor} on PATH or under " in out
    assert f"python3.{running}: {sys.executable}" in out and "ran the main suite" in out


def test_a_pyenv_shim_that_does_not_run_is_not_a_python(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shim = tmp_path / "bin" / "python3.99"
    shim.parent.mkdir()
    shim.write_text("#!/bin/sh\necho 'pyenv: python3.99: command not found' >&2\nexit 127\n")
    shim.chmod(0o755)
    monkeypatch.setenv("PATH", str(shim.parent))
    monkeypatch.setenv("PYENV_ROOT", str(tmp_path / "pyenv"))
    assert other_pythons.find_python(99) is None
    real = tmp_path / "pyenv" / "versions" / "3.99.1" / "bin" / "python3.99"
    real.parent.mkdir(parents=True)
    real.write_text("#!/bin/sh\necho cpython 3.99.1\n")
    real.chmod(0o755)
    assert other_pythons.find_python(99) == (str(real), "3.99.1")
