"""Check what one interpreter's test run cannot: the wheel, and every other Python on this machine.

Run from the repository's test command, after the suite, with the interpreter that ran it:

    .venv/bin/python tools/other_pythons.py

1. The wheel: builds it, installs it into a fresh venv (nothing but its own dependencies), and
   from outside the checkout imports orchestrix, runs ``orchestrix --help`` and the README's
   self-contained example, and checks that ``orchestrix.testing`` names its extra when pytest is
   missing.
2. Other interpreters: looks for every CPython 3.11 or newer on PATH (``python3.N``) and under
   pyenv, says which it found, and runs the tests named in ``SUBSET`` under each one but the
   running interpreter's version, in a venv of its own (``.venv-3.N``, reused between runs), the
   interpreters side by side.
   A version the package claims (its classifiers) that is absent is skipped, saying so.

Exit status: 0 when everything found passed, 1 otherwise.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIRST_MINOR, LAST_MINOR = 11, 20
"""The CPython 3 minor versions looked for: 3.11 (the oldest supported) up to a future 3.20."""

SUBSET = [
    "tests",
    "--ignore=tests/docs",
    "--ignore=tests/test_types.py",
    "-m",
    "not slow",
    "--deselect=tests/banking/test_stateful.py::TestFileBank::runTest",
    "--deselect=tests/infrastructure/test_postgres_faults.py::test_a_server_restart_mid_run_loses_nothing_acknowledged",
]
"""What the other interpreters run: every test module but the docs' (they build the site and
run the pages' examples: they test the docs, not the interpreter), without the ``slow``
test (a SIGKILL crash loop) and the banking state machine on the file store (a third of the
time; the same machine runs on the memory store, and the file store's own model test runs),
nor the type checkers (tests/test_types.py: they check against the Python version set in
pyproject.toml whichever interpreter runs them, so a second run could only repeat the verdict,
at about 25 s an interpreter), nor the server-restart test (the interpreters run side by side
against one PostgreSQL server: a restart would cut the other run's connections; the main run
has it). The power-loss test explores ``POWER_LOSS_STATES`` disk states instead of the main
run's 10,000 (see ``SUBSET_ENV``).
Every module of orchestrix and of the bases is still imported and exercised; the main run has
the rest. About 145 s for both interpreters side by side (2 vCPUs), against 300 s for the whole suite."""

SUBSET_ENV = {"ORCHESTRIX_POWER_LOSS_STATES": "1000", "HYPOTHESIS_PROFILE": "interpreters"}
"""The environment of the other interpreters' runs. The power-loss test builds its disk states in
pure Python, the same on every interpreter: the main run explores 10,000 of them (a minute), and
each other interpreter 1,000, enough to run every branch of the model under that interpreter.
Likewise the property-based tests: the main run searches with the ``ci`` profile (100 examples,
300 for the banking state machines), the others with ``interpreters`` (20, derandomized), which
runs every rule and branch on that interpreter at a fifth of the time (CI keeps within 10
minutes on 2 cores)."""

NOT_SOURCES = (".git", ".venv*", "build", "dist", "site", "*.egg-info", "__pycache__", ".*_cache")
"""What the wheel check leaves out of its copy of the repository."""

EXTRAS = "testing,postgres-binary"
"""What the other interpreters' venvs install besides the package: pytest, hypothesis, psycopg."""


def main(argv: list[str] | None = None) -> int:
    """Run the wheel check and the other interpreters' tests; return the exit status."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--no-wheel", action="store_true", help="skip the wheel check")
    parser.add_argument("--no-pythons", action="store_true", help="skip the other interpreters")
    parser.add_argument("--full", action="store_true", help="run the whole suite, not the subset")
    args = parser.parse_args(argv)
    failed: list[str] = []
    if not args.no_wheel and not wheel_check():
        failed.append("the wheel check")
    if not args.no_pythons:
        subset = ["tests"] if args.full else SUBSET
        failed += other_pythons(subset)
    if failed:
        say(f"FAILED: {', '.join(failed)}")
        return 1
    return 0


def say(line: str) -> None:
    print(f"[other-pythons] {line}", flush=True)


# -- the wheel -------------------------------------------------------------------------------------


def wheel_check() -> bool:
    """Build the wheel, install it alone into a fresh venv, and use it from outside the checkout."""
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="orchestrix-wheel-") as tmp:
        work = Path(tmp)
        say("building the wheel and installing it into a fresh venv")
        # Built from a copy: setuptools builds in the source tree, whose build/ could hold
        # modules since deleted, and the wheel must hold only what the sources do.
        source = work / "source"
        shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(*NOT_SOURCES))
        dist = work / "dist"
        run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(dist), str(source)])
        (wheel,) = dist.glob("orchestrix_es-*.whl")
        run([sys.executable, "-m", "venv", str(work / "venv")])
        python = work / "venv" / "bin" / "python"
        run([str(python), "-m", "pip", "install", "--quiet", str(wheel)])
        outside = work / "elsewhere"  # no checkout on sys.path
        outside.mkdir()
        problems = []
        where = probe(python, outside, "import orchestrix; print(orchestrix.__file__)")
        if not where.startswith(str(work / "venv")):
            problems.append(f"import orchestrix found {where}, not the installed wheel")
        elif not (Path(where).parent / "py.typed").is_file():
            problems.append("the wheel has no orchestrix/py.typed: type checkers would ignore its types")
        helped = subprocess.run(
            [str(work / "venv" / "bin" / "orchestrix"), "--help"], cwd=outside, capture_output=True, text=True
        )
        if helped.returncode != 0 or "inspect" not in helped.stdout:
            problems.append(f"orchestrix --help exited {helped.returncode}: {helped.stderr.strip()}")
        example = readme_block("<!-- example:standalone -->")
        ran = subprocess.run([str(python), "-"], input=example, cwd=outside, capture_output=True, text=True)
        if ran.returncode != 0:
            problems.append(f"the README's standalone example failed:\n{ran.stderr}")
        testing = subprocess.run(
            [str(python), "-c", "import orchestrix.testing"], cwd=outside, capture_output=True, text=True
        )
        if testing.returncode == 0 or "orchestrix-es[testing]" not in testing.stderr:
            problems.append(f"orchestrix.testing without pytest did not name the extra:\n{testing.stderr}")
    seconds = time.monotonic() - started
    if problems:
        for problem in problems:
            say(f"wheel check: {problem}")
        return False
    say(
        f"wheel check passed in {seconds:.0f} s: {wheel.name} installs alone; import, orchestrix --help, "
        "the standalone example and the testing extra's message work outside the checkout; py.typed is in"
    )
    return True


def readme_block(marker: str) -> str:
    text = (ROOT / "README.md").read_text()
    found = re.search(re.escape(marker) + r"\s*```python\n(.*?)```", text, re.S)
    if found is None:
        raise SystemExit(f"README.md has no python block after {marker}")
    return found.group(1)


def probe(python: Path, cwd: Path, code: str) -> str:
    done = subprocess.run([str(python), "-c", code], cwd=cwd, capture_output=True, text=True)
    return done.stdout.strip() if done.returncode == 0 else f"an error: {done.stderr.strip()}"


def run(command: list[str], **kwargs: object) -> None:
    """Run a setup step; on failure show its output and stop."""
    done = subprocess.run(command, capture_output=True, text=True, **kwargs)  # type: ignore[call-overload]
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} exited {done.returncode}:\n{done.stdout}{done.stderr}")


# -- other interpreters ----------------------------------------------------------------------------


def claimed_minors() -> set[int]:
    """The 3.N versions the package's classifiers claim."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return {
        int(m[1])
        for c in project["classifiers"]
        if (m := re.fullmatch(r"Programming Language :: Python :: 3\.(\d+)", c))
    }


