"""Every base's main.py runs as a file from the repository root, as the layout invites, and has --help."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BASES = sorted(p.parent.name for p in (ROOT / "bases" / "orchestrix").glob("*/main.py"))
QUICK_RUN = {"banking_demo": ["--store", "memory"]}
"""Arguments for a run that keeps nothing (a base whose demo keeps nothing needs none)."""


def python(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *argv], cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_the_bases_are_found() -> None:
    assert {"banking_demo", "ecommerce_demo", "notifications_demo"} <= set(BASES)


@pytest.mark.parametrize("base", BASES)
def test_running_main_py_as_a_file_works_like_python_m(base: str) -> None:
    args = QUICK_RUN.get(base, [])
    as_file = python(f"bases/orchestrix/{base}/main.py", *args)
    assert as_file.returncode == 0, as_file.stderr
    as_module = python("-m", f"bases.orchestrix.{base}.main", *args)
    assert as_module.returncode == 0, as_module.stderr
    assert as_file.stdout.splitlines()[:3] == as_module.stdout.splitlines()[:3]
    assert len(as_file.stdout.splitlines()) > 3


@pytest.mark.parametrize("base", BASES)
@pytest.mark.parametrize("how", ["file", "module"])
def test_each_demo_has_help(base: str, how: str) -> None:
    module = f"bases.orchestrix.{base}.main"
    target = [f"bases/orchestrix/{base}/main.py"] if how == "file" else ["-m", module]
    done = python(*target, "--help")
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout.startswith(f"usage: python -m {module}")
    assert "-h, --help" in done.stdout
    refused = python(*target, "--no-such-option")
    assert refused.returncode == 2 and "unrecognized arguments: --no-such-option" in refused.stderr
