"""The README's commands and its usage example stay true."""

import re
import subprocess
import sys
from pathlib import Path

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


def test_ci_runs_the_readme_test_command() -> None:
    command = block_after("<!-- ci:test-command", "sh").strip()
    assert "pytest" in command
    assert "README.md" in (ROOT / ".ci" / "run").read_text()


def test_the_readme_opens_with_the_two_commands() -> None:
    blocks = re.findall(r"```sh\n(.*?)```", README, re.S)
    assert "banking_demo.main" in blocks[0]
    assert "pytest" in blocks[1]
