"""The type checkers are part of the test command: mypy --strict and pyright (standard mode)
report no error on the package, pyright's --verifytypes finds its public surface typed, and a
class registered with the serializer as a decorator keeps its own type.

They run as subprocesses of the interpreter running the tests, so they see its packages
(psycopg's types, for one). Both come with the ``test`` extra; a missing one fails here rather
than being skipped. Their verdict does not depend on the interpreter that runs them (each checks
against the ``python_version`` set in pyproject.toml, with its own bundled stubs), so the other
interpreters' runs (tools/other_pythons.py) leave this module out.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
MIN_COMPLETENESS = 0.99
"""The least share of the public symbols whose types pyright --verifytypes must find declared."""


def _require(module: str) -> None:
    if importlib.util.find_spec(module) is None:
        pytest.fail(f"{module} is not installed: pip install -e '.[test]' brings it")


def _env() -> dict[str, str]:
    env = dict(os.environ)
    # pyright resolves `import orchestrix` through the interpreter's sys.path; an editable
    # install is an import hook it cannot follow, so the checkout comes first.
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    # The wrapper would otherwise ask the package index whether a newer pyright exists.
    env["PYRIGHT_PYTHON_IGNORE_WARNINGS"] = "1"
    return env


def _run(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600, check=False
    )


def _mypy(*arguments: str, cache: Path) -> subprocess.CompletedProcess[str]:
    _require("mypy")
    # The cache goes to the test's temporary directory: the repository stays clean.
    return _run(sys.executable, "-m", "mypy", "--strict", "--cache-dir", str(cache), *arguments)


def _pyright(*arguments: str) -> dict[str, Any]:
    """pyright's JSON report (--outputjson), run by this interpreter against its own packages."""
    _require("pyright")
    done = _run(sys.executable, "-m", "pyright", "--pythonpath", sys.executable, "--outputjson", *arguments)
    try:
        report: dict[str, Any] = json.loads(done.stdout)
    except ValueError:
        pytest.fail(f"pyright gave no report (exit {done.returncode}):\n{done.stdout}\n{done.stderr}")
    return report


def _diagnostics(report: dict[str, Any]) -> list[str]:
    """pyright's errors and warnings, one line each: file:line:column: message (rule)."""
    lines = []
    for found in report.get("generalDiagnostics", []):
        if found["severity"] not in ("error", "warning"):
            continue
        start = found.get("range", {}).get("start", {"line": -1, "character": -1})
        where = f"{found.get('file', '?')}:{start['line'] + 1}:{start['character'] + 1}"
        lines.append(f"{where}: {found['severity']}: {found['message']} ({found.get('rule', '')})")
    return lines


# -- the package -------------------------------------------------------------------------------


def test_mypy_strict_finds_no_error_in_the_package(tmp_path: Path) -> None:
    done = _mypy("orchestrix", cache=tmp_path / "mypy-cache")
    assert done.returncode == 0, done.stdout + done.stderr


def test_pyright_finds_no_error_in_the_package() -> None:
    report = _pyright("orchestrix")
    problems = _diagnostics(report)
    assert problems == [], "\n".join(problems)
    assert report["summary"]["filesAnalyzed"] > 50  # the package itself was read, not an empty list


def test_the_checkers_settings_are_the_ones_the_test_runs() -> None:
    # A bare `mypy` or `pyright` in the checkout (an editor, a pre-commit hook) checks the same.
    tool = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]
    assert tool["mypy"]["strict"] is True and tool["mypy"]["files"] == ["orchestrix"]
    assert tool["pyright"]["typeCheckingMode"] == "standard" and tool["pyright"]["include"] == ["orchestrix"]
    # Checked against the oldest Python supported: a newer feature used by mistake is reported.
    assert tool["mypy"]["python_version"] == tool["pyright"]["pythonVersion"] == "3.11"


def test_pyright_verifytypes_finds_the_public_surface_typed() -> None:
    assert (ROOT / "orchestrix" / "py.typed").is_file()  # without it, checkers ignore the annotations
    report = _pyright("--verifytypes", "orchestrix", "--ignoreexternal")
    completeness = report["typeCompleteness"]
    # The checkout's package was checked, not a copy installed elsewhere.
    assert Path(completeness["packageRootDirectory"]) == ROOT / "orchestrix"
    untyped = [
        f"{symbol['name']}: {'; '.join(d['message'] for d in symbol['diagnostics'])}"
        for symbol in completeness["symbols"]
        if symbol["isExported"] and not symbol["isTypeKnown"]
    ]
    score = completeness["completenessScore"]
    assert score >= MIN_COMPLETENESS, f"{score:.1%} of the public symbols typed:\n" + "\n".join(untyped)


# -- what users' code sees ---------------------------------------------------------------------

REGISTERED = """
from decimal import Decimal
from typing import assert_type

import attrs

from orchestrix.core.messaging.serializer import Serializer

serializer = Serializer()


@serializer.register
@attrs.frozen
class Paid:
    amount: Decimal


@attrs.frozen
class Refunded:
    amount: Decimal


assert_type(Paid, type[Paid])
assert_type(serializer.register(Refunded, "Refund.v1"), type[Refunded])
paid: Paid = Paid(Decimal("1.50"))
assert_type(Paid(amount=Decimal("2")).amount, Decimal)
wrong = Paid(1.5)  # WRONG: a float for a Decimal field
"""
WRONG_LINE = next(n for n, line in enumerate(REGISTERED.splitlines(), 1) if "# WRONG" in line)


@pytest.fixture
def registered(tmp_path: Path) -> Path:
    path = tmp_path / "registered.py"
    path.write_text(REGISTERED)
    return path


def test_mypy_sees_the_constructor_of_a_class_registered_as_a_decorator(
    registered: Path, tmp_path: Path
) -> None:
    done = _mypy("--follow-imports=silent", str(registered), cache=tmp_path / "mypy-cache")
    errors = [line for line in done.stdout.splitlines() if ": error:" in line]
    # Only the float is refused: the decorated name is still the class, with its own __init__.
    assert len(errors) == 1, done.stdout + done.stderr
    assert errors[0].startswith(f"{registered}:{WRONG_LINE}: error:"), errors
    assert '"float"' in errors[0] and '"Decimal"' in errors[0] and "[arg-type]" in errors[0], errors


def test_pyright_sees_the_constructor_of_a_class_registered_as_a_decorator(registered: Path) -> None:
    problems = _diagnostics(_pyright(str(registered)))
    assert len(problems) == 1, "\n".join(problems)
    assert problems[0].startswith(f"{registered}:{WRONG_LINE}:"), problems
    assert '"float"' in problems[0] and '"Decimal"' in problems[0], problems