def find_python(minor: int) -> tuple[str, str] | None:
    """(path, version) of a working CPython 3.``minor``, on PATH or under pyenv, or None."""
    name = f"python3.{minor}"
    pyenv_root = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv"))
    pyenv = sorted(
        (str(p) for p in pyenv_root.glob(f"versions/3.{minor}.*/bin/{name}")), key=_version_key, reverse=True
    )
    for candidate in [c for c in [shutil.which(name), *pyenv] if c]:
        # A pyenv shim exists for every installed version but runs only the selected ones.
        code = "import sys, platform; print(sys.implementation.name, platform.python_version())"
        done = subprocess.run(
            [candidate, "-c", code],
            capture_output=True,
            text=True,
        )
        implementation, _, version = done.stdout.strip().partition(" ")
        if done.returncode == 0 and implementation == "cpython" and version.startswith(f"3.{minor}."):
            return candidate, version
    return None


def _version_key(path: str) -> tuple[int, ...]:
    match = re.search(r"versions/(\d+)\.(\d+)\.(\d+)", path)
    return tuple(int(x) for x in match.groups()) if match else (0,)


def other_pythons(subset: list[str]) -> list[str]:
    """Run ``subset`` under each other interpreter found; return what failed."""
    running = sys.version_info[:2]
    claimed = claimed_minors()
    found: dict[int, tuple[str, str]] = {}
    for minor in range(FIRST_MINOR, LAST_MINOR + 1):
        python = find_python(minor)
        if (3, minor) == running:
            say(f"python3.{minor}: {sys.executable} ({sys.version.split()[0]}) ran the main suite")
        elif python is not None:
            found[minor] = python
            say(f"python3.{minor}: found {python[0]} ({python[1]})")
        elif minor in claimed:
            say(f"python3.{minor}: SKIPPED, not found (no python3.{minor} on PATH or under {pyenv_hint()})")
    # The runs go side by side: most of a run is spent waiting on fsync, sockets and sleeps, not
    # on the CPU, so two at once take little longer than one (CI keeps within 10 minutes).
    commands = {minor: prepare(minor, executable, subset) for minor, (executable, _) in found.items()}
    results = run_side_by_side(commands)
    failed = [f"python3.{minor}" for minor, (ok, _) in results.items() if not ok]
    if results:
        say(
            "other interpreters (side by side): "
            + "; ".join(
                f"3.{minor} ({found[minor][1]}) {'passed' if ok else 'FAILED'} in {seconds:.0f} s"
                for minor, (ok, seconds) in results.items()
            )
        )
    return failed


