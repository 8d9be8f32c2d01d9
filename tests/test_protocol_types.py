"""Code typed against the protocols type-checks with the real stores (mypy --strict, pyright)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

USER_CODE = """
from orchestrix.core.eventsourcing.store import EventStore
from orchestrix.core.execution.checkpoint import CheckpointStore, InMemoryCheckpointStore
from orchestrix.infrastructure.file import FileCheckpointStore, FileEventStore
from orchestrix.infrastructure.memory import InMemoryEventStore
from orchestrix.infrastructure.postgres import PostgresCheckpointStore, PostgresEventStore


def report(store: EventStore) -> int:
    with store as opened:
        return opened.last_position() if opened.checks_fences else 0


async def report_async(store: EventStore) -> int:
    return await store.last_position_async()


def wire(memory: InMemoryEventStore, file: FileEventStore, postgres: PostgresEventStore) -> list[int]:
    checkpoints: list[CheckpointStore] = [
        InMemoryCheckpointStore(),
        file.checkpoints(),
        FileCheckpointStore("cp.json"),
        postgres.checkpoints(),
    ]
    assert isinstance(postgres.checkpoints(), PostgresCheckpointStore)
    return [report(memory), report(file), report(postgres), len(checkpoints)]
"""


@pytest.fixture
def user_code(tmp_path: Path) -> Path:
    path = tmp_path / "user_code.py"
    path.write_text(USER_CODE)
    return path


def _run(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)


def test_mypy_strict_accepts_every_store_as_an_event_store(user_code: Path, tmp_path: Path) -> None:
    pytest.importorskip("mypy")
    # orchestrix's own modules are checked elsewhere; here only what a user's code sees of them
    done = _run(
        sys.executable, "-m", "mypy", "--strict", "--follow-imports=silent",
        "--cache-dir", str(tmp_path / "cache"), str(user_code),
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr


def test_pyright_accepts_every_store_as_an_event_store(user_code: Path) -> None:
    pyright = shutil.which("pyright") or str(Path(sys.executable).with_name("pyright"))
    if not Path(pyright).exists():
        pytest.skip("pyright is not installed")
    done = _run(pyright, str(user_code))
    assert done.returncode == 0, done.stdout + done.stderr
