"""A damaged file store never reads as valid: copied records, missing segments, a full disk."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from orchestrix.core.errors import CorruptionError
from orchestrix.core.execution.subscription import subscribe, subscribe_async
from tests.infrastructure.file_support import events, numbers, open_store, record_offsets, segments, snapshot

# -- a CRC-valid record where it does not belong ---------------------------------------------------


def _store_with_copied_record(path: Path) -> tuple[Path, int]:
    """Two segments; record 1 copied to the end of the full first one. Returns (segment, offset)."""
    with open_store(path, segment_size=1024) as store:
        for i in range(14):
            store.append(f"s-{i % 3}", events(i))
    first = segments(path)[0]
    assert len(segments(path)) >= 2
    data = first.read_bytes()
    at = record_offsets(first)[0]
    size = 12 + int.from_bytes(data[at + 8 : at + 12], "little")
    first.write_bytes(data + data[at : at + size])
    return first, len(data)


def test_a_record_copied_to_the_end_of_a_full_segment_is_corruption_on_every_read_path(
    tmp_path: Path,
) -> None:
    path = tmp_path / "store"
    first, at = _store_with_copied_record(path)

    def refused(read: object) -> None:
        with pytest.raises(CorruptionError) as raised:
            list(read)  # type: ignore[call-overload]
        assert (raised.value.path, raised.value.offset) == (str(first), at)
        assert "record starts at position 1" in raised.value.reason

    with open_store(path, segment_size=1024) as store:
        refused(store.read_all())
        refused(store.read_all(3))
        refused(subscribe(store, 0, idle_timeout=0.01))
        with pytest.raises(CorruptionError):
            store.verify()

        async def read_async() -> list[int]:
            got = [e.position async for e in store.read_all_async()]
            async for e in subscribe_async(store, 0, idle_timeout=0.01):
                got.append(e.position)
            return got

        with pytest.raises(CorruptionError) as raised:
            asyncio.run(read_async())
        assert (raised.value.path, raised.value.offset) == (str(first), at)
        assert numbers(store, "s-0")[:2] == [0, 3]  # streams read through the index still read
    # without the index, opening scans the log and refuses it
    (path / "index.sqlite3").unlink()
    (path / "HEAD").unlink()
    with pytest.raises(CorruptionError) as raised:
        open_store(path, segment_size=1024)
    assert (raised.value.path, raised.value.offset) == (str(first), at)



# -- a log shorter than it was -------------------------------------------------------------------


def _store_of_segments(path: Path) -> list[Path]:
    with open_store(path, segment_size=1024) as store:
        for i in range(20):
            store.append(f"s-{i % 3}", events(i))
    found = segments(path)
    assert len(found) >= 3
    return found


@pytest.mark.parametrize("index", ["kept", "dropped"])
def test_a_deleted_last_segment_is_corruption_naming_it(tmp_path: Path, index: str) -> None:
    path = tmp_path / "store"
    last = _store_of_segments(path)[-1]
    last.unlink()
    if index == "dropped":
        (path / "index.sqlite3").unlink()
    before = _log_files(path)
    with pytest.raises(CorruptionError, match="segment file missing from the log") as raised:
        open_store(path, segment_size=1024)
    assert raised.value.path == str(last)
    assert "says position 20 was stored" in raised.value.reason
    assert _log_files(path) == before  # nothing cut, no segment created, HEAD as it was


def _log_files(path: Path) -> dict[str, bytes]:
    """The store's files but the index (derived: an open may create an empty one)."""
    return {k: v for k, v in snapshot(path).items() if not k.startswith("index.sqlite3")}


def test_every_segment_deleted_is_corruption_not_an_empty_store(tmp_path: Path) -> None:
    path = tmp_path / "store"
    for segment in _store_of_segments(path):
        segment.unlink()
    (path / "index.sqlite3").unlink()
    with pytest.raises(CorruptionError, match="missing"):
        open_store(path, segment_size=1024)
    assert segments(path) == []


@pytest.mark.parametrize("index", ["kept", "dropped"])
def test_a_last_segment_cut_short_is_corruption_not_a_torn_write(tmp_path: Path, index: str) -> None:
    path = tmp_path / "store"
    last = _store_of_segments(path)[-1]
    offsets = record_offsets(last)
    data = last.read_bytes()
    last.write_bytes(data[: offsets[-1] + 5])  # the last acknowledged record loses its end
    if index == "dropped":
        (path / "index.sqlite3").unlink()
    with pytest.raises(CorruptionError, match="says position 20 was stored") as raised:
        open_store(path, segment_size=1024)
    assert raised.value.path == str(last)
    assert last.read_bytes() == data[: offsets[-1] + 5]