def pyenv_hint() -> str:
    return os.environ.get("PYENV_ROOT", "~/.pyenv")


def prepare(minor: int, python: str, subset: list[str]) -> list[str]:
    """Set up ``.venv-3.minor`` with ``python``; return the command that runs ``subset`` there."""
    venv = ROOT / f".venv-3.{minor}"
    venv_python = venv / "bin" / "python"
    if not venv_python.exists():
        say(f"python3.{minor}: creating {venv.name}")
        run([python, "-m", "venv", str(venv)])
    say(f"python3.{minor}: installing the package with [{EXTRAS}]")
    run([str(venv_python), "-m", "pip", "install", "--quiet", "-e", f".[{EXTRAS}]"], cwd=ROOT)
    return [str(venv_python), "-m", "pytest", "-q", "-p", "no:cacheprovider", *subset]


def run_side_by_side(commands: dict[int, list[str]]) -> dict[int, tuple[bool, float]]:
    """Run every interpreter's command at once; show each one's output as it ends.

    Each run writes to a file of its own, shown whole when it is over (its last lines if it
    passed, all of it if it failed), so that two runs' lines never interleave.
    """
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="orchestrix-pythons-") as tmp:
        running: dict[int, tuple[subprocess.Popen[bytes], Path]] = {}
        for minor, command in commands.items():
            log = Path(tmp) / f"3.{minor}.log"
            say(f"python3.{minor}: {' '.join(command[1:])} (output: at its end)")
            with log.open("wb") as out:
                child = subprocess.Popen(
                    command, cwd=ROOT, env={**os.environ, **SUBSET_ENV}, stdout=out, stderr=subprocess.STDOUT
                )
            running[minor] = (child, log)
        results: dict[int, tuple[bool, float]] = {}
        shown_at = 0.0
        while running:
            for minor, (child, log) in list(running.items()):
                if child.poll() is None:
                    continue
                del running[minor]
                ok = child.returncode == 0
                results[minor] = (ok, time.monotonic() - started)
                lines = log.read_text(errors="replace").splitlines()
                shown = lines[-3:] if ok else lines
                say(f"python3.{minor}: {'passed' if ok else f'FAILED (exit {child.returncode})'}")
                for line in shown:
                    print(f"  3.{minor} | {line}", flush=True)
            if running:
                time.sleep(0.5)
                elapsed = time.monotonic() - started
                if elapsed >= shown_at + 30:  # a line every 30 s, so a long wait shows it is alive
                    shown_at = elapsed
                    say(f"still running after {elapsed:.0f} s: {', '.join(f'3.{m}' for m in running)}")
    return dict(sorted(results.items()))


if __name__ == "__main__":
    sys.exit(main())
