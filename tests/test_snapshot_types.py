"""Code typed against SnapshotStore type-checks with every store's snapshots (mypy --strict, pyright)."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

from tests.test_protocol_types import _run

USER_CODE = """
from typing import Any

from orchestrix.core.messaging import Serializer
from orchestrix.core.eventsourcing import AggregateRepository, AggregateRoot, Snapshot, SnapshotStore
from orchestrix.infrastructure.file import FileEventStore, FileSnapshotStore
from orchestrix.infrastructure.memory import InMemoryEventStore, InMemorySnapshotStore
from orchestrix.infrastructure.postgres import PostgresEventStore, PostgresSnapshotStore


class Counter(AggregateRoot):
    snapshot_every = 500
    snapshot_version = 2

    def snapshot(self) -> dict[str, Any]:
        return {"n": self.version}

    def restore(self, state: dict[str, Any]) -> None:
        pass


def newest(snapshots: SnapshotStore, stream: str) -> int:
    found: Snapshot | None = snapshots.load(stream)
    return -1 if found is None else found.version


async def newest_async(snapshots: SnapshotStore, stream: str) -> int:
    found = await snapshots.load_async(stream)
    return -1 if found is None else found.version


def wire(memory: InMemoryEventStore, file: FileEventStore, postgres: PostgresEventStore) -> list[int]:
    stores: list[SnapshotStore] = [
        InMemorySnapshotStore(),
        memory.snapshots(),
        file.snapshots(),
        FileSnapshotStore("snapshots", Serializer()),
        postgres.snapshots(),
    ]
    assert isinstance(postgres.snapshots(), PostgresSnapshotStore)
    repo = AggregateRepository(file, snapshots=file.snapshots())
    return [newest(s, "Counter-1") for s in stores] + [repo.load(Counter, "1").version]
"""


@pytest.fixture
def user_code(tmp_path: Path) -> Path:
    path = tmp_path / "user_code.py"
    path.write_text(USER_CODE)
    return path


def test_mypy_strict_accepts_every_snapshot_store(user_code: Path, tmp_path: Path) -> None:
    pytest.importorskip("mypy")
    done = _run(
        sys.executable, "-m", "mypy", "--strict", "--follow-imports=silent",
        "--cache-dir", str(tmp_path / "cache"), str(user_code),
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr


def test_pyright_accepts_every_snapshot_store(user_code: Path) -> None:
    pyright = shutil.which("pyright") or str(Path(sys.executable).with_name("pyright"))
    if not Path(pyright).exists():
        pytest.skip("pyright is not installed")
    done = _run(pyright, str(user_code))
    assert done.returncode == 0, done.stdout + done.stderr
