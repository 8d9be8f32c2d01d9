"""FileCheckpointStore: durable named positions in one atomically replaced file."""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path

import pytest

from orchestrix.core.errors import StoreFormatError
from orchestrix.core.execution.checkpoint import CheckpointStore
from orchestrix.infrastructure.file import FileCheckpointStore
from orchestrix.infrastructure.file.errors import InvalidCheckpointError
from orchestrix.testing import CheckpointStoreContract


class TestFileCheckpointStore(CheckpointStoreContract):
    @pytest.fixture
    def checkpoints(self, tmp_path: Path) -> FileCheckpointStore:
        return FileCheckpointStore(tmp_path / "checkpoints.json")

    def reopen(self, checkpoints: CheckpointStore) -> CheckpointStore:
        assert isinstance(checkpoints, FileCheckpointStore)
        return FileCheckpointStore(checkpoints.path)


def test_an_unsaved_name_loads_as_zero(tmp_path: Path) -> None:
    checkpoints = FileCheckpointStore(tmp_path / "checkpoints.json")
    assert isinstance(checkpoints, CheckpointStore)
    assert checkpoints.load("runner") == 0
    assert not (tmp_path / "checkpoints.json").exists()


def test_saved_positions_survive_a_new_instance(tmp_path: Path) -> None:
    path = tmp_path / "data" / "checkpoints.json"
    checkpoints = FileCheckpointStore(path)
    checkpoints.save("runner", 7)
    checkpoints.save("projection 'ä'", 3)
    checkpoints.save("runner", 9)
    again = FileCheckpointStore(path)
    assert again.load("runner") == 9
    assert again.load("projection 'ä'") == 3
    stored = json.loads(path.read_text())
    assert stored == {
        "format": "orchestrix-checkpoints",
        "version": 1,
        "positions": {"projection 'ä'": 3, "runner": 9},
    }


def test_names_are_keys_never_file_names(tmp_path: Path) -> None:
    checkpoints = FileCheckpointStore(tmp_path / "cp.json")
    checkpoints.save("../../etc/passwd", 1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cp.json", "cp.json.lock"]
    assert checkpoints.load("../../etc/passwd") == 1


@pytest.mark.parametrize("name", ["", "a\x00b", 42, None])
def test_invalid_names_are_refused(tmp_path: Path, name: object) -> None:
    checkpoints = FileCheckpointStore(tmp_path / "cp.json")
    with pytest.raises(InvalidCheckpointError):
        checkpoints.save(name, 1)  # type: ignore[arg-type]
    with pytest.raises(InvalidCheckpointError):
        checkpoints.load(name)  # type: ignore[arg-type]
    assert not (tmp_path / "cp.json").exists()


@pytest.mark.parametrize("position", [-1, 1.0, "3", True, None])
def test_invalid_positions_are_refused_and_nothing_is_saved(tmp_path: Path, position: object) -> None:
    checkpoints = FileCheckpointStore(tmp_path / "cp.json")
    checkpoints.save("runner", 5)
    with pytest.raises(InvalidCheckpointError):
        checkpoints.save("runner", position)  # type: ignore[arg-type]
    assert checkpoints.load("runner") == 5


def test_a_directory_or_a_foreign_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(StoreFormatError, match="directory"):
        FileCheckpointStore(tmp_path)
    foreign = tmp_path / "notes.json"
    foreign.write_text('{"hello": 1}')
    with pytest.raises(StoreFormatError, match="not an orchestrix checkpoint file"):
        FileCheckpointStore(foreign)
    assert foreign.read_text() == '{"hello": 1}'
    (tmp_path / "text").write_text("not json")
    with pytest.raises(StoreFormatError):
        FileCheckpointStore(tmp_path / "text")


def test_a_newer_format_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "cp.json"
    path.write_text(json.dumps({"format": "orchestrix-checkpoints", "version": 2, "positions": {}}))
    with pytest.raises(StoreFormatError, match="newer format version 2"):
        FileCheckpointStore(path)


def test_a_leftover_temporary_file_does_not_matter(tmp_path: Path) -> None:
    path = tmp_path / "cp.json"
    FileCheckpointStore(path).save("runner", 4)
    (tmp_path / "cp.json.tmp").write_text('{"half a wri')  # a save that crashed before its rename
    checkpoints = FileCheckpointStore(path)
    assert checkpoints.load("runner") == 4
    checkpoints.save("runner", 5)
    assert FileCheckpointStore(path).load("runner") == 5


def test_concurrent_saves_of_different_names_lose_nothing(tmp_path: Path) -> None:
    path = tmp_path / "cp.json"

    def saver(me: int) -> None:
        own = FileCheckpointStore(path)  # one instance each, as separate processes would have
        for i in range(1, 11):
            own.save(f"runner-{me}", i)

    threads = [threading.Thread(target=saver, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    checkpoints = FileCheckpointStore(path)
    assert [checkpoints.load(f"runner-{k}") for k in range(6)] == [10] * 6


def test_async_forms(tmp_path: Path) -> None:
    checkpoints = FileCheckpointStore(tmp_path / "cp.json")

    async def scenario() -> int:
        await checkpoints.save_async("runner", 12)
        return await checkpoints.load_async("runner")

    assert asyncio.run(scenario()) == 12
