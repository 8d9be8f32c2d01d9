"""The README's commands and its usage example stay true."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def block_after(marker: str, language: str) -> str:
    match = re.search(re.escape(marker) + r".*?```" + language + r"\n(.*?)```", README, re.S)
    assert match, f"no {language} block after {marker!r} in README.md"
    return match.group(1)


def test_the_usage_example_runs_verbatim_from_the_repository_root() -> None:
    example = block_after("<!-- example:usage -->", "python")
    result = subprocess.run(
        [sys.executable, "-"], input=example, cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "Balance: 1500\n"


def test_the_standalone_example_needs_nothing_from_the_checkout(tmp_path: Path) -> None:
    example = block_after("<!-- example:standalone -->", "python")
    # Run away from the repository, with the checkout-only `bases` package made unimportable.
    guard = "import sys; sys.modules['bases'] = None\n"
    result = subprocess.run(
        [sys.executable, "-"],
        input=guard + example,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "Total: 13.70 after 2 events\n"
    assert "Total: 13.70 after 2 events" in README.split("<!-- example:standalone -->")[0]
    assert "bases" not in example


def test_the_test_command_also_runs_the_other_pythons_and_the_wheel_check() -> None:
    command = block_after("<!-- ci:test-command", "sh").strip()
    assert command.endswith("&& .venv/bin/python tools/other_pythons.py")
    assert (ROOT / "tools" / "other_pythons.py").is_file()


@pytest.mark.parametrize("marker", ["<!-- example:usage -->", "<!-- example:standalone -->"])
def test_the_docs_home_page_shows_the_readme_examples_verbatim(marker: str) -> None:
    # The page's own test (tests/docs) runs them and checks their output.
    home = (ROOT / "docs" / "index.md").read_text()
    assert f"```python\n{block_after(marker, 'python')}```" in home


def test_ci_runs_the_readme_test_command() -> None:
    command = block_after("<!-- ci:test-command", "sh").strip()
    assert "pytest" in command
    assert "README.md" in (ROOT / ".ci" / "run").read_text()


def test_the_readme_opens_with_the_two_commands() -> None:
    blocks = re.findall(r"```sh\n(.*?)```", README, re.S)
    assert "banking_demo.main" in blocks[0]
    assert "pytest" in blocks[1]
