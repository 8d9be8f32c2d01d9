"""The docs runner itself: it catches wrong output, unrun code and unexplained skips."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from tests.docs.blocks import DocsError, outputs_match, parse, run_page, shows_file


def page(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "page.md"
    path.write_text(textwrap.dedent(text).lstrip())
    return path


def test_blocks_of_a_page_share_one_namespace_and_output_is_checked(tmp_path: Path) -> None:
    md = page(
        tmp_path,
        """
        ```python
        x = 2
        ```

        Some prose.

        ```python
        print(x * 21)
        ```

        ```text
        42
        ```
        """,
    )
    assert run_page(md, tmp_path) is None


def test_output_that_differs_fails_and_names_the_line(tmp_path: Path) -> None:
    md = page(
        tmp_path,
        """
        # t

        ```python
        print(41)
        ```
        ```text
        42
        ```
        """,
    )
    with pytest.raises(DocsError, match=r":3: the output shown at line 6"):
        run_page(md, tmp_path)


def test_a_failing_example_fails(tmp_path: Path) -> None:
    md = page(tmp_path, "```python\nimport orchestrix.no_such_module\n```\n")
    with pytest.raises(DocsError, match="ModuleNotFoundError"):
        run_page(md, tmp_path)


def test_ellipsis_matches_changing_text() -> None:
    assert outputs_match("id: ...\nok\n", "id: 3f2a-9c\nok\n")
    assert not outputs_match("id: ...\nok\n", "id: 3f2a-9c\nnot ok\n")


def test_a_skip_needs_a_reason(tmp_path: Path) -> None:
    md = page(tmp_path, "<!-- docs-test: skip -->\n```python\nraise SystemExit\n```\n")
    with pytest.raises(DocsError, match="needs a reason"):
        parse(md)


def test_a_skip_with_a_reason_does_not_run_the_block(tmp_path: Path) -> None:
    md = page(tmp_path, "<!-- docs-test: skip needs a server -->\n```python\nraise SystemExit\n```\n")
    assert run_page(md, tmp_path) is None


def test_needs_env_skips_the_rest_of_the_page_when_unset(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.delenv("ORCHESTRIX_DOCS_SELFTEST", raising=False)
    md = page(
        tmp_path, "<!-- docs-test: needs-env ORCHESTRIX_DOCS_SELFTEST -->\n```python\nraise SystemExit\n```\n"
    )
    assert "ORCHESTRIX_DOCS_SELFTEST" in (run_page(md, tmp_path) or "")
    monkeypatch.setenv("ORCHESTRIX_DOCS_SELFTEST", "1")
    with pytest.raises(DocsError, match="SystemExit"):
        run_page(md, tmp_path)


def test_python_spelled_otherwise_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DocsError, match="use ```python"):
        parse(page(tmp_path, "```py\nprint(1)\n```\n"))


def test_unknown_or_stray_markers_are_refused(tmp_path: Path) -> None:
    with pytest.raises(DocsError, match="unknown marker"):
        parse(page(tmp_path, "<!-- docs-test: skipp x -->\n```python\n```\n"))
    with pytest.raises(DocsError, match="directly precede"):
        parse(page(tmp_path, "<!-- docs-test: skip x -->\nprose\n```python\n```\n"))
    with pytest.raises(DocsError, match="names no file"):
        parse(page(tmp_path, "<!-- docs-file: no/such.py -->\n```python\n```\n"))


def test_a_shell_python_command_with_output_runs_and_is_checked(tmp_path: Path) -> None:
    md = page(tmp_path, "```sh\npython -c 'print(6 * 7)'\n```\n\n```text\n41\n```\n")
    with pytest.raises(DocsError, match="not what the example prints"):
        run_page(md, tmp_path)


def test_a_shell_command_without_output_is_not_run(tmp_path: Path) -> None:
    md = page(tmp_path, "```sh\npython -c 'raise SystemExit(1)'\n```\n")
    assert run_page(md, tmp_path) is None


def test_a_pytest_block_must_pass(tmp_path: Path) -> None:
    bad = page(tmp_path, "<!-- docs-test: pytest -->\n```python\ndef test_no():\n    assert False\n```\n")
    with pytest.raises(DocsError, match="pytest failed"):
        run_page(bad, tmp_path)


def test_the_parts_of_a_file_must_make_up_the_whole_file(tmp_path: Path) -> None:
    md = page(
        tmp_path,
        """
        <!-- docs-file: pyproject.toml -->
        ```python
        a = 1
        ```

        <!-- docs-file: pyproject.toml -->
        ```python
        def f():
            return a
        ```
        """,
    )
    parts = parse(md)
    assert shows_file(parts, "a = 1\n\n\ndef f():\n    return a\n")
    assert shows_file(parts, "a = 1\ndef f():\n    return a\n")
    assert not shows_file(parts, "a = 1\nb = 2\n\ndef f():\n    return a\n")
    assert not shows_file(parts[::-1], "a = 1\n\n\ndef f():\n    return a\n")
    assert not shows_file(parts, "a = 1\n\n\ndef f():\n    return a\n# more\n")
