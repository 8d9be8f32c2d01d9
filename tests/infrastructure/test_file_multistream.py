"""The file store's multi-stream appends: one write and one sync, and all or nothing after a crash."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from orchestrix.core.errors import CorruptionError, OrchestrixError, SerializationError
from orchestrix.core.eventsourcing._backend import to_parts
from orchestrix.core.eventsourcing.store import NO_STREAM, StreamAppend
from orchestrix.core.messaging.messages import NewEvent
from orchestrix.infrastructure.file._format import (
    BATCH_CONTINUES,
    BODY,
    FRAME_SIZE,
    check_frame,
    parse_info,
    prepare_record,
    seal_record,
    type_field,
)
from orchestrix.testing import ContractEvent, contract_serializer
from orchestrix.testing.contract import NotRegistered
from tests.infrastructure.file_support import (
    IOUnderTest,
    events,
    numbers,
    open_store,
    record_offsets,
    segments,
    snapshot,
)


def test_a_multi_stream_append_is_one_write_and_one_sync(tmp_path: Path) -> None:
    io = IOUnderTest()
    with open_store(tmp_path / "store", io=io) as store:
        store.append("warm-up", events(0))
        io.calls.clear()
        results = store.append_many(
            [StreamAppend("a", events(1, 2)), StreamAppend("b", events(3)), StreamAppend("c", events(4))]
        )
    writes = [c for c in io.calls if c[0] == "pwrite" and c[2][2]]  # type: ignore[index]
    assert len(writes) == 1
    assert len(io.syncs()) == 1
    assert [p for r in results for p in r.positions] == [2, 3, 4, 5]


def test_the_records_of_a_multi_stream_append_are_marked_as_one(tmp_path: Path) -> None:
    path = tmp_path / "store"
    with open_store(path) as store:
        store.append_many([StreamAppend("a", events(1)), StreamAppend("b", events(2, 3))])
        store.append("a", events(4))
    (segment,) = segments(path)
    data = segment.read_bytes()
    infos = []
    for at in record_offsets(segment):
        length, crc = check_frame(data, at, len(data) - at)  # type: ignore[misc]
        infos.append(parse_info(data, at, length, crc, at))
    assert [(i.stream, i.continues) for i in infos] == [("a", True), ("b", False), ("a", False)]


def _three_streams_then_one(path: Path) -> tuple[Path, list[int]]:
    with open_store(path) as store:
        store.append("s-0", events(0), NO_STREAM)
        store.append_many(
            [
                StreamAppend("s-1", events(1, 2)),
                StreamAppend("s-2", events(3)),
                StreamAppend("s-3", events(4)),
            ]
        )
        store.append("s-0", events(5), 0)
    (segment,) = segments(path)
    return segment, record_offsets(segment)


def test_a_multi_stream_append_torn_at_any_offset_is_kept_whole_or_not_at_all(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "store"
    segment, offsets = _three_streams_then_one(path)
    full = segment.read_bytes()
    last = offsets[-1]
    full = full[: last + FRAME_SIZE + int.from_bytes(full[last + 8 : last + 12], "little")]
    # a crash image: HEAD and the index never reached the torn records (both follow the fdatasync)
    for name in ("HEAD", "index.sqlite3", "index.sqlite3-wal", "index.sqlite3-shm"):
        (path / name).unlink(missing_ok=True)
    pristine = snapshot(path)
    batch_start, batch_end = offsets[1], offsets[4]
    for cut in range(batch_start, len(full)):
        for name, data in pristine.items():
            (path / name).write_bytes(data)
        for name in ("HEAD", "index.sqlite3"):
            (path / name).unlink(missing_ok=True)
        segment.write_bytes(full[:cut])
        caplog.clear()
        with caplog.at_level(logging.WARNING), open_store(path, sync=False) as store:
            expected = [0] if cut < batch_end else [0, 1, 2, 3, 4]
            assert numbers(store) == expected, f"cut at {cut}"
            for stream in ("s-1", "s-2", "s-3"):
                whole = 1 if stream == "s-1" else 0
                assert store.stream_version(stream) == (NO_STREAM if cut < batch_end else whole)
            if batch_start < cut < batch_end:
                assert f"at offset {batch_start}" in caplog.text
        assert segment.stat().st_size == (batch_start if cut < batch_end else batch_end)
    segment.write_bytes(full[: batch_start + 5])
    for name in ("HEAD", "index.sqlite3"):
        (path / name).unlink(missing_ok=True)
    with open_store(path) as store:  # the store stays writable after the cut
        store.append_many([StreamAppend("s-1", events(9), NO_STREAM), StreamAppend("s-2", events(8))])
        assert numbers(store) == [0, 9, 8]


def _record(stream: bytes, position: int, durable: int, n: int, continues: bool) -> bytes:
    type_name, payload = contract_serializer().encode(ContractEvent(n))
    record = prepare_record(
        stream, [(uuid.uuid4().bytes, None, None, type_field(type_name), payload)], continues
    )
    seal_record(record, durable, position, 0, 0)
    return bytes(record)


def test_a_multi_stream_append_missing_its_end_but_followed_by_a_later_write_is_corruption(
    tmp_path: Path,
) -> None:
    # Records 2 (continued) and 4 written when 3 was on disk: the append of 2-3 was acknowledged,
    # so its missing end is damage, not a torn write.
    path = tmp_path / "store"
    with open_store(path) as store:
        store.append("s-0", events(0), NO_STREAM)
    (segment,) = segments(path)
    at = record_offsets(segment)[-1]
    at += FRAME_SIZE + int.from_bytes(segment.read_bytes()[at + 8 : at + 12], "little")
    second, third = _record(b"s-1", 2, 1, 1, True), _record(b"s-2", 3, 1, 2, False)
    later = _record(b"s-3", 4, 3, 3, False)
    with open(segment, "r+b") as f:
        f.truncate(at)
        f.seek(at)
        f.write(second + bytes(len(third)) + later)
    (path / "index.sqlite3").unlink()
    with pytest.raises(CorruptionError) as caught:
        open_store(path)
    assert caught.value.offset == at


def test_the_continue_mark_reads_as_plain_flags_for_other_readers() -> None:
    record = bytearray(_record(b"s-1", 1, 0, 7, True))
    body = record[FRAME_SIZE + BODY.size + 3 :]  # after the body head and the stream name "s-1"
    assert body[16] == BATCH_CONTINUES  # the first event's flags: no correlation, no causation


def _refusal(call: Callable[[], object]) -> tuple[type[BaseException], tuple[object, ...]]:
    with pytest.raises(OrchestrixError) as caught:
        call()
    return type(caught.value), caught.value.args


def test_the_file_stores_own_checks_refuse_as_the_shared_ones_in_the_same_order(tmp_path: Path) -> None:
    # prepare_many runs the checks of to_parts its own (faster) way: each bad input must still be
    # refused with the same error, and the first problem of several must be the one reported.
    shared = uuid.uuid4()
    twice = NewEvent(ContractEvent(1), shared)
    good = StreamAppend("m-1", events(0))
    cases: list[object] = [
        [],
        [good, "m-2"],
        [good, StreamAppend("", events(1))],
        [good, StreamAppend("m-2", events(1), -3)],
        [good, StreamAppend("m-2", events(1), True)],
        [good, StreamAppend("m-2", events(1)[0])],
        [good, StreamAppend("m-2", [])],
        [good, StreamAppend("m-1", events(1))],
        [StreamAppend("m-1", []), StreamAppend("m-1", events(1))],  # the stream twice comes first
        [StreamAppend("m-1", []), StreamAppend("", events(1))],  # so does every argument check
        [StreamAppend("m-1", [twice]), StreamAppend("m-2", [twice])],
        [StreamAppend("m-1", [twice]), StreamAppend("m-2", [twice, NotRegistered(2)])],  # ids first
    ]
    with open_store(tmp_path / "store") as store:
        for appends in cases:
            expected = _refusal(lambda: to_parts(appends))  # type: ignore[arg-type]  # noqa: B023
            assert _refusal(lambda: store.append_many(appends)) == expected, appends  # type: ignore[arg-type]  # noqa: B023
        with pytest.raises(SerializationError):  # found once encoding, after every check above
            store.append_many([good, StreamAppend("m-2", [NotRegistered(2)])])
        assert list(store.read_all()) == []
