"""The docs site builds cleanly, and every example in it runs and prints what the page shows."""

from __future__ import annotations

import importlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.docs.blocks import DOCS, ROOT, excerpts, file_parts, module_name, pages, run_page, shows_file


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The site, built once for this module's tests (strict: any warning fails the build)."""
    site_dir = tmp_path_factory.mktemp("site")
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site_dir)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert result.returncode == 0, result.stderr
    return site_dir


def test_the_site_builds_strictly(site: Path) -> None:
    assert (site / "index.html").is_file()


def _reference_html(site: Path) -> dict[str, str]:
    return {p.parent.name: p.read_text() for p in (site / "reference").glob("*/index.html")}


def test_the_api_reference_shows_the_public_api_only(site: Path) -> None:
    pages = _reference_html(site)
    assert set(pages) == {"core", "stores", "testing"}
    ids = {i for html in pages.values() for i in re.findall(r'id="(orchestrix\.[\w.]+)"', html)}
    rendered = {
        m
        for page in (DOCS / "reference").glob("*.md")
        for m in re.findall(r"^::: (\S+)", page.read_text(), re.M)
    }
    assert rendered <= ids
    for name in ids - rendered:
        module = max((m for m in rendered if name.startswith(m + ".")), key=len)
        top = name[len(module) + 1 :]
        exported = importlib.import_module(module).__all__
        assert top.split(".")[0] in exported, f"{name} is shown but not in {module}.__all__"
    for internal in ("slots_constructor", "new_event", "new_recorded", "conflict_backoff"):
        assert not [i for i in ids if i.endswith("." + internal)], internal


def test_the_api_reference_cross_references_work(site: Path) -> None:
    pages = _reference_html(site)
    ids = {p: set(re.findall(r'id="([^"]+)"', html)) for p, html in pages.items()}
    links = [
        (p, page, anchor)
        for p, html in pages.items()
        for page, anchor in re.findall(r'href="(?:\.\./(\w+)/)?#([^"]+)"', html)
    ]
    assert len(links) > 100
    broken = [f"{p}: ../{page}/#{anchor}" for p, page, anchor in links if anchor not in ids[page or p]]
    assert broken == []
    # reST roles in docstrings became links, none is left as raw text
    assert not re.search(r":(class|meth|func|attr|exc|mod):`", "".join(pages.values()))
    assert 'href="#orchestrix.core.execution.runner.SagaRunner.retry"' in pages["core"]
    assert 'href="../core/#orchestrix.core.messaging.messages.RecordedEvent"' in pages["stores"]


def test_the_saga_flows_are_state_diagrams(site: Path) -> None:
    for page in ("sagas", "tutorial"):
        html = (site / page / "index.html").read_text()
        assert '<pre class="mermaid"><code>stateDiagram-v2' in html, page
    # No text art is left on the sagas page (the tutorial still shows saga.py's docstring).
    assert "──" not in (site / "sagas" / "index.html").read_text()


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
