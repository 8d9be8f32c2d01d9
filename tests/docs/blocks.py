"""Find the code blocks of the docs' Markdown pages and run them.

The rules (also stated in docs/writing-docs.md):

- Every ```python block runs. The blocks of one page run in order in one namespace (a fresh
  module per page), with the repository root as working directory, so ``bases...`` imports work.
- A ```text block that directly follows a runnable block is its expected stdout. ``...`` in it
  matches any text (doctest's ELLIPSIS), for ids and times that change from run to run.
- A ```sh block holding one ``python -m MODULE ...`` or ``python FILE ...`` command and followed by a
  ```text block is run (with this interpreter) and its stdout compared.
- An HTML comment right before a block changes what happens to it:
  - ``<!-- docs-file: PATH -->``: the block is PATH's content, or one part of it: the parts of one
    file, in order and with only blank lines between them, make up the whole file. It is not
    executed; the file is imported.
  - ``<!-- docs-excerpt: PATH -->``: the block appears verbatim in PATH. It is not executed.
  - ``<!-- docs-test: pytest -->``: the block is a test module; it is written to a temporary file
    and pytest must pass on it.
  - ``<!-- docs-test: needs-env NAME -->``: this block and the rest of the page run only when the
    environment variable NAME is set; otherwise the page's test skips, saying so.
  - ``<!-- docs-test: skip REASON -->``: the block is not run. A reason is required.
"""

from __future__ import annotations

import contextlib
import doctest
import io
import os
import re
import shlex
import subprocess
import sys
import types
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"

RUNNABLE = {"python"}
# Fence languages that would look like Python to a reader but would silently not run.
REFUSED = {"py", "python3", "pycon", "ipython"}

_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<ticks>`{3,})(?P<lang>[\w+-]*)[^`]*$")
_MARKER = re.compile(r"^\s*<!--\s*docs-(?P<kind>test|file|excerpt):\s*(?P<arg>.*?)\s*-->\s*$")
_SH_PYTHON = re.compile(r"^(python3?|\.venv/bin/python3?)\s")


class DocsError(Exception):
    """A page breaks the docs' rules, or one of its examples fails."""


@dataclass
class Block:
    """One fenced block of a page, with what the markers before it said."""

    page: Path
    line: int  # 1-based line of the opening fence
    lang: str
    code: str
    markers: list[tuple[str, str]] = field(default_factory=list)
    output: str | None = None
    output_line: int | None = None

    @property
    def where(self) -> str:
        """``docs/page.md:LINE``, for messages."""
        return f"{_rel(self.page)}:{self.line}"

    def marker(self, kind: str) -> str | None:
        """The argument of this block's marker of ``kind`` (``test``, ``file``, ``excerpt``)."""
        for k, arg in self.markers:
            if k == kind:
                return arg
        return None


def pages() -> list[Path]:
    """Every Markdown page of the docs site, sorted."""
    return sorted(DOCS.rglob("*.md"))


def parse(page: Path, text: str | None = None) -> list[Block]:
    """The fenced blocks of a page, with markers and expected outputs attached."""
    lines = (page.read_text() if text is None else text).splitlines()
    blocks: list[Block] = []
    pending: list[tuple[str, str]] = []
    pending_line = 0
    last_runnable: Block | None = None  # a block whose output may follow
    i = 0
    while i < len(lines):
        line = lines[i]
        marker = _MARKER.match(line)
        if marker:
            if not pending:
                pending_line = i + 1
            pending.append((marker["kind"], marker["arg"]))
            i += 1
            continue
        fence = _FENCE.match(line)
        if fence is None:
            if line.strip():
                if pending:
                    raise DocsError(
                        f"{_rel(page)}:{pending_line}: a docs marker must directly precede a block"
                    )
                last_runnable = None
            i += 1
            continue
        indent, ticks, lang = fence["indent"], fence["ticks"], fence["lang"].lower()
        start = i
        body: list[str] = []
        i += 1
        while i < len(lines) and not (
            lines[i].startswith(indent + ticks) and lines[i][len(indent) :].strip() == ticks
        ):
            body.append(lines[i][len(indent) :] if lines[i].startswith(indent) else lines[i].lstrip())
            i += 1
        if i == len(lines):
            raise DocsError(f"{_rel(page)}:{start + 1}: unclosed code block")
        i += 1
        code = "\n".join(body) + "\n"
        if lang in REFUSED:
            raise DocsError(f"{_rel(page)}:{start + 1}: use ```python, not ```{lang}, so the block runs")
        if lang == "text" and last_runnable is not None and not pending:
            last_runnable.output = code
            last_runnable.output_line = start + 1
            last_runnable = None
            continue
        block = Block(page, start + 1, lang, code, pending)
        _check_markers(block)
        blocks.append(block)
        pending = []
        last_runnable = block if _runs(block) else None
    if pending:
        raise DocsError(f"{_rel(page)}:{pending_line}: a docs marker must directly precede a block")
    return blocks


def _rel(page: Path) -> str:
    try:
        return str(page.relative_to(ROOT))
    except ValueError:
        return str(page)


def _check_markers(block: Block) -> None:
    where = f"{_rel(block.page)}:{block.line}"
    for kind, arg in block.markers:
        if kind == "test":
            verb, _, rest = arg.partition(" ")
            if verb == "skip" and not rest.strip():
                raise DocsError(f"{where}: 'docs-test: skip' needs a reason")
            if verb == "needs-env" and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", rest.strip()):
                raise DocsError(f"{where}: 'docs-test: needs-env' needs one variable name")
            if verb not in ("skip", "needs-env", "pytest"):
                raise DocsError(f"{where}: unknown marker 'docs-test: {arg}'")
        elif not arg or not (ROOT / arg).is_file():
            raise DocsError(f"{where}: 'docs-{kind}: {arg}' names no file of the repository")


