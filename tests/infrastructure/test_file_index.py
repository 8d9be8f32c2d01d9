"""The file store's SQLite index: what it stores, and its rebuild from the log when it cannot be used."""

from __future__ import annotations

import sqlite3
import uuid
import warnings
from pathlib import Path

import pytest

from orchestrix.core.messaging.messages import NewEvent
from orchestrix.infrastructure.file import FileEventStore
from orchestrix.infrastructure.file._index import Entry, Index
from orchestrix.testing import ContractEvent, contract_serializer


def test_indexing_raises_no_deprecation_warning(tmp_path: Path) -> None:
    # Numbered placeholders ("?1") bound from a sequence warn from Python 3.12 and fail from 3.14.
    index = Index(str(tmp_path / "index.sqlite3"), b"store-id")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            ids = tuple(uuid.uuid4().bytes for _ in range(3))
            assert index.add([Entry(1, 3, 0, "s", 1, 64, 100, 0, ids)]) == 3
            assert index.positions_of(ids) == {i: 1 + k for k, i in enumerate(ids)}
    finally:
        index.close()


def test_a_damaged_index_leaves_no_database_connection_open(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "store"
    with FileEventStore(path, contract_serializer()) as store:
        store.append("s", [NewEvent(ContractEvent(1))])
    (path / "index.sqlite3").write_bytes(b"this is not an sqlite database" * 100)
    for name in ("index.sqlite3-wal", "index.sqlite3-shm"):
        (path / name).unlink(missing_ok=True)
    opened: list[sqlite3.Connection] = []
    real_connect = sqlite3.connect

    def recording_connect(*args: object, **kwargs: object) -> sqlite3.Connection:
        conn = real_connect(*args, **kwargs)  # type: ignore[arg-type]
        opened.append(conn)
        return conn

    monkeypatch.setattr(sqlite3, "connect", recording_connect)
    with FileEventStore(path, contract_serializer()) as store:
        assert [r.event.n for r in store.read_all()] == [1]
    still_open = []
    for conn in opened:
        try:
            conn.execute("SELECT 1")
            still_open.append(conn)
        except sqlite3.ProgrammingError:  # "Cannot operate on a closed database."
            pass
    assert len(opened) >= 3 and still_open == []
