"""The docs site builds cleanly, and every example in it runs and prints what the page shows."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.docs.blocks import DOCS, ROOT, excerpts, file_parts, module_name, pages, run_page, shows_file


def test_the_site_builds_strictly(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "site" / "index.html").is_file()


def test_every_page_is_in_the_nav() -> None:
    config = (ROOT / "mkdocs.yml").read_text()
    missing = [str(p.relative_to(DOCS)) for p in pages() if str(p.relative_to(DOCS)) not in config]
    assert missing == [], f"add {missing} to the nav of mkdocs.yml (for example under Stores)"


@pytest.mark.parametrize("page", pages(), ids=lambda p: str(p.relative_to(DOCS)))
def test_the_examples_of_the_page_run_and_print_what_it_shows(page: Path, tmp_path: Path) -> None:
    skipped = run_page(page, tmp_path)
    if skipped:
        pytest.skip(skipped)


@pytest.mark.parametrize("path", sorted(file_parts()), ids=str)
def test_a_file_shown_in_the_docs_is_exactly_the_file(path: str) -> None:
    parts = file_parts()[path]
    where = ", ".join(p.where for p in parts)
    assert shows_file(parts, (ROOT / path).read_text()), f"{path} differs from what {where} shows"
    name = module_name(path)
    if name is not None:
        importlib.import_module(name)


@pytest.mark.parametrize("block", excerpts(), ids=lambda b: b.where)
def test_an_excerpt_shown_in_the_docs_is_verbatim_in_its_file(block) -> None:  # type: ignore[no-untyped-def]
    source = block.marker("excerpt")
    assert block.code.strip("\n") in (ROOT / source).read_text(), f"{block.where} is not in {source}"