def _runs(block: Block) -> bool:
    """Whether the block is executed, so a following ```text block is its output."""
    if block.marker("file") is not None or block.marker("excerpt") is not None:
        return False
    if block.lang in RUNNABLE:
        return True
    return block.lang in ("sh", "bash") and _sh_python_command(block.code) is not None


def _sh_python_command(code: str) -> list[str] | None:
    lines = [line for line in code.splitlines() if line.strip()]
    if len(lines) != 1 or not _SH_PYTHON.match(lines[0]):
        return None
    return [sys.executable, *shlex.split(lines[0])[1:]]


def outputs_match(expected: str, actual: str) -> bool:
    """Exact match, except that ``...`` in ``expected`` stands for any text."""
    return doctest.OutputChecker().check_output(expected, actual, doctest.ELLIPSIS)


# -- running a page ---------------------------------------------------------------------------


def run_page(page: Path, tmp_dir: Path, blocks: list[Block] | None = None) -> str | None:
    """Run the page's blocks in order; return why the rest was skipped, or None if all ran."""
    blocks = parse(page) if blocks is None else blocks
    name = "docs_" + re.sub(r"\W", "_", _rel(page.with_suffix("")))
    module = types.ModuleType(name)
    module.__file__ = str(page)
    sys.modules[name] = module  # so attrs classes and type hints defined in a page resolve
    old_cwd = Path.cwd()
    os.chdir(ROOT)
    test_modules: list[Block] = []
    try:
        for block in blocks:
            test = block.marker("test") or ""
            if not _runs(block) and test != "pytest":
                continue
            if block.lang not in RUNNABLE and block.output is None:
                continue  # a shell command is run only to check the output shown after it
            if test.startswith("skip "):
                continue
            if test.startswith("needs-env "):
                variable = test.split(None, 1)[1].strip()
                if not os.environ.get(variable):
                    return f"{block.where} and what follows need {variable} to be set"
            if test == "pytest":
                test_modules.append(block)  # independent modules: one pytest run for the page
            elif block.lang in RUNNABLE:
                _run_python_block(block, module)
            else:
                _run_sh_block(block)
    finally:
        os.chdir(old_cwd)
        sys.modules.pop(name, None)
    if test_modules:
        _run_pytest_blocks(test_modules, tmp_dir)
    return None


def _run_python_block(block: Block, module: types.ModuleType) -> None:
    # Leading newlines make traceback line numbers point at the Markdown page itself.
    code = compile("\n" * block.line + block.code, str(block.page), "exec")
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            exec(code, module.__dict__)
    except (Exception, SystemExit) as exc:
        raise DocsError(
            f"{block.where}: the example raised {type(exc).__name__}: {exc}\n"
            f"printed so far:\n{out.getvalue()}"
        ) from exc
    _compare(block, out.getvalue())


def _run_sh_block(block: Block) -> None:
    command = _sh_python_command(block.code)
    assert command is not None
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    if result.returncode != 0:
        raise DocsError(f"{block.where}: {block.code.strip()!r} exited {result.returncode}:\n{result.stderr}")
    _compare(block, result.stdout)


def _run_pytest_blocks(blocks: list[Block], tmp_dir: Path) -> None:
    files = []
    for block in blocks:
        stem = re.sub(r"\W", "_", block.page.stem)
        test_file = tmp_dir / f"test_docs_{stem}_line_{block.line}.py"
        test_file.write_text(block.code)
        files.append(str(test_file))
    result = subprocess.run(
        # tests.conftest brings the project's hypothesis profiles (derandomized in CI).
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "tests.conftest", *files],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if result.returncode != 0:
        where = ", ".join(b.where for b in blocks)
        raise DocsError(
            f"pytest failed on the test modules at {where} (files are named after their line):\n"
            f"{result.stdout}\n{result.stderr}"
        )


def _compare(block: Block, actual: str) -> None:
    if block.output is not None and not outputs_match(block.output, actual):
        raise DocsError(
            f"{block.where}: the output shown at line {block.output_line} is not what the example prints.\n"
            f"--- shown\n{block.output}--- printed\n{actual}"
        )


# -- blocks that show files ------------------------------------------------------------------


def file_parts() -> dict[str, list[Block]]:
    """The ``docs-file`` blocks of every page, by the file they show, in page order."""
    parts: dict[str, list[Block]] = {}
    for page in pages():
        for block in parse(page):
            path = block.marker("file")
            if path is not None:
                parts.setdefault(path, []).append(block)
    return parts


def excerpts() -> list[Block]:
    """Every ``docs-excerpt`` block of the docs."""
    return [b for page in pages() for b in parse(page) if b.marker("excerpt") is not None]


def shows_file(parts: list[Block], text: str) -> bool:
    """Whether the parts, in order and with only blank lines between them, make up exactly ``text``."""
    pattern = r"\n+".join(re.escape(p.code.strip("\n")) for p in parts)
    return re.fullmatch(pattern + r"\n", text) is not None


def module_name(path: str) -> str | None:
    """The importable module a repository file is, if it is one under ``bases`` or ``orchestrix``."""
    p = Path(path)
    if p.suffix != ".py" or p.parts[0] not in ("bases", "orchestrix"):
        return None
    return ".".join(p.with_suffix("").parts)
